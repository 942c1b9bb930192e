#pragma once

// ferry-device-demo's kernels (ferry_device_demo.cu, built with nvcc) as
// host functions that launch them. Host code sees only the plain structs of
// <ferry/device/view.hpp>; the kernels include <ferry/device.cuh>.
#include <ferry/device/view.hpp>

#include <cuda_runtime_api.h>

namespace demo {

using ferry::device::word;

/// The value of byte `offset` of KV block `block` of layer `layer`.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline unsigned char kv_byte(word layer, word block, word offset) {
    return static_cast<unsigned char>((layer * 37 + block * 11 + offset * 3 + 5) & 0xFF);
}

/// Counters a kernel fills in for the host.
struct report {
    word bad_bytes;
    word timeouts;
    word elapsed_ns;
};

/// Producer: thread block j produces block j of each of `layers` layers
/// (view block layer * per_layer + j) in its local memory, puts it to the
/// peer, and adds 1 to the layer's counter of `s`.
cudaError_t produce(ferry::device::view v, ferry::device::signal s, word layers, word per_layer, cudaStream_t st);

/// Consumer: thread block j waits until the layer's counter of `c` says
/// every block of it arrived, then checks one block of it, at
/// `dst + block * block_size`.
cudaError_t consume(ferry::device::counter_ref c, const unsigned char* dst, word block_size, word layers,
                    word per_layer, word timeout_ns, report* out, cudaStream_t st);

/// Latency: `iterations` round trips of block 0 of each side's view, one
/// put and one signal (to counter `theirs` of `s`) each way, each side
/// waiting on counter `mine` of `c`, after one untimed round trip that
/// waits for the other side to start; ping times them on the GPU's clock.
cudaError_t ping(ferry::device::view v, ferry::device::signal s, word theirs, ferry::device::counter_ref c, word mine,
                 word iterations, word timeout_ns, report* out, cudaStream_t st);
cudaError_t pong(ferry::device::view v, ferry::device::signal s, word theirs, ferry::device::counter_ref c, word mine,
                 word iterations, word timeout_ns, report* out, cudaStream_t st);

/// Bandwidth: every block of the view from one launch, a thread block each,
/// each followed by an add to counter `theirs` of `s`.
cudaError_t burst(ferry::device::view v, ferry::device::signal s, word theirs, cudaStream_t st);

}  // namespace demo
