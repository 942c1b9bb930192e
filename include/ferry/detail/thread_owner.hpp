#pragma once

#include <ferry/version.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>

// ferry's own checks (FERRY_ASSERTIONS): on unless NDEBUG, like assert, and
// forced either way by defining FERRY_ASSERTIONS to 1 or 0. They cost an
// atomic load and a compare per checked call, and nothing when off.
#ifndef FERRY_ASSERTIONS
#ifdef NDEBUG
#define FERRY_ASSERTIONS 0
#else
#define FERRY_ASSERTIONS 1
#endif
#endif

FERRY_NAMESPACE_BEGIN
namespace detail {

/// The thread that owns a UCX worker. UCX's threading contract for a
/// UCS_THREAD_MODE_SINGLE worker is that one thread makes every call on it,
/// its endpoints and its rkeys; UCX >= 1.18 built with assertions binds the
/// worker to the first thread that enters it and aborts when another one
/// does, and older or release builds race silently. ferry keeps the rule and,
/// with FERRY_ASSERTIONS, checks it at each of its own calls, so that a
/// regression shows on any UCX.
class thread_owner {
public:
    /// Makes the calling thread the owner.
    void bind_here() noexcept { owner_.store(std::this_thread::get_id(), std::memory_order_release); }

    [[nodiscard]] bool held_here() const noexcept {
        return owner_.load(std::memory_order_acquire) == std::this_thread::get_id();
    }

    /// Aborts, naming `what`, when the calling thread is not the owner.
    void check([[maybe_unused]] const char* what) const noexcept {
#if FERRY_ASSERTIONS
        if (!held_here()) violated(what);
#endif
    }

private:
    [[noreturn]] void violated(const char* what) const noexcept {
        const auto owner = owner_.load(std::memory_order_acquire);
        std::fprintf(stderr,
                     "ferry: %s touched a UCX worker from thread %zu, which does not own it (owner: thread %zu). "
                     "Under progress::inline_poll the backend belongs to the thread that constructed it; under "
                     "progress::thread only the progress thread touches the worker.\n",
                     what, std::hash<std::thread::id>{}(std::this_thread::get_id()),
                     std::hash<std::thread::id>{}(owner));
        std::abort();
    }

    std::atomic<std::thread::id> owner_{};
};

}  // namespace detail
FERRY_NAMESPACE_END
