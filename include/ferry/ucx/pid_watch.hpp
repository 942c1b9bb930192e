#pragma once

#include <ferry/peer_event.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// Watches the processes of the peers on this host, so that a peer that
/// dies is marked failed within milliseconds, whatever UCX's keepalive (a
/// second by default, 20 s in UCX's own) or its transports notice, and even
/// without peer error handling. Each peer's pidfd goes into one epoll set of
/// the watch's own, whose fd becomes readable when any watched process
/// exits: the progress thread sleeps on that one fd beside the worker's
/// (wakeup), and a look at every peer costs one epoll_wait, however many
/// peers there are. Where the kernel has no pidfd, the watch reads
/// /proc/PID/stat instead, less often (fallback_interval).
///
/// Owned by the peer table and touched only by the thread that drives the
/// worker (loading and unloading peers run there, and so do the polls), so
/// it takes no lock. A death becomes remote_peer::mark_failed, the very path
/// that UCX's endpoint error handler takes.
class pid_watch {
    using clock = std::chrono::steady_clock;

public:
    /// How long a death may go unseen by a thread that keeps the worker busy
    /// (the progress thread under load, inline progress() and wait loops).
    /// Polling is one syscall (epoll_wait, some 0.3 us); doing it at most
    /// once a millisecond costs those loops a clock read between polls.
    static constexpr std::chrono::milliseconds interval{1};
    /// Without a pidfd: a read of /proc per peer, so less often.
    static constexpr std::chrono::milliseconds fallback_interval{50};

    pid_watch() noexcept : epoll_fd_(::epoll_create1(EPOLL_CLOEXEC)) {}
    ~pid_watch() {
        if (epoll_fd_ >= 0) ::close(epoll_fd_);
    }
    pid_watch(const pid_watch&) = delete;
    pid_watch& operator=(const pid_watch&) = delete;

    /// Readable while a watched process has exited and poll_now has not yet
    /// taken it; -1 where epoll is unavailable (then polls alone find deaths).
    [[nodiscard]] int fd() const noexcept { return epoll_fd_; }

    [[nodiscard]] bool empty() const noexcept { return by_pidfd_.empty() && probed_.empty(); }

    /// Starts watching a peer just loaded; marks it failed at once when its
    /// process was gone before (or its pid names another process now).
    void add(remote_peer& p) {
        auto& proc = p.process();
        if (!proc.watchable()) return;
        if (!proc.gone_at_load().empty()) {
            p.mark_failed(UCS_ERR_CONNECTION_RESET, peer_failure::process_exited, proc.gone_at_load());
            return;
        }
        if (proc.pidfd() >= 0 && epoll_fd_ >= 0) {
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.ptr = &p;
            by_pidfd_.reserve(by_pidfd_.size() + 1);
            if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, proc.pidfd(), &ev) == 0) {
                by_pidfd_.push_back(&p);
                p.watched = true;
                return;
            }
        }
        probed_.push_back(&p);
        p.watched = true;
    }

    /// Stops watching a peer (unloaded, replaced, or its death handled).
    void remove(remote_peer& p) noexcept {
        if (!p.watched) return;
        p.watched = false;
        if (auto it = std::find(probed_.begin(), probed_.end(), &p); it != probed_.end()) {
            probed_.erase(it);
            return;
        }
        if (auto it = std::find(by_pidfd_.begin(), by_pidfd_.end(), &p); it != by_pidfd_.end()) {
            by_pidfd_.erase(it);
            ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, p.process().pidfd(), nullptr);
        }
    }

    /// Forgets every peer; the backend's shutdown.
    void clear() noexcept {
        while (!by_pidfd_.empty()) remove(*by_pidfd_.back());
        while (!probed_.empty()) remove(*probed_.back());
    }

    /// poll_now, at most once per interval; a clock read otherwise. `now`
    /// comes from the caller, which mostly has it at hand already.
    void poll_if_due(clock::time_point now) noexcept {
        if (empty() || now < next_poll_) return;
        next_poll_ = now + interval;
        poll_now(now);
    }

    /// As poll_if_due, for inline check() of a transfer in flight to a
    /// watched peer, the hot path: it reads CLOCK_MONOTONIC_COARSE, about
    /// 6 ns on the development machine against 25 ns for steady_clock, and
    /// pays for it in resolution: it moves once per kernel tick (1 to 4 ms),
    /// so check() looks at most once per tick. A healthy peer's check thus
    /// costs one clock read and a compare; never a syscall.
    void poll_if_due_coarse() noexcept {
        if (empty()) return;
        timespec ts{};
        ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        const std::int64_t now = static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
        if (now < next_coarse_ns_) return;
        next_coarse_ns_ = now + std::chrono::nanoseconds(interval).count();
        poll_now();
    }

    /// What inline check() calls on each look at a transfer in flight to a
    /// watched peer: every 16th call reads the coarse clock
    /// (poll_if_due_coarse), the others cost an increment. A caller that
    /// spins on check() still looks within a tick; one that checks seldom
    /// is seen to by progress() and the wait functions, which poll by time.
    void on_check() noexcept {
        if ((++checks_ & 15U) == 0) poll_if_due_coarse();
    }

    /// Marks failed every watched peer whose process has exited, and stops
    /// watching it. Returns how many were found.
    std::size_t poll_now(clock::time_point now = clock::now()) noexcept {
        std::size_t found = 0;
        if (!by_pidfd_.empty()) {
            epoll_event ready[16];
            int n;
            while ((n = ::epoll_wait(epoll_fd_, ready, 16, 0)) > 0) {
                for (int i = 0; i < n; ++i) {
                    auto& p = *static_cast<remote_peer*>(ready[i].data.ptr);
                    p.mark_failed(UCS_ERR_CONNECTION_RESET, peer_failure::process_exited, exited(p));
                    remove(p);
                    ++found;
                }
                if (n < 16) break;
            }
        }
        if (!probed_.empty() && now >= next_probe_) {
            next_probe_ = now + fallback_interval;
            for (std::size_t i = 0; i < probed_.size();) {
                remote_peer& p = *probed_[i];
                std::string why;
                try {
                    why = p.process().probe();
                } catch (...) {
                    ++i;  // no memory for the words: look again next time
                    continue;
                }
                if (why.empty()) {
                    ++i;
                    continue;
                }
                p.mark_failed(UCS_ERR_CONNECTION_RESET, peer_failure::process_exited, why);
                remove(p);  // erases probed_[i]
                ++found;
            }
        }
        return found;
    }

private:
    static std::string exited(remote_peer& p) noexcept {
        try {
            return "process " + std::to_string(p.process().pid()) + " exited";
        } catch (...) {
            return {};
        }
    }

    int epoll_fd_;
    std::vector<remote_peer*> by_pidfd_;  // in the epoll set
    std::vector<remote_peer*> probed_;    // no pidfd: /proc is read
    clock::time_point next_poll_{};
    std::int64_t next_coarse_ns_ = 0;
    unsigned checks_ = 0;
    clock::time_point next_probe_{};
};

}  // namespace detail
FERRY_NAMESPACE_END
