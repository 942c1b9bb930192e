#pragma once

// ferry-bench's GPU memory (only where ferry::cuda was found): device and
// page-locked host buffers, and the reference copy that each row of a
// --memory cuda run is compared with: one cudaMemcpyAsync of the row's total
// bytes between the same kinds of memory, waited for before the next.

#include <cstddef>
#include <memory>

namespace bench {

struct cuda_free {
    bool device;
    void operator()(void* p) const noexcept;
};
using cuda_buffer = std::unique_ptr<void, cuda_free>;

/// `len` bytes on CUDA device 0, or page-locked host memory, set to `fill`.
cuda_buffer cuda_alloc(std::size_t len, bool device, unsigned char fill);

/// Sets `len` bytes at `p`, on CUDA device 0 or in host memory, to `fill`.
void cuda_fill(void* p, std::size_t len, bool device, unsigned char fill);

class copy_reference {
public:
    /// Copies between `local` (on the device or not) and a scratch buffer of
    /// `len` bytes of the peer's kind.
    copy_reference(void* local, bool local_device, bool remote_device, std::size_t len);
    ~copy_reference();
    copy_reference(const copy_reference&) = delete;
    copy_reference& operator=(const copy_reference&) = delete;

    /// GB/s of `iters` copies of `bytes`, local to scratch (write) or back.
    double gbps(std::size_t bytes, std::size_t iters, bool write);

private:
    void* local_;
    cuda_buffer scratch_;
    void* stream_ = nullptr;
    void* stop_ = nullptr;
};

}  // namespace bench
