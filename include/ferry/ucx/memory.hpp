#pragma once

#include <ferry/ucx/context.hpp>
#include <ferry/ucx/memory_facts.hpp>
#include <ferry/ucx/ucx_status.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// A ucp_mem_h and its packed rkey. Keeps the context alive, since memory
/// must be unmapped through the context that mapped it.
class mem_handle {
public:
    // Registers [ptr, ptr + len), or, with ptr == nullptr, lets UCX allocate
    // len bytes (UCP_MEM_MAP_ALLOCATE) that a peer on this host can map.
    mem_handle(std::shared_ptr<context> ctx, void* ptr, std::size_t len, ucs_memory_type_t type)
        : ctx_(std::move(ctx)) {
        ucp_mem_map_params_t params{};
        params.field_mask =
            UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
        params.address = ptr;
        params.length = len;
        params.memory_type = type;
        if (ptr == nullptr) {
            params.field_mask |= UCP_MEM_MAP_PARAM_FIELD_FLAGS;
            params.flags = UCP_MEM_MAP_ALLOCATE;
        }
        check_ucx(ucp_mem_map(ctx_->get(), &params, &memh_), ptr ? "ucp_mem_map" : "ucp_mem_map(ALLOCATE)");

        ucp_mem_attr_t attr{};
        attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH | UCP_MEM_ATTR_FIELD_MEM_TYPE;
        if (auto s = ucp_mem_query(memh_, &attr); s != UCS_OK) {
            ucp_mem_unmap(ctx_->get(), memh_);
            throw_ucx(s, "ucp_mem_query");
        }
        base_ = ptr ? ptr : attr.address;
        len_ = len;
        type_ = attr.mem_type;

        void* rkey = nullptr;
        std::size_t rkey_len = 0;
        if (auto s = ucp_rkey_pack(ctx_->get(), memh_, &rkey, &rkey_len); s != UCS_OK) {
            ucp_mem_unmap(ctx_->get(), memh_);
            throw_ucx(s, "ucp_rkey_pack");
        }
        auto* p = static_cast<const std::byte*>(rkey);
        packed_rkey_.assign(p, p + rkey_len);
        ucp_rkey_buffer_release(rkey);
    }
    ~mem_handle() { ucp_mem_unmap(ctx_->get(), memh_); }
    mem_handle(const mem_handle&) = delete;
    mem_handle& operator=(const mem_handle&) = delete;

    [[nodiscard]] ucp_mem_h get() const noexcept { return memh_; }
    [[nodiscard]] void* base() const noexcept { return base_; }
    [[nodiscard]] std::size_t size() const noexcept { return len_; }
    /// The memory type UCX found the memory to be.
    [[nodiscard]] ucs_memory_type_t memory_type() const noexcept { return type_; }
    [[nodiscard]] std::span<const std::byte> packed_rkey() const noexcept { return packed_rkey_; }

private:
    std::shared_ptr<context> ctx_;
    ucp_mem_h memh_ = nullptr;
    void* base_ = nullptr;
    std::size_t len_ = 0;
    ucs_memory_type_t type_ = UCS_MEMORY_TYPE_HOST;
    std::vector<std::byte> packed_rkey_;
};

struct local_region {
    // `owned`, when set, is memory the backend allocated itself for this
    // region; ptr == nullptr with no owner lets UCX allocate.
    local_region(std::shared_ptr<context> ctx, void* ptr, std::size_t len, std::uint32_t device, memory_facts what,
                 std::shared_ptr<void> owner = nullptr)
        : owned(std::move(owner)),
          mem(std::move(ctx), ptr, len, what.ucx_type),
          dev(device),
          allocated(ptr == nullptr || owned != nullptr),
          facts(std::move(what)) {}

    [[nodiscard]] std::uintptr_t begin() const noexcept { return reinterpret_cast<std::uintptr_t>(mem.base()); }
    [[nodiscard]] std::uintptr_t end() const noexcept { return begin() + mem.size(); }
    [[nodiscard]] bool contains(std::uintptr_t addr, std::size_t len, std::uint32_t device) const noexcept {
        return device == dev && addr >= begin() && len <= mem.size() && addr - begin() <= mem.size() - len;
    }

    std::shared_ptr<void> owned;  // declared first: freed after the unmap
    mem_handle mem;
    std::uint32_t dev;
    bool allocated;
    memory_facts facts;
    // Cleared when the application deregisters the region; transfers over
    // it then refuse to post, though their in-flight data keeps it mapped.
    std::atomic<bool> registered{true};
    // Posts over it that UCX has not let go of yet, released ones included:
    // what deregister_memory must wait for.
    std::atomic<std::uint32_t> users{0};
};

/// The backend's registered regions, sorted by address, and an epoch that
/// changes whenever one goes away. A prepared transfer remembers the epoch it
/// was validated in, so `post` re-checks its regions only after a change.
/// Changes and searches lock a mutex: they are set-up calls, which the
/// application may make from several threads under the thread policy.
class registry {
public:
    void add(std::shared_ptr<local_region> r) {
        std::lock_guard lock(mutex_);
        auto at = std::upper_bound(regions_.begin(), regions_.end(), r->begin(),
                                   [](std::uintptr_t a, const auto& x) { return a < x->begin(); });
        regions_.insert(at, std::move(r));
    }

    // The flag, the epoch and a transfer's phase are sequentially consistent:
    // ucx_backend::deregister_memory relies on it to see racing posts.
    void remove(local_region* r) noexcept {
        std::lock_guard lock(mutex_);
        r->registered.store(false, std::memory_order_seq_cst);
        std::erase_if(regions_, [r](const auto& x) { return x.get() == r; });
        epoch_.fetch_add(1, std::memory_order_seq_cst);
    }

    /// Undoes remove(r) for a deregistration that was refused.
    void restore(const std::shared_ptr<local_region>& r) {
        add(r);
        r->registered.store(true, std::memory_order_seq_cst);
    }

    /// The region holding all of [addr, addr + len) on `dev`, or null.
    [[nodiscard]] std::shared_ptr<local_region> find(std::uintptr_t addr, std::size_t len, std::uint32_t dev) const {
        std::lock_guard lock(mutex_);
        auto it = std::upper_bound(regions_.begin(), regions_.end(), addr,
                                   [](std::uintptr_t a, const auto& x) { return a < x->begin(); });
        // Regions may overlap, so every region starting at or below addr is a candidate.
        while (it != regions_.begin()) {
            --it;
            if ((*it)->contains(addr, len, dev)) return *it;
        }
        return nullptr;
    }

    [[nodiscard]] std::vector<std::shared_ptr<local_region>> regions() const {
        std::lock_guard lock(mutex_);
        return regions_;
    }

    [[nodiscard]] std::uint64_t epoch() const noexcept { return epoch_.load(std::memory_order_seq_cst); }

private:
    mutable std::mutex mutex_;
    std::vector<std::shared_ptr<local_region>> regions_;
    std::atomic<std::uint64_t> epoch_{0};
};

}  // namespace detail
FERRY_NAMESPACE_END
