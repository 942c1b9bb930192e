#pragma once

#include <ferry/host/path_host_ipc.hpp>
#include <ferry/host/shared_memory.hpp>
#include <ferry/policy.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/allocation.hpp>
#include <ferry/ucx/config.hpp>
#include <ferry/ucx/context.hpp>
#include <ferry/ucx/memory_facts.hpp>
#include <ferry/ucx/path.hpp>
#include <ferry/ucx/path_ucx.hpp>
#include <ferry/version.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// What a memory kind adds to ucx_backend: how memory is told apart and
/// registered, what the backend's threads must do first, and the paths its
/// transfers may take (path.hpp), in the order prepare tries them.
/// Specialised per memory kind; memory::cuda's specialisation lives in
/// <ferry/cuda.hpp>.
template <class Memory>
struct memory_traits;

template <class Memory>
inline constexpr bool has_memory_traits = requires { sizeof(memory_traits<Memory>); };

template <>
struct memory_traits<memory::host> {
    /// host_ipc where it serves every pair (a peer on this host), else UCX RMA.
    using paths = path_set<host_ipc_path, ucx_rma_path>;

    /// Per-backend state of the memory kind; host memory needs none.
    struct backend_state {
        backend_state(const ucx_config&, const context&) {}
        void bind_thread() const noexcept {}
    };

    static memory_facts classify(const backend_state&, const char* what, const void*, std::size_t,
                                 std::uint32_t dev) {
        if (dev != 0)
            throw error(status::invalid_argument, std::string(what) + ": dev " + std::to_string(dev) +
                                                      " given, but memory::host takes device 0 only");
        return {};
    }

    /// allocate(): shared memory that a peer on this host maps (the host_ipc
    /// path), registered with UCX as any memory; where the kernel has no
    /// memfd, UCX allocates (UCP_MEM_MAP_ALLOCATE), which some UCX builds map.
    static allocation allocate(const backend_state& b, std::size_t len, std::uint32_t dev) {
        if (dev != 0)
            throw error(status::invalid_argument,
                        "allocate: dev " + std::to_string(dev) + " given, but memory::host takes device 0 only");
        return allocate_host(b, len);
    }

    /// Host memory, shared as allocate's.
    static allocation allocate_host(const backend_state&, std::size_t len) { return host::allocate_shared(len); }
};

}  // namespace detail
FERRY_NAMESPACE_END
