// Coalescing: prepare merges a run of descriptor pairs whose local blocks
// follow one another in one registered region and whose remote blocks follow
// one another in one published region into one block. What must hold: a
// coalesced post moves exactly the bytes that the same list moves
// uncoalesced, on UCX RMA and on host_ipc, over shm and tcp; blocks_of counts
// the runs that the adjacency rule gives, computed here independently of
// ferry; a run is split where it crosses into an adjacent region; and every
// refusal still names the caller's descriptor index.
//
// Lists are random (seeded from Catch's --rng-seed; the seed is in every
// failure message), built by hand around region boundaries and near misses
// of the rule, or long (100 000 pairs) or large (a merged block past what
// one process_vm call moves). Every byte in reach of a transfer is checked
// on the side that received it: each block against a pattern keyed by its
// remote offset, everything else untouched.

#include <ferry/detail/metadata.hpp>
#include <ferry/ferry.hpp>

#include <catch2/catch.hpp>
#include <sys/mman.h>
#include <unistd.h>

#include "support/block_text.hpp"
#include "support/ferry_catch.hpp"
#include "support/paths.hpp"
#include "support/pattern.hpp"
#include "support/two_process.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

using Catch::Matchers::Equals;
using ferry::status;
using ferry::xfer_op;
using ferry::xfer_path;
using ferry_test::error_text;
using ferry_test::expect;
using ferry_test::expect_status;
using ferry_test::fail;
using ferry_test::side;

namespace {

using inline_backend = ferry::ucx_backend<>;
using threaded_backend = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::host>>;

constexpr std::byte untouched{0xA5};

std::string tls_under_test() { return GENERATE(as<std::string>{}, "shm", "tcp"); }

// UCX RMA, and the automatic choice, which is host_ipc between processes of one host.
xfer_path path_under_test() { return GENERATE(xfer_path::ucx, xfer_path::automatic); }

// ---- descriptor lists ---------------------------------------------------------------

// Where a pair's blocks sit: offsets from the base of the local and of the
// remote memory that its list names.
struct pair_spot {
    std::size_t local;
    std::size_t remote;
    std::size_t len;
};

// The memory that a list's offsets are in, chosen for each side: one
// registered buffer, one allocated region, or one buffer registered as two
// regions that meet in its middle.
enum class mem { user, alloc, split };

std::string name_of(mem m) {
    switch (m) {
        case mem::user: return "register_memory";
        case mem::alloc: return "allocate";
        case mem::split: return "two adjacent registered regions";
    }
    return "?";
}

struct list_case {
    std::string name;
    std::vector<pair_spot> spots;
    std::size_t runs;  // blocks that a coalesced post must move
    mem local;
    mem remote;

    [[nodiscard]] std::size_t local_extent() const {
        std::size_t e = 0;
        for (const pair_spot& s : spots) e = std::max(e, s.local + s.len);
        return e;
    }
    [[nodiscard]] std::size_t remote_extent() const {
        std::size_t e = 0;
        for (const pair_spot& s : spots) e = std::max(e, s.remote + s.len);
        return e;
    }
    [[nodiscard]] std::size_t bytes() const {
        std::size_t n = 0;
        for (const pair_spot& s : spots) n += s.len;
        return n;
    }
};

// The adjacency rule, applied to offsets alone: pair i continues pair i - 1
// when both its blocks start where that pair's end. `boundary` (0 for none)
// is where one region ends and the next begins on both sides, which a run
// does not cross.
std::size_t runs_by_rule(const std::vector<pair_spot>& spots, std::size_t boundary = 0) {
    std::size_t runs = 0;
    auto same_region = [&](std::size_t a, std::size_t b) { return boundary == 0 || (a < boundary) == (b < boundary); };
    for (std::size_t i = 0; i < spots.size(); ++i) {
        const bool continues = i > 0 && spots[i - 1].local + spots[i - 1].len == spots[i].local &&
                               spots[i - 1].remote + spots[i - 1].len == spots[i].remote &&
                               same_region(spots[i - 1].local, spots[i].local) &&
                               same_region(spots[i - 1].remote, spots[i].remote);
        if (!continues) ++runs;
    }
    return runs;
}

// How a random run begins against the one before it.
enum class seam { local_adjacent_only, remote_adjacent_only, neither_adjacent };

struct random_list {
    std::vector<pair_spot> spots;
    std::size_t runs = 0;
    std::array<std::size_t, 3> seams{};  // how many of each seam
};

constexpr std::size_t max_run = 32;
constexpr std::size_t max_len = 8192;
constexpr std::size_t max_gap = 64;

// `run_count` runs of 1 to 32 pairs of 1 B to 8 KiB (a quarter of them at
// most 64 B, so that odd and tiny sizes are common), adjacent on both sides
// within a run; between runs a gap of 1 to 64 B on the local side, the
// remote side, or both, so that the next run is adjacent on one side only
// or on neither.
random_list random_runs(std::uint64_t seed, std::size_t run_count) {
    std::mt19937_64 rng(seed);
    auto uniform = [&](std::size_t lo, std::size_t hi) {
        return std::uniform_int_distribution<std::size_t>(lo, hi)(rng);
    };
    random_list out;
    std::size_t local = uniform(0, max_gap - 1);
    std::size_t remote = uniform(0, max_gap - 1);
    for (std::size_t r = 0; r < run_count; ++r) {
        if (r > 0) {
            const auto s = static_cast<seam>(uniform(0, 2));
            ++out.seams[static_cast<std::size_t>(s)];
            if (s != seam::local_adjacent_only) local += uniform(1, max_gap);
            if (s != seam::remote_adjacent_only) remote += uniform(1, max_gap);
        }
        const std::size_t pairs = uniform(1, max_run);
        for (std::size_t k = 0; k < pairs; ++k) {
            const std::size_t len = uniform(0, 3) == 0 ? uniform(1, 64) : uniform(1, max_len);
            out.spots.push_back({local, remote, len});
            local += len;
            remote += len;
        }
    }
    out.runs = run_count;
    return out;
}

constexpr std::size_t runs_per_list = 16;

// Lists of random runs in every pairing of registered and allocated memory.
std::vector<list_case> random_cases(std::uint64_t seed, std::size_t lists) {
    std::vector<list_case> out;
    std::array<std::size_t, 3> seams{};
    for (std::size_t j = 0; j < lists; ++j) {
        const std::uint64_t list_seed = seed + j;
        random_list l = random_runs(list_seed, runs_per_list);
        // The generator's runs are the rule's runs: a seam never joins two.
        REQUIRE(runs_by_rule(l.spots) == l.runs);
        for (std::size_t k = 0; k < seams.size(); ++k) seams[k] += l.seams[k];
        const mem local = j % 2 == 0 ? mem::user : mem::alloc;
        const mem remote = (j / 2) % 2 == 0 ? mem::user : mem::alloc;
        out.push_back({"random list " + std::to_string(j) + " (seed " + std::to_string(list_seed) + ", " +
                           std::to_string(l.spots.size()) + " pairs, local " + name_of(local) + ", remote " +
                           name_of(remote) + ")",
                       std::move(l.spots), l.runs, local, remote});
    }
    // Runs that meet on one side only are what the rule must not merge.
    REQUIRE(seams[0] > 0);
    REQUIRE(seams[1] > 0);
    REQUIRE(seams[2] > 0);
    return out;
}

// ---- memory on each side --------------------------------------------------------------

// The registered and the allocated region are as large as the cases need;
// the buffer registered as two regions always has its seam at boundary_half.
constexpr std::size_t boundary_half = 64 * 1024;

std::size_t flat_size_for(const std::vector<list_case>& cases) {
    std::size_t flat = 64;
    for (const list_case& c : cases) {
        if (c.local != mem::split) flat = std::max(flat, c.local_extent());
        if (c.remote != mem::split) flat = std::max(flat, c.remote_extent());
    }
    return flat;
}

struct memory_set {
    template <class Backend>
    memory_set(Backend& b, std::size_t flat_size)
        : flat(flat_size),
          user_mem(flat_size),
          split_mem(2 * boundary_half),
          user(b.register_memory(user_mem.data(), flat_size)),
          alloc(b.allocate(flat_size)),
          low(b.register_memory(split_mem.data(), boundary_half)),
          high(b.register_memory(split_mem.data() + boundary_half, boundary_half)) {}

    [[nodiscard]] std::byte* base(mem m) {
        switch (m) {
            case mem::user: return static_cast<std::byte*>(user.data());
            case mem::alloc: return static_cast<std::byte*>(alloc.data());
            case mem::split: return split_mem.data();
        }
        return nullptr;
    }
    [[nodiscard]] std::uintptr_t addr(mem m) { return reinterpret_cast<std::uintptr_t>(base(m)); }
    [[nodiscard]] std::size_t size(mem m) const { return m == mem::split ? 2 * boundary_half : flat; }

    std::size_t flat;
    std::vector<std::byte> user_mem;
    std::vector<std::byte> split_mem;
    ferry::region user;
    ferry::region alloc;
    ferry::region low;
    ferry::region high;
};

// The target's bases, as the initiator learns them.
struct remote_bases {
    ferry::peer p;
    std::array<std::uint64_t, 3> base{};
    [[nodiscard]] std::uint64_t of(mem m) const { return base[static_cast<std::size_t>(m)]; }
};

template <class Backend>
void publish(Backend& b, memory_set& m, ferry_test::channel& ch) {
    ch.send(b.local_metadata());
    const std::array<std::uint64_t, 3> bases{m.addr(mem::user), m.addr(mem::alloc), m.addr(mem::split)};
    ch.send_u64s(bases);
}

template <class Backend>
remote_bases load_target(Backend& b, ferry_test::channel& ch) {
    const auto blob = ch.recv_bytes();
    remote_bases r;
    r.p = b.load_remote(blob);
    const auto bases = ch.recv_u64s();
    expect(bases.size() == 3, "the target sent " + std::to_string(bases.size()) + " bases, expected 3");
    std::copy(bases.begin(), bases.end(), r.base.begin());
    return r;
}

std::vector<ferry::desc> descs_at(const std::vector<pair_spot>& spots, std::uint64_t base, bool local) {
    std::vector<ferry::desc> out;
    out.reserve(spots.size());
    for (const pair_spot& s : spots)
        out.push_back({static_cast<std::uintptr_t>(base + (local ? s.local : s.remote)), s.len, 0});
    return out;
}

// Each block on one side with the pattern of `seed` at its remote offsets.
void fill_side(std::byte* base, const std::vector<pair_spot>& spots, bool local, std::uint64_t seed) {
    for (const pair_spot& s : spots)
        ferry_test::fill_pattern(base + (local ? s.local : s.remote), s.len, seed, s.remote);
}

// Empty if every block on one side holds the pattern of `seed` at its remote
// offsets and every other byte of [0, size) is untouched.
std::string verify_side(const std::byte* base, const std::vector<pair_spot>& spots, bool local, std::uint64_t seed,
                        std::size_t size) {
    std::vector<std::pair<std::size_t, std::size_t>> taken;  // (offset, len) on this side
    taken.reserve(spots.size());
    for (std::size_t i = 0; i < spots.size(); ++i) {
        const pair_spot& s = spots[i];
        const std::size_t at = local ? s.local : s.remote;
        if (auto e = ferry_test::check_pattern(base + at, s.len, seed, s.remote); !e.empty())
            return "descriptor " + std::to_string(i) + " (offset " + std::to_string(at) + ", " +
                   std::to_string(s.len) + " B): " + e;
        taken.emplace_back(at, s.len);
    }
    std::sort(taken.begin(), taken.end());
    std::size_t pos = 0;
    for (auto [at, len] : taken) {
        if (auto e = ferry_test::check_filled(base + pos, at - pos, untouched, pos); !e.empty())
            return "outside the blocks: " + e;
        pos = at + len;
    }
    if (auto e = ferry_test::check_filled(base + pos, size - pos, untouched, pos); !e.empty())
        return "outside the blocks: " + e;
    return {};
}

// ---- one list, coalesced and not, READ and WRITE, between two processes -------------------

constexpr std::array<bool, 2> both_modes{true, false};
constexpr std::array<xfer_op, 2> both_ops{xfer_op::write, xfer_op::read};

std::string mode_name(bool coalesce) { return coalesce ? "coalesced" : "separate"; }

// Round k of a run: one list, one op, one mode.
struct round_id {
    std::size_t k;
    const list_case& c;
    xfer_op op;
    bool coalesce;

    [[nodiscard]] std::string tag() const { return std::to_string(k); }
    [[nodiscard]] std::string describe() const {
        return std::string(ferry::to_string(op)) + " " + mode_name(coalesce) + ", " + c.name;
    }
    [[nodiscard]] std::string notif() const {
        return std::string(ferry::to_string(op)) + " " + mode_name(coalesce) + " round " + tag();
    }
    [[nodiscard]] std::uint64_t seed(std::uint64_t base) const { return base + 1000 * k + 17; }
};

template <class F>
void for_each_round(const std::vector<list_case>& cases, F&& f) {
    std::size_t k = 0;
    for (xfer_op op : both_ops)
        for (const list_case& c : cases)
            for (bool coalesce : both_modes) f(round_id{k++, c, op, coalesce});
}

// Each case as a READ and a WRITE, each prepared coalesced and not, posted
// with a notification; the receiving side checks every byte, and the target
// the exact notifications it has had so far.
template <class Backend>
void run_cases(const std::string& tls, xfer_path path, const std::vector<list_case>& cases, std::uint64_t seed) {
    const std::size_t flat_size = flat_size_for(cases);
    auto initiator = [&](side& s) {
        {
            Backend b(s.config("initiator"));
            memory_set m(b, flat_size);
            const remote_bases t = load_target(b, s.ch);
            for_each_round(cases, [&](const round_id& r) {
                const std::string what = r.describe() + ", seed " + std::to_string(r.seed(seed));
                const list_case& c = r.c;
                std::byte* local = m.base(c.local);
                const std::size_t local_size = m.size(c.local);
                s.ch.expect_message("ready " + r.tag());
                const ferry::xfer x =
                    b.prepare(r.op, descs_at(c.spots, m.addr(c.local), true), descs_at(c.spots, t.of(c.remote), false),
                              t.p, ferry::xfer_options{.path = path, .coalesce = r.coalesce});
                ferry_test::expect_path(b, x, ferry_test::local_host_path(path), what);
                const std::size_t want_blocks = r.coalesce ? c.runs : c.spots.size();
                expect(b.blocks_of(x) == want_blocks, what + ": blocks_of says " + std::to_string(b.blocks_of(x)) +
                                                          ", expected " + std::to_string(want_blocks));
                expect(b.size_of(x) == c.bytes(), what + ": size_of says " + std::to_string(b.size_of(x)) +
                                                      ", expected " + std::to_string(c.bytes()));
                if (r.op == xfer_op::write) {
                    fill_side(local, c.spots, true, r.seed(seed));
                } else {
                    std::memset(local, static_cast<int>(untouched), local_size);
                }
                ferry_test::post_and_wait(b, x, r.notif(), what);
                if (r.op == xfer_op::read) {
                    if (auto e = verify_side(local, c.spots, true, r.seed(seed), local_size); !e.empty())
                        fail(what + ": " + e);
                }
                expect_status(b.release(x), status::ok, what + ": release");
                s.ch.send("moved " + r.tag());
                s.ch.expect_message("checked " + r.tag());
            });
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        Backend b(s.config("target"));
        memory_set m(b, flat_size);
        publish(b, m, s.ch);
        std::vector<std::string> got, want;
        for_each_round(cases, [&](const round_id& r) {
            const std::string what = r.describe() + ", seed " + std::to_string(r.seed(seed));
            const list_case& c = r.c;
            std::byte* remote = m.base(c.remote);
            const std::size_t remote_size = m.size(c.remote);
            if (r.op == xfer_op::write) std::memset(remote, static_cast<int>(untouched), remote_size);
            else ferry_test::fill_pattern(remote, remote_size, r.seed(seed), 0);
            s.ch.send("ready " + r.tag());
            // Emulated RMA lands only while the target progresses.
            ferry_test::progress_until_message(b, s.ch);
            s.ch.expect_message("moved " + r.tag());
            if (r.op == xfer_op::write) {
                if (auto e = verify_side(remote, c.spots, false, r.seed(seed), remote_size); !e.empty())
                    fail(what + ": " + e);
            }
            want.push_back("initiator: " + r.notif());
            ferry_test::patience patience;
            while (got.size() < want.size()) {
                b.poll_notifs([&](std::string_view from, std::string_view text) {
                    got.push_back(std::string(from) + ": " + std::string(text));
                });
                patience.check("the notification of " + what);
            }
            if (got != want)
                fail(what + ": notifications so far end with '" + got.back() + "', expected '" + want.back() +
                     "' (" + std::to_string(got.size()) + " of them)");
            s.ch.send("checked " + r.tag());
        });
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("bye");
    };
    ferry_test::run_two_process(tls, initiator, target, std::chrono::seconds(120));
}

std::uint64_t base_seed() { return 0xC0A1E5CEULL + Catch::rngSeed(); }

// Eight lists: each pairing of registered and allocated memory twice, so that
// host_ipc both maps the target's memory and uses process_vm.
constexpr std::size_t random_lists = 8;

// ---- lists around a region boundary --------------------------------------------------

constexpr std::size_t boundary_len = 999;

// Eight pairs of 999 B, adjacent on both sides, the local run starting at
// `local` and the remote one at `remote` (offsets into the buffer whose
// halves are two regions).
std::vector<pair_spot> eight_adjacent(std::size_t local, std::size_t remote) {
    std::vector<pair_spot> out;
    for (std::size_t i = 0; i < 8; ++i)
        out.push_back({local + i * boundary_len, remote + i * boundary_len, boundary_len});
    return out;
}

std::vector<list_case> boundary_cases() {
    constexpr std::size_t h = boundary_half;
    constexpr std::size_t l = boundary_len;
    struct shape {
        const char* name;
        std::size_t local, remote;
        std::size_t runs;
    };
    const shape shapes[] = {
        {"no boundary crossed", 100, 300, 1},
        {"the local run crosses into the next region at pair 4", h - 4 * l, 300, 2},
        {"the remote run crosses into the next region at pair 3", 100, h - 3 * l, 2},
        {"both runs cross at pair 4", h - 4 * l, h - 4 * l, 2},
        {"the remote run crosses at pair 2, the local one at pair 6", h - 6 * l, h - 2 * l, 3},
    };
    std::vector<list_case> out;
    for (const shape& s : shapes) {
        list_case c{s.name, eight_adjacent(s.local, s.remote), s.runs, mem::split, mem::split};
        // The expectation above is the rule's, with the regions' seam where it is.
        REQUIRE(runs_by_rule(c.spots, h) == s.runs);
        out.push_back(std::move(c));
    }
    // The same runs, the other side in one flat region: only one side's seam splits.
    out.push_back({"the local run crosses at pair 5, the remote one is in one region", eight_adjacent(h - 5 * l, 7),
                   2, mem::split, mem::user});
    out.push_back({"the remote run crosses at pair 1, the local one is in one region", eight_adjacent(7, h - l), 2,
                   mem::user, mem::split});
    return out;
}

// ---- pairs that nearly continue one another -----------------------------------------

constexpr std::size_t near_len = 333;

// Eight pairs of 333 B at slots `local(i)` and `remote(i)`, slot k being
// bytes [k * 333, (k + 1) * 333) after a start of 5 B.
template <class L, class R>
list_case near_miss(std::string name, L local, R remote) {
    list_case c{std::move(name), {}, 0, mem::user, mem::user};
    for (std::size_t i = 0; i < 8; ++i)
        c.spots.push_back({5 + local(i) * near_len, 5 + remote(i) * near_len, near_len});
    c.runs = runs_by_rule(c.spots);
    return c;
}

std::vector<list_case> near_miss_cases() {
    auto up = [](std::size_t i) { return i; };
    auto down = [](std::size_t i) { return 7 - i; };
    // Pairs 3 and 4 trade slots: each still touches a neighbour in memory,
    // but not the one before it in the list.
    auto swapped = [](std::size_t i) { return i == 3 ? 4 : i == 4 ? 3 : i; };
    auto spaced = [](std::size_t i) { return 2 * i; };
    std::vector<list_case> out{
        near_miss("the remote blocks adjacent backwards", up, down),
        near_miss("the local blocks adjacent backwards", down, up),
        near_miss("both sides adjacent backwards", down, down),
        near_miss("pairs 3 and 4 swapped on both sides", swapped, swapped),
        near_miss("pairs 3 and 4 swapped on the local side", swapped, up),
        near_miss("the local blocks a block apart", spaced, up),
    };
    // Each shape must break the run where the rule says: here every
    // expectation is written out, so that the rule itself is checked.
    const std::size_t expected[] = {8, 8, 8, 4, 4, 8};
    for (std::size_t k = 0; k < out.size(); ++k) REQUIRE(out[k].runs == expected[k]);
    return out;
}

// ---- 100 000 descriptors ---------------------------------------------------------------

constexpr std::size_t large_count = 100'000;
constexpr std::size_t large_len = 64;
constexpr std::size_t large_period = 1000;

// 64 B pairs, adjacent on both sides except that every 1000th pair starts
// after a gap of 8 B: on the remote side, on the local side, or on both, in turn.
list_case large_case(mem local, mem remote) {
    list_case c{"100000 x 64 B, local " + name_of(local) + ", remote " + name_of(remote), {}, 0, local, remote};
    c.spots.reserve(large_count);
    std::size_t lo = 0, ro = 0;
    for (std::size_t i = 0; i < large_count; ++i) {
        if (i > 0 && i % large_period == 0) {
            const std::size_t turn = (i / large_period) % 3;
            if (turn != 0) lo += 8;
            if (turn != 1) ro += 8;
        }
        c.spots.push_back({lo, ro, large_len});
        lo += large_len;
        ro += large_len;
    }
    c.runs = large_count / large_period;
    REQUIRE(runs_by_rule(c.spots) == c.runs);
    return c;
}

// ---- loopback: what prepare refuses ---------------------------------------------------

ferry::ucx_config loop_config() {
    ferry::ucx_config cfg;
    cfg.name = "coalescing";
    cfg.ucx_options = {{"TLS", "shm"}};
    return cfg;
}


// One backend that has loaded its own metadata. `src` and `dst` are each one
// buffer registered as two adjacent halves, followed by as many bytes again
// that are not registered.
struct loopback {
    static constexpr std::size_t half = 4096;
    inline_backend b{loop_config()};
    std::vector<std::byte> src_mem = std::vector<std::byte>(4 * half);
    std::vector<std::byte> dst_mem = std::vector<std::byte>(4 * half);
    ferry::region src_low = b.register_memory(src_mem.data(), half);
    ferry::region src_high = b.register_memory(src_mem.data() + half, half);
    ferry::region dst_low = b.register_memory(dst_mem.data(), half);
    ferry::region dst_high = b.register_memory(dst_mem.data() + half, half);
    ferry::peer self = b.load_remote(b.local_metadata());

    [[nodiscard]] std::uintptr_t src(std::size_t offset) {
        return reinterpret_cast<std::uintptr_t>(src_mem.data()) + offset;
    }
    [[nodiscard]] std::uintptr_t dst(std::size_t offset) {
        return reinterpret_cast<std::uintptr_t>(dst_mem.data()) + offset;
    }
};

constexpr std::size_t pair_len = 256;

struct pair_lists {
    std::vector<ferry::desc> local, remote;
};

// Twelve pairs of 256 B in the low halves, adjacent on both sides: one run.
pair_lists one_run(loopback& lb) {
    pair_lists p;
    for (std::size_t i = 0; i < 12; ++i) {
        p.local.push_back({lb.src(64 + i * pair_len), pair_len, 0});
        p.remote.push_back({lb.dst(128 + i * pair_len), pair_len, 0});
    }
    return p;
}

// Anonymous memory that costs nothing until touched: pages never written
// read as zeros from the kernel's zero page.
class lazy_memory {
public:
    explicit lazy_memory(std::size_t len)
        : len_(len),
          p_(::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)) {
        if (p_ == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap");
    }
    lazy_memory(const lazy_memory&) = delete;
    lazy_memory& operator=(const lazy_memory&) = delete;
    ~lazy_memory() { ::munmap(p_, len_); }

    [[nodiscard]] std::byte* data() const { return static_cast<std::byte*>(p_); }

private:
    std::size_t len_;
    void* p_;
};

}  // namespace

TEST_CASE("coalesced and separate posts of random runs move the same bytes, and blocks_of counts the runs") {
    const std::string tls = tls_under_test();
    const xfer_path path = path_under_test();
    const std::uint64_t seed = base_seed();
    CAPTURE(tls, path, seed);
    run_cases<inline_backend>(tls, path, random_cases(seed, random_lists), seed);
}

TEST_CASE("under the thread policy, coalesced and separate posts of random runs move the same bytes") {
    const xfer_path path = path_under_test();
    const std::uint64_t seed = base_seed() + 500;
    CAPTURE(path, seed);
    run_cases<threaded_backend>("shm", path, random_cases(seed, random_lists), seed);
}

TEST_CASE("a run that crosses into an adjacent registered or published region is split there, and its bytes arrive") {
    const std::string tls = tls_under_test();
    const xfer_path path = path_under_test();
    CAPTURE(tls, path);
    run_cases<inline_backend>(tls, path, boundary_cases(), 77);
}

TEST_CASE("pairs adjacent only backwards, out of order or a block apart are not merged, and their bytes arrive") {
    const xfer_path path = path_under_test();
    CAPTURE(path);
    run_cases<inline_backend>("shm", path, near_miss_cases(), 55);
}

TEST_CASE("100000 adjacent 64 B descriptors become 100 blocks, and move the same bytes coalesced or not") {
    const xfer_path path = path_under_test();
    CAPTURE(path);
    // Allocated memory takes UCX's direct path, or host_ipc's mapping, where
    // registered memory is emulated, or copied with process_vm.
    const std::vector<list_case> cases{large_case(mem::user, mem::user), large_case(mem::alloc, mem::alloc)};
    run_cases<inline_backend>("shm", path, cases, 99);
}

TEST_CASE("prepare names the caller's index of a bad pair inside or just after a run it would merge") {
    loopback lb;
    const xfer_path path = GENERATE(xfer_path::automatic, xfer_path::ucx, xfer_path::host_ipc);
    const bool coalesce = GENERATE(true, false);
    CAPTURE(path, coalesce);
    const ferry::xfer_options options{.path = path, .coalesce = coalesce};
    pair_lists p = one_run(lb);
    std::vector<std::byte> elsewhere(pair_len);

    // Unbroken, the list is one run: each bad pair below sits in a run that
    // prepare would merge.
    {
        const ferry::xfer x = lb.b.prepare(xfer_op::write, p.local, p.remote, lb.self, options);
        CHECK(lb.b.blocks_of(x) == (coalesce ? 1U : p.local.size()));
        CHECK(lb.b.release(x) == status::ok);
    }
    auto refuse = [&](const pair_lists& bad, status s, const std::string& message) {
        REQUIRE_FERRY_ERROR(lb.b.prepare(xfer_op::write, bad.local, bad.remote, lb.self, options), s,
                            Equals(error_text(message, s)));
    };

    SECTION("a local block outside every registered region, inside the run") {
        p.local[3] = {reinterpret_cast<std::uintptr_t>(elsewhere.data()), pair_len, 0};
        refuse(p, status::not_registered,
               "prepare: descriptor 3: local block " + ferry_test::block_text(p.local[3]) + " is not inside any registered region");
    }
    SECTION("a local block that spans two adjacent registered regions, adjacent to the pair before it") {
        // The run, moved so that its pair 7 straddles the regions' seam.
        for (std::size_t i = 0; i < p.local.size(); ++i)
            p.local[i].addr = lb.src(loopback::half - 7 * pair_len + i * pair_len - 10);
        refuse(p, status::not_registered,
               "prepare: descriptor 7: local block " + ferry_test::block_text(p.local[7]) + " is not inside any registered region");
    }
    SECTION("a remote block outside every published region, just after the run") {
        p.local.push_back({lb.src(64 + 12 * pair_len), pair_len, 0});
        p.remote.push_back({lb.dst(2 * loopback::half), pair_len, 0});
        refuse(p, status::not_registered,
               "prepare: descriptor 12: remote block " + ferry_test::block_text(p.remote[12]) +
                   " is not inside any region that peer 'coalescing' published");
    }
    SECTION("a remote block that spans two adjacent published regions, adjacent to the pair before it") {
        for (std::size_t i = 0; i < p.remote.size(); ++i)
            p.remote[i].addr = lb.dst(loopback::half - 5 * pair_len + i * pair_len - 1);
        refuse(p, status::not_registered,
               "prepare: descriptor 5: remote block " + ferry_test::block_text(p.remote[5]) +
                   " is not inside any region that peer 'coalescing' published");
    }
    SECTION("a remote block one byte shorter than its local block, inside the run") {
        p.remote[5].len = pair_len - 1;
        refuse(p, status::invalid_argument, "prepare: descriptor 5: local length 256 differs from remote length 255");
    }
    SECTION("a pair of length 0, inside the run") {
        p.local[4].len = 0;
        p.remote[4].len = 0;
        refuse(p, status::invalid_argument, "prepare: descriptor 4: length is 0");
    }
    SECTION("a pair of length 0 just after the run, where the run ends") {
        p.local.push_back({lb.src(64 + 12 * pair_len), 0, 0});
        p.remote.push_back({lb.dst(128 + 12 * pair_len), 0, 0});
        refuse(p, status::invalid_argument, "prepare: descriptor 12: length is 0");
    }
    SECTION("a later bad pair after an earlier one: the earlier is named") {
        p.remote[9].len = pair_len + 1;
        p.local[10] = {reinterpret_cast<std::uintptr_t>(elsewhere.data()), pair_len, 0};
        refuse(p, status::invalid_argument, "prepare: descriptor 9: local length 256 differs from remote length 257");
    }
}

TEST_CASE("forced host_ipc refuses a run in memory it cannot serve by the caller's index of its first pair") {
    // A peer cannot publish host memory that host_ipc refuses from this
    // process, so the refusal comes from the backend's own metadata, forged
    // to say that the high half of dst is GPU memory.
    loopback lb;
    const bool coalesce = GENERATE(true, false);
    CAPTURE(coalesce);
    // The view refers into the blob, which must outlive it.
    const std::vector<std::byte> blob = lb.b.local_metadata();
    auto md = ferry::detail::decode_metadata(blob);
    md.name = "coalescing-forged";
    bool forged = false;
    for (auto& r : md.regions)
        if (r.addr == reinterpret_cast<std::uintptr_t>(lb.dst_high.data())) {
            r.kind = ferry::detail::memory_kind_code::cuda;
            forged = true;
        }
    REQUIRE(forged);
    const ferry::peer p = lb.b.load_remote(ferry::detail::encode_metadata(md));

    // Pairs 0-4: one run in the low halves; pair 5 after a gap, still low;
    // pairs 6-9: the remote run goes on into the forged high half, from
    // where pair 5 ends: merged blocks 0, 1 and 2, the last beginning at
    // the caller's descriptor 6.
    std::vector<ferry::desc> local, remote;
    for (std::size_t i = 0; i < 5; ++i) {
        local.push_back({lb.src(i * pair_len), pair_len, 0});
        remote.push_back({lb.dst(i * pair_len), pair_len, 0});
    }
    const std::size_t fifth = loopback::half - 5 * pair_len;
    for (std::size_t i = 0; i < 5; ++i) {
        local.push_back({lb.src(fifth + i * pair_len - 100), pair_len, 0});
        remote.push_back({lb.dst(fifth + (i + 4) * pair_len), pair_len, 0});
    }
    REQUIRE(remote[5].addr + pair_len == reinterpret_cast<std::uintptr_t>(lb.dst_high.data()));
    const ferry::xfer_options forced{.path = xfer_path::host_ipc, .coalesce = coalesce};
    REQUIRE_FERRY_ERROR(lb.b.prepare(xfer_op::write, local, remote, p, forced), status::invalid_argument,
                        Equals(error_text("prepare: path host_ipc: descriptor 6: the remote block is not host memory",
                                    status::invalid_argument)));
    // Without the request, UCX takes it, with the forged region's run on its own.
    const ferry::xfer x =
        lb.b.prepare(xfer_op::write, local, remote, p, ferry::xfer_options{.coalesce = coalesce});
    CHECK(lb.b.path_of(x) == xfer_path::ucx);
    CHECK(lb.b.blocks_of(x) == (coalesce ? 3U : local.size()));
    CHECK(lb.b.release(x) == status::ok);
}

TEST_CASE("a host_ipc run merged past what one process_vm call moves (2 GiB) still arrives whole") {
    // Linux moves at most MAX_RW_COUNT (2 GiB less a page) in one
    // process_vm_writev/readv call and returns a short count past it. 2048
    // adjacent pairs of 1 MiB + 4 KiB are 2 GiB + 8 MiB: separately they fill
    // two calls of 1024 blocks each, merged they are one block.
    constexpr std::size_t len = (std::size_t{1} << 20) + 4096;
    constexpr std::size_t count = 2048;
    constexpr std::size_t total = len * count;
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const auto free_bytes = static_cast<std::size_t>(::sysconf(_SC_AVPHYS_PAGES)) * page;
    if (free_bytes < total + (std::size_t{1} << 30))
        return ferry_test::skip("needs 3 GiB of free memory, " + std::to_string(free_bytes >> 20) + " MiB free");

    // `src` stays zero but for each block's first 8 bytes, its number + 1,
    // so that only `dst` and a page per block of `src` take memory.
    const lazy_memory src(total);
    const lazy_memory dst(total);
    for (std::size_t i = 0; i < count; ++i) {
        const std::uint64_t mark = i + 1;
        std::memcpy(src.data() + i * len, &mark, sizeof mark);
    }
    inline_backend b(loop_config());
    const ferry::region src_region = b.register_memory(src.data(), total);
    const ferry::region dst_region = b.register_memory(dst.data(), total);
    const ferry::peer self = b.load_remote(b.local_metadata());
    const std::vector<std::byte> zeros(len);

    for (xfer_op op : both_ops)
        for (bool coalesce : both_modes) {
            const std::string direction(ferry::to_string(op));
            CAPTURE(direction, coalesce);
            std::memset(dst.data(), static_cast<int>(untouched), total);
            // A WRITE from src to dst, a READ into dst from src.
            std::vector<ferry::desc> from, to;
            for (std::size_t i = 0; i < count; ++i) {
                from.push_back(src_region.slice(i * len, len));
                to.push_back(dst_region.slice(i * len, len));
            }
            const bool write = op == xfer_op::write;
            const ferry::xfer x = b.prepare(op, write ? from : to, write ? to : from, self,
                                            ferry::xfer_options{.path = xfer_path::host_ipc, .coalesce = coalesce});
            CHECK(b.blocks_of(x) == (coalesce ? 1U : count));
            status s = b.post(x, {});
            while (s == status::in_progress) s = b.check(x);
            CHECK(s == status::ok);
            std::size_t first_bad = count;
            for (std::size_t i = 0; i < count && first_bad == count; ++i) {
                std::uint64_t mark = 0;
                std::memcpy(&mark, dst.data() + i * len, sizeof mark);
                const std::byte* rest = dst.data() + i * len + sizeof mark;
                if (mark != i + 1 || std::memcmp(rest, zeros.data(), len - sizeof mark) != 0) first_bad = i;
            }
            INFO("the first block that did not arrive intact: " << first_bad << " of " << count);
            CHECK(first_bad == count);
            CHECK(b.release(x) == status::ok);
        }
}
