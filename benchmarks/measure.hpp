#pragma once

// What the ferry runner and the raw runner have in common: the clock, the
// result of one timed loop, the stall guard, the messages the two sides
// exchange as notifications, and order statistics.

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace bench {

using clock = std::chrono::steady_clock;

/// One timed loop of back-to-back transfers (one in flight at a time).
struct bw_sample {
    double seconds = 0;       // wall time of the whole loop
    std::size_t iters = 0;    // transfers posted
    double post_seconds = 0;  // mean time spent issuing one transfer, from
                              // every 16th post (timing every post would
                              // add two clock reads to each iteration)
};

/// Notification payloads: a bandwidth post, a ping, its answer, and a step
/// (the target answers it with the time it held it). One byte each, so ferry
/// and the raw loop carry the same payload.
inline constexpr std::string_view note_bw = "n";
inline constexpr std::string_view note_ping = "p";
inline constexpr std::string_view note_pong = "q";
inline constexpr std::string_view note_step = "s";

/// One post, timed: just before post(), when post() returned, and when the
/// initiator saw the transfer complete.
struct post_times {
    clock::time_point start;
    clock::time_point posted;
    clock::time_point completed;
};

/// Throws once `timeout` seconds pass; cheap to call in a spin loop because
/// it reads the clock only every 64K calls.
class stall_guard {
public:
    stall_guard(double timeout, std::string_view what) : timeout_(timeout), what_(what) {}
    void tick() {
        if ((++n_ & 0xFFFFU) != 0) return;
        auto now = clock::now();
        if (n_ == 0x10000U) {
            start_ = now;
            return;
        }
        if (std::chrono::duration<double>(now - start_).count() > timeout_)
            throw std::runtime_error(std::string(what_) + ": no completion after " + std::to_string(timeout_) +
                                     " s (--timeout); is the peer progressing?");
    }

private:
    double timeout_;
    std::string_view what_;
    std::uint64_t n_ = 0;
    clock::time_point start_{};
};

/// Times this process was preempted (all its threads): a measurement during
/// which either side was preempted by another process is disturbed.
inline std::uint64_t involuntary_switches() noexcept {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<std::uint64_t>(u.ru_nivcsw);
}

inline double seconds_since(clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); }

inline double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    auto n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

inline double mean(const std::vector<double>& v) {
    if (v.empty()) return 0;
    double sum = 0;
    for (double x : v) sum += x;
    return sum / static_cast<double>(v.size());
}

/// Nearest-rank percentile, p in [0, 100]. Sorts `v`.
inline double percentile(std::vector<double>& v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    auto rank = static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size()) + 0.999999);
    rank = std::clamp<std::size_t>(rank, 1, v.size());
    return v[rank - 1];
}

}  // namespace bench
