#pragma once

#include <ferry/detail/completion_signal.hpp>
#include <ferry/peer_event.hpp>
#include <ferry/version.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// Peer events not yet taken by the application. Events are pushed from
/// wherever a failure is noticed — UCX's error handler and the pidfd watch
/// on the worker's owner thread, a host_ipc copy on a posting thread — and
/// taken by any thread, so the queue always locks, whatever the progress
/// policy: events are rare, and a lock per event costs nothing next to what
/// caused it. The hot path only reads `pending()`, an atomic.
class peer_event_queue {
public:
    explicit peer_event_queue(completion_signal* signal = nullptr) noexcept : signal_(signal) {}

    /// The most events kept untaken; past it the oldest are dropped (and
    /// counted), so that an application that never takes events — a peer
    /// reloaded every time it restarts, for years — does not grow without end.
    static constexpr std::size_t capacity = 4096;

    /// Queues an event and wakes wait_notifs. An event that cannot be
    /// stored (no memory) is counted in dropped(), never thrown: the
    /// callers are noexcept error paths.
    void push(peer_event e) noexcept {
        try {
            std::lock_guard lock(mutex_);
            if (events_.size() == capacity) {
                events_.pop_front();
                dropped_.fetch_add(1, std::memory_order_relaxed);
            }
            events_.push_back(std::move(e));
            pending_.store(true, std::memory_order_seq_cst);
            unseen_.store(true, std::memory_order_seq_cst);
        } catch (const std::bad_alloc&) {
            dropped_.fetch_add(1, std::memory_order_relaxed);
            return;
        }
        if (signal_) signal_->notify();
    }

    /// Hands each queued event to f, oldest first, then forgets them; f runs
    /// without the lock, so it may call back into the backend.
    template <class F>
    std::size_t drain(F&& f) {
        std::deque<peer_event> taken;
        {
            std::lock_guard lock(mutex_);
            if (events_.empty()) return 0;
            taken.swap(events_);
            pending_.store(false, std::memory_order_seq_cst);
            unseen_.store(false, std::memory_order_seq_cst);
        }
        for (const auto& e : taken) f(e);
        return taken.size();
    }

    /// Whether an event waits; any thread.
    [[nodiscard]] bool pending() const noexcept { return pending_.load(std::memory_order_seq_cst); }

    /// Whether an event came since the last call said so: what wakes
    /// wait_notifs, once per arrival, so that a loop that waits for
    /// notifications and leaves events untaken does not spin.
    [[nodiscard]] bool take_unseen() noexcept {
        return unseen_.load(std::memory_order_seq_cst) && unseen_.exchange(false, std::memory_order_seq_cst);
    }
    [[nodiscard]] std::uint64_t dropped() const noexcept { return dropped_.load(std::memory_order_relaxed); }

private:
    std::mutex mutex_;
    std::deque<peer_event> events_;
    std::atomic<bool> pending_{false};
    std::atomic<bool> unseen_{false};
    std::atomic<std::uint64_t> dropped_{0};
    completion_signal* signal_;
};

}  // namespace detail
FERRY_NAMESPACE_END
