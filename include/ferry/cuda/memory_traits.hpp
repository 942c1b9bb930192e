#pragma once

#include <ferry/cuda/cuda_status.hpp>
#include <ferry/cuda/device_copy.hpp>
#include <ferry/cuda/ipc.hpp>
#include <ferry/detail/host_id.hpp>
#include <ferry/detail/metadata.hpp>
#include <ferry/policy.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/config.hpp>
#include <ferry/ucx/context.hpp>
#include <ferry/ucx/memory.hpp>
#include <ferry/ucx/memory_traits.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/version.hpp>

#include <cuda.h>
#include <cuda_runtime_api.h>
#include <ucp/api/ucp.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

namespace cuda {

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

}  // namespace cuda

template <>
struct memory_traits<memory::cuda> {
    static constexpr bool has_device_path = true;
    using device_op = cuda::device_copy;
    using copy_pair = cuda::copy_pair;

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
                cuda::check_cuda(cudaGetDevice(&device), "cudaGetDevice");
            }
            devices = count;
            unsigned major = 0, minor = 0, release = 0;
            ucp_get_version(&major, &minor, &release);
            if ((ctx.memory_types() & (std::uint64_t{1} << UCS_MEMORY_TYPE_CUDA)) == 0)
                throw error(status::invalid_argument, "ucx_backend<memory::cuda>: UCX " + cuda::ucx_version_string() +
                                                          " has no CUDA support (its context reports no CUDA memory "
                                                          "type); " + cuda::ucx_requirement());
            if (major < cuda::min_ucx_major || (major == cuda::min_ucx_major && minor < cuda::min_ucx_minor))
                throw error(status::invalid_argument, "ucx_backend<memory::cuda>: UCX " + cuda::ucx_version_string() +
                                                          " cannot do RMA on CUDA memory; " + cuda::ucx_requirement());
            // The constructing thread drives the worker under inline progress:
            // give it the device's primary context if it has none yet.
            bind_thread();
            cuda::check_cuda(cudaFree(nullptr), "cudaFree(nullptr) (creating the primary context)");
        }

        /// Makes the backend's device current on the calling thread, so that
        /// UCX's CUDA transports find a context when this thread drives the worker.
        void bind_thread() const noexcept { cudaSetDevice(device); }

        int device = 0;
        int devices = 0;
    };

    /// Tells host memory from CUDA memory, checks `dev` against where the
    /// memory is, and exports CUDA memory for IPC.
    static memory_facts classify(const backend_state& b, const char* what, const void* ptr, std::size_t len,
                                 std::uint32_t dev) {
        memory_facts facts;
        // For memory CUDA never saw, every attribute stays 0 (type included).
        auto type = static_cast<CUmemorytype>(0);
        int ordinal = -1;
        int managed = 0;
        CUdeviceptr device_pointer = 0;
        void* values[] = {&type, &ordinal, &managed, &device_pointer};
        CUpointer_attribute attributes[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                            CU_POINTER_ATTRIBUTE_IS_MANAGED, CU_POINTER_ATTRIBUTE_DEVICE_POINTER};
        const auto& d = cuda::checked_driver();
        const bool known =
            d.pointer_get_attributes(4, attributes, values, reinterpret_cast<CUdeviceptr>(ptr)) == CUDA_SUCCESS;
        if (!known || type != CU_MEMORYTYPE_DEVICE) {
            if (dev != 0)
                throw error(status::invalid_argument, std::string(what) + ": dev " + std::to_string(dev) +
                                                          " given, but the memory is host memory (dev 0)");
            // Page-locked host memory (cudaMallocHost, cudaHostRegister) is
            // reachable from the GPU: the cuda_ipc copy can read or write it.
            if (known && type == CU_MEMORYTYPE_HOST && device_pointer != 0) {
                facts.gpu_reachable = true;
                facts.gpu_offset = static_cast<std::int64_t>(device_pointer - reinterpret_cast<CUdeviceptr>(ptr));
            }
            return facts;
        }
        if (static_cast<int>(dev) != ordinal)
            throw error(status::invalid_argument, std::string(what) + ": dev " + std::to_string(dev) +
                                                      " given, but the memory is on CUDA device " +
                                                      std::to_string(ordinal));
        CUdeviceptr base = 0;
        std::size_t size = 0;
        cuda::check_cu(d.mem_get_address_range(&base, &size, reinterpret_cast<CUdeviceptr>(ptr)),
                       "cuMemGetAddressRange");
        const auto begin = reinterpret_cast<std::uintptr_t>(ptr);
        if (len > size || begin - base > size - len)
            throw error(status::invalid_argument, std::string(what) + ": [ptr, ptr + " + std::to_string(len) +
                                                      ") runs past the end of its CUDA allocation of " +
                                                      std::to_string(size) + " bytes");
        facts.kind = memory_kind_code::cuda;
        facts.ucx_type = managed ? UCS_MEMORY_TYPE_CUDA_MANAGED : UCS_MEMORY_TYPE_CUDA;
        facts.gpu_reachable = !managed;
        if (!managed) {
            cuda::device_scope on(ordinal);
            cuda::export_ipc(facts, ptr);
        }
        static_cast<void>(b);
        return facts;
    }

    /// allocate(len, dev): device memory on CUDA device `dev`, from cudaMalloc
    /// (which CUDA IPC can export), freed when the region goes.
    static std::shared_ptr<void> allocate(const backend_state& b, std::size_t len, std::uint32_t dev) {
        if (static_cast<int>(dev) >= b.devices)
            throw error(status::invalid_argument, "allocate: dev " + std::to_string(dev) + " given, but this process sees " +
                                                      std::to_string(b.devices) + " CUDA device(s)");
        const int device = static_cast<int>(dev);
        cuda::device_scope on(device);
        void* p = nullptr;
        cuda::check_cuda(cudaMalloc(&p, len), "allocate: cudaMalloc(" + std::to_string(len) + ")");
        return std::shared_ptr<void>(p, [device](void* q) {
            int was = 0;
            cudaGetDevice(&was);
            if (was != device) cudaSetDevice(device);
            cudaFree(q);
            if (was != device) cudaSetDevice(was);
        });
    }

    /// Why the cuda_ipc path cannot serve a pair, or empty if it can. Opens
    /// the peer's IPC mapping on first use.
    static std::string ipc_refusal(const backend_state& b, const local_region& l, remote_region& r,
                                   const std::string& peer_host) {
        if (!l.facts.gpu_reachable)
            return "the local block is neither CUDA device memory nor page-locked host memory";
        if (l.facts.kind == memory_kind_code::cuda && static_cast<int>(l.dev) != b.device)
            return "the local block is on CUDA device " + std::to_string(l.dev) + ", the backend's is " +
                   std::to_string(b.device) + " (ucx_config::cuda_device)";
        if (r.kind != memory_kind_code::cuda) return "the remote block is not CUDA device memory";
        if (peer_host.empty() || peer_host != host_id()) return "the peer runs on another host";
        cuda::open_ipc(r, b.device);
        if (!r.ipc_error.empty()) return "the remote region cannot be mapped: " + r.ipc_error;
        return {};
    }

    /// The device address, in this process, of `addr` in a mapped remote region.
    static std::uint64_t mapped_address(const remote_region& r, std::uint64_t addr) noexcept {
        return r.ipc_base + r.ipc_offset + (addr - r.addr);
    }

    /// The address at which the backend's GPU reaches `addr` in a local region.
    static std::uint64_t gpu_address(const local_region& l, std::uint64_t addr) noexcept {
        return addr + static_cast<std::uint64_t>(l.facts.gpu_offset);
    }
};

}  // namespace detail
FERRY_NAMESPACE_END
