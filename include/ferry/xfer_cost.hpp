#pragma once

#include <ferry/version.hpp>

#include <chrono>
#include <string_view>

FERRY_NAMESPACE_BEGIN

/// How an estimate was obtained.
enum class cost_method {
    /// UCX's own model of the endpoint's lanes (`ucp_ep_evaluate_perf`).
    ucx_evaluate_perf,
    /// ferry's model of a cuda_ipc copy: launch latency plus bytes at device
    /// memory bandwidth.
    cuda_ipc_model,
    /// ferry's model of a host_ipc copy: a system call per 1024 blocks
    /// (process_vm_writev/readv) plus bytes at memory copy bandwidth.
    host_ipc_model,
    /// No model could answer; duration and margin are zero.
    unknown,
};

[[nodiscard]] constexpr std::string_view to_string(cost_method m) noexcept {
    switch (m) {
        case cost_method::ucx_evaluate_perf: return "ucx_evaluate_perf";
        case cost_method::cuda_ipc_model: return "cuda_ipc_model";
        case cost_method::host_ipc_model: return "host_ipc_model";
        case cost_method::unknown: return "unknown";
    }
    return "unknown";
}

struct xfer_cost {
    std::chrono::nanoseconds duration{0};
    std::chrono::nanoseconds margin{0};
    cost_method method = cost_method::unknown;
};

FERRY_NAMESPACE_END
