#pragma once

#include <ferry/cuda/cuda_status.hpp>
#include <ferry/ucx/memory_facts.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/version.hpp>

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

FERRY_NAMESPACE_BEGIN
namespace detail::cuda {

/// Fills in the CUDA IPC export of the allocation that holds `ptr`: the
/// handle, where ptr sits in the allocation, and the allocation's size.
/// Memory that legacy CUDA IPC cannot export (cuMemCreate mappings, say)
/// stays without a handle and moves over UCX only.
inline void export_ipc(memory_facts& facts, const void* ptr) noexcept {
    CUdeviceptr base = 0;
    std::size_t size = 0;
    if (!driver().ok() || driver().mem_get_address_range(&base, &size, reinterpret_cast<CUdeviceptr>(ptr)) != CUDA_SUCCESS)
        return;
    cudaIpcMemHandle_t handle{};
    if (cudaIpcGetMemHandle(&handle, const_cast<void*>(ptr)) != cudaSuccess) {
        cudaGetLastError();  // not sticky, but keep it out of the caller's way
        return;
    }
    facts.ipc_handle.resize(sizeof handle);
    std::memcpy(facts.ipc_handle.data(), &handle, sizeof handle);
    facts.ipc_offset = reinterpret_cast<std::uintptr_t>(ptr) - base;
    facts.ipc_alloc_size = size;
}

/// Maps a peer's region through CUDA IPC, once; afterwards r.ipc_base is the
/// local address of the start of the peer's allocation, or r.ipc_error says
/// why there is none. Opening maps the whole allocation; it must be at least
/// as large as the peer claimed, since ferry addresses the region inside it.
inline void open_ipc(remote_region& r, int device) noexcept {
    if (r.ipc_mapping || !r.ipc_error.empty()) return;
    if (r.ipc_handle.size() != sizeof(cudaIpcMemHandle_t)) {
        r.ipc_error = r.ipc_handle.empty() ? "the peer published no CUDA IPC handle for it"
                                           : "its IPC handle has " + std::to_string(r.ipc_handle.size()) +
                                                 " bytes, not " + std::to_string(sizeof(cudaIpcMemHandle_t));
        return;
    }
    cudaIpcMemHandle_t handle;
    std::memcpy(&handle, r.ipc_handle.data(), sizeof handle);
    int previous = 0;
    cudaGetDevice(&previous);
    if (previous != device) cudaSetDevice(device);
    void* mapped = nullptr;
    const cudaError_t e = cudaIpcOpenMemHandle(&mapped, handle, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) {
        cudaGetLastError();
        r.ipc_error = std::string("cudaIpcOpenMemHandle: ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
    } else {
        CUdeviceptr base = 0;
        std::size_t size = 0;
        if (driver().mem_get_address_range(&base, &size, reinterpret_cast<CUdeviceptr>(mapped)) != CUDA_SUCCESS ||
            size < r.ipc_alloc_size) {
            cudaIpcCloseMemHandle(mapped);
            r.ipc_error = "the mapped allocation is smaller than the " + std::to_string(r.ipc_alloc_size) +
                          " bytes the peer published";
        } else {
            r.ipc_base = reinterpret_cast<std::uintptr_t>(mapped);
            r.ipc_mapping = std::shared_ptr<void>(mapped, [device](void* p) {
                int was = 0;
                cudaGetDevice(&was);
                if (was != device) cudaSetDevice(device);
                cudaIpcCloseMemHandle(p);
                if (was != device) cudaSetDevice(was);
            });
        }
    }
    if (previous != device) cudaSetDevice(previous);
}

/// Registers a peer's shared host memory, already mapped (r.ipc_mapping),
/// with CUDA, once, so that the copy kernel on `device` loads and stores it:
/// afterwards r.gpu_base is where the GPU reaches the mapping's start, or
/// r.gpu_error says why it cannot.
inline void register_shared(remote_region& r, int device) noexcept {
    if (r.gpu_registration || !r.gpu_error.empty() || !r.ipc_mapping) return;
    int previous = 0;
    cudaGetDevice(&previous);
    if (previous != device) cudaSetDevice(device);
    void* const base = reinterpret_cast<void*>(r.ipc_base);
    const auto size = static_cast<std::size_t>(r.ipc_alloc_size);
    void* on_gpu = nullptr;
    cudaError_t e = cudaHostRegister(base, size, cudaHostRegisterPortable | cudaHostRegisterMapped);
    if (e == cudaSuccess) {
        e = cudaHostGetDevicePointer(&on_gpu, base, 0);
        if (e != cudaSuccess) cudaHostUnregister(base);
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        r.gpu_error = std::string("cudaHostRegister of its mapping: ") + cudaGetErrorName(e) + ": " +
                      cudaGetErrorString(e);
    } else {
        r.gpu_base = reinterpret_cast<std::uintptr_t>(on_gpu);
        // Unregistered before the mapping it keeps is unmapped.
        r.gpu_registration = std::shared_ptr<void>(base, [keep = r.ipc_mapping](void* p) { cudaHostUnregister(p); });
    }
    if (previous != device) cudaSetDevice(previous);
}

}  // namespace detail::cuda
FERRY_NAMESPACE_END
