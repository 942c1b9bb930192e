// The owner rule for UCX workers (detail/thread_owner.hpp): one thread makes
// every call on a worker. ferry checks it itself (FERRY_ASSERTIONS, which the
// tests build with), so that a call from the wrong thread is caught on any
// UCX, not only on a UCX >= 1.18 built with assertions.

#include "support/ferry_catch.hpp"
#include "support/paths.hpp"

#include <ferry/detail/thread_owner.hpp>
#include <ferry/ferry.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

static_assert(FERRY_ASSERTIONS, "ferry's tests build with FERRY_ASSERTIONS=1");

namespace {

struct ended {
    int wait_status = 0;
    std::string err;  // what the child wrote to stderr
};

// Runs body in a forked child with stderr captured; the child exits 0 if
// body returns.
template <class F>
ended in_child(F&& body) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(fds[0]);
        ::dup2(fds[1], STDERR_FILENO);
        ::alarm(60);
        body();
        std::fflush(nullptr);
        ::_exit(0);
    }
    ::close(fds[1]);
    ended e;
    char buf[4096];
    for (;;) {
        const ssize_t n = ::read(fds[0], buf, sizeof buf);
        if (n > 0) e.err.append(buf, static_cast<std::size_t>(n));
        else if (n == 0 || errno != EINTR) break;
    }
    ::close(fds[0]);
    REQUIRE(::waitpid(pid, &e.wait_status, 0) == pid);
    return e;
}

// A sanitizer's runtime may end an aborting child its own way (ThreadSanitizer
// reports what it saw first and exits with its own status); ferry's message,
// which the cases check, comes before either.
bool aborted(const ended& e) {
    if (WIFSIGNALED(e.wait_status) && WTERMSIG(e.wait_status) == SIGABRT) return true;
    return ferry_test::sanitized && !(WIFEXITED(e.wait_status) && WEXITSTATUS(e.wait_status) == 0);
}
bool exited_ok(const ended& e) { return WIFEXITED(e.wait_status) && WEXITSTATUS(e.wait_status) == 0; }

ferry::ucx_config shm_config(std::string name) {
    ferry::ucx_config cfg{std::move(name), {}};
    cfg.ucx_options = {{"TLS", "shm,self"}};
    return cfg;
}

}  // namespace

TEST_CASE("thread_owner: the owner passes, another thread aborts naming the call") {
    ferry::detail::thread_owner owner;
    owner.bind_here();
    CHECK(owner.held_here());
    owner.check("a call on the owner");  // returns

    std::atomic<bool> held_elsewhere{true};
    std::thread([&] { held_elsewhere = owner.held_here(); }).join();
    CHECK_FALSE(held_elsewhere);

    const ended e = in_child([&] { std::thread([&] { owner.check("the call under test"); }).join(); });
    INFO("child stderr: " << e.err);
    CHECK(aborted(e));
    CHECK_THAT(e.err, Catch::Contains("ferry: the call under test touched a UCX worker from thread") &&
                          Catch::Contains("which does not own it"));
}

TEST_CASE("inline progress: driving the backend from a thread other than its constructor's aborts") {
    const ended e = in_child([] {
        ferry::ucx_backend<> b(shm_config("owner"));
        std::thread([&] { b.progress(); }).join();
    });
    INFO("child stderr: " << e.err);
    CHECK(aborted(e));
    CHECK_THAT(e.err, Catch::Contains("ferry: ucp_worker_progress touched a UCX worker from thread") &&
                          Catch::Contains("progress::inline_poll"));

    const ended load = in_child([] {
        ferry::ucx_backend<> a(shm_config("a"));
        ferry::ucx_backend<> b(shm_config("b"));
        const auto blob = b.local_metadata();
        std::thread([&] { static_cast<void>(a.load_remote(blob)); }).join();
    });
    INFO("child stderr: " << load.err);
    CHECK(aborted(load));
    CHECK_THAT(load.err, Catch::Contains("ferry: load_remote touched a UCX worker"));
}

TEST_CASE("progress::thread: set-up, transfers and destruction from other threads keep the owner rule") {
    // Every worker call of a thread-policy backend runs on its progress
    // thread, whichever thread constructs, uses or destroys the backend; a
    // breach would abort the child. On host_ipc (the automatic choice here)
    // the posting thread copies and the progress thread sends the
    // notification; on UCX the progress thread does both.
    using threaded = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::host>>;
    const ferry::xfer_path path = GENERATE(ferry::xfer_path::ucx, ferry::xfer_path::automatic);
    CAPTURE(path);
    const ended e = in_child([path] {
        threaded target(shm_config("target"));
        std::vector<std::byte> sink(4096);
        auto sink_region = target.register_memory(sink.data(), sink.size());
        const auto blob = target.local_metadata();
        auto initiator = std::make_unique<threaded>(shm_config("initiator"));
        std::vector<std::byte> source(4096, std::byte{7});
        auto source_region = initiator->register_memory(source.data(), source.size());
        std::thread([&] {
            const ferry::peer p = initiator->load_remote(blob);
            const ferry::desc local{reinterpret_cast<std::uintptr_t>(source.data()), source.size(), 0};
            const ferry::desc remote{reinterpret_cast<std::uintptr_t>(sink.data()), sink.size(), 0};
            const ferry::xfer x = initiator->prepare(ferry::xfer_op::write, {&local, 1}, {&remote, 1}, p, path);
            if (initiator->path_of(x) != ferry_test::local_host_path(path)) std::_Exit(8);
            const ferry::status posted = initiator->post(x, "done");
            if (posted != ferry::status::in_progress && posted != ferry::status::ok) std::_Exit(3);
            if (initiator->wait(x, std::chrono::seconds(20)) != ferry::status::ok) std::_Exit(4);
            if (initiator->send_notif(p, "standalone") != ferry::status::ok) std::_Exit(5);
            static_cast<void>(initiator->estimate(x));
            initiator->unload_remote(p);
        }).join();
        std::size_t notifs = 0;
        for (int i = 0; i < 2000 && notifs < 2; ++i) {
            notifs += target.poll_notifs([](std::string_view, std::string_view) {});
            target.wait_notifs(std::chrono::milliseconds(10));
        }
        if (notifs != 2) std::_Exit(6);
        if (sink[4095] != std::byte{7}) std::_Exit(7);
        std::thread([&] { initiator.reset(); }).join();
    });
    INFO("child stderr: " << e.err << ", wait status " << e.wait_status);
    CHECK(exited_ok(e));
}
