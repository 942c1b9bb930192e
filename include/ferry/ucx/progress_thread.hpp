#pragma once

#include <ferry/detail/mpsc_queue.hpp>
#include <ferry/detail/wakeup.hpp>
#include <ferry/ucx/command.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <future>
#include <optional>
#include <thread>
#include <type_traits>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// progress::thread's engine: a progress thread that creates the worker,
/// makes every call on it, and destroys it. Application threads hand it
/// posts and notifications as commands through a queue, and set-up calls as
/// tasks they wait for. When there has been nothing to do for
/// `progress_spin` it arms the worker and sleeps until the network or an
/// application thread has something, or for a nap at most (see shortest_nap). The backend (Backend, whose friend
/// this is) provides open_worker(), worker(), serve() — one round of the
/// worker's work besides commands, returning whether it did any and the
/// earliest deadline ahead — shut_down(), close_worker(), bind_thread(),
/// watch_fd() (an fd readable when a watched peer process exits, or -1),
/// on_watch_ready() (takes what that fd reported), mailbox_fd() (readable
/// when a peer rang the notification mailbox, or -1), and prepare_sleep()
/// and after_sleep() around each sleep (false: something arrived, poll again).
template <class Backend>
class thread_progress {
    using clock = std::chrono::steady_clock;

public:
    /// Starts the thread and waits until it opened the worker; rethrows what
    /// failed there.
    void start(Backend& b) {
        std::promise<void> ready;
        auto started = ready.get_future();
        thread_ = std::thread([this, &b, &ready] { run(b, ready); });
        try {
            started.get();
        } catch (...) {
            thread_.join();
            throw;
        }
    }

    /// Stops the thread, which shuts the worker down itself, as it set it up.
    void stop(Backend&) noexcept {
        stop_.store(true, std::memory_order_seq_cst);
        wakeup_->signal();
        thread_.join();
    }

    /// Runs f on the progress thread and waits for it, passing back its
    /// result or exception; from the progress thread itself, runs it at once.
    template <class F>
    auto on_worker(Backend&, const char*, F&& f) -> std::invoke_result_t<F&> {
        if (std::this_thread::get_id() == thread_.get_id()) return f();
        using result_type = std::invoke_result_t<F&>;
        struct task : command {
            std::function<void()> run;
        };
        std::promise<result_type> done;
        auto future = done.get_future();
        auto* t = new task;
        t->run = [&] {
            try {
                if constexpr (std::is_void_v<result_type>) {
                    f();
                    done.set_value();
                } else {
                    done.set_value(f());
                }
            } catch (...) {
                done.set_exception(std::current_exception());
            }
        };
        t->execute = [](command& c, void*) noexcept {
            auto* self = static_cast<task*>(&c);
            self->run();
            delete self;
        };
        submit(t);
        return future.get();
    }

    /// Hands a command over and wakes the thread if it sleeps.
    void submit(command* c) noexcept {
        // The push and this load are sequentially consistent, as are the
        // progress thread's store to sleeping_ and its look at the queue:
        // either it sees the command before it sleeps, or this thread sees
        // it asleep and wakes it.
        queue_.push(c);
        if (sleeping_.load(std::memory_order_seq_cst)) wakeup_->signal();
    }

private:
    void run(Backend& b, std::promise<void>& ready) noexcept {
        b.bind_thread();
        try {
            b.open_worker();
            // The pid watch's fd beside the worker's: a peer's death must wake
            // a sleeping thread at once, not at the end of its nap.
            // And the mailbox's socket: a peer on this host that notifies
            // through it rings there for a sleeping thread.
            wakeup_.emplace(b.worker().event_fd(), b.watch_fd(), b.mailbox_fd());
        } catch (...) {
            b.close_worker();
            ready.set_exception(std::current_exception());
            return;
        }
        ready.set_value();
        drive(b);
        b.shut_down();
        b.close_worker();
    }

    // The thread's loop, until the backend is destroyed.
    void drive(Backend& b) noexcept {
        auto idle_since = clock::now();
        bool idle = false;
        std::chrono::milliseconds nap = shortest_nap;
        for (;;) {
            bool worked = false;
            while (auto* n = queue_.pop()) {
                auto* c = static_cast<command*>(n);
                c->execute(*c, &b);
                worked = true;
            }
            const auto [served, next_deadline] = b.serve();
            if (worked || served) {
                idle = false;
                nap = shortest_nap;
                continue;
            }
            if (stop_.load(std::memory_order_acquire)) {
                if (queue_.empty()) return;
                continue;
            }
            auto now = clock::now();
            if (!idle) {
                idle = true;
                idle_since = now;
            }
            if (now - idle_since < b.config().progress_spin) continue;

            sleeping_.store(true, std::memory_order_seq_cst);
            if (!queue_.empty() || stop_.load(std::memory_order_acquire) || b.worker().arm() != UCS_OK) {
                sleeping_.store(false, std::memory_order_relaxed);
                continue;
            }
            if (!b.prepare_sleep()) {
                sleeping_.store(false, std::memory_order_relaxed);
                continue;
            }
            const bool woken = wakeup_->sleep(std::min(next_deadline, clock::now() + nap));
            b.after_sleep();
            sleeping_.store(false, std::memory_order_relaxed);
            if (woken && wakeup_->watch_ready()) b.on_watch_ready();
            // A turn that merely timed out goes back to sleep without
            // spinning again, and for twice as long, up to longest_nap.
            if (woken) {
                idle = false;
                nap = shortest_nap;
            } else {
                nap = std::min(2 * nap, longest_nap);
            }
        }
    }

    // The worker's fd alone cannot be trusted to wake the thread: a receiver
    // of a fast stream of active messages over shared memory (four threads
    // notifying two peers on host_ipc, under UCX 1.13 and a sanitizer) now
    // and then slept through one, its queue filled, and its senders stalled
    // for good. So the thread never sleeps longer than a nap: shortest_nap
    // after activity, when a lost wake-up costs most, doubling while nothing
    // happens, so that an idle thread wakes about ten times a second (some
    // 35 us each on the development machine).
    static constexpr std::chrono::milliseconds shortest_nap{1};
    static constexpr std::chrono::milliseconds longest_nap{100};

    std::optional<wakeup> wakeup_;
    mpsc_queue queue_;
    std::atomic<bool> sleeping_{false};
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

}  // namespace detail
FERRY_NAMESPACE_END
