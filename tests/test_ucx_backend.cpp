// The UCX backend between two real processes, over shared memory and over
// TCP: READ and WRITE of descriptor lists, reposting, busy and abandoned
// transfers, peers that change, and notifications (count, content, sender,
// and ordering after the data they follow).
//
// Every byte that moves is checked on the side that received it, against a
// pattern that depends on the round and the offset, and the bytes around
// the blocks are checked to be untouched.
//
// Between two processes of one host prepare's automatic choice for host
// memory is host_ipc, which copies inside post. Tests of delivered bytes run
// on it and on UCX RMA; tests of transfers in flight, and of peers that stall
// or die, are about UCX and ask for it (support/paths.hpp).

#include <ferry/ferry.hpp>

#include <catch2/catch.hpp>
#include <ucp/api/ucp.h>

#include "support/blocks.hpp"
#include "support/ferry_catch.hpp"
#include "support/paths.hpp"
#include "support/pattern.hpp"
#include "support/two_process.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using ferry::status;
using ferry::xfer_op;
using ferry::xfer_path;
using ferry_test::expect;
using ferry_test::expect_status;
using ferry_test::fail;
using ferry_test::side;

namespace {

using backend = ferry::ucx_backend<>;

using ferry_test::blocks;
using ferry_test::fill_blocks;
using ferry_test::packed;
using ferry_test::scattered;
using ferry_test::untouched;
using ferry_test::verify_blocks;

std::string tls_under_test() { return GENERATE(as<std::string>{}, "shm", "tcp"); }

// What a delivery test asks prepare for: UCX RMA, and the automatic choice.
xfer_path path_under_test() { return GENERATE(xfer_path::ucx, xfer_path::automatic); }

enum class mem { user, alloc };

std::string name_of(mem m) { return m == mem::user ? "register_memory" : "allocate"; }

// One user-registered and one allocated region of the same size.
struct memory_pair {
    memory_pair(backend& b, std::size_t bytes)
        : user_mem(bytes), user(b.register_memory(user_mem.data(), bytes)), alloc(b.allocate(bytes)) {
        std::memset(user_mem.data(), static_cast<int>(untouched), bytes);
        std::memset(alloc.data(), static_cast<int>(untouched), bytes);
    }

    [[nodiscard]] ferry::region& of(mem m) { return m == mem::user ? user : alloc; }
    [[nodiscard]] std::byte* bytes(mem m) { return static_cast<std::byte*>(of(m).data()); }

    std::vector<std::byte> user_mem;
    ferry::region user;
    ferry::region alloc;
};

// What the initiator knows about the target: its peer handle and where its
// two regions start in its address space.
struct remote_pair {
    ferry::peer p;
    std::uint64_t user = 0;
    std::uint64_t alloc = 0;
    [[nodiscard]] std::uint64_t of(mem m) const { return m == mem::user ? user : alloc; }
};

void publish(backend& b, memory_pair& m, ferry_test::channel& ch) {
    ch.send(b.local_metadata());
    const std::array<std::uint64_t, 2> addrs{reinterpret_cast<std::uintptr_t>(m.user.data()),
                                             reinterpret_cast<std::uintptr_t>(m.alloc.data())};
    ch.send_u64s(addrs);
}

remote_pair load_target(backend& b, ferry_test::channel& ch) {
    const auto blob = ch.recv_bytes();
    remote_pair r;
    r.p = b.load_remote(blob);
    const auto addrs = ch.recv_u64s();
    expect(addrs.size() == 2, "the target sent " + std::to_string(addrs.size()) + " addresses, expected 2");
    r.user = addrs[0];
    r.alloc = addrs[1];
    return r;
}

// The last thing a target does: serve until the initiator, whose backend is
// gone by then (closing its endpoints may need the target), says bye.
void serve_until_bye(backend& b, ferry_test::channel& ch) {
    ferry_test::progress_until_message(b, ch);
    ch.expect_message("bye");
}

// Drains notifications into `into` until `pred` holds.
template <class Pred>
void collect_notifs_until(backend& b, std::vector<std::pair<std::string, std::string>>& into, Pred pred,
                          const std::string& waiting_for) {
    ferry_test::patience patience;
    while (!pred()) {
        b.poll_notifs([&](std::string_view from, std::string_view msg) { into.emplace_back(from, msg); });
        patience.check(waiting_for);
    }
}

bool has_notif(const std::vector<std::pair<std::string, std::string>>& got, std::string_view from,
               std::string_view msg) {
    return std::any_of(got.begin(), got.end(), [&](const auto& n) { return n.first == from && n.second == msg; });
}

// ---- descriptor-list transfers ----------------------------------------------

struct layout {
    std::size_t count;
    std::size_t len;
};

// From one byte to 4 MiB, one block to 1024, sizes that are odd or one past
// a page.
constexpr layout layouts[] = {{1, 1}, {1, 3}, {1024, 3}, {16, 4097}, {16, 64 * 1024}, {1024, 4096}, {1, 4 << 20}};

constexpr std::size_t region_bytes = 4608 * 1024;

struct xfer_case {
    std::size_t index;
    layout shape;
    mem local;
    mem remote;
    blocks local_blocks;
    blocks remote_blocks;

    [[nodiscard]] std::string describe(xfer_op op) const {
        return std::string(ferry::to_string(op)) + " case " + std::to_string(index) + ": " +
               std::to_string(shape.count) + " x " + std::to_string(shape.len) + " B, local " + name_of(local) +
               ", remote " + name_of(remote);
    }
};

std::vector<xfer_case> all_cases() {
    std::vector<xfer_case> out;
    for (const layout& l : layouts)
        for (mem local : {mem::user, mem::alloc})
            for (mem remote : {mem::user, mem::alloc}) {
                xfer_case c{out.size(), l, local, remote, packed(l.count, l.len), scattered(l.count, l.len, 11, 61)};
                expect(c.local_blocks.end() <= region_bytes && c.remote_blocks.end() <= region_bytes,
                       "a layout does not fit the test regions");
                out.push_back(std::move(c));
            }
    return out;
}

void run_write_cases(const std::string& tls, xfer_path path) {
    auto initiator = [path](side& s) {
        {
            backend b(s.config("initiator"));
            memory_pair m(b, region_bytes);
            const remote_pair t = load_target(b, s.ch);
            for (const xfer_case& c : all_cases()) {
                const std::string what = c.describe(xfer_op::write);
                s.ch.expect_message("ready " + std::to_string(c.index));
                fill_blocks(m.bytes(c.local), c.local_blocks, c.remote_blocks, 1000 + c.index);
                const auto local = c.local_blocks.descs(reinterpret_cast<std::uintptr_t>(m.of(c.local).data()));
                const auto remote = c.remote_blocks.descs(t.of(c.remote));
                const ferry::xfer x = b.prepare(xfer_op::write, local, remote, t.p, path);
                const xfer_path taken = ferry_test::local_host_path(path);
                ferry_test::expect_path(b, x, taken, what);
                expect(b.size_of(x) == c.shape.count * c.shape.len, what + ": size_of is wrong");
                const ferry::xfer_cost cost = b.estimate(x);
                expect(cost.method == ferry_test::cost_method_of(taken) && cost.duration.count() >= 0 &&
                           cost.margin == cost.duration / 2,
                       what + ": estimate came from " + std::string(ferry::to_string(cost.method)) +
                           ", not from the model of path " + ferry_test::str(taken));
                ferry_test::post_and_wait(b, x, {}, what);
                expect_status(b.release(x), status::ok, what + ": release");
                s.ch.send("written " + std::to_string(c.index));
                s.ch.expect_message("verified " + std::to_string(c.index));
            }
        }
        s.ch.send("bye");
    };
    auto target = [](side& s) {
        backend b(s.config("target"));
        memory_pair m(b, region_bytes);
        publish(b, m, s.ch);
        for (const xfer_case& c : all_cases()) {
            std::memset(m.bytes(c.remote), static_cast<int>(untouched), region_bytes);
            s.ch.send("ready " + std::to_string(c.index));
            // Emulated puts land only while the target progresses.
            ferry_test::progress_until_message(b, s.ch);
            s.ch.expect_message("written " + std::to_string(c.index));
            // check() == ok at the initiator means the data is visible here.
            if (auto e =
                    verify_blocks(m.bytes(c.remote), c.remote_blocks, c.remote_blocks, 1000 + c.index, region_bytes);
                !e.empty())
                fail(c.describe(xfer_op::write) + ": " + e);
            s.ch.send("verified " + std::to_string(c.index));
        }
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

void run_read_cases(const std::string& tls, xfer_path path) {
    auto initiator = [path](side& s) {
        {
            backend b(s.config("initiator"));
            memory_pair m(b, region_bytes);
            const remote_pair t = load_target(b, s.ch);
            for (const xfer_case& c : all_cases()) {
                const std::string what = c.describe(xfer_op::read);
                const std::string k = std::to_string(c.index);
                std::memset(m.bytes(c.local), static_cast<int>(untouched), region_bytes);
                s.ch.expect_message("ready " + k);
                const auto local = c.local_blocks.descs(reinterpret_cast<std::uintptr_t>(m.of(c.local).data()));
                const auto remote = c.remote_blocks.descs(t.of(c.remote));
                const ferry::xfer x = b.prepare(xfer_op::read, local, remote, t.p, path);
                const xfer_path taken = ferry_test::local_host_path(path);
                ferry_test::expect_path(b, x, taken, what);
                expect(b.estimate(x).method == ferry_test::cost_method_of(taken),
                       what + ": estimate did not come from the model of path " + ferry_test::str(taken));
                ferry_test::post_and_wait(b, x, "read " + k, what);
                // check() == ok for a READ means the data is here.
                if (auto e =
                        verify_blocks(m.bytes(c.local), c.local_blocks, c.remote_blocks, 2000 + c.index, region_bytes);
                    !e.empty())
                    fail(what + ": " + e);
                expect_status(b.release(x), status::ok, what + ": release");
                s.ch.send("read " + k);
                s.ch.expect_message("notified " + k);
            }
        }
        s.ch.send("bye");
    };
    auto target = [](side& s) {
        backend b(s.config("target"));
        memory_pair m(b, region_bytes);
        publish(b, m, s.ch);
        std::vector<std::pair<std::string, std::string>> notifs;
        for (const xfer_case& c : all_cases()) {
            const std::string k = std::to_string(c.index);
            ferry_test::fill_pattern(m.bytes(c.remote), region_bytes, 2000 + c.index, 0);
            s.ch.send("ready " + k);
            ferry_test::progress_until_message(b, s.ch);
            s.ch.expect_message("read " + k);
            // The notification posted with the READ arrives as well.
            collect_notifs_until(
                b, notifs, [&] { return has_notif(notifs, "initiator", "read " + k); },
                "the notification of " + c.describe(xfer_op::read));
            expect(notifs.size() == c.index + 1, "unexpected notifications arrived with " + c.describe(xfer_op::read));
            s.ch.send("notified " + k);
        }
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

// ---- one prepared transfer posted many times -----------------------------------

constexpr int repost_rounds = 100;

void run_reposts(const std::string& tls, xfer_op op, xfer_path path) {
    // Two prepared transfers: user memory to user memory and allocated to allocated.
    const blocks local_blocks = packed(16, 1000);
    const blocks remote_blocks = scattered(16, 1000, 3, 1500);
    constexpr std::size_t bytes = 64 * 1024;
    constexpr mem kinds[] = {mem::user, mem::alloc};
    auto seed = [](int round, std::size_t j) { return static_cast<std::uint64_t>(round) * 2 + j + 7; };

    auto initiator = [&](side& s) {
        {
            backend b(s.config("initiator"));
            memory_pair m(b, bytes);
            const remote_pair t = load_target(b, s.ch);
            std::array<ferry::xfer, 2> xs;
            for (std::size_t j = 0; j < 2; ++j) {
                xs[j] = b.prepare(op, local_blocks.descs(reinterpret_cast<std::uintptr_t>(m.of(kinds[j]).data())),
                                  remote_blocks.descs(t.of(kinds[j])), t.p, path);
                ferry_test::expect_path(b, xs[j], ferry_test::local_host_path(path),
                                        "the " + name_of(kinds[j]) + " transfer");
            }
            for (int round = 0; round < repost_rounds; ++round) {
                const std::string r = std::to_string(round);
                if (op == xfer_op::read) s.ch.expect_message("ready " + r);
                for (std::size_t j = 0; j < 2; ++j) {
                    const std::string what = "round " + r + " of the " + name_of(kinds[j]) + " transfer";
                    if (op == xfer_op::write) {
                        fill_blocks(m.bytes(kinds[j]), local_blocks, remote_blocks, seed(round, j));
                    } else {
                        std::memset(m.bytes(kinds[j]), static_cast<int>(untouched), bytes);
                    }
                    ferry_test::post_and_wait(b, xs[j], {}, what);
                    expect_status(b.check(xs[j]), status::ok, what + ": check again after completion");
                    if (op == xfer_op::read) {
                        if (auto e =
                                verify_blocks(m.bytes(kinds[j]), local_blocks, remote_blocks, seed(round, j), bytes);
                            !e.empty())
                            fail(what + ": " + e);
                    }
                }
                s.ch.send("done " + r);
                s.ch.expect_message("next " + r);
            }
            for (auto x : xs) expect_status(b.release(x), status::ok, "release");
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        memory_pair m(b, bytes);
        publish(b, m, s.ch);
        for (int round = 0; round < repost_rounds; ++round) {
            const std::string r = std::to_string(round);
            if (op == xfer_op::read) {
                for (std::size_t j = 0; j < 2; ++j)
                    fill_blocks(m.bytes(kinds[j]), remote_blocks, remote_blocks, seed(round, j));
                s.ch.send("ready " + r);
            }
            ferry_test::progress_until_message(b, s.ch);
            s.ch.expect_message("done " + r);
            if (op == xfer_op::write) {
                for (std::size_t j = 0; j < 2; ++j)
                    if (auto e = verify_blocks(m.bytes(kinds[j]), remote_blocks, remote_blocks, seed(round, j), bytes);
                        !e.empty())
                        fail("round " + r + " of the " + name_of(kinds[j]) + " transfer: " + e);
            }
            s.ch.send("next " + r);
        }
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

}  // namespace

TEST_CASE("WRITE delivers exact bytes for every layout and memory kind") {
    const std::string tls = tls_under_test();
    const xfer_path path = path_under_test();
    CAPTURE(tls, path);
    run_write_cases(tls, path);
}

TEST_CASE("READ fetches exact bytes for every layout and memory kind") {
    const std::string tls = tls_under_test();
    const xfer_path path = path_under_test();
    CAPTURE(tls, path);
    run_read_cases(tls, path);
}

TEST_CASE("a prepared WRITE posted 100 times delivers each round's data") {
    const std::string tls = tls_under_test();
    const xfer_path path = path_under_test();
    CAPTURE(tls, path);
    run_reposts(tls, xfer_op::write, path);
}

TEST_CASE("a prepared READ posted 100 times fetches each round's data") {
    const std::string tls = tls_under_test();
    const xfer_path path = path_under_test();
    CAPTURE(tls, path);
    run_reposts(tls, xfer_op::read, path);
}

TEST_CASE("posting a transfer that is in flight returns busy and changes nothing") {
    const std::string tls = tls_under_test();
    CAPTURE(tls);
    // Over UCX, into user memory on the target: the WRITE is emulated and
    // cannot complete while the target does not progress, which holds it in
    // flight (host_ipc would finish it inside post).
    const blocks local_blocks = packed(64, 16 * 1024);
    const blocks remote_blocks = scattered(64, 16 * 1024, 100, 100);
    const std::size_t bytes = std::max(local_blocks.end(), remote_blocks.end());

    auto initiator = [&](side& s) {
        {
            backend b(s.config("initiator"));
            std::vector<std::byte> mem_local(bytes);
            auto region = b.register_memory(mem_local.data(), bytes);
            const remote_pair t = load_target(b, s.ch);
            const ferry::xfer x =
                b.prepare(xfer_op::write, local_blocks.descs(reinterpret_cast<std::uintptr_t>(region.data())),
                          remote_blocks.descs(t.user), t.p, xfer_path::ucx);
            fill_blocks(mem_local.data(), local_blocks, remote_blocks, 1);
            expect_status(b.post(x, "first"), status::in_progress, "first post to a target that does not progress");
            for (int i = 0; i < 1000; ++i)
                expect_status(b.check(x), status::in_progress, "check while the target does not progress");
            expect_status(b.post(x), status::busy, "post while in flight");
            expect_status(b.post(x, "busy"), status::busy, "post with a notification while in flight");
            expect_status(b.check(x), status::in_progress, "check after the refused posts");
            expect_status(b.wait(x, std::chrono::nanoseconds(0)), status::in_progress, "wait without time");
            s.ch.send("in flight");
            expect_status(b.wait(x, std::chrono::seconds(40)), status::ok, "wait, once the target progresses");
            expect_status(b.check(x), status::ok, "check after the wait");
            fill_blocks(mem_local.data(), local_blocks, remote_blocks, 2);
            ferry_test::post_and_wait(b, x, "second", "the second post");
            s.ch.send("second done");
            s.ch.expect_message("verified");
            expect_status(b.release(x), status::ok, "release");
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        memory_pair m(b, bytes);
        publish(b, m, s.ch);
        // Blocked here, not progressing, while the initiator tries to repost.
        s.ch.expect_message("in flight");
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("second done");
        if (auto e = verify_blocks(m.bytes(mem::user), remote_blocks, remote_blocks, 2, bytes); !e.empty())
            fail("after the second post: " + e);
        std::vector<std::pair<std::string, std::string>> notifs;
        collect_notifs_until(
            b, notifs,
            [&] { return has_notif(notifs, "initiator", "first") && has_notif(notifs, "initiator", "second"); },
            "the notifications 'first' and 'second'");
        expect(notifs.size() == 2, "a refused post sent a notification: " + std::to_string(notifs.size()) +
                                       " arrived, the third is '" + (notifs.size() > 2 ? notifs[2].second : "") + "'");
        s.ch.send("verified");
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

// Over UCX, as every test below of transfers held in flight by a target that
// does not progress: host_ipc would finish them inside post.
TEST_CASE("releasing a transfer in flight abandons it safely") {
    const std::string tls = tls_under_test();
    CAPTURE(tls);
    const blocks local_blocks = packed(64, 16 * 1024);
    const blocks first_half = scattered(64, 16 * 1024, 0, 0);
    blocks second_half = first_half;
    for (auto& at : second_half.at) at += 64 * 16 * 1024;
    const std::size_t bytes = second_half.end();

    auto initiator = [&](side& s) {
        {
            backend b(s.config("initiator"));
            std::vector<std::byte> mem_local(local_blocks.end());
            auto region = b.register_memory(mem_local.data(), mem_local.size());
            const remote_pair t = load_target(b, s.ch);
            const auto local = local_blocks.descs(reinterpret_cast<std::uintptr_t>(region.data()));
            const ferry::xfer abandoned =
                b.prepare(xfer_op::write, local, first_half.descs(t.user), t.p, xfer_path::ucx);
            fill_blocks(mem_local.data(), local_blocks, first_half, 1);
            expect_status(b.post(abandoned, "abandoned"), status::in_progress,
                          "post to a target that does not progress");
            expect_status(b.release(abandoned), status::ok, "release in flight");
            expect_status(b.check(abandoned), status::invalid_argument, "check after release");
            expect_status(b.wait(abandoned, std::chrono::seconds(1)), status::invalid_argument, "wait after release");
            expect_status(b.post(abandoned), status::invalid_argument, "post after release");
            expect_status(b.release(abandoned), status::invalid_argument, "second release");
            s.ch.send("released");
            // The abandoned transfer's buffer is left alone: data handed to
            // UCX may still be read from it. The next transfer uses another.
            std::vector<std::byte> mem_next(local_blocks.end());
            auto region_next = b.register_memory(mem_next.data(), mem_next.size());
            const ferry::xfer next =
                b.prepare(xfer_op::write, local_blocks.descs(reinterpret_cast<std::uintptr_t>(region_next.data())),
                          second_half.descs(t.user), t.p, xfer_path::ucx);
            fill_blocks(mem_next.data(), local_blocks, second_half, 2);
            ferry_test::post_and_wait(b, next, "next", "a transfer after the release");
            s.ch.send("next done");
            s.ch.expect_message("verified");
            expect_status(b.release(next), status::ok, "release");
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        memory_pair m(b, bytes);
        publish(b, m, s.ch);
        s.ch.expect_message("released");
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("next done");
        if (auto e = verify_blocks(m.bytes(mem::user), second_half, second_half, 2, 0); !e.empty())
            fail("the transfer after the release: " + e);
        std::vector<std::pair<std::string, std::string>> notifs;
        collect_notifs_until(
            b, notifs, [&] { return has_notif(notifs, "initiator", "next"); }, "the notification 'next'");
        s.ch.send("verified");
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

TEST_CASE("unloading a peer with a transfer in flight, then loading it again") {
    const std::string tls = tls_under_test();
    CAPTURE(tls);
    const blocks local_blocks = packed(32, 8 * 1024);
    const blocks remote_blocks = scattered(32, 8 * 1024, 8, 8);
    const std::size_t bytes = std::max(local_blocks.end(), remote_blocks.end());

    auto initiator = [&](side& s) {
        {
            backend b(s.config("initiator"));
            std::vector<std::byte> mem_local(bytes);
            auto region = b.register_memory(mem_local.data(), bytes);
            const auto blob = s.ch.recv_bytes();
            const ferry::peer p = b.load_remote(blob);
            const auto addrs = s.ch.recv_u64s();
            const auto local = local_blocks.descs(reinterpret_cast<std::uintptr_t>(region.data()));
            const ferry::xfer x = b.prepare(xfer_op::write, local, remote_blocks.descs(addrs.at(0)), p, xfer_path::ucx);
            fill_blocks(mem_local.data(), local_blocks, remote_blocks, 1);
            expect_status(b.post(x), status::in_progress, "post to a target that does not progress");
            b.unload_remote(p);
            expect(!b.find_peer("target").has_value(), "the unloaded peer is still found by name");
            expect_status(b.post(x), status::busy, "post in flight after unload");
            s.ch.send("unloaded");
            // The transfer still completes: its endpoint closes only afterwards.
            expect_status(ferry_test::wait_for(b, x), status::ok, "the transfer in flight to an unloaded peer");
            expect_status(b.post(x), status::no_such_peer, "post after the transfer completed");
            const ferry::peer again = b.load_remote(blob);
            expect(again != p, "the reloaded peer has the old handle");
            const ferry::xfer y =
                b.prepare(xfer_op::write, local, remote_blocks.descs(addrs.at(0)), again, xfer_path::ucx);
            fill_blocks(mem_local.data(), local_blocks, remote_blocks, 2);
            ferry_test::post_and_wait(b, y, "reloaded", "a transfer to the reloaded peer");
            s.ch.send("done");
            s.ch.expect_message("verified");
            expect_status(b.release(x), status::ok, "release");
            expect_status(b.release(y), status::ok, "release");
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        memory_pair m(b, bytes);
        publish(b, m, s.ch);
        s.ch.expect_message("unloaded");
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("done");
        if (auto e = verify_blocks(m.bytes(mem::user), remote_blocks, remote_blocks, 2, bytes); !e.empty())
            fail("after the transfer to the reloaded peer: " + e);
        std::vector<std::pair<std::string, std::string>> notifs;
        collect_notifs_until(
            b, notifs, [&] { return has_notif(notifs, "initiator", "reloaded"); }, "the notification 'reloaded'");
        s.ch.send("verified");
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

TEST_CASE("loading a peer's later metadata keeps the peer and its transfers, and updates its published regions") {
    const std::string tls = tls_under_test();
    const xfer_path path = path_under_test();
    CAPTURE(tls, path);
    constexpr std::size_t bytes = 64 * 1024;
    const blocks blocks_a = scattered(8, 1024, 16, 3000);

    auto initiator = [&](side& s) {
        {
            backend b(s.config("initiator"));
            std::vector<std::byte> mem_local(bytes);
            auto region = b.register_memory(mem_local.data(), bytes);
            const auto local = blocks_a.descs(reinterpret_cast<std::uintptr_t>(region.data()));

            const ferry::peer p1 = b.load_remote(s.ch.recv_bytes());
            const auto r1 = s.ch.recv_u64s().at(0);
            expect(b.remote_regions(p1) == std::vector<ferry::desc>{{r1, bytes, 0}}, "first metadata: regions");
            const ferry::xfer x1 = b.prepare(xfer_op::write, local, blocks_a.descs(r1), p1, path);
            ferry_test::expect_path(b, x1, ferry_test::local_host_path(path), "write to the first region");
            fill_blocks(mem_local.data(), blocks_a, blocks_a, 1);
            ferry_test::post_and_wait(b, x1, {}, "write to the first region");
            s.ch.send("first written");

            // The target registered a second region and published again: the
            // same process, so the same peer, whose transfers go on.
            const ferry::peer p2 = b.load_remote(s.ch.recv_bytes());
            const auto r2 = s.ch.recv_u64s().at(0);
            expect(p2 == p1, "a later blob of the same target gave a new handle");
            expect(b.find_peer("target") == p1, "find_peer does not give the handle");
            const std::vector<ferry::desc> both{{std::min(r1, r2), bytes, 0}, {std::max(r1, r2), bytes, 0}};
            expect(b.remote_regions(p2) == both, "second metadata: regions");
            fill_blocks(mem_local.data(), blocks_a, blocks_a, 1);
            ferry_test::post_and_wait(b, x1, {}, "the first region's transfer, prepared before the second metadata");
            const ferry::xfer x2 = b.prepare(xfer_op::write, local, blocks_a.descs(r2), p2, path);
            ferry_test::expect_path(b, x2, ferry_test::local_host_path(path), "write to the second region");
            fill_blocks(mem_local.data(), blocks_a, blocks_a, 2);
            ferry_test::post_and_wait(b, x2, {}, "write to the second region");
            s.ch.send("second written");

            // The target deregistered the first region and published again.
            const ferry::peer p3 = b.load_remote(s.ch.recv_bytes());
            expect(p3 == p1, "a third blob of the same target gave a new handle");
            expect(b.remote_regions(p3) == std::vector<ferry::desc>{{r2, bytes, 0}}, "third metadata: regions");
            auto gone = ferry_test::error_from(
                [&] { static_cast<void>(b.prepare(xfer_op::write, local, blocks_a.descs(r1), p3, path)); });
            expect(gone && gone->code_status() == status::not_registered &&
                       std::string(gone->what()).find("is not inside any region that peer 'target' published") !=
                           std::string::npos,
                   "prepare into a withdrawn region: " + std::string(gone ? gone->what() : "not refused"));
            const ferry::xfer x3 = b.prepare(xfer_op::write, local, blocks_a.descs(r2), p3, path);
            fill_blocks(mem_local.data(), blocks_a, blocks_a, 3);
            ferry_test::post_and_wait(b, x3, {}, "write to the second region, third metadata");
            s.ch.send("third written");
            s.ch.expect_message("verified");
            for (auto x : {x1, x2, x3}) expect_status(b.release(x), status::ok, "release");
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        std::vector<std::byte> mem1(bytes, untouched);
        auto region1 = b.register_memory(mem1.data(), bytes);
        s.ch.send(b.local_metadata());
        s.ch.send_u64s(std::array<std::uint64_t, 1>{reinterpret_cast<std::uintptr_t>(mem1.data())});
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("first written");
        if (auto e = verify_blocks(mem1.data(), blocks_a, blocks_a, 1, bytes); !e.empty()) fail("first region: " + e);

        auto region2 = b.allocate(bytes);
        std::memset(region2.data(), static_cast<int>(untouched), bytes);
        s.ch.send(b.local_metadata());
        s.ch.send_u64s(std::array<std::uint64_t, 1>{reinterpret_cast<std::uintptr_t>(region2.data())});
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("second written");
        const auto* bytes2 = static_cast<const std::byte*>(region2.data());
        if (auto e = verify_blocks(bytes2, blocks_a, blocks_a, 2, bytes); !e.empty()) fail("second region: " + e);

        region1.reset();
        s.ch.send(b.local_metadata());
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("third written");
        if (auto e = verify_blocks(bytes2, blocks_a, blocks_a, 3, bytes); !e.empty())
            fail("second region, third metadata: " + e);
        s.ch.send("verified");
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

TEST_CASE("deregistering a region while a WRITE over it is in flight keeps the data flowing") {
    const std::string tls = tls_under_test();
    const mem kind = GENERATE(mem::user, mem::alloc);
    CAPTURE(tls, name_of(kind));
    const blocks local_blocks = packed(64, 16 * 1024);
    const blocks remote_blocks = scattered(64, 16 * 1024, 9, 9);
    const std::size_t bytes = std::max(local_blocks.end(), remote_blocks.end());

    auto initiator = [&](side& s) {
        {
            backend b(s.config("initiator"));
            memory_pair m(b, bytes);
            const remote_pair t = load_target(b, s.ch);
            const ferry::xfer x =
                b.prepare(xfer_op::write, local_blocks.descs(reinterpret_cast<std::uintptr_t>(m.of(kind).data())),
                          remote_blocks.descs(t.user), t.p, xfer_path::ucx);
            fill_blocks(m.bytes(kind), local_blocks, remote_blocks, 4);
            expect_status(b.post(x, "after deregistration"), status::in_progress,
                          "post to a target that does not progress");
            // The registration, and for allocated memory the memory itself,
            // must stay until UCX is done with it.
            m.of(kind).reset();
            s.ch.send("deregistered");
            expect_status(ferry_test::wait_for(b, x), status::ok, "the WRITE over a deregistered region");
            expect_status(b.post(x), status::not_registered, "post once the region is gone");
            s.ch.send("done");
            s.ch.expect_message("verified");
            expect_status(b.release(x), status::ok, "release");
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        memory_pair m(b, bytes);
        publish(b, m, s.ch);
        s.ch.expect_message("deregistered");
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("done");
        if (auto e = verify_blocks(m.bytes(mem::user), remote_blocks, remote_blocks, 4, bytes); !e.empty())
            fail("data written from a region deregistered in flight: " + e);
        std::vector<std::pair<std::string, std::string>> notifs;
        collect_notifs_until(
            b, notifs, [&] { return has_notif(notifs, "initiator", "after deregistration"); },
            "the notification 'after deregistration'");
        s.ch.send("verified");
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

TEST_CASE("one transfer spans many regions on both sides") {
    const std::string tls = tls_under_test();
    const xfer_path path = path_under_test();
    CAPTURE(tls, path);
    // The target publishes 64 user and 64 allocated regions of its own; the
    // initiator's blocks come from 32 regions, two of them registered twice
    // over the same memory. Block i goes to region perm(i), at an offset
    // that depends on i.
    constexpr std::size_t regions = 128;
    constexpr std::size_t region_len = 8 * 1024;
    constexpr std::size_t block = 1000;
    auto offset_in_region = [](std::size_t i) { return (i * 37) % (region_len - block); };
    auto target_region = [](std::size_t i) { return (i * 29 + 3) % regions; };

    auto initiator = [&](side& s) {
        {
            backend b(s.config("initiator"));
            std::vector<std::vector<std::byte>> mems;
            std::vector<ferry::region> local_regions;
            for (std::size_t k = 0; k < 32; ++k) {
                mems.emplace_back(4 * block + 64);
                local_regions.push_back(b.register_memory(mems.back().data(), mems.back().size()));
            }
            auto overlap_a = b.register_memory(mems[5].data() + 100, 2 * block);
            auto overlap_b = b.register_memory(mems[6].data(), mems[6].size());
            const ferry::peer p = b.load_remote(s.ch.recv_bytes());
            const auto addrs = s.ch.recv_u64s();
            expect(addrs.size() == regions, "the target sent " + std::to_string(addrs.size()) + " addresses");
            expect(b.remote_regions(p).size() == regions, "remote_regions: wrong count");
            std::vector<ferry::desc> local, remote;
            for (std::size_t i = 0; i < regions; ++i) {
                std::byte* at = mems[i % 32].data() + (i / 32) * block + 17;
                local.push_back({reinterpret_cast<std::uintptr_t>(at), block, 0});
                remote.push_back(
                    {static_cast<std::uintptr_t>(addrs[target_region(i)] + offset_in_region(i)), block, 0});
            }
            for (int round = 1; round <= 2; ++round) {
                for (std::size_t i = 0; i < regions; ++i)
                    ferry_test::fill_pattern(reinterpret_cast<std::byte*>(local[i].addr), block, round * 1000 + i, 0);
                const ferry::xfer x = b.prepare(xfer_op::write, local, remote, p, path);
                ferry_test::expect_path(b, x, ferry_test::local_host_path(path), "WRITE across 128 regions");
                ferry_test::post_and_wait(b, x, "round " + std::to_string(round), "WRITE across 128 regions");
                expect_status(b.release(x), status::ok, "release");
                // Read everything back into other memory and compare.
                std::vector<std::byte> back_mem(regions * block);
                auto back = b.register_memory(back_mem.data(), back_mem.size());
                std::vector<ferry::desc> back_local;
                for (std::size_t i = 0; i < regions; ++i) back_local.push_back(back.slice(i * block, block));
                const ferry::xfer r = b.prepare(xfer_op::read, back_local, remote, p, path);
                ferry_test::expect_path(b, r, ferry_test::local_host_path(path), "READ across 128 regions");
                ferry_test::post_and_wait(b, r, {}, "READ across 128 regions");
                expect_status(b.release(r), status::ok, "release");
                for (std::size_t i = 0; i < regions; ++i)
                    if (auto e = ferry_test::check_pattern(back_mem.data() + i * block, block, round * 1000 + i, 0);
                        !e.empty())
                        fail("read back, block " + std::to_string(i) + ": " + e);
                s.ch.send("round " + std::to_string(round));
                s.ch.expect_message("verified");
            }
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        std::vector<std::vector<std::byte>> mems;
        std::vector<ferry::region> owned;
        std::vector<std::uint64_t> addrs;
        for (std::size_t k = 0; k < regions; ++k) {
            if (k % 2 == 0) {
                mems.emplace_back(region_len);
                owned.push_back(b.register_memory(mems.back().data(), region_len));
            } else {
                owned.push_back(b.allocate(region_len));
            }
            addrs.push_back(reinterpret_cast<std::uintptr_t>(owned.back().data()));
        }
        s.ch.send(b.local_metadata());
        s.ch.send_u64s(addrs);
        for (int round = 1; round <= 2; ++round) {
            ferry_test::progress_until_message(b, s.ch);
            s.ch.expect_message("round " + std::to_string(round));
            for (std::size_t i = 0; i < regions; ++i) {
                const auto* at = static_cast<const std::byte*>(owned[target_region(i)].data()) + offset_in_region(i);
                if (auto e = ferry_test::check_pattern(at, block, round * 1000 + i, 0); !e.empty())
                    fail("block " + std::to_string(i) + " in region " + std::to_string(target_region(i)) + ": " + e);
            }
            s.ch.send("verified");
        }
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

TEST_CASE("a restarted target is reached again once its new metadata is loaded") {
    const std::string tls = tls_under_test();
    const xfer_path path = path_under_test();
    CAPTURE(tls, path);
    // The target destroys its backend and makes a new one under the same
    // name, as a restarted process would; the initiator loads the new blob.
    const blocks the_blocks = scattered(8, 2048, 32, 64);
    const std::size_t bytes = the_blocks.end();
    constexpr int lives = 3;

    auto initiator = [&](side& s) {
        {
            backend b(s.config("initiator"));
            std::vector<std::byte> mem_local(bytes);
            auto region = b.register_memory(mem_local.data(), bytes);
            const auto local = the_blocks.descs(reinterpret_cast<std::uintptr_t>(region.data()));
            ferry::peer previous;
            ferry::xfer previous_xfer;
            for (int life = 0; life < lives; ++life) {
                const std::string what = "life " + std::to_string(life);
                const remote_pair t = load_target(b, s.ch);
                if (life > 0) {
                    expect(t.p != previous, what + ": load_remote gave the old handle");
                    expect_status(b.post(previous_xfer), status::no_such_peer, what + ": post to the old peer");
                    expect_status(b.send_notif(previous, "old"), status::no_such_peer,
                                  what + ": send_notif to the old peer");
                    expect_status(b.release(previous_xfer), status::ok, what + ": release");
                }
                expect(b.find_peer("target") == t.p, what + ": find_peer");
                const ferry::xfer x = b.prepare(xfer_op::write, local, the_blocks.descs(t.user), t.p, path);
                ferry_test::expect_path(b, x, ferry_test::local_host_path(path), what);
                fill_blocks(mem_local.data(), the_blocks, the_blocks, 50 + life);
                ferry_test::post_and_wait(b, x, what, what);
                s.ch.send("written");
                s.ch.expect_message("verified");
                previous = t.p;
                previous_xfer = x;
            }
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        for (int life = 0; life < lives; ++life) {
            const std::string what = "life " + std::to_string(life);
            backend b(s.config("target"));
            memory_pair m(b, bytes);
            publish(b, m, s.ch);
            ferry_test::progress_until_message(b, s.ch);
            s.ch.expect_message("written");
            if (auto e = verify_blocks(m.bytes(mem::user), the_blocks, the_blocks, 50 + life, bytes); !e.empty())
                fail(what + ": " + e);
            std::vector<std::pair<std::string, std::string>> notifs;
            collect_notifs_until(
                b, notifs, [&] { return !notifs.empty(); }, what + ": its notification");
            expect(notifs.size() == 1 && notifs[0] == std::pair<std::string, std::string>{"initiator", what},
                   what + ": the notification is '" + notifs[0].second + "' from '" + notifs[0].first + "'");
            s.ch.send("verified");
            if (life == lives - 1) serve_until_bye(b, s.ch);
        }
    };
    ferry_test::run_two_process(tls, initiator, target);
}

// ---- peers that stall, vanish or talk back ---------------------------------------

// With the default configuration, even over tcp: ferry unpacks a peer's rkeys
// only when a transfer needs them. Unpacking an emulated rkey starts a
// wire-up exchange, and UCX 1.13 over tcp aborts in ucp_worker_destroy
// (ucp_request.c:684, "got REQ message") when the worker goes before the
// peer has answered it.
TEST_CASE("a backend is destroyed cleanly when its peer has not progressed since load_remote") {
    const std::string tls = tls_under_test();
    CAPTURE(tls);
    auto initiator = [](side& s) {
        {
            auto cfg = s.config("initiator");
            cfg.close_timeout = std::chrono::milliseconds(100);
            backend b(cfg);
            const ferry::peer p = b.load_remote(s.ch.recv_bytes());
            expect(p.valid(), "load_remote gave an invalid handle");
        }
        s.ch.send("gone");
        s.ch.expect_message("bye");
    };
    auto target = [](side& s) {
        backend b(s.config("target"));
        std::vector<std::byte> mem(4096);
        auto region = b.register_memory(mem.data(), mem.size());
        s.ch.send(b.local_metadata());
        s.ch.expect_message("gone");
        s.ch.send("bye");
    };
    ferry_test::run_two_process(tls, initiator, target);
}

TEST_CASE("destroying a backend with a transfer in flight to a target that does not progress") {
    const std::string tls = tls_under_test();
    const std::string how = GENERATE(as<std::string>{}, "still prepared", "released", "peer unloaded");
    CAPTURE(tls, how);
    const blocks local_blocks = packed(64, 16 * 1024);
    const blocks remote_blocks = scattered(64, 16 * 1024, 0, 0);

    auto initiator = [&](side& s) {
        // UCX may read the buffer until the worker is gone: it outlives the backend.
        std::vector<std::byte> mem_local(local_blocks.end());
        {
            auto cfg = s.config("initiator");
            cfg.close_timeout = std::chrono::milliseconds(200);
            backend b(cfg);
            auto region = b.register_memory(mem_local.data(), mem_local.size());
            const remote_pair t = load_target(b, s.ch);
            const ferry::xfer x =
                b.prepare(xfer_op::write, local_blocks.descs(reinterpret_cast<std::uintptr_t>(region.data())),
                          remote_blocks.descs(t.user), t.p, xfer_path::ucx);
            fill_blocks(mem_local.data(), local_blocks, remote_blocks, 3);
            expect_status(b.post(x, "never delivered"), status::in_progress, "post to a target that does not progress");
            if (how == "released") expect_status(b.release(x), status::ok, "release in flight");
            if (how == "peer unloaded") b.unload_remote(t.p);
        }
        s.ch.send("gone");
        s.ch.expect_message("bye");
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        memory_pair m(b, remote_blocks.end());
        publish(b, m, s.ch);
        // Never progresses: the initiator's backend has to give up on it.
        s.ch.expect_message("gone");
        s.ch.send("bye");
    };
    ferry_test::run_two_process(tls, initiator, target);
}

TEST_CASE("with peer error handling, a peer that dies fails transfers and notifications instead of hanging") {
    // Over tcp only: shm cannot provide peer error handling (next test). Over
    // UCX, whose handling of a dead peer is under test.
    const blocks the_blocks = packed(16, 4096);

    auto initiator = [&](side& s) {
        std::vector<std::byte> mem_local(the_blocks.end());
        {
            backend b(s.config("initiator"));
            auto region = b.register_memory(mem_local.data(), mem_local.size());
            const remote_pair t = load_target(b, s.ch);
            const ferry::xfer x =
                b.prepare(xfer_op::write, the_blocks.descs(reinterpret_cast<std::uintptr_t>(region.data())),
                          the_blocks.descs(t.user), t.p, xfer_path::ucx);
            fill_blocks(mem_local.data(), the_blocks, the_blocks, 1);
            ferry_test::post_and_wait(b, x, "alive", "a WRITE while the target is alive");
            s.ch.send("die");
            // The target exits without closing anything, as a crash would.
            s.ch.expect_closed();
            const status posted = b.post(x, "after death");
            expect(posted == status::in_progress || posted == status::peer_failed,
                   "post to a dead peer returned " + ferry_test::str(posted));
            ferry_test::patience patience;
            status st = posted;
            while (st == status::in_progress) {
                patience.check("the failure of a WRITE to a dead peer to be reported");
                st = b.check(x);
            }
            expect_status(st, status::peer_failed, "a WRITE to a dead peer");
            expect_status(b.post(x), status::peer_failed, "post once the peer is known dead");
            expect_status(b.send_notif(t.p, "hello?"), status::peer_failed, "send_notif to a dead peer");
            expect_status(b.release(x), status::ok, "release");
            b.unload_remote(t.p);
        }
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        memory_pair m(b, the_blocks.end());
        publish(b, m, s.ch);
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("die");
        if (auto e = verify_blocks(m.bytes(mem::user), the_blocks, the_blocks, 1, 0); !e.empty())
            fail("before dying: " + e);
        ::_exit(0);
    };
    ferry_test::run_two_process("tcp", initiator, target);
}

// ferry turns on UCX's own dead-peer detection for shared memory; without
// it no shared-memory transport can serve an endpoint with peer error handling.
TEST_CASE("over shm with UCX's shared-memory error handling off, load_remote is refused with peer_failed") {
    auto initiator = [](side& s) {
        auto cfg = s.config("initiator");
        cfg.ucx_options.emplace_back("MM_ERROR_HANDLING", "n");
        backend b(cfg);
        const auto blob = s.ch.recv_bytes();
        auto e = ferry_test::error_from([&] { static_cast<void>(b.load_remote(blob)); });
        expect(e.has_value(), "load_remote accepted peer error handling over shm");
        expect_status(e->code_status(), status::peer_failed, "load_remote");
        expect(e->ucx_status() == UCS_ERR_UNREACHABLE, "ucx_status() is " + std::to_string(e->ucx_status()));
        const std::string what = e->what();
        expect(what.rfind("load_remote: cannot connect to 'target': ucp_ep_create: ", 0) == 0 &&
                   what.find("with error_mode::peer, which uses only transports that detect a dead peer") !=
                       std::string::npos,
               "message: " + what);
        expect(!b.find_peer("target").has_value(), "the refused peer was loaded anyway");
        s.ch.send("bye");
    };
    auto target = [](side& s) {
        backend b(s.config("target"));
        s.ch.send(b.local_metadata());
        s.ch.expect_message("bye");
    };
    ferry_test::run_two_process("shm", initiator, target);
}

TEST_CASE("two agents that load each other write into each other and notify each other") {
    const std::string tls = tls_under_test();
    const xfer_path path = path_under_test();
    CAPTURE(tls, path);
    const blocks local_blocks = packed(16, 3000);
    const blocks remote_blocks = scattered(16, 3000, 40, 17);
    const std::size_t bytes = std::max(local_blocks.end(), remote_blocks.end());

    auto agent = [&](std::string me, std::string other, std::uint64_t my_seed, std::uint64_t other_seed) {
        return [=](side& s) {
            {
                backend b(s.config(me));
                // [0, bytes) of each region receives, [bytes, 2 * bytes) sends.
                memory_pair m(b, 2 * bytes);
                publish(b, m, s.ch);
                const remote_pair peer = load_target(b, s.ch);
                std::array<ferry::xfer, 2> xs;
                const mem kinds[] = {mem::user, mem::alloc};
                for (std::size_t j = 0; j < 2; ++j) {
                    // From my user memory into the other's allocated memory and back.
                    ferry::region& src = m.of(kinds[1 - j]);
                    xs[j] = b.prepare(xfer_op::write,
                                      local_blocks.descs(reinterpret_cast<std::uintptr_t>(src.data()) + bytes),
                                      remote_blocks.descs(peer.of(kinds[j])), peer.p, path);
                    ferry_test::expect_path(b, xs[j], ferry_test::local_host_path(path),
                                            "the WRITE into the other's " + name_of(kinds[j]) + " region");
                }
                for (std::size_t j = 0; j < 2; ++j) {
                    fill_blocks(m.bytes(kinds[1 - j]) + bytes, local_blocks, remote_blocks, my_seed + j);
                    const status st = b.post(xs[j], "from " + me + " " + std::to_string(j));
                    expect(st == status::ok || st == status::in_progress, "post returned " + ferry_test::str(st));
                }
                std::vector<std::pair<std::string, std::string>> notifs;
                collect_notifs_until(
                    b, notifs, [&] { return notifs.size() >= 2; }, "both notifications from " + other);
                for (std::size_t j = 0; j < 2; ++j) {
                    expect(has_notif(notifs, other, "from " + other + " " + std::to_string(j)),
                           "missing notification " + std::to_string(j) + " from " + other);
                    if (auto e = verify_blocks(m.bytes(kinds[j]), remote_blocks, remote_blocks, other_seed + j, 0);
                        !e.empty())
                        fail("data from " + other + " in the " + name_of(kinds[j]) + " region: " + e);
                }
                for (auto x : xs) expect_status(ferry_test::wait_for(b, x), status::ok, "my WRITE");
                s.ch.send("done");
                ferry_test::progress_until_message(b, s.ch);
                s.ch.expect_message("done");
                // Both destroy their backends now, each progressing its own
                // worker while it closes its endpoint to the other.
            }
            s.ch.send("destroyed");
            s.ch.expect_message("destroyed");
        };
    };
    ferry_test::run_two_process(tls, agent("left", "right", 10, 20), agent("right", "left", 20, 10));
}

namespace {

// Transfers on a peer's allocated memory over shm, with a target that
// progresses only when told to. allocate() gives shared memory that a peer
// on this host maps, and host_ipc, prepare's automatic choice here, copies
// through that mapping inside post: both transfers must be over when post
// returns, the target never progressing. Over UCX that memory is registered
// as register_memory's is, and UCX may need the target to move it: each
// transfer that stays in flight must complete once the target progresses,
// and the test says which did. Either way every byte is checked.
// `also_user` makes the target publish a register_memory region as well,
// which the transfers never touch: ferry does not unpack its (emulated)
// rkey, whose wire-up exchange UCX 1.13 would make every put on the endpoint
// wait for.
void run_mapped_memory(bool also_user, xfer_path path) {
    const blocks local_blocks = packed(16, 4096);
    const blocks remote_blocks = scattered(16, 4096, 1, 1);
    constexpr std::size_t bytes = 256 * 1024;
    // Far more checks than a copy needs, and a count, not a time: without
    // progress at the target, an emulated transfer never completes.
    constexpr int max_checks = 100'000;

    const xfer_path taken = ferry_test::local_host_path(path);
    auto initiator = [&](side& s) {
        std::string stuck;
        {
            backend b(s.config("initiator"));
            memory_pair m(b, bytes);
            const remote_pair t = load_target(b, s.ch);
            const auto remote = remote_blocks.descs(t.alloc);
            auto run = [&](ferry::xfer x, const std::string& what) {
                ferry_test::expect_path(b, x, taken, what);
                status st = b.post(x);
                if (taken == xfer_path::host_ipc && st == status::in_progress && stuck.empty())
                    stuck = what + " was still in progress when post returned: host_ipc copies inside post";
                for (int i = 0; st == status::in_progress && i < max_checks; ++i) st = b.check(x);
                const std::string how = st == status::in_progress ? "needed the target's progress" : "one-sided";
                std::printf("%s over %s: %s\n", what.c_str(), ferry_test::str(taken).c_str(), how.c_str());
                // Let the target progress so that both can finish cleanly.
                if (st == status::in_progress) {
                    s.ch.send("progress");
                    st = ferry_test::wait_for(b, x);
                    s.ch.send("stop");
                    s.ch.expect_message("stopped");
                }
                expect_status(st, status::ok, what);
            };
            fill_blocks(m.bytes(mem::user), local_blocks, remote_blocks, 5);
            run(b.prepare(xfer_op::write, local_blocks.descs(reinterpret_cast<std::uintptr_t>(m.user.data())), remote,
                          t.p, path),
                "a WRITE into the target's allocated memory");
            run(b.prepare(xfer_op::read, remote_blocks.descs(reinterpret_cast<std::uintptr_t>(m.alloc.data())), remote,
                          t.p, path),
                "a READ from the target's allocated memory");
            if (auto e = verify_blocks(m.bytes(mem::alloc), remote_blocks, remote_blocks, 5, bytes); !e.empty())
                fail("read back: " + e);
            s.ch.send("done");
            s.ch.expect_message("verified");
        }
        s.ch.send("bye");
        if (!stuck.empty()) fail(stuck);
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        std::vector<std::byte> user_mem(bytes);
        ferry::region user;
        if (also_user) user = b.register_memory(user_mem.data(), bytes);
        auto alloc = b.allocate(bytes);
        std::memset(alloc.data(), static_cast<int>(untouched), bytes);
        s.ch.send(b.local_metadata());
        s.ch.send_u64s(std::array<std::uint64_t, 2>{reinterpret_cast<std::uintptr_t>(user_mem.data()),
                                                    reinterpret_cast<std::uintptr_t>(alloc.data())});
        // Blocked on the socket, not progressing, unless asked to.
        for (std::string msg = s.ch.recv(); msg != "done"; msg = s.ch.recv()) {
            expect(msg == "progress", "unexpected message '" + msg + "'");
            ferry_test::progress_until_message(b, s.ch);
            s.ch.expect_message("stop");
            s.ch.send("stopped");
        }
        if (auto e = verify_blocks(static_cast<const std::byte*>(alloc.data()), remote_blocks, remote_blocks, 5, bytes);
            !e.empty())
            fail("allocated region: " + e);
        s.ch.send("verified");
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process("shm", initiator, target);
}

}  // namespace

TEST_CASE("over shm, transfers on allocated memory complete, without the target where ferry maps it") {
    const xfer_path path = path_under_test();
    CAPTURE(path);
    run_mapped_memory(false, path);
}

TEST_CASE("over shm, transfers on allocated memory complete, without the target where ferry maps it, beside user memory") {
    const xfer_path path = path_under_test();
    CAPTURE(path);
    run_mapped_memory(true, path);
}

// ---- notifications ------------------------------------------------------------------

namespace {

std::string numbered_notif(std::size_t i) {
    // Lengths vary from 0 to 36 bytes of filler after the number.
    return "notif " + std::to_string(i) + " " + std::string(i % 37, static_cast<char>('a' + i % 26));
}

}  // namespace

TEST_CASE("10000 standalone notifications all arrive once, intact") {
    const std::string tls = tls_under_test();
    CAPTURE(tls);
    constexpr std::size_t total = 10'000;

    auto initiator = [&](side& s) {
        {
            backend b(s.config("initiator"));
            const ferry::peer p = b.load_remote(s.ch.recv_bytes());
            for (std::size_t i = 0; i < total; ++i)
                expect_status(b.send_notif(p, numbered_notif(i)), status::ok, "send_notif " + std::to_string(i));
            // Sends that UCX queued go out as this side progresses.
            ferry_test::progress_until_message(b, s.ch);
            s.ch.expect_message("all arrived");
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        s.ch.send(b.local_metadata());
        std::vector<bool> seen(total);
        std::size_t count = 0;
        ferry_test::patience patience;
        while (count < total) {
            for (auto& [sender, msgs] : b.take_notifs()) {
                expect(sender == "initiator", "a notification from '" + sender + "'");
                for (const std::string& msg : msgs) {
                    std::size_t i = 0;
                    expect(std::sscanf(msg.c_str(), "notif %zu", &i) == 1 && i < total,
                           "a notification reads '" + msg + "'");
                    expect(msg == numbered_notif(i), "notification " + std::to_string(i) + " reads '" + msg + "'");
                    expect(!seen[i], "notification " + std::to_string(i) + " arrived twice");
                    seen[i] = true;
                    ++count;
                }
            }
            patience.check("notifications: " + std::to_string(count) + " of " + std::to_string(total) + " arrived");
        }
        s.ch.send("all arrived");
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

TEST_CASE("notifications carry any bytes up to the receiver's limit, larger ones are refused or dropped") {
    const std::string tls = tls_under_test();
    CAPTURE(tls);
    // Every byte value, NUL included, in a message of exactly `len` bytes.
    auto binary = [](std::size_t len, unsigned salt) {
        std::string m(len, '\0');
        for (std::size_t i = 0; i < len; ++i) m[i] = static_cast<char>((i * 7 + salt) & 0xFFU);
        return m;
    };
    const std::vector<std::string> delivered = {"", "x", binary(999, 1), binary(1000, 2), binary(1000, 3)};

    auto initiator = [&](side& s) {
        {
            backend b(s.config("initiator"));
            std::vector<std::byte> mem_local(64, std::byte{0x42});
            auto region = b.register_memory(mem_local.data(), mem_local.size());
            const remote_pair t = load_target(b, s.ch);
            for (std::size_t i = 0; i < 4; ++i)
                expect_status(b.send_notif(t.p, delivered[i]), status::ok,
                              "send_notif of " + std::to_string(delivered[i].size()) + " bytes");
            // Within this side's limit (64 KiB) but over the target's (1000 bytes).
            expect_status(b.send_notif(t.p, binary(1001, 4)), status::ok, "send_notif of 1001 bytes");
            expect_status(b.send_notif(t.p, binary(64 * 1024, 5)), status::ok, "send_notif of 64 KiB");
            expect_status(b.send_notif(t.p, binary(64 * 1024 + 1, 6)), status::invalid_argument,
                          "send_notif over this side's limit");
            const ferry::desc local = region.whole();
            const ferry::desc remote{static_cast<std::uintptr_t>(t.user), 64, 0};
            const ferry::xfer x = b.prepare(xfer_op::write, std::span(&local, 1), std::span(&remote, 1), t.p);
            expect_status(b.post(x, binary(64 * 1024 + 1, 7)), status::invalid_argument,
                          "post with a notification over the limit");
            ferry_test::post_and_wait(b, x, delivered[4], "WRITE with a 1000-byte notification");
            ferry_test::post_and_wait(b, x, binary(1001, 8), "WRITE with a 1001-byte notification");
            s.ch.send("sent");
            ferry_test::progress_until_message(b, s.ch);
            s.ch.expect_message("checked");
            expect_status(b.release(x), status::ok, "release");
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        auto cfg = s.config("target");
        cfg.max_notif_size = 1000;
        backend b(cfg);
        memory_pair m(b, 64);
        publish(b, m, s.ch);
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("sent");
        expect(b.wait_notifs(std::chrono::seconds(40)), "wait_notifs: nothing arrived");
        std::vector<std::pair<std::string, std::string>> notifs;
        collect_notifs_until(
            b, notifs, [&] { return notifs.size() >= delivered.size() && b.dropped_notifs() >= 3; },
            "5 notifications and 3 dropped ones");
        expect(b.dropped_notifs() == 3, "dropped " + std::to_string(b.dropped_notifs()) + " notifications, expected 3");
        std::vector<std::string> got;
        for (auto& [from, msg] : notifs) {
            expect(from == "initiator", "a notification from '" + from + "'");
            got.push_back(msg);
        }
        std::vector<std::string> want = delivered;
        std::sort(got.begin(), got.end());
        std::sort(want.begin(), want.end());
        expect(got == want,
               "the notifications that arrived differ from those sent (" + std::to_string(got.size()) + " arrived)");
        expect(!b.wait_notifs(std::chrono::nanoseconds(0)), "wait_notifs: mail after everything was taken");
        expect(ferry_test::check_filled(m.bytes(mem::user), 64, std::byte{0x42}).empty(),
               "the WRITE's data is missing");
        s.ch.send("checked");
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

TEST_CASE("notifications are grouped under each sender's exact name") {
    const std::string tls = tls_under_test();
    CAPTURE(tls);
    const std::string name_a = "initiator \xC3\xA4/\xCF\x84\t#1";
    const std::string name_b = std::string(254, 'b') + "z";
    constexpr std::size_t per_sender = 100;

    auto initiator = [&](side& s) {
        {
            // Two agents in one process, each with its own name.
            backend a(s.config(name_a));
            backend b(s.config(name_b));
            const auto blob = s.ch.recv_bytes();
            const ferry::peer pa = a.load_remote(blob);
            const ferry::peer pb = b.load_remote(blob);
            for (std::size_t i = 0; i < per_sender; ++i) {
                // Appended, not "a" + std::to_string(i): GCC 12 at -O3 warns,
                // wrongly, under -Wrestrict inside that operator+.
                const std::string n = std::to_string(i);
                expect_status(a.send_notif(pa, std::string("a").append(n)), status::ok, "send_notif from a");
                expect_status(b.send_notif(pb, std::string("b").append(n)), status::ok, "send_notif from b");
            }
            while (!s.ch.readable()) {
                a.progress();
                b.progress();
            }
            s.ch.expect_message("grouped");
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        s.ch.send(b.local_metadata());
        ferry::notif_map all;
        std::size_t count = 0;
        ferry_test::patience patience;
        while (count < 2 * per_sender) {
            for (auto& [sender, msgs] : b.take_notifs()) {
                count += msgs.size();
                auto& into = all[sender];
                into.insert(into.end(), msgs.begin(), msgs.end());
            }
            patience.check(std::to_string(count) + " of " + std::to_string(2 * per_sender) + " notifications");
        }
        expect(all.size() == 2, std::to_string(all.size()) + " senders, expected 2");
        for (const auto& [name, prefix] : {std::pair{name_a, std::string("a")}, std::pair{name_b, std::string("b")}}) {
            auto it = all.find(name);
            expect(it != all.end(), "no notifications under the name '" + name + "'");
            std::set<std::string> want, got(it->second.begin(), it->second.end());
            for (std::size_t i = 0; i < per_sender; ++i) want.insert(prefix + std::to_string(i));
            expect(got == want && it->second.size() == per_sender, "the notifications of '" + name + "' differ");
        }
        s.ch.send("grouped");
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

// connect's initiator, under either progress policy.
template <class B>
void connect_initiator(side& s) {
    using namespace std::chrono_literals;
    B b(s.config("initiator"));
    const auto blob = s.ch.recv_bytes();
    const ferry::peer p = b.load_remote(blob);
    expect_status(b.connect(p, 20s), status::ok, "connect to a live peer");
    expect_status(b.connect(p, 20s), status::ok, "connect to it again");
    expect_status(b.send_notif(p, "after connect"), status::ok, "send_notif after connect");
    ferry_test::progress_until_message(b, s.ch);
    s.ch.expect_message("got it");
    expect_status(b.connect(ferry::peer{}, 1s), status::no_such_peer, "connect to an unknown handle");
    b.unload_remote(p);
    expect_status(b.connect(p, 1s), status::no_such_peer, "connect to an unloaded peer");

    const ferry::peer again = b.load_remote(blob);
    s.ch.send("die");
    s.ch.expect_closed();
    ferry_test::patience patience;
    while (b.peer_status(again) != status::peer_failed) {
        b.progress();
        patience.check("the dead target to be found");
    }
    expect_status(b.connect(again, 1s), status::peer_failed, "connect to a dead peer");
}

TEST_CASE("connect finishes a peer's endpoint, sends no notification, and refuses unknown, unloaded and dead peers") {
    const std::string tls = tls_under_test();
    const bool threaded = GENERATE(false, true);
    CAPTURE(tls, threaded);
    auto initiator = [&](side& s) {
        if (threaded) connect_initiator<ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::host>>>(s);
        else connect_initiator<backend>(s);
    };
    auto target = [](side& s) {
        backend b(s.config("target"));
        s.ch.send(b.local_metadata());
        std::vector<std::pair<std::string, std::string>> got;
        collect_notifs_until(b, got, [&] { return !got.empty(); }, "the notification after connect");
        // Whatever connect sent must not surface as a notification, nor be
        // counted as a malformed one.
        for (int i = 0; i < 1000; ++i) b.progress();
        b.poll_notifs([&](std::string_view from, std::string_view msg) { got.emplace_back(from, msg); });
        expect(got.size() == 1 && got[0].first == "initiator" && got[0].second == "after connect",
               std::to_string(got.size()) + " notifications, the first '" + got[0].second + "' from '" +
                   got[0].first + "'");
        expect(b.dropped_notifs() == 0, std::to_string(b.dropped_notifs()) + " notifications dropped");
        s.ch.send("got it");
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("die");
        ::_exit(0);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

TEST_CASE("a notification posted with a WRITE arrives only after the WRITE's data") {
    const std::string tls = tls_under_test();
    const xfer_path path = path_under_test();
    CAPTURE(tls, path);
    // Many transfers in flight at once, each writing a slot of its own with
    // a notification; every notification is checked against its slot the
    // moment it is delivered. Passes reuse the slots with new patterns.
    constexpr std::size_t rounds = 100;
    constexpr int passes = 10;
    constexpr std::size_t slot = 32 * 1024;
    constexpr std::size_t bytes = rounds * slot;
    // Three blocks per slot: one byte, one past a page, and 16 KiB.
    struct piece {
        std::size_t offset;
        std::size_t len;
    };
    constexpr std::array<piece, 3> pieces{{{0, 1}, {64, 4097}, {8192, 16384}}};
    auto local_kind = [](std::size_t r) { return r % 2 == 0 ? mem::user : mem::alloc; };
    auto remote_kind = [](std::size_t r) { return (r / 2) % 2 == 0 ? mem::user : mem::alloc; };
    auto seed = [](int pass, std::size_t r) { return static_cast<std::uint64_t>(pass) * 100'000 + r; };
    // Every tenth notification is near the 64 KiB limit, so that it travels
    // in several fragments.
    auto notif_text = [](int pass, std::size_t r) {
        std::string text = "pass " + std::to_string(pass) + " round " + std::to_string(r);
        if (r % 10 == 0) text += " " + std::string(60'000, static_cast<char>('a' + r % 26));
        return text;
    };

    auto initiator = [&](side& s) {
        {
            backend b(s.config("initiator"));
            memory_pair m(b, bytes);
            const remote_pair t = load_target(b, s.ch);
            std::vector<ferry::xfer> xs;
            for (std::size_t r = 0; r < rounds; ++r) {
                std::vector<ferry::desc> local, remote;
                for (const piece& pc : pieces) {
                    local.push_back(m.of(local_kind(r)).slice(r * slot + pc.offset, pc.len));
                    remote.push_back(
                        {static_cast<std::uintptr_t>(t.of(remote_kind(r)) + r * slot + pc.offset), pc.len, 0});
                }
                xs.push_back(b.prepare(xfer_op::write, local, remote, t.p, path));
                ferry_test::expect_path(b, xs.back(), ferry_test::local_host_path(path), "round " + std::to_string(r));
            }
            for (int pass = 0; pass < passes; ++pass) {
                for (std::size_t r = 0; r < rounds; ++r)
                    for (const piece& pc : pieces)
                        ferry_test::fill_pattern(m.bytes(local_kind(r)) + r * slot + pc.offset, pc.len, seed(pass, r),
                                                 r * slot + pc.offset);
                for (std::size_t r = 0; r < rounds; ++r) {
                    const status st = b.post(xs[r], notif_text(pass, r));
                    expect(st == status::ok || st == status::in_progress, "post returned " + ferry_test::str(st));
                }
                for (std::size_t r = 0; r < rounds; ++r)
                    expect_status(ferry_test::wait_for(b, xs[r]), status::ok, "round " + std::to_string(r));
                ferry_test::progress_until_message(b, s.ch);
                s.ch.expect_message("pass " + std::to_string(pass) + " verified");
            }
            for (auto x : xs) expect_status(b.release(x), status::ok, "release");
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        memory_pair m(b, bytes);
        publish(b, m, s.ch);
        for (int pass = 0; pass < passes; ++pass) {
            std::vector<bool> seen(rounds);
            std::size_t count = 0;
            ferry_test::patience patience;
            while (count < rounds) {
                b.poll_notifs([&](std::string_view from, std::string_view msg) {
                    expect(from == "initiator", "a notification from '" + std::string(from) + "'");
                    int p = -1;
                    std::size_t r = rounds;
                    const std::string text(msg);
                    expect(std::sscanf(text.c_str(), "pass %d round %zu", &p, &r) == 2 && p == pass && r < rounds &&
                               !seen[r] && text == notif_text(p, r),
                           "unexpected notification '" + text.substr(0, 40) + "' in pass " + std::to_string(pass));
                    // The data must already be complete when its notification is delivered.
                    for (const piece& pc : pieces) {
                        const std::size_t at = r * slot + pc.offset;
                        if (auto e = ferry_test::check_pattern(m.bytes(remote_kind(r)) + at, pc.len, seed(pass, r), at);
                            !e.empty())
                            fail("'" + text + "' was delivered before its data: " + e);
                    }
                    seen[r] = true;
                    ++count;
                });
                patience.check("pass " + std::to_string(pass) + ": " + std::to_string(count) + " notifications");
            }
            s.ch.send("pass " + std::to_string(pass) + " verified");
        }
        serve_until_bye(b, s.ch);
    };
    ferry_test::run_two_process(tls, initiator, target);
}

TEST_CASE("notifications answered from inside the poll_notifs visitor") {
    const std::string tls = tls_under_test();
    CAPTURE(tls);
    // Each side loads the other. The right side answers every ping from
    // inside its visitor, where it also sends and progresses, so that new
    // arrivals land while the previous batch is being handed out. No order
    // is assumed between notifications.
    constexpr std::size_t pings = 1000;
    const std::string largest(64 * 1024, 'L');
    auto number_in = [](std::string_view msg, std::string_view word) {
        std::size_t n = pings;
        const std::string text(msg);
        if (text.rfind(std::string(word) + " ", 0) != 0 || std::sscanf(text.c_str() + word.size(), "%zu", &n) != 1 ||
            text != std::string(word) + " " + std::to_string(n))
            return pings;
        return n;
    };

    auto left = [&](side& s) {
        {
            backend b(s.config("left"));
            s.ch.send(b.local_metadata());
            const ferry::peer right = b.load_remote(s.ch.recv_bytes());
            expect_status(b.send_notif(right, largest), status::ok, "send_notif of the largest notification");
            std::vector<bool> answered(pings);
            std::size_t count = 0;
            ferry_test::patience patience;
            for (std::size_t i = 0; i < pings; ++i) {
                expect_status(b.send_notif(right, "ping " + std::to_string(i)), status::ok, "send_notif ping");
                // Keep at most 8 pings unanswered.
                while (i + 1 - count > 8 || (i + 1 == pings && count < pings)) {
                    b.poll_notifs([&](std::string_view from, std::string_view msg) {
                        expect(from == "right", "a notification from '" + std::string(from) + "'");
                        const std::size_t n = number_in(msg, "pong");
                        expect(n <= i && !answered[n], "unexpected '" + std::string(msg) + "'");
                        answered[n] = true;
                        ++count;
                    });
                    patience.check(std::to_string(count) + " pongs");
                }
            }
            s.ch.send("done");
            ferry_test::progress_until_message(b, s.ch);
            s.ch.expect_message("done");
        }
        s.ch.send("destroyed");
        s.ch.expect_message("destroyed");
    };
    auto right = [&](side& s) {
        {
            backend b(s.config("right"));
            s.ch.send(b.local_metadata());
            const ferry::peer left_peer = b.load_remote(s.ch.recv_bytes());
            bool got_largest = false;
            std::vector<bool> seen(pings);
            std::size_t count = 0;
            ferry_test::patience patience;
            while (count < pings || !got_largest) {
                b.poll_notifs([&](std::string_view from, std::string_view msg) {
                    expect(from == "left", "a notification from '" + std::string(from) + "'");
                    if (msg.size() == largest.size()) {
                        expect(!got_largest && msg == largest, "the 64 KiB notification is damaged or repeated");
                        got_largest = true;
                        return;
                    }
                    const std::size_t n = number_in(msg, "ping");
                    expect(n < pings && !seen[n], "unexpected '" + std::string(msg) + "'");
                    seen[n] = true;
                    ++count;
                    expect_status(b.send_notif(left_peer, "pong " + std::to_string(n)), status::ok,
                                  "send_notif from inside the visitor");
                    b.progress();
                });
                patience.check(std::to_string(count) + " pings");
            }
            ferry_test::progress_until_message(b, s.ch);
            s.ch.expect_message("done");
            s.ch.send("done");
        }
        s.ch.send("destroyed");
        s.ch.expect_message("destroyed");
    };
    ferry_test::run_two_process(tls, left, right);
}
