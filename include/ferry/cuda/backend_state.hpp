#pragma once

#include <ferry/cuda/copy_pool.hpp>
#include <ferry/cuda/cuda_status.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/config.hpp>
#include <ferry/ucx/context.hpp>
#include <ferry/version.hpp>

#include <cuda_runtime_api.h>
#include <ucp/api/ucp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail::cuda {

/// The oldest UCX release whose CUDA transports do RMA on device memory
/// (1.13 built with CUDA fails or crashes on it).
inline constexpr unsigned min_ucx_major = 1;
inline constexpr unsigned min_ucx_minor = 18;

inline std::string ucx_version_string() {
    unsigned major = 0, minor = 0, release = 0;
    ucp_get_version(&major, &minor, &release);
    return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(release);
}

inline const char* ucx_requirement() {
    return "ferry's memory::cuda needs a UCX >= 1.18 built with CUDA (NVIDIA HPC-X or DOCA, conda-forge's ucx, or a "
           "source build configured --with-cuda), found first on the library path";
}

/// memory::cuda's per-backend state: the device the backend works on, once
/// it checked that CUDA and UCX can serve it.
struct backend_state {
    backend_state(const ucx_config& cfg, const context& ctx) {
        int count = 0;
        if (auto e = cudaGetDeviceCount(&count); e != cudaSuccess || count == 0)
            throw error(status::device_error, std::string("ucx_backend<memory::cuda>: no CUDA device is usable (") +
                                                  (e == cudaSuccess ? "none found" : cudaGetErrorString(e)) + ")");
        if (cfg.cuda_device >= count)
            throw error(status::invalid_argument, "ucx_config::cuda_device is " + std::to_string(cfg.cuda_device) +
                                                      " but this process sees " + std::to_string(count) +
                                                      " CUDA device(s)");
        if (cfg.cuda_device >= 0) {
            device = cfg.cuda_device;
        } else {
            check_cuda(cudaGetDevice(&device), "cudaGetDevice");
        }
        devices = count;
        unsigned major = 0, minor = 0, release = 0;
        ucp_get_version(&major, &minor, &release);
        if ((ctx.memory_types() & (std::uint64_t{1} << UCS_MEMORY_TYPE_CUDA)) == 0)
            throw error(status::invalid_argument, "ucx_backend<memory::cuda>: UCX " + ucx_version_string() +
                                                      " has no CUDA support (its context reports no CUDA memory "
                                                      "type); " + ucx_requirement());
        if (major < min_ucx_major || (major == min_ucx_major && minor < min_ucx_minor))
            throw error(status::invalid_argument, "ucx_backend<memory::cuda>: UCX " + ucx_version_string() +
                                                      " cannot do RMA on CUDA memory; " + ucx_requirement());
        // The constructing thread drives the worker under inline progress:
        // give it the device's primary context if it has none yet.
        bind_thread();
        check_cuda(cudaFree(nullptr), "cudaFree(nullptr) (creating the primary context)");
        copies = std::make_shared<copy_pool>(device);
    }

    /// Makes the backend's device current on the calling thread, so that
    /// UCX's CUDA transports find a context when this thread drives the worker.
    void bind_thread() const noexcept { cudaSetDevice(device); }

    int device = 0;
    int devices = 0;
    // What released cuda_ipc copies leave for the next prepare.
    std::shared_ptr<copy_pool> copies;
    // Peers' allocations that device_signal handed out addresses in, kept
    // mapped until the backend goes: a kernel may hold such an address for
    // as long. Guarded by the peer table's lock.
    std::vector<std::shared_ptr<void>> signal_mappings;
};

}  // namespace detail::cuda
FERRY_NAMESPACE_END
