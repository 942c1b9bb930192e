#pragma once

#include <ferry/cuda/backend_state.hpp>
#include <ferry/cuda/cuda_status.hpp>
#include <ferry/cuda/driver_api.hpp>
#include <ferry/cuda/ipc.hpp>
#include <ferry/cuda/path_cuda_ipc.hpp>
#include <ferry/detail/metadata.hpp>
#include <ferry/host/path_host_ipc.hpp>
#include <ferry/host/shared_memory.hpp>
#include <ferry/policy.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/allocation.hpp>
#include <ferry/ucx/memory_facts.hpp>
#include <ferry/ucx/memory_traits.hpp>
#include <ferry/ucx/path.hpp>
#include <ferry/ucx/path_ucx.hpp>
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

template <>
struct memory_traits<memory::cuda> {
    using backend_state = cuda::backend_state;
    /// cuda_ipc where it serves every pair, else host_ipc where it does
    /// (host memory on both sides), else UCX RMA.
    using paths = path_set<cuda_ipc_path, host_ipc_path, ucx_rma_path>;

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
    static allocation allocate(const backend_state& b, std::size_t len, std::uint32_t dev) {
        if (static_cast<int>(dev) >= b.devices)
            throw error(status::invalid_argument, "allocate: dev " + std::to_string(dev) + " given, but this process sees " +
                                                      std::to_string(b.devices) + " CUDA device(s)");
        const int device = static_cast<int>(dev);
        cuda::device_scope on(device);
        void* p = nullptr;
        cuda::check_cuda(cudaMalloc(&p, len), "allocate: cudaMalloc(" + std::to_string(len) + ")");
        return {std::shared_ptr<void>(p,
                                      [device](void* q) {
                                          int was = 0;
                                          cudaGetDevice(&was);
                                          if (was != device) cudaSetDevice(device);
                                          cudaFree(q);
                                          if (was != device) cudaSetDevice(was);
                                      }),
                {},
                0};
    }

    /// allocate_host(len): host memory that a peer on this host can map (as
    /// memory::host allocates it), page-locked on the backend's device so
    /// that the GPU copies straight into it; cudaMallocHost memory, which
    /// no peer maps, where the kernel has no memfd.
    static allocation allocate_host(const backend_state& b, std::size_t len) {
        cuda::device_scope on(b.device);
        allocation a = host::allocate_shared(len);
        if (!a.memory) {
            void* p = nullptr;
            cuda::check_cuda(cudaMallocHost(&p, len), "allocate_host: cudaMallocHost(" + std::to_string(len) + ")");
            a.memory = std::shared_ptr<void>(p, [](void* q) { cudaFreeHost(q); });
            return a;
        }
        void* const p = a.memory.get();
        cuda::check_cuda(cudaHostRegister(p, static_cast<std::size_t>(a.share_size), cudaHostRegisterPortable),
                         "allocate_host: cudaHostRegister(" + std::to_string(a.share_size) + ")");
        // Unregistered before the memory it pins is unmapped.
        a.memory = std::shared_ptr<void>(p, [keep = std::move(a.memory)](void* q) { cudaHostUnregister(q); });
        return a;
    }
};

}  // namespace detail
FERRY_NAMESPACE_END
