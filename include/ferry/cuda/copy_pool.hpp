#pragma once

#include <ferry/version.hpp>

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <mutex>
#include <optional>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail::cuda {

/// What a cuda_ipc copy needs besides its table's contents: a stream, an
/// event, and device memory for the chunk table.
struct copy_resources {
    cudaStream_t stream = nullptr;
    cudaEvent_t done = nullptr;
    CUdeviceptr table = 0;
    std::size_t table_bytes = 0;  // what `table` holds
};

/// The resources of released cuda_ipc copies, kept for the next prepare on
/// the same backend: creating a stream and an event, allocating the table
/// and warming them up with a launch cost a prepare hundreds of
/// microseconds, reusing them nothing. Shared by the backend and its
/// copies, so that a copy released after the backend still has somewhere
/// to go. Any thread; prepare and release only, never a post.
class copy_pool {
public:
    explicit copy_pool(int device) noexcept : device_(device) {}
    ~copy_pool() {
        for (copy_resources& r : kept_) destroy(device_, r);
    }
    copy_pool(const copy_pool&) = delete;
    copy_pool& operator=(const copy_pool&) = delete;

    /// A released copy's resources, the first whose table holds `bytes`,
    /// else any (its table too small: the caller grows it); none if empty.
    std::optional<copy_resources> take(std::size_t bytes) {
        std::lock_guard lock(mutex_);
        if (kept_.empty()) return std::nullopt;
        std::size_t pick = kept_.size() - 1;
        for (std::size_t i = 0; i < kept_.size(); ++i)
            if (kept_[i].table_bytes >= bytes) {
                pick = i;
                break;
            }
        copy_resources r = kept_[pick];
        kept_.erase(kept_.begin() + static_cast<std::ptrdiff_t>(pick));
        return r;
    }

    /// Keeps a released copy's resources, whose work is done, or destroys
    /// them beyond `most` kept.
    void give(copy_resources r) noexcept {
        {
            std::lock_guard lock(mutex_);
            if (kept_.size() < most) {
                kept_.push_back(r);
                return;
            }
        }
        destroy(device_, r);
    }

    /// Frees a copy's resources on `device`.
    static void destroy(int device, copy_resources& r) noexcept {
        int previous = -1;
        cudaGetDevice(&previous);
        if (previous != device) cudaSetDevice(device);
        if (r.done) cudaEventDestroy(r.done);
        if (r.stream) cudaStreamDestroy(r.stream);
        if (r.table) cudaFree(reinterpret_cast<void*>(r.table));
        if (previous >= 0 && previous != device) cudaSetDevice(previous);
        r = {};
    }

private:
    // Enough for the transfers a backend prepares and releases in turn,
    // few enough that an idle backend holds little.
    static constexpr std::size_t most = 64;

    int device_;
    std::mutex mutex_;
    std::vector<copy_resources> kept_;
};

}  // namespace detail::cuda
FERRY_NAMESPACE_END
