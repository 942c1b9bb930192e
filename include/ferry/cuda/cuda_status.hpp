#pragma once

#include <ferry/cuda/driver_api.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

FERRY_NAMESPACE_BEGIN
namespace detail::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, std::string_view what) {
    throw error(status::device_error, std::string(what) + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

inline void check_cuda(cudaError_t e, std::string_view what) {
    if (e != cudaSuccess) throw_cuda(e, what);
}

[[noreturn]] inline void throw_cu(CUresult r, std::string_view what) {
    const char* name = nullptr;
    if (driver().get_error_name) driver().get_error_name(r, &name);
    throw error(status::device_error,
                std::string(what) + ": " + (name ? std::string(name) : "CUresult " + std::to_string(r)));
}

inline void check_cu(CUresult r, std::string_view what) {
    if (r != CUDA_SUCCESS) throw_cu(r, what);
}

/// Makes `device` current on this thread for the scope (its primary
/// context, as the CUDA runtime does), then restores the previous device.
class device_scope {
public:
    explicit device_scope(int device) {
        check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
        if (previous_ != device) check_cuda(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
    }
    ~device_scope() {
        int now = -1;
        if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
    }
    device_scope(const device_scope&) = delete;
    device_scope& operator=(const device_scope&) = delete;

private:
    int previous_ = 0;
};

}  // namespace detail::cuda
FERRY_NAMESPACE_END
