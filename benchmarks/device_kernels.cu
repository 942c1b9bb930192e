// --kernel: the kernels that move a row's blocks with <ferry/device.cuh>.
#include <ferry/device.cuh>

#include "device_kernels.hpp"

namespace bench {
namespace {

namespace fd = ferry::device;

// A thread block per block of the view: at 4 KiB, 256 threads move 16 bytes
// each in one pass.
constexpr unsigned threads = 256;

// The GPU's nanosecond clock, the same on every multiprocessor.
__device__ word gpu_ns() {
    word t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__global__ void burst_kernel(fd::view v, fd::signal s, word theirs) {
    fd::copy(v, blockIdx.x);
    fd::notify(s, theirs);
}

__global__ void ping_kernel(fd::view v, fd::signal s, word theirs, fd::counter_ref c, word mine, word base,
                            word iterations, word timeout_ns, kernel_report* out) {
    word t0 = 0;
    for (word it = 0; it <= iterations; ++it) {
        fd::copy(v, 0);
        fd::notify(s, theirs);
        if (!fd::wait_for(c, mine, base + it + 1, timeout_ns)) {
            if (threadIdx.x == 0) out->timeouts = 1;
            return;
        }
        if (it == 0) t0 = gpu_ns();
    }
    if (threadIdx.x == 0) out->elapsed_ns = gpu_ns() - t0;
}

__global__ void pong_kernel(fd::view v, fd::signal s, word theirs, fd::counter_ref c, word mine, word base,
                            word iterations, word timeout_ns, kernel_report* out) {
    for (word it = 0; it <= iterations; ++it) {
        if (!fd::wait_for(c, mine, base + it + 1, timeout_ns)) {
            if (threadIdx.x == 0) out->timeouts = 1;
            return;
        }
        fd::copy(v, 0);
        fd::notify(s, theirs);
    }
}

}  // namespace

cudaError_t launch_burst(fd::view v, fd::signal s, word theirs, cudaStream_t st) {
    burst_kernel<<<static_cast<unsigned>(v.count), threads, 0, st>>>(v, s, theirs);
    return cudaGetLastError();
}

cudaError_t launch_ping(fd::view v, fd::signal s, word theirs, fd::counter_ref c, word mine, word base,
                        word iterations, word timeout_ns, kernel_report* out, cudaStream_t st) {
    ping_kernel<<<1, threads, 0, st>>>(v, s, theirs, c, mine, base, iterations, timeout_ns, out);
    return cudaGetLastError();
}

cudaError_t launch_pong(fd::view v, fd::signal s, word theirs, fd::counter_ref c, word mine, word base,
                        word iterations, word timeout_ns, kernel_report* out, cudaStream_t st) {
    pong_kernel<<<1, threads, 0, st>>>(v, s, theirs, c, mine, base, iterations, timeout_ns, out);
    return cudaGetLastError();
}

}  // namespace bench
