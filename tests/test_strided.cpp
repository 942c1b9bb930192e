// Strided descriptor lists (strided_desc): prepare pairs the blocks of a
// local and a remote list block by block, however the two lists cut them
// into entries. What must hold: a strided transfer moves exactly the bytes
// that the same blocks as a plain list move, on UCX RMA and on host_ipc,
// over shm and tcp, READ and WRITE, with its notification; 100 000 blocks
// in a few entries move; and every bad entry is refused before anything is
// prepared, naming the entry, and every bad block naming the block and the
// entry of each side that holds it.
//
// The blocks that a list stands for are computed here, independently of
// ferry, and every byte of both buffers is checked on the side that
// received: each block against a pattern keyed by its remote offset,
// everything else untouched.

#include <ferry/ferry.hpp>

#include <catch2/catch.hpp>

#include "support/ferry_catch.hpp"
#include "support/paths.hpp"
#include "support/pattern.hpp"
#include "support/two_process.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

using Catch::Matchers::Equals;
using ferry::status;
using ferry::strided_desc;
using ferry::xfer_op;
using ferry::xfer_path;
using ferry_test::error_text;
using ferry_test::expect;
using ferry_test::expect_status;
using ferry_test::fail;
using ferry_test::side;

namespace {

constexpr std::byte untouched{0x5A};

// An entry as offsets from its side's buffer.
struct entry {
    std::size_t offset, len, stride, count;
};

// A block pair as offsets: what the entries stand for.
struct spot {
    std::size_t local, remote, len;
};

struct strided_case {
    std::string name;
    std::vector<entry> local, remote;

    [[nodiscard]] static std::vector<std::pair<std::size_t, std::size_t>> blocks(const std::vector<entry>& side) {
        std::vector<std::pair<std::size_t, std::size_t>> out;  // (offset, len)
        for (const entry& e : side)
            for (std::size_t k = 0; k < e.count; ++k) out.emplace_back(e.offset + k * e.stride, e.len);
        return out;
    }
    [[nodiscard]] std::vector<spot> spots() const {
        const auto l = blocks(local), r = blocks(remote);
        REQUIRE(l.size() == r.size());
        std::vector<spot> out;
        for (std::size_t i = 0; i < l.size(); ++i) {
            REQUIRE(l[i].second == r[i].second);
            out.push_back({l[i].first, r[i].first, l[i].second});
        }
        return out;
    }
    [[nodiscard]] std::size_t extent() const {
        std::size_t e = 0;
        for (const spot& s : spots()) e = std::max({e, s.local + s.len, s.remote + s.len});
        return e;
    }
};

// Pages of a KV cache: the remote side keeps `layers` layers of `pages`
// pages each, layer-major; the transfer takes the chosen pages of every
// layer, one entry per page (stride: a layer). The local side keeps them
// packed, page by page, one contiguous entry per page.
strided_case kv_case(std::size_t layers, std::size_t pages, std::size_t page, const std::vector<std::size_t>& chosen) {
    strided_case c{"KV cache: " + std::to_string(chosen.size()) + " of " + std::to_string(pages) + " pages x " +
                       std::to_string(layers) + " layers of " + std::to_string(page) + " B",
                   {},
                   {}};
    for (std::size_t j = 0; j < chosen.size(); ++j) {
        c.remote.push_back({chosen[j] * page, page, pages * page, layers});
        c.local.push_back({j * layers * page, page, page, layers});
    }
    return c;
}

// Random entries: the remote side a run of entries of random length,
// count and gap; the local side the same blocks cut into other entries
// (never across a change of length), with other gaps, some of them plain
// descriptors.
strided_case random_case(std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    auto uniform = [&](std::size_t lo, std::size_t hi) {
        return std::uniform_int_distribution<std::size_t>(lo, hi)(rng);
    };
    strided_case c{"random entries (seed " + std::to_string(seed) + ")", {}, {}};
    std::vector<std::size_t> lens;  // of each block
    std::size_t at = uniform(0, 63);
    for (std::size_t e = 0, n = uniform(8, 24); e < n; ++e) {
        const std::size_t len = uniform(0, 3) == 0 ? uniform(1, 64) : uniform(1, 4096);
        const std::size_t count = uniform(1, 16);
        const std::size_t stride = len + uniform(0, 1) * uniform(1, 64);
        c.remote.push_back({at, len, stride, count});
        at += stride * count + uniform(0, 64);
        lens.insert(lens.end(), count, len);
    }
    at = uniform(0, 63);
    for (std::size_t b = 0; b < lens.size();) {
        std::size_t count = uniform(1, 12);
        std::size_t same = 1;
        while (b + same < lens.size() && lens[b + same] == lens[b]) ++same;
        count = std::min(count, same);
        const std::size_t stride = count == 1 ? 0 : lens[b] + uniform(0, 1) * uniform(1, 32);
        c.local.push_back({at, lens[b], stride, count});
        at += (count == 1 ? lens[b] : stride * count) + uniform(0, 48);
        b += count;
    }
    return c;
}

// 100 000 blocks of 64 B: the remote side 100 entries of 1000 blocks a
// block apart, the local side one contiguous entry.
strided_case large_case() {
    constexpr std::size_t blocks = 100'000, len = 64, per_entry = 1000;
    strided_case c{"100000 x 64 B in 100 remote entries and 1 local entry", {{0, len, len, blocks}}, {}};
    for (std::size_t e = 0; e < blocks / per_entry; ++e)
        c.remote.push_back({e * per_entry * 2 * len, len, 2 * len, per_entry});
    return c;
}

std::vector<strided_desc> descs_at(const std::vector<entry>& side, std::uintptr_t base) {
    std::vector<strided_desc> out;
    for (const entry& e : side) out.emplace_back(base + e.offset, e.len, 0, e.stride, e.count);
    return out;
}

std::vector<ferry::desc> flat_at(const std::vector<spot>& spots, std::uintptr_t base, bool local) {
    std::vector<ferry::desc> out;
    for (const spot& s : spots) out.push_back({base + (local ? s.local : s.remote), s.len, 0});
    return out;
}

// Empty if each block on one side holds the pattern at its remote offset
// and every other byte of [0, size) is untouched.
std::string verify_side(const std::byte* base, const std::vector<spot>& spots, bool local, std::uint64_t seed,
                        std::size_t size) {
    std::vector<std::pair<std::size_t, std::size_t>> taken;
    for (std::size_t i = 0; i < spots.size(); ++i) {
        const spot& s = spots[i];
        const std::size_t at = local ? s.local : s.remote;
        if (auto e = ferry_test::check_pattern(base + at, s.len, seed, s.remote); !e.empty())
            return "block " + std::to_string(i) + " (offset " + std::to_string(at) + "): " + e;
        taken.emplace_back(at, s.len);
    }
    std::sort(taken.begin(), taken.end());
    std::size_t pos = 0;
    for (auto [at, len] : taken) {
        if (at > pos)
            if (auto e = ferry_test::check_filled(base + pos, at - pos, untouched, pos); !e.empty())
                return "outside the blocks: " + e;
        pos = std::max(pos, at + len);
    }
    if (auto e = ferry_test::check_filled(base + pos, size - pos, untouched, pos); !e.empty())
        return "outside the blocks: " + e;
    return {};
}

// Each case as a WRITE and a READ, prepared strided and as the same blocks
// in a plain list, each posted with a notification; the receiving side
// checks every byte, the target every notification.
template <class Backend>
void run_cases(const std::string& tls, xfer_path path, const std::vector<strided_case>& cases) {
    std::size_t size = 64;
    for (const strided_case& c : cases) size = std::max(size, c.extent());
    struct round {
        std::size_t k;
        const strided_case& c;
        xfer_op op;
        bool strided;
        [[nodiscard]] std::string what() const {
            return std::string(ferry::to_string(op)) + (strided ? " strided, " : " plain, ") + c.name;
        }
        [[nodiscard]] std::uint64_t seed() const { return 0x57121DEDULL + 7919 * k; }
    };
    auto for_each_round = [&](auto&& f) {
        std::size_t k = 0;
        for (xfer_op op : {xfer_op::write, xfer_op::read})
            for (const strided_case& c : cases)
                for (bool strided : {true, false}) f(round{k++, c, op, strided});
    };
    auto initiator = [&](side& s) {
        {
            Backend b(s.config("initiator"));
            auto mem = b.allocate(size);
            auto* base = static_cast<std::byte*>(mem.data());
            const ferry::peer t = b.load_remote(s.ch.recv_bytes());
            const std::uint64_t remote = s.ch.recv_u64s().at(0);
            for_each_round([&](const round& r) {
                const auto spots = r.c.spots();
                s.ch.expect_message("ready " + std::to_string(r.k));
                const ferry::xfer_options opts{.path = path};
                const ferry::xfer x =
                    r.strided ? b.prepare(r.op, descs_at(r.c.local, reinterpret_cast<std::uintptr_t>(mem.data())), descs_at(r.c.remote, remote), t, opts)
                              : b.prepare(r.op, flat_at(spots, reinterpret_cast<std::uintptr_t>(mem.data()), true), flat_at(spots, remote, false), t,
                                          opts);
                ferry_test::expect_path(b, x, ferry_test::local_host_path(path), r.what());
                if (r.op == xfer_op::write) {
                    std::memset(base, static_cast<int>(untouched), size);
                    for (const spot& sp : spots) ferry_test::fill_pattern(base + sp.local, sp.len, r.seed(), sp.remote);
                } else {
                    std::memset(base, static_cast<int>(untouched), size);
                }
                ferry_test::post_and_wait(b, x, "round " + std::to_string(r.k), r.what());
                if (r.op == xfer_op::read)
                    if (auto e = verify_side(base, spots, true, r.seed(), size); !e.empty()) fail(r.what() + ": " + e);
                expect_status(b.release(x), status::ok, r.what() + ": release");
                s.ch.send("moved " + std::to_string(r.k));
                s.ch.expect_message("checked " + std::to_string(r.k));
            });
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        Backend b(s.config("target"));
        auto mem = b.allocate(size);
        auto* base = static_cast<std::byte*>(mem.data());
        s.ch.send(b.local_metadata());
        s.ch.send_u64s(std::array<std::uint64_t, 1>{reinterpret_cast<std::uintptr_t>(mem.data())});
        std::vector<std::string> got;
        for_each_round([&](const round& r) {
            const auto spots = r.c.spots();
            if (r.op == xfer_op::write) {
                std::memset(base, static_cast<int>(untouched), size);
            } else {
                // Every byte holds the pattern at its own offset, so that each
                // block holds it at its remote offset.
                ferry_test::fill_pattern(base, size, r.seed(), 0);
            }
            s.ch.send("ready " + std::to_string(r.k));
            ferry_test::progress_until_message(b, s.ch);
            s.ch.expect_message("moved " + std::to_string(r.k));
            if (r.op == xfer_op::write)
                if (auto e = verify_side(base, spots, false, r.seed(), size); !e.empty()) fail(r.what() + ": " + e);
            const std::string want = "initiator: round " + std::to_string(r.k);
            ferry_test::patience patience;
            while (got.size() < r.k + 1) {
                b.poll_notifs([&](std::string_view from, std::string_view text) {
                    got.push_back(std::string(from) + ": " + std::string(text));
                });
                patience.check("the notification of " + r.what());
            }
            if (got.size() != r.k + 1 || got.back() != want)
                fail(r.what() + ": notification '" + got.back() + "', expected '" + want + "' (" +
                     std::to_string(got.size()) + " so far)");
            s.ch.send("checked " + std::to_string(r.k));
        });
        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("bye");
    };
    ferry_test::run_two_process(tls, initiator, target, std::chrono::seconds(120));
}

std::string tls_under_test() { return GENERATE(as<std::string>{}, "shm", "tcp"); }
xfer_path path_under_test() { return GENERATE(xfer_path::ucx, xfer_path::automatic); }

// ---- loopback: what prepare refuses ---------------------------------------------------

ferry::ucx_config loop_config() {
    ferry::ucx_config cfg;
    cfg.name = "strided";
    cfg.ucx_options = {{"TLS", "shm"}};
    return cfg;
}

struct loopback {
    static constexpr std::size_t size = 64 * 1024;
    ferry::ucx_backend<> b{loop_config()};
    std::vector<std::byte> src_mem = std::vector<std::byte>(size);
    std::vector<std::byte> dst_mem = std::vector<std::byte>(size);
    ferry::region src_region = b.register_memory(src_mem.data(), size);
    ferry::region dst_region = b.register_memory(dst_mem.data(), size);
    ferry::peer self = b.load_remote(b.local_metadata());

    [[nodiscard]] std::uintptr_t src(std::size_t offset) const {
        return reinterpret_cast<std::uintptr_t>(src_mem.data()) + offset;
    }
    [[nodiscard]] std::uintptr_t dst(std::size_t offset) const {
        return reinterpret_cast<std::uintptr_t>(dst_mem.data()) + offset;
    }
    [[nodiscard]] std::string refusal(xfer_op op, const std::vector<strided_desc>& l,
                                      const std::vector<strided_desc>& r) {
        auto e = ferry_test::error_from([&] { static_cast<void>(b.prepare(op, l, r, self)); });
        return e ? std::string(e->what()) : "(prepared)";
    }
};

}  // namespace

TEST_CASE("strided and plain lists of the same blocks move the same bytes", "[strided]") {
    const std::string tls = tls_under_test();
    const xfer_path path = path_under_test();
    INFO("tls " << tls << ", path " << ferry_test::str(path));
    std::vector<strided_case> cases{kv_case(4, 8, 512, {1, 2, 3, 6}), kv_case(3, 16, 100, {15, 0, 7})};
    for (std::uint64_t seed = 1; seed <= 6; ++seed) cases.push_back(random_case(seed + 1000 * Catch::rngSeed()));
    run_cases<ferry::ucx_backend<>>(tls, path, cases);
}

TEST_CASE("100 000 blocks in a few strided entries move, every byte checked", "[strided]") {
    const std::string tls = tls_under_test();
    INFO("tls " << tls);
    run_cases<ferry::ucx_backend<>>(tls, xfer_path::ucx, {large_case()});
}

TEST_CASE("strided lists under the progress thread", "[strided]") {
    using threaded = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::host>>;
    run_cases<threaded>("shm", xfer_path::automatic, {kv_case(2, 4, 256, {3, 1}), random_case(77)});
}

TEST_CASE("a source entry of stride 0 sends one block to many", "[strided]") {
    loopback lb;
    for (std::size_t i = 0; i < 64; ++i) lb.src_mem[i] = static_cast<std::byte>(i + 1);
    std::fill(lb.dst_mem.begin(), lb.dst_mem.end(), untouched);
    const std::vector<strided_desc> l{{lb.src(0), 64, 0, 0, 5}};
    const std::vector<strided_desc> r{{lb.dst(1000), 64, 0, 100, 5}};
    const ferry::xfer x = lb.b.prepare(xfer_op::write, l, r, lb.self);
    CHECK(lb.b.blocks_of(x) == 5);
    CHECK(lb.b.size_of(x) == 5 * 64);
    ferry_test::post_and_wait(lb.b, x, {}, "broadcast");
    for (std::size_t k = 0; k < 5; ++k) {
        INFO("block " << k);
        CHECK(std::memcmp(lb.dst_mem.data() + 1000 + k * 100, lb.src_mem.data(), 64) == 0);
        CHECK(ferry_test::check_filled(lb.dst_mem.data() + 1064 + k * 100, 36, untouched).empty());
    }
    CHECK(lb.b.release(x) == status::ok);
}

TEST_CASE("a contiguous strided entry becomes one block; coalescing off keeps every block", "[strided]") {
    loopback lb;
    const std::vector<strided_desc> l{{lb.src(0), 256, 0, 256, 16}};
    const std::vector<strided_desc> r{{lb.dst(512), 256, 0, 256, 8}, {lb.dst(512 + 8 * 256), 256, 0, 256, 8}};
    const ferry::xfer merged = lb.b.prepare(xfer_op::write, l, r, lb.self);
    CHECK(lb.b.blocks_of(merged) == 1);
    const ferry::xfer separate =
        lb.b.prepare(xfer_op::write, l, r, lb.self, ferry::xfer_options{.coalesce = false});
    CHECK(lb.b.blocks_of(separate) == 16);
    CHECK(lb.b.release(merged) == status::ok);
    CHECK(lb.b.release(separate) == status::ok);
}

TEST_CASE("entries across regions: one per region, and one whose blocks lie in two", "[strided]") {
    // The source buffer registered as two halves: prepare checks an entry by
    // the span of its blocks, which for the last entry lies in no single
    // region though each of its blocks lies in one.
    loopback lb;
    constexpr std::size_t half = loopback::size / 2;
    std::vector<std::byte> mem(loopback::size);
    const ferry::region low = lb.b.register_memory(mem.data(), half);
    const ferry::region high = lb.b.register_memory(mem.data() + half, half);
    const auto at = [&](std::size_t offset) { return reinterpret_cast<std::uintptr_t>(mem.data()) + offset; };
    for (std::size_t i = 0; i < mem.size(); ++i) mem[i] = static_cast<std::byte>(i * 7 + 3);
    const std::vector<strided_desc> per_region{{at(0), 64, 0, 128, 4}, {at(half), 64, 0, 256, 6}};
    const std::vector<strided_desc> across{{at(0), 64, 0, 128, 4}, {at(half), 64, 0, 256, 4},
                                           {at(half - 128), 64, 0, 128, 2}};
    const std::vector<strided_desc> r{{lb.dst(0), 64, 0, 64, 10}};
    for (const auto* l : {&per_region, &across})
        for (const xfer_path path : {xfer_path::ucx, xfer_path::automatic}) {
            INFO((l == &across ? "across" : "per region") << ", path " << ferry_test::str(path));
            std::fill(lb.dst_mem.begin(), lb.dst_mem.end(), untouched);
            const ferry::xfer x = lb.b.prepare(xfer_op::write, *l, r, lb.self, ferry::xfer_options{.path = path});
            CHECK(lb.b.blocks_of(x) == 10);
            ferry_test::post_and_wait(lb.b, x, {}, "across regions");
            std::size_t k = 0;
            for (const strided_desc& e : *l)
                for (std::size_t j = 0; j < e.count; ++j, ++k) {
                    INFO("block " << k);
                    CHECK(std::memcmp(lb.dst_mem.data() + k * 64,
                                      reinterpret_cast<const void*>(e.addr + j * e.stride), 64) == 0);
                }
            CHECK(ferry_test::check_filled(lb.dst_mem.data() + 640, loopback::size - 640, untouched).empty());
            CHECK(lb.b.release(x) == status::ok);
        }
}

TEST_CASE("prepare refuses bad strided entries, naming the entry or the block", "[strided]") {
    loopback lb;
    const std::size_t most = std::numeric_limits<std::size_t>::max();
    auto invalid = [](const std::string& m) { return error_text(m, status::invalid_argument); };
    using L = std::vector<strided_desc>;

    SECTION("empty lists") {
        CHECK_THAT(lb.refusal(xfer_op::write, {}, L{{lb.dst(0), 8, 0}}), Equals(invalid("prepare: the local list is empty")));
        CHECK_THAT(lb.refusal(xfer_op::write, L{{lb.src(0), 8, 0}}, {}),
                   Equals(invalid("prepare: the remote list is empty")));
    }
    SECTION("zero length and zero count") {
        CHECK_THAT(lb.refusal(xfer_op::write, L{{lb.src(0), 8, 0}, {lb.src(8), 0, 0, 8, 2}}, L{{lb.dst(0), 8, 0, 8, 3}}),
                   Equals(invalid("prepare: local entry 1: length is 0")));
        CHECK_THAT(lb.refusal(xfer_op::write, L{{lb.src(0), 8, 0, 8, 2}}, L{{lb.dst(0), 8, 0, 8, 2}, {lb.dst(64), 8, 0, 8, 0}}),
                   Equals(invalid("prepare: remote entry 1: count is 0")));
    }
    SECTION("blocks that overlap on the side that is written") {
        // WRITE writes the remote side, READ the local one; the other side may overlap.
        CHECK_THAT(lb.refusal(xfer_op::write, L{{lb.src(0), 64, 0, 32, 4}}, L{{lb.dst(0), 64, 0, 32, 4}}),
                   Equals(invalid("prepare: remote entry 0: stride 32 is smaller than the length 64, so the blocks "
                                  "it receives overlap")));
        CHECK_THAT(lb.refusal(xfer_op::read, L{{lb.src(0), 64, 0, 0, 4}}, L{{lb.dst(0), 64, 0, 0, 4}}),
                   Equals(invalid("prepare: local entry 0: stride 0 is smaller than the length 64, so the blocks it "
                                  "receives overlap")));
    }
    SECTION("blocks past the end of the address space") {
        const std::string want = invalid("prepare: remote entry 0: " + std::to_string(most / 2) +
                                         " blocks of stride 4 from " + ferry::detail::hex(lb.dst(0)) +
                                         " run past the end of the address space");
        CHECK_THAT(lb.refusal(xfer_op::read, L{{lb.src(0), 4, 0, 4, most / 2}}, L{{lb.dst(0), 4, 0, 4, most / 2}}),
                   Equals(invalid("prepare: local entry 0: " + std::to_string(most / 2) + " blocks of stride 4 from " +
                                  ferry::detail::hex(lb.src(0)) + " run past the end of the address space")));
        CHECK_THAT(lb.refusal(xfer_op::read, L{{lb.src(0), 4, 0, 4, 4}}, L{{lb.dst(0), 4, 0, 4, most / 2}}),
                   Equals(want));
        CHECK_THAT(lb.refusal(xfer_op::write, L{{lb.src(0), 8, 0, 0, 2}}, L{{lb.dst(0), 8, 0, most / 2, 3}}),
                   Equals(invalid("prepare: remote entry 0: 3 blocks of stride " + std::to_string(most / 2) +
                                  " from " + ferry::detail::hex(lb.dst(0)) + " run past the end of the address space")));
    }
    SECTION("more blocks than a transfer holds") {
        const std::size_t too_many = ferry::detail::max_strided_blocks / 2 + 1;
        CHECK_THAT(lb.refusal(xfer_op::write, L{{lb.src(0), 1, 0, 0, too_many}, {lb.src(0), 1, 0, 0, too_many}},
                              L{{lb.dst(0), 1, 0, 1, 4}}),
                   Equals(invalid("prepare: the local list holds more than " +
                                  std::to_string(ferry::detail::max_strided_blocks) + " blocks")));
    }
    SECTION("lists that hold different numbers of blocks") {
        CHECK_THAT(lb.refusal(xfer_op::write, L{{lb.src(0), 8, 0, 8, 3}, {lb.src(100), 8, 0}},
                              L{{lb.dst(0), 8, 0, 8, 5}}),
                   Equals(invalid("prepare: the local entries hold 4 blocks but the remote entries 5")));
    }
    SECTION("a block pair of different lengths is named with the entries that hold it") {
        CHECK_THAT(lb.refusal(xfer_op::write, L{{lb.src(0), 8, 0, 8, 3}, {lb.src(100), 16, 0, 16, 2}},
                              L{{lb.dst(0), 8, 0, 8, 4}, {lb.dst(100), 16, 0}}),
                   Equals(invalid("prepare: block 3 (local entry 1, block 0; remote entry 0, block 3): local "
                                  "length 16 differs from remote length 8")));
    }
    SECTION("a last block outside the region is named with its entries") {
        // The remote entry's fourth block ends 1 byte past the registered buffer.
        const std::uintptr_t start = lb.dst(loopback::size - 3 * 101 - 100);
        CHECK_THAT(lb.refusal(xfer_op::write, L{{lb.src(0), 101, 0, 101, 4}}, L{{start, 101, 0, 101, 4}}),
                   Equals(error_text("prepare: block 3 (local entry 0, block 3; remote entry 0, block 3): remote "
                                     "block " + ferry::detail::describe(ferry::desc{start + 3 * 101, 101, 0}) +
                                     " is not inside any region that peer 'strided' published",
                                     status::not_registered)));
        const ferry::desc outside{lb.src(loopback::size - 50), 64, 0};
        CHECK_THAT(lb.refusal(xfer_op::write, L{{lb.src(0), 64, 0}, outside}, L{{lb.dst(0), 64, 0, 64, 2}}),
                   Equals(error_text("prepare: block 1 (local entry 1; remote entry 0, block 1): local block " +
                                     ferry::detail::describe(outside) + " is not inside any registered region",
                                     status::not_registered)));
    }
}
