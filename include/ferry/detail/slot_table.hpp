#pragma once

#include <ferry/handles.hpp>
#include <ferry/version.hpp>

#include <cstdint>
#include <memory>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// Owns objects behind integer handles. A lookup is an index and a compare:
/// no hashing, no strings. Removing an object bumps its slot's generation,
/// so every handle still naming it becomes stale instead of dangling.
template <class T>
class slot_table {
public:
    slot_ref insert(std::unique_ptr<T> value) {
        std::uint32_t index;
        if (!free_.empty()) {
            index = free_.back();
            free_.pop_back();
        } else {
            index = static_cast<std::uint32_t>(slots_.size());
            slots_.emplace_back();
            free_.reserve(slots_.size());
        }
        slots_[index].value = std::move(value);
        return {index, slots_[index].generation};
    }

    [[nodiscard]] T* get(slot_ref ref) const noexcept {
        if (ref.index >= slots_.size()) return nullptr;
        const auto& s = slots_[ref.index];
        return s.generation == ref.generation ? s.value.get() : nullptr;
    }

    /// Removes and returns the object; null if the handle is stale.
    std::unique_ptr<T> take(slot_ref ref) noexcept {
        if (get(ref) == nullptr) return nullptr;
        auto& s = slots_[ref.index];
        ++s.generation;
        // insert reserved room for every slot, so this push never allocates.
        free_.push_back(ref.index);
        return std::move(s.value);
    }

    template <class F>
    void for_each(F&& f) {
        for (auto& s : slots_)
            if (s.value) f(*s.value);
    }

    void clear() noexcept {
        for (auto& s : slots_) s.value.reset();
    }

private:
    struct slot {
        std::unique_ptr<T> value;
        std::uint32_t generation = 0;
    };
    std::vector<slot> slots_;
    std::vector<std::uint32_t> free_;
};

}  // namespace detail
FERRY_NAMESPACE_END
