// test_device's kernels: a producer that writes layers to the peer with
// device puts and a signal per layer, a consumer that waits for each layer
// and checks it, as a user's own kernels would.
// Index checks on in every build type, so that the test of them runs in
// the release build the GPU run uses.
#define FERRY_DEVICE_CHECKS 1
#include <ferry/device.cuh>

#include "support/device_kernels.hpp"

namespace ferry_test::device {
namespace {

namespace fd = ferry::device;

constexpr unsigned threads = 256;

__global__ void copy_one(fd::view v, word i) { fd::copy(v, i); }

__global__ void produce(fd::view v, fd::signal layers, fd::counter_ref acks, plan p, outcome* out) {
    for (word round = 0; round < p.rounds; ++round) {
        // The consumer must have checked the last round before this one
        // overwrites it.
        if (!fd::wait_for(acks, 0, round * p.per_layer, p.timeout_ns)) {
            if (threadIdx.x == 0) atomicAdd(&out->timeouts, 1ULL);
            return;
        }
        for (word layer = 0; layer < p.layers; ++layer) {
            const word i = layer * p.per_layer + blockIdx.x;
            const fd::block b = v.blocks[i];
            unsigned char* src = reinterpret_cast<unsigned char*>(b.src);
            for (word k = threadIdx.x; k < b.len; k += blockDim.x) src[k] = layer_byte(round, i, k);
            __syncthreads();
            fd::copy(v, i);
            fd::notify(layers, layer);
        }
    }
}

__global__ void consume(fd::counter_ref layers, fd::signal ack, const unsigned char* dst, word stride, word len, plan p,
                        outcome* out) {
    for (word round = 0; round < p.rounds; ++round) {
        for (word layer = 0; layer < p.layers; ++layer) {
            if (!fd::wait_for(layers, layer, (round + 1) * p.per_layer, p.timeout_ns)) {
                if (threadIdx.x == 0) atomicAdd(&out->timeouts, 1ULL);
                return;
            }
            const word i = layer * p.per_layer + (blockIdx.x + 1) % p.per_layer;
            const unsigned char* at = dst + i * stride;
            word bad = 0;
            for (word k = threadIdx.x; k < len; k += blockDim.x) bad += at[k] != layer_byte(round, i, k) ? 1 : 0;
            if (bad) atomicAdd(&out->bad_bytes, bad);
        }
        // Every thread's reads of the round are done before the producer
        // may overwrite it.
        fd::notify(ack, 0);
    }
}

__global__ void wait_kernel(fd::counter_ref c, word target, word timeout_ns, outcome* out) {
    if (!fd::wait_for(c, 0, target, timeout_ns) && threadIdx.x == 0) atomicAdd(&out->timeouts, 1ULL);
}

}  // namespace

cudaError_t produce_layers(fd::view v, fd::signal layers, fd::counter_ref acks, plan p, outcome* out,
                           cudaStream_t stream) {
    produce<<<static_cast<unsigned>(p.per_layer), threads, 0, stream>>>(v, layers, acks, p, out);
    return cudaGetLastError();
}

cudaError_t consume_layers(fd::counter_ref layers, fd::signal ack, const unsigned char* dst, word stride, word len,
                           plan p, outcome* out, cudaStream_t stream) {
    consume<<<static_cast<unsigned>(p.per_layer), threads, 0, stream>>>(layers, ack, dst, stride, len, p, out);
    return cudaGetLastError();
}

cudaError_t copy_block(fd::view v, word i, cudaStream_t stream) {
    copy_one<<<1, threads, 0, stream>>>(v, i);
    return cudaGetLastError();
}

cudaError_t wait_once(fd::counter_ref c, word target, word timeout_ns, outcome* out, cudaStream_t stream) {
    wait_kernel<<<1, 32, 0, stream>>>(c, target, timeout_ns, out);
    return cudaGetLastError();
}

}  // namespace ferry_test::device
