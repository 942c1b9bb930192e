#pragma once

#include <ferry/detail/metadata.hpp>
#include <ferry/version.hpp>

#include <ucs/memory/memory_type.h>

#include <cstddef>
#include <cstdint>
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

}  // namespace detail
FERRY_NAMESPACE_END
