// ferry-soak: a chaos soak. N agent processes, each a ucx_backend on host
// memory (even agents inline progress, odd ones a progress thread), WRITE
// and READ sequence-numbered patterns to one another, in pairs and all to
// all, while the parent kills and restarts them, stops and continues them,
// and makes them unload and reload peers. With --netns the agents live in
// two network namespaces joined by a veth pair, posing as two hosts, and the
// parent also takes the link down and up again. The parent is the
// coordinator: it relays each agent's metadata blob to the others over
// socketpairs (and a restarted agent's new blob, whose load replaces the old
// peer), injects the faults, collects counters and prints a summary. It
// exits non-zero on any violated invariant or on an agent that died of
// something it did not send (--tolerate-ucx-aborts: or that UCX aborted).
//
// Memory of agent i (a mix of allocate and register_memory, chosen per
// incarnation):
// - own:     `blocks` blocks that i writes once, at start, with the pattern
//            of (i, incarnation, seq 0, block); peers READ them and check
//            each block against the incarnation whose blob they loaded.
// - inbox:   one slot of `blocks` blocks per writer; only writer w WRITEs
//            slot w, with the pattern of (w, w's incarnation, seq, block),
//            and a notification naming them. i checks the blocks when the
//            notification arrives.
// - staging: the source of i's WRITEs, one area per peer.
// - scratch: the destination of i's READs, one area per peer.
// Inbox slots and scratch areas come in lanes (four per peer).
// At most one transfer per (initiator, peer) is in flight, so a lane is
// never reused while a transfer over it runs. A transfer that ends other
// than ok may have left operations behind that still land (timed_out:
// "abandoned, not recalled"): the agent unloads and reloads that peer, as
// the README says to, and moves on to the peer's next lane, because over
// tcp bytes already sent land even after the unload (--one-lane shows it),
// and the next transfers' bytes must stay checkable.

#include <ferry/ferry.hpp>

#include "support/netns.hpp"
#include "support/pattern.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <regex>
#include <iterator>
#include <istream>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using ferry::status;
using ferry::xfer_op;
using ferry::xfer_path;

// ---- options ---------------------------------------------------------------

struct options {
    double duration_s = 60;
    int agents = 8;
    std::uint64_t seed = 1;
    std::string tls = "shm,tcp";
    double fault_rate = 1.0;
    std::size_t block_size = 4096;
    std::size_t blocks = 16;
    int deadline_ms = 2000;
    std::string path = "mix";
    std::string ucx_log = "fatal";
    int steady = 2;
    bool one_lane = false;
    bool netns = false;
    bool tolerate_ucx_aborts = false;
    bool verbose = false;
    // Set on the command line of an agent that the parent started afresh
    // (--netns), never by hand: who it is, and its end of the control socket
    // and veth device.
    int agent_id = -1;
    std::uint32_t agent_inc = 0;
    int agent_fd = -1;
    std::string agent_device;
};

// ferry-soak's exit status when --netns cannot run here (not root, no
// namespaces): ctest reports the test skipped (SKIP_RETURN_CODE).
constexpr int exit_skipped = 77;

void usage(std::FILE* to) {
    std::fprintf(to,
                 "usage: ferry-soak [options]\n"
                 "Runs agent processes that READ and WRITE checked patterns to one another while\n"
                 "the parent kills, restarts, stops and continues them and has them reload peers;\n"
                 "exits 1 on any violated invariant or crashed agent.\n"
                 "  --duration SECONDS   how long traffic and faults run            [60]\n"
                 "  --agents N           agent processes, 2..64 (even: inline, odd: thread) [8]\n"
                 "  --seed N             seeds the fault injector and the agents     [1]\n"
                 "  --tls LIST           UCX_TLS of every agent: shm, tcp, shm,tcp   [shm,tcp]\n"
                 "  --fault-rate R       faults per second (0: none)                 [1]\n"
                 "  --steady N           agents 0..N-1 are never killed or stopped, so that their\n"
                 "                       descriptors and RSS are watched for the whole run [2]\n"
                 "  --block-size BYTES   bytes per block, a multiple of 8, >= 64     [4096]\n"
                 "  --blocks N           blocks per region slot (and per transfer at most) [16]\n"
                 "  --deadline-ms MS     deadline of every post                      [2000]\n"
                 "  --path auto|ucx|mix  transfer path: prepare's choice, UCX RMA, or each at random [mix]\n"
                 "  --ucx-log LEVEL      UCX_LOG_LEVEL where the environment sets none (UCX logs\n"
                 "                       every peer the faults break)               [fatal]\n"
                 "  --one-lane           WRITE and READ a peer's same blocks after a failed transfer\n"
                 "                       too, trusting that unloading the peer stopped what the\n"
                 "                       failed one left behind (over tcp it does not)\n"
                 "  --netns              two network namespaces joined by a veth pair, posing as two\n"
                 "                       hosts (agents 0, 2, 3, 4, 8, 10, 11, 12, ... on one side):\n"
                 "                       traffic between the sides goes over UCX tcp on the veth\n"
                 "                       (--tls must include tcp), and a quarter of the faults\n"
                 "                       take the link down for 50 ms to 3 s. Needs root and\n"
                 "                       iproute2; exits 77 where they are missing\n"
                 "  --tolerate-ucx-aborts\n"
                 "                       an agent that UCX itself aborted (its report on stderr: a\n"
                 "                       failed assertion, \"Fatal:\", or a signal whose first frame\n"
                 "                       past the handler is in libuct or libucp) counts as killed\n"
                 "                       and restarts; the summary lists them by message. Over a\n"
                 "                       flapping link UCX 1.13 and 1.22 both do this (README)\n"
                 "  --verbose            print each fault, restart and failed transfer\n"
                 "  --help               this text\n");
}

bool parse_number(std::string_view text, double& out) {
    char* end = nullptr;
    const std::string s(text);
    out = std::strtod(s.c_str(), &end);
    return !s.empty() && end == s.c_str() + s.size() && std::isfinite(out);
}

template <class T>
bool parse_int(std::string_view text, T& out) {
    auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    return ec == std::errc{} && p == text.data() + text.size();
}

std::optional<options> parse_options(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--help") {
            usage(stdout);
            std::exit(0);
        }
        if (arg == "--verbose") {
            o.verbose = true;
            continue;
        }
        if (arg == "--one-lane") {
            o.one_lane = true;
            continue;
        }
        if (arg == "--netns") {
            o.netns = true;
            continue;
        }
        if (arg == "--tolerate-ucx-aborts") {
            o.tolerate_ucx_aborts = true;
            continue;
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "ferry-soak: %s needs a value (--help lists the options)\n", argv[i]);
            return std::nullopt;
        }
        const std::string_view v = argv[++i];
        bool good = true;
        if (arg == "--duration") good = parse_number(v, o.duration_s) && o.duration_s > 0;
        else if (arg == "--agents") good = parse_int(v, o.agents) && o.agents >= 2 && o.agents <= 64;
        else if (arg == "--seed") good = parse_int(v, o.seed);
        else if (arg == "--tls") good = !(o.tls = v).empty();
        else if (arg == "--fault-rate") good = parse_number(v, o.fault_rate) && o.fault_rate >= 0;
        else if (arg == "--block-size")
            good = parse_int(v, o.block_size) && o.block_size >= 64 && o.block_size % 8 == 0 &&
                   o.block_size <= (16u << 20);
        else if (arg == "--blocks") good = parse_int(v, o.blocks) && o.blocks >= 1 && o.blocks <= 4096;
        else if (arg == "--steady") good = parse_int(v, o.steady) && o.steady >= 0;
        else if (arg == "--deadline-ms") good = parse_int(v, o.deadline_ms) && o.deadline_ms > 0;
        else if (arg == "--path") good = (o.path = v) == "auto" || o.path == "ucx" || o.path == "mix";
        else if (arg == "--ucx-log") good = !(o.ucx_log = v).empty();
        else if (arg == "--agent-id") good = parse_int(v, o.agent_id) && o.agent_id >= 0;
        else if (arg == "--agent-incarnation") good = parse_int(v, o.agent_inc);
        else if (arg == "--agent-fd") good = parse_int(v, o.agent_fd) && o.agent_fd >= 0;
        else if (arg == "--agent-device") good = !(o.agent_device = v).empty();
        else {
            std::fprintf(stderr, "ferry-soak: unknown option %s (--help lists them)\n", argv[i]);
            return std::nullopt;
        }
        if (!good) {
            std::fprintf(stderr, "ferry-soak: bad value '%s' for %s (--help says what it takes)\n", argv[i],
                         argv[i - 1]);
            return std::nullopt;
        }
    }
    if (o.agent_id >= o.agents || (o.agent_id >= 0 && (o.agent_fd < 0 || o.agent_device.empty()))) {
        std::fprintf(stderr, "ferry-soak: --agent-* are set by ferry-soak for its agents only\n");
        return std::nullopt;
    }
    if (o.netns && o.tls.find("tcp") == std::string::npos && o.tls != "all") {
        std::fprintf(stderr, "ferry-soak: --netns needs tcp in --tls: the two sides reach each other only over tcp\n");
        return std::nullopt;
    }
    return o;
}

// Which side of the veth agent `id` lives on under --netns: the pairs
// 0-1, 4-5, 8-9, ... straddle the link and the pairs 2-3, 6-7, ... keep to one
// side, so that both sides hold inline and threaded agents and both kinds of
// pair run during the pairs phase.
int side_of(int id) { return id % 4 < 2 ? id % 2 : (id / 4) % 2; }

// Where one side's agents go under --netns.
struct placement {
    std::string ns;
    std::string dev;
    std::string boot_id_file;  // empty on the side that keeps the real boot id
};

// The command line ferry-soak was started with: --netns agents run it
// again, with --agent-* added.
char** program_argv = nullptr;

// ---- patterns ----------------------------------------------------------------

// Every 8-byte word of a block is a function of (who wrote it, that
// writer's incarnation, seq, the block's position in its slot, the word's
// index): the first three words spell out the identity, so that a wrong
// block says whose it is.
constexpr std::uint64_t block_magic = 0x4645525259534f4bULL;  // "FERRYSOK"

std::uint64_t expected_word(std::uint32_t who, std::uint32_t inc, std::uint64_t seq, std::uint64_t pos,
                            std::size_t i) noexcept {
    switch (i) {
        case 0: return block_magic ^ (std::uint64_t{who} << 32) ^ pos;
        case 1: return inc;
        case 2: return seq;
        default: break;
    }
    const std::uint64_t seed = ferry_test::mix(ferry_test::mix(who, inc), ferry_test::mix(seq, pos));
    return ferry_test::mix(seed, i);
}

void fill_block(std::byte* p, std::size_t block_size, std::uint32_t who, std::uint32_t inc, std::uint64_t seq,
                std::uint64_t pos) noexcept {
    for (std::size_t i = 0; i < block_size / 8; ++i) {
        const std::uint64_t w = expected_word(who, inc, seq, pos, i);
        std::memcpy(p + 8 * i, &w, 8);
    }
}

// A set of sequence numbers kept as runs [first, last]: the ledgers of ok
// WRITEs and of notifications hold millions of numbers in a long run, and
// would otherwise grow the agents' own memory by tens of MiB an hour, which
// the RSS invariant would blame on ferry.
class seq_ledger {
public:
    /// False if `seq` is in the ledger already.
    bool insert(std::uint64_t seq) {
        auto next = runs_.upper_bound(seq);  // first run starting after seq
        if (next != runs_.begin()) {
            auto prev = std::prev(next);
            if (seq <= prev->second) return false;
            if (prev->second + 1 == seq) {
                prev->second = seq;
                if (next != runs_.end() && next->first == seq + 1) {
                    prev->second = next->second;
                    runs_.erase(next);
                }
                ++count_;
                return true;
            }
        }
        if (next != runs_.end() && next->first == seq + 1) {
            const std::uint64_t last = next->second;
            runs_.erase(next);
            runs_.emplace(seq, last);
        } else {
            runs_.emplace(seq, seq);
        }
        ++count_;
        return true;
    }

    [[nodiscard]] bool contains(std::uint64_t seq) const {
        auto next = runs_.upper_bound(seq);
        return next != runs_.begin() && seq <= std::prev(next)->second;
    }

    void clear() {
        runs_.clear();
        count_ = 0;
    }
    [[nodiscard]] std::uint64_t size() const noexcept { return count_; }

    /// " first-last first-last ...", as parse reads it.
    [[nodiscard]] std::string text() const {
        std::string out;
        for (const auto& [first, last] : runs_) {
            out += ' ';
            out += std::to_string(first);
            out += '-';
            out += std::to_string(last);
        }
        return out;
    }
    static bool parse(std::istream& in, seq_ledger& out) {
        std::string run;
        while (in >> run) {
            const auto dash = run.find('-');
            std::uint64_t first = 0, last = 0;
            if (dash == std::string::npos || !parse_int(std::string_view(run).substr(0, dash), first) ||
                !parse_int(std::string_view(run).substr(dash + 1), last) || last < first)
                return false;
            for (std::uint64_t s = first; s <= last; ++s)
                if (!out.insert(s)) return false;
        }
        return true;
    }

    /// Calls f(seq) for each number in this ledger that `other` lacks.
    template <class F>
    void for_each_missing_from(const seq_ledger& other, F&& f) const {
        for (const auto& [first, last] : runs_)
            for (std::uint64_t s = first; s <= last; ++s)
                if (!other.contains(s)) f(s);
    }

private:
    std::map<std::uint64_t, std::uint64_t> runs_;  // first -> last
    std::uint64_t count_ = 0;
};

std::string hex(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
    return buf;
}

enum class verdict { intact, superseded, bad };

// Judges a copy of a WRITE's block when its notification arrives. Later
// WRITEs of the same writer may already have landed over it, or be landing
// (the writer posts seq+1 as soon as seq completed, which may be long before
// this agent gets to the notification), and a copy in flight tears words at
// any byte (UCX's active-message fragments, the kernel's copies): a block
// whose every byte is the byte of seq or of a later WRITE at that place was
// overwritten, not corrupted. Later means up to later_window past seq or
// past the seq in the block's header, or any WRITE of a later incarnation of
// the writer that the header names: a notification may come hundreds of
// WRITEs late, even after its writer was killed and restarted (host_ipc
// lands the data inside post, and a stopped target's queue holds the
// notifications), and the header itself may be many WRITEs old where this
// agent was preempted while it copied the block (seen: header seq 2614, a
// word of seq 2685, with six agents on two cores). Anything else, older data
// included (the notification came before its data), is bad.
constexpr std::uint64_t later_window = 4096;
verdict judge_block(const std::vector<std::uint64_t>& words, std::uint32_t who, std::uint32_t inc,
                    std::uint64_t seq, std::uint64_t pos, std::string& why) {
    const std::size_t n = words.size();
    struct family {
        std::uint32_t inc;
        std::uint64_t first, last;  // seqs
    };
    std::vector<family> families{{inc, seq + 1, seq + later_window}};
    if (n > 2 && words[1] == inc && words[2] > seq && words[2] - seq < (1u << 24))
        families[0].last = words[2] + later_window;
    if (n > 2 && words[1] > inc && words[1] - inc < (1u << 16) && words[2] < (1u << 24))
        families.push_back({static_cast<std::uint32_t>(words[1]), 1, words[2] + later_window});
    std::vector<std::pair<std::uint32_t, std::uint64_t>> found{{inc, seq}};  // (incarnation, seq) in the block
    auto byte_of = [](std::uint64_t w, unsigned b) { return (w >> (8 * b)) & 0xffu; };
    // Whether `part` (a whole word, or one of its bytes) is some WRITE's,
    // adding the later one it first finds.
    auto explained = [&](std::size_t i, auto&& same) {
        for (auto [fi, fs] : found)
            if (same(expected_word(who, fi, fs, pos, i))) return true;
        for (const family& f : families)
            for (std::uint64_t s = f.first; s <= f.last; ++s)
                if (same(expected_word(who, f.inc, s, pos, i))) {
                    found.emplace_back(f.inc, s);
                    return true;
                }
        return false;
    };
    for (std::size_t i = 0; i < n; ++i) {
        if (explained(i, [&](std::uint64_t want) { return words[i] == want; })) continue;
        bool torn = true;
        for (unsigned b = 0; b < 8 && torn; ++b)
            torn = explained(i, [&](std::uint64_t want) { return byte_of(words[i], b) == byte_of(want, b); });
        if (torn) continue;
        why = "word " + std::to_string(i) + " is " + hex(words[i]) + ", expected " +
              hex(expected_word(who, inc, seq, pos, i)) + "; the block's header says writer " +
              std::to_string((words[0] ^ block_magic) >> 32) + " incarnation " + std::to_string(words[1]) +
              " seq " + std::to_string(words[2]) + " position " +
              std::to_string((words[0] ^ block_magic) & 0xffffffffu);
        return verdict::bad;
    }
    return found.size() == 1 ? verdict::intact : verdict::superseded;
}

// ---- framing over the control sockets ---------------------------------------

// A frame is a u32 length (of what follows), a type byte and a payload.
enum class frame : char {
    hello = 'H',         // agent: u64 own address, u64 inbox address, its blob
    report = 'R',        // agent: counters, text
    final_report = 'F',  // agent: counters and the notification ledger, text
    violation = 'V',     // agent: one violated invariant, text
    info = 'I',          // agent: something --verbose prints (a failed transfer, a refused load)
    peer_blob = 'P',     // parent: u32 id, u32 incarnation, u64 own, u64 inbox, the blob
    unload_reload = 'U', // parent: u32 id of the peer to unload and load again
    quiesce = 'Q',       // parent: post nothing more
    send_final = 'S',    // parent: send the final report
    exit_now = 'X',      // parent: tear down and exit
};

std::string make_frame(frame type, std::string_view payload) {
    std::string out(5, '\0');
    const auto len = static_cast<std::uint32_t>(payload.size() + 1);
    std::memcpy(out.data(), &len, 4);
    out[4] = static_cast<char>(type);
    out.append(payload);
    return out;
}

// Takes one whole frame off the front of `in`, if there is one.
std::optional<std::pair<frame, std::string>> next_frame(std::string& in) {
    if (in.size() < 4) return std::nullopt;
    std::uint32_t len = 0;
    std::memcpy(&len, in.data(), 4);
    if (len == 0 || in.size() < 4 + std::size_t{len}) return std::nullopt;
    auto type = static_cast<frame>(in[4]);
    std::string payload = in.substr(5, len - 1);
    in.erase(0, 4 + std::size_t{len});
    return std::pair{type, std::move(payload)};
}

template <class T>
void put(std::string& out, T v) {
    out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

template <class T>
T get(std::string_view& in) {
    T v{};
    if (in.size() < sizeof v) return v;
    std::memcpy(&v, in.data(), sizeof v);
    in.remove_prefix(sizeof v);
    return v;
}

// Reads what is there without blocking; false once the other end is gone.
bool read_available(int fd, std::string& in) {
    char buf[65536];
    for (;;) {
        ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            in.append(buf, static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
        return false;
    }
}

// The agent's side writes blocking: the parent always reads.
void send_blocking(int fd, const std::string& bytes) {
    std::size_t off = 0;
    while (off < bytes.size()) {
        ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += static_cast<std::size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            pollfd p{fd, POLLOUT, 0};
            ::poll(&p, 1, 100);
            continue;
        }
        return;  // the parent is gone; the agent ends when it notices
    }
}

// ---- what a process uses ---------------------------------------------------

std::size_t open_fds() {
    std::size_t n = 0;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        while (const dirent* e = ::readdir(d))
            if (e->d_name[0] != '.') ++n;
        ::closedir(d);
        if (n > 0) --n;  // the directory's own descriptor
    }
    return n;
}

std::uint64_t rss_bytes() {
    std::FILE* f = std::fopen("/proc/self/statm", "r");
    if (!f) return 0;
    unsigned long long size = 0, resident = 0;
    const int got = std::fscanf(f, "%llu %llu", &size, &resident);
    std::fclose(f);
    return got == 2 ? resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)) : 0;
}

// ---- the agent -------------------------------------------------------------

using inline_backend = ferry::ucx_backend<ferry::policy<ferry::progress::inline_poll, ferry::memory::host>>;
using thread_backend = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::host>>;

std::string agent_name(int id) { return "agent-" + std::to_string(id); }

struct remote_agent {
    bool known = false;
    std::uint32_t inc = 0;
    std::uint64_t own_addr = 0;
    std::uint64_t inbox_addr = 0;
    std::vector<std::byte> blob;
    bool loaded = false;
    ferry::peer handle;
    bool needs_reload = false;
    steady::time_point reload_at{};
    bool in_flight = false;
    std::uint64_t next_seq = 1;             // WRITE seqs to this incarnation
    std::size_t lane = 0;                   // see agent::lanes
    seq_ledger ok_seqs;                     // WRITEs to this incarnation that ended ok
};

struct flight {
    ferry::xfer x;
    int to = 0;
    ferry::peer handle;
    xfer_op op = xfer_op::write;
    xfer_path path = xfer_path::automatic;
    std::uint32_t tinc = 0;
    std::uint64_t seq = 0;
    std::size_t lane = 0;
    std::vector<std::uint64_t> remote_blocks;  // READ: the peer's own blocks, in local order
    std::uint64_t bytes = 0;
    steady::time_point posted{};
    steady::time_point deadline{};
    bool reported_stuck = false;
};

struct memory_block {
    void operator()(std::byte* p) const noexcept { std::free(p); }
};

template <class Backend>
class agent {
public:
    agent(const options& o, int id, std::uint32_t inc, int fd, std::string net_device)
        : o_(o), id_(id), inc_(inc), fd_(fd), net_device_(std::move(net_device)), rng_(ferry_test::mix(ferry_test::mix(o.seed, id), inc)),
          peers_(static_cast<std::size_t>(o.agents)) {}

    int run();

private:
    // A failed transfer may leave operations behind that land later, even
    // after the peer was unloaded (bytes already in a tcp socket): the next
    // transfers to that peer use the next lane, other blocks, so that what
    // they carry can be checked.
    std::size_t lanes() const { return o_.one_lane ? 1 : 4; }
    std::size_t slot_bytes() const { return o_.blocks * o_.block_size; }
    std::size_t area_bytes() const { return slot_bytes() * lanes() * static_cast<std::size_t>(o_.agents); }

    ferry::region make_region(Backend& b, std::size_t len, bool use_allocate, std::unique_ptr<std::byte, memory_block>& own) {
        if (use_allocate) return b.allocate(len);
        own.reset(static_cast<std::byte*>(std::aligned_alloc(4096, (len + 4095) / 4096 * 4096)));
        if (!own) throw std::bad_alloc();
        std::memset(own.get(), 0, len);
        return b.register_memory(own.get(), len);
    }

    void count(const std::string& key, std::uint64_t n = 1) { counters_[key] += n; }

    void violation(const std::string& what) {
        count("violations");
        send_blocking(fd_, make_frame(frame::violation, agent_name(id_) + " (incarnation " + std::to_string(inc_) +
                                                            ", " + (is_threaded() ? "thread" : "inline") + "): " + what));
    }

    void info(const std::string& what) {
        if (o_.verbose) send_blocking(fd_, make_frame(frame::info, agent_name(id_) + " (incarnation " + std::to_string(inc_) + "): " + what));
    }

    static constexpr bool is_threaded() { return ferry::is_threaded_v<typename Backend::policy_type>; }

    std::string counters_text() const {
        std::string out;
        for (const auto& [k, v] : counters_) out += k + " " + std::to_string(v) + "\n";
        return out;
    }

    void handle_control(Backend& b);
    void load(Backend& b, int id);
    void post_one(Backend& b, int to);
    void finish(Backend& b, flight& f, status s);
    void on_notif(std::string_view from, std::string_view msg);
    void on_peer_event(const ferry::peer_event& e);
    void sample_usage(bool final_sample);

    const options& o_;
    int id_;
    std::uint32_t inc_;
    int fd_;
    std::string net_device_;  // the veth under --netns, else empty
    std::mt19937_64 rng_;
    std::vector<remote_agent> peers_;
    std::vector<flight> flights_;
    std::map<std::string, std::uint64_t> counters_;
    // Notifications seen, per writer: its incarnation and the seqs.
    std::map<int, std::pair<std::uint32_t, seq_ledger>> seen_;
    std::string in_;
    bool quiesced_ = false;
    bool exit_ = false;
    bool final_asked_ = false;
    std::byte* own_ = nullptr;
    std::byte* inbox_ = nullptr;
    std::byte* staging_ = nullptr;
    std::byte* scratch_ = nullptr;
    std::vector<std::uint64_t> words_;
    steady::time_point started_ = steady::now();
    steady::time_point next_sample_ = steady::now() + 10s;  // after warm-up
    std::size_t base_fds_ = 0, last_fds_ = 0, max_fds_ = 0;
    std::uint64_t base_rss_ = 0, last_rss_ = 0, max_rss_ = 0;
    bool have_base_ = false, fd_growth_reported_ = false, rss_growth_reported_ = false;
};

template <class Backend>
void agent<Backend>::load(Backend& b, int id) {
    remote_agent& r = peers_[static_cast<std::size_t>(id)];
    r.needs_reload = false;
    try {
        r.handle = b.load_remote(r.blob);
        r.loaded = true;
        count("loads");
    } catch (const ferry::error& e) {
        // A restarted peer's blob may describe a process that is already
        // dead again; the next blob or the retry loads it.
        count("load_errors." + std::string(ferry::to_string(e.code_status())));
        info(std::string("load_remote of ") + agent_name(id) + " threw: " + e.what());
        r.loaded = false;
        r.needs_reload = true;
        r.reload_at = steady::now() + 500ms;
    }
}

template <class Backend>
void agent<Backend>::handle_control(Backend& b) {
    if (!read_available(fd_, in_)) {
        exit_ = true;  // the parent is gone
        return;
    }
    while (auto f = next_frame(in_)) {
        std::string_view p = f->second;
        switch (f->first) {
            case frame::peer_blob: {
                const auto id = static_cast<int>(get<std::uint32_t>(p));
                const auto inc = get<std::uint32_t>(p);
                if (id == id_ || id < 0 || id >= o_.agents) break;
                remote_agent& r = peers_[static_cast<std::size_t>(id)];
                if (!r.known || r.inc != inc) {
                    r.next_seq = 1;
                    r.lane = 0;
                    r.ok_seqs.clear();
                }
                r.known = true;
                r.inc = inc;
                r.own_addr = get<std::uint64_t>(p);
                r.inbox_addr = get<std::uint64_t>(p);
                const auto* bytes = reinterpret_cast<const std::byte*>(p.data());
                r.blob.assign(bytes, bytes + p.size());
                load(b, id);
                break;
            }
            case frame::unload_reload: {
                const auto id = static_cast<int>(get<std::uint32_t>(p));
                if (id == id_ || id < 0 || id >= o_.agents) break;
                remote_agent& r = peers_[static_cast<std::size_t>(id)];
                if (!r.loaded) break;
                count("unload_reloads");
                try {
                    b.unload_remote(r.handle);
                } catch (const ferry::error& e) {
                    violation("unload_remote of a loaded peer threw: " + std::string(e.what()));
                }
                r.loaded = false;
                load(b, id);
                break;
            }
            case frame::quiesce: quiesced_ = true; break;
            case frame::send_final: final_asked_ = true; break;
            case frame::exit_now: exit_ = true; break;
            default: violation("unknown control frame"); break;
        }
    }
}

template <class Backend>
void agent<Backend>::post_one(Backend& b, int to) {
    remote_agent& r = peers_[static_cast<std::size_t>(to)];
    const std::size_t bs = o_.block_size;
    const std::size_t k = 1 + rng_() % o_.blocks;
    const xfer_op op = (rng_() & 1) ? xfer_op::write : xfer_op::read;
    xfer_path path = xfer_path::automatic;
    if (o_.path == "ucx" || (o_.path == "mix" && (rng_() & 1))) path = xfer_path::ucx;

    // The local side: k blocks of this peer's area at scattered positions, so
    // that a list is several descriptors and coalescing has runs to find.
    std::vector<std::size_t> positions(o_.blocks);
    std::iota(positions.begin(), positions.end(), std::size_t{0});
    std::shuffle(positions.begin(), positions.end(), rng_);
    positions.resize(k);
    std::byte* area =
        (op == xfer_op::write ? staging_ : scratch_) + (static_cast<std::size_t>(to) * lanes() + r.lane) * slot_bytes();

    flight f;
    f.to = to;
    f.handle = r.handle;
    f.op = op;
    f.path = path;
    f.tinc = r.inc;
    f.lane = r.lane;
    f.bytes = k * bs;
    std::vector<ferry::desc> local, remote;
    std::string notif;
    if (op == xfer_op::write) {
        f.seq = r.next_seq++;
        const std::size_t first = rng_() % (o_.blocks - k + 1);
        for (std::size_t j = 0; j < k; ++j) {
            std::byte* src = area + positions[j] * bs;
            fill_block(src, bs, static_cast<std::uint32_t>(id_), inc_, f.seq, first + j);
            local.push_back({reinterpret_cast<std::uintptr_t>(src), bs, 0});
            remote.push_back(
                {r.inbox_addr + ((static_cast<std::size_t>(id_) * lanes() + r.lane) * o_.blocks + first + j) * bs, bs,
                 0});
        }
        notif = "w " + std::to_string(id_) + " " + std::to_string(inc_) + " " + std::to_string(r.inc) + " " +
                std::to_string(f.seq) + " " + std::to_string(first) + " " + std::to_string(k) + " " + std::to_string(r.lane);
    } else {
        std::vector<std::uint64_t> blocks(o_.blocks);
        std::iota(blocks.begin(), blocks.end(), std::uint64_t{0});
        std::shuffle(blocks.begin(), blocks.end(), rng_);
        blocks.resize(k);
        // Sorted now and then, so that remote runs coalesce too.
        if (rng_() & 1) std::sort(blocks.begin(), blocks.end());
        std::sort(positions.begin(), positions.end());
        for (std::size_t j = 0; j < k; ++j) {
            std::byte* dst = area + positions[j] * bs;
            // What a READ that reported ok without moving anything would leave.
            std::memset(dst, 0xEE, bs);
            local.push_back({reinterpret_cast<std::uintptr_t>(dst), bs, 0});
            remote.push_back({r.own_addr + blocks[j] * bs, bs, 0});
        }
        f.remote_blocks = std::move(blocks);
        for (std::size_t j = 0; j < k; ++j) f.remote_blocks.push_back(positions[j]);
    }

    try {
        f.x = b.prepare(op, local, remote, r.handle, ferry::xfer_options{.path = path});
    } catch (const ferry::error& e) {
        // A peer that failed, was unloaded or replaced a moment ago.
        count("prepare_errors." + std::string(ferry::to_string(e.code_status())));
        if (e.code_status() == status::invalid_argument) violation("prepare refused a valid list: " + std::string(e.what()));
        if (e.code_status() == status::peer_failed || e.code_status() == status::no_such_peer) {
            r.needs_reload = true;
            r.reload_at = steady::now() + 1s;
        }
        return;
    }
    f.posted = steady::now();
    f.deadline = f.posted + std::chrono::milliseconds(o_.deadline_ms);
    const status s = b.post(f.x, notif, std::chrono::milliseconds(o_.deadline_ms));
    count(std::string(op == xfer_op::write ? "write" : "read") + ".posts");
    if (s == status::in_progress) {
        r.in_flight = true;
        flights_.push_back(std::move(f));
        return;
    }
    finish(b, f, s);
}

template <class Backend>
void agent<Backend>::finish(Backend& b, flight& f, status s) {
    remote_agent& r = peers_[static_cast<std::size_t>(f.to)];
    r.in_flight = false;
    const std::string op = f.op == xfer_op::write ? "write" : "read";
    count(op + "." + std::string(ferry::to_string(s)));
    const bool current = r.loaded && r.handle == f.handle;
    if (s == status::ok) {
        count(op + ".bytes", f.bytes);
        if (!net_device_.empty() && side_of(f.to) != side_of(id_)) count(op + ".bytes_across", f.bytes);
        count(op + ".path." + std::string(ferry::to_string(b.path_of(f.x))));
        if (f.op == xfer_op::write) {
            if (r.inc == f.tinc) r.ok_seqs.insert(f.seq);
        } else {
            const std::size_t k = f.remote_blocks.size() / 2;
            std::byte* area = scratch_ + (static_cast<std::size_t>(f.to) * lanes() + f.lane) * slot_bytes();
            for (std::size_t j = 0; j < k; ++j) {
                const std::byte* got = area + f.remote_blocks[k + j] * o_.block_size;
                words_.resize(o_.block_size / 8);
                std::memcpy(words_.data(), got, o_.block_size);
                std::string why;
                const std::uint64_t pos = f.remote_blocks[j];
                if (judge_block(words_, static_cast<std::uint32_t>(f.to), f.tinc, 0, pos, why) != verdict::intact) {
                    violation("READ from " + agent_name(f.to) + " (incarnation " + std::to_string(f.tinc) + ", path " +
                              std::string(ferry::to_string(b.path_of(f.x))) + ") reported ok, but block " +
                              std::to_string(j) + " (its block " + std::to_string(pos) + ") is wrong: " + why);
                    break;
                }
            }
        }
    } else {
        info(op + (f.op == xfer_op::write ? " seq " + std::to_string(f.seq) : std::string()) + " to " +
             agent_name(f.to) + " (incarnation " + std::to_string(f.tinc) + ", path " +
             std::string(ferry::to_string(b.path_of(f.x))) + ") ended " + std::string(ferry::to_string(s)));
    }
    if (s != status::ok && r.inc == f.tinc && r.lane == f.lane) r.lane = (r.lane + 1) % lanes();
    if (s != status::ok && current && s != status::no_such_peer) {
        // Operations UCX may still complete must not land over the next
        // transfer's blocks: unloading the peer cancels them.
        r.needs_reload = true;
        r.reload_at = steady::now() + (s == status::timed_out ? 0ms : 200ms);
    }
    b.release(f.x);
}

template <class Backend>
void agent<Backend>::on_notif(std::string_view from, std::string_view msg) {
    count("notifs.received");
    std::istringstream in{std::string(msg)};
    char tag = 0;
    int w = -1;
    std::uint32_t winc = 0, tinc = 0;
    std::uint64_t seq = 0, first = 0, k = 0, lane = 0;
    in >> tag >> w >> winc >> tinc >> seq >> first >> k >> lane;
    if (!in || tag != 'w' || w < 0 || w >= o_.agents || k == 0 || first + k > o_.blocks || lane >= lanes() ||
        from != agent_name(w)) {
        violation("malformed notification '" + std::string(msg) + "' from '" + std::string(from) + "'");
        return;
    }
    if (tinc != inc_) {
        violation("notification '" + std::string(msg) + "' from " + std::string(from) + " names incarnation " +
                  std::to_string(tinc) + " of this agent");
        return;
    }
    auto& [seen_inc, seqs] = seen_[w];
    if (winc > seen_inc) {
        seen_inc = winc;
        seqs.clear();
    }
    if (winc == seen_inc && !seqs.insert(seq)) {
        violation("duplicate notification " + std::string(msg) + " from " + std::string(from));
        return;
    }
    const std::size_t bs = o_.block_size;
    std::size_t superseded = 0;
    for (std::uint64_t j = 0; j < k; ++j) {
        const std::uint64_t pos = first + j;
        const std::byte* at = inbox_ + ((static_cast<std::size_t>(w) * lanes() + lane) * o_.blocks + pos) * bs;
        words_.resize(bs / 8);
        std::memcpy(words_.data(), at, bs);
        std::string why;
        switch (judge_block(words_, static_cast<std::uint32_t>(w), winc, seq, pos, why)) {
            case verdict::intact: break;
            case verdict::superseded: ++superseded; break;
            case verdict::bad:
                violation("notification '" + std::string(msg) + "' from " + std::string(from) +
                          " arrived, but block " + std::to_string(pos) + " of its slot does not hold its data: " + why);
                return;
        }
    }
    count(superseded ? "notifs.superseded" : "notifs.intact");
}

template <class Backend>
void agent<Backend>::on_peer_event(const ferry::peer_event& e) {
    count("peer_events." + std::string(ferry::to_string(e.kind)));
    if (e.kind != ferry::peer_event_kind::failed) return;
    count("peer_events.failed." + std::string(ferry::to_string(e.why)));
    for (std::size_t i = 0; i < peers_.size(); ++i) {
        remote_agent& r = peers_[i];
        if (r.loaded && r.handle == e.handle && !r.needs_reload) {
            // A process that exited comes back with a new blob; a broken
            // connection to one that lives on (a stopped process over tcp)
            // reconnects by loading its blob again.
            r.needs_reload = true;
            r.reload_at = steady::now() + 1s;
        }
    }
}

// How much an agent's RSS may grow after warm-up. AddressSanitizer keeps up
// to 256 MiB of freed memory in quarantine, resident, on top of that.
#if defined(__SANITIZE_ADDRESS__)
constexpr std::uint64_t rss_allowance = (64u << 20) + (256u << 20);
#else
constexpr std::uint64_t rss_allowance = 64u << 20;
#endif

template <class Backend>
void agent<Backend>::sample_usage(bool final_sample) {
    const auto now = steady::now();
    if (!final_sample && now < next_sample_) return;
    next_sample_ = now + 3s;
    last_fds_ = open_fds();
    last_rss_ = rss_bytes();
    if (!have_base_) {
        if (final_sample) return;  // never warmed up: nothing to compare
        have_base_ = true;
        base_fds_ = max_fds_ = last_fds_;
        base_rss_ = max_rss_ = last_rss_;
        return;
    }
    max_fds_ = std::max(max_fds_, last_fds_);
    max_rss_ = std::max(max_rss_, last_rss_);
    if (last_fds_ > base_fds_ + 64 && !fd_growth_reported_) {
        fd_growth_reported_ = true;
        violation("open descriptors grew from " + std::to_string(base_fds_) + " to " + std::to_string(last_fds_));
    }
    if (last_rss_ > base_rss_ + rss_allowance && !rss_growth_reported_) {
        rss_growth_reported_ = true;
        violation("RSS grew from " + std::to_string(base_rss_ >> 20) + " MiB to " + std::to_string(last_rss_ >> 20) +
                  " MiB");
    }
    counters_["usage.fds_base"] = base_fds_;
    counters_["usage.fds_max"] = max_fds_;
    counters_["usage.fds_now"] = last_fds_;
    counters_["usage.rss_base_kib"] = base_rss_ >> 10;
    counters_["usage.rss_max_kib"] = max_rss_ >> 10;
    counters_["usage.rss_now_kib"] = last_rss_ >> 10;
    counters_["usage.seconds"] =
        static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(now - started_).count());
}

template <class Backend>
int agent<Backend>::run() {
    std::unique_ptr<std::byte, memory_block> own_mem, inbox_mem, staging_mem, scratch_mem;
    ferry::ucx_config cfg;
    cfg.name = agent_name(id_);
    cfg.ucx_options = {{"TLS", o_.tls}};
    // The veth only: UCX would otherwise also list the namespace's loopback.
    if (!net_device_.empty()) cfg.ucx_options.emplace_back("NET_DEVICES", net_device_);
    Backend b(cfg);
    // Which regions UCX allocates and which are the caller's, per incarnation.
    const std::uint64_t mix_bits = rng_();
    ferry::region own = make_region(b, slot_bytes(), mix_bits & 1, own_mem);  // read by peers, never written
    ferry::region inbox = make_region(b, area_bytes(), mix_bits & 2, inbox_mem);
    ferry::region staging = make_region(b, area_bytes(), mix_bits & 4, staging_mem);
    ferry::region scratch = make_region(b, area_bytes(), mix_bits & 8, scratch_mem);
    own_ = static_cast<std::byte*>(own.data());
    inbox_ = static_cast<std::byte*>(inbox.data());
    staging_ = static_cast<std::byte*>(staging.data());
    scratch_ = static_cast<std::byte*>(scratch.data());
    count("regions.allocated", (mix_bits & 1 ? 1 : 0) + (mix_bits & 2 ? 1 : 0) + (mix_bits & 4 ? 1 : 0) + (mix_bits & 8 ? 1 : 0));
    for (std::size_t i = 0; i < o_.blocks; ++i)
        fill_block(own_ + i * o_.block_size, o_.block_size, static_cast<std::uint32_t>(id_), inc_, 0, i);
    std::memset(inbox_, 0, area_bytes());

    {
        std::string hello;
        put<std::uint64_t>(hello, reinterpret_cast<std::uintptr_t>(own_));
        put<std::uint64_t>(hello, reinterpret_cast<std::uintptr_t>(inbox_));
        const auto blob = b.local_metadata();
        hello.append(reinterpret_cast<const char*>(blob.data()), blob.size());
        send_blocking(fd_, make_frame(frame::hello, hello));
    }

    auto next_report = steady::now() + 2s;
    while (!exit_) {
        handle_control(b);
        if (exit_) break;
        b.progress();
        b.poll_notifs([&](std::string_view from, std::string_view msg) { on_notif(from, msg); });
        b.poll_peer_events([&](const ferry::peer_event& e) { on_peer_event(e); });

        const auto now = steady::now();
        for (std::size_t i = 0; i < flights_.size();) {
            flight& f = flights_[i];
            const status s = b.check(f.x);
            if (s == status::in_progress) {
                if (now > f.deadline + 2s && !f.reported_stuck) {
                    f.reported_stuck = true;
                    violation(std::string(f.op == xfer_op::write ? "WRITE" : "READ") + " to " + agent_name(f.to) +
                              " (path " + std::string(ferry::to_string(b.path_of(f.x))) + ") still in_progress " +
                              std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - f.posted).count()) +
                              " ms after its post, with a deadline of " + std::to_string(o_.deadline_ms) + " ms");
                }
                ++i;
                continue;
            }
            finish(b, f, s);
            flights_[i] = std::move(flights_.back());
            flights_.pop_back();
        }

        for (std::size_t i = 0; i < peers_.size(); ++i) {
            remote_agent& r = peers_[i];
            if (!r.known || !r.needs_reload || r.in_flight || now < r.reload_at) continue;
            if (r.loaded) {
                try {
                    b.unload_remote(r.handle);
                } catch (const ferry::error& e) {
                    violation("unload_remote of a loaded peer threw: " + std::string(e.what()));
                }
                r.loaded = false;
            }
            count("reloads_after_failure");
            load(b, static_cast<int>(i));
        }

        if (!quiesced_) {
            // Pairs (0-1, 2-3, ...) for five seconds, then all to all for five.
            const bool pairs =
                (std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count() / 5) % 2 == 0;
            const int partner = id_ ^ 1;
            for (int to = 0; to < o_.agents; ++to) {
                if (to == id_) continue;
                if (pairs && partner < o_.agents && to != partner) continue;
                remote_agent& r = peers_[static_cast<std::size_t>(to)];
                if (!r.loaded || r.needs_reload || r.in_flight) continue;
                if (b.peer_status(r.handle) != status::ok) continue;
                post_one(b, to);
            }
        }

        sample_usage(false);
        if (now > next_report) {
            next_report = now + 2s;
            send_blocking(fd_, make_frame(frame::report, counters_text()));
        }
        if (final_asked_) {
            final_asked_ = false;
            sample_usage(true);
            for (flight& f : flights_) {
                count("released_in_flight_at_end");
                b.release(f.x);
            }
            flights_.clear();
            std::string text = counters_text();
            for (std::size_t i = 0; i < peers_.size(); ++i) {
                const remote_agent& r = peers_[i];
                if (!r.known) continue;
                text += "O " + std::to_string(i) + " " + std::to_string(r.inc);
                text += r.ok_seqs.text();
                text += "\n";
            }
            for (const auto& [w, entry] : seen_) {
                text += "N " + std::to_string(w) + " " + std::to_string(entry.first);
                text += entry.second.text();
                text += "\n";
            }
            send_blocking(fd_, make_frame(frame::final_report, text));
        }
        // Six or eight agents share two cores here: give the others a turn.
        std::this_thread::sleep_for(is_threaded() ? 300us : 100us);
    }
    for (flight& f : flights_) b.release(f.x);
    flights_.clear();
    return 0;
}

int agent_main(const options& o, int id, std::uint32_t inc, int fd, const std::string& net_device) {
    try {
        if (id % 2 == 0) return agent<inline_backend>(o, id, inc, fd, net_device).run();
        return agent<thread_backend>(o, id, inc, fd, net_device).run();
    } catch (const std::exception& e) {
        send_blocking(fd, make_frame(frame::violation, agent_name(id) + " (incarnation " + std::to_string(inc) +
                                                            "): threw " + e.what()));
        return 3;
    }
}

// ---- the parent ------------------------------------------------------------

// In a child of the parent: moves into the side's namespace (and boot id)
// and runs ferry-soak again as agent `id`. A fresh program, not the fork:
// UCX reads the boot id once, when its libraries load, so a forked child
// would keep the parent's and take the other side for this host. Returns
// only on failure, having told the parent.
int start_agent_in(const placement& where, int id, std::uint32_t inc, int fd) {
    std::string why = ferry_test::netns::enter(where.ns);
    if (why.empty() && !where.boot_id_file.empty()) why = ferry_test::netns::pose_as_other_host(where.boot_id_file);
    if (why.empty() && ::fcntl(fd, F_SETFD, 0) != 0) why = std::string("fcntl: ") + std::strerror(errno);
    if (why.empty()) {
        std::vector<std::string> extra{"--agent-id",          std::to_string(id), "--agent-incarnation",
                                       std::to_string(inc),   "--agent-fd",       std::to_string(fd),
                                       "--agent-device",      where.dev};
        std::vector<char*> args;
        for (char** a = program_argv; *a; ++a) args.push_back(*a);
        for (std::string& e : extra) args.push_back(e.data());
        args.push_back(nullptr);
        ::execv("/proc/self/exe", args.data());
        why = std::string("execv /proc/self/exe: ") + std::strerror(errno);
    }
    send_blocking(fd, make_frame(frame::violation, agent_name(id) + " (incarnation " + std::to_string(inc) +
                                                       "): taking its place in namespace " + where.ns + ": " + why));
    return 3;
}

struct agent_slot {
    pid_t pid = -1;
    std::uint32_t inc = 0;
    int fd = -1;
    std::string in, out;
    bool ready = false;
    bool stopped = false;
    steady::time_point cont_at{};
    bool killed_by_us = false;
    bool restart_pending = false;
    steady::time_point restart_at{};
    std::string hello;  // the P frame's payload after id and incarnation
    std::map<std::string, std::uint64_t> last_report;
    bool archived = false;  // last_report is in archived_ already: the summary counts it there
    bool final_received = false;
    std::string final_text;
    bool exited = false;
    int err_fd = -1;       // the agent's stderr, which the parent passes on
    std::string err_tail;  // its last bytes, for ucx_abort_of
};

// If `text`, the end of what process `pid` wrote on stderr, holds UCX's
// report of aborting it, that report in one line without addresses (so that
// equal aborts count together); else empty. UCX reports a failed assertion
// or a fatal error of its own, and a signal it caught with a backtrace: a
// signal counts only if the first frame past UCX's handler and libc is in
// libuct or libucp, so that a crash in ferry or the soak is never taken
// for UCX's.
std::string ucx_abort_of(const std::string& text, pid_t pid) {
    // UCX opens each line with "[host:pid:thread:tid]", the pid padded with
    // spaces to five places.
    const std::string want = std::to_string(pid);
    auto from_pid = [&](const std::string& l) {
        const auto close = l.find(']');
        if (l.empty() || l[0] != '[' || close == std::string::npos) return false;
        std::istringstream fields(l.substr(1, close - 1));
        std::string host, p;
        if (!std::getline(fields, host, ':') || !std::getline(fields, p, ':')) return false;
        p.erase(p.find_last_not_of(' ') + 1);
        p.erase(0, p.find_first_not_of(' '));
        return p == want;
    };
    std::istringstream lines(text);
    std::string line;
    std::string caught;  // a "Caught signal" line, waiting for its frames
    bool in_backtrace = false;
    // Pointers differ from one abort to the next; offsets into a library
    // ("+0x21650") tell the places apart.
    auto tidy = [](std::string l) {
        l.erase(0, l.find(']') + 1);
        static const std::regex address("([^+])0x[0-9a-fA-F]+"), spaces(" +");
        l = std::regex_replace(std::regex_replace(l, address, "$1<address>"), spaces, " ");
        l.erase(0, l.find_first_not_of(' '));
        return l.substr(0, 400);
    };
    while (std::getline(lines, line)) {
        const bool own = from_pid(line);
        if (own && (line.find("Assertion `") != std::string::npos || line.find(" Fatal: ") != std::string::npos))
            return tidy(line);
        if (own && line.find("Caught signal") != std::string::npos) {
            caught = tidy(line);
            in_backtrace = false;
            continue;
        }
        if (caught.empty()) continue;
        if (line.find("==== backtrace") != std::string::npos) {
            in_backtrace = true;
            continue;
        }
        if (!in_backtrace) continue;
        if (line.find("libucs.so") != std::string::npos || line.find("libc.so") != std::string::npos) continue;
        const auto lib = line.find("/lib");
        if (line.find("libuct.so") != std::string::npos || line.find("libucp.so") != std::string::npos) {
            std::string frame = line.substr(lib == std::string::npos ? 0 : line.rfind('/') + 1);
            return caught + " in " + frame.substr(0, frame.find(" ["));
        }
        return {};
    }
    return {};
}

class coordinator {
public:
    explicit coordinator(const options& o) : o_(o), rng_(o.seed), slots_(static_cast<std::size_t>(o.agents)) {}
    ~coordinator() {
        if (!boot_id_file_.empty()) ::unlink(boot_id_file_.c_str());
    }
    coordinator(const coordinator&) = delete;
    coordinator& operator=(const coordinator&) = delete;
    int run();

private:
    void make_namespaces();
    void flap_link();
    void link_up();
    void spawn(int i);
    void send(int i, frame type, std::string_view payload);
    void flush(agent_slot& s);
    void pass_on_stderr(agent_slot& s);
    void service(std::chrono::milliseconds max_wait);
    void on_frame(int i, frame type, std::string payload);
    void reap();
    void inject();
    void violation(const std::string& what) {
        ++violations_;
        std::fprintf(stderr, "VIOLATION: %s\n", what.c_str());
    }
    void note(const std::string& what) {
        if (o_.verbose) std::fprintf(stderr, "[%7.3f] %s\n", seconds_since_start(), what.c_str());
    }
    double seconds_since_start() const { return std::chrono::duration<double>(steady::now() - start_).count(); }
    static std::map<std::string, std::uint64_t> parse_counters(const std::string& text);
    void cross_check();
    void link_summary(const std::map<std::string, std::uint64_t>& total);
    void summary();

    const options& o_;
    std::mt19937_64 rng_;
    std::vector<agent_slot> slots_;
    std::vector<std::map<std::string, std::uint64_t>> archived_;  // the last report of each ended incarnation
    std::map<std::string, std::uint64_t> faults_;
    std::uint64_t violations_ = 0;
    std::uint64_t crashes_ = 0;
    std::map<std::string, std::uint64_t> ucx_aborts_;  // --tolerate-ucx-aborts: by UCX's report
    bool final_phase_ = false;
    steady::time_point start_ = steady::now();
    // --netns: the pair, where each side's agents go, and the flap under way.
    std::unique_ptr<ferry_test::netns::veth_pair> pair_;
    std::array<placement, 2> places_;
    std::string boot_id_file_;
    const ferry_test::netns::end* link_down_ = nullptr;
    steady::time_point link_up_at_{};
    std::uint64_t down_ms_total_ = 0, down_ms_longest_ = 0;
};

// Throws netns::unavailable where the namespaces cannot be made here.
void coordinator::make_namespaces() {
    namespace netns = ferry_test::netns;
    pair_ = std::make_unique<netns::veth_pair>();
    for (const netns::end* e : {&pair_->a(), &pair_->b()}) {
        // Agents on one side reach each other over tcp as well as shared
        // memory, at their own veth address, which the kernel delivers
        // through the loopback device; the other side stays behind the veth.
        auto r = netns::run({pair_->ip_program(), "-n", e->ns, "link", "set", "dev", "lo", "up"});
        if (!r.ok()) throw netns::unavailable("cannot bring up the loopback device of " + e->ns + ": " + r.output);
    }
    // Side b reads a boot id of its own: a host of its own to ferry and UCX.
    char path[] = "/tmp/ferry-soak-boot_id-XXXXXX";
    const int fd = ::mkstemp(path);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "mkstemp");
    boot_id_file_ = path;
    char id[40];
    const std::uint64_t hi = rng_(), lo = rng_();
    std::snprintf(id, sizeof id, "%08llx-%04llx-4%03llx-a%03llx-%012llx\n", static_cast<unsigned long long>(hi >> 32),
                  static_cast<unsigned long long>((hi >> 16) & 0xffff), static_cast<unsigned long long>(hi & 0xfff),
                  static_cast<unsigned long long>(lo >> 52), static_cast<unsigned long long>(lo & 0xffffffffffffULL));
    const bool written = ::write(fd, id, std::strlen(id)) == static_cast<ssize_t>(std::strlen(id));
    ::close(fd);
    if (!written) throw std::system_error(errno, std::generic_category(), "writing " + boot_id_file_);
    places_[0] = {pair_->a().ns, pair_->a().dev, {}};
    places_[1] = {pair_->b().ns, pair_->b().dev, boot_id_file_};
}

void coordinator::flap_link() {
    const ferry_test::netns::end& e = (rng_() & 1) ? pair_->a() : pair_->b();
    // Some shorter than a deadline, some longer than deadline and keepalive.
    const std::uint64_t ms = 50 + rng_() % 2951;
    if (auto r = pair_->set_link(e, false); !r.ok()) {
        violation("ip link set dev " + e.dev + " down failed: " + r.output);
        return;
    }
    link_down_ = &e;
    link_up_at_ = steady::now() + std::chrono::milliseconds(ms);
    ++faults_["link_flap"];
    down_ms_total_ += ms;
    down_ms_longest_ = std::max(down_ms_longest_, ms);
    note("link down at " + e.dev + " for " + std::to_string(ms) + " ms");
}

void coordinator::link_up() {
    if (!link_down_) return;
    if (auto r = pair_->set_link(*link_down_, true); !r.ok())
        violation("ip link set dev " + link_down_->dev + " up failed: " + r.output);
    note("link up at " + link_down_->dev);
    link_down_ = nullptr;
}

void coordinator::spawn(int i) {
    agent_slot& s = slots_[static_cast<std::size_t>(i)];
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        std::perror("ferry-soak: socketpair");
        std::exit(2);
    }
    int err[2];
    if (::pipe2(err, O_CLOEXEC) != 0) {
        std::perror("ferry-soak: pipe2");
        std::exit(2);
    }
    ++s.inc;
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
        std::perror("ferry-soak: fork");
        std::exit(2);
    }
    if (pid == 0) {
        ::close(sv[0]);
        ::close(err[0]);
        ::dup2(err[1], STDERR_FILENO);
        ::close(err[1]);
        for (const agent_slot& other : slots_) {
            if (other.fd >= 0) ::close(other.fd);
            if (other.err_fd >= 0) ::close(other.err_fd);
        }
        // An agent whose parent died must not live on.
        ::signal(SIGPIPE, SIG_IGN);
        if (o_.netns) ::_exit(start_agent_in(places_[static_cast<std::size_t>(side_of(i))], i, s.inc, sv[1]));
        ::_exit(agent_main(o_, i, s.inc, sv[1], {}));
    }
    ::close(sv[1]);
    ::close(err[1]);
    ::fcntl(sv[0], F_SETFL, ::fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    ::fcntl(err[0], F_SETFL, ::fcntl(err[0], F_GETFL) | O_NONBLOCK);
    s.pid = pid;
    s.fd = sv[0];
    s.err_fd = err[0];
    s.err_tail.clear();
    s.in.clear();
    s.out.clear();
    s.ready = false;
    s.stopped = false;
    s.killed_by_us = false;
    s.restart_pending = false;
    s.last_report.clear();
    s.archived = false;
    s.final_received = false;
    s.final_text.clear();
    s.exited = false;
    note("started agent " + std::to_string(i) + " incarnation " + std::to_string(s.inc) + " pid " +
         std::to_string(pid));
}

void coordinator::flush(agent_slot& s) {
    while (!s.out.empty() && s.fd >= 0) {
        ssize_t n = ::send(s.fd, s.out.data(), s.out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            s.out.erase(0, static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        return;  // full (a stopped agent) or gone (reaped soon)
    }
}

void coordinator::send(int i, frame type, std::string_view payload) {
    agent_slot& s = slots_[static_cast<std::size_t>(i)];
    if (s.fd < 0) return;
    s.out += make_frame(type, payload);
    flush(s);
}

std::map<std::string, std::uint64_t> coordinator::parse_counters(const std::string& text) {
    std::map<std::string, std::uint64_t> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (line.size() > 2 && (line[0] == 'O' || line[0] == 'N') && line[1] == ' ') continue;
        const auto sp = line.rfind(' ');
        if (sp == std::string::npos) continue;
        std::uint64_t v = 0;
        if (parse_int(std::string_view(line).substr(sp + 1), v)) out[line.substr(0, sp)] = v;
    }
    return out;
}

void coordinator::on_frame(int i, frame type, std::string payload) {
    agent_slot& s = slots_[static_cast<std::size_t>(i)];
    switch (type) {
        case frame::hello: {
            s.hello = std::move(payload);
            s.ready = true;
            auto blob_frame = [&](int id) {
                std::string p;
                put<std::uint32_t>(p, static_cast<std::uint32_t>(id));
                put<std::uint32_t>(p, slots_[static_cast<std::size_t>(id)].inc);
                return p + slots_[static_cast<std::size_t>(id)].hello;
            };
            for (int j = 0; j < o_.agents; ++j) {
                if (j == i || !slots_[static_cast<std::size_t>(j)].ready) continue;
                send(i, frame::peer_blob, blob_frame(j));
                send(j, frame::peer_blob, blob_frame(i));
            }
            note("agent " + std::to_string(i) + " incarnation " + std::to_string(s.inc) + " is ready");
            break;
        }
        case frame::report: s.last_report = parse_counters(payload); break;
        case frame::final_report:
            s.last_report = parse_counters(payload);
            s.final_text = std::move(payload);
            s.final_received = true;
            break;
        case frame::violation: violation(payload); break;
        case frame::info: note(payload); break;
        default: violation("agent " + std::to_string(i) + " sent an unknown frame"); break;
    }
}

void coordinator::service(std::chrono::milliseconds max_wait) {
    std::vector<pollfd> fds;
    std::vector<int> who;  // the agent, as -1 - i for its stderr
    for (int i = 0; i < o_.agents; ++i) {
        agent_slot& s = slots_[static_cast<std::size_t>(i)];
        if (s.err_fd >= 0) {
            fds.push_back({s.err_fd, POLLIN, 0});
            who.push_back(-1 - i);
        }
        if (s.fd < 0) continue;
        fds.push_back({s.fd, static_cast<short>(POLLIN | (s.out.empty() ? 0 : POLLOUT)), 0});
        who.push_back(i);
    }
    ::poll(fds.data(), fds.size(), static_cast<int>(max_wait.count()));
    for (std::size_t k = 0; k < fds.size(); ++k) {
        if (who[k] < 0) {
            if (fds[k].revents & (POLLIN | POLLHUP | POLLERR)) pass_on_stderr(slots_[static_cast<std::size_t>(-1 - who[k])]);
            continue;
        }
        agent_slot& s = slots_[static_cast<std::size_t>(who[k])];
        if (fds[k].revents & POLLOUT) flush(s);
        if (fds[k].revents & (POLLIN | POLLHUP | POLLERR)) {
            read_available(s.fd, s.in);
            while (auto f = next_frame(s.in)) on_frame(who[k], f->first, std::move(f->second));
        }
    }
    reap();
}

// Copies what the agent wrote on stderr to ours, keeping its end.
void coordinator::pass_on_stderr(agent_slot& s) {
    char buf[4096];
    while (s.err_fd >= 0) {
        const ssize_t n = ::read(s.err_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) {
            ::close(s.err_fd);
            s.err_fd = -1;
            return;
        }
        std::fwrite(buf, 1, static_cast<std::size_t>(n), stderr);
        s.err_tail.append(buf, static_cast<std::size_t>(n));
        if (s.err_tail.size() > (32u << 10)) s.err_tail.erase(0, s.err_tail.size() - (16u << 10));
    }
}

void coordinator::reap() {
    for (;;) {
        int wstatus = 0;
        const pid_t pid = ::waitpid(-1, &wstatus, WNOHANG);
        if (pid <= 0) return;
        for (int i = 0; i < o_.agents; ++i) {
            agent_slot& s = slots_[static_cast<std::size_t>(i)];
            if (s.pid != pid) continue;
            if (s.fd >= 0) {
                // What it said before it ended: violations, its last report.
                read_available(s.fd, s.in);
                while (auto f = next_frame(s.in)) on_frame(i, f->first, std::move(f->second));
                ::close(s.fd);
                s.fd = -1;
            }
            pass_on_stderr(s);
            s.pid = -1;
            s.ready = false;
            s.exited = true;
            const bool clean_exit = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
            const bool our_kill = WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL && s.killed_by_us;
            if (!(final_phase_ && clean_exit) && !our_kill) {
                const std::string ucx = WIFSIGNALED(wstatus) ? ucx_abort_of(s.err_tail, pid) : std::string();
                const std::string who = "agent " + std::to_string(i) + " incarnation " + std::to_string(s.inc) +
                                        " (pid " + std::to_string(pid) + ")";
                if (o_.tolerate_ucx_aborts && !ucx.empty()) {
                    ++ucx_aborts_[ucx];
                    std::fprintf(stderr, "ferry-soak: UCX aborted %s, which restarts: %s\n", who.c_str(), ucx.c_str());
                } else {
                    ++crashes_;
                    violation(who + " ended unasked: " +
                              (WIFSIGNALED(wstatus) ? "signal " + std::to_string(WTERMSIG(wstatus)) + " (" +
                                                          strsignal(WTERMSIG(wstatus)) + ")"
                                                    : "exit status " + std::to_string(WEXITSTATUS(wstatus))) +
                              (ucx.empty() ? std::string() : "; UCX reported: " + ucx));
                }
            }
            if (!final_phase_ || !clean_exit) {
                archived_.push_back(s.last_report);
                s.archived = true;
            }
            if (!final_phase_) {
                s.restart_pending = true;
                s.restart_at = steady::now() + std::chrono::milliseconds(100 + rng_() % 400);
            }
        }
    }
}

void coordinator::inject() {
    std::vector<int> eligible;
    for (int i = 0; i < o_.agents; ++i) {
        const agent_slot& s = slots_[static_cast<std::size_t>(i)];
        if (s.ready && !s.stopped && s.pid > 0) eligible.push_back(i);
    }
    if (pair_ && !link_down_ && rng_() % 4 == 0) {
        flap_link();
        return;
    }
    if (eligible.empty()) return;
    const int i = eligible[rng_() % eligible.size()];
    agent_slot& s = slots_[static_cast<std::size_t>(i)];
    // A steady agent is only asked to reload peers.
    switch (i < o_.steady ? 2 : rng_() % 3) {
        case 0:
            s.killed_by_us = true;
            ::kill(s.pid, SIGKILL);
            ++faults_["kill_restart"];
            note("SIGKILL agent " + std::to_string(i));
            break;
        case 1: {
            const auto ms = 50 + rng_() % 451;
            ::kill(s.pid, SIGSTOP);
            s.stopped = true;
            s.cont_at = steady::now() + std::chrono::milliseconds(ms);
            ++faults_["stop_cont"];
            note("SIGSTOP agent " + std::to_string(i) + " for " + std::to_string(ms) + " ms");
            break;
        }
        default: {
            std::vector<int> others;
            for (int j = 0; j < o_.agents; ++j)
                if (j != i && slots_[static_cast<std::size_t>(j)].ready) others.push_back(j);
            if (others.empty()) return;
            const int j = others[rng_() % others.size()];
            std::string p;
            put<std::uint32_t>(p, static_cast<std::uint32_t>(j));
            send(i, frame::unload_reload, p);
            ++faults_["unload_reload"];
            note("agent " + std::to_string(i) + ": unload and reload agent " + std::to_string(j));
            break;
        }
    }
}

void coordinator::cross_check() {
    // Every WRITE that ended ok to a peer's last incarnation: its
    // notification must have reached that incarnation. Both ledgers are of
    // the last incarnations, which live to the end.
    std::map<std::pair<int, int>, std::pair<std::uint32_t, seq_ledger>> seen;  // (target, writer)
    std::map<std::pair<int, int>, std::pair<std::uint32_t, seq_ledger>> ok;    // (writer, target)
    for (int i = 0; i < o_.agents; ++i) {
        std::istringstream in(slots_[static_cast<std::size_t>(i)].final_text);
        std::string line;
        while (std::getline(in, line)) {
            if (line.size() < 2 || (line[0] != 'O' && line[0] != 'N') || line[1] != ' ') continue;
            std::istringstream l(line.substr(2));
            int other = -1;
            std::uint32_t inc = 0;
            l >> other >> inc;
            auto& e = line[0] == 'N' ? seen[{i, other}] : ok[{i, other}];
            e.first = inc;
            if (!seq_ledger::parse(l, e.second))
                violation("agent " + std::to_string(i) + " reported a malformed ledger line: " + line.substr(0, 80));
        }
    }
    std::uint64_t checked = 0;
    for (const auto& [key, entry] : ok) {
        const auto [w, t] = key;
        if (t < 0 || t >= o_.agents || entry.first != slots_[static_cast<std::size_t>(t)].inc) continue;
        const auto it = seen.find({t, w});
        std::vector<std::uint64_t> missing;
        checked += entry.second.size();
        static const seq_ledger none;
        const bool current = it != seen.end() && it->second.first == slots_[static_cast<std::size_t>(w)].inc;
        entry.second.for_each_missing_from(current ? it->second.second : none,
                                           [&](std::uint64_t seq) { missing.push_back(seq); });
        if (!missing.empty()) {
            std::string list;
            for (std::size_t k = 0; k < missing.size() && k < 10; ++k) list += " " + std::to_string(missing[k]);
            violation(std::to_string(missing.size()) + " WRITE(s) from agent " + std::to_string(w) + " to agent " +
                      std::to_string(t) + " ended ok but their notification never arrived (seq" + list +
                      (missing.size() > 10 ? " ..." : "") + ")");
        }
    }
    faults_["ok_writes_cross_checked"] = checked;
}

// The link's figures, and the check that what crossed between the sides went
// over the veth: its devices must have carried at least the bytes of every
// transfer between the sides that ended ok, or something (shared memory,
// host_ipc) bypassed it.
void coordinator::link_summary(const std::map<std::string, std::uint64_t>& total) {
    const auto at = [&](const char* key) {
        const auto it = total.find(key);
        return it == total.end() ? std::uint64_t{0} : it->second;
    };
    const std::uint64_t across = at("write.bytes_across") + at("read.bytes_across");
    const auto a = pair_->counters_of(pair_->a());
    const auto b = pair_->counters_of(pair_->b());
    std::printf("  %-22s flaps=%llu down=%.1f s (longest %llu ms); ok transfers across moved %.1f MiB\n",
                "link (veth)", static_cast<unsigned long long>(faults_["link_flap"]), down_ms_total_ / 1000.0,
                static_cast<unsigned long long>(down_ms_longest_), static_cast<double>(across) / (1 << 20));
    if (!a || !b) {
        violation("cannot read the veth's counters");
        return;
    }
    std::printf("  %-22s %s sent %.1f MiB (%llu packets), %s sent %.1f MiB (%llu packets)\n", "", pair_->a().dev.c_str(),
                static_cast<double>(a->tx_bytes) / (1 << 20), static_cast<unsigned long long>(a->tx_packets),
                pair_->b().dev.c_str(), static_cast<double>(b->tx_bytes) / (1 << 20),
                static_cast<unsigned long long>(b->tx_packets));
    if (a->tx_bytes + b->tx_bytes < across)
        violation("the veth carried " + std::to_string(a->tx_bytes + b->tx_bytes) + " bytes, fewer than the " +
                  std::to_string(across) + " that ok transfers moved between the namespaces: they bypassed it");
}

void coordinator::summary() {
    std::map<std::string, std::uint64_t> total;
    std::vector<std::map<std::string, std::uint64_t>> reports = archived_;
    for (const agent_slot& s : slots_)
        if (!s.archived) reports.push_back(s.last_report);
    for (const auto& r : reports)
        for (const auto& [k, v] : r)
            if (k.rfind("usage.", 0) != 0) total[k] += v;
    auto line = [&](const char* title, const std::string& prefix) {
        std::string out;
        for (const auto& [k, v] : total)
            if (k.rfind(prefix, 0) == 0 && k.find('.', prefix.size()) == std::string::npos)
                out += " " + k.substr(prefix.size()) + "=" + std::to_string(v);
        std::printf("  %-22s%s\n", title, out.empty() ? " none" : out.c_str());
    };
    std::printf("ferry-soak summary: %d agents, tls %s, path %s, seed %llu, %.1f s, fault rate %.2f/s\n", o_.agents,
                o_.tls.c_str(), o_.path.c_str(), static_cast<unsigned long long>(o_.seed), seconds_since_start(),
                o_.fault_rate);
    std::string faults;
    for (const auto& [k, v] : faults_)
        if (k != "ok_writes_cross_checked") faults += " " + k + "=" + std::to_string(v);
    std::printf("  %-22s%s\n", "faults injected", faults.empty() ? " none" : faults.c_str());
    line("WRITEs", "write.");
    line("WRITE paths (ok)", "write.path.");
    line("READs", "read.");
    line("READ paths (ok)", "read.path.");
    line("notifications", "notifs.");
    line("peer events", "peer_events.");
    line("peer failures by why", "peer_events.failed.");
    line("prepare errors", "prepare_errors.");
    line("load errors", "load_errors.");
    std::printf("  %-22s loads=%llu unload_reloads=%llu reloads_after_failure=%llu\n", "peers",
                static_cast<unsigned long long>(total["loads"]), static_cast<unsigned long long>(total["unload_reloads"]),
                static_cast<unsigned long long>(total["reloads_after_failure"]));
    std::printf("  %-22s %llu ok WRITEs' notifications checked at the end\n", "cross-check",
                static_cast<unsigned long long>(faults_["ok_writes_cross_checked"]));
    for (int i = 0; i < o_.agents; ++i) {
        auto& r = slots_[static_cast<std::size_t>(i)].last_report;
        if (!r.count("usage.fds_base")) {
            std::printf("  agent %-2d (inc %u): ran too short to sample descriptors and RSS\n", i,
                        slots_[static_cast<std::size_t>(i)].inc);
            continue;
        }
        std::printf("  agent %-2d (inc %u, %s, %llu s): fds %llu -> %llu (max %llu), RSS %llu -> %llu KiB (max %llu)\n",
                    i, slots_[static_cast<std::size_t>(i)].inc, i % 2 ? "thread" : "inline",
                    static_cast<unsigned long long>(r["usage.seconds"]),
                    static_cast<unsigned long long>(r["usage.fds_base"]),
                    static_cast<unsigned long long>(r["usage.fds_now"]),
                    static_cast<unsigned long long>(r["usage.fds_max"]),
                    static_cast<unsigned long long>(r["usage.rss_base_kib"]),
                    static_cast<unsigned long long>(r["usage.rss_now_kib"]),
                    static_cast<unsigned long long>(r["usage.rss_max_kib"]));
    }
    if (pair_) link_summary(total);
    std::uint64_t aborts = 0;
    for (const auto& [why, n] : ucx_aborts_) {
        aborts += n;
        std::printf("  %-22s %llu x %s\n", "UCX aborted agents", static_cast<unsigned long long>(n), why.c_str());
    }
    std::printf("  %-22s agents crashed=%llu, violations=%llu (agents counted %llu), UCX aborts tolerated=%llu\n",
                "verdict", static_cast<unsigned long long>(crashes_), static_cast<unsigned long long>(violations_),
                static_cast<unsigned long long>(total["violations"]), static_cast<unsigned long long>(aborts));
    std::printf("%s\n", violations_ == 0 && crashes_ == 0 ? "PASS" : "FAIL");
}

int coordinator::run() {
    ::signal(SIGPIPE, SIG_IGN);
    if (o_.netns) {
        try {
            make_namespaces();
        } catch (const ferry_test::netns::unavailable& e) {
            std::printf("FERRY-SKIP: --netns cannot run here: %s\n", e.what());
            return exit_skipped;
        }
        start_ = steady::now();
    }
    for (int i = 0; i < o_.agents; ++i) spawn(i);
    const auto traffic_end = start_ + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(o_.duration_s));
    std::exponential_distribution<double> gap(o_.fault_rate > 0 ? o_.fault_rate : 1.0);
    auto next_fault = start_ + 3s;  // after every agent has met every other
    while (steady::now() < traffic_end) {
        service(5ms);
        const auto now = steady::now();
        for (int i = 0; i < o_.agents; ++i) {
            agent_slot& s = slots_[static_cast<std::size_t>(i)];
            if (s.stopped && now >= s.cont_at) {
                ::kill(s.pid, SIGCONT);
                s.stopped = false;
            }
            if (s.restart_pending && now >= s.restart_at) spawn(i);
        }
        if (link_down_ && now >= link_up_at_) link_up();
        if (o_.fault_rate > 0 && now >= next_fault) {
            inject();
            next_fault = now + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(gap(rng_)));
        }
    }

    // Wind down: bring the link up, continue the stopped, restart the
    // killed, let every transfer end (deadline + 2 s) and every
    // notification arrive.
    link_up();
    for (int i = 0; i < o_.agents; ++i) {
        agent_slot& s = slots_[static_cast<std::size_t>(i)];
        if (s.stopped) {
            ::kill(s.pid, SIGCONT);
            s.stopped = false;
        }
    }
    const auto settle_until = steady::now() + 20s;
    for (;;) {
        bool all_ready = true;
        const auto now = steady::now();
        for (int i = 0; i < o_.agents; ++i) {
            agent_slot& s = slots_[static_cast<std::size_t>(i)];
            if (s.restart_pending && now >= s.restart_at) spawn(i);
            all_ready = all_ready && s.ready;
        }
        if (all_ready || now > settle_until) break;
        service(10ms);
    }
    for (int i = 0; i < o_.agents; ++i)
        if (!slots_[static_cast<std::size_t>(i)].ready)
            violation("agent " + std::to_string(i) + " did not come up within 20 s of the end of traffic");
    // Peers that reload a restarted agent's blob do so within a second;
    // then nobody posts any more.
    for (auto until = steady::now() + 1500ms; steady::now() < until;) service(10ms);
    for (int i = 0; i < o_.agents; ++i) send(i, frame::quiesce, {});
    const auto quiet = std::chrono::milliseconds(o_.deadline_ms) + 3s;
    for (auto until = steady::now() + quiet; steady::now() < until;) service(10ms);
    final_phase_ = true;
    for (int i = 0; i < o_.agents; ++i) send(i, frame::send_final, {});
    for (auto until = steady::now() + 15s; steady::now() < until;) {
        service(10ms);
        bool all = true;
        for (const agent_slot& s : slots_) all = all && (s.final_received || s.fd < 0);
        if (all) break;
    }
    for (int i = 0; i < o_.agents; ++i)
        if (!slots_[static_cast<std::size_t>(i)].final_received)
            violation("agent " + std::to_string(i) + " sent no final report within 15 s");
    cross_check();
    for (int i = 0; i < o_.agents; ++i) send(i, frame::exit_now, {});
    for (auto until = steady::now() + 15s; steady::now() < until;) {
        service(10ms);
        bool all = true;
        for (const agent_slot& s : slots_) all = all && s.pid < 0;
        if (all) break;
    }
    for (int i = 0; i < o_.agents; ++i) {
        agent_slot& s = slots_[static_cast<std::size_t>(i)];
        if (s.pid < 0) continue;
        violation("agent " + std::to_string(i) + " (pid " + std::to_string(s.pid) + ") did not exit within 15 s");
        s.killed_by_us = true;
        ::kill(s.pid, SIGKILL);
        ::waitpid(s.pid, nullptr, 0);
        s.pid = -1;
    }
    summary();
    return violations_ == 0 && crashes_ == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    // UCX reads its log level, and its memory hooks' settings, when its
    // libraries load, before main: set them and start again. Peers that the
    // faults break are logged by UCX as errors, thousands in a long run.
    if (std::getenv("FERRY_SOAK_STARTED") == nullptr) {
        setenv("FERRY_SOAK_STARTED", "1", 1);
        const auto o = parse_options(argc, argv);
        if (!o) return 2;
        setenv("UCX_LOG_LEVEL", o->ucx_log.c_str(), 0);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
        // UCX's memory hooks and the sanitizers both patch malloc and mmap.
        setenv("UCX_MEM_MALLOC_HOOKS", "no", 0);
        setenv("UCX_MEM_MMAP_HOOK_MODE", "none", 0);
        setenv("UCX_MEM_EVENTS", "no", 0);
#endif
        ::execv("/proc/self/exe", argv);
        std::perror("ferry-soak: restarting with UCX's settings: execv /proc/self/exe");
    }
    const auto o = parse_options(argc, argv);
    if (!o) return 2;
    if (o->agent_id >= 0) return agent_main(*o, o->agent_id, o->agent_inc, o->agent_fd, o->agent_device);
    program_argv = argv;
    return coordinator(*o).run();
}
