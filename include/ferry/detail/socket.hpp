#pragma once

#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// Owns one file descriptor.
class unique_fd {
public:
    unique_fd() noexcept = default;
    explicit unique_fd(int fd) noexcept : fd_(fd) {}
    unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    unique_fd& operator=(unique_fd&& o) noexcept {
        if (this != &o) reset(std::exchange(o.fd_, -1));
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() { reset(); }

    [[nodiscard]] int get() const noexcept { return fd_; }
    [[nodiscard]] explicit operator bool() const noexcept { return fd_ >= 0; }
    void reset(int fd = -1) noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

using steady_deadline = std::chrono::steady_clock::time_point;

/// Milliseconds until `deadline` for poll(), rounded up so that a wait never
/// ends just before it, and never negative.
[[nodiscard]] inline int ms_until(steady_deadline deadline) noexcept {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return static_cast<int>(std::clamp<std::int64_t>(left.count(), 0, 60'000));
}

/// Waits until `fd` is ready for `events` or `deadline` passes; false on
/// timeout. An error or hang-up counts as ready: the next call reports it.
[[nodiscard]] inline bool wait_ready(int fd, short events, steady_deadline deadline) noexcept {
    for (;;) {
        pollfd p{fd, events, 0};
        const int n = ::poll(&p, 1, ms_until(deadline));
        if (n > 0) return true;
        if (n == 0 && std::chrono::steady_clock::now() >= deadline) return false;
        if (n < 0 && errno != EINTR) return true;
    }
}

[[nodiscard]] inline std::string errno_text(int err) { return std::strerror(err); }

/// Connects a non-blocking TCP socket to host:port within the deadline,
/// trying each address the name resolves to. Name resolution itself is
/// getaddrinfo's and may take longer where DNS is slow; pass addresses to
/// avoid it.
[[nodiscard]] inline unique_fd tcp_connect(const std::string& host, std::uint16_t port, steady_deadline deadline,
                                           const std::string& who) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* found = nullptr;
    const std::string service = std::to_string(port);
    if (const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0)
        throw error(status::invalid_argument, who + ": cannot resolve '" + host + "': " + ::gai_strerror(rc));
    std::string last = "no address";
    bool timed_out = false;
    for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
        unique_fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
        if (!fd) {
            last = "socket: " + errno_text(errno);
            continue;
        }
        if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
            if (errno != EINPROGRESS) {
                last = "connect: " + errno_text(errno);
                continue;
            }
            if (!wait_ready(fd.get(), POLLOUT, deadline)) {
                timed_out = true;
                last = "connect: timed out";
                break;
            }
            int err = 0;
            socklen_t len = sizeof err;
            if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
            if (err != 0) {
                last = "connect: " + errno_text(err);
                continue;
            }
        }
        ::freeaddrinfo(found);
        return fd;
    }
    ::freeaddrinfo(found);
    throw error(timed_out ? status::timed_out : status::peer_failed,
                who + ": cannot connect to " + host + ":" + service + " (" + last + ")");
}

/// Sends all of `len` bytes before the deadline; never raises SIGPIPE.
/// `more`: more follows at once (MSG_MORE), so that a header and its payload
/// leave together.
inline void send_all(int fd, const void* data, std::size_t len, steady_deadline deadline, const std::string& who,
                     bool more = false) {
    const auto* p = static_cast<const char*>(data);
    while (len > 0) {
        const ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
        if (n > 0) {
            p += n;
            len -= static_cast<std::size_t>(n);
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_ready(fd, POLLOUT, deadline)) throw error(status::timed_out, who + ": send timed out");
        } else if (n < 0 && errno != EINTR) {
            throw error(status::peer_failed, who + ": send: " + errno_text(errno));
        }
    }
}

/// Receives up to `len` bytes before the deadline; returns how many arrived
/// before the peer closed (len unless it closed early).
[[nodiscard]] inline std::size_t recv_all(int fd, void* data, std::size_t len, steady_deadline deadline,
                                          const std::string& who) {
    auto* p = static_cast<char*>(data);
    std::size_t got = 0;
    while (got < len) {
        const ssize_t n = ::recv(fd, p + got, len - got, 0);
        if (n > 0) {
            got += static_cast<std::size_t>(n);
        } else if (n == 0) {
            break;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (!wait_ready(fd, POLLIN, deadline)) throw error(status::timed_out, who + ": receive timed out");
        } else if (errno == ECONNRESET) {
            break;
        } else if (errno != EINTR) {
            throw error(status::peer_failed, who + ": recv: " + errno_text(errno));
        }
    }
    return got;
}

}  // namespace detail
FERRY_NAMESPACE_END
