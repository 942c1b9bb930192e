#pragma once

#include <ferry/version.hpp>

#include <type_traits>

FERRY_NAMESPACE_BEGIN

namespace progress {
/// No threads: `check`, `progress` and `take_notifs` drive the worker, which
/// runs in UCS_THREAD_MODE_SINGLE with no locks. A target that never calls
/// `progress` stalls initiators whose transfers UCX emulates.
struct inline_poll {};

/// A progress thread owns the worker: it runs every UCX call, sleeps on the
/// worker's event file descriptor when idle, and publishes completions as
/// atomic state. `post`, `check` and the notification calls are safe from
/// any number of application threads and never drive the worker themselves.
struct thread {};
}  // namespace progress

namespace memory {
/// Ordinary host memory.
struct host {};
/// CUDA device memory as well as host memory. Needs <ferry/cuda.hpp> (the
/// ferry::cuda CMake target) and a UCX built with CUDA.
struct cuda {};
}  // namespace memory

namespace detail {
struct no_ranges;  // detail/telemetry_store.hpp
}  // namespace detail

namespace telemetry {
/// No telemetry: the hot path is the same, instruction for instruction, as
/// without the parameter.
struct off {};
/// Counters and latency histograms per backend and per peer, and a record of
/// each transfer's last post: snapshot(), telemetry_of(xfer),
/// write_prometheus() (<ferry/telemetry.hpp>, <ferry/prometheus.hpp>).
/// telemetry::nvtx (<ferry/cuda/nvtx.hpp>) adds an NVTX range per post.
struct on {
    using ranges = detail::no_ranges;  // what marks each post's span for a profiler: nothing
};
}  // namespace telemetry

template <class T>
struct is_progress_mode : std::false_type {};
template <>
struct is_progress_mode<progress::inline_poll> : std::true_type {};
template <>
struct is_progress_mode<progress::thread> : std::true_type {};

template <class T>
struct is_memory_kind : std::false_type {};
template <>
struct is_memory_kind<memory::host> : std::true_type {};
template <>
struct is_memory_kind<memory::cuda> : std::true_type {};

template <class T>
struct is_telemetry_mode : std::false_type {};
template <>
struct is_telemetry_mode<telemetry::off> : std::true_type {};
template <>
struct is_telemetry_mode<telemetry::on> : std::true_type {};

/// A backend's compile-time configuration:
/// `policy<progress::inline_poll, memory::host>`, or with telemetry,
/// `policy<progress::thread, memory::host, telemetry::on>`.
template <class Progress, class Memory, class Telemetry = telemetry::off>
struct policy {
    static_assert(is_progress_mode<Progress>::value,
                  "ferry::policy: the first argument must be a progress mode, e.g. ferry::progress::inline_poll");
    static_assert(is_memory_kind<Memory>::value,
                  "ferry::policy: the second argument must be a memory kind, e.g. ferry::memory::host");
    static_assert(is_telemetry_mode<Telemetry>::value,
                  "ferry::policy: the third argument must be a telemetry mode, ferry::telemetry::off, "
                  "ferry::telemetry::on or ferry::telemetry::nvtx (<ferry/cuda/nvtx.hpp>)");
    using progress_mode = Progress;
    using memory_kind = Memory;
    using telemetry_mode = Telemetry;
};

using default_policy = policy<progress::inline_poll, memory::host>;

template <class T>
struct is_policy : std::false_type {};
template <class P, class M, class T>
struct is_policy<policy<P, M, T>> : std::true_type {};

template <class Policy>
inline constexpr bool is_threaded_v = std::is_same_v<typename Policy::progress_mode, progress::thread>;

template <class Policy>
inline constexpr bool has_telemetry_v = !std::is_same_v<typename Policy::telemetry_mode, telemetry::off>;

FERRY_NAMESPACE_END
