#pragma once

// ucx_backend and its worker: opening it, driving it (inline progress()
// and the progress thread's rounds) and shutting it down, always on the
// worker's owner thread.
#include <ferry/ucx/backend.hpp>

#include <chrono>
#include <utility>

FERRY_NAMESPACE_BEGIN

template <class Policy>
inline unsigned ucx_backend<Policy>::progress() noexcept {
    if constexpr (threaded) {
        return 0;
    } else {
        unsigned n = 0;
        n += paths_.progress(worker_->owner());
        while (unsigned k = worker_->progress()) n += k;
        if (poll_mailbox()) ++n;
        if (!peers_.watch().empty()) peers_.watch().poll_if_due(std::chrono::steady_clock::now());
        peers_.reap(worker_->owner());
        return n;
    }
}

template <class Policy>
inline void ucx_backend<Policy>::open_worker() {
    worker_.emplace(context_->get());
    inbox_.attach(worker_->get());
    worker_address_ = worker_->address();
}

template <class Policy>
inline std::pair<bool, std::chrono::steady_clock::time_point> ucx_backend<Policy>::serve() noexcept {
    bool worked = false;
    while (worker_->progress()) worked = true;
    if (poll_mailbox()) worked = true;
    if constexpr (paths_type::any_polled) {
        // GPU work completes without telling the worker: poll it rather
        // than sleep while any is in flight.
        if (paths_.polling()) {
            paths_.progress(worker_->owner());
            worked = true;
        }
    }
    const auto now = std::chrono::steady_clock::now();
    // A thread kept busy never sleeps on the watch's fd: look at it here,
    // at most once per pid_watch::interval, before the sweep that ends the
    // transfers of the peers it finds dead.
    peers_.watch().poll_if_due(now);
    peers_.reap(worker_->owner());
    expiry_.sweep(xfers_, peers_.failures());
    return {worked, expiry_.expire_due(now)};
}

template <class Policy>
inline void ucx_backend<Policy>::shut_down() noexcept {
    using clock = std::chrono::steady_clock;
    const auto deadline = clock::now() + config_.close_timeout;
    auto busy = [this] {
        bool any = false;
        xfers_.for_each([&](xfer_state& st) { any = any || st.pending > 0; });
        return any;
    };
    while (busy() && clock::now() < deadline) {
        paths_.progress(worker_->owner());
        worker_->progress();
    }
    // Transfer states may keep their peer objects alive longer, but closed.
    peers_.close_all(*worker_, deadline);
}

FERRY_NAMESPACE_END
