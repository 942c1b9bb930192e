#pragma once

#include <ferry/version.hpp>

#include <type_traits>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// progress::inline_poll's engine: no thread. The thread that constructs
/// the backend creates the worker, owns it, makes every call on it (check,
/// progress, take_notifs, poll_notifs and wait drive it), and destroys it.
/// The backend (Backend, whose friend this is) provides open_worker(),
/// shut_down() and touch(what).
template <class Backend>
class inline_progress {
public:
    void start(Backend& b) { b.open_worker(); }

    void stop(Backend& b) noexcept { b.shut_down(); }

    /// Runs f here, once `what` is checked to come from the owner.
    template <class F>
    auto on_worker(Backend& b, const char* what, F&& f) -> std::invoke_result_t<F&> {
        b.touch(what);
        return f();
    }
};

}  // namespace detail
FERRY_NAMESPACE_END
