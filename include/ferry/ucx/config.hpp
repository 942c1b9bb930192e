#pragma once

#include <ferry/detail/metadata.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

FERRY_NAMESPACE_BEGIN

/// Whether endpoints use UCX's peer error handling (UCP_ERR_HANDLING_MODE_PEER).
enum class error_mode : std::uint8_t {
    /// A peer that dies or becomes unreachable is detected (by the transport,
    /// or by keepalive within `keepalive_interval`), its transfers end with
    /// `peer_failed`, and its endpoint can be closed without its help.
    peer,
    /// No detection: transfers to a dead peer end only by their deadline, and
    /// closing an endpoint needs the peer's answer (bounded by close_timeout).
    none,
};

[[nodiscard]] constexpr std::string_view to_string(error_mode m) noexcept { return m == error_mode::peer ? "peer" : "none"; }

/// Run-time settings of a `ucx_backend`. Everything has a default.
struct ucx_config {
    /// The agent name peers see; 1 to 255 bytes.
    std::string name;

    /// UCX settings for this backend's context, as `ucp_config_modify` takes
    /// them (e.g. {"TLS", "shm"}); they override the UCX_* environment.
    std::vector<std::pair<std::string, std::string>> ucx_options;

    /// UCX's peer error handling on every endpoint, on by default. A
    /// transport that cannot detect a dead peer is then not used, and where no
    /// transport can, load_remote fails with peer_failed. For shared memory,
    /// ferry enables UCX's own detection (UCX_POSIX_ERROR_HANDLING and
    /// UCX_SYSV_ERROR_HANDLING) unless the environment or `ucx_options` set
    /// them.
    error_mode error_handling = error_mode::peer;

    /// How often UCX checks that each connected peer is alive
    /// (UCX_KEEPALIVE_INTERVAL; UCX's own default is 20 s). With peer error
    /// handling, a peer that died without closing its connections is found
    /// within about this interval. Zero keeps UCX's setting.
    std::chrono::milliseconds keepalive_interval{1000};

    /// Deadline of every transfer, counted from its post, unless `post` is
    /// given one. Zero: no deadline. A transfer past its deadline reports
    /// `timed_out`; its operations are abandoned, not recalled.
    std::chrono::nanoseconds xfer_timeout{0};

    /// Largest notification accepted, sent or received.
    std::size_t max_notif_size = 64 * 1024;

    /// Notifications between peers on one host go through a mailbox of
    /// shared memory that the receiver publishes in its metadata, one ring
    /// per sender, rather than as UCX active messages over shared memory,
    /// where one sender killed in the middle of a message stops the
    /// receiver from reading anything any peer sends it after (README,
    /// "Failure semantics"). Off: this backend publishes no mailbox and
    /// sends as UCX active messages to every peer.
    bool notif_mailbox = true;

    /// How long destruction waits for transfers in flight and endpoints being
    /// closed before it cancels what is left.
    std::chrono::milliseconds close_timeout{2000};

    /// memory::cuda only: the CUDA device whose primary context ferry's
    /// threads make current before they touch the worker, and on which the
    /// cuda_ipc path copies. -1: the constructing thread's current device.
    int cuda_device = -1;

    /// progress::thread only: how long the progress thread keeps polling after
    /// its last piece of work before it arms the worker and sleeps, and how
    /// long wait() and wait_notifs() poll before they sleep. Polling keeps
    /// back-to-back transfers free of wake-up latency; sleeping keeps an idle
    /// backend off the CPU.
    std::chrono::microseconds progress_spin{100};
};

namespace detail {

inline ucx_config validated(ucx_config cfg) {
    if (cfg.name.empty() || cfg.name.size() > max_agent_name)
        throw error(status::invalid_argument,
                    "ucx_backend: name must be 1 to 255 bytes, got " + std::to_string(cfg.name.size()));
    if (cfg.max_notif_size > (std::size_t{1} << 30))
        throw error(status::invalid_argument, "ucx_backend: max_notif_size is larger than 1 GiB");
    return cfg;
}

}  // namespace detail

FERRY_NAMESPACE_END
