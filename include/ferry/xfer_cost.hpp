#pragma once

#include <ferry/version.hpp>

#include <chrono>
#include <string_view>

FERRY_NAMESPACE_BEGIN

/// How an estimate was obtained.
enum class cost_method {
    /// UCX's own model of the endpoint's lanes (`ucp_ep_evaluate_perf`).
    ucx_evaluate_perf,
    /// No model could answer; duration and margin are zero.
    unknown,
};

[[nodiscard]] constexpr std::string_view to_string(cost_method m) noexcept {
    return m == cost_method::ucx_evaluate_perf ? "ucx_evaluate_perf" : "unknown";
}

struct xfer_cost {
    std::chrono::nanoseconds duration{0};
    std::chrono::nanoseconds margin{0};
    cost_method method = cost_method::unknown;
};

FERRY_NAMESPACE_END
