#pragma once

// ferry::device::counter: 8-byte words in this process's GPU memory (one per
// layer, say) that peers' kernels add to (ferry::device::notify) and that
// kernels here wait on (ferry::device::wait). Register them with the
// backend, as any GPU memory, for peers to name them in device_signal.
#include <ferry/cuda/cuda_status.hpp>
#include <ferry/desc.hpp>
#include <ferry/device/view.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

FERRY_NAMESPACE_BEGIN
namespace device {

class counter {
public:
    /// `count` counters at 0 on CUDA device `dev`.
    explicit counter(std::size_t count = 1, std::uint32_t dev = 0) : count_(count), dev_(dev) {
        if (count == 0) throw error(status::invalid_argument, "counter: count is 0");
        detail::cuda::device_scope on(static_cast<int>(dev));
        try {
            // An allocation of its own, which the user registers and
            // publishes as any GPU memory.
            void* p = nullptr;
            detail::cuda::check_cuda(cudaMalloc(&p, size()), "counter: cudaMalloc");
            word_ = static_cast<word*>(p);
            detail::cuda::check_cuda(cudaMallocHost(&p, size()), "counter: cudaMallocHost");
            host_ = static_cast<word*>(p);
            detail::cuda::check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                                     "counter: cudaStreamCreateWithFlags");
            // On the counter's stream: a kernel spinning elsewhere must not hold this up.
            detail::cuda::check_cuda(cudaMemsetAsync(word_, 0, size(), stream_), "counter: cudaMemsetAsync");
            detail::cuda::check_cuda(cudaStreamSynchronize(stream_), "counter: cudaStreamSynchronize");
        } catch (...) {
            release();
            throw;
        }
    }
    ~counter() { release(); }
    counter(const counter&) = delete;
    counter& operator=(const counter&) = delete;

    /// What a kernel here waits on.
    [[nodiscard]] counter_ref ref() const noexcept { return {word_, count_}; }

    /// The words, for register_memory(data(), size(), dev()), and as a
    /// descriptor, for the peer's device_signal.
    [[nodiscard]] void* data() const noexcept { return word_; }
    [[nodiscard]] std::size_t count() const noexcept { return count_; }
    [[nodiscard]] std::size_t size() const noexcept { return count_ * sizeof(word); }
    [[nodiscard]] std::uint32_t dev() const noexcept { return dev_; }
    [[nodiscard]] desc descriptor() const noexcept { return {reinterpret_cast<std::uintptr_t>(word_), size(), dev_}; }

    /// Counter i now, as the host sees it: signals whose data is visible (a
    /// kernel's notify orders them at system scope). The copy runs on the
    /// counter's own non-blocking stream, so it neither waits for nor holds
    /// up a kernel spinning on the counter on another stream (a copy on the
    /// legacy default stream would wait for such a kernel, which may wait
    /// for the host: a deadlock). A few microseconds; for set-up and polling
    /// loops, not for a kernel's critical path.
    [[nodiscard]] word value(std::size_t i = 0) const {
        if (i >= count_)
            throw error(status::invalid_argument, "counter::value: counter " + std::to_string(i) + " of " +
                                                      std::to_string(count_));
        detail::cuda::device_scope on(static_cast<int>(dev_));
        detail::cuda::check_cuda(cudaMemcpyAsync(host_ + i, word_ + i, sizeof(word), cudaMemcpyDeviceToHost, stream_),
                                 "counter::value: cudaMemcpyAsync");
        detail::cuda::check_cuda(cudaStreamSynchronize(stream_), "counter::value: cudaStreamSynchronize");
        return host_[i];
    }

private:
    void release() noexcept {
        int previous = -1;
        cudaGetDevice(&previous);
        if (previous != static_cast<int>(dev_)) cudaSetDevice(static_cast<int>(dev_));
        if (stream_) cudaStreamDestroy(stream_);
        if (host_) cudaFreeHost(host_);
        if (word_) cudaFree(word_);
        if (previous >= 0 && previous != static_cast<int>(dev_)) cudaSetDevice(previous);
        stream_ = nullptr;
        host_ = nullptr;
        word_ = nullptr;
    }

    std::size_t count_;
    std::uint32_t dev_;
    word* word_ = nullptr;
    word* host_ = nullptr;  // page-locked, so that the copy back is asynchronous
    cudaStream_t stream_ = nullptr;
};

}  // namespace device
FERRY_NAMESPACE_END
