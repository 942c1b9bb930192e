#pragma once

// What a backend built with telemetry::on reports: snapshot() and
// telemetry_of(xfer) return these plain structs; prometheus.hpp writes them
// out. The types are here, apart from the backend, so that code that only
// exports or inspects telemetry needs no UCX.
#include <ferry/handles.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_path.hpp>

#include <array>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN

/// Post-to-completion latency in fixed log-scale buckets: bucket i holds the
/// samples of at most bound_ns(i) = 250 ns * 2^i (250 ns .. about 4.2 s),
/// the last one everything above. Fixed bounds make histograms of different
/// peers, processes and runs add up bucket by bucket.
struct latency_histogram {
    static constexpr std::size_t finite_buckets = 25;
    static constexpr std::size_t bucket_count = finite_buckets + 1;

    [[nodiscard]] static constexpr std::uint64_t bound_ns(std::size_t i) noexcept { return std::uint64_t{250} << i; }

    /// The bucket a sample of `ns` nanoseconds falls in.
    [[nodiscard]] static constexpr std::size_t bucket_of(std::uint64_t ns) noexcept {
        const auto i = static_cast<std::size_t>(std::bit_width(ns == 0 ? 0 : (ns - 1) / 250));
        return i < finite_buckets ? i : finite_buckets;
    }

    /// cumulative[i]: samples of at most bound_ns(i); the last entry is `count`.
    std::array<std::uint64_t, bucket_count> cumulative{};
    std::uint64_t count = 0;
    std::uint64_t sum_ns = 0;

    /// The q-quantile (0 < q <= 1), interpolated linearly inside its bucket;
    /// 0 without samples. Samples past the last bound report that bound.
    [[nodiscard]] double quantile_ns(double q) const noexcept {
        if (count == 0) return 0;
        const double rank = q * static_cast<double>(count);
        std::uint64_t below = 0;
        for (std::size_t i = 0; i < bucket_count; ++i) {
            const std::uint64_t here = cumulative[i] - below;
            if (static_cast<double>(cumulative[i]) >= rank && here > 0) {
                if (i == finite_buckets) return static_cast<double>(bound_ns(finite_buckets - 1));
                const double lo = i == 0 ? 0.0 : static_cast<double>(bound_ns(i - 1));
                const double hi = static_cast<double>(bound_ns(i));
                return lo + (hi - lo) * (rank - static_cast<double>(below)) / static_cast<double>(here);
            }
            below = cumulative[i];
        }
        return static_cast<double>(bound_ns(finite_buckets - 1));
    }

    latency_histogram& operator+=(const latency_histogram& o) noexcept {
        for (std::size_t i = 0; i < bucket_count; ++i) cumulative[i] += o.cumulative[i];
        count += o.count;
        sum_ns += o.sum_ns;
        return *this;
    }
};

/// The paths that telemetry keeps a histogram for, in the order of the
/// `latency` arrays below.
inline constexpr std::array<xfer_path, 3> telemetry_paths{xfer_path::ucx, xfer_path::host_ipc, xfer_path::cuda_ipc};

[[nodiscard]] constexpr std::size_t telemetry_path_index(xfer_path p) noexcept {
    return p == xfer_path::host_ipc ? 1 : p == xfer_path::cuda_ipc ? 2 : 0;
}

/// Number of error statuses (status::invalid_argument .. status::device_error).
inline constexpr std::size_t telemetry_error_kinds = 10;

/// Counters of one peer, or of a whole backend.
///  - posts: accepted posts (post returned ok or in_progress);
///  - completions: posts that ended ok, and `bytes` their bytes;
///  - failures: accepted posts that ended with an error;
///  - errors: every error status that a post (refused or accepted), a
///    transfer's end or send_notif reported, by kind;
///  - peer_failures: times the peer's endpoint was found failed, counted
///    once per loaded peer; timed_out: transfers past their deadline;
///  - notifs_sent: notifications accepted by send_notif or carried by an
///    accepted post.
/// posts == completions + failures + posts still in flight or not yet looked at.
struct transfer_counters {
    std::uint64_t posts = 0;
    std::uint64_t completions = 0;
    std::uint64_t failures = 0;
    std::uint64_t bytes = 0;
    std::uint64_t peer_failures = 0;
    std::uint64_t timed_out = 0;
    std::uint64_t notifs_sent = 0;
    std::array<std::uint64_t, telemetry_error_kinds> errors{};

    [[nodiscard]] static constexpr std::size_t error_index(status s) noexcept {
        return static_cast<std::size_t>(-static_cast<int>(s) - 1);
    }
    [[nodiscard]] std::uint64_t errors_of(status s) const noexcept {
        return is_error(s) ? errors[error_index(s)] : 0;
    }

    transfer_counters& operator+=(const transfer_counters& o) noexcept {
        posts += o.posts;
        completions += o.completions;
        failures += o.failures;
        bytes += o.bytes;
        peer_failures += o.peer_failures;
        timed_out += o.timed_out;
        notifs_sent += o.notifs_sent;
        for (std::size_t i = 0; i < errors.size(); ++i) errors[i] += o.errors[i];
        return *this;
    }
};

/// One peer's telemetry, under the name it was loaded with. A peer keeps its
/// entry after it is unloaded, and a peer loaded again under the same name
/// continues it, so that exported counters never go backwards.
struct peer_telemetry {
    std::string name;
    transfer_counters counters;
    std::array<latency_histogram, telemetry_paths.size()> latency{};  // post to completion, per path
};

/// What ucx_backend::snapshot() returns. Each counter and each bucket is
/// exact, read with one atomic load; the snapshot as a whole is not one
/// atomic picture: taken while transfers run, a counter read later may
/// include a completion that one read earlier does not (completions may lag
/// posts by the transfers in flight, a histogram's count may lag
/// `completions` by a few). Each histogram is consistent in itself: its
/// cumulative buckets never decrease and its count is their total.
struct telemetry_snapshot {
    std::string agent;
    transfer_counters totals;  // the sum over `peers`
    std::uint64_t notifs_received = 0;
    std::uint64_t notifs_dropped = 0;
    std::array<latency_histogram, telemetry_paths.size()> latency{};  // the sum over `peers`
    std::vector<peer_telemetry> peers;
};

/// A transfer's last post, as telemetry_of(xfer) returns it. Times are on
/// std::chrono::steady_clock: `posted` when post accepted it, `handed` when
/// its operations went to UCX or the GPU (under the thread policy, when the
/// progress thread took it up; under inline progress the same as posted),
/// `completed` when ferry first reported its end (check, wait, a repost or
/// release), zero while it is in flight. `result` is in_progress until then.
struct xfer_telemetry {
    std::chrono::steady_clock::time_point posted{};
    std::chrono::steady_clock::time_point handed{};
    std::chrono::steady_clock::time_point completed{};
    std::uint64_t bytes = 0;
    std::size_t descriptors = 0;  // the caller's pairs (blocks of a strided list)
    std::size_t blocks = 0;       // after coalescing: blocks_of
    xfer_path path = xfer_path::ucx;
    peer target{};
    std::string peer_name;
    status result = status::ok;
    bool posted_once = false;  // false: never posted, and the times are zero
};

FERRY_NAMESPACE_END
