#pragma once

#include <ferry/version.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// Lets application threads block until the progress thread completes
/// something, without the progress thread paying for a notify when nobody
/// waits. The waiter count and the waited-for state are both sequentially
/// consistent, so a completion is either seen by the waiter's check or finds
/// the waiter registered and wakes it.
class completion_signal {
public:
    void notify() noexcept {
        if (waiters_.load(std::memory_order_seq_cst) == 0) return;
        std::lock_guard lock(mutex_);
        cv_.notify_all();
    }

    /// Waits until done() holds or the deadline passes; returns done(). It
    /// polls for up to `spin` first: a completion that is microseconds away
    /// should not pay for a futex sleep and a wake-up, which cost more.
    template <class Pred>
    bool wait_until(std::chrono::steady_clock::time_point deadline, std::chrono::nanoseconds spin, Pred done) {
        using clock = std::chrono::steady_clock;
        const auto spin_end = std::min(deadline, clock::now() + spin);
        for (unsigned i = 0;; ++i) {
            if (done()) return true;
            // Reading the clock costs more than testing done(): not every turn.
            if (i % 64 == 63 && clock::now() >= spin_end) break;
        }
        waiters_.fetch_add(1, std::memory_order_seq_cst);
        std::unique_lock lock(mutex_);
        bool ok = cv_.wait_until(lock, deadline, done);
        waiters_.fetch_sub(1, std::memory_order_seq_cst);
        return ok;
    }

private:
    std::atomic<int> waiters_{0};
    std::mutex mutex_;
    std::condition_variable cv_;
};

}  // namespace detail
FERRY_NAMESPACE_END
