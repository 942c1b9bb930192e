#pragma once

#include <ferry/cuda/cuda_status.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <cuda.h>
#include <cuda_runtime_api.h>
#include <nvrtc.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail::cuda {

/// One piece of a transfer for one thread block: `count` copies of `len`
/// bytes, the k-th from src + k * src_stride to dst + k * dst_stride, all
/// device addresses valid in the launching context. A chunk of several
/// copies holds at most 64 KiB (plan_chunks), so that the kernel indexes
/// it in 32 bits.
struct copy_chunk {
    std::uint64_t src;
    std::uint64_t dst;
    std::uint64_t len;
    std::uint64_t src_stride;
    std::uint64_t dst_stride;
    std::uint64_t count;
};
static_assert(sizeof(copy_chunk) == 48);

inline constexpr unsigned copy_block_threads = 256;

// The kernel, compiled at run time (NVRTC) for the device it runs on, so
// that a header-only library needs no CUDA compiler at the user's build.
// One block per chunk; 16-byte accesses where the chunk allows them, bytes
// otherwise. The threads of a chunk of several copies share its words
// across the copies, so that copies smaller than the block keep every
// thread busy. (Issuing several loads per thread before storing, for reads
// of the peer's memory, measured no faster on an H200: 1.45-1.50 TB/s
// either way for 1024 x 64 KiB.)
inline constexpr const char* copy_kernel_source = R"(
struct copy_chunk { unsigned long long src, dst, len, src_stride, dst_stride, count; };
template <class T>
__device__ void copy_one(const copy_chunk& c, unsigned long long n) {
    const T* s = reinterpret_cast<const T*>(c.src);
    T* d = reinterpret_cast<T*>(c.dst);
    for (unsigned long long i = threadIdx.x; i < n; i += blockDim.x) d[i] = s[i];
}
template <class T>
__device__ void copy_many(const copy_chunk& c, unsigned n) {
    const unsigned total = n * static_cast<unsigned>(c.count);
    for (unsigned i = threadIdx.x; i < total; i += blockDim.x) {
        const unsigned k = i / n, w = i - k * n;
        const T* s = reinterpret_cast<const T*>(c.src + k * c.src_stride);
        T* d = reinterpret_cast<T*>(c.dst + k * c.dst_stride);
        d[w] = s[w];
    }
}
extern "C" __global__ void ferry_copy_chunks(const copy_chunk* chunks) {
    const copy_chunk c = chunks[blockIdx.x];
    const bool wide = ((c.src | c.dst | c.len | c.src_stride | c.dst_stride) & 15ULL) == 0;
    if (c.count == 1) {
        if (wide) copy_one<uint4>(c, c.len / 16);
        else copy_one<unsigned char>(c, c.len);
    } else if (c.count > 1) {
        if (wide) copy_many<uint4>(c, static_cast<unsigned>(c.len / 16));
        else copy_many<unsigned char>(c, static_cast<unsigned>(c.len));
    }
}
)";

/// The copy kernel loaded into `device`'s primary context, compiled the
/// first time a process asks for that device (about 0.1 s), then cached.
/// The calling thread must have that device current.
inline CUfunction copy_kernel(int device) {
    static std::mutex mutex;
    static std::map<int, CUfunction> loaded;
    std::lock_guard lock(mutex);
    if (auto it = loaded.find(device); it != loaded.end()) return it->second;

    int major = 0, minor = 0;
    check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
    nvrtcProgram program = nullptr;
    if (auto r = nvrtcCreateProgram(&program, copy_kernel_source, "ferry_copy_chunks.cu", 0, nullptr, nullptr);
        r != NVRTC_SUCCESS)
        throw error(status::device_error, std::string("nvrtcCreateProgram: ") + nvrtcGetErrorString(r));
    struct program_guard {
        nvrtcProgram& p;
        ~program_guard() { nvrtcDestroyProgram(&p); }
    } guard{program};
    // Machine code for this device where NVRTC knows it; PTX for the
    // driver to finish where the device is newer than this NVRTC.
    std::vector<char> image;
    bool cubin = true;
    for (const bool native : {true, false}) {
        const std::string arch = std::string("--gpu-architecture=") + (native ? "sm_" : "compute_") +
                                 std::to_string(major) + std::to_string(minor);
        const char* options[] = {arch.c_str(), "--std=c++17"};
        if (nvrtcCompileProgram(program, 2, options) != NVRTC_SUCCESS) continue;
        std::size_t size = 0;
        if (native) {
            if (nvrtcGetCUBINSize(program, &size) != NVRTC_SUCCESS || size == 0) continue;
            image.resize(size);
            nvrtcGetCUBIN(program, image.data());
        } else {
            if (nvrtcGetPTXSize(program, &size) != NVRTC_SUCCESS || size == 0) continue;
            image.resize(size);
            nvrtcGetPTX(program, image.data());
        }
        cubin = native;
        break;
    }
    if (image.empty())
        throw error(status::device_error, "the cuda_ipc copy kernel does not compile for compute capability " +
                                              std::to_string(major) + "." + std::to_string(minor) + " with this NVRTC");
    const auto& d = checked_driver();
    CUmodule module = nullptr;
    check_cu(d.module_load_data(&module, image.data()), cubin ? "cuModuleLoadData(cubin)" : "cuModuleLoadData(ptx)");
    CUfunction fn = nullptr;
    check_cu(d.module_get_function(&fn, module, "ferry_copy_chunks"), "cuModuleGetFunction");
    // The module stays loaded for the life of the process, like the kernels
    // of a program built with nvcc.
    loaded.emplace(device, fn);
    return fn;
}

}  // namespace detail::cuda
FERRY_NAMESPACE_END
