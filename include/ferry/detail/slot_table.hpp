#pragma once

#include <ferry/handles.hpp>
#include <ferry/version.hpp>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// A lock type for code that is single-threaded by policy.
struct null_mutex {
    void lock() noexcept {}
    void unlock() noexcept {}
};

/// Owns objects behind integer handles. A lookup is two loads and a compare:
/// no hashing, no strings, no lock. Slots live in chunks that never move, so
/// lookups stay valid while another thread inserts. Removing an object bumps
/// its slot's generation, so every handle still naming it becomes stale
/// instead of dangling. Inserts and removals take `Mutex`.
template <class T, class Mutex = null_mutex>
class slot_table {
    static constexpr std::uint32_t chunk_bits = 10;
    static constexpr std::uint32_t chunk_size = 1U << chunk_bits;
    static constexpr std::uint32_t max_chunks = 4096;

    struct slot {
        std::atomic<T*> value{nullptr};
        std::atomic<std::uint32_t> generation{0};
    };

public:
    slot_table() = default;
    slot_table(const slot_table&) = delete;
    slot_table& operator=(const slot_table&) = delete;
    ~slot_table() {
        clear();
        for (auto& c : chunks_) delete[] c.load(std::memory_order_relaxed);
    }

    /// Stores `value`; throws std::length_error when every slot is in use.
    slot_ref insert(std::unique_ptr<T> value) {
        std::lock_guard lock(mutex_);
        std::uint32_t index;
        if (!free_.empty()) {
            index = free_.back();
            free_.pop_back();
        } else {
            if (used_ == chunk_size * max_chunks) throw std::length_error("ferry: too many live handles");
            index = used_;
            auto& chunk = chunks_[index >> chunk_bits];
            if (!chunk.load(std::memory_order_relaxed)) chunk.store(new slot[chunk_size], std::memory_order_release);
            ++used_;
            free_.reserve(used_);
        }
        slot& s = at(index);
        s.value.store(value.release(), std::memory_order_release);
        return {index, s.generation.load(std::memory_order_relaxed)};
    }

    // Inlined by force: every post and check starts here, and the call
    // itself would cost as much as the lookup.
    [[nodiscard, gnu::always_inline]] T* get(slot_ref ref) const noexcept {
        if (ref.index >= chunk_size * max_chunks) return nullptr;
        const slot* chunk = chunks_[ref.index >> chunk_bits].load(std::memory_order_acquire);
        if (!chunk) return nullptr;
        const slot& s = chunk[ref.index & (chunk_size - 1)];
        T* v = s.value.load(std::memory_order_acquire);
        return s.generation.load(std::memory_order_acquire) == ref.generation ? v : nullptr;
    }

    /// Removes and returns the object; null if the handle is stale.
    std::unique_ptr<T> take(slot_ref ref) noexcept {
        std::lock_guard lock(mutex_);
        if (get(ref) == nullptr) return nullptr;
        slot& s = at(ref.index);
        s.generation.fetch_add(1, std::memory_order_acq_rel);
        std::unique_ptr<T> out(s.value.exchange(nullptr, std::memory_order_acq_rel));
        free_.push_back(ref.index);  // insert reserved room for every slot: no allocation
        return out;
    }

    /// Calls f(object) for every live object. Not safe against concurrent inserts or removals.
    template <class F>
    void for_each(F&& f) {
        for (std::uint32_t i = 0; i < used_; ++i)
            if (T* v = at(i).value.load(std::memory_order_acquire)) f(*v);
    }

    /// for_each under the table's lock, against concurrent inserts and removals.
    template <class F>
    void for_each_locked(F&& f) {
        std::lock_guard lock(mutex_);
        for_each(std::forward<F>(f));
    }

    void clear() noexcept {
        for (std::uint32_t i = 0; i < used_; ++i) delete at(i).value.exchange(nullptr, std::memory_order_acq_rel);
    }

private:
    slot& at(std::uint32_t index) const noexcept {
        return chunks_[index >> chunk_bits].load(std::memory_order_relaxed)[index & (chunk_size - 1)];
    }

    std::array<std::atomic<slot*>, max_chunks> chunks_{};
    std::uint32_t used_ = 0;
    std::vector<std::uint32_t> free_;
    Mutex mutex_;
};

}  // namespace detail
FERRY_NAMESPACE_END
