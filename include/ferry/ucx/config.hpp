#pragma once

#include <ferry/version.hpp>

#include <chrono>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

FERRY_NAMESPACE_BEGIN

/// Run-time settings of a `ucx_backend`. Everything has a default.
struct ucx_config {
    /// The agent name peers see; 1 to 255 bytes.
    std::string name;

    /// UCX settings for this backend's context, as `ucp_config_modify` takes
    /// them (e.g. {"TLS", "shm"}); they override the UCX_* environment.
    std::vector<std::pair<std::string, std::string>> ucx_options;

    /// Request UCX's peer error handling on endpoints. It lets a dead peer be
    /// detected and lets endpoints be closed without the peer's help, but some
    /// transports (shared memory) cannot provide it and then refuse to
    /// connect, so it is off unless asked for.
    bool peer_error_handling = false;

    /// Largest notification accepted, sent or received.
    std::size_t max_notif_size = 64 * 1024;

    /// How long destruction waits for transfers in flight and endpoints being
    /// closed before it cancels what is left.
    std::chrono::milliseconds close_timeout{2000};

    /// progress::thread only: how long the progress thread keeps polling after
    /// its last piece of work before it arms the worker and sleeps, and how
    /// long wait() and wait_notifs() poll before they sleep. Polling keeps
    /// back-to-back transfers free of wake-up latency; sleeping keeps an idle
    /// backend off the CPU.
    std::chrono::microseconds progress_spin{100};
};

FERRY_NAMESPACE_END
