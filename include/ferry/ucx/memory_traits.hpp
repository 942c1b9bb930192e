#pragma once

#include <ferry/detail/metadata.hpp>
#include <ferry/policy.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/config.hpp>
#include <ferry/ucx/context.hpp>
#include <ferry/version.hpp>

#include <ucs/memory/memory_type.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// What registration learnt about a block of memory.
struct memory_facts {
    ucs_memory_type_t ucx_type = UCS_MEMORY_TYPE_HOST;
    memory_kind_code kind = memory_kind_code::host;
    // CUDA IPC export of the allocation holding the block, if it has one.
    std::vector<std::byte> ipc_handle;
    std::uint64_t ipc_offset = 0;
    std::uint64_t ipc_alloc_size = 0;
    // Whether the backend's GPU can load and store this memory itself
    // (device memory, or page-locked host memory), and at what address:
    // the block's address plus gpu_offset.
    bool gpu_reachable = false;
    std::int64_t gpu_offset = 0;
};

/// What a memory kind adds to ucx_backend: how memory is told apart and
/// registered, what the backend's threads must do first, and (for kinds
/// that have one) a path that bypasses UCX. Specialised per memory kind;
/// memory::cuda's specialisation lives in <ferry/cuda.hpp>.
template <class Memory>
struct memory_traits;

template <class Memory>
inline constexpr bool has_memory_traits = requires { sizeof(memory_traits<Memory>); };

template <>
struct memory_traits<memory::host> {
    /// No path but UCX's.
    static constexpr bool has_device_path = false;

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

    /// allocate(): UCX allocates (UCP_MEM_MAP_ALLOCATE), so that a peer on
    /// this host can map the memory. Null here means "let UCX allocate".
    static std::shared_ptr<void> allocate(const backend_state&, std::size_t, std::uint32_t dev) {
        if (dev != 0)
            throw error(status::invalid_argument,
                        "allocate: dev " + std::to_string(dev) + " given, but memory::host takes device 0 only");
        return nullptr;
    }
};

}  // namespace detail
FERRY_NAMESPACE_END
