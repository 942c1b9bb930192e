#pragma once

// ucx_backend's notification calls: standalone notifications out (a pooled
// buffer, sent at once or carried to the progress thread), what arrived
// (notif_inbox) handed to the application, and connect, whose empty message
// takes the notifications' lane ahead of the first of them.
#include <ferry/ucx/backend.hpp>

#include <chrono>
#include <cstddef>
#include <new>
#include <string>
#include <thread>
#include <utility>
#include <vector>

FERRY_NAMESPACE_BEGIN

template <class Policy>
inline status ucx_backend<Policy>::send_notif(peer p, std::string_view msg) noexcept {
    if constexpr (traced) {
        const status s = send_notif_untraced(p, msg);
        if (auto* stats = telemetry_.peer_of(p)) {
            if (s == status::ok) stats->notifs_sent.add();
            else telemetry_type::refused(stats, s);
        }
        return s;
    } else {
        return send_notif_untraced(p, msg);
    }
}

template <class Policy>
inline status ucx_backend<Policy>::send_notif_untraced(peer p, std::string_view msg) noexcept {
    if (msg.size() > config_.max_notif_size) return status::invalid_argument;
    auto* to = peers_.get(p.ref);
    if (!to) return status::no_such_peer;
    if (to->failed()) return status::peer_failed;
    auto* buf = send_pool_.acquire();
    if (!buf) return status::no_memory;
    buf->to = p.ref;
    if constexpr (threaded) {
        try {
            buf->storage.assign(msg);
        } catch (const std::bad_alloc&) {
            send_pool_.release(buf);
            return status::no_memory;
        }
        buf->execute = &execute_send;
        engine_.submit(buf);
        return status::ok;
    } else {
        return send_now(*buf, msg);
    }
}

template <class Policy>
inline status ucx_backend<Policy>::connect(peer p, std::chrono::nanoseconds timeout) {
    const auto deadline = detail::deadline_after(timeout);
    void* request = nullptr;
    status s = on_worker("connect", [&] {
        auto* to = peers_.get(p.ref);
        if (!to) return status::no_such_peer;
        if (to->failed()) return status::peer_failed;
        auto r = detail::send_connect_am(to->ep());
        if (r == nullptr) return status::ok;
        if (UCS_PTR_IS_ERR(r)) return detail::from_ucs(UCS_PTR_STATUS(r));
        request = r;
        return status::in_progress;
    });
    while (s == status::in_progress) {
        if constexpr (threaded) std::this_thread::sleep_for(std::chrono::microseconds(20));
        else progress();
        s = on_worker("connect", [&] {
            const ucs_status_t c = ucp_request_check_status(request);
            if (c == UCS_INPROGRESS) {
                if (std::chrono::steady_clock::now() < deadline) return status::in_progress;
                ucp_request_free(request);  // UCX frees it when it completes
                return status::timed_out;
            }
            ucp_request_free(request);
            return detail::from_ucs(c);
        });
    }
    return s;
}

template <class Policy>
inline notif_map ucx_backend<Policy>::take_notifs() {
    notif_map out;
    poll_notifs([&](std::string_view from, std::string_view msg) { out[std::string(from)].emplace_back(msg); });
    return out;
}

template <class Policy>
template <class F>
inline std::size_t ucx_backend<Policy>::poll_notifs(F&& f) {
    progress();
    const std::size_t n = inbox_.drain(std::forward<F>(f));
    if constexpr (traced) telemetry_.received(n);
    return n;
}

template <class Policy>
inline bool ucx_backend<Policy>::wait_notifs(std::chrono::nanoseconds timeout) {
    const auto deadline = detail::deadline_after(timeout);
    // A peer event wakes it once, when it arrives; taken or not, it does
    // not keep waking it after that.
    auto waiting = [this] { return inbox_.has_mail() || peer_events_.take_unseen(); };
    if constexpr (threaded) {
        return signal_.wait_until(deadline, config_.progress_spin, waiting);
    } else {
        for (;;) {
            progress();
            if (waiting()) return true;
            if (std::chrono::steady_clock::now() >= deadline) return false;
        }
    }
}

template <class Policy>
inline std::vector<peer_event> ucx_backend<Policy>::take_peer_events() {
    std::vector<peer_event> out;
    poll_peer_events([&](const peer_event& e) { out.push_back(e); });
    return out;
}

template <class Policy>
template <class F>
inline std::size_t ucx_backend<Policy>::poll_peer_events(F&& f) {
    progress();
    return peer_events_.drain(std::forward<F>(f));
}

template <class Policy>
inline void ucx_backend<Policy>::execute_send(detail::command& c, void* self) noexcept {
    auto& buf = static_cast<send_buffer&>(c);
    static_cast<ucx_backend*>(self)->send_now(buf, buf.storage);
}

template <class Policy>
inline status ucx_backend<Policy>::send_now(send_buffer& buf, std::string_view msg) noexcept {
    touch("send_notif");
    auto* to = peers_.get(buf.to);
    if (!to || to->failed()) {
        send_pool_.release(&buf);
        return to ? status::peer_failed : status::no_such_peer;
    }
    if (auto* box = to->mailbox(); box && box->send(msg)) {
        send_pool_.release(&buf);
        return status::ok;
    }
    auto r = detail::send_notif_am(to->ep(), config_.name, msg, buf.storage,
                                   &detail::notif_send_pool<mutex_type>::on_sent, &buf);
    if (r == nullptr || UCS_PTR_IS_ERR(r)) {
        send_pool_.release(&buf);
        return r == nullptr ? status::ok : detail::from_ucs(UCS_PTR_STATUS(r));
    }
    return status::ok;
}

FERRY_NAMESPACE_END
