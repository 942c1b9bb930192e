#pragma once

// --kernel: ferry-bench's own kernels (device_kernels.cu, built with nvcc),
// which move a row's blocks through ferry's device API (<ferry/device.cuh>),
// as host functions that launch them. Host code sees only the plain structs
// of <ferry/device/view.hpp>.

#include <ferry/device/view.hpp>

#include <cuda_runtime_api.h>

namespace bench {

using ferry::device::word;

/// What a ping or pong kernel reports back to the host.
struct kernel_report {
    word timeouts;    // a wait that gave up: the other side's kernel never answered
    word elapsed_ns;  // ping: the timed round trips, on the GPU's clock
};

/// Every block of `v` from one launch, a thread block each, each followed by
/// an add to counter `theirs` of `s`.
cudaError_t launch_burst(ferry::device::view v, ferry::device::signal s, word theirs, cudaStream_t st);

/// `iterations` + 1 round trips of block 0 of each side's view: put, add to
/// counter `theirs` of `s`, wait until counter `mine` of `c` reaches `base`
/// + the round's number. The first round trip, which waits for the other
/// side's kernel to start, is not timed. pong waits first, then answers.
cudaError_t launch_ping(ferry::device::view v, ferry::device::signal s, word theirs, ferry::device::counter_ref c,
                        word mine, word base, word iterations, word timeout_ns, kernel_report* out, cudaStream_t st);
cudaError_t launch_pong(ferry::device::view v, ferry::device::signal s, word theirs, ferry::device::counter_ref c,
                        word mine, word base, word iterations, word timeout_ns, kernel_report* out, cudaStream_t st);

}  // namespace bench
