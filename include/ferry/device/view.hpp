#pragma once

// What a user's CUDA kernel receives from ferry, by value: a prepared
// cuda_ipc transfer's block table (view), a counter in a peer's GPU memory
// to add to (signal), and a counter in this process's GPU memory to wait on
// (counter_ref). Plain structs, shared by host C++ (which obtains them from
// ucx_backend<policy<..., memory::cuda>>) and by device code compiled with
// nvcc or NVRTC (<ferry/device.cuh> operates on them), so this header needs
// nothing beyond the language: NVRTC has no standard library headers.
#include <ferry/version.hpp>

FERRY_NAMESPACE_BEGIN
namespace device {

/// 64-bit unsigned, spelled without <cstdint> (see above).
using word = unsigned long long;
static_assert(sizeof(word) == 8, "ferry::device::word must be 8 bytes");

/// One block of a prepared transfer: `len` bytes from `src` to `dst`, both
/// device addresses in the process that received the view, the peer's side
/// already mapped through CUDA IPC and the transfer's direction applied
/// (WRITE: src is local, dst the peer's; READ: the reverse).
struct block {
    word src;
    word dst;
    word len;
};
static_assert(sizeof(block) == 24, "ferry::device::block is three 8-byte words");

/// A prepared cuda_ipc transfer as a kernel sees it: `count` blocks in GPU
/// memory, owned by the transfer (valid until ucx_backend::release). Block
/// i is the transfer's i-th block as prepare left it: its i-th descriptor
/// pair (block i of strided lists), unless runs of adjacent pairs were
/// merged (xfer_options::coalesce; ucx_backend::blocks_of gives the count). The blocks were checked against
/// registered and published regions when the transfer was prepared; a
/// kernel names them by index only.
struct view {
    const block* blocks;
    word count;
};

/// `count` 8-byte counters in a peer's GPU memory (one per layer, say),
/// mapped into this process: a kernel adds to counter i
/// (ferry::device::notify) after its puts.
struct signal {
    word* counters;
    word count;
};

/// `count` 8-byte counters in this process's GPU memory that a peer's
/// kernels add to: a kernel here waits on counter i (ferry::device::wait).
struct counter_ref {
    word* counters;
    word count;
};

}  // namespace device
FERRY_NAMESPACE_END
