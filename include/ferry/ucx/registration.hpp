#pragma once

#include <ferry/detail/describe.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/allocation.hpp>
#include <ferry/ucx/context.hpp>
#include <ferry/ucx/memory.hpp>
#include <ferry/ucx/memory_traits.hpp>
#include <ferry/ucx/region.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// What register_memory, allocate and deregister_memory do, and the registry
/// of the regions they made. These are calls on the UCX context, never on the
/// worker: under the thread policy the context is created for several
/// threads (UCX locks it), so any thread may make them.
template <class Traits>
class registration {
public:
    using memory_state = typename Traits::backend_state;

    registration(std::shared_ptr<context> ctx, const memory_state& memory)
        : context_(std::move(ctx)), memory_(memory) {}

    region register_memory(void* ptr, std::size_t len, std::uint32_t dev) {
        if (ptr == nullptr) throw error(status::invalid_argument, "register_memory: ptr is null");
        if (len == 0) throw error(status::invalid_argument, "register_memory: len is 0");
        if (reinterpret_cast<std::uintptr_t>(ptr) + len < reinterpret_cast<std::uintptr_t>(ptr))
            throw error(status::invalid_argument, "register_memory: [ptr, ptr + len) wraps around");
        return add(ptr, len, dev, Traits::classify(memory_, "register_memory", ptr, len, dev), nullptr);
    }

    region allocate(std::size_t len, std::uint32_t dev) {
        if (len == 0) throw error(status::invalid_argument, "allocate: len is 0");
        return add_allocated(Traits::allocate(memory_, len, dev), "allocate", len, dev);
    }

    region allocate_host(std::size_t len) {
        if (len == 0) throw error(status::invalid_argument, "allocate_host: len is 0");
        return add_allocated(Traits::allocate_host(memory_, len), "allocate_host", len, 0);
    }

    void deregister(region& r) {
        if (!r)
            throw error(status::invalid_argument,
                        "deregister_memory: the region is empty (moved from or deregistered)");
        if (r.registry_ != registry_)
            throw error(status::invalid_argument, "deregister_memory: the region was registered with another backend");
        auto* lr = r.region_.get();
        registry_->remove(lr);
        // remove() cleared the flag that a post checks after it counted
        // itself in; both are sequentially consistent, so a post racing with
        // this either fails with not_registered or is counted here. Released
        // transfers that UCX still holds count too.
        if (const std::size_t in_use = lr->users.load(std::memory_order_seq_cst); in_use > 0) {
            registry_->restore(r.region_);
            throw error(status::busy, "deregister_memory: region " + hex(lr->begin()) + " (+" +
                                          std::to_string(lr->mem.size()) + ") is used by " + std::to_string(in_use) +
                                          " transfer(s) in flight");
        }
        r.reset();
    }

    [[nodiscard]] registry& regions() const noexcept { return *registry_; }

private:
    region add_allocated(allocation a, const char* what, std::size_t len, std::uint32_t dev) {
        if (!a.memory) return add(nullptr, len, dev, {}, nullptr);
        void* const p = a.memory.get();
        auto facts = Traits::classify(memory_, what, p, len, dev);
        if (!a.share_handle.empty()) {
            facts.ipc_handle = std::move(a.share_handle);
            facts.ipc_offset = 0;
            facts.ipc_alloc_size = a.share_size;
        }
        return add(p, len, dev, std::move(facts), std::move(a.memory));
    }

    region add(void* ptr, std::size_t len, std::uint32_t dev, memory_facts facts, std::shared_ptr<void> owner) {
        const auto want = facts.ucx_type;
        auto r = std::make_shared<local_region>(context_, ptr, len, dev, std::move(facts), std::move(owner));
        if (r->mem.memory_type() != want)
            throw error(status::invalid_argument,
                        std::string(ptr ? "register_memory" : "allocate") + ": UCX registered [" + hex(r->begin()) +
                            ", +" + std::to_string(len) + ") as " + ucs_memory_type_names[r->mem.memory_type()] +
                            " memory, not " + ucs_memory_type_names[want] +
                            ": this UCX does not recognise that memory");
        registry_->add(r);
        return region(registry_, std::move(r));
    }

    std::shared_ptr<context> context_;
    const memory_state& memory_;  // the backend's, which outlives this
    std::shared_ptr<registry> registry_ = std::make_shared<registry>();
};

}  // namespace detail
FERRY_NAMESPACE_END
