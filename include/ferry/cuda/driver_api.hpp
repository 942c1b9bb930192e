#pragma once

#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <string>
#include <type_traits>

FERRY_NAMESPACE_BEGIN
namespace detail::cuda {

/// The CUDA driver functions ferry calls, looked up through the runtime
/// (cudaGetDriverEntryPointByVersion) instead of linked: a program built
/// with ferry::cuda then starts, and reports "no CUDA device", on a machine
/// without the driver, where libcuda.so.1 does not exist.
struct driver_api {
    decltype(&::cuPointerGetAttributes) pointer_get_attributes = nullptr;
    decltype(&::cuMemGetAddressRange) mem_get_address_range = nullptr;
    decltype(&::cuModuleLoadData) module_load_data = nullptr;
    decltype(&::cuModuleGetFunction) module_get_function = nullptr;
    decltype(&::cuLaunchKernel) launch_kernel = nullptr;
    decltype(&::cuCtxGetCurrent) ctx_get_current = nullptr;
    decltype(&::cuCtxPushCurrent) ctx_push_current = nullptr;
    decltype(&::cuCtxPopCurrent) ctx_pop_current = nullptr;
    decltype(&::cuGetErrorName) get_error_name = nullptr;
    std::string missing;  // the first function that could not be found, if any

    [[nodiscard]] bool ok() const noexcept { return missing.empty(); }
};

inline const driver_api& driver() {
    static const driver_api api = [] {
        driver_api a;
        auto load = [&a](const char* name, auto& fn) {
            if (!a.missing.empty()) return;
            void* p = nullptr;
            cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
            if (cudaGetDriverEntryPointByVersion(name, &p, CUDA_VERSION, cudaEnableDefault, &found) != cudaSuccess ||
                found != cudaDriverEntryPointSuccess || p == nullptr) {
                cudaGetLastError();
                a.missing = name;
                return;
            }
            fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
        };
        load("cuPointerGetAttributes", a.pointer_get_attributes);
        load("cuMemGetAddressRange", a.mem_get_address_range);
        load("cuModuleLoadData", a.module_load_data);
        load("cuModuleGetFunction", a.module_get_function);
        load("cuLaunchKernel", a.launch_kernel);
        load("cuCtxGetCurrent", a.ctx_get_current);
        load("cuCtxPushCurrent", a.ctx_push_current);
        load("cuCtxPopCurrent", a.ctx_pop_current);
        load("cuGetErrorName", a.get_error_name);
        return a;
    }();
    return api;
}

/// driver(), or a throw saying which function the driver lacks.
inline const driver_api& checked_driver() {
    const auto& d = driver();
    if (!d.ok())
        throw error(status::device_error, "the CUDA driver does not provide " + d.missing +
                                              " (no driver installed, or older than the CUDA runtime ferry was built with)");
    return d;
}

}  // namespace detail::cuda
FERRY_NAMESPACE_END
