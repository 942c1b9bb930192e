#include "cuda_buffers.hpp"

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>

namespace bench {

namespace {

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

}  // namespace

void cuda_free::operator()(void* p) const noexcept {
    if (device) cudaFree(p);
    else cudaFreeHost(p);
}

cuda_buffer cuda_alloc(std::size_t len, bool device, unsigned char fill) {
    void* p = nullptr;
    check(cudaSetDevice(0), "cudaSetDevice(0)");
    if (device) {
        check(cudaMalloc(&p, len), "cudaMalloc");
        cuda_buffer b(p, cuda_free{true});
        check(cudaMemset(p, fill, len), "cudaMemset");
        check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
        return b;
    }
    check(cudaMallocHost(&p, len), "cudaMallocHost");
    cuda_buffer b(p, cuda_free{false});
    std::memset(p, fill, len);
    return b;
}

void cuda_fill(void* p, std::size_t len, bool device, unsigned char fill) {
    if (!device) {
        std::memset(p, fill, len);
        return;
    }
    check(cudaMemset(p, fill, len), "cudaMemset");
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

copy_reference::copy_reference(void* local, bool, bool remote_device, std::size_t len)
    : local_(local), scratch_(cuda_alloc(len, remote_device, 0x3C)) {
    cudaStream_t s = nullptr;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    stream_ = s;
    cudaEvent_t e = nullptr;
    check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    stop_ = e;
}

copy_reference::~copy_reference() {
    cudaEventDestroy(static_cast<cudaEvent_t>(stop_));
    cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

// Timed as ferry's transfers are: each copy started, then waited for (its
// event polled) before the next, on the wall clock.
double copy_reference::gbps(std::size_t bytes, std::size_t iters, bool write) {
    auto stream = static_cast<cudaStream_t>(stream_);
    auto done = static_cast<cudaEvent_t>(stop_);
    void* dst = write ? scratch_.get() : local_;
    const void* src = write ? local_ : scratch_.get();
    auto once = [&] {
        check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream), "cudaMemcpyAsync");
        check(cudaEventRecord(done, stream), "cudaEventRecord");
        cudaError_t e;
        while ((e = cudaEventQuery(done)) == cudaErrorNotReady) {
        }
        check(e, "cudaEventQuery");
    };
    for (int i = 0; i < 3; ++i) once();
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < iters; ++i) once();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return static_cast<double>(bytes) * static_cast<double>(iters) / seconds / 1e9;
}

}  // namespace bench
