// The UCX backend between two "hosts": two network namespaces joined by a
// veth pair, the target in one (end a, 10.231.7.1) and the initiator in the
// other (end b, 10.231.7.2), UCX over tcp bound to each side's veth device.
//
//  - WRITE and READ descriptor lists (4 KiB to 1 MiB blocks) and their
//    notifications cross the link intact, and did cross it: the initiator's
//    veth counted at least the bytes moved (loopback is left down, so there
//    is no other way).
//  - They still do over a delayed, lossy link: netem "delay 5ms loss 1%" as
//    the root qdisc of both ends; and, needing no netem, 1% random loss on
//    both ends from a tc bpf filter. Both check that TCP retransmitted.
//  - Taking the link down mid-stream ends every transfer in flight, and every
//    transfer posted after, with an error by its deadline; none hangs.
//  - Once the link is back, the same peer works again by itself, and so does
//    the peer unloaded and loaded again.
//
// Two more cases guard against issues this test found in ferry: load_remote
// of a peer that cannot be reached must not block for the kernel's SYN
// retries, and check() alone must let an expired transfer be reposted.
//
// Every transfer asks for xfer_path::ucx: the two namespaces share one
// kernel, and prepare's automatic choice, host_ipc, would copy through the
// peer's memory and bypass the veth link that the cases are about.
//
// Every case prints its timings. Needs root, iproute2 and network
// namespaces; the netem case needs sch_netem, the loss case clsact, cls_bpf
// and act_mirred. A case that lacks one skips, naming it.

#include <ferry/ferry.hpp>

#include <catch2/catch.hpp>

#include "support/ferry_catch.hpp"
#include "support/netns.hpp"
#include "support/pattern.hpp"
#include "support/two_process.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

using ferry::status;
using ferry::xfer_op;
using ferry::xfer_path;
using ferry_test::expect;
using ferry_test::expect_status;
using ferry_test::fail;
using ferry_test::side;
using ferry_test::str;
namespace netns = ferry_test::netns;

namespace {

using backend = ferry::ucx_backend<>;
using clock_type = std::chrono::steady_clock;

constexpr std::byte untouched{0x5A};
constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

double ms_between(clock_type::time_point from, clock_type::time_point to) {
    return std::chrono::duration<double, std::milli>(to - from).count();
}
double ms_since(clock_type::time_point t) { return ms_between(t, clock_type::now()); }

std::string fmt_ms(double ms) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f ms", ms);
    return buf;
}

std::string fmt_mib(std::uint64_t bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(bytes) / MiB);
    return buf;
}

// ---- where the blocks are ------------------------------------------------------

// One transfer: `count` blocks of `len` bytes inside its own slab of the
// initiator's region (in order) and of the target's region (scattered by a
// fixed permutation, so that neighbouring descriptors are not neighbours in
// memory), with untouched bytes around every block.
struct planned {
    std::string name;
    xfer_op op;
    std::size_t count;
    std::size_t len;
    std::size_t slab = 0;  // offset of its slab, the same in both regions
    std::size_t slab_bytes = 0;
    std::vector<std::size_t> local_at;  // block offsets within the slab
    std::vector<std::size_t> remote_at;

    [[nodiscard]] std::uint64_t bytes() const { return static_cast<std::uint64_t>(count) * len; }
    [[nodiscard]] std::string what() const { return std::string(ferry::to_string(op)) + " " + name; }

    [[nodiscard]] std::vector<ferry::desc> local_descs(const void* region) const {
        return descs(reinterpret_cast<std::uintptr_t>(region) + slab, local_at);
    }
    [[nodiscard]] std::vector<ferry::desc> remote_descs(std::uint64_t region) const {
        return descs(region + slab, remote_at);
    }

private:
    [[nodiscard]] std::vector<ferry::desc> descs(std::uint64_t base, const std::vector<std::size_t>& at) const {
        std::vector<ferry::desc> out;
        for (std::size_t off : at) out.push_back({static_cast<std::uintptr_t>(base + off), len, 0});
        return out;
    }
};

// Transfers laid out one slab after another, computed in the parent, so both
// children see the same plan.
class plan {
public:
    std::size_t add(std::string name, xfer_op op, std::size_t count, std::size_t len) {
        constexpr std::size_t gap = 96;
        planned p{std::move(name), op, count, len, 0, 0, {}, {}};
        p.slab = bytes_;
        p.slab_bytes = gap + count * (len + gap);
        for (std::size_t i = 0; i < count; ++i) {
            p.local_at.push_back(gap + i * (len + gap));
            p.remote_at.push_back(gap + ((i * 389 + 7) % count) * (len + gap));
        }
        bytes_ += (p.slab_bytes + 4095) / 4096 * 4096;
        items_.push_back(std::move(p));
        return items_.size() - 1;
    }
    [[nodiscard]] const planned& operator[](std::size_t i) const { return items_.at(i); }
    [[nodiscard]] std::size_t size() const { return items_.size(); }
    [[nodiscard]] std::size_t bytes() const { return bytes_; }
    [[nodiscard]] auto begin() const { return items_.begin(); }
    [[nodiscard]] auto end() const { return items_.end(); }

private:
    std::vector<planned> items_;
    std::size_t bytes_ = 0;
};

// Block i carries the pattern of `seed` at block i's offset in the target's
// region, on both sides, so a block that lands in the wrong place, or data
// of another round, is told apart.
void fill_blocks(std::byte* region, const planned& p, const std::vector<std::size_t>& at, std::uint64_t seed) {
    for (std::size_t i = 0; i < p.count; ++i)
        ferry_test::fill_pattern(region + p.slab + at[i], p.len, seed, p.slab + p.remote_at[i]);
}

// Empty if every block holds its pattern and every other byte of the slab
// is untouched; otherwise the first difference.
std::string verify_slab(const std::byte* region, const planned& p, const std::vector<std::size_t>& at,
                        std::uint64_t seed) {
    std::vector<std::size_t> order(at.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) { return at[x] < at[y]; });
    const std::byte* slab = region + p.slab;
    std::size_t pos = 0;
    for (std::size_t i : order) {
        if (auto e = ferry_test::check_filled(slab + pos, at[i] - pos, untouched, pos); !e.empty())
            return p.what() + ": between blocks: " + e;
        if (auto e = ferry_test::check_pattern(slab + at[i], p.len, seed, p.slab + p.remote_at[i]); !e.empty())
            return p.what() + ": descriptor " + std::to_string(i) + ": " + e;
        pos = at[i] + p.len;
    }
    if (auto e = ferry_test::check_filled(slab + pos, p.slab_bytes - pos, untouched, pos); !e.empty())
        return p.what() + ": after the last block: " + e;
    return {};
}

void clear_slab(std::byte* region, const planned& p) {
    std::memset(region + p.slab, static_cast<int>(untouched), p.slab_bytes);
}

// Distinct for every transfer and round.
std::uint64_t seed_of(std::size_t i, int round) { return 1000 + static_cast<std::uint64_t>(round) * 64 + i; }

std::string notif_of(const planned& p, int round) { return p.what() + " round " + std::to_string(round); }

// ---- the two sides ---------------------------------------------------------------

// UCX over tcp on this side's veth device only.
ferry::ucx_config config_on(const netns::end& e, std::string name) {
    ferry::ucx_config cfg;
    cfg.name = std::move(name);
    cfg.ucx_options = {{"TLS", "tcp"}, {"NET_DEVICES", e.dev}};
    return cfg;
}

void enter_or_fail(const netns::end& e) {
    if (auto err = netns::enter(e.ns); !err.empty()) fail("entering network namespace " + e.ns + ": " + err);
}

netns::link_counters counters_or_fail(const netns::end& e) {
    auto c = netns::counters(e.dev);
    if (!c) fail("no counters for " + e.dev + " in /proc/self/net/dev");
    return *c;
}

// The target: one region, published, and a loop that serves the
// initiator's requests and progresses between them (transfers over tcp are
// emulated with active messages, which land only while the target
// progresses). Requests:
//   "fill <i> <round>"   READ source: put the round's pattern in slab i;
//                        WRITE destination: clear slab i;
//   "verify <i> <round>" wait for transfer i's notification of that round,
//                        exactly once, and for a WRITE check slab i;
//   "hold" ... "resume"  stop progressing in between;
//   "bye"                return.
class target_side {
public:
    target_side(side& s, const netns::end& e, const plan& pl)
        : s_(s),
          pl_(pl),
          b_(config_on(e, "target")),
          mem_(pl.bytes()),
          region_(b_.register_memory(mem_.data(), mem_.size())) {
        std::memset(mem_.data(), static_cast<int>(untouched), mem_.size());
        s_.ch.send(b_.local_metadata());
        const std::uint64_t addr = reinterpret_cast<std::uintptr_t>(region_.data());
        s_.ch.send_u64s(std::span(&addr, 1));
    }

    void serve() {
        auto* base = static_cast<std::byte*>(region_.data());
        for (;;) {
            ferry_test::progress_until_message(b_, s_.ch);
            const std::string msg = s_.ch.recv();
            if (msg == "bye") return;
            if (msg == "hold") {
                // Not progressing; "fill" needs no progress and is still served.
                s_.ch.send("holding");
                for (std::string held = s_.ch.recv(); held != "resume"; held = s_.ch.recv())
                    if (!fill(held)) fail("unexpected request '" + held + "' while holding");
                continue;
            }
            if (fill(msg)) continue;
            auto [verb, i, round] = parse(msg);
            const planned& p = pl_[i];
            if (verb == "verify") {
                const std::string want = notif_of(p, round);
                ferry_test::patience patience;
                while (std::find(notifs_.begin(), notifs_.end(), want) == notifs_.end()) {
                    b_.poll_notifs([&](std::string_view from, std::string_view m) {
                        if (from != "initiator") fail("a notification from '" + std::string(from) + "'");
                        notifs_.emplace_back(m);
                    });
                    patience.check("the notification '" + want + "'");
                }
                if (std::count(notifs_.begin(), notifs_.end(), want) != 1)
                    fail("the notification '" + want + "' arrived more than once");
                if (p.op == xfer_op::write)
                    if (auto e = verify_slab(base, p, p.remote_at, seed_of(i, round)); !e.empty())
                        fail(e + " (round " + std::to_string(round) + ")");
                s_.ch.send("verified");
            } else {
                fail("unexpected request '" + msg + "'");
            }
        }
    }

private:
    struct request {
        std::string verb;
        std::size_t i;
        int round;
    };
    request parse(const std::string& msg) const {
        std::size_t i = 0;
        int round = 0;
        char verb[16] = {};
        if (std::sscanf(msg.c_str(), "%15s %zu %d", verb, &i, &round) != 3 || i >= pl_.size())
            fail("unexpected request '" + msg + "'");
        return {verb, i, round};
    }

    // Serves msg if it is a "fill"; false if it is not.
    bool fill(const std::string& msg) {
        if (msg.rfind("fill ", 0) != 0) return false;
        auto [verb, i, round] = parse(msg);
        const planned& p = pl_[i];
        auto* base = static_cast<std::byte*>(region_.data());
        if (p.op == xfer_op::read)
            fill_blocks(base, p, p.remote_at, seed_of(i, round));
        else
            clear_slab(base, p);
        s_.ch.send("filled");
        return true;
    }

    side& s_;
    const plan& pl_;
    backend b_;
    std::vector<std::byte> mem_;
    ferry::region region_;
    std::vector<std::string> notifs_;  // every notification received, in order
};

// The initiator: one region laid out as the plan says, the target loaded,
// one prepared transfer per planned entry.
class initiator_side {
public:
    initiator_side(side& s, const plan& pl, ferry::ucx_config cfg)
        : s_(s), pl_(pl), b_(std::move(cfg)), mem_(pl.bytes()), region_(b_.register_memory(mem_.data(), mem_.size())) {
        std::memset(mem_.data(), static_cast<int>(untouched), mem_.size());
        blob_ = s_.ch.recv_bytes();
        const auto addrs = s_.ch.recv_u64s();
        expect(addrs.size() == 1, "the target sent " + std::to_string(addrs.size()) + " addresses, expected 1");
        remote_region_ = addrs[0];
        load();
    }

    // Loads the target's metadata (again) and prepares every transfer for it.
    void load() {
        peer_ = b_.load_remote(blob_);
        xs_.clear();
        for (const planned& it : pl_)
            xs_.push_back(b_.prepare(it.op, it.local_descs(region_.data()), it.remote_descs(remote_region_), peer_,
                                     xfer_path::ucx));
    }

    backend& b() { return b_; }
    [[nodiscard]] ferry::peer peer() const { return peer_; }
    [[nodiscard]] ferry::xfer x(std::size_t i) const { return xs_.at(i); }
    [[nodiscard]] const std::vector<ferry::xfer>& all() const { return xs_; }

    // Makes transfer i ready for `round` on both sides.
    void stage(std::size_t i, int round) {
        const planned& p = pl_[i];
        if (p.op == xfer_op::write)
            fill_blocks(base(), p, p.local_at, seed_of(i, round));
        else
            clear_slab(base(), p);
        s_.ch.send("fill " + std::to_string(i) + " " + std::to_string(round));
        s_.ch.expect_message("filled");
    }

    // Posts transfer i for `round` with its notification; ok or in_progress.
    void post(std::size_t i, int round) {
        const status st = b_.post(xs_[i], notif_of(pl_[i], round));
        if (st != status::ok && st != status::in_progress)
            fail(pl_[i].what() + " round " + std::to_string(round) + ": post returned " + str(st));
    }

    // After transfer i ended ok: its READ bytes here; its notification, and
    // its WRITE bytes, at the target.
    void verify(std::size_t i, int round) {
        const planned& p = pl_[i];
        if (p.op == xfer_op::read)
            if (auto e = verify_slab(base(), p, p.local_at, seed_of(i, round)); !e.empty())
                fail(e + " (round " + std::to_string(round) + ")");
        s_.ch.send("verify " + std::to_string(i) + " " + std::to_string(round));
        s_.ch.expect_message("verified");
    }

    // Waits until every transfer of `which` has ended; fails unless each ended ok.
    void wait_ok(const std::vector<std::size_t>& which, const std::string& what) {
        std::vector<std::size_t> left = which;
        ferry_test::patience patience;
        while (!left.empty()) {
            std::erase_if(left, [&](std::size_t i) {
                const status st = b_.check(xs_[i]);
                if (st == status::in_progress) return false;
                expect_status(st, status::ok, pl_[i].what() + " (" + what + ")");
                return true;
            });
            patience.check(what + " to complete");
        }
    }

    // Stages and posts every transfer of `which` at once, waits for all to
    // end ok and verifies every byte; returns the milliseconds from the first
    // post to the last completion.
    double round_trip(const std::vector<std::size_t>& which, int round) {
        for (std::size_t i : which) stage(i, round);
        const auto start = clock_type::now();
        for (std::size_t i : which) post(i, round);
        wait_ok(which, "round " + std::to_string(round));
        const double ms = ms_since(start);
        for (std::size_t i : which) verify(i, round);
        return ms;
    }

private:
    std::byte* base() { return static_cast<std::byte*>(region_.data()); }

    side& s_;
    const plan& pl_;
    backend b_;
    std::vector<std::byte> mem_;
    ferry::region region_;
    std::vector<std::byte> blob_;
    std::uint64_t remote_region_ = 0;
    ferry::peer peer_;
    std::vector<ferry::xfer> xs_;
};

// Runs the target in namespace a and the initiator in namespace b, then
// prints what they noted (however the run ends).
void run_between(const netns::veth_pair& pair, const netns::notes& notes, const plan& pl,
                 const std::function<void(side&)>& initiator) {
    struct print_notes {
        const netns::notes& n;
        ~print_notes() {
            const std::string text = n.take();
            std::printf("%s", text.c_str());
            std::fflush(stdout);
        }
    } printer{notes};
    auto in_b = [&](side& s) {
        enter_or_fail(pair.b());
        initiator(s);
    };
    auto in_a = [&](side& s) {
        enter_or_fail(pair.a());
        target_side t(s, pair.a(), pl);
        t.serve();
    };
    ferry_test::run_two_process("tcp", in_b, in_a);
}

std::unique_ptr<netns::veth_pair> make_pair_or_skip() {
    try {
        return std::make_unique<netns::veth_pair>();
    } catch (const netns::unavailable& e) {
        ferry_test::skip(std::string("two network namespaces cannot be made here: ") + e.what());
        return nullptr;
    }
}

// ---- intact delivery --------------------------------------------------------------

// Rounds of six transfers at once, WRITE and READ of 64 x 4 KiB, 8 x 64 KiB
// and 1 x 1 MiB, each with a notification, every byte verified, and the
// initiator's veth counters compared with what moved.
void run_delivery(const netns::veth_pair& pair, const std::string& label, int rounds) {
    plan pl;
    for (xfer_op op : {xfer_op::write, xfer_op::read}) {
        pl.add("64 x 4 KiB", op, 64, 4 * KiB);
        pl.add("8 x 64 KiB", op, 8, 64 * KiB);
        pl.add("1 x 1 MiB", op, 1, MiB);
    }
    std::uint64_t written = 0, read = 0;
    for (const planned& p : pl) (p.op == xfer_op::write ? written : read) += p.bytes();
    std::vector<std::size_t> all;
    for (std::size_t i = 0; i < pl.size(); ++i) all.push_back(i);
    const netns::notes notes;

    run_between(pair, notes, pl, [&](side& s) {
        {
            const netns::end& me = pair.b();
            initiator_side in(s, pl, config_on(me, "initiator"));
            const auto before = counters_or_fail(me);
            for (int round = 0; round < rounds; ++round) {
                const double ms = in.round_trip(all, round);
                notes.write(label + ": round " + std::to_string(round) + ": 6 transfers at once, " + fmt_mib(written) +
                            " WRITE + " + fmt_mib(read) + " READ with notifications, all ok and verified, in " +
                            fmt_ms(ms));
            }
            const auto after = counters_or_fail(me);
            const std::uint64_t tx = after.tx_bytes - before.tx_bytes, rx = after.rx_bytes - before.rx_bytes;
            notes.write(label + ": the initiator's " + me.dev + " sent " + fmt_mib(tx) + " in " +
                        std::to_string(after.tx_packets - before.tx_packets) + " packets and received " + fmt_mib(rx) +
                        " in " + std::to_string(after.rx_packets - before.rx_packets) + " packets");
            const std::uint64_t n = static_cast<std::uint64_t>(rounds);
            expect(tx >= written * n, "the veth sent " + std::to_string(tx) + " bytes, fewer than the " +
                                          std::to_string(written * n) + " written: the WRITEs went another way");
            expect(rx >= read * n, "the veth received " + std::to_string(rx) + " bytes, fewer than the " +
                                       std::to_string(read * n) + " read: the READs went another way");
        }
        s.ch.send("bye");
    });
}

// Prints the TCP segments each side retransmitted; with `lossy`, checks
// that some were: the impairment did drop packets on the wire.
void report_retransmits(const netns::veth_pair& pair, const std::string& label, bool lossy) {
    const auto target = pair.tcp_retransmits(pair.a());
    const auto initiator = pair.tcp_retransmits(pair.b());
    auto text = [](const std::optional<std::uint64_t>& n) { return n ? std::to_string(*n) : std::string("?"); };
    std::printf("%s: TCP segments retransmitted: %s by the target, %s by the initiator\n", label.c_str(),
                text(target).c_str(), text(initiator).c_str());
    if (lossy && target && initiator) CHECK(*target + *initiator > 0);
}

// ---- the link goes down --------------------------------------------------------

// Deadline of every transfer in the link-down cases, and how much later than
// its deadline a transfer may report (the test polls; the machine is shared).
constexpr auto down_deadline = std::chrono::seconds(2);
constexpr auto down_margin = std::chrono::milliseconds(1500);

// same_peer_by_check: as same_peer, but waiting by check() alone, as an
// application that knows nothing of progress() would (hidden case below).
enum class reconnect { same_peer, same_peer_by_check, reload };

// Streams four 1 MiB transfers (2 WRITE, 2 READ, 16 x 64 KiB), reposting
// each as it completes and verifying every byte, then takes the target's
// end of the veth down (ip link set down). To know exactly which transfers
// are in flight at the cut, the target stops progressing just before it, so
// that nothing in flight can be acknowledged any more, and resumes right
// after: stream transfers that still complete in between (their
// acknowledgements were on the way) are verified and left out, and two more
// (WRITE and READ, 8 x 64 KiB) are posted during the hold, so that some are
// in flight for certain. Two more (4 x 64 KiB) are posted after the cut.
// Every transfer in flight at the cut or posted after must end with
// timed_out or peer_failed within its deadline plus a margin, and reposting
// one is refused (busy, or peer_failed).
//
// Then the link comes back (ip link set up), and either
//  - the same peer is used again: nothing needs doing, the TCP connections
//    survived, their retransmissions get through, and UCX completes the
//    abandoned operations; reposts are busy until then and succeed after; or
//  - the peer is unloaded (which force-closes its endpoint, as transfers to
//    it expired) and loaded again from the same metadata blob, and new
//    transfers to it complete. They use slabs of their own: the old
//    endpoint's abandoned WRITEs may still land (ferry says they may), and
//    nothing orders them against the new endpoint's transfers.
void run_link_down(const netns::veth_pair& pair, reconnect how) {
    plan pl;
    std::vector<std::size_t> stream, held, after, fresh;
    for (xfer_op op : {xfer_op::write, xfer_op::read}) {
        for (int k = 0; k < 2; ++k)
            stream.push_back(pl.add("stream " + std::to_string(k) + " (16 x 64 KiB)", op, 16, 64 * KiB));
        held.push_back(pl.add("posted during the hold (8 x 64 KiB)", op, 8, 64 * KiB));
        after.push_back(pl.add("posted after the cut (4 x 64 KiB)", op, 4, 64 * KiB));
    }
    for (xfer_op op : {xfer_op::write, xfer_op::read}) {
        fresh.push_back(pl.add("after reload (64 x 4 KiB)", op, 64, 4 * KiB));
        fresh.push_back(pl.add("after reload (1 x 1 MiB)", op, 1, MiB));
    }
    const std::string label = how == reconnect::reload ? "link down, reload" : "link down, same peer";
    const netns::notes notes;

    run_between(pair, notes, pl, [&](side& s) {
        {
            const netns::end& me = pair.b();
            const netns::end& cut_end = pair.a();
            auto cfg = config_on(me, "initiator");
            cfg.xfer_timeout = down_deadline;
            initiator_side in(s, pl, cfg);
            backend& b = in.b();
            std::vector<clock_type::time_point> posted_at(pl.size());
            std::vector<int> round(pl.size(), 0);
            auto post = [&](std::size_t i, int r) {
                round[i] = r;
                posted_at[i] = clock_type::now();
                in.post(i, r);
            };

            // The stream, until 24 transfers completed ok and verified.
            const auto stream_start = clock_type::now();
            for (std::size_t i : stream) {
                in.stage(i, 0);
                post(i, 0);
            }
            int completed = 0;
            ferry_test::patience patience;
            while (completed < 24) {
                for (std::size_t i : stream) {
                    const status st = b.check(in.x(i));
                    if (st == status::in_progress) continue;
                    expect_status(st, status::ok, pl[i].what() + " while the link is up");
                    in.verify(i, round[i]);
                    ++completed;
                    in.stage(i, round[i] + 1);
                    post(i, round[i] + 1);
                }
                patience.check("the stream");
            }
            notes.write(label + ": streamed " + std::to_string(completed) + " transfers of 1 MiB, verified, in " +
                        fmt_ms(ms_since(stream_start)));

            // The cut.
            s.ch.send("hold");
            s.ch.expect_message("holding");
            std::vector<std::size_t> done_before_cut;
            const auto hold_start = clock_type::now();
            while (clock_type::now() - hold_start < std::chrono::milliseconds(50))
                for (std::size_t i : stream)
                    if (std::find(done_before_cut.begin(), done_before_cut.end(), i) == done_before_cut.end() &&
                        b.check(in.x(i)) != status::in_progress) {
                        expect_status(b.check(in.x(i)), status::ok, pl[i].what() + " before the cut");
                        done_before_cut.push_back(i);
                    }
            std::vector<std::size_t> watched;
            for (std::size_t i : stream)
                if (std::find(done_before_cut.begin(), done_before_cut.end(), i) == done_before_cut.end())
                    watched.push_back(i);
            const std::size_t stream_in_flight = watched.size();
            // In flight for certain, whatever the stream did.
            for (std::size_t i : held) {
                in.stage(i, 0);
                post(i, 0);
                watched.push_back(i);
            }
            const auto cut = clock_type::now();
            auto r = pair.set_link(cut_end, false);
            expect(r.ok(), "ip link set down: " + r.output);
            const double cut_ms = ms_since(cut);
            s.ch.send("resume");
            for (std::size_t i : done_before_cut) in.verify(i, round[i]);
            for (std::size_t i : after) {
                in.stage(i, 0);
                round[i] = 0;
                posted_at[i] = clock_type::now();
                const status st = b.post(in.x(i), notif_of(pl[i], 0));
                expect(st == status::in_progress || st == status::peer_failed,
                       pl[i].what() + ": post returned " + str(st));
                watched.push_back(i);
            }
            const status notif_st = b.send_notif(in.peer(), "after the cut");
            expect(notif_st == status::ok || notif_st == status::peer_failed,
                   "send_notif after the cut returned " + str(notif_st));
            notes.write(label + ": cut " + cut_end.dev + " ('ip link set down' took " + fmt_ms(cut_ms) + ") with " +
                        std::to_string(stream_in_flight) + " stream transfers (" +
                        std::to_string(done_before_cut.size()) + " completed during the hold) and " +
                        std::to_string(held.size()) + " posted during the hold in flight; posted " +
                        std::to_string(after.size()) + " more after the cut; send_notif returned " + str(notif_st));

            // Every transfer watched ends with an error by its deadline.
            std::vector<std::size_t> left = watched;
            clock_type::time_point last_end = cut;
            while (!left.empty()) {
                std::erase_if(left, [&](std::size_t i) {
                    const status st = b.check(in.x(i));
                    const auto now = clock_type::now();
                    if (st == status::in_progress) {
                        if (now - posted_at[i] > down_deadline + down_margin)
                            fail(pl[i].what() + " still in progress " + fmt_ms(ms_between(posted_at[i], now)) +
                                 " after its post, its deadline " + std::to_string(down_deadline.count()) +
                                 " s: it hangs");
                        return false;
                    }
                    expect(st == status::timed_out || st == status::peer_failed,
                           pl[i].what() + " ended with " + str(st) + " after the link went down");
                    notes.write("  " + pl[i].what() + ": " + str(st) + " " + fmt_ms(ms_between(posted_at[i], now)) +
                                " after its post");
                    last_end = std::max(last_end, now);
                    return true;
                });
            }
            const status peer_st = b.peer_status(in.peer());
            expect(peer_st == status::ok || peer_st == status::peer_failed, "peer_status: " + str(peer_st));
            for (std::size_t i : watched) {
                const status st = b.post(in.x(i));
                expect(st == status::busy || st == status::peer_failed,
                       pl[i].what() + ": reposting a transfer that ended by the link going down returned " + str(st));
            }
            notes.write(label + ": every transfer ended " + fmt_ms(ms_between(cut, last_end)) +
                        " after the cut; peer_status " + str(peer_st) + "; reposts refused");

            // The link comes back.
            const auto up = clock_type::now();
            r = pair.set_link(cut_end, true);
            expect(r.ok(), "ip link set up: " + r.output);
            for (const netns::end* e : {&cut_end, &me}) {
                auto why = pair.wait_running(*e, std::chrono::seconds(5));
                expect(why.empty(), "after ip link set up: " + why);
            }
            notes.write(label + ": link up and running in " + fmt_ms(ms_since(up)));

            if (how != reconnect::reload) {
                // Nothing to do but progress: the TCP connection survived,
                // its retransmissions get through, and UCX completes the
                // abandoned operations. Until then a repost is busy.
                std::vector<std::size_t> again = watched;
                for (std::size_t i : again) in.stage(i, 200);
                std::vector<std::size_t> waiting = again;
                ferry_test::patience until_let_go(std::chrono::seconds(how == reconnect::same_peer ? 40 : 10));
                double let_go_ms = 0;
                while (!waiting.empty()) {
                    std::erase_if(waiting, [&](std::size_t i) {
                        const status st = b.post(in.x(i), notif_of(pl[i], 200));
                        if (st == status::busy) return false;
                        if (st != status::ok && st != status::in_progress)
                            fail(pl[i].what() + ": repost after the link came back returned " + str(st));
                        let_go_ms = ms_since(up);
                        return true;
                    });
                    // Neither post nor check of an expired transfer drives the worker.
                    if (how == reconnect::same_peer)
                        b.progress();
                    else
                        for (std::size_t i : waiting) static_cast<void>(b.check(in.x(i)));
                    until_let_go.check("UCX to let go of the abandoned transfers after the link came back");
                }
                in.wait_ok(again, "reposts on the same peer");
                const double ok_ms = ms_since(up);
                for (std::size_t i : again) in.verify(i, 200);
                expect_status(b.peer_status(in.peer()), status::ok, "peer_status after the link came back");
                notes.write(label + ": all " + std::to_string(again.size()) + " reposted on the same peer " +
                            fmt_ms(let_go_ms) + " after link up (when UCX let go), all ok and verified " +
                            fmt_ms(ok_ms) + " after link up");
            } else {
                const auto reload = clock_type::now();
                const ferry::peer old = in.peer();
                const std::vector<ferry::xfer> old_xs = in.all();
                b.unload_remote(old);
                const double unload_ms = ms_since(reload);
                for (std::size_t i : watched) {
                    const status st = b.post(old_xs[i]);
                    expect(st == status::no_such_peer || st == status::busy,
                           pl[i].what() + ": post to the unloaded peer returned " + str(st));
                }
                in.load();
                const double reload_ms = ms_since(reload);
                expect(in.peer() != old, "load_remote gave the unloaded peer's handle");
                const double ms = in.round_trip(fresh, 100);
                notes.write(label + ": unload_remote took " + fmt_ms(unload_ms) + ", load_remote " +
                            fmt_ms(reload_ms - unload_ms) + "; " + std::to_string(fresh.size()) +
                            " transfers to the reloaded peer ok and verified in " + fmt_ms(ms) + ", " +
                            fmt_ms(ms_since(up)) + " after link up");
                for (auto x : old_xs) expect_status(b.release(x), status::ok, "release of a transfer to the old peer");
            }
        }
        s.ch.send("bye");
    });
}

}  // namespace

TEST_CASE("between two network namespaces over a veth pair WRITE and READ lists and notifications arrive intact") {
    auto pair = make_pair_or_skip();
    if (!pair) return;
    run_delivery(*pair, "veth", 2);
    report_retransmits(*pair, "veth", false);
}

TEST_CASE("with netem delay 5ms loss 1% on both ends of the veth transfers still arrive intact") {
    auto pair = make_pair_or_skip();
    if (!pair) return;
    try {
        for (const netns::end* e : {&pair->a(), &pair->b()})
            pair->add_root_qdisc(*e, {"netem", "delay", "5ms", "loss", "1%"});
    } catch (const netns::unavailable& e) {
        ferry_test::skip(std::string("the netem qdisc is not available (the kernel needs sch_netem): ") + e.what());
        return;
    }
    run_delivery(*pair, "netem", 2);
    report_retransmits(*pair, "netem", true);
    for (const netns::end* e : {&pair->a(), &pair->b()})
        std::printf("netem: %s: %s\n", e->dev.c_str(), pair->qdisc_stats(*e).c_str());
}

TEST_CASE(
    "with 1% random loss on both ends of the veth from a tc bpf filter (no netem) transfers still arrive intact") {
    auto pair = make_pair_or_skip();
    if (!pair) return;
    try {
        for (const netns::end* e : {&pair->a(), &pair->b()}) pair->add_random_loss(*e, 1);
    } catch (const netns::unavailable& e) {
        ferry_test::skip(std::string("random loss cannot be set up (clsact, cls_bpf and act_mirred are needed): ") +
                         e.what());
        return;
    }
    run_delivery(*pair, "1% loss", 4);
    report_retransmits(*pair, "1% loss", true);
    for (const netns::end* e : {&pair->a(), &pair->b()})
        std::printf("1%% loss: %s: %s\n", e->dev.c_str(), pair->filter_stats(*e).c_str());
}

TEST_CASE(
    "taking the veth down mid-stream ends every transfer by its deadline and the same peer works once it is back") {
    auto pair = make_pair_or_skip();
    if (!pair) return;
    run_link_down(*pair, reconnect::same_peer);
}

TEST_CASE(
    "taking the veth down mid-stream ends every transfer by its deadline and a reloaded peer works once it is back") {
    auto pair = make_pair_or_skip();
    if (!pair) return;
    run_link_down(*pair, reconnect::reload);
}

// load_remote to a peer that cannot be reached must not block the caller for
// the kernel's whole SYN retry time: UCX 1.13 connects tcp endpoints with a
// blocking connect() inside ucp_ep_create unless CONN_NB is set, which ferry
// does (about 127 s with Linux's default net.ipv4.tcp_syn_retries of 6; here
// the initiator's namespace retries a SYN once, 1 s + 2 s).
TEST_CASE("load_remote of a peer behind a link that is down returns at once") {
    auto pair = make_pair_or_skip();
    if (!pair) return;
    plan pl;
    const std::size_t w = pl.add("after the link came up (8 x 64 KiB)", xfer_op::write, 8, 64 * KiB);
    const netns::notes notes;
    run_between(*pair, notes, pl, [&](side& s) {
        {
            const netns::end& me = pair->b();
            if (FILE* f = std::fopen("/proc/sys/net/ipv4/tcp_syn_retries", "w")) {
                std::fputs("1", f);
                std::fclose(f);
            }
            backend b(config_on(me, "initiator"));
            std::vector<std::byte> mem(pl.bytes());
            auto region = b.register_memory(mem.data(), mem.size());
            const auto blob = s.ch.recv_bytes();
            const auto addrs = s.ch.recv_u64s();
            auto r = pair->set_link(pair->a(), false);
            expect(r.ok(), "ip link set down: " + r.output);
            const auto start = clock_type::now();
            std::string outcome = "returned a peer";
            try {
                static_cast<void>(b.load_remote(blob));
            } catch (const ferry::error& e) {
                outcome = std::string("threw ") + e.what();
            }
            const double ms = ms_since(start);
            notes.write("load_remote with the link down " + outcome + " after " + fmt_ms(ms));
            r = pair->set_link(pair->a(), true);
            expect(r.ok(), "ip link set up: " + r.output);
            expect(ms < 500, "load_remote blocked for " + fmt_ms(ms) + " and " + outcome);
            expect(pair->wait_running(pair->a(), std::chrono::seconds(5)).empty(), "the link does not come back");
            const ferry::peer p = b.load_remote(blob);
            const ferry::xfer x = b.prepare(xfer_op::write, pl[w].local_descs(region.data()),
                                            pl[w].remote_descs(addrs.at(0)), p, xfer_path::ucx);
            ferry_test::post_and_wait(b, x, {}, "a WRITE once the link is back");
            expect_status(b.release(x), status::ok, "release");
        }
        s.ch.send("bye");
    });
}

// Under inline progress, check() of a transfer that expired drives the
// worker, so an application that waits for UCX to let go of it by checking
// and reposting (without calling progress()) gets past busy once the link
// is back and UCX completes the abandoned operations.
TEST_CASE("after the link comes back check() alone lets a reposted transfer past busy") {
    auto pair = make_pair_or_skip();
    if (!pair) return;
    run_link_down(*pair, reconnect::same_peer_by_check);
}
