#pragma once

#include <ferry/version.hpp>

#include <string>
#include <string_view>
#include <system_error>

FERRY_NAMESPACE_BEGIN

/// Result of every data-path call. Non-negative values are progress, negative
/// values are errors, so `s < status::ok` tests for failure.
enum class status : int {
    ok = 0,
    in_progress = 1,
    invalid_argument = -1,
    not_registered = -2,
    no_such_peer = -3,
    busy = -4,
    canceled = -5,
    peer_failed = -6,
    ucx_error = -7,
    timed_out = -8,
    no_memory = -9,
    device_error = -10,
};

[[nodiscard]] constexpr bool is_error(status s) noexcept { return static_cast<int>(s) < 0; }

[[nodiscard]] constexpr std::string_view to_string(status s) noexcept {
    switch (s) {
        case status::ok: return "ok";
        case status::in_progress: return "in_progress";
        case status::invalid_argument: return "invalid_argument";
        case status::not_registered: return "not_registered";
        case status::no_such_peer: return "no_such_peer";
        case status::busy: return "busy";
        case status::canceled: return "canceled";
        case status::peer_failed: return "peer_failed";
        case status::ucx_error: return "ucx_error";
        case status::timed_out: return "timed_out";
        case status::no_memory: return "no_memory";
        case status::device_error: return "device_error";
    }
    return "unknown";
}

namespace detail {

class status_category final : public std::error_category {
public:
    [[nodiscard]] const char* name() const noexcept override { return "ferry"; }
    [[nodiscard]] std::string message(int value) const override {
        return std::string(to_string(static_cast<status>(value)));
    }
};

}  // namespace detail

[[nodiscard]] inline const std::error_category& status_category() noexcept {
    static const detail::status_category category;
    return category;
}

[[nodiscard]] inline std::error_code make_error_code(status s) noexcept {
    return {static_cast<int>(s), status_category()};
}

/// Thrown by set-up calls. `code()` holds the ferry status; `ucx_status()` the
/// UCX status behind it (0, UCS_OK, when the error was found by ferry itself).
class error : public std::system_error {
public:
    error(status s, const std::string& what, int ucx_status = 0)
        : std::system_error(make_error_code(s), what), ucx_status_(ucx_status) {}

    [[nodiscard]] status code_status() const noexcept { return static_cast<status>(code().value()); }
    [[nodiscard]] int ucx_status() const noexcept { return ucx_status_; }

private:
    int ucx_status_;
};

FERRY_NAMESPACE_END

template <>
struct std::is_error_code_enum<ferry::status> : std::true_type {};
