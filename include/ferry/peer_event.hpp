#pragma once

#include <ferry/handles.hpp>
#include <ferry/version.hpp>

#include <cstdint>
#include <string>
#include <string_view>

FERRY_NAMESPACE_BEGIN

/// What happened to a loaded peer. A target learns of a dead initiator only
/// through these: it has no transfer of its own in flight to fail, and a
/// notification that the initiator would have sent never comes.
enum class peer_event_kind : std::uint8_t {
    /// The peer is gone: its transfers end with peer_failed, and it stays
    /// loaded (peer_status says peer_failed) until unloaded or replaced.
    failed,
    /// unload_remote forgot it; its handle is stale from now on.
    unloaded,
    /// load_remote took the blob of a new process under the same name (a
    /// restart): the old handle is stale, `replacement` is the new one.
    replaced,
};

/// Why a peer failed, so that a caller can tell a process that is known to
/// be dead from a connection that broke (where the process may live on and
/// come back under a new incarnation, or never).
enum class peer_failure : std::uint8_t {
    /// Not a failure event.
    none,
    /// The peer's process, on this host, exited: ferry watches it through a
    /// pidfd, or found that its pid now names another process.
    process_exited,
    /// UCX reported the endpoint failed (peer error handling: the transport
    /// or keepalive found the peer unreachable), or a host_ipc copy found
    /// the process gone.
    endpoint_error,
};

/// One thing that happened to a peer, in the order the backend saw them.
/// Each failure is reported once, by the first thing that noticed it.
struct peer_event {
    peer_event_kind kind = peer_event_kind::failed;
    peer_failure why = peer_failure::none;
    /// The peer's agent name: the handle may be stale by the time the event
    /// is read, and the name is what a caller reloads or reports.
    std::string name;
    /// The peer the event is about (a stale handle after unloaded/replaced).
    peer handle;
    /// replaced: the handle that the new incarnation got.
    peer replacement;
    /// For humans: what exactly was seen (UCX's status text, the pid).
    std::string detail;
};

[[nodiscard]] constexpr std::string_view to_string(peer_event_kind k) noexcept {
    switch (k) {
        case peer_event_kind::failed: return "failed";
        case peer_event_kind::unloaded: return "unloaded";
        case peer_event_kind::replaced: return "replaced";
    }
    return "unknown";
}

[[nodiscard]] constexpr std::string_view to_string(peer_failure f) noexcept {
    switch (f) {
        case peer_failure::none: return "none";
        case peer_failure::process_exited: return "process_exited";
        case peer_failure::endpoint_error: return "endpoint_error";
    }
    return "unknown";
}

FERRY_NAMESPACE_END
