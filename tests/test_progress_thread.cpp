// progress::thread: many application threads posting to two target
// processes, start/stop with transfers in flight, and an idle progress thread
// that stays off the CPU.
//
// Under the thread policy a post on host_ipc (prepare's automatic choice for
// host memory on one host) copies on the posting thread and hands only its
// notification to the progress thread; on UCX the progress thread does all
// of it. The many-threads and racing tests run on both paths; the tests of
// transfers in flight, and of the progress thread's own sleeping and waking,
// ask for UCX.
#include "support/ferry_catch.hpp"
#include "support/paths.hpp"
#include "support/pattern.hpp"
#include "support/two_process.hpp"

#include <ferry/ferry.hpp>

#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using threaded_backend = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::host>>;
using ferry::xfer_path;

namespace {

xfer_path path_under_test() { return GENERATE(xfer_path::ucx, xfer_path::automatic); }

constexpr std::size_t app_threads = 4;
constexpr std::size_t blocks_per_xfer = 4;
constexpr std::size_t block = 64;
constexpr std::size_t slot_size = blocks_per_xfer * block;
constexpr std::uint64_t read_seed_base = 1'000'000'000;

// Transfer k of thread t has the global index t * per_thread + k; it goes to
// target k % 2, and is a WRITE when (k / 2) is even, else a READ. Every index
// has its own slot in the target, so no transfer overwrites another's data.
struct plan {
    std::size_t per_thread;
    [[nodiscard]] std::size_t total() const { return app_threads * per_thread; }
    [[nodiscard]] static bool is_write(std::size_t k) { return (k / 2) % 2 == 0; }
};

// Block j of a transfer lands at block (blocks_per_xfer - 1 - j) of its slot,
// so the remote list is not simply the local one shifted.
std::size_t remote_block(std::size_t j) { return blocks_per_xfer - 1 - j; }

// A target: one region receives WRITEs, another holds patterns to be READ.
// It checks every WRITE's bytes when its notification arrives, and counts
// the READs' notifications, until everything addressed to it has come.
void serve_as_target(ferry_test::channel& ch, const std::string& name, const std::string& tls, int which,
                     const plan& p) {
    auto cfg = ferry_test::side{ch, tls}.config(name);
    threaded_backend b(cfg);
    std::vector<std::byte> written(p.total() * slot_size), readable(p.total() * slot_size);
    for (std::size_t i = 0; i < p.total(); ++i)
        ferry_test::fill_pattern(readable.data() + i * slot_size, slot_size, read_seed_base + i, 0);
    auto w = b.register_memory(written.data(), written.size());
    auto r = b.register_memory(readable.data(), readable.size());
    ch.send(b.local_metadata());
    std::vector<std::uint64_t> bases = {w.whole().addr, r.whole().addr};
    ch.send_u64s(bases);

    std::size_t expected = 0;
    for (std::size_t t = 0; t < app_threads; ++t)
        for (std::size_t k = 0; k < p.per_thread; ++k)
            if (static_cast<int>(k % 2) == which) ++expected;
    std::vector<std::uint8_t> seen(p.total(), 0);
    std::size_t got = 0;
    while (got < expected) {
        b.wait_notifs(1s);
        b.poll_notifs([&](std::string_view from, std::string_view msg) {
            ferry_test::expect(from == "initiator", "notification from '" + std::string(from) + "'");
            ferry_test::expect(msg.size() > 2 && (msg[0] == 'w' || msg[0] == 'r') && msg[1] == ' ',
                               "malformed notification '" + std::string(msg) + "'");
            const std::size_t index = std::stoull(std::string(msg.substr(2)));
            ferry_test::expect(index < p.total(), "index out of range in '" + std::string(msg) + "'");
            const std::size_t k = index % p.per_thread;
            ferry_test::expect(static_cast<int>(k % 2) == which, "notification for the other target: " + std::string(msg));
            ferry_test::expect((msg[0] == 'w') == plan::is_write(k), "wrong operation in '" + std::string(msg) + "'");
            ferry_test::expect(seen[index] == 0, "notification '" + std::string(msg) + "' arrived twice");
            seen[index] = 1;
            ++got;
            if (msg[0] == 'w') {
                for (std::size_t j = 0; j < blocks_per_xfer; ++j) {
                    auto bad = ferry_test::check_pattern(written.data() + index * slot_size + remote_block(j) * block,
                                                         block, index, j * block);
                    ferry_test::expect(bad.empty(), "WRITE " + std::to_string(index) + " not complete when its "
                                                    "notification arrived: " + bad);
                }
            }
        });
    }
    ch.send("ok " + std::to_string(got));
}

void run_many_threads(const std::string& tls, std::size_t per_thread, xfer_path path) {
    const plan p{per_thread};
    const xfer_path taken = ferry_test::local_host_path(path);

    auto initiator = [&](ferry_test::side& s) {
        auto cfg = s.config("initiator");
        threaded_backend b(cfg);
        ferry::peer targets[2];
        std::uint64_t write_base[2], read_base[2];
        for (int i = 0; i < 2; ++i) {
            targets[i] = b.load_remote(s.ch.recv_bytes());
            auto bases = s.ch.recv_u64s();
            write_base[i] = bases.at(0);
            read_base[i] = bases.at(1);
        }
        std::atomic<std::size_t> failures{0};
        std::vector<std::string> first_failure(app_threads);
        auto work = [&](std::size_t t) {
            std::vector<std::byte> buffer(slot_size);
            auto local = b.register_memory(buffer.data(), buffer.size());
            for (std::size_t k = 0; k < p.per_thread; ++k) {
                const std::size_t index = t * p.per_thread + k;
                const int to = static_cast<int>(k % 2);
                const bool write = plan::is_write(k);
                const std::uint64_t base = (write ? write_base[to] : read_base[to]) + index * slot_size;
                std::vector<ferry::desc> l, r;
                for (std::size_t j = 0; j < blocks_per_xfer; ++j) {
                    l.push_back(local.slice(j * block, block));
                    r.push_back({base + remote_block(j) * block, block, 0});
                }
                if (write) ferry_test::fill_pattern(buffer.data(), slot_size, index, 0);
                auto x = b.prepare(write ? ferry::xfer_op::write : ferry::xfer_op::read, l, r, targets[to], path);
                auto st = b.post(x, (write ? "w " : "r ") + std::to_string(index));
                if (st == ferry::status::in_progress) st = b.wait(x, 30s);
                std::string bad;
                if (b.path_of(x) != taken) {
                    bad = "transfer " + std::to_string(index) + " took path " + ferry_test::str(b.path_of(x)) +
                          ", expected " + ferry_test::str(taken);
                } else if (st != ferry::status::ok) {
                    bad = "transfer " + std::to_string(index) + " ended " + ferry_test::str(st);
                } else if (!write) {
                    for (std::size_t j = 0; j < blocks_per_xfer && bad.empty(); ++j)
                        bad = ferry_test::check_pattern(buffer.data() + j * block, block, read_seed_base + index,
                                                        remote_block(j) * block);
                }
                b.release(x);
                if (!bad.empty()) {
                    if (failures++ == 0) first_failure[t] = bad;
                    return;
                }
            }
        };
        std::vector<std::thread> pool;
        for (std::size_t t = 0; t < app_threads; ++t) pool.emplace_back(work, t);
        for (auto& th : pool) th.join();
        for (auto& f : first_failure) ferry_test::expect(f.empty(), f);
        ferry_test::expect(failures == 0, std::to_string(failures.load()) + " threads failed");
        s.ch.expect_message("both targets ok");
    };

    // Target A forks target B before either touches UCX, relays B's blob to
    // the initiator, and reports for both.
    auto target = [&](ferry_test::side& s) {
        int sv[2];
        ferry_test::expect(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
        pid_t pid = ::fork();
        ferry_test::expect(pid >= 0, "fork");
        if (pid == 0) {
            // B must not outlive A: the harness waits for their shared output pipe.
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            ::close(sv[0]);
            ferry_test::channel to_a(sv[1]);
            serve_as_target(to_a, "target-b", s.tls, 1, p);
            ::_exit(0);
        }
        ::close(sv[1]);
        ferry_test::channel to_b(sv[0]);
        // A's own blob first, then B's, as the initiator expects.
        int relay[2];
        ferry_test::expect(::socketpair(AF_UNIX, SOCK_STREAM, 0, relay) == 0, "socketpair");
        std::thread forward([&] {
            ferry_test::channel mine(relay[1]);
            auto blob = mine.recv_bytes();
            auto bases = mine.recv_u64s();
            s.ch.send(blob);
            s.ch.send_u64s(bases);
            blob = to_b.recv_bytes();
            bases = to_b.recv_u64s();
            s.ch.send(blob);
            s.ch.send_u64s(bases);
        });
        ferry_test::channel a_side(relay[0]);
        std::thread serve([&] { serve_as_target(a_side, "target-a", s.tls, 0, p); });
        forward.join();
        serve.join();
        ferry_test::channel mine(relay[1]);
        auto a_report = mine.recv();
        auto b_report = to_b.recv();
        int wstatus = 0;
        ::waitpid(pid, &wstatus, 0);
        ferry_test::expect(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0, "target-b failed");
        ferry_test::expect(a_report.rfind("ok ", 0) == 0 && b_report.rfind("ok ", 0) == 0,
                           "reports: " + a_report + ", " + b_report);
        s.ch.send("both targets ok");
    };
    ferry_test::run_two_process(tls, initiator, target, std::chrono::seconds(240));
}

// CPU time of every thread of this process but the calling one.
std::chrono::microseconds other_threads_cpu() {
    auto us = [](const rusage& r) {
        return std::chrono::seconds(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
               std::chrono::microseconds(r.ru_utime.tv_usec + r.ru_stime.tv_usec);
    };
    rusage all{}, self{};
    ::getrusage(RUSAGE_SELF, &all);
    ::getrusage(RUSAGE_THREAD, &self);
    return std::chrono::duration_cast<std::chrono::microseconds>(us(all) - us(self));
}

// One backend that transfers between two of its own buffers, on `path`:
// enough for what needs no second process.
struct loopback {
    loopback(const std::string& name, std::size_t bytes, xfer_path path)
        : b([&] {
              ferry::ucx_config cfg;
              cfg.name = name;
              cfg.ucx_options = {{"TLS", "shm,self"}};
              return cfg;
          }()),
          src(bytes),
          dst(bytes),
          s(b.register_memory(src.data(), src.size())),
          d(b.register_memory(dst.data(), dst.size())) {
        const ferry::desc l[] = {s.whole()};
        const ferry::desc r[] = {d.whole()};
        x = b.prepare(ferry::xfer_op::write, l, r, b.load_remote(b.local_metadata()), path);
    }

    threaded_backend b;
    std::vector<std::byte> src, dst;
    ferry::region s, d;
    ferry::xfer x;
};

}  // namespace

TEST_CASE("four threads post 100 000 transfers to two targets over shm, every byte and notification checked") {
    const xfer_path path = path_under_test();
    CAPTURE(path);
    run_many_threads("shm", 25'000, path);
}

TEST_CASE("four threads post transfers to two targets over tcp, every byte and notification checked") {
    const xfer_path path = path_under_test();
    CAPTURE(path);
    run_many_threads("tcp", 2'500, path);
}

TEST_CASE("a backend with transfers in flight starts and stops 100 times (25 under the sanitizers)") {
    // Every round is a fresh pair of processes. A long-lived target would
    // test UCX 1.13 instead of ferry: its sysv transport stalls once a few
    // contexts have come and gone in one peer process. Over tcp, a peer that
    // vanishes with operations in flight crashes UCX 1.13 on the other side
    // unless both use peer error handling, which is ferry's default. Under a
    // sanitizer a round takes several times as long, and 25 rounds still
    // start and stop the progress thread with transfers in flight in every
    // order this test can produce.
    const std::string tls = GENERATE(std::string("shm"), std::string("tcp"));
    constexpr std::size_t blocks = 16, block_size = 64 * 1024;
    constexpr int rounds = ferry_test::sanitized ? 25 : 100;
    for (int round = 0; round < rounds; ++round) {
        const bool last = round == rounds - 1;
        auto initiator = [&](ferry_test::side& s) {
            std::vector<std::byte> buffer(blocks * block_size);
            ferry_test::fill_pattern(buffer.data(), buffer.size(), static_cast<std::uint64_t>(round), 0);
            {
                auto cfg = s.config("initiator");
                cfg.close_timeout = 500ms;
                threaded_backend b(cfg);
                auto local = b.register_memory(buffer.data(), buffer.size());
                auto p = b.load_remote(s.ch.recv_bytes());
                const std::uint64_t remote = s.ch.recv_u64s().at(0);
                std::vector<ferry::desc> l, r;
                for (std::size_t i = 0; i < blocks; ++i) {
                    l.push_back(local.slice(i * block_size, block_size));
                    r.push_back({remote + (blocks - 1 - i) * block_size, block_size, 0});
                }
                // Over UCX: on host_ipc the data would have moved inside post.
                auto x = b.prepare(ferry::xfer_op::write, l, r, p, xfer_path::ucx);
                auto st = b.post(x, "round " + std::to_string(round));
                ferry_test::expect(st == ferry::status::ok || st == ferry::status::in_progress,
                                   "post: " + ferry_test::str(st));
                if (last) {
                    if (st == ferry::status::in_progress) st = b.wait(x, 30s);
                    ferry_test::expect_status(st, ferry::status::ok, "last round's transfer");
                } else if (round % 2 == 1) {
                    ferry_test::expect_status(b.release(x), ferry::status::ok, "release in flight");
                }
                // The backend is destroyed here, with the transfer most likely still in flight.
            }
            s.ch.send("stopped");
            s.ch.expect_message("target ok");
        };
        auto target = [&](ferry_test::side& s) {
            auto cfg = s.config("target");
            threaded_backend b(cfg);
            std::vector<std::byte> memory(blocks * block_size);
            auto region = b.register_memory(memory.data(), memory.size());
            s.ch.send(b.local_metadata());
            std::vector<std::uint64_t> base = {region.whole().addr};
            s.ch.send_u64s(base);
            s.ch.expect_message("stopped");
            if (last) {
                bool seen = false;
                const std::string expected = "round " + std::to_string(round);
                while (!seen && b.wait_notifs(10s))
                    b.poll_notifs([&](std::string_view, std::string_view msg) { seen = msg == expected; });
                ferry_test::expect(seen, "the last round's notification did not arrive");
                for (std::size_t i = 0; i < blocks; ++i) {
                    auto bad = ferry_test::check_pattern(memory.data() + (blocks - 1 - i) * block_size, block_size,
                                                         static_cast<std::uint64_t>(round),
                                                         i * block_size);
                    ferry_test::expect(bad.empty(), "block " + std::to_string(i) + ": " + bad);
                }
            }
            s.ch.send("target ok");
        };
        INFO("round " << round);
        ferry_test::run_two_process(tls, initiator, target, std::chrono::seconds(30));
    }
}

TEST_CASE("an idle progress thread stays off the CPU") {
    // Over UCX, so that every post wakes the progress thread: on host_ipc a
    // post without a notification never reaches it.
    loopback lb("idle", 4096, xfer_path::ucx);
    auto& [b, src, dst, s, d, x] = lb;
    ferry_test::fill_pattern(src.data(), src.size(), 7, 0);
    auto st = b.post(x, "warm-up");
    if (st == ferry::status::in_progress) st = b.wait(x, 10s);
    REQUIRE(st == ferry::status::ok);
    REQUIRE(ferry_test::check_pattern(dst.data(), dst.size(), 7, 0).empty());
    REQUIRE(b.wait_notifs(10s));
    REQUIRE(b.take_notifs().at("idle") == std::vector<std::string>{"warm-up"});

    std::this_thread::sleep_for(200ms);  // past the spin window: the thread is asleep now
    const auto before = other_threads_cpu();
    std::this_thread::sleep_for(1s);
    const auto used = other_threads_cpu() - before;
    INFO("CPU time of the other threads over one idle second: " << used.count() << " us");
    CHECK(used < 5ms);

    // And it wakes at once for new work.
    ferry_test::fill_pattern(src.data(), src.size(), 8, 0);
    st = b.post(x);
    if (st == ferry::status::in_progress) st = b.wait(x, 10s);
    REQUIRE(st == ferry::status::ok);
    REQUIRE(ferry_test::check_pattern(dst.data(), dst.size(), 8, 0).empty());
}

TEST_CASE("threads racing to post one transfer: one wins, the others are told busy") {
    const xfer_path path = path_under_test();
    CAPTURE(path);
    loopback lb("race", 1 << 20, path);
    REQUIRE(lb.b.path_of(lb.x) == ferry_test::local_host_path(path));
    auto& b = lb.b;
    const ferry::xfer x = lb.x;

    std::atomic<int> accepted{0}, busy{0}, other{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    for (int t = 0; t < 4; ++t)
        pool.emplace_back([&] {
            while (!go.load()) std::this_thread::yield();
            for (int i = 0; i < 2000; ++i) {
                auto st = b.post(x);
                if (st == ferry::status::busy) {
                    ++busy;
                } else if (st == ferry::status::ok || st == ferry::status::in_progress) {
                    ++accepted;
                    b.wait(x, 10s);
                } else {
                    ++other;
                }
            }
        });
    go = true;
    for (auto& th : pool) th.join();
    INFO("accepted " << accepted << ", busy " << busy);
    CHECK(other == 0);
    CHECK(accepted + busy == 8000);
    CHECK(accepted > 0);
    CHECK(b.wait(x, 10s) == ferry::status::ok);
}
