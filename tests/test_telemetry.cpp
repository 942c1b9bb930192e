// Telemetry (policy<..., ..., telemetry::on>): after known traffic between two
// processes the counters, bytes and histograms are exact, over shm and tcp and
// under both progress policies; errors are counted by kind (a deadline, a
// killed peer, a refused post); histograms are cumulative and complete; and a
// reader taking snapshots while four threads post sees every counter and
// bucket only grow.

#include <ferry/detail/tick_clock.hpp>
#include <ferry/ferry.hpp>

#include <catch2/catch.hpp>
#include <unistd.h>

#include "support/two_process.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

using ferry::status;
using ferry::xfer_op;
using ferry::xfer_path;
using ferry_test::channel;
using ferry_test::expect;
using ferry_test::expect_status;
using ferry_test::side;
using namespace std::chrono_literals;

namespace {

using traced_inline = ferry::ucx_backend<ferry::policy<ferry::progress::inline_poll, ferry::memory::host, ferry::telemetry::on>>;
using traced_thread = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::host, ferry::telemetry::on>>;
using plain_inline = ferry::ucx_backend<>;

static_assert(ferry::xfer_backend<traced_inline> && ferry::notif_channel<traced_thread>);
static_assert(ferry::is_policy<ferry::policy<ferry::progress::thread, ferry::memory::host, ferry::telemetry::on>>::value);
static_assert(!ferry::has_telemetry_v<ferry::default_policy>);
// Off is free in space too: the empty store takes no room in the backend.
static_assert(sizeof(ferry::ucx_backend<ferry::policy<ferry::progress::inline_poll, ferry::memory::host,
                                                      ferry::telemetry::off>>) == sizeof(plain_inline));

constexpr std::size_t region_len = 1 << 20;

// The target: user memory (emulated transfers, so it must progress), its
// metadata out, the initiator's in; then progresses until told what to do:
// "hold" stops progressing until "go"; "die" exits at once; "bye" ends.
void target(side& s) {
    plain_inline b(s.config("target"));
    std::vector<std::byte> mem(region_len);
    auto r = b.register_memory(mem.data(), mem.size());
    s.ch.send(b.local_metadata());
    auto blob = s.ch.recv();
    b.load_remote(std::as_bytes(std::span(blob.data(), blob.size())));
    s.ch.send(std::to_string(reinterpret_cast<std::uintptr_t>(mem.data())));
    for (;;) {
        ferry_test::progress_until_message(b, s.ch);
        const auto cmd = s.ch.recv();
        if (cmd == "bye") break;
        if (cmd == "die") ::_exit(0);
        if (cmd == "hold") {
            s.ch.send("held");
            s.ch.expect_message("go");
        }
    }
    static_cast<void>(b.take_notifs());
}

template <class Backend>
struct initiator_setup {
    Backend b;
    std::vector<std::byte> mem;
    ferry::region r;
    ferry::peer p;
    std::uint64_t remote = 0;

    explicit initiator_setup(side& s) : b(s.config("initiator")), mem(region_len), r(b.register_memory(mem.data(), mem.size())) {
        auto blob = s.ch.recv();
        p = b.load_remote(std::as_bytes(std::span(blob.data(), blob.size())));
        s.ch.send(b.local_metadata());
        remote = std::stoull(s.ch.recv());
    }

    // n descriptors of `len` bytes, every other block, so that nothing coalesces
    // when `gap`, else one run that coalesces into one block.
    ferry::xfer prepare(std::size_t n, std::size_t len, bool gap, std::size_t offset = 0) {
        std::vector<ferry::desc> l, rm;
        const std::size_t step = gap ? 2 * len : len;
        for (std::size_t i = 0; i < n; ++i) {
            l.push_back({reinterpret_cast<std::uint64_t>(mem.data()) + offset + i * step, len, 0});
            rm.push_back({remote + offset + i * step, len, 0});
        }
        return b.prepare(xfer_op::write, l, rm, p, ferry::xfer_options{.path = xfer_path::ucx});
    }
};

void expect_consistent(const ferry::latency_histogram& h, const std::string& what) {
    for (std::size_t i = 1; i < h.cumulative.size(); ++i)
        expect(h.cumulative[i] >= h.cumulative[i - 1], what + ": cumulative buckets decrease at " + std::to_string(i));
    expect(h.cumulative.back() == h.count, what + ": count is not the last cumulative bucket");
}

template <class Backend>
void counts_initiator(side& s) {
    initiator_setup<Backend> in(s);
    auto& b = in.b;
    constexpr int posts = 25;
    auto x = in.prepare(8, 512, true);             // 8 blocks, 4 KiB
    auto y = in.prepare(16, 256, false, 64 << 10);  // coalesces into one block of 4 KiB
    expect(b.blocks_of(y) == 1, "y coalesces");
    for (int i = 0; i < posts; ++i) ferry_test::post_and_wait(b, x, {}, "x");
    for (int i = 0; i < posts; ++i) ferry_test::post_and_wait(b, y, i == 0 ? "first" : "", "y");
    expect_status(b.send_notif(in.p, "hello"), status::ok, "send_notif");
    // Refused before anything starts: counted as an error, not as a post.
    expect_status(b.post(x, std::string(b.config().max_notif_size + 1, 'n')), status::invalid_argument,
                  "oversized notification");
    // A post of y that nobody checks: the next post records its end first.
    {
        const auto s1 = b.post(y);
        expect(s1 == status::ok || s1 == status::in_progress, "unchecked post of y");
        const auto until = std::chrono::steady_clock::now() + 50ms;
        while (std::chrono::steady_clock::now() < until) b.progress();
        status s2;
        ferry_test::patience p;
        while ((s2 = b.post(y)) == status::busy) {
            p.check("the unchecked post of y to end");
            b.progress();
        }
        expect(s2 == status::ok || s2 == status::in_progress, "post of y after an unchecked one");
        expect_status(ferry_test::wait_for(b, y), status::ok, "y after an unchecked one");
    }

    const auto snap = b.snapshot();
    expect(snap.agent == "initiator", "agent name");
    expect(snap.peers.size() == 1 && snap.peers[0].name == "target", "one peer, named target");
    const auto& c = snap.peers[0].counters;
    const std::uint64_t total_posts = 2 * posts + 2;
    expect(c.posts == total_posts, "posts: " + std::to_string(c.posts));
    expect(c.completions == total_posts, "completions: " + std::to_string(c.completions));
    expect(c.failures == 0, "failures");
    expect(c.bytes == total_posts * 4096, "bytes: " + std::to_string(c.bytes));
    expect(c.errors_of(status::invalid_argument) == 1, "invalid_argument counted once");
    expect(c.notifs_sent == 2, "notifs_sent: " + std::to_string(c.notifs_sent));
    const auto& h = snap.peers[0].latency[ferry::telemetry_path_index(xfer_path::ucx)];
    expect_consistent(h, "ucx histogram");
    expect(h.count == c.completions, "histogram count == completions");
    expect(h.sum_ns > 0, "latency sum");
    expect(snap.latency[0].count == h.count && snap.totals.posts == c.posts, "totals are the sum over peers");
    expect(snap.peers[0].latency[1].count == 0 && snap.peers[0].latency[2].count == 0, "no other path");

    const auto t = b.telemetry_of(x);
    expect(t.has_value() && t->posted_once, "telemetry_of(x)");
    expect(t->bytes == 4096 && t->descriptors == 8 && t->blocks == 8 && t->path == xfer_path::ucx, "x's shape");
    expect(t->peer_name == "target" && t->target == in.p && t->result == status::ok, "x's peer and result");
    expect(t->posted <= t->handed && t->handed <= t->completed, "x's times in order");
    const auto ty = b.telemetry_of(y);
    expect(ty->descriptors == 16 && ty->blocks == 1, "y: 16 descriptors, 1 block");
    expect(!b.telemetry_of(ferry::xfer{}).has_value(), "unknown handle");

    const std::string text = ferry::to_prometheus(snap);
    expect(text.find("ferry_posts_total{agent=\"initiator\",peer=\"target\"} " + std::to_string(total_posts) + "\n") !=
               std::string::npos,
           "prometheus posts: " + text.substr(0, 400));
    expect(text.find("ferry_xfer_latency_seconds_count{agent=\"initiator\",peer=\"target\",path=\"ucx\"} " +
                     std::to_string(total_posts) + "\n") != std::string::npos,
           "prometheus histogram count");
    expect(text.find("ferry_xfer_latency_seconds_bucket{agent=\"initiator\",peer=\"target\",path=\"ucx\",le=\"+Inf\"} ") !=
               std::string::npos,
           "prometheus +Inf bucket");
    expect(b.release(x) == status::ok && b.release(y) == status::ok, "release");
    s.ch.send("bye");
}

template <class Backend>
void deadline_initiator(side& s) {
    initiator_setup<Backend> in(s);
    auto& b = in.b;
    auto x = in.prepare(1, 64 << 10, false);
    ferry_test::post_and_wait(b, x, {}, "warm-up");
    s.ch.send("hold");
    s.ch.expect_message("held");
    expect_status(b.post(x, {}, 100ms), status::in_progress, "post with a deadline");
    status st;
    while ((st = b.check(x)) == status::in_progress) std::this_thread::yield();
    expect_status(st, status::timed_out, "past the deadline");
    expect_status(b.post(x), status::busy, "repost while UCX holds it");
    auto c = b.snapshot().peers.at(0).counters;
    expect(c.posts == 2 && c.completions == 1 && c.failures == 1, "one completion, one failure");
    expect(c.timed_out == 1 && c.errors_of(status::timed_out) == 1, "timed_out counted once");
    expect(c.errors_of(status::busy) == 1, "busy counted");
    expect(b.telemetry_of(x)->result == status::timed_out, "telemetry_of: timed_out");
    s.ch.send("go");
    ferry_test::patience p;
    while ((st = b.post(x)) == status::busy) {
        p.check("UCX to let go of the expired WRITE");
        b.progress();
    }
    expect_status(ferry_test::wait_for(b, x), status::ok, "repost");
    c = b.snapshot().peers.at(0).counters;
    expect(c.completions == 2 && c.failures == 1, "the repost completed");
    s.ch.send("bye");
}

template <class Backend>
void killed_initiator(side& s) {
    initiator_setup<Backend> in(s);
    auto& b = in.b;
    auto x = in.prepare(4, 4096, true);
    ferry_test::post_and_wait(b, x, {}, "warm-up");
    s.ch.send("die");
    s.ch.expect_closed();
    ferry_test::patience p(30s);
    status st = status::ok;
    while (st != status::peer_failed) {
        p.check("a post to the dead peer to fail");
        st = b.post(x, {}, 2s);
        if (st == status::in_progress) st = ferry_test::wait_for(b, x);
    }
    const auto c = b.snapshot().peers.at(0).counters;
    expect(c.peer_failures == 1, "peer_failures: " + std::to_string(c.peer_failures));
    expect(c.errors_of(status::peer_failed) >= 1, "peer_failed counted");
    expect(b.peer_status(in.p) == status::peer_failed, "the peer is failed");
}

}  // namespace

TEST_CASE("telemetry counts posts, bytes, notifications and latency exactly (inline progress)") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    ferry_test::run_two_process(tls, counts_initiator<traced_inline>, target);
}

TEST_CASE("telemetry counts posts, bytes, notifications and latency exactly (progress thread)") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    ferry_test::run_two_process(tls, counts_initiator<traced_thread>, target);
}

TEST_CASE("telemetry counts a deadline as timed_out and a refused repost as busy") {
    ferry_test::run_two_process("shm", deadline_initiator<traced_inline>, target);
    ferry_test::run_two_process("shm", deadline_initiator<traced_thread>, target);
}

TEST_CASE("telemetry counts a killed peer once as a peer failure") {
    ferry_test::run_two_process("tcp", killed_initiator<traced_inline>, target);
    ferry_test::run_two_process("tcp", killed_initiator<traced_thread>, target);
}

TEST_CASE("snapshots taken while four threads post only grow, and end exact") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    auto initiator = [](side& s) {
        initiator_setup<traced_thread> in(s);
        auto& b = in.b;
        constexpr int threads = 4;
        constexpr int posts = 200;
        std::vector<ferry::xfer> xs;
        for (int t = 0; t < threads; ++t) xs.push_back(in.prepare(4, 1024, true, std::size_t(t) * 16384));
        std::atomic<bool> done{false};
        std::atomic<int> bad{0};
        std::string why;
        std::thread reader([&] {
            ferry::telemetry_snapshot last;
            last.peers.resize(1);
            while (!done.load()) {
                const auto snap = b.snapshot();
                const auto& c = snap.peers.at(0).counters;
                const auto& h = snap.peers[0].latency[0];
                const auto& lc = last.peers[0].counters;
                const auto& lh = last.peers[0].latency[0];
                bool ok = c.posts >= lc.posts && c.completions >= lc.completions && c.bytes >= lc.bytes &&
                          h.count >= lh.count && h.cumulative.back() == h.count && c.posts >= c.completions;
                for (std::size_t i = 0; i < h.cumulative.size(); ++i) {
                    ok = ok && h.cumulative[i] >= lh.cumulative[i];
                    if (i > 0) ok = ok && h.cumulative[i] >= h.cumulative[i - 1];
                }
                if (!ok && bad.fetch_add(1) == 0) why = ferry::to_prometheus(snap);
                static_cast<void>(ferry::to_prometheus(snap));
                last = snap;
            }
        });
        std::vector<std::thread> posters;
        for (int t = 0; t < threads; ++t)
            posters.emplace_back([&, t] {
                for (int i = 0; i < posts; ++i) {
                    auto st = b.post(xs[std::size_t(t)]);
                    if (st == status::in_progress) st = b.wait(xs[std::size_t(t)], 10s);
                    if (st != status::ok) bad.fetch_add(1);
                }
            });
        for (auto& t : posters) t.join();
        done.store(true);
        reader.join();
        expect(bad.load() == 0, "a snapshot went backwards or a post failed: " + why);
        const auto snap = b.snapshot();
        const auto& c = snap.peers.at(0).counters;
        expect(c.posts == threads * posts && c.completions == threads * posts, "posts and completions exact");
        expect(c.bytes == std::uint64_t(threads) * posts * 4096, "bytes exact");
        expect(snap.peers[0].latency[0].count == threads * posts, "histogram complete");
        s.ch.send("bye");
    };
    ferry_test::run_two_process(tls, initiator, target);
}

TEST_CASE("the telemetry clock measures what steady_clock measures, and turns its ticks into steady_clock times") {
    const auto& clock = ferry::detail::tick_clock::get();
    INFO("ticks are " << (clock.uses_tsc() ? "the time-stamp counter's" : "steady_clock nanoseconds"));
    const auto s0 = std::chrono::steady_clock::now();
    const std::int64_t t0 = clock.now();
    std::this_thread::sleep_for(50ms);
    const std::int64_t t1 = clock.now();
    const auto s1 = std::chrono::steady_clock::now();
    const auto steady = std::chrono::duration_cast<std::chrono::nanoseconds>(s1 - s0).count();
    const std::int64_t ticked = clock.to_ns(t1 - t0);
    // The tick interval lies inside the steady one; the rate's error is a
    // few parts in 10^5, far below the 1 % allowed here.
    CHECK(ticked <= steady + steady / 100);
    CHECK(ticked >= 50'000'000 - 50'000'000 / 100);

    const auto anchor = clock.read_both();
    const auto p0 = clock.to_steady(t0, anchor);
    const auto p1 = clock.to_steady(t1, anchor);
    CHECK(p0 <= p1);
    CHECK(std::chrono::abs(p0 - s0) < 1ms);
    CHECK(std::chrono::abs(p1 - s1) < 1ms);
}
