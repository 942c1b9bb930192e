// Failures between real processes, over shared memory and TCP, under both
// progress policies: a target SIGKILLed in the middle of a stream of
// transfers and then restarted, transfers that outlive their deadline,
// deregistering memory that transfers still use, and backends destroyed
// while their target is dead or does not progress.
//
// Every transfer here goes over UCX (xfer_path::ucx): what is under test is
// how ferry lives with UCX operations that a target holds in flight or a
// dead peer leaves behind. Between two processes of one host, prepare would
// otherwise choose host_ipc, which copies inside post and leaves nothing in
// flight.
//
// Some tests need a process to die from outside. There the target role is a
// supervisor that makes no UCX object itself: it forks the real targets
// (grandchildren of the test program), relays their metadata, kills them
// with SIGKILL when told to and starts new incarnations.

#include <ferry/ferry.hpp>

#include <catch2/catch.hpp>

#include "support/ferry_catch.hpp"
#include "support/grandchild.hpp"
#include "support/pattern.hpp"
#include "support/two_process.hpp"

#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using ferry::status;
using ferry::xfer_op;
using ferry::xfer_path;
using ferry_test::channel;
using ferry_test::expect;
using ferry_test::expect_status;
using ferry_test::fail;
using ferry_test::grandchild;
using ferry_test::patience;
using ferry_test::side;

namespace {

using inline_backend = ferry::ucx_backend<>;
using threaded_backend = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::host>>;
using steady = std::chrono::steady_clock;

template <class Backend>
constexpr bool threaded_v = ferry::is_threaded_v<typename Backend::policy_type>;

constexpr std::byte untouched{0xA5};

enum class mem { user, alloc };

std::string name_of(mem m) { return m == mem::user ? "register_memory" : "allocate"; }

ferry::ucx_config config_for(const std::string& tls, std::string name) {
    ferry::ucx_config cfg;
    cfg.name = std::move(name);
    cfg.ucx_options = {{"TLS", tls}};
    return cfg;
}

double ms_since(steady::time_point t) { return std::chrono::duration<double, std::milli>(steady::now() - t).count(); }

std::string ms(double v) { return std::to_string(static_cast<long long>(v)) + " ms"; }

std::uintptr_t addr_of(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

std::string hex(std::uintptr_t v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}

// One turn of a polling loop: drives the worker under inline progress; under
// the thread policy (progress() returns 0 at once) it gives the CPU away.
template <class Backend>
void drive(Backend& b) {
    if (b.progress() == 0) ::sched_yield();
}

// `count` descriptors of `len` bytes each, back to back from `base`.
std::vector<ferry::desc> split(std::uintptr_t base, std::size_t count, std::size_t len) {
    std::vector<ferry::desc> out;
    for (std::size_t i = 0; i < count; ++i) out.push_back({base + i * len, len, 0});
    return out;
}

// The ferry::error that f throws; fails the child if f returns or throws something else.
template <class F>
ferry::error error_of(F&& f, const std::string& what) {
    try {
        std::forward<F>(f)();
    } catch (const ferry::error& e) {
        return e;
    } catch (const std::exception& e) {
        fail(what + ": threw something other than ferry::error: " + e.what());
    }
    fail(what + ": did not throw");
}

// Requires status `want` and the message `want_message`, which what() follows
// with ": " and the status, as std::system_error does.
void expect_error(const ferry::error& e, status want, const std::string& want_message, const std::string& what) {
    const std::string want_what = want_message + ": " + ferry_test::str(want);
    if (e.code_status() != want || std::string(e.what()) != want_what)
        fail(what + ": threw " + ferry_test::str(e.code_status()) + " '" + e.what() + "', expected " +
             ferry_test::str(want) + " '" + want_what + "'");
}

// What `got` lacks and has too much of, compared with `want`.
std::string difference(const std::multiset<std::string>& got, const std::multiset<std::string>& want) {
    std::string out;
    for (auto it = want.begin(); it != want.end(); it = want.upper_bound(*it))
        if (got.count(*it) < want.count(*it))
            out += " missing '" + *it + "' (" + std::to_string(want.count(*it) - got.count(*it)) + ")";
    for (auto it = got.begin(); it != got.end(); it = got.upper_bound(*it))
        if (got.count(*it) > want.count(*it))
            out += " extra '" + *it + "' (" + std::to_string(got.count(*it) - want.count(*it)) + ")";
    return out;
}

// ---- a target that does what it is told -------------------------------------------

// Inline progress and user memory only: over shm and tcp UCX emulates
// transfers to it, so none completes while it holds. It publishes a sink
// (untouched bytes) and a source (a pattern) and answers these commands:
//   serve                 progress until the next command
//   hold                  stop progressing; answers "held"
//   await SEED OFF LEN    progress until sink [OFF, OFF + LEN) holds pattern SEED; answers "landed"; serves
//   notifs A|B|...        progress until these notifications have come, then
//                         require that exactly these came so far; answers "notified"; serves
//   bye                   return
constexpr std::size_t cmd_block = 16 * 1024;
constexpr std::size_t cmd_blocks = 16;
constexpr std::size_t cmd_span = cmd_blocks * cmd_block;  // one transfer
constexpr std::size_t cmd_region = 4 * cmd_span;
constexpr std::uint64_t cmd_source_seed = 777;

void command_target(channel& ch, const std::string& tls) {
    inline_backend b(config_for(tls, "target"));
    std::vector<std::byte> sink(cmd_region, untouched), source(cmd_region);
    ferry_test::fill_pattern(source.data(), source.size(), cmd_source_seed, 0);
    auto sink_region = b.register_memory(sink.data(), sink.size());
    auto source_region = b.register_memory(source.data(), source.size());
    ch.send(b.local_metadata());
    ch.send_u64s(std::array<std::uint64_t, 2>{addr_of(sink.data()), addr_of(source.data())});

    std::multiset<std::string> notifs;
    auto turn = [&] {
        b.poll_notifs([&](std::string_view from, std::string_view msg) {
            if (from != "initiator")
                fail("a notification from '" + std::string(from) + "': '" + std::string(msg) + "'");
            notifs.emplace(msg);
        });
        if (b.progress() == 0) ::sched_yield();
    };
    bool serving = false;
    for (;;) {
        if (serving)
            while (!ch.readable()) turn();
        const std::string msg = ch.recv();
        std::istringstream in(msg);
        std::string cmd;
        in >> cmd;
        if (cmd == "serve") {
            serving = true;
        } else if (cmd == "hold") {
            serving = false;
            ch.send("held");
        } else if (cmd == "await") {
            std::uint64_t seed = 0;
            std::size_t off = 0, len = 0;
            in >> seed >> off >> len;
            expect(off + len <= sink.size(), "await: out of range: " + msg);
            patience p(std::chrono::seconds(10));
            for (std::string bad; !(bad = ferry_test::check_pattern(sink.data() + off, len, seed, off)).empty();) {
                p.check("'" + msg + "': " + bad);
                turn();
            }
            ch.send("landed");
            serving = true;
        } else if (cmd == "notifs") {
            std::string rest;
            std::getline(in, rest);
            std::multiset<std::string> want;
            std::istringstream list(rest.substr(rest.empty() ? 0 : 1));
            for (std::string item; std::getline(list, item, '|');) want.insert(item);
            patience p(std::chrono::seconds(10));
            auto all_came = [&] {
                return std::all_of(want.begin(), want.end(), [&](const auto& w) { return notifs.count(w) > 0; });
            };
            while (!all_came()) {
                turn();
                p.check("the notifications" + difference(notifs, want));
            }
            if (notifs != want) fail("notifications:" + difference(notifs, want));
            ch.send("notified");
            serving = true;
        } else if (cmd == "bye") {
            return;
        } else {
            fail("unknown command '" + msg + "'");
        }
    }
}

// What the initiator knows of a command target.
struct command_peer {
    ferry::peer p;
    std::uint64_t sink = 0;
    std::uint64_t source = 0;
};

template <class Backend>
command_peer load_command_target(Backend& b, channel& ch) {
    command_peer t;
    t.p = b.load_remote(ch.recv_bytes());
    const auto a = ch.recv_u64s();
    expect(a.size() == 2, "the target sent " + std::to_string(a.size()) + " addresses, expected 2");
    t.sink = a[0];
    t.source = a[1];
    return t;
}

// Commands with an answer; while waiting for it, the initiator drives its
// own worker, which the exchange may need.
template <class Backend>
void command(Backend& b, channel& ch, const std::string& cmd, std::string_view answer) {
    ch.send(cmd);
    ferry_test::progress_until_message(b, ch);
    ch.expect_message(answer);
}

template <class Backend>
void hold(Backend& b, channel& ch) {
    command(b, ch, "hold", "held");
}

template <class Backend>
void await_landed(Backend& b, channel& ch, std::uint64_t seed, std::size_t off, std::size_t len) {
    command(b, ch, "await " + std::to_string(seed) + " " + std::to_string(off) + " " + std::to_string(len), "landed");
}

// A WRITE of `cmd_span` bytes from `local` into sink [off, off + cmd_span),
// in 16 blocks; fill_write gives it the pattern that "await SEED off" expects.
template <class Backend>
ferry::xfer prepare_write(Backend& b, const command_peer& t, std::byte* local, std::size_t off) {
    return b.prepare(xfer_op::write, split(addr_of(local), cmd_blocks, cmd_block),
                     split(t.sink + off, cmd_blocks, cmd_block), t.p, xfer_path::ucx);
}

void fill_write(std::byte* local, std::uint64_t seed, std::size_t off) {
    ferry_test::fill_pattern(local, cmd_span, seed, off);
}

// Checks until the transfer is no longer in progress, at most `limit`.
template <class Backend>
status settle(Backend& b, ferry::xfer x, const std::string& what, std::chrono::seconds limit = 10s) {
    patience p(limit);
    status s = b.check(x);
    while (s == status::in_progress) {
        p.check(what);
        ::sched_yield();
        s = b.check(x);
    }
    return s;
}

// ---- kill -9 in the middle of a stream, then a restart ------------------------------

// Every step of the stream is one transfer to each target: step k is a WRITE
// when k is even, a READ when k is odd, and carries a notification unless
// k % 3 == 1. It moves two blocks: local block j of slot k to or from remote
// block 1 - j of slot k, so a swap shows.
constexpr std::size_t stream_block = 256;
constexpr std::size_t stream_slot = 2 * stream_block;
constexpr std::size_t stream_slots = 1024;
constexpr std::size_t stream_region = stream_slots * stream_slot;

constexpr std::uint64_t survivor_id = 1, first_victim_id = 2, second_victim_id = 3;

bool is_write_step(std::size_t k) { return k % 2 == 0; }
bool has_notif_step(std::size_t k) { return k % 3 != 1; }
std::string step_notif(const std::string& to, std::size_t k) { return to + " step " + std::to_string(k); }
std::string standalone_notif(const std::string& to) { return "standalone to " + to; }
std::uint64_t write_seed(std::uint64_t id, std::size_t k) { return id * 1'000'000 + k; }
std::uint64_t source_seed(std::uint64_t id) { return id * 1'000'000 + 999'999; }
std::size_t remote_offset(std::size_t k, std::size_t j) { return k * stream_slot + (1 - j) * stream_block; }

// Every process of a run must use the same FIFO size: a peer attaches to
// another's FIFO by the size that its own configuration gives.
constexpr const char* large_fifo_entries = "1024";

// A target of the stream (a grandchild). A progress thread serves the
// transfers while the main thread waits for "check N": then it verifies the
// sink for N steps and the notifications, and answers "verified".
void stream_target(channel& up, const std::string& tls, const std::string& name, std::uint64_t id, mem kind,
                   bool large_fifo) {
    auto cfg = config_for(tls, name);
    if (large_fifo) cfg.ucx_options.emplace_back("MM_FIFO_SIZE", large_fifo_entries);
    threaded_backend b(cfg);
    std::vector<std::byte> user_sink, user_source;
    ferry::region sink, source;
    if (kind == mem::user) {
        user_sink.resize(stream_region);
        user_source.resize(stream_region);
        sink = b.register_memory(user_sink.data(), stream_region);
        source = b.register_memory(user_source.data(), stream_region);
    } else {
        sink = b.allocate(stream_region);
        source = b.allocate(stream_region);
    }
    auto* sink_bytes = static_cast<std::byte*>(sink.data());
    std::memset(sink_bytes, static_cast<int>(untouched), stream_region);
    ferry_test::fill_pattern(static_cast<std::byte*>(source.data()), stream_region, source_seed(id), 0);
    up.send(b.local_metadata());
    up.send_u64s(std::array<std::uint64_t, 2>{sink.whole().addr, source.whole().addr});

    std::multiset<std::string> notifs;
    for (;;) {
        const std::string msg = up.recv();
        if (msg == "bye") return;
        expect(msg.rfind("check ", 0) == 0, "unexpected message '" + msg + "'");
        const std::size_t steps = std::stoul(msg.substr(6));
        for (std::size_t k = 0; k < stream_slots; ++k) {
            const std::byte* at = sink_bytes + k * stream_slot;
            const auto e = k < steps && is_write_step(k)
                               ? ferry_test::check_pattern(at, stream_slot, write_seed(id, k), k * stream_slot)
                               : ferry_test::check_filled(at, stream_slot, untouched, k * stream_slot);
            if (!e.empty()) fail("sink slot " + std::to_string(k) + " after " + std::to_string(steps) + " steps: " + e);
        }
        std::multiset<std::string> want{standalone_notif(name)};
        for (std::size_t k = 0; k < steps; ++k)
            if (has_notif_step(k)) want.insert(step_notif(name, k));
        patience p(std::chrono::seconds(10));
        while (notifs.size() < want.size()) {
            p.check("the notifications:" + difference(notifs, want));
            b.wait_notifs(100ms);
            b.poll_notifs([&](std::string_view from, std::string_view m) {
                if (from != "initiator")
                    fail("a notification from '" + std::string(from) + "': '" + std::string(m) + "'");
                notifs.emplace(m);
            });
        }
        if (notifs != want) fail("notifications:" + difference(notifs, want));
        up.send("verified");
    }
}

// The target role of the stream test: a survivor, and a victim that is
// killed and then started again under the same name.
void stream_supervisor(side& s, mem kind, bool large_fifo) {
    const std::string tls = s.tls;
    auto survivor = std::make_unique<grandchild>(
        "survivor", [&](channel& up) { stream_target(up, tls, "survivor", survivor_id, kind, large_fifo); });
    auto victim = std::make_unique<grandchild>(
        "victim #1", [&](channel& up) { stream_target(up, tls, "victim", first_victim_id, kind, large_fifo); },
        std::vector<int>{survivor->fd()});
    auto forward = [&](grandchild& g) {
        s.ch.send(g.ch().recv_bytes());  // metadata
        s.ch.send(g.ch().recv_bytes());  // sink and source addresses
    };
    forward(*survivor);
    forward(*victim);
    s.ch.expect_message("kill");
    victim->kill_now();
    s.ch.send("killed");
    s.ch.expect_message("restart");
    victim = std::make_unique<grandchild>(
        "victim #2", [&](channel& up) { stream_target(up, tls, "victim", second_victim_id, kind, large_fifo); },
        std::vector<int>{survivor->fd()});
    forward(*victim);
    const auto steps = s.ch.recv_u64s();
    expect(steps.size() == 2, "expected two step counts");
    survivor->ch().send("check " + std::to_string(steps[0]));
    victim->ch().send("check " + std::to_string(steps[1]));
    survivor->ch().expect_message("verified");
    victim->ch().expect_message("verified");
    s.ch.send("verified");
    s.ch.expect_message("bye");
    survivor->ch().send("bye");
    victim->ch().send("bye");
    survivor->join();
    victim->join();
}

// The initiator's view of one target of the stream.
struct stream_peer {
    std::string name;
    std::uint64_t id = 0;
    ferry::peer p;
    std::uint64_t sink = 0;
    std::uint64_t source = 0;
    std::byte* local = nullptr;  // [0, stream_region): WRITE sources; then READ destinations
    std::vector<status> results;  // by step; in_progress while in flight
    std::vector<ferry::xfer> xfers;
    std::vector<std::size_t> pending;
};

template <class Backend>
class streamer {
public:
    explicit streamer(Backend& b) : b_(b) {}

    void receive(stream_peer& t, channel& ch) {
        t.p = b_.load_remote(ch.recv_bytes());
        const auto a = ch.recv_u64s();
        expect(a.size() == 2, t.name + ": expected two addresses");
        t.sink = a[0];
        t.source = a[1];
    }

    // Posts the next step to t; returns what post returned.
    status post_step(stream_peer& t) {
        const std::size_t k = t.results.size();
        expect(k < stream_slots, t.name + ": the stream ran out of slots");
        const bool write = is_write_step(k);
        std::vector<ferry::desc> l, r;
        for (std::size_t j = 0; j < 2; ++j) {
            std::byte* at = t.local + (write ? 0 : stream_region) + k * stream_slot + j * stream_block;
            if (write) ferry_test::fill_pattern(at, stream_block, write_seed(t.id, k), remote_offset(k, j));
            l.push_back({addr_of(at), stream_block, 0});
            r.push_back({(write ? t.sink : t.source) + remote_offset(k, j), stream_block, 0});
        }
        const ferry::xfer x = b_.prepare(write ? xfer_op::write : xfer_op::read, l, r, t.p, xfer_path::ucx);
        const status s = b_.post(x, has_notif_step(k) ? step_notif(t.name, k) : std::string());
        t.results.push_back(s);
        t.xfers.push_back(x);
        if (s == status::in_progress) t.pending.push_back(k);
        else finish(t, k);
        return s;
    }

    // Checks t's transfers in flight once; true while some are.
    bool poll(stream_peer& t) {
        std::erase_if(t.pending, [&](std::size_t k) {
            const status s = b_.check(t.xfers[k]);
            if (s == status::in_progress) return false;
            t.results[k] = s;
            finish(t, k);
            return true;
        });
        return !t.pending.empty();
    }

    // Polls both, whether or not the first has transfers in flight.
    bool poll_both(stream_peer& a, stream_peer& b) {
        const bool a_busy = poll(a);
        const bool b_busy = poll(b);
        return a_busy || b_busy;
    }

    // Polls every target for `d` (or until nothing is in flight when d is zero).
    void poll_for(std::vector<stream_peer*> ts, std::chrono::nanoseconds d) {
        const auto end = steady::now() + d;
        patience p(std::chrono::seconds(10));
        do {
            bool any = false;
            for (auto* t : ts) any = poll(*t) || any;
            if (d == 0ns && !any) return;
            p.check("the transfers in flight to end");
            drive(b_);
        } while (d == 0ns || steady::now() < end);
    }

    std::string describe(const stream_peer& t, std::size_t k) const {
        return t.name + " step " + std::to_string(k) + " (" + (is_write_step(k) ? "WRITE" : "READ") + ")";
    }

private:
    // A step is over: its status must be ok or peer_failed, and a READ that
    // ended ok must have fetched exactly the source's bytes.
    void finish(stream_peer& t, std::size_t k) {
        const status s = t.results[k];
        if (s != status::ok && s != status::peer_failed)
            fail(describe(t, k) + " ended " + ferry_test::str(s) + ", expected ok or peer_failed");
        if (s == status::ok && !is_write_step(k))
            for (std::size_t j = 0; j < 2; ++j) {
                const std::byte* at = t.local + stream_region + k * stream_slot + j * stream_block;
                if (auto e = ferry_test::check_pattern(at, stream_block, source_seed(t.id), remote_offset(k, j));
                    !e.empty())
                    fail(describe(t, k) + " ended ok but block " + std::to_string(j) + " holds other bytes: " + e);
            }
        expect_status(b_.release(t.xfers[k]), status::ok, "release of " + describe(t, k));
    }

    Backend& b_;
};

template <class Backend>
void stream_initiator(side& s, mem kind, bool large_fifo) {
    // Checks that need not stop the run: printed at once (so that they show
    // even if something later hangs) and failed on at the end.
    std::vector<std::string> problems;
    auto note = [&](bool ok, const std::string& what) {
        if (ok) return;
        problems.push_back(what);
        const std::string line = "initiator: " + what + "\n";
        ferry_test::detail::write_all(STDERR_FILENO, line.data(), line.size());
    };
    auto note_status = [&](status got, status want, const std::string& what) {
        note(got == want, what + ": got " + ferry_test::str(got) + ", expected " + ferry_test::str(want));
    };
    // Transfers abandoned with the dead peer may touch local memory until
    // the backend is gone: it outlives the backend.
    std::vector<std::byte> memory(3 * 2 * stream_region);
    {
        auto cfg = s.config("initiator");
        if (large_fifo) cfg.ucx_options.emplace_back("MM_FIFO_SIZE", large_fifo_entries);
        Backend b(cfg);
        auto region = b.register_memory(memory.data(), memory.size());
        streamer<Backend> st(b);
        stream_peer survivor{"survivor", survivor_id, {}, 0, 0, memory.data(), {}, {}, {}};
        stream_peer victim{"victim", first_victim_id, {}, 0, 0, memory.data() + 2 * stream_region, {}, {}, {}};
        st.receive(survivor, s.ch);
        st.receive(victim, s.ch);
        expect_status(b.peer_status(ferry::peer{}), status::no_such_peer, "peer_status of an invalid handle");
        expect_status(b.peer_status(survivor.p), status::ok, "peer_status of the survivor");
        expect_status(b.peer_status(victim.p), status::ok, "peer_status of the victim");

        // 1. Both alive: every transfer ends ok.
        constexpr std::size_t healthy_steps = 12;
        for (std::size_t k = 0; k < healthy_steps; ++k) {
            st.post_step(survivor);
            st.post_step(victim);
            st.poll_for({&survivor, &victim}, 2ms);
        }
        {
            patience p(std::chrono::seconds(10));
            while (st.poll_both(survivor, victim)) {
                p.check("the transfers to two live targets");
                drive(b);
            }
        }
        for (std::size_t k = 0; k < healthy_steps; ++k)
            expect_status(victim.results[k], status::ok, st.describe(victim, k) + ", while the victim lived");

        // 2. The victim is killed in the middle of the stream, which goes on
        // for a while; then nothing more is posted, and every transfer to
        // the victim has to end by itself. The steps after the kill are more
        // than the victim's default shm FIFO (64 entries) holds.
        //
        // Over shm with user memory the victim answers every transfer with
        // active messages into this process's receive FIFO, and UCX 1.13
        // cannot survive a sender that dies between reserving a FIFO entry
        // and marking it written (uct_mm_ep_am_common_send): the reader stops
        // at that entry for good, so every shm peer's messages stall behind
        // it, the survivor's too. There the victim is killed only when
        // nothing is in flight to it, and the stream to it resumes once it
        // is dead; the stream to the survivor goes on throughout.
        const bool quiesce = s.tls == "shm" && kind == mem::user;
        constexpr std::size_t stream_steps = 40, kill_at = 4;
        const auto kill_time = steady::now();
        for (std::size_t i = 0; i < stream_steps; ++i) {
            if (i == kill_at) {
                patience p(std::chrono::seconds(10));
                while (quiesce && st.poll(victim)) {
                    p.check("the transfers to the victim to end before it is killed");
                    st.poll(survivor);
                    drive(b);
                }
                s.ch.send("kill");
                while (quiesce && !s.ch.readable()) {
                    p.check("the victim to be killed");
                    st.poll(survivor);
                    drive(b);
                }
                if (quiesce) s.ch.expect_message("killed");
            }
            st.post_step(survivor);
            st.post_step(victim);
            st.poll_for({&survivor, &victim}, 2ms);
        }
        const std::size_t in_flight_after_stream = victim.pending.size();
        {
            patience p(std::chrono::seconds(10));
            while (st.poll_both(survivor, victim)) {
                p.check(std::to_string(victim.pending.size()) + " transfer(s) to the killed victim, " +
                        std::to_string(survivor.pending.size()) + " to the survivor, to end (victim step " +
                        (victim.pending.empty() ? std::string("-") : std::to_string(victim.pending.front())) +
                        " still in progress; peer_status " + ferry_test::str(b.peer_status(victim.p)) + ")");
                drive(b);
            }
        }
        if (!quiesce) s.ch.expect_message("killed");
        // The failure is found without anything in flight or being posted.
        {
            patience p(std::chrono::seconds(10));
            while (b.peer_status(victim.p) == status::ok) {
                p.check("peer_status of the killed victim to become peer_failed");
                drive(b);
                if constexpr (threaded_v<Backend>) std::this_thread::sleep_for(1ms);
            }
        }
        const double detected_after = ms_since(kill_time);
        expect_status(b.peer_status(victim.p), status::peer_failed, "peer_status of the killed victim");
        expect_status(b.peer_status(survivor.p), status::ok, "peer_status of the survivor after the kill");

        // Statuses in posting order: ok until the first peer_failed, then peer_failed only.
        const auto first_failed = std::find(victim.results.begin(), victim.results.end(), status::peer_failed);
        for (auto it = first_failed; it != victim.results.end(); ++it)
            if (*it != status::peer_failed)
                fail(st.describe(victim, static_cast<std::size_t>(it - victim.results.begin())) + " ended " +
                     ferry_test::str(*it) + " after " +
                     st.describe(victim, static_cast<std::size_t>(first_failed - victim.results.begin())) +
                     " had ended peer_failed");
        const std::size_t failed_in_stream = static_cast<std::size_t>(victim.results.end() - first_failed);
        const std::size_t streamed = victim.results.size();
        for (std::size_t k = 0; k < survivor.results.size(); ++k)
            expect_status(survivor.results[k], status::ok, st.describe(survivor, k));

        // 3. Later posts, new or repeated, and notifications fail at once.
        for (int i = 0; i < 4; ++i) {
            const std::size_t k = victim.results.size();
            note_status(st.post_step(victim), status::peer_failed, "post of " + st.describe(victim, k) + " to the failed victim");
        }
        {
            patience p(std::chrono::seconds(10));
            while (st.poll(victim)) {
                p.check("posts to the failed victim to end");
                drive(b);
            }
        }
        for (std::size_t k = victim.results.size() - 4; k < victim.results.size(); ++k)
            expect_status(victim.results[k], status::peer_failed, st.describe(victim, k) + ", posted to the failed victim");
        // Kept prepared for the old peer until it has been replaced.
        const ferry::xfer stale = b.prepare(xfer_op::write, split(addr_of(victim.local), 2, stream_block),
                                            split(victim.sink, 2, stream_block), victim.p, xfer_path::ucx);
        for (int i = 0; i < 2; ++i) {
            const status posted = b.post(stale, "never sent");
            note_status(posted, status::peer_failed, "repost " + std::to_string(i) + " to the failed victim");
            if (posted == status::in_progress)
                note_status(settle(b, stale, "a post to the failed victim"), status::peer_failed,
                            "a post to the failed victim, once over");
        }
        note_status(b.send_notif(victim.p, standalone_notif("victim")), status::peer_failed,
                    "send_notif to the failed victim");
        expect_status(b.peer_status(victim.p), status::peer_failed, "peer_status of the victim, after the posts");

        // 4. The survivor is unaffected.
        for (int i = 0; i < 6; ++i) {
            st.post_step(survivor);
            st.poll_for({&survivor}, 1ms);
        }
        st.poll_for({&survivor}, 0ns);
        for (std::size_t k = 0; k < survivor.results.size(); ++k)
            expect_status(survivor.results[k], status::ok, st.describe(survivor, k));
        expect_status(b.send_notif(survivor.p, standalone_notif("survivor")), status::ok, "send_notif to the survivor");
        expect_status(b.peer_status(survivor.p), status::ok, "peer_status of the survivor at the end");

        // 5. The victim restarts; its new metadata replaces the dead peer.
        s.ch.send("restart");
        const ferry::peer dead = victim.p;
        stream_peer reborn{"victim", second_victim_id, {}, 0, 0, memory.data() + 4 * stream_region, {}, {}, {}};
        st.receive(reborn, s.ch);
        expect(reborn.p != dead, "load_remote of the restarted victim gave the dead peer's handle");
        expect(b.find_peer("victim") == reborn.p, "find_peer(\"victim\") is not the restarted victim");
        expect_status(b.peer_status(dead), status::no_such_peer, "peer_status of the replaced peer");
        expect_status(b.peer_status(reborn.p), status::ok, "peer_status of the restarted victim");
        expect_status(b.post(stale), status::no_such_peer, "post of a transfer prepared for the replaced peer");
        expect_status(b.send_notif(dead, "to the dead"), status::no_such_peer, "send_notif to the replaced peer");
        expect_status(b.release(stale), status::ok, "release of the stale transfer");
        constexpr std::size_t reborn_steps = 16;
        for (std::size_t k = 0; k < reborn_steps; ++k) {
            st.post_step(reborn);
            st.post_step(survivor);
            st.poll_for({&reborn, &survivor}, 1ms);
        }
        st.poll_for({&reborn, &survivor}, 0ns);
        for (std::size_t k = 0; k < reborn.results.size(); ++k)
            expect_status(reborn.results[k], status::ok, st.describe(reborn, k) + ", restarted");
        for (std::size_t k = 0; k < survivor.results.size(); ++k)
            expect_status(survivor.results[k], status::ok, st.describe(survivor, k));
        expect_status(b.send_notif(reborn.p, standalone_notif("victim")), status::ok,
                      "send_notif to the restarted victim");

        // 6. Both live targets check every byte written and every notification.
        s.ch.send_u64s(std::array<std::uint64_t, 2>{survivor.results.size(), reborn.results.size()});
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("verified");
        std::printf("%s: %zu of %zu transfers to the victim ended peer_failed (%zu in flight when posting stopped); "
                    "failure seen %s after the kill\n",
                    s.tls.c_str(), failed_in_stream, streamed, in_flight_after_stream,
                    ms(detected_after).c_str());
    }
    s.ch.send("bye");
    if (!problems.empty())
        fail(std::to_string(problems.size()) + " check(s) after the victim failed did not hold (listed above)");
}

// Over shm the size of the victim's receive FIFO decides what UCX 1.13 does
// with the transfers in flight when it dies. With the default 64 entries the
// stream fills it, and UCX cannot flush the dead peer's endpoint, so it
// never purges them. With 4096 it purges them, and completes their flushes
// with UCS_OK.
struct stream_variant {
    std::string tls;
    mem kind;
    bool large_fifo = false;
};

template <class Backend>
void run_stream(const stream_variant& v) {
    CAPTURE(v.tls, name_of(v.kind), v.large_fifo);
    ferry_test::run_two_process(
        v.tls, [&](side& s) { stream_initiator<Backend>(s, v.kind, v.large_fifo); },
        [&](side& s) { stream_supervisor(s, v.kind, v.large_fifo); }, std::chrono::seconds(30));
}

}  // namespace

TEST_CASE("a target killed mid-stream fails only its own transfers, and its restart is reached again (inline progress)") {
    const auto v = GENERATE(values<stream_variant>(
        {{"tcp", mem::user}, {"shm", mem::user}, {"shm", mem::user, true}, {"shm", mem::alloc}}));
    run_stream<inline_backend>(v);
}

TEST_CASE("a target killed mid-stream fails only its own transfers, and its restart is reached again (progress thread)") {
    const auto v = GENERATE(values<stream_variant>(
        {{"tcp", mem::user}, {"shm", mem::user}, {"shm", mem::user, true}, {"shm", mem::alloc}}));
    run_stream<threaded_backend>(v);
}

// ---- deadlines ---------------------------------------------------------------------

namespace {

constexpr auto test_deadline = 200ms;

// A WRITE past its deadline reports timed_out, stays busy while UCX holds
// it, and can be posted again once the target progresses and UCX lets go.
// `via_config`: the deadline comes from ucx_config::xfer_timeout instead of
// post's argument.
template <class Backend>
void deadline_initiator(side& s, bool via_config) {
    // x writes local [0, span) to sink [0, span); y writes local [span, 2 span)
    // to sink [span, 2 span) and is released once expired. Abandoned
    // operations may read the buffers until UCX lets go: they outlive the backend.
    std::vector<std::byte> local_x(cmd_span), local_y(cmd_span);
    {
        auto cfg = s.config("initiator");
        if (via_config) cfg.xfer_timeout = test_deadline;
        Backend b(cfg);
        auto region_x = b.register_memory(local_x.data(), local_x.size());
        auto region_y = b.register_memory(local_y.data(), local_y.size());
        const command_peer t = load_command_target(b, s.ch);
        const ferry::xfer x = prepare_write(b, t, local_x.data(), 0);
        const ferry::xfer y = prepare_write(b, t, local_y.data(), cmd_span);
        auto post_with_deadline = [&](ferry::xfer which, std::string_view notif) {
            return via_config ? b.post(which, notif) : b.post(which, notif, test_deadline);
        };

        // Warm-up while the target progresses: the connection and the rkey are wired up.
        s.ch.send("serve");
        fill_write(local_x.data(), 1, 0);
        ferry_test::post_and_wait(b, x, "warm-up", "the warm-up WRITE");
        await_landed(b, s.ch, 1, 0, cmd_span);
        hold(b, s.ch);

        // The target holds: the WRITEs cannot complete.
        fill_write(local_x.data(), 2, 0);
        fill_write(local_y.data(), 20, cmd_span);
        const auto t0 = steady::now();
        expect_status(post_with_deadline(x, "late"), status::in_progress, "post with a deadline");
        expect_status(post_with_deadline(y, {}), status::in_progress, "post of the second WRITE with a deadline");
        expect_status(b.check(x), status::in_progress, "check right after the post");
        status sx;
        if constexpr (threaded_v<Backend>) {
            sx = b.wait(x, 10s);
        } else {
            std::size_t checks = 0;
            do {
                sx = b.check(x);
                ++checks;
            } while (sx == status::in_progress && ms_since(t0) < 10'000);
            expect(checks > 1, "check reported the end at once");
        }
        const double ended = ms_since(t0);
        expect_status(sx, status::timed_out, threaded_v<Backend> ? "wait(x, 10s) past the deadline" : "check past the deadline");
        expect(ended >= 200, "timed_out came " + ms(ended) + " after the post, before the 200 ms deadline");
        expect(ended < 3000, "timed_out came " + ms(ended) + " after the post, for a 200 ms deadline");
        expect_status(settle(b, y, "the second WRITE's deadline"), status::timed_out, "check of the second WRITE");

        // Reported timed_out, again and again; UCX still holds the operations.
        expect_status(b.check(x), status::timed_out, "check once timed out");
        expect_status(b.wait(x, 0ns), status::timed_out, "wait(0) once timed out");
        expect_status(b.wait(x, 100ms), status::timed_out, "wait(100 ms) once timed out");
        expect_status(b.post(x), status::busy, "repost while UCX holds the expired WRITE");
        expect_status(b.post(x, "refused", 1s), status::busy, "repost with a notification and a deadline");
        {
            const auto until = steady::now() + 300ms;
            while (steady::now() < until) {
                drive(b);
                expect_status(b.post(x, "refused"), status::busy, "repost while the target still holds");
            }
        }
        expect_status(b.check(x), status::timed_out, "check after the refused reposts");
        // release is safe at any time: the expired y is freed when UCX lets go.
        expect_status(b.release(y), status::ok, "release of an expired WRITE");
        expect_status(b.check(y), status::invalid_argument, "check after release");
        expect_status(b.post(y), status::invalid_argument, "post after release");
        expect_status(b.release(y), status::invalid_argument, "second release");

        // The target progresses again: the abandoned operations finish, so
        // the data of both expired WRITEs lands.
        await_landed(b, s.ch, 2, 0, cmd_span);
        await_landed(b, s.ch, 20, cmd_span, cmd_span);
        // x's data has all landed, so UCX reads its buffer no more: refill it.
        fill_write(local_x.data(), 3, 0);
        {
            patience p(std::chrono::seconds(10));
            status posted;
            while ((posted = b.post(x, "repost")) == status::busy) {
                p.check("UCX to let go of the expired WRITE (repost busy)");
                drive(b);
            }
            expect(posted == status::in_progress || posted == status::ok,
                   "repost once UCX let go returned " + ferry_test::str(posted));
            expect_status(settle(b, x, "the repost"), status::ok, "the repost");
        }
        await_landed(b, s.ch, 3, 0, cmd_span);

        // Zero is no deadline: explicitly, even over xfer_timeout, and as
        // the default xfer_timeout.
        hold(b, s.ch);
        fill_write(local_x.data(), 4, 0);
        expect_status(via_config ? b.post(x, "no deadline", 0ns) : b.post(x, "no deadline"), status::in_progress,
                      "post without a deadline");
        {
            const auto until = steady::now() + 3 * test_deadline;
            if constexpr (threaded_v<Backend>) {
                expect_status(b.wait(x, 3 * test_deadline), status::in_progress, "wait on a post without a deadline");
            } else {
                while (steady::now() < until)
                    expect_status(b.check(x), status::in_progress, "check of a post without a deadline");
            }
        }
        await_landed(b, s.ch, 4, 0, cmd_span);
        expect_status(settle(b, x, "the post without a deadline"), status::ok, "the post without a deadline");
        // The abandoned post's notification was not recalled either; the
        // refused posts sent none.
        command(b, s.ch, "notifs warm-up|late|repost|no deadline", "notified");
        expect_status(b.release(x), status::ok, "release");
    }
    s.ch.send("bye");
}

template <class Backend>
void run_deadline(const std::string& tls, bool via_config) {
    CAPTURE(tls, via_config);
    ferry_test::run_two_process(
        tls, [&](side& s) { deadline_initiator<Backend>(s, via_config); },
        [](side& s) { command_target(s.ch, s.tls); }, std::chrono::seconds(30));
}

}  // namespace

TEST_CASE("a WRITE past its deadline reports timed_out, is busy until UCX lets go, then reposts (inline progress)") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    const bool via_config = GENERATE(false, true);
    run_deadline<inline_backend>(tls, via_config);
}

TEST_CASE("a WRITE past its deadline reports timed_out, is busy until UCX lets go, then reposts (progress thread)") {
    const auto v = GENERATE(values<std::pair<std::string, bool>>({{"shm", false}, {"tcp", true}}));
    run_deadline<threaded_backend>(v.first, v.second);
}

// Under inline progress check() drives the worker, so a loop that reposts
// an expired transfer and checks it in between ends once the target is back.
// The WRITE is one small block, which the transport takes at once: the
// target can receive all of it while the initiator does not progress.
TEST_CASE("under inline progress, checking an expired transfer lets UCX let go of it") {
    constexpr std::size_t len = 4096;
    auto initiator = [&](side& s) {
        std::vector<std::byte> local(len);
        {
            inline_backend b(s.config("initiator"));
            auto region = b.register_memory(local.data(), local.size());
            const command_peer t = load_command_target(b, s.ch);
            const ferry::xfer x = b.prepare(xfer_op::write, std::vector<ferry::desc>{region.whole()},
                                            std::vector<ferry::desc>{{t.sink, len, 0}}, t.p, xfer_path::ucx);
            s.ch.send("serve");
            ferry_test::fill_pattern(local.data(), len, 1, 0);
            ferry_test::post_and_wait(b, x, {}, "the warm-up WRITE");
            hold(b, s.ch);
            ferry_test::fill_pattern(local.data(), len, 2, 0);
            expect_status(b.post(x, {}, 100ms), status::in_progress, "post with a deadline");
            expect_status(settle(b, x, "the deadline"), status::timed_out, "past the deadline");
            // The target lands the data and acknowledges it; this side does
            // not progress until the loop below.
            s.ch.send("await 2 0 " + std::to_string(len));
            s.ch.expect_message("landed");
            patience p(std::chrono::seconds(10));
            status posted;
            while ((posted = b.post(x)) == status::busy) {
                p.check("a repost, checking the expired transfer in between, to stop being busy");
                expect_status(b.check(x), status::timed_out, "check of the expired transfer");
            }
            expect(posted == status::in_progress || posted == status::ok, "repost returned " + ferry_test::str(posted));
            expect_status(settle(b, x, "the repost"), status::ok, "the repost");
            expect_status(b.release(x), status::ok, "release");
        }
        s.ch.send("bye");
    };
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    CAPTURE(tls);
    ferry_test::run_two_process(
        tls, initiator, [](side& s) { command_target(s.ch, s.tls); }, std::chrono::seconds(30));
}

namespace {

// unload_remote of a peer with a timed-out transfer closes its endpoint by
// force, which cancels the abandoned operations without the target's help.
template <class Backend>
void unload_expired_initiator(side& s) {
    std::vector<std::byte> local(cmd_span), after(cmd_span);
    {
        Backend b(s.config("initiator"));
        auto region = b.register_memory(local.data(), local.size());
        auto after_region = b.register_memory(after.data(), after.size());
        const auto blob = s.ch.recv_bytes();
        const auto addrs = s.ch.recv_u64s();
        expect(addrs.size() == 2, "expected two addresses");
        const command_peer t{b.load_remote(blob), addrs[0], addrs[1]};
        const ferry::xfer x = prepare_write(b, t, local.data(), 0);
        s.ch.send("serve");
        fill_write(local.data(), 1, 0);
        ferry_test::post_and_wait(b, x, "warm-up", "the warm-up WRITE");
        hold(b, s.ch);

        fill_write(local.data(), 2, 0);
        expect_status(b.post(x, "abandoned", 100ms), status::in_progress, "post with a deadline");
        expect_status(settle(b, x, "the deadline"), status::timed_out, "the WRITE past its deadline");
        expect_status(b.post(x), status::busy, "repost while UCX holds the expired WRITE");
        b.unload_remote(t.p);
        expect_status(b.peer_status(t.p), status::no_such_peer, "peer_status once unloaded");
        expect(!b.find_peer("target").has_value(), "the unloaded peer is still found by name");
        // The target still holds: only the forced close can end the operations.
        {
            patience p(std::chrono::seconds(5));
            status posted;
            while ((posted = b.post(x)) == status::busy) {
                p.check("the forced close to cancel the expired WRITE (repost busy)");
                drive(b);
            }
            expect_status(posted, status::no_such_peer, "post of a transfer prepared for the unloaded peer");
        }
        expect_status(b.check(x), status::timed_out, "check of the cancelled WRITE");
        b.deregister_memory(region);  // refused if UCX still held the WRITE

        // The same peer loads again and is reached.
        const ferry::peer again = b.load_remote(blob);
        expect(again != t.p, "the reloaded peer has the old handle");
        const ferry::xfer y = prepare_write(b, command_peer{again, t.sink, t.source}, after.data(), cmd_span);
        s.ch.send("serve");
        fill_write(after.data(), 3, cmd_span);
        ferry_test::post_and_wait(b, y, "reloaded", "a WRITE to the reloaded peer");
        await_landed(b, s.ch, 3, cmd_span, cmd_span);
        expect_status(b.release(x), status::ok, "release");
        expect_status(b.release(y), status::ok, "release");
    }
    s.ch.send("bye");
}

}  // namespace

TEST_CASE("unload_remote of a peer with a timed-out transfer cancels it, and the peer loads again") {
    const auto v = GENERATE(values<std::pair<std::string, bool>>({{"shm", false}, {"tcp", false}, {"tcp", true}}));
    CAPTURE(v.first, v.second ? "progress::thread" : "progress::inline_poll");
    ferry_test::run_two_process(
        v.first,
        [&](side& s) {
            if (v.second) unload_expired_initiator<threaded_backend>(s);
            else unload_expired_initiator<inline_backend>(s);
        },
        [](side& s) { command_target(s.ch, s.tls); }, std::chrono::seconds(30));
}

// ---- deregister_memory -------------------------------------------------------------

namespace {

std::string in_use_message(const ferry::region& r, std::size_t transfers) {
    return "deregister_memory: region " + hex(addr_of(r.data())) + " (+" + std::to_string(r.size()) +
           ") is used by " + std::to_string(transfers) + " transfer(s) in flight";
}

const std::string empty_message = "deregister_memory: the region is empty (moved from or deregistered)";
const std::string foreign_message = "deregister_memory: the region was registered with another backend";

template <class Backend>
void deregister_initiator(side& s) {
    // Local memory outlives the backend: abandoned operations may touch it.
    std::vector<std::byte> both(2 * cmd_span), expiring(cmd_span), unrelated(4096), moved(4096), foreign(4096);
    {
        Backend b(s.config("initiator"));
        // [0, span): x WRITEs from it; [span, 2 span): y READs into it.
        auto region = b.register_memory(both.data(), both.size());
        auto expiring_region = b.register_memory(expiring.data(), expiring.size());
        auto unrelated_region = b.register_memory(unrelated.data(), unrelated.size());
        const command_peer t = load_command_target(b, s.ch);
        const ferry::xfer x = prepare_write(b, t, both.data(), 0);
        const ferry::xfer y = b.prepare(xfer_op::read, split(addr_of(both.data()) + cmd_span, cmd_blocks, cmd_block),
                                        split(t.source, cmd_blocks, cmd_block), t.p, xfer_path::ucx);
        const ferry::xfer e = prepare_write(b, t, expiring.data(), cmd_span);
        const ferry::xfer u = b.prepare(xfer_op::write, std::vector<ferry::desc>{unrelated_region.whole()},
                                        std::vector<ferry::desc>{{t.sink + 2 * cmd_span, unrelated.size(), 0}}, t.p,
                                        xfer_path::ucx);
        s.ch.send("serve");
        fill_write(both.data(), 1, 0);
        ferry_test::post_and_wait(b, x, {}, "the warm-up WRITE");
        hold(b, s.ch);

        // Two transfers over one region in flight: refused, and nothing changes.
        fill_write(both.data(), 2, 0);
        std::memset(both.data() + cmd_span, static_cast<int>(untouched), cmd_span);
        expect_status(b.post(x), status::in_progress, "post of the WRITE");
        expect_status(b.post(y), status::in_progress, "post of the READ");
        const auto base = region.data();
        expect_error(error_of([&] { b.deregister_memory(region); }, "deregister_memory with two transfers in flight"),
                     status::busy, in_use_message(region, 2), "deregister_memory with two transfers in flight");
        expect(region && region.data() == base && region.size() == both.size(),
               "a refused deregistration changed the region");
        // Still registered: a transfer over it can be prepared.
        const ferry::xfer q = prepare_write(b, t, both.data(), 3 * cmd_span);
        expect_status(b.release(q), status::ok, "release");
        // A region that no transfer in flight uses goes at once.
        b.deregister_memory(unrelated_region);
        expect(!unrelated_region && unrelated_region.data() == nullptr && unrelated_region.size() == 0,
               "a deregistered region is not empty");
        expect_status(b.post(u), status::not_registered, "post over a deregistered region");

        // Expired but still held by UCX: refused too.
        expect_status(b.post(e, {}, 150ms), status::in_progress, "post with a deadline");
        expect_status(settle(b, e, "the deadline"), status::timed_out, "the WRITE past its deadline");
        expect_error(error_of([&] { b.deregister_memory(expiring_region); }, "deregister_memory, expired transfer"),
                     status::busy, in_use_message(expiring_region, 1), "deregister_memory with an expired transfer");
        expect_error(error_of([&] { b.deregister_memory(region); }, "deregister_memory, second try"), status::busy,
                     in_use_message(region, 2), "deregister_memory, second try");

        // The target progresses: once the transfers are over, the regions go.
        s.ch.send("serve");
        expect_status(settle(b, x, "the WRITE"), status::ok, "the WRITE");
        expect_status(settle(b, y, "the READ"), status::ok, "the READ");
        if (auto bad = ferry_test::check_pattern(both.data() + cmd_span, cmd_span, cmd_source_seed, 0); !bad.empty())
            fail("the READ: " + bad);
        await_landed(b, s.ch, 2, 0, cmd_span);
        b.deregister_memory(region);
        expect(!region && region.data() == nullptr && region.size() == 0, "a deregistered region is not empty");
        expect_status(b.post(x), status::not_registered, "post of the WRITE over the deregistered region");
        expect_status(b.post(y), status::not_registered, "post of the READ over the deregistered region");
        auto gone = error_of([&] { static_cast<void>(prepare_write(b, t, both.data(), 0)); },
                             "prepare over a deregistered region");
        expect(gone.code_status() == status::not_registered &&
                   std::string(gone.what()).find("is not inside any registered region") != std::string::npos,
               std::string("prepare over a deregistered region: ") + gone.what());
        expect_error(error_of([&] { b.deregister_memory(region); }, "deregister_memory twice"),
                     status::invalid_argument, empty_message, "deregister_memory twice");
        {
            patience p(std::chrono::seconds(10));
            for (;;) {
                auto refused = ferry_test::error_from([&] { b.deregister_memory(expiring_region); });
                if (!refused) break;
                expect_error(*refused, status::busy, in_use_message(expiring_region, 1),
                             "deregister_memory while UCX holds the expired WRITE");
                p.check("UCX to let go of the expired WRITE (deregister_memory busy)");
                drive(b);
            }
        }
        expect_status(b.post(e), status::not_registered, "post of the expired WRITE once deregistered");
        await_landed(b, s.ch, 2, cmd_span, 0);  // a no-op that checks the target still serves

        // Empty regions: moved from, default-made, deregistered.
        auto original = b.register_memory(moved.data(), moved.size());
        ferry::region taken = std::move(original);
        expect_error(error_of([&] { b.deregister_memory(original); }, "deregister_memory of a moved-from region"),
                     status::invalid_argument, empty_message, "deregister_memory of a moved-from region");
        ferry::region none;
        expect_error(error_of([&] { b.deregister_memory(none); }, "deregister_memory of a default region"),
                     status::invalid_argument, empty_message, "deregister_memory of a default region");
        b.deregister_memory(taken);
        expect(!taken, "the moved-to region is not empty once deregistered");

        // A region of another backend.
        Backend other(s.config("other"));
        auto foreign_region = other.register_memory(foreign.data(), foreign.size());
        expect_error(error_of([&] { b.deregister_memory(foreign_region); }, "deregister_memory of another's region"),
                     status::invalid_argument, foreign_message, "deregister_memory of another backend's region");
        expect(foreign_region.data() == foreign.data(), "a refused deregistration emptied another backend's region");
        other.deregister_memory(foreign_region);
        expect(!foreign_region, "deregister_memory by its own backend left the region");

        for (auto xf : {x, y, e, u}) expect_status(b.release(xf), status::ok, "release");
    }
    s.ch.send("bye");
}

}  // namespace

TEST_CASE("deregister_memory refuses while transfers use the region, then deregisters, and names bad regions") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    CAPTURE(tls);
    ferry_test::run_two_process(
        tls, [](side& s) { deregister_initiator<inline_backend>(s); },
        [](side& s) { command_target(s.ch, s.tls); }, std::chrono::seconds(30));
}

TEST_CASE("deregister_memory refuses while transfers use the region (progress thread)") {
    ferry_test::run_two_process(
        "tcp", [](side& s) { deregister_initiator<threaded_backend>(s); },
        [](side& s) { command_target(s.ch, s.tls); }, std::chrono::seconds(30));
}

// A released transfer is still in UCX's hands until UCX lets go of it;
// deregister_memory promises that memory the caller frees next is not.
TEST_CASE("deregister_memory refuses a region used by a READ released in flight") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    CAPTURE(tls);
    std::vector<std::byte> dst(cmd_span, untouched);
    auto initiator = [&](side& s) {
        {
            inline_backend b(s.config("initiator"));
            auto region = b.register_memory(dst.data(), dst.size());
            const command_peer t = load_command_target(b, s.ch);
            const ferry::xfer r = b.prepare(xfer_op::read, split(addr_of(dst.data()), cmd_blocks, cmd_block),
                                            split(t.source, cmd_blocks, cmd_block), t.p, xfer_path::ucx);
            s.ch.send("serve");
            ferry_test::post_and_wait(b, r, {}, "the warm-up READ");
            hold(b, s.ch);
            std::memset(dst.data(), static_cast<int>(untouched), dst.size());
            expect_status(b.post(r), status::in_progress, "post of the READ");
            expect_status(b.release(r), status::ok, "release in flight");
            auto refused = ferry_test::error_from([&] { b.deregister_memory(region); });
            // Let the READ finish either way, so that the run ends cleanly.
            s.ch.send("serve");
            const auto until = steady::now() + 300ms;
            while (steady::now() < until) drive(b);
            expect(refused.has_value(),
                   "deregister_memory accepted a region that a released READ in flight still writes into");
            expect_error(*refused, status::busy, in_use_message(region, 1),
                         "deregister_memory with a released READ in flight");
            b.deregister_memory(region);
        }
        s.ch.send("bye");
    };
    ferry_test::run_two_process(
        tls, initiator, [](side& s) { command_target(s.ch, s.tls); }, std::chrono::seconds(30));
}

// ---- destroying a backend with transfers in flight ------------------------------------

namespace {

// The target role for destruction: a supervisor that relays commands to a
// command target (a grandchild) and kills it when told "kill".
void relay_supervisor(side& s) {
    const std::string tls = s.tls;
    grandchild target("target", [&](channel& up) { command_target(up, tls); });
    s.ch.send(target.ch().recv_bytes());
    s.ch.send(target.ch().recv_bytes());
    bool alive = true;
    for (;;) {
        const std::string msg = s.ch.recv();
        if (msg == "kill") {
            target.kill_now();
            alive = false;
            s.ch.send("killed");
        } else if (msg == "bye") {
            if (alive) {
                target.ch().send("bye");
                target.join();
            }
            return;
        } else {
            expect(alive, "a command for the killed target: '" + msg + "'");
            target.ch().send(msg);
            if (msg != "serve") s.ch.send(target.ch().recv_bytes());
        }
    }
}

constexpr auto destroy_close_timeout = 500ms;

template <class Backend>
void destroy_initiator(side& s, bool kill_target) {
    std::vector<std::byte> local(4 * cmd_span);  // outlives the backend
    double took = 0;
    {
        auto cfg = s.config("initiator");
        cfg.close_timeout = destroy_close_timeout;
        std::optional<Backend> b;
        b.emplace(cfg);
        auto region = b->register_memory(local.data(), local.size());
        const command_peer t = load_command_target(*b, s.ch);
        const ferry::xfer w = prepare_write(*b, t, local.data(), 0);
        const ferry::xfer r = b->prepare(xfer_op::read, split(addr_of(local.data()) + cmd_span, cmd_blocks, cmd_block),
                                         split(t.source, cmd_blocks, cmd_block), t.p, xfer_path::ucx);
        const ferry::xfer expired = prepare_write(*b, t, local.data() + 2 * cmd_span, 2 * cmd_span);
        const ferry::xfer released = prepare_write(*b, t, local.data() + 3 * cmd_span, 3 * cmd_span);
        s.ch.send("serve");
        fill_write(local.data(), 1, 0);
        ferry_test::post_and_wait(*b, w, {}, "the warm-up WRITE");
        hold(*b, s.ch);
        expect_status(b->post(w, "never seen"), status::in_progress, "post of a WRITE");
        expect_status(b->post(r), status::in_progress, "post of a READ");
        expect_status(b->post(expired, {}, 100ms), status::in_progress, "post with a deadline");
        expect_status(settle(*b, expired, "the deadline"), status::timed_out, "the WRITE past its deadline");
        expect_status(b->post(released), status::in_progress, "post of the WRITE to release");
        expect_status(b->release(released), status::ok, "release in flight");
        if (kill_target) {
            s.ch.send("kill");
            s.ch.expect_message("killed");
        }
        // A dead peer may have been found already (over tcp at once).
        const status before = b->check(w);
        expect(before == status::in_progress || (kill_target && before == status::peer_failed),
               "the WRITE just before the destruction: " + ferry_test::str(before));
        const auto t0 = steady::now();
        b.reset();
        took = ms_since(t0);
    }
    std::printf("%s: the destructor took %s\n", s.tls.c_str(), ms(took).c_str());
    expect(took < 500 + 5000, "destroying the backend took " + ms(took) + " with a close_timeout of 500 ms");
    s.ch.send("bye");
}

template <class Backend>
void run_destroy(const std::string& tls, bool kill_target) {
    CAPTURE(tls, kill_target);
    ferry_test::run_two_process(
        tls, [&](side& s) { destroy_initiator<Backend>(s, kill_target); }, relay_supervisor,
        std::chrono::seconds(30));
}

}  // namespace

TEST_CASE("destroying a backend with transfers in flight to a dead or stuck target returns (inline progress)") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    const bool kill_target = GENERATE(true, false);
    run_destroy<inline_backend>(tls, kill_target);
}

TEST_CASE("destroying a backend with transfers in flight to a dead or stuck target returns (progress thread)") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    const bool kill_target = GENERATE(true, false);
    run_destroy<threaded_backend>(tls, kill_target);
}
