#pragma once

// A telemetry snapshot in the Prometheus text exposition format (0.0.4), for
// an application to serve from whatever HTTP server it has. Counters are
// `ferry_*_total` with labels agent and peer; latency is one histogram per
// agent, peer and path, in seconds.
#include <ferry/status.hpp>
#include <ferry/telemetry.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_path.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>

FERRY_NAMESPACE_BEGIN
namespace detail {

// Label values escape backslash, double quote and newline.
inline void write_label_value(std::ostream& out, std::string_view v) {
    out << '"';
    for (char c : v) {
        if (c == '\\') out << "\\\\";
        else if (c == '"') out << "\\\"";
        else if (c == '\n') out << "\\n";
        else out << c;
    }
    out << '"';
}

inline void write_labels(std::ostream& out, std::string_view agent, std::string_view peer) {
    out << "{agent=";
    write_label_value(out, agent);
    out << ",peer=";
    write_label_value(out, peer);
}

// Seconds without locale or precision surprises: nanoseconds are exact.
inline std::string seconds_of(std::uint64_t ns) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%llu.%09llu", static_cast<unsigned long long>(ns / 1000000000),
                  static_cast<unsigned long long>(ns % 1000000000));
    return buf;
}

}  // namespace detail

/// The metric families written, with their help text.
struct prometheus_counter {
    std::string_view name;
    std::string_view help;
    std::uint64_t transfer_counters::*field;
};
inline constexpr prometheus_counter prometheus_counters[] = {
    {"ferry_posts_total", "Posts accepted (post returned ok or in_progress).", &transfer_counters::posts},
    {"ferry_completions_total", "Posts that completed ok.", &transfer_counters::completions},
    {"ferry_failures_total", "Accepted posts that ended with an error.", &transfer_counters::failures},
    {"ferry_bytes_total", "Bytes of the posts that completed ok.", &transfer_counters::bytes},
    {"ferry_peer_failures_total", "Times a peer's endpoint was found failed.", &transfer_counters::peer_failures},
    {"ferry_timed_out_total", "Transfers past their deadline.", &transfer_counters::timed_out},
    {"ferry_notifs_sent_total", "Notifications sent.", &transfer_counters::notifs_sent},
};

/// Writes `snap` in the Prometheus text format.
inline void write_prometheus(std::ostream& out, const telemetry_snapshot& snap) {
    for (const auto& c : prometheus_counters) {
        out << "# HELP " << c.name << ' ' << c.help << "\n# TYPE " << c.name << " counter\n";
        for (const auto& p : snap.peers) {
            out << c.name;
            detail::write_labels(out, snap.agent, p.name);
            out << "} " << p.counters.*c.field << '\n';
        }
    }

    out << "# HELP ferry_errors_total Error statuses reported by posts, transfers and send_notif, by kind.\n"
           "# TYPE ferry_errors_total counter\n";
    for (const auto& p : snap.peers) {
        for (std::size_t i = 0; i < telemetry_error_kinds; ++i) {
            out << "ferry_errors_total";
            detail::write_labels(out, snap.agent, p.name);
            out << ",status=\"" << to_string(static_cast<status>(-static_cast<int>(i) - 1)) << "\"} "
                << p.counters.errors[i] << '\n';
        }
    }

    out << "# HELP ferry_notifs_received_total Notifications delivered to the application.\n"
           "# TYPE ferry_notifs_received_total counter\n"
           "ferry_notifs_received_total{agent=";
    detail::write_label_value(out, snap.agent);
    out << "} " << snap.notifs_received << '\n';
    out << "# HELP ferry_notifs_dropped_total Notifications dropped as malformed or oversized.\n"
           "# TYPE ferry_notifs_dropped_total counter\n"
           "ferry_notifs_dropped_total{agent=";
    detail::write_label_value(out, snap.agent);
    out << "} " << snap.notifs_dropped << '\n';

    out << "# HELP ferry_xfer_latency_seconds Post to completion of transfers that completed ok.\n"
           "# TYPE ferry_xfer_latency_seconds histogram\n";
    for (const auto& p : snap.peers) {
        for (std::size_t k = 0; k < telemetry_paths.size(); ++k) {
            const latency_histogram& h = p.latency[k];
            auto labels = [&] {
                detail::write_labels(out, snap.agent, p.name);
                out << ",path=\"" << to_string(telemetry_paths[k]) << '"';
            };
            for (std::size_t i = 0; i < latency_histogram::bucket_count; ++i) {
                out << "ferry_xfer_latency_seconds_bucket";
                labels();
                out << ",le=\""
                    << (i == latency_histogram::finite_buckets ? std::string("+Inf")
                                                               : detail::seconds_of(latency_histogram::bound_ns(i)))
                    << "\"} " << h.cumulative[i] << '\n';
            }
            out << "ferry_xfer_latency_seconds_sum";
            labels();
            out << "} " << detail::seconds_of(h.sum_ns) << '\n';
            out << "ferry_xfer_latency_seconds_count";
            labels();
            out << "} " << h.count << '\n';
        }
    }
}

/// The same, as a string.
[[nodiscard]] inline std::string to_prometheus(const telemetry_snapshot& snap) {
    std::ostringstream out;
    write_prometheus(out, snap);
    return out.str();
}

FERRY_NAMESPACE_END
