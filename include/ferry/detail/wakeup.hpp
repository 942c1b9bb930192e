#pragma once

#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// An epoll set over a worker's event fd, an eventfd that application
/// threads write to, and optionally a watch fd (the pid watch's epoll set,
/// readable when a peer's process exits) and another fd (the notification
/// mailbox's socket), so that a sleeping progress thread wakes for the
/// network, new work, a peer's death, or a notification in the mailbox.
class wakeup {
public:
    explicit wakeup(int worker_fd, int watch_fd = -1, int extra_fd = -1) : watch_fd_(watch_fd) {
        event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (event_fd_ < 0) fail("eventfd");
        epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
        if (epoll_fd_ < 0) {
            close(event_fd_);
            fail("epoll_create1");
        }
        for (int fd : {worker_fd, event_fd_, watch_fd, extra_fd}) {
            if (fd < 0) continue;
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.fd = fd;
            if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
                close(epoll_fd_);
                close(event_fd_);
                fail("epoll_ctl");
            }
        }
    }
    ~wakeup() {
        close(epoll_fd_);
        close(event_fd_);
    }
    wakeup(const wakeup&) = delete;
    wakeup& operator=(const wakeup&) = delete;

    /// Blocks until the worker's fd, the eventfd or the watch fd is
    /// readable, or `until` passes; false when it was only the time.
    /// watch_ready() then says whether the watch fd was among them.
    bool sleep(std::chrono::steady_clock::time_point until = std::chrono::steady_clock::time_point::max()) noexcept {
        int timeout_ms = -1;
        if (until != std::chrono::steady_clock::time_point::max()) {
            auto left = std::chrono::ceil<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
            timeout_ms = static_cast<int>(std::clamp<std::int64_t>(left.count(), 0, 60'000));
        }
        epoll_event events[4];
        int ready;
        while ((ready = epoll_wait(epoll_fd_, events, 4, timeout_ms)) < 0 && errno == EINTR) {
        }
        watch_ready_ = false;
        for (int i = 0; i < ready; ++i)
            if (watch_fd_ >= 0 && events[i].data.fd == watch_fd_) watch_ready_ = true;
        std::uint64_t drained;
        while (read(event_fd_, &drained, sizeof drained) > 0) {
        }
        return ready != 0;
    }

    [[nodiscard]] bool watch_ready() const noexcept { return watch_ready_; }

    void signal() noexcept {
        std::uint64_t one = 1;
        // A full counter already means "wake up", so a failed write loses nothing.
        [[maybe_unused]] auto r = write(event_fd_, &one, sizeof one);
    }

private:
    [[noreturn]] static void fail(const char* what) {
        throw error(status::ucx_error, std::string("progress thread: ") + what + ": " + std::strerror(errno));
    }

    int event_fd_ = -1;
    int epoll_fd_ = -1;
    int watch_fd_ = -1;
    bool watch_ready_ = false;
};

}  // namespace detail
FERRY_NAMESPACE_END
