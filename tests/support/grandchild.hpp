#pragma once

// A process that a supervising role forks, for tests that kill a target
// mid-stream: it must not hold any UCX object (UCX state does not survive
// fork), talks to its parent over a socketpair of its own, writes its output
// where its parent does, and dies with its parent.

#include "two_process.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ferry_test {

inline std::string describe_wait_status(int ws) {
    if (WIFEXITED(ws)) return "exited with status " + std::to_string(WEXITSTATUS(ws));
    if (WIFSIGNALED(ws)) return "was killed by signal " + std::to_string(WTERMSIG(ws)) + " (" + ::strsignal(WTERMSIG(ws)) + ")";
    return "ended with wait status " + std::to_string(ws);
}

class grandchild {
public:
    grandchild(std::string role, const std::function<void(channel&)>& fn, const std::vector<int>& close_in_child = {})
        : role_(std::move(role)) {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
            fail(std::string("socketpair: ") + std::strerror(errno));
        std::fflush(nullptr);
        const pid_t parent = ::getpid();
        pid_ = ::fork();
        if (pid_ < 0) fail(std::string("fork: ") + std::strerror(errno));
        if (pid_ == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(1);
            ::close(sv[0]);
            for (int fd : close_in_child) ::close(fd);
            ferry_test::detail::role_name() = role_;
            ::alarm(60);
            ferry_test::detail::end_child_after([&] {
                channel ch(sv[1]);
                fn(ch);
            });
        }
        ::close(sv[1]);
        fd_ = sv[0];
        ch_.emplace(fd_);
    }
    grandchild(const grandchild&) = delete;
    grandchild& operator=(const grandchild&) = delete;
    ~grandchild() {
        if (running_) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
        ::close(fd_);
    }

    [[nodiscard]] channel& ch() { return *ch_; }
    [[nodiscard]] int fd() const { return fd_; }

    /// SIGKILL, from outside; fails if the process had ended before.
    void kill_now() {
        ::kill(pid_, SIGKILL);
        int ws = 0;
        ::waitpid(pid_, &ws, 0);
        running_ = false;
        if (!WIFSIGNALED(ws) || WTERMSIG(ws) != SIGKILL)
            fail(role_ + " had already ended when it was to be killed: it " + describe_wait_status(ws));
    }

    /// Waits for the process to end; fails unless it exited with 0.
    void join() {
        int ws = 0;
        ::waitpid(pid_, &ws, 0);
        running_ = false;
        if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) fail(role_ + " " + describe_wait_status(ws));
    }

private:
    std::string role_;
    pid_t pid_ = -1;
    int fd_ = -1;
    bool running_ = true;
    std::optional<channel> ch_;
};

}  // namespace ferry_test
