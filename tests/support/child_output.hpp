#pragma once

// Runs a piece of a test in a forked child and brings back what it wrote and
// how it exited: for work that must not happen in the test process itself
// (CUDA, once initialised, does not survive the forks later cases make).

#include <catch2/catch.hpp>

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>

namespace ferry_test {

struct child_result {
    bool exited = false;  // false: killed by a signal
    int code = 0;         // the exit status, when it exited
    std::string output;   // what the child returned
};

// Forks; the child runs f(), which returns {exit status, output}, writes the
// output back through a pipe and exits with the status.
template <class F>
child_result in_child(F&& f) {
    int out[2];
    REQUIRE(::pipe(out) == 0);
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(out[0]);
        const auto [code, text] = f();
        for (std::size_t done = 0; done < text.size();) {
            const ssize_t n = ::write(out[1], text.data() + done, text.size() - done);
            if (n <= 0) break;
            done += static_cast<std::size_t>(n);
        }
        ::_exit(code);
    }
    ::close(out[1]);
    child_result r;
    char buf[4096];
    for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) > 0;) r.output.append(buf, static_cast<std::size_t>(n));
    ::close(out[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    r.exited = WIFEXITED(status);
    r.code = r.exited ? WEXITSTATUS(status) : 0;
    return r;
}

}  // namespace ferry_test
