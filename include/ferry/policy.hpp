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

/// A backend's compile-time configuration:
/// `policy<progress::inline_poll, memory::host>`.
template <class Progress, class Memory>
struct policy {
    static_assert(is_progress_mode<Progress>::value,
                  "ferry::policy: the first argument must be a progress mode, e.g. ferry::progress::inline_poll");
    static_assert(is_memory_kind<Memory>::value,
                  "ferry::policy: the second argument must be a memory kind, e.g. ferry::memory::host");
    using progress_mode = Progress;
    using memory_kind = Memory;
};

using default_policy = policy<progress::inline_poll, memory::host>;

template <class T>
struct is_policy : std::false_type {};
template <class P, class M>
struct is_policy<policy<P, M>> : std::true_type {};

template <class Policy>
inline constexpr bool is_threaded_v = std::is_same_v<typename Policy::progress_mode, progress::thread>;

FERRY_NAMESPACE_END
