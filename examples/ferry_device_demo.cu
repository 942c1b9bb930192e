// ferry-device-demo's kernels: what a user's own kernels look like with
// <ferry/device.cuh>.
#include <ferry/device.cuh>

#include "ferry_device_demo.hpp"

namespace demo {
namespace {

namespace fd = ferry::device;
constexpr unsigned threads = 256;

__global__ void produce_kernel(fd::view v, fd::signal s, word layers, word per_layer) {
    for (word layer = 0; layer < layers; ++layer) {
        const word i = layer * per_layer + blockIdx.x;
        // "Compute" the block into local memory, as an attention layer
        // would write its KV cache, then put it to the peer and signal it.
        unsigned char* kv = reinterpret_cast<unsigned char*>(v.blocks[i].src);
        for (word k = threadIdx.x; k < v.blocks[i].len; k += blockDim.x) kv[k] = kv_byte(layer, i, k);
        __syncthreads();
        fd::copy(v, i);
        fd::notify(s, layer);
    }
}

__global__ void consume_kernel(fd::counter_ref c, const unsigned char* dst, word block_size, word layers,
                               word per_layer, word timeout_ns, report* out) {
    for (word layer = 0; layer < layers; ++layer) {
        // The layer is complete once every producer thread block signalled it.
        if (!fd::wait_for(c, layer, per_layer, timeout_ns)) {
            if (threadIdx.x == 0) atomicAdd(&out->timeouts, 1ULL);
            return;
        }
        // Consume a block another producer thread block wrote.
        const word i = layer * per_layer + (blockIdx.x + 1) % per_layer;
        word bad = 0;
        for (word k = threadIdx.x; k < block_size; k += blockDim.x)
            bad += dst[i * block_size + k] != kv_byte(layer, i, k) ? 1 : 0;
        if (bad) atomicAdd(&out->bad_bytes, bad);
    }
}

__device__ word gpu_ns() {
    word t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__global__ void ping_kernel(fd::view v, fd::signal s, word theirs, fd::counter_ref c, word mine, word iterations,
                            word timeout_ns, report* out) {
    // The first round trip waits for the peer's kernel to start: untimed.
    word t0 = 0;
    for (word it = 0; it <= iterations; ++it) {
        fd::copy(v, 0);
        fd::notify(s, theirs);
        if (!fd::wait_for(c, mine, it + 1, timeout_ns)) {
            if (threadIdx.x == 0) out->timeouts = 1;
            return;
        }
        if (it == 0) t0 = gpu_ns();
    }
    if (threadIdx.x == 0) out->elapsed_ns = gpu_ns() - t0;
}

__global__ void pong_kernel(fd::view v, fd::signal s, word theirs, fd::counter_ref c, word mine, word iterations,
                            word timeout_ns, report* out) {
    for (word it = 0; it <= iterations; ++it) {
        if (!fd::wait_for(c, mine, it + 1, timeout_ns)) {
            if (threadIdx.x == 0) out->timeouts = 1;
            return;
        }
        fd::copy(v, 0);
        fd::notify(s, theirs);
    }
}

__global__ void burst_kernel(fd::view v, fd::signal s, word theirs) {
    fd::copy(v, blockIdx.x);
    fd::notify(s, theirs);
}

}  // namespace

cudaError_t produce(fd::view v, fd::signal s, word layers, word per_layer, cudaStream_t st) {
    produce_kernel<<<static_cast<unsigned>(per_layer), threads, 0, st>>>(v, s, layers, per_layer);
    return cudaGetLastError();
}

cudaError_t consume(fd::counter_ref c, const unsigned char* dst, word block_size, word layers, word per_layer,
                    word timeout_ns, report* out, cudaStream_t st) {
    consume_kernel<<<static_cast<unsigned>(per_layer), threads, 0, st>>>(c, dst, block_size, layers, per_layer,
                                                                        timeout_ns, out);
    return cudaGetLastError();
}

cudaError_t ping(fd::view v, fd::signal s, word theirs, fd::counter_ref c, word mine, word iterations,
                 word timeout_ns, report* out, cudaStream_t st) {
    ping_kernel<<<1, threads, 0, st>>>(v, s, theirs, c, mine, iterations, timeout_ns, out);
    return cudaGetLastError();
}

cudaError_t pong(fd::view v, fd::signal s, word theirs, fd::counter_ref c, word mine, word iterations,
                 word timeout_ns, report* out, cudaStream_t st) {
    pong_kernel<<<1, threads, 0, st>>>(v, s, theirs, c, mine, iterations, timeout_ns, out);
    return cudaGetLastError();
}

cudaError_t burst(fd::view v, fd::signal s, word theirs, cudaStream_t st) {
    burst_kernel<<<static_cast<unsigned>(v.count), threads, 0, st>>>(v, s, theirs);
    return cudaGetLastError();
}

}  // namespace demo
