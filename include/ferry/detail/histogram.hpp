#pragma once

// Counters and a latency histogram that one thread (or several) updates
// while another reads: relaxed atomics, no lock, no allocation.
#include <ferry/telemetry.hpp>
#include <ferry/version.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// A counter that readers on other threads load while writers add. With
/// one writer (inline progress: the owner thread) a relaxed load and store
/// do, which keeps the lock prefix off the hot path; with several (the
/// thread policy's application threads) each add is a fetch_add.
template <bool SharedWriters>
class relaxed_counter {
public:
    void add(std::uint64_t n = 1) noexcept {
        if constexpr (SharedWriters) value_.fetch_add(n, std::memory_order_relaxed);
        else value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    [[nodiscard]] std::uint64_t load() const noexcept { return value_.load(std::memory_order_relaxed); }

private:
    std::atomic<std::uint64_t> value_{0};
};

template <bool SharedWriters>
class atomic_histogram {
public:
    void record(std::uint64_t ns) noexcept {
        buckets_[latency_histogram::bucket_of(ns)].add();
        sum_ns_.add(ns);
    }

    /// Adds this histogram to `out`, cumulatively. The count is the total of
    /// the buckets as read, so the result is consistent in itself even while
    /// samples arrive.
    void read_into(latency_histogram& out) const noexcept {
        std::uint64_t running = 0;
        for (std::size_t i = 0; i < latency_histogram::bucket_count; ++i) {
            running += buckets_[i].load();
            out.cumulative[i] += running;
        }
        out.count += running;
        out.sum_ns += sum_ns_.load();
    }

private:
    std::array<relaxed_counter<SharedWriters>, latency_histogram::bucket_count> buckets_{};
    relaxed_counter<SharedWriters> sum_ns_;
};

}  // namespace detail
FERRY_NAMESPACE_END
