#pragma once

// ferry's device-side API: a user's own CUDA kernel moves the blocks of a
// prepared cuda_ipc transfer into (or out of) a peer's GPU memory and
// signals the peer, with no host in between. Include it in .cu files built
// with nvcc, or in NVRTC sources (add ferry's include directory with -I);
// host code includes <ferry/device/view.hpp> and gets the objects it
// passes to kernels from ucx_backend (device_view, device_signal) and
// ferry::device::counter (<ferry/cuda/counter.hpp>).
//
// Memory ordering. Every operation below runs at system scope, because the
// peer is another process, possibly on another GPU:
// - notify() makes every store this thread block made before it (the
//   copies included) visible to whoever then observes the new count;
// - wait() and load() are acquire operations: once a kernel here observes
//   a count, it sees every store the peer made before adding to it.
// So a consumer that sees a counter reach n reads complete data of every
// put that preceded the notifies whose adds make up n. Puts that no notify
// follows carry no visibility guarantee; ordering between different
// counters is the usual release/acquire (no total order).
//
// Counters are monotonic: a producer adds, a consumer waits for a count, so
// nothing is ever reset while a peer may still add. With several producer
// thread blocks per layer, give each layer a counter of its own and wait
// for it to reach (blocks per layer) x (rounds so far): one shared counter
// would let a block running ahead make a later layer's signal count for an
// earlier one.
//
// Bounds: a view names only the blocks prepare validated, a signal only the
// counters device_signal validated, and kernels name them by index. With
// FERRY_DEVICE_CHECKS (on unless NDEBUG) an index past the end traps, which
// aborts the kernel and poisons the context; in release builds the index is
// trusted, as an array subscript is.
#if !defined(__CUDACC__)
#error "<ferry/device.cuh> is CUDA device code (nvcc or NVRTC); host C++ includes <ferry/device/view.hpp>"
#endif

#include <ferry/device/view.hpp>

#if !defined(FERRY_DEVICE_CHECKS)
#if defined(NDEBUG)
#define FERRY_DEVICE_CHECKS 0
#else
#define FERRY_DEVICE_CHECKS 1
#endif
#endif

FERRY_NAMESPACE_BEGIN
namespace detail::device_ops {

using device::block;
using device::view;
using device::word;

__device__ inline unsigned thread_rank() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

__device__ inline unsigned block_threads() { return blockDim.x * blockDim.y * blockDim.z; }

// `i` names one of `count` blocks or counters.
__device__ inline void check_index(word i, word count) {
#if FERRY_DEVICE_CHECKS
    if (i >= count) __trap();
#else
    (void)i;
    (void)count;
#endif
}

// Bytes [from, to) of b, by `threads` threads of which this is `rank`.
__device__ inline void copy_bytes(const block& b, word from, word to, unsigned rank, unsigned threads) {
    const unsigned char* s = reinterpret_cast<const unsigned char*>(b.src);
    unsigned char* d = reinterpret_cast<unsigned char*>(b.dst);
    for (word k = from + rank; k < to; k += threads) d[k] = s[k];
}

// Copies b with 16-byte loads and stores where source and destination are
// equally aligned (the bytes before the first 16-byte boundary and after
// the last one go singly), bytes otherwise.
__device__ inline void copy_block(const block& b, unsigned rank, unsigned threads) {
    if (((b.src ^ b.dst) & 15ULL) != 0) return copy_bytes(b, 0, b.len, rank, threads);
    word head = (16 - (b.src & 15ULL)) & 15ULL;
    if (head > b.len) head = b.len;
    const word body = (b.len - head) & ~15ULL;
    const uint4* s = reinterpret_cast<const uint4*>(b.src + head);
    uint4* d = reinterpret_cast<uint4*>(b.dst + head);
    const word n = body / 16;
    for (word k = rank; k < n; k += threads) d[k] = s[k];
    copy_bytes(b, 0, head, rank, threads);
    copy_bytes(b, head + body, b.len, rank, threads);
}

// An acquire load at system scope (ld.acquire.sys exists from sm_70; before
// it, a volatile load and a system fence are the same pattern).
__device__ inline word load_acquire(const word* p) {
#if __CUDA_ARCH__ >= 700
    word v;
    asm volatile("ld.acquire.sys.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
#else
    const word v = *static_cast<const volatile word*>(p);
    __threadfence_system();
    return v;
#endif
}

// The GPU's nanosecond clock, the same on every multiprocessor (clock64
// counts cycles of one multiprocessor and changes with its frequency).
__device__ inline word now_ns() {
    word t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

}  // namespace detail::device_ops

namespace device {

// ---- moving blocks ----------------------------------------------------------

/// Copies block i of the view; every thread of the calling thread block
/// calls it with the same i, and each moves its share. The copy is complete
/// for the peer only after a notify() (or, for the host, after the kernel).
__device__ inline void copy(const view& v, word i) {
    namespace ops = detail::device_ops;
    ops::check_index(i, v.count);
    ops::copy_block(v.blocks[i], ops::thread_rank(), ops::block_threads());
}

/// As copy, by the 32 threads of the calling warp.
__device__ inline void copy_warp(const view& v, word i) {
    namespace ops = detail::device_ops;
    ops::check_index(i, v.count);
    ops::copy_block(v.blocks[i], ops::thread_rank() % 32, 32);
}

// ---- signals ----------------------------------------------------------------

/// Adds n to the peer's counter i, from one thread, after every store that
/// this thread made or observed (copies by other threads of the block after
/// a __syncthreads, say) is visible to the peer.
///
/// __threadfence_system() and a relaxed atomicAdd_system form a release
/// pattern in the PTX memory model (a fence.sc followed by a strong write),
/// and the fence is cumulative: it orders the stores of other threads that
/// this one observed through the __syncthreads before it, not only its own.
/// cuda::atomic_ref<..., thread_scope_system>::fetch_add(memory_order_release)
/// says the same in one call, but needs libcu++'s headers, which NVRTC finds
/// only when the user passes CCCL's include directory; these two builtins
/// need nothing. A system-scope fence is the price of release at system
/// scope either way.
__device__ inline void notify_thread(const signal& s, word i, word n = 1) {
    detail::device_ops::check_index(i, s.count);
    __threadfence_system();
    atomicAdd_system(s.counters + i, n);
}

/// Adds n to the peer's counter i once for the calling thread block, after
/// every store its threads made before the call: every thread calls it.
__device__ inline void notify(const signal& s, word i, word n = 1) {
    __syncthreads();
    if (detail::device_ops::thread_rank() == 0) notify_thread(s, i, n);
}

// ---- waiting ----------------------------------------------------------------

/// Counter i's value, read with acquire semantics: stores the peer made
/// before the notify that produced it are visible after this returns.
__device__ inline word load(const counter_ref& c, word i) {
    detail::device_ops::check_index(i, c.count);
    return detail::device_ops::load_acquire(c.counters + i);
}

/// Spins, from one thread, until counter i reaches at least `target`.
__device__ inline void wait_thread(const counter_ref& c, word i, word target) {
    while (load(c, i) < target) {
    }
}

/// As wait_thread, for at most `timeout_ns` nanoseconds of the GPU's clock;
/// false if the counter had not reached `target` by then (a peer that died
/// or fell behind), so that a kernel can give up instead of hanging.
__device__ inline bool wait_thread_for(const counter_ref& c, word i, word target, word timeout_ns) {
    const word start = detail::device_ops::now_ns();
    while (load(c, i) < target)
        if (detail::device_ops::now_ns() - start >= timeout_ns) return false;
    return true;
}

/// Waits, for the calling thread block, until counter i reaches at least
/// `target`: one thread spins, and the barrier after it passes what that
/// thread acquired on to the others. Every thread calls it.
__device__ inline void wait(const counter_ref& c, word i, word target) {
    if (detail::device_ops::thread_rank() == 0) wait_thread(c, i, target);
    __syncthreads();
}

/// As wait, giving up after `timeout_ns`; every thread of the block gets the
/// same answer.
__device__ inline bool wait_for(const counter_ref& c, word i, word target, word timeout_ns) {
    int ok = 1;
    if (detail::device_ops::thread_rank() == 0) ok = wait_thread_for(c, i, target, timeout_ns) ? 1 : 0;
    return __syncthreads_and(ok) != 0;
}

}  // namespace device
FERRY_NAMESPACE_END
