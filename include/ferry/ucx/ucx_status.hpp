#pragma once

#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <ucs/type/status.h>

#include <string>
#include <string_view>

FERRY_NAMESPACE_BEGIN
namespace detail {

[[nodiscard]] inline status from_ucs(ucs_status_t s) noexcept {
    switch (s) {
        case UCS_OK: return status::ok;
        case UCS_INPROGRESS: return status::in_progress;
        case UCS_ERR_CANCELED: return status::canceled;
        case UCS_ERR_NO_MEMORY: return status::no_memory;
        case UCS_ERR_TIMED_OUT: return status::timed_out;
        case UCS_ERR_ENDPOINT_TIMEOUT:
        case UCS_ERR_CONNECTION_RESET:
        case UCS_ERR_UNREACHABLE:
        case UCS_ERR_REJECTED:
        case UCS_ERR_NOT_CONNECTED: return status::peer_failed;
        default: return status::ucx_error;
    }
}

[[noreturn]] inline void throw_ucx(ucs_status_t s, std::string_view what) {
    throw error(from_ucs(s) == status::ok ? status::ucx_error : from_ucs(s),
                std::string(what) + ": " + ucs_status_string(s), static_cast<int>(s));
}

inline void check_ucx(ucs_status_t s, std::string_view what) {
    if (s != UCS_OK) throw_ucx(s, what);
}

}  // namespace detail
FERRY_NAMESPACE_END
