// Peer events between real processes, over shared memory and TCP, under both
// progress policies and both error modes: a peer on this host that is
// SIGKILLed fails at once — the survivor's transfer in flight to it ends
// with peer_failed, it gets exactly one `failed` event naming the peer, and
// a wait_notifs blocked for a notification that will never come returns
// with the event. Unloading and a restarted process's metadata produce
// their events, and a pid that no longer names the peer's process is taken
// for a dead peer.
//
// error_mode::none is here on purpose: UCX then never reports the peer, so
// only ferry's own watch of the process can end the transfer or wake the
// wait. Under error_mode::peer either may notice first, and the event says
// which; what matters is that there is exactly one.
//
// The victim is a grandchild: the role that forks it is a supervisor that
// makes no UCX object and kills it with SIGKILL when the survivor says so.

#include <ferry/ferry.hpp>

#include <catch2/catch.hpp>

#include "support/grandchild.hpp"
#include "support/pattern.hpp"
#include "support/two_process.hpp"

#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using ferry::peer_event;
using ferry::peer_event_kind;
using ferry::peer_failure;
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

constexpr std::size_t span = 64 * 1024;

std::uintptr_t addr_of(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

double ms_since(steady::time_point t) { return std::chrono::duration<double, std::milli>(steady::now() - t).count(); }

ferry::ucx_config config_for(const std::string& tls, std::string name, ferry::error_mode mode) {
    ferry::ucx_config cfg;
    cfg.name = std::move(name);
    cfg.ucx_options = {{"TLS", tls}};
    cfg.error_handling = mode;
    // A flushing close to a dead peer (error_mode::none) waits this long.
    cfg.close_timeout = 300ms;
    return cfg;
}

template <class Backend>
void drive(Backend& b) {
    if (b.progress() == 0) ::sched_yield();
}

std::string describe(const peer_event& e) {
    return std::string(ferry::to_string(e.kind)) + " '" + e.name + "' (" + std::string(ferry::to_string(e.why)) +
           ": " + e.detail + ")";
}

std::string describe(const std::vector<peer_event>& events) {
    std::string out = std::to_string(events.size()) + " event(s):";
    for (const auto& e : events) out += " [" + describe(e) + "]";
    return out;
}

// Takes peer events until there are `n`, driving the backend.
template <class Backend>
std::vector<peer_event> take_events(Backend& b, std::size_t n, const std::string& what) {
    std::vector<peer_event> got;
    patience p(20s);
    while (got.size() < n) {
        for (auto& e : b.take_peer_events()) got.push_back(std::move(e));
        if (got.size() >= n) break;
        p.check(what + " (so far " + describe(got) + ")");
        drive(b);
    }
    return got;
}

// Drives the backend for a while and requires that no further event came:
// UCX may report the endpoint a while after the watch did, and that must
// not make a second event. An observation window, not a synchronisation.
template <class Backend>
void expect_no_more_events(Backend& b, const std::string& what) {
    const auto until = steady::now() + 300ms;
    while (steady::now() < until) drive(b);
    const auto more = b.take_peer_events();
    expect(more.empty(), what + ": more events came: " + describe(more));
}

void expect_failed_event(const peer_event& e, ferry::peer p, ferry::error_mode mode, const std::string& what) {
    expect(e.kind == peer_event_kind::failed, what + ": expected a failed event, got " + describe(e));
    expect(e.name == "victim", what + ": the event names '" + e.name + "', expected 'victim'");
    expect(e.handle == p, what + ": the event's handle is not the victim's");
    // Without peer error handling only the watch of the process can tell.
    if (mode == ferry::error_mode::none)
        expect(e.why == peer_failure::process_exited, what + ": expected process_exited, got " + describe(e));
    else
        expect(e.why == peer_failure::process_exited || e.why == peer_failure::endpoint_error,
               what + ": unexpected cause " + describe(e));
    expect(!e.detail.empty(), what + ": the event says nothing about what happened");
}

// ---- the victim and its supervisor -------------------------------------------------

// An inline backend with user memory: UCX emulates transfers to it over shm
// and tcp, so none completes while it holds. Sends its metadata and sink
// address, loads the survivor's, then answers:
//   serve      progress until the next command
//   hold       stop progressing; answers "held" and waits to be killed
//   notify M   sends notification M to the survivor; answers "sent"; serves
void victim(channel& ch, const std::string& tls, ferry::error_mode mode) {
    inline_backend b(config_for(tls, "victim", mode));
    std::vector<std::byte> sink(span, std::byte{0});
    auto region = b.register_memory(sink.data(), sink.size());
    ch.send(b.local_metadata());
    ch.send_u64s(std::array<std::uint64_t, 1>{addr_of(sink.data())});
    const ferry::peer survivor = b.load_remote(ch.recv_bytes());
    bool serving = false;
    for (;;) {
        if (serving)
            while (!ch.readable()) drive(b);
        const std::string msg = ch.recv();
        if (msg == "serve") {
            serving = true;
        } else if (msg == "hold") {
            ch.send("held");
            for (;;) (void)ch.recv();  // until killed; a closed channel fails it
        } else if (msg.rfind("notify ", 0) == 0) {
            expect_status(b.send_notif(survivor, msg.substr(7)), status::ok, "send_notif");
            ch.send("sent");
            serving = true;
        } else {
            fail("unknown command '" + msg + "'");
        }
    }
}

// Forks victims and relays between them and the survivor:
//   start     forks a victim, relays its metadata and sink address up and
//             the survivor's metadata down
//   kill      SIGKILLs the victim; answers "killed"
//   bye       returns
//   anything else goes to the victim, and its answer (if the command has
//   one) comes back.
void supervisor(side& s, ferry::error_mode mode) {
    const std::string tls = s.tls;
    std::unique_ptr<grandchild> v;
    for (;;) {
        const std::string msg = s.ch.recv();
        if (msg == "start") {
            v.reset();
            v = std::make_unique<grandchild>("victim", [&](channel& up) { victim(up, tls, mode); });
            s.ch.send(v->ch().recv_bytes());
            s.ch.send(v->ch().recv_bytes());
            v->ch().send(s.ch.recv_bytes());
        } else if (msg == "kill") {
            expect(v != nullptr, "kill without a victim");
            v->kill_now();
            s.ch.send("killed");
        } else if (msg == "bye") {
            return;
        } else {
            expect(v != nullptr, "a command without a victim: " + msg);
            v->ch().send(msg);
            if (msg != "serve") s.ch.send(v->ch().recv_bytes());
        }
    }
}

struct victim_peer {
    ferry::peer p;
    std::uint64_t sink = 0;
};

// Asks the supervisor for a new victim and loads it.
template <class Backend>
victim_peer start_victim(Backend& b, channel& ch) {
    ch.send("start");
    victim_peer v;
    v.p = b.load_remote(ch.recv_bytes());
    const auto a = ch.recv_u64s();
    expect(a.size() == 1, "the victim sent " + std::to_string(a.size()) + " addresses");
    v.sink = a[0];
    ch.send(b.local_metadata());
    return v;
}

// A command with an answer; meanwhile the survivor drives its own worker.
template <class Backend>
void command(Backend& b, channel& ch, const std::string& cmd, std::string_view answer) {
    ch.send(cmd);
    ferry_test::progress_until_message(b, ch);
    ch.expect_message(answer);
}

// ---- the victim dies with a transfer of the survivor's in flight -----------------

template <class Backend>
void survivor_with_transfer(side& s, ferry::error_mode mode) {
    {
        Backend b(config_for(s.tls, "survivor", mode));
        std::vector<std::byte> local(span);
        auto region = b.register_memory(local.data(), local.size());
        const victim_peer v = start_victim(b, s.ch);
        const ferry::desc l{addr_of(local.data()), span, 0};
        const ferry::desc r{v.sink, span, 0};
        const ferry::xfer x = b.prepare(xfer_op::write, std::span(&l, 1), std::span(&r, 1), v.p, xfer_path::ucx);
        // A first WRITE while the victim serves wires the endpoint up.
        s.ch.send("serve");
        ferry_test::post_and_wait(b, x, {}, "the warm-up WRITE");
        command(b, s.ch, "hold", "held");
        expect_status(b.post(x), status::in_progress, "the WRITE to a victim that holds");
        // Whether this UCX can finish the WRITE without the victim: UCX 1.22
        // over shm, without peer error handling, writes the peer's memory
        // itself (CMA) and completes it; then nothing is in flight at the
        // kill, and only the event and what follows are checked.
        status before = b.check(x);
        for (const auto until = steady::now() + 200ms; before == status::in_progress && steady::now() < until;)
            before = b.check(x);
        const bool in_flight = before == status::in_progress;
        if (!in_flight) {
            expect_status(before, status::ok, "the WRITE to a victim that holds, completed without it");
            std::printf("FERRY-NOTE %s, error_mode %s: this UCX completed the WRITE without the victim's progress; "
                        "nothing was in flight at the kill\n",
                        s.tls.c_str(), std::string(ferry::to_string(mode)).c_str());
        }
        expect(b.take_peer_events().empty(), "a peer event before the kill");

        s.ch.send("kill");
        s.ch.expect_message("killed");
        if (in_flight) {
            const auto t0 = steady::now();
            patience p(30s);
            status st = b.check(x);
            while (st == status::in_progress) {
                p.check("the WRITE in flight to the killed victim to end");
                ::sched_yield();
                st = b.check(x);
            }
            const double took = ms_since(t0);
            expect_status(st, status::peer_failed, "the WRITE in flight to the killed victim");
            std::printf("FERRY-NOTE %s, error_mode %s: the WRITE in flight ended peer_failed %.1f ms after the kill\n",
                        s.tls.c_str(), std::string(ferry::to_string(mode)).c_str(), took);
        }

        const auto events = take_events(b, 1, "the failed event");
        expect(events.size() == 1, "expected one event, got " + describe(events));
        expect_failed_event(events[0], v.p, mode, "the victim's death");
        std::printf("FERRY-NOTE   event: %s\n", describe(events[0]).c_str());
        std::fflush(stdout);  // the child ends with _exit
        expect_no_more_events(b, "after the failed event");
        expect_status(b.peer_status(v.p), status::peer_failed, "peer_status of the killed victim");
        expect_status(b.send_notif(v.p, "anyone?"), status::peer_failed, "send_notif to the killed victim");
        // busy while UCX still holds the WRITE, peer_failed once it let go.
        const status again = b.post(x);
        expect(again == status::busy || again == status::peer_failed,
               "a repost to the killed victim: " + ferry_test::str(again));
        // Without peer error handling UCX never gives the WRITE back (an
        // endpoint closes by force only with it), so a state released now
        // would never be freed; left unreleased, the backend frees it.
        if (mode == ferry::error_mode::peer) b.release(x);
        b.unload_remote(v.p);
        const auto unloaded = take_events(b, 1, "the unloaded event");
        expect(unloaded.size() == 1 && unloaded[0].kind == peer_event_kind::unloaded && unloaded[0].name == "victim" &&
                   unloaded[0].handle == v.p,
               "after unload_remote: " + describe(unloaded));
    }
    s.ch.send("bye");
}

// ---- the victim dies while the survivor waits for its notification ---------------

template <class Backend>
void survivor_waiting(side& s, ferry::error_mode mode) {
    {
        Backend b(config_for(s.tls, "survivor", mode));
        const victim_peer v = start_victim(b, s.ch);
        s.ch.send("serve");
        // The channel works: a notification arrives and wakes wait_notifs.
        s.ch.send("notify layer 0 ready");
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("sent");
        patience p(30s);
        ferry::notif_map got;
        while (got.empty()) {
            p.check("the notification 'layer 0 ready'");
            if (b.wait_notifs(1s)) got = b.take_notifs();
        }
        expect(got.size() == 1 && got["victim"] == std::vector<std::string>{"layer 0 ready"},
               "the notifications that came are not 'layer 0 ready' from the victim");
        command(b, s.ch, "hold", "held");

        // Kill the victim while this thread waits for "layer 1 ready", which
        // will never come. Only the channel is touched by the other thread.
        // It lets the wait begin first most of the time; if the kill comes
        // before, wait_notifs must return true at once just the same.
        std::thread killer([&] {
            std::this_thread::sleep_for(50ms);
            s.ch.send("kill");
        });
        const auto t0 = steady::now();
        const bool woke = b.wait_notifs(60s);
        const double took = ms_since(t0);
        killer.join();
        s.ch.expect_message("killed");
        expect(woke, "wait_notifs returned false after 60 s: the victim's death did not wake it");
        std::printf("FERRY-NOTE %s, error_mode %s: wait_notifs returned %.1f ms after it began (the kill ~50 ms in)\n",
                    s.tls.c_str(), std::string(ferry::to_string(mode)).c_str(), took);
        expect(b.has_peer_events(), "wait_notifs returned true, but no peer event waits");
        expect(b.take_notifs().empty(), "a notification came from the dead victim");
        const auto events = b.take_peer_events();
        expect(events.size() == 1, "expected one event, got " + describe(events));
        expect_failed_event(events[0], v.p, mode, "the victim's death");
        std::printf("FERRY-NOTE   event: %s\n", describe(events[0]).c_str());
        std::fflush(stdout);  // the child ends with _exit
        expect_no_more_events(b, "after the failed event");
        expect(!b.wait_notifs(0ns), "wait_notifs reports something with every event taken");
    }
    s.ch.send("bye");
}

// ---- restart: failed, then replaced -----------------------------------------------

template <class Backend>
void survivor_restart(side& s, ferry::error_mode mode) {
    {
        Backend b(config_for(s.tls, "survivor", mode));
        std::vector<std::byte> local(span);
        auto region = b.register_memory(local.data(), local.size());
        const victim_peer first = start_victim(b, s.ch);
        s.ch.send("serve");
        command(b, s.ch, "hold", "held");
        command(b, s.ch, "kill", "killed");
        const auto failed = take_events(b, 1, "the first victim's failed event");
        expect(failed.size() == 1, "expected one event, got " + describe(failed));
        expect_failed_event(failed[0], first.p, mode, "the first victim's death");

        // Its restart publishes new metadata under the same name.
        const victim_peer second = start_victim(b, s.ch);
        expect(second.p != first.p, "the restart got the dead victim's handle");
        const auto replaced = take_events(b, 1, "the replaced event");
        expect(replaced.size() == 1, "expected one event, got " + describe(replaced));
        const peer_event& e = replaced[0];
        expect(e.kind == peer_event_kind::replaced && e.name == "victim" && e.handle == first.p &&
                   e.replacement == second.p && e.why == peer_failure::none,
               "the restart's event: " + describe(e));
        expect_status(b.peer_status(first.p), status::no_such_peer, "the replaced handle");
        expect_status(b.peer_status(second.p), status::ok, "the restart");

        // The restart is reached: a WRITE lands.
        s.ch.send("serve");
        const ferry::desc l{addr_of(local.data()), span, 0};
        const ferry::desc r{second.sink, span, 0};
        const ferry::xfer x = b.prepare(xfer_op::write, std::span(&l, 1), std::span(&r, 1), second.p, xfer_path::ucx);
        ferry_test::post_and_wait(b, x, {}, "a WRITE to the restart");
        command(b, s.ch, "hold", "held");
        expect(b.take_peer_events().empty(), "events while the restart lives");

        // Unloading the live restart is an event too, and no failure.
        b.unload_remote(second.p);
        const auto unloaded = b.take_peer_events();
        expect(unloaded.size() == 1 && unloaded[0].kind == peer_event_kind::unloaded &&
                   unloaded[0].handle == second.p && unloaded[0].name == "victim",
               "after unload_remote: " + describe(unloaded));
        // Killing an unloaded peer is no event: it is no longer watched.
        command(b, s.ch, "kill", "killed");
        expect_no_more_events(b, "after killing the unloaded restart");
    }
    s.ch.send("bye");
}

template <class Backend>
void run(const std::string& tls, ferry::error_mode mode, void (*survivor)(side&, ferry::error_mode)) {
    CAPTURE(tls, ferry::to_string(mode));
    ferry_test::run_two_process(
        tls, [&](side& s) { survivor(s, mode); }, [&](side& s) { supervisor(s, mode); }, std::chrono::seconds(60));
}

// ---- a sender killed inside a UCX shared-memory send ----------------------------
//
// UCX's shared-memory transports (posix, sysv) give a receiver one queue for
// all its senders, and a sender takes an element before it fills and
// publishes it: one SIGKILLed in between leaves an element that never
// becomes readable, and the receiver reads nothing after it, from anyone,
// for good, though each later send completed at its sender. Notifications
// between peers on one host therefore go through ferry's mailbox, a ring
// per sender. The receiver (progress thread, so the mailbox's wake-up is
// what brings the probes in) forwards every probe over its channel; the
// supervisor forks jammers that notify it as UCX active messages as fast as
// they can and kills each after 20 to 50 ms, and after each kill two probes
// notify it once: "boxed" through the mailbox, which must always arrive, and
// "plain" as a UCX active message, whose loss shows the queue jammed.

ferry::ucx_config probe_config(const std::string& name, bool mailbox) {
    auto cfg = config_for("shm", name, ferry::error_mode::peer);
    cfg.notif_mailbox = mailbox;
    return cfg;
}

void forwarding_receiver(side& s) {
    {
        threaded_backend b(probe_config("receiver", true));
        s.ch.send(b.local_metadata());
        for (;;) {
            if (s.ch.readable()) break;
            b.wait_notifs(5ms);
            b.poll_notifs([&](std::string_view from, std::string_view msg) {
                if (from != "jammer") s.ch.send(std::string(from) + " " + std::string(msg));
            });
        }
        expect(b.dropped_notifs() == 0, "the receiver dropped " + std::to_string(b.dropped_notifs()) + " notifications");
    }
    s.ch.expect_message("bye");
}

// A process that loads the receiver and notifies it each number it is sent.
std::unique_ptr<grandchild> start_prober(const std::vector<std::byte>& blob, const std::string& name, bool mailbox) {
    auto g = std::make_unique<grandchild>(name, [blob, name, mailbox](channel& ch) {
        inline_backend b(probe_config(name, mailbox));
        const ferry::peer p = b.load_remote(blob);
        ch.send(b.uses_mailbox(p) ? "mailbox" : "ucx");
        for (;;) {
            if (!ch.readable()) {
                b.progress();
                continue;
            }
            const std::string k = ch.recv();
            if (k == "bye") return;
            expect_status(b.send_notif(p, k), status::ok, "probe " + k);
        }
    });
    g->ch().expect_message(mailbox ? "mailbox" : "ucx");
    return g;
}

void jamming_supervisor(side& s) {
    const auto blob = s.ch.recv_bytes();
    auto boxed = start_prober(blob, "boxed", true);
    auto plain = start_prober(blob, "plain", false);
    std::mt19937 rng(15);
    bool jammed = false;
    int kills = 0, after_jam = 0;
    for (; kills < 150 && after_jam < 10; ++kills) {
        {
            grandchild jammer("jammer", [blob](channel& ch) {
                inline_backend b(probe_config("jammer", false));
                const ferry::peer p = b.load_remote(blob);
                ch.send("ready");
                const std::string m(40, 'j');
                for (;;) {
                    static_cast<void>(b.send_notif(p, m));
                    b.progress();
                }
            });
            jammer.ch().expect_message("ready");
            std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 31));
            jammer.kill_now();
        }
        const std::string k = std::to_string(kills);
        boxed->ch().send(k);
        if (!jammed) plain->ch().send(k);
        bool got_boxed = false, got_plain = jammed;
        for (const auto until = steady::now() + 2s; !(got_boxed && got_plain) && steady::now() < until;) {
            if (!s.ch.readable(10)) continue;
            const std::string m = s.ch.recv();
            if (m == "boxed " + k) got_boxed = true;
            else if (m == "plain " + k) got_plain = true;
        }
        expect(got_boxed, "probe " + k + " through the mailbox did not arrive within 2 s of killing jammer " + k +
                              (jammed ? " (UCX's queue jammed before)" : ""));
        if (!got_plain) {
            jammed = true;
            std::printf("FERRY-NOTE UCX's shared-memory queue jammed at kill %d: an active message sent after it "
                        "never arrived\n",
                        kills);
        }
        if (jammed) ++after_jam;
    }
    if (jammed)
        std::printf("FERRY-NOTE %d mailbox probes arrived after the jam (%d kills in all)\n", after_jam, kills);
    else
        std::printf("FERRY-NOTE no jam in %d kills: every probe arrived both ways\n", kills);
    std::fflush(stdout);
    boxed->ch().send("bye");
    plain->ch().send("bye");
    boxed->join();
    plain->join();
    s.ch.send("bye");
}

// Senders that die leave their slots claimed: the receiver must free them,
// or a long-lived receiver runs out after 64 deaths and the rest notify it
// over UCX again. 80 senders, one after another, each SIGKILLed after it
// notified once: every one must have had a slot, and every notification
// must arrive.
void dying_senders_supervisor(side& s) {
    const auto blob = s.ch.recv_bytes();
    constexpr int senders = 80;
    for (int i = 0; i < senders; ++i) {
        const std::string k = std::to_string(i);
        grandchild sender("sender", [blob, k](channel& ch) {
            inline_backend b(probe_config("sender", true));
            const ferry::peer p = b.load_remote(blob);
            ch.send(b.uses_mailbox(p) ? "mailbox" : "ucx");
            expect_status(b.send_notif(p, k), status::ok, "notification " + k);
            ch.send("sent");
            for (;;) b.progress();
        });
        const std::string how = sender.ch().recv();
        expect(how == "mailbox", "sender " + k + " notifies over " + how + ", not through a mailbox slot");
        sender.ch().expect_message("sent");
        sender.kill_now();
        bool got = false;
        for (const auto until = steady::now() + 2s; !got && steady::now() < until;)
            if (s.ch.readable(10)) got = s.ch.recv() == "sender " + k;
        expect(got, "notification " + k + " did not arrive");
    }
    s.ch.send("bye");
}

}  // namespace

TEST_CASE("a sender killed inside a UCX shared-memory send loses no notification sent through the mailbox") {
    ferry_test::run_two_process("shm", &jamming_supervisor, &forwarding_receiver, std::chrono::seconds(90));
}

TEST_CASE("a receiver frees the mailbox slots of senders that died") {
    // About 1 s here, but 66 s on an H200 with a CUDA-enabled UCX, whose
    // initialisation in each of the 80 senders starts CUDA.
    ferry_test::run_two_process("shm", &dying_senders_supervisor, &forwarding_receiver, std::chrono::seconds(180));
}

TEST_CASE("a peer killed on this host fails its transfer in flight at once and makes one event (inline progress)") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    const auto mode = GENERATE(ferry::error_mode::peer, ferry::error_mode::none);
    run<inline_backend>(tls, mode, &survivor_with_transfer<inline_backend>);
}

TEST_CASE("a peer killed on this host fails its transfer in flight at once and makes one event (progress thread)") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    const auto mode = GENERATE(ferry::error_mode::peer, ferry::error_mode::none);
    run<threaded_backend>(tls, mode, &survivor_with_transfer<threaded_backend>);
}

TEST_CASE("a target waiting in wait_notifs for a peer killed on this host wakes with its event (inline progress)") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    const auto mode = GENERATE(ferry::error_mode::peer, ferry::error_mode::none);
    run<inline_backend>(tls, mode, &survivor_waiting<inline_backend>);
}

TEST_CASE("a target waiting in wait_notifs for a peer killed on this host wakes with its event (progress thread)") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    const auto mode = GENERATE(ferry::error_mode::peer, ferry::error_mode::none);
    run<threaded_backend>(tls, mode, &survivor_waiting<threaded_backend>);
}

TEST_CASE("a restarted peer's metadata replaces the dead one and unloading is an event (inline progress)") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    run<inline_backend>(tls, ferry::error_mode::peer, &survivor_restart<inline_backend>);
}

TEST_CASE("a restarted peer's metadata replaces the dead one and unloading is an event (progress thread)") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    run<threaded_backend>(tls, ferry::error_mode::none, &survivor_restart<threaded_backend>);
}

// ---- identity: a pid is not a process ----------------------------------------------

TEST_CASE("parse_proc_stat counts fields from the last parenthesis") {
    using ferry::detail::parse_proc_stat;
    // A command name with spaces and parentheses, as a process may choose.
    const auto st = parse_proc_stat("4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 "
                                    "987654 12345 67 18446744073709551615\n");
    CHECK(st.state == 'S');
    CHECK(st.start == 987654);
    CHECK(st.running());
    CHECK_FALSE(parse_proc_stat("4242 (zombie) Z 1 4242 4242 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0").running());
    CHECK(parse_proc_stat("4242 (cut) S 1 2 3").state == 0);
    CHECK(parse_proc_stat("no parenthesis at all").state == 0);
    CHECK(parse_proc_stat("1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12a 0 0").state == 0);

    const auto self = ferry::detail::read_proc_stat(ferry::detail::process_id());
    CHECK(self.running());
    CHECK(self.start != 0);
    CHECK(ferry::detail::process_start_time() == self.start);
}

namespace {

// This very process, as a peer under an edited identity (a loopback).
struct self_peer {
    inline_backend b{config_for("shm", "self", ferry::error_mode::peer)};

    ferry::peer load_edited(auto&& edit) {
        const auto blob = b.local_metadata();
        auto md = ferry::detail::decode_metadata(blob);
        edit(md);
        return b.load_remote(ferry::detail::encode_metadata(md));
    }
};

}  // namespace

TEST_CASE("local_metadata carries this process's start time") {
    self_peer s;
    const auto blob = s.b.local_metadata();
    const auto md = ferry::detail::decode_metadata(blob);
    CHECK(md.start_time != 0);
    CHECK(md.start_time == ferry::detail::read_proc_stat(ferry::detail::process_id()).start);
}

TEST_CASE("a pid that now names another process is a dead peer at once") {
    self_peer s;
    SECTION("the process itself: a live peer, no event") {
        const ferry::peer p = s.load_edited([](auto&) {});
        CHECK(s.b.peer_status(p) == status::ok);
        s.b.progress();
        CHECK(s.b.take_peer_events().empty());
    }
    SECTION("another start time: the pid was recycled") {
        const ferry::peer p = s.load_edited([](auto& md) { md.start_time += 1; });
        CHECK(s.b.peer_status(p) == status::peer_failed);
        const auto events = s.b.take_peer_events();
        REQUIRE(events.size() == 1);
        CHECK(events[0].kind == peer_event_kind::failed);
        CHECK(events[0].why == peer_failure::process_exited);
        CHECK(events[0].name == "self");
        CHECK(events[0].handle == p);
        CHECK_THAT(events[0].detail, Catch::Contains("now names another process"));
        // Nothing is sent to it, and it is no host_ipc peer: that would reach a stranger.
        CHECK(s.b.send_notif(p, "hello") == status::peer_failed);
    }
    SECTION("a pid whose process has exited") {
        // A child that has exited and been reaped: its pid names nothing now
        // (or, if recycled already, another process with another start time).
        std::fflush(nullptr);
        const pid_t child = ::fork();
        REQUIRE(child >= 0);
        if (child == 0) ::_exit(0);
        int ws = 0;
        REQUIRE(::waitpid(child, &ws, 0) == child);
        const ferry::peer p = s.load_edited([&](auto& md) {
            md.pid = static_cast<std::uint32_t>(child);
            md.start_time = 1;  // whatever it was, no running process has it as well as that pid
        });
        CHECK(s.b.peer_status(p) == status::peer_failed);
        const auto events = s.b.take_peer_events();
        REQUIRE(events.size() == 1);
        CHECK(events[0].why == peer_failure::process_exited);
        INFO(events[0].detail);
        CHECK(events[0].detail.find(std::to_string(child)) != std::string::npos);
    }
    SECTION("no start time (a blob from before the field): the pid alone is trusted") {
        const ferry::peer p = s.load_edited([](auto& md) { md.start_time = 0; });
        CHECK(s.b.peer_status(p) == status::ok);
        CHECK(s.b.take_peer_events().empty());
    }
    SECTION("another host: not watched, even with a pid that names nothing here") {
        const ferry::peer p = s.load_edited([](auto& md) {
            md.host_id = "another host";
            md.start_time += 1;
        });
        CHECK(s.b.peer_status(p) == status::ok);
        CHECK(s.b.take_peer_events().empty());
    }
}

// A peer that is unloaded or replaced gives its pidfd back: a process whose
// peers restart for weeks must not run out of descriptors (the soak found one
// kept per unload until the backend went).
TEST_CASE("unloading a watched peer closes its pidfd") {
    auto open_fds = [] {
        std::size_t n = 0;
        for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
        return n;
    };
    self_peer s;
    const auto blob = s.b.local_metadata();
    // One round first: UCX opens what it keeps for the life of the worker.
    s.b.unload_remote(s.b.load_remote(blob));
    s.b.progress();
    static_cast<void>(s.b.take_peer_events());
    const std::size_t before = open_fds();
    constexpr int rounds = 100;
    for (int i = 0; i < rounds; ++i) {
        const ferry::peer p = s.b.load_remote(blob);
        REQUIRE(s.b.peer_status(p) == status::ok);
        s.b.unload_remote(p);
    }
    s.b.progress();
    const auto events = s.b.take_peer_events();
    CHECK(events.size() == rounds);
    const std::size_t after = open_fds();
    INFO("open descriptors: " << before << " before " << rounds << " loads and unloads, " << after << " after");
    CHECK(after <= before + 4);
}
