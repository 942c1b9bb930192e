#pragma once

#include <ferry/version.hpp>

#include <cstdint>
#include <string_view>

FERRY_NAMESPACE_BEGIN

/// How a prepared transfer moves its data.
enum class xfer_path : std::uint8_t {
    /// prepare chooses: cuda_ipc where it can serve the whole list, else
    /// host_ipc where it can, else ucx.
    automatic,
    /// One UCX RMA operation per descriptor (ucp_put_nbx / ucp_get_nbx).
    ucx,
    /// memory::cuda, the peer's blocks in GPU memory on this host and ours in
    /// GPU or page-locked host memory: the whole list as one copy kernel over
    /// the peer's memory, mapped through CUDA IPC.
    cuda_ipc,
    /// Host memory on both sides, the peer a process on this host: ferry
    /// copies the whole list itself, one-sided, with no work at the target —
    /// through the peer's shared memory mapped into this process (memory the
    /// peer's backend allocated), else with process_vm_writev/readv.
    host_ipc,
};

[[nodiscard]] constexpr std::string_view to_string(xfer_path p) noexcept {
    switch (p) {
        case xfer_path::automatic: return "automatic";
        case xfer_path::ucx: return "ucx";
        case xfer_path::cuda_ipc: return "cuda_ipc";
        case xfer_path::host_ipc: return "host_ipc";
    }
    return "unknown";
}

FERRY_NAMESPACE_END
