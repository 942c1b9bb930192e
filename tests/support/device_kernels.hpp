#pragma once

// test_device's kernels (test_device_kernels.cu, built with nvcc), as host
// functions that launch them on a stream.

#include <ferry/device/view.hpp>

#include <cuda_runtime_api.h>

namespace ferry_test::device {

using ferry::device::word;

/// The byte at `offset` of block `block` in round `round`: a round's data
/// differs from the last one's, so a stale block is caught.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline unsigned char layer_byte(word round, word block, word offset) {
    return static_cast<unsigned char>((round * 131 + block * 29 + offset * 7 + 1) & 0xFF);
}

/// Kernel results: bytes that were wrong, waits that timed out.
struct outcome {
    word bad_bytes;
    word timeouts;
};

/// What both sides' kernels agree on: `rounds` rounds of `layers` layers of
/// `per_layer` blocks (view block layer * per_layer + j), and how long a
/// wait may take before it counts as a timeout.
struct plan {
    word rounds;
    word layers;
    word per_layer;
    word timeout_ns;
};

/// The producer, one launch for every round: thread block j, in round r,
/// waits until the consumer acknowledged round r - 1 (`acks` counter 0
/// reaches r * per_layer), then for each layer writes block j of it into its
/// local source with round r's pattern, puts it, and adds 1 to the layer's
/// counter of `layers`.
cudaError_t produce_layers(ferry::device::view v, ferry::device::signal layers, ferry::device::counter_ref acks,
                           plan p, outcome* out, cudaStream_t stream);

/// The consumer, one launch for every round: thread block j waits until
/// each layer's counter of `layers` says the whole layer arrived, then
/// checks block (j + 1) % per_layer of it (written by another producer
/// thread block), `len` bytes at `dst + block * stride`, against the round's
/// pattern; after the last layer of a round it adds 1 to `ack` counter 0.
cudaError_t consume_layers(ferry::device::counter_ref layers, ferry::device::signal ack, const unsigned char* dst,
                           word stride, word len, plan p, outcome* out, cudaStream_t stream);

/// One thread block copies block i of the view; with an index past its end,
/// FERRY_DEVICE_CHECKS (on in these kernels) traps.
cudaError_t copy_block(ferry::device::view v, word i, cudaStream_t stream);

/// One thread block waits for `c` counter 0 to reach `target` for at most timeout_ns,
/// adding a timeout to `*out` if it did not.
cudaError_t wait_once(ferry::device::counter_ref c, word target, word timeout_ns, outcome* out, cudaStream_t stream);

}  // namespace ferry_test::device
