#pragma once

// Runs a test between two real processes: an initiator and a target, each
// forked from the test program before any UCX object exists (UCX state does
// not survive fork), each making its own backend. A socketpair carries
// metadata blobs and small control messages between them.
//
// The children must not use Catch2 (its state lives in the parent): they
// check with `expect`, which prints to stderr and exits 1. The parent
// collects each child's output and exit status and reports them to Catch2.
// A child that outlives its time limit is killed, so a hang fails the test
// instead of blocking ctest.

#include <catch2/catch.hpp>
#include <ferry/ferry.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace ferry_test {

namespace detail {

inline std::string& role_name() {
    static std::string name = "test";
    return name;
}

inline void write_all(int fd, const void* data, std::size_t len) noexcept {
    const auto* p = static_cast<const char*>(data);
    while (len > 0) {
        ssize_t n = ::write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        p += n;
        len -= static_cast<std::size_t>(n);
    }
}

}  // namespace detail

/// Ends the calling child with exit status 1 after printing `message`.
[[noreturn]] inline void fail(std::string_view message) {
    std::string line = detail::role_name() + ": " + std::string(message) + "\n";
    detail::write_all(STDERR_FILENO, line.data(), line.size());
    ::_exit(1);
}

/// The children's REQUIRE.
inline void expect(bool condition, std::string_view message) {
    if (!condition) fail(message);
}

inline std::string str(ferry::status s) { return std::string(ferry::to_string(s)); }

/// Fails unless `got` is `want`, naming both.
inline void expect_status(ferry::status got, ferry::status want, std::string_view what) {
    if (got != want) fail(std::string(what) + ": got " + str(got) + ", expected " + str(want));
}

/// One end of the socketpair. Every message is a u32 length and that many bytes.
class channel {
public:
    explicit channel(int fd) : fd_(fd) {}

    void send(std::span<const std::byte> bytes) {
        const auto len = static_cast<std::uint32_t>(bytes.size());
        send_raw(&len, sizeof len);
        send_raw(bytes.data(), bytes.size());
    }
    void send(std::string_view text) { send(std::as_bytes(std::span(text.data(), text.size()))); }

    void send_u64s(std::span<const std::uint64_t> values) { send(std::as_bytes(values)); }

    [[nodiscard]] std::vector<std::byte> recv_bytes() {
        std::uint32_t len = 0;
        recv_raw(&len, sizeof len);
        std::vector<std::byte> out(len);
        recv_raw(out.data(), out.size());
        return out;
    }

    [[nodiscard]] std::string recv() {
        auto bytes = recv_bytes();
        return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
    }

    [[nodiscard]] std::vector<std::uint64_t> recv_u64s() {
        auto bytes = recv_bytes();
        expect(bytes.size() % sizeof(std::uint64_t) == 0,
               "channel: a u64 list of " + std::to_string(bytes.size()) + " bytes arrived");
        std::vector<std::uint64_t> out(bytes.size() / sizeof(std::uint64_t));
        std::memcpy(out.data(), bytes.data(), bytes.size());
        return out;
    }

    /// Receives one message and fails unless it is exactly `want`.
    void expect_message(std::string_view want) {
        auto got = recv();
        if (got != want) fail("channel: expected message '" + std::string(want) + "', got '" + got + "'");
    }

    /// Waits until the other process has closed its end (exited), failing
    /// if a message arrives instead.
    void expect_closed() {
        char c;
        ssize_t n;
        do n = ::recv(fd_, &c, 1, 0);
        while (n < 0 && errno == EINTR);
        if (n != 0) fail("channel: expected the other process to close its end");
    }

    /// Whether a message (or the peer's end of the connection) is waiting.
    [[nodiscard]] bool readable(int timeout_ms = 0) const {
        pollfd p{fd_, POLLIN, 0};
        int n = ::poll(&p, 1, timeout_ms);
        return n > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
    }

private:
    void send_raw(const void* data, std::size_t len) {
        const auto* p = static_cast<const char*>(data);
        while (len > 0) {
            ssize_t n = ::send(fd_, p, len, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) fail(std::string("channel: send failed: ") + std::strerror(errno));
            p += n;
            len -= static_cast<std::size_t>(n);
        }
    }

    void recv_raw(void* data, std::size_t len) {
        auto* p = static_cast<char*>(data);
        while (len > 0) {
            ssize_t n = ::recv(fd_, p, len, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n == 0) fail("channel: the other process closed its end (it probably failed first)");
            if (n < 0) fail(std::string("channel: recv failed: ") + std::strerror(errno));
            p += n;
            len -= static_cast<std::size_t>(n);
        }
    }

    int fd_;
};

/// A bound on how long a child waits for something that should happen, so
/// that a lost message fails with a description instead of an alarm. Far
/// longer than anything takes when things work: not a timing assertion.
class patience {
public:
    explicit patience(std::chrono::seconds limit = std::chrono::seconds(40))
        : limit_(limit), end_(std::chrono::steady_clock::now() + limit) {}

    /// Fails, naming what was awaited, once the limit has passed.
    void check(const std::string& waiting_for) const {
        if (std::chrono::steady_clock::now() > end_)
            fail("gave up after " + std::to_string(limit_.count()) + " s waiting for " + waiting_for);
    }

private:
    std::chrono::seconds limit_;
    std::chrono::steady_clock::time_point end_;
};

/// What a role function gets: its end of the channel and the transport that
/// both processes must use.
struct side {
    channel& ch;
    std::string tls;

    /// A backend configuration named `name` that uses this run's transport.
    [[nodiscard]] ferry::ucx_config config(std::string name) const {
        ferry::ucx_config cfg;
        cfg.name = std::move(name);
        cfg.ucx_options = {{"TLS", tls}};
        return cfg;
    }
};

using role_fn = std::function<void(side&)>;

/// Drives the backend until a message waits on the channel. Targets of
/// emulated transfers sit here while the initiator works.
template <class Backend>
void progress_until_message(Backend& b, channel& ch) {
    while (!ch.readable())
        if (b.progress() == 0) ::sched_yield();
}

/// Checks a posted transfer until it is no longer in progress.
template <class Backend>
[[nodiscard]] ferry::status wait_for(Backend& b, ferry::xfer x) {
    ferry::status s = b.check(x);
    while (s == ferry::status::in_progress) {
        ::sched_yield();
        s = b.check(x);
    }
    return s;
}

/// Posts and waits; fails unless the transfer ends ok.
template <class Backend>
void post_and_wait(Backend& b, ferry::xfer x, std::string_view notif, std::string_view what) {
    auto s = b.post(x, notif);
    if (s != ferry::status::ok && s != ferry::status::in_progress)
        fail(std::string(what) + ": post returned " + str(s));
    expect_status(wait_for(b, x), ferry::status::ok, std::string(what) + ": check");
}

namespace detail {

struct child {
    std::string role;
    pid_t pid = -1;
    int out_fd = -1;
    std::string output;
    bool running = true;
    int wait_status = 0;
    std::string killed_because;
    int exit_rank = 0;
};

/// Runs a forked child's body and ends the child: an exception fails it,
/// and it exits with _exit, which skips Catch2's and the parent's exit-time
/// work (not the child's) and LeakSanitizer's exit-time check (run here).
template <class Body>
[[noreturn]] void end_child_after(Body&& body) {
    try {
        body();
    } catch (const std::exception& e) {
        fail(std::string("uncaught exception: ") + e.what());
    } catch (...) {
        fail("uncaught exception of unknown type");
    }
#if defined(__SANITIZE_ADDRESS__)
    if (__lsan_do_recoverable_leak_check() != 0) fail("LeakSanitizer found leaks (reported above)");
#endif
    ::_exit(0);
}

inline void reset_signals_in_child() {
    // Catch2's fatal-signal handlers report into the parent's reporter, which
    // the child must not use; a crash should simply end the child.
    for (int sig : {SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL, SIGTERM, SIGINT, SIGALRM, SIGPIPE})
        ::signal(sig, SIG_DFL);
}

inline void spawn(child& c, int my_end, int other_end, const role_fn& fn, const std::string& tls,
                  std::chrono::seconds limit) {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    // Buffered output of the parent would otherwise be flushed twice.
    std::fflush(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) throw std::system_error(errno, std::generic_category(), "fork");
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        ::close(out[0]);
        ::close(other_end);
        ::dup2(out[1], STDOUT_FILENO);
        ::dup2(out[1], STDERR_FILENO);
        ::close(out[1]);
        reset_signals_in_child();
        role_name() = c.role;
        ::alarm(static_cast<unsigned>(limit.count()));
        end_child_after([&] {
            channel ch(my_end);
            side s{ch, tls};
            fn(s);
        });
    }
    ::close(out[1]);
    c.pid = pid;
    c.out_fd = out[0];
}

inline void read_some(child& c) {
    char buf[4096];
    ssize_t n = ::read(c.out_fd, buf, sizeof buf);
    if (n > 0) {
        c.output.append(buf, static_cast<std::size_t>(n));
    } else if (n == 0 || errno != EINTR) {
        ::close(c.out_fd);
        c.out_fd = -1;
    }
}

inline std::string describe_exit(const child& c, std::chrono::seconds limit) {
    if (!c.killed_because.empty()) return "was killed by the harness: " + c.killed_because;
    if (WIFEXITED(c.wait_status)) return "exited with status " + std::to_string(WEXITSTATUS(c.wait_status));
    if (WIFSIGNALED(c.wait_status)) {
        int sig = WTERMSIG(c.wait_status);
        std::string text = "was killed by signal " + std::to_string(sig) + " (" + ::strsignal(sig) + ")";
        if (sig == SIGALRM) text += ": its time limit of " + std::to_string(limit.count()) + " s ran out";
        return text;
    }
    return "ended with wait status " + std::to_string(c.wait_status);
}

inline bool passed(const child& c) {
    return c.killed_because.empty() && WIFEXITED(c.wait_status) && WEXITSTATUS(c.wait_status) == 0;
}

}  // namespace detail

/// Forks an initiator and a target, connected by a socketpair, both using
/// transport `tls`, and reports their outcome to Catch2. Each child has
/// `limit` to finish; when one fails, the other gets a few seconds to finish
/// its own report before it is killed.
inline void run_two_process(const std::string& tls, const role_fn& initiator, const role_fn& target,
                            std::chrono::seconds limit = std::chrono::seconds(60)) {
    using clock = std::chrono::steady_clock;
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);

    std::array<detail::child, 2> children;
    children[0].role = "initiator";
    children[1].role = "target";
    detail::spawn(children[0], sv[0], sv[1], initiator, tls, limit);
    detail::spawn(children[1], sv[1], sv[0], target, tls, limit);
    ::close(sv[0]);
    ::close(sv[1]);

    // The children's own alarms fire first; this is the backstop.
    const auto hard_deadline = clock::now() + limit + std::chrono::seconds(5);
    std::optional<clock::time_point> grace_deadline;
    int exits = 0;
    auto kill_running = [&](const std::string& why) {
        for (auto& c : children)
            if (c.running && c.killed_because.empty()) {
                ::kill(c.pid, SIGKILL);
                c.killed_because = why;
            }
    };
    while (children[0].running || children[1].running) {
        std::array<pollfd, 2> fds{};
        std::array<detail::child*, 2> owners{};
        nfds_t n = 0;
        for (auto& c : children)
            if (c.out_fd >= 0) {
                fds[n] = {c.out_fd, POLLIN, 0};
                owners[n++] = &c;
            }
        if (n > 0 && ::poll(fds.data(), n, 20) > 0) {
            for (nfds_t i = 0; i < n; ++i)
                if (fds[i].revents != 0) detail::read_some(*owners[i]);
        } else if (n == 0) {
            ::usleep(20'000);
        }
        for (auto& c : children) {
            if (!c.running) continue;
            pid_t r = ::waitpid(c.pid, &c.wait_status, WNOHANG);
            if (r == c.pid) {
                c.running = false;
                c.exit_rank = ++exits;
                if (!detail::passed(c) && !grace_deadline) grace_deadline = clock::now() + std::chrono::seconds(3);
            }
        }
        const auto now = clock::now();
        if (now > hard_deadline)
            kill_running("still running " + std::to_string(limit.count() + 5) + " s after the start");
        else if (grace_deadline && now > *grace_deadline)
            kill_running("still running 3 s after the other process failed");
    }
    for (auto& c : children) {
        while (c.out_fd >= 0) detail::read_some(c);
    }

    const bool ok = detail::passed(children[0]) && detail::passed(children[1]);
    std::string report;
    for (const auto& c : children) {
        report += "--- " + c.role + " (tls " + tls + ") " + detail::describe_exit(c, limit);
        if (!detail::passed(c)) report += c.exit_rank == 1 ? ", first" : ", second";
        report += " ---\n";
        report += c.output.empty() ? std::string("(no output)\n") : c.output;
        if (!c.output.empty() && c.output.back() != '\n') report += '\n';
    }
    if (!ok) FAIL(report);
    // What a passing child wants seen (a time it measured, say): its lines
    // that begin with "FERRY-NOTE ", which ctest shows with --verbose.
    for (const auto& c : children) {
        for (std::size_t pos = 0; pos < c.output.size();) {
            const std::size_t end = std::min(c.output.find('\n', pos), c.output.size());
            const std::string_view line(c.output.data() + pos, end - pos);
            if (line.rfind("FERRY-NOTE ", 0) == 0)
                std::printf("%s (tls %s): %.*s\n", c.role.c_str(), tls.c_str(), static_cast<int>(line.size() - 11),
                            line.data() + 11);
            pos = end + 1;
        }
    }
    SUCCEED("initiator and target passed over " << tls);
}

}  // namespace ferry_test
