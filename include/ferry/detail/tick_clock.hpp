#pragma once

// The clock telemetry::on reads twice on every post. steady_clock costs a
// clock_gettime call (20-50 ns, most of what telemetry adds to a small
// post); the time-stamp counter is one instruction. So the hot path records
// ticks, and set-up and readers turn them into nanoseconds. The counter is
// used only where it is trustworthy: x86-64 with an invariant TSC that the
// kernel itself uses as its clock source (so it runs at one rate on every
// core and through power states); elsewhere a tick is a steady_clock
// nanosecond.
#include <ferry/version.hpp>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <limits>
#include <string>
#include <utility>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <x86intrin.h>
#define FERRY_HAS_TSC 1
#else
#define FERRY_HAS_TSC 0
#endif

FERRY_NAMESPACE_BEGIN
namespace detail {

[[nodiscard]] inline std::int64_t steady_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

/// How to read ticks and turn them into nanoseconds; one per process.
class tick_clock {
public:
    /// The process's clock, calibrated on first use (about 2 ms, once).
    [[nodiscard]] static const tick_clock& get() {
        static const tick_clock clock = make();
        return clock;
    }

    [[nodiscard]] std::int64_t now() const noexcept {
#if FERRY_HAS_TSC
        if (tsc_) return static_cast<std::int64_t>(__rdtsc());
#endif
        return steady_ns();
    }

    /// A duration of `ticks`, in nanoseconds.
    [[nodiscard]] std::int64_t to_ns(std::int64_t ticks) const noexcept {
        if (!tsc_) return ticks;
        // Rounded here rather than by std::llround, which is a call into
        // libm on every completion that telemetry records.
        const double ns = static_cast<double>(ticks) * ns_per_tick_;
        return static_cast<std::int64_t>(ns < 0 ? ns - 0.5 : ns + 0.5);
    }

    /// A reading of both clocks, to turn ticks into steady_clock times.
    struct anchor {
        std::int64_t ticks;
        std::int64_t ns;
    };
    [[nodiscard]] anchor read_both() const noexcept { return {now(), steady_ns()}; }

    /// The steady_clock time of tick `t`, measured back from `a` (a recent
    /// reading), so that the rate's small error grows with the age of `t`
    /// only; times turned with one anchor keep their order.
    [[nodiscard]] std::chrono::steady_clock::time_point to_steady(std::int64_t t, const anchor& a) const noexcept {
        using d = std::chrono::steady_clock::duration;
        const std::int64_t ns = tsc_ ? a.ns - to_ns(a.ticks - t) : t;
        return std::chrono::steady_clock::time_point(std::chrono::duration_cast<d>(std::chrono::nanoseconds(ns)));
    }

    /// Whether ticks are the time-stamp counter's (else nanoseconds).
    [[nodiscard]] bool uses_tsc() const noexcept { return tsc_; }

private:
    bool tsc_ = false;
    double ns_per_tick_ = 1.0;

    static tick_clock make() {
        tick_clock c;
#if FERRY_HAS_TSC
        if (!tsc_trusted()) return c;
        // Two readings of both clocks 2 ms apart; each reading keeps the
        // tightest of a few steady_clock brackets around the counter, so
        // that a preemption between the reads does not skew the rate.
        auto pair = [] {
            std::int64_t best_gap = std::numeric_limits<std::int64_t>::max(), ns = 0, ticks = 0;
            for (int i = 0; i < 8; ++i) {
                const std::int64_t a = steady_ns();
                const auto t = static_cast<std::int64_t>(__rdtsc());
                const std::int64_t b = steady_ns();
                if (b - a < best_gap) {
                    best_gap = b - a;
                    ns = a + (b - a) / 2;
                    ticks = t;
                }
            }
            return std::pair{ns, ticks};
        };
        const auto [ns0, t0] = pair();
        while (steady_ns() - ns0 < 2'000'000) {
        }
        const auto [ns1, t1] = pair();
        if (t1 <= t0) return c;
        c.ns_per_tick_ = static_cast<double>(ns1 - ns0) / static_cast<double>(t1 - t0);
        c.tsc_ = true;
#endif
        return c;
    }

#if FERRY_HAS_TSC
    static bool tsc_trusted() {
        unsigned a = 0, b = 0, c = 0, d = 0;
        if (__get_cpuid(0x80000007, &a, &b, &c, &d) == 0 || (d & (1U << 8)) == 0) return false;  // not invariant
        std::ifstream f("/sys/devices/system/clocksource/clocksource0/current_clocksource");
        std::string source;
        return f >> source && source == "tsc";
    }
#endif
};

}  // namespace detail
FERRY_NAMESPACE_END
