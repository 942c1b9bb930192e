// Everything a backend refuses, with the exact status and a message that
// names what was wrong and where. One process: the backend loads its own
// metadata (loopback), which is all that validation needs, and small
// loopback transfers show that refusals leave it working. The loopback peer
// is a process on this host, so prepare's automatic choice is host_ipc.

#include <ferry/detail/metadata.hpp>
#include <ferry/ferry.hpp>

#include <catch2/catch.hpp>

#include "support/block_text.hpp"
#include "support/ferry_catch.hpp"
#include "support/paths.hpp"
#include "support/pattern.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
using ferry::status;
using ferry::xfer_path;

namespace {

ferry::ucx_config loop_config(std::string name = "validation") {
    ferry::ucx_config cfg;
    cfg.name = std::move(name);
    cfg.ucx_options = {{"TLS", "shm"}};
    return cfg;
}


// std::system_error appends ": " and the code's message to what it is given.
std::string what(const std::string& message, status s) { return message + ": " + std::string(ferry::to_string(s)); }

ferry::desc shifted(ferry::desc d, std::ptrdiff_t by, std::size_t len) {
    d.addr = static_cast<std::uintptr_t>(static_cast<std::ptrdiff_t>(d.addr) + by);
    d.len = len;
    return d;
}

template <class Backend>
status wait_for(Backend& b, ferry::xfer x) {
    status s = b.check(x);
    while (s == status::in_progress) s = b.check(x);
    return s;
}

// A backend that has loaded its own metadata: `src` and `dst` are local
// regions and, through `self`, remote ones as well.
struct loopback {
    explicit loopback(ferry::ucx_config cfg = loop_config()) : b(std::move(cfg)) {}

    // Each buffer is twice the registered size, so that the bytes just past
    // a region are unregistered whatever the allocator puts next to it.
    static constexpr std::size_t size = 4096;
    ferry::ucx_backend<> b;
    std::vector<std::byte> src_mem = std::vector<std::byte>(2 * size);
    std::vector<std::byte> dst_mem = std::vector<std::byte>(2 * size);
    ferry::region src = b.register_memory(src_mem.data(), size);
    ferry::region dst = b.register_memory(dst_mem.data(), size);
    ferry::peer self = b.load_remote(b.local_metadata());
};

}  // namespace

TEST_CASE("prepare refuses a local descriptor outside every registered region") {
    loopback lb;
    const ferry::desc r = lb.src.whole();
    const ferry::desc remote_ok = lb.dst.slice(0, 1);
    std::vector<std::byte> elsewhere(64);

    auto refuse = [&](ferry::desc bad_local) {
        INFO("local " << ferry_test::block_text(bad_local));
        // As long as the local block, so possibly bad too: the local side is
        // checked first, and its error is the one reported.
        const ferry::desc remote{lb.dst.whole().addr, bad_local.len, 0};
        REQUIRE_FERRY_ERROR(
            lb.b.prepare(ferry::xfer_op::write, std::span(&bad_local, 1), std::span(&remote, 1), lb.self),
            status::not_registered,
            Equals(
                what("prepare: descriptor 0: local block " + ferry_test::block_text(bad_local) + " is not inside any registered region",
                     status::not_registered)));
    };

    SECTION("the whole region shifted by one byte") { refuse(shifted(r, 1, r.len)); }
    SECTION("one byte just past the end") { refuse(shifted(r, static_cast<std::ptrdiff_t>(r.len), 1)); }
    SECTION("one byte more than the region") { refuse(shifted(r, 0, r.len + 1)); }
    SECTION("starting one byte before the region") { refuse(shifted(r, -1, 2)); }
    SECTION("memory that was never registered") {
        refuse({reinterpret_cast<std::uintptr_t>(elsewhere.data()), elsewhere.size(), 0});
    }
    SECTION("a device the region is not on") { refuse({r.addr, 16, 1}); }
    SECTION("a block spanning two adjacent regions") {
        std::vector<std::byte> both(8192);
        auto low = lb.b.register_memory(both.data(), 4096);
        auto high = lb.b.register_memory(both.data() + 4096, 4096);
        refuse({reinterpret_cast<std::uintptr_t>(both.data()) + 4000, 200, 0});
        // Each half alone is fine.
        const ferry::desc in_low = low.slice(4000, 96);
        const ferry::desc in_high = high.slice(0, 96);
        const ferry::desc remote = lb.dst.slice(0, 96);
        auto x1 = lb.b.prepare(ferry::xfer_op::write, std::span(&in_low, 1), std::span(&remote, 1), lb.self);
        auto x2 = lb.b.prepare(ferry::xfer_op::write, std::span(&in_high, 1), std::span(&remote, 1), lb.self);
        CHECK(lb.b.release(x1) == status::ok);
        CHECK(lb.b.release(x2) == status::ok);
    }
    SECTION("the whole region and its last byte are inside") {
        const ferry::desc last = lb.src.slice(r.len - 1, 1);
        auto x = lb.b.prepare(ferry::xfer_op::write, std::span(&last, 1), std::span(&remote_ok, 1), lb.self);
        CHECK(lb.b.release(x) == status::ok);
        const ferry::desc whole_remote = lb.dst.whole();
        auto y = lb.b.prepare(ferry::xfer_op::write, std::span(&r, 1), std::span(&whole_remote, 1), lb.self);
        CHECK(lb.b.size_of(y) == 4096);
        CHECK(lb.b.release(y) == status::ok);
    }
}

TEST_CASE("prepare names the index of the first bad descriptor") {
    loopback lb;
    std::vector<ferry::desc> local, remote;
    for (std::size_t i = 0; i < 5; ++i) {
        local.push_back(lb.src.slice(i * 100, 10));
        remote.push_back(lb.dst.slice(i * 100, 10));
    }
    const ferry::desc bad_local = shifted(lb.src.whole(), 4090, 10);
    const ferry::desc bad_remote = shifted(lb.dst.whole(), 4095, 10);

    SECTION("local") {
        local[3] = bad_local;
        remote[4] = bad_remote;
        REQUIRE_FERRY_ERROR(lb.b.prepare(ferry::xfer_op::read, local, remote, lb.self), status::not_registered,
                            Equals(what("prepare: descriptor 3: local block " + ferry_test::block_text(bad_local) +
                                            " is not inside any registered region",
                                        status::not_registered)));
    }
    SECTION("remote") {
        remote[2] = bad_remote;
        local[4] = bad_local;
        REQUIRE_FERRY_ERROR(lb.b.prepare(ferry::xfer_op::read, local, remote, lb.self), status::not_registered,
                            Equals(what("prepare: descriptor 2: remote block " + ferry_test::block_text(bad_remote) +
                                            " is not inside any region that peer 'validation' published",
                                        status::not_registered)));
    }
    SECTION("local is checked before remote in the same pair") {
        local[1] = bad_local;
        remote[1] = bad_remote;
        REQUIRE_FERRY_ERROR(lb.b.prepare(ferry::xfer_op::write, local, remote, lb.self), status::not_registered,
                            Contains("prepare: descriptor 1: local block "));
    }
}

TEST_CASE("prepare refuses a remote descriptor outside every region the peer published") {
    loopback lb;
    const ferry::desc r = lb.dst.whole();

    auto refuse = [&](ferry::desc bad_remote) {
        INFO("remote " << ferry_test::block_text(bad_remote));
        const ferry::desc local = lb.src.slice(0, bad_remote.len);
        REQUIRE_FERRY_ERROR(
            lb.b.prepare(ferry::xfer_op::read, std::span(&local, 1), std::span(&bad_remote, 1), lb.self),
            status::not_registered,
            Equals(what("prepare: descriptor 0: remote block " + ferry_test::block_text(bad_remote) +
                            " is not inside any region that peer 'validation' published",
                        status::not_registered)));
    };

    SECTION("one byte just past the end") { refuse(shifted(r, static_cast<std::ptrdiff_t>(r.len), 1)); }
    SECTION("the whole region shifted by one byte") { refuse(shifted(r, 1, r.len)); }
    SECTION("starting one byte before the region") { refuse(shifted(r, -1, 2)); }
    SECTION("a device the region is not on") { refuse({r.addr, 8, 3}); }
    SECTION("a region registered after the metadata was loaded") {
        std::vector<std::byte> later_mem(256);
        auto later = lb.b.register_memory(later_mem.data(), later_mem.size());
        refuse(later.slice(0, 16));
        // Reloading the metadata publishes it.
        lb.self = lb.b.load_remote(lb.b.local_metadata());
        const ferry::desc local = lb.src.slice(0, 16);
        const ferry::desc remote = later.slice(0, 16);
        auto x = lb.b.prepare(ferry::xfer_op::read, std::span(&local, 1), std::span(&remote, 1), lb.self);
        CHECK(lb.b.release(x) == status::ok);
    }
}

TEST_CASE("prepare refuses lists of different lengths, pairs of different lengths and empty ones") {
    loopback lb;
    std::vector<ferry::desc> local = {lb.src.slice(0, 8), lb.src.slice(8, 8)};
    std::vector<ferry::desc> remote = {lb.dst.slice(0, 8), lb.dst.slice(8, 8), lb.dst.slice(16, 8)};

    SECTION("list lengths differ") {
        REQUIRE_FERRY_ERROR(
            lb.b.prepare(ferry::xfer_op::write, local, remote, lb.self), status::invalid_argument,
            Equals(what("prepare: 2 local descriptors but 3 remote descriptors", status::invalid_argument)));
        REQUIRE_FERRY_ERROR(
            lb.b.prepare(ferry::xfer_op::write, remote, local, lb.self), status::invalid_argument,
            Equals(what("prepare: 3 local descriptors but 2 remote descriptors", status::invalid_argument)));
        REQUIRE_FERRY_ERROR(
            lb.b.prepare(ferry::xfer_op::write, {}, local, lb.self), status::invalid_argument,
            Equals(what("prepare: 0 local descriptors but 2 remote descriptors", status::invalid_argument)));
    }
    SECTION("both lists empty") {
        const std::span<const ferry::desc> none;
        REQUIRE_FERRY_ERROR(lb.b.prepare(ferry::xfer_op::read, none, none, lb.self), status::invalid_argument,
                            Equals(what("prepare: the descriptor lists are empty", status::invalid_argument)));
    }
    SECTION("a pair whose lengths differ") {
        remote.pop_back();
        remote[1].len = 9;
        REQUIRE_FERRY_ERROR(lb.b.prepare(ferry::xfer_op::write, local, remote, lb.self), status::invalid_argument,
                            Equals(what("prepare: descriptor 1: local length 8 differs from remote length 9",
                                        status::invalid_argument)));
    }
    SECTION("a zero-length descriptor") {
        remote.pop_back();
        local[1].len = 0;
        remote[1].len = 0;
        REQUIRE_FERRY_ERROR(lb.b.prepare(ferry::xfer_op::write, local, remote, lb.self), status::invalid_argument,
                            Equals(what("prepare: descriptor 1: length is 0", status::invalid_argument)));
        remote[1].len = 8;
        REQUIRE_FERRY_ERROR(lb.b.prepare(ferry::xfer_op::write, local, remote, lb.self), status::invalid_argument,
                            Equals(what("prepare: descriptor 1: length is 0", status::invalid_argument)));
        local[1].len = 8;
        remote[1].len = 0;
        REQUIRE_FERRY_ERROR(lb.b.prepare(ferry::xfer_op::write, local, remote, lb.self), status::invalid_argument,
                            Equals(what("prepare: descriptor 1: local length 8 differs from remote length 0",
                                        status::invalid_argument)));
    }
    SECTION("an operation that is neither read nor write") {
        remote.pop_back();
        REQUIRE_FERRY_ERROR(lb.b.prepare(static_cast<ferry::xfer_op>(7), local, remote, lb.self),
                            status::invalid_argument,
                            Equals(what("prepare: op is neither read nor write", status::invalid_argument)));
    }
}

TEST_CASE("unknown and unloaded peers are refused with no_such_peer") {
    loopback lb;
    const ferry::desc local = lb.src.slice(0, 8);
    const ferry::desc remote = lb.dst.slice(0, 8);
    const std::string unknown_peer = what("prepare: the peer handle is unknown or was unloaded", status::no_such_peer);

    SECTION("a default-constructed handle") {
        REQUIRE_FERRY_ERROR(
            lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), ferry::peer{}),
            status::no_such_peer, Equals(unknown_peer));
        CHECK(lb.b.send_notif(ferry::peer{}, "hi") == status::no_such_peer);
        REQUIRE_FERRY_ERROR(
            lb.b.unload_remote(ferry::peer{}), status::no_such_peer,
            Equals(what("unload_remote: the peer handle is unknown or already unloaded", status::no_such_peer)));
        REQUIRE_FERRY_ERROR(
            lb.b.remote_regions(ferry::peer{}), status::no_such_peer,
            Equals(what("remote_regions: the peer handle is unknown or was unloaded", status::no_such_peer)));
        CHECK(lb.b.ucx_endpoint(ferry::peer{}) == nullptr);
        REQUIRE_FERRY_ERROR(
            lb.b.peer_name(ferry::peer{}), status::no_such_peer,
            Equals(what("peer_name: the peer handle is unknown or was unloaded", status::no_such_peer)));
    }
    SECTION("a handle after unload_remote") {
        auto x = lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), lb.self);
        CHECK(lb.b.peer_name(lb.self) == "validation");
        lb.b.unload_remote(lb.self);
        CHECK_FALSE(lb.b.find_peer("validation").has_value());
        REQUIRE_FERRY_ERROR(lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), lb.self),
                            status::no_such_peer, Equals(unknown_peer));
        CHECK(lb.b.send_notif(lb.self, "hi") == status::no_such_peer);
        CHECK(lb.b.post(x) == status::no_such_peer);
        CHECK(lb.b.post(x, "with a notification") == status::no_such_peer);
        REQUIRE_FERRY_ERROR(
            lb.b.unload_remote(lb.self), status::no_such_peer,
            Equals(what("unload_remote: the peer handle is unknown or already unloaded", status::no_such_peer)));
        CHECK(lb.b.release(x) == status::ok);
    }
    SECTION("a name loaded again from a later blob of the same process keeps its handle") {
        auto x = lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), lb.self);
        const ferry::peer same = lb.b.load_remote(lb.b.local_metadata());
        CHECK(same == lb.self);
        REQUIRE(lb.b.find_peer("validation").has_value());
        CHECK(*lb.b.find_peer("validation") == lb.self);
        // The transfer prepared before goes on, end to end.
        std::memset(lb.src_mem.data(), 0x3C, 8);
        const status s = lb.b.post(x);
        CHECK((s == status::ok || s == status::in_progress));
        CHECK(wait_for(lb.b, x) == status::ok);
        CHECK(lb.dst_mem[7] == std::byte{0x3C});
        CHECK(lb.b.release(x) == status::ok);
    }
}

// Whichever path a transfer took, estimate, a set-up call, refuses it once
// its peer is gone, as prepare and post do.
TEST_CASE("estimate refuses a transfer whose peer was unloaded, on every path") {
    const xfer_path path = GENERATE(xfer_path::ucx, xfer_path::automatic);
    CAPTURE(path);
    loopback lb;
    const ferry::desc local = lb.src.slice(0, 8);
    const ferry::desc remote = lb.dst.slice(0, 8);
    auto x = lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), lb.self, path);
    CHECK(lb.b.path_of(x) == ferry_test::local_host_path(path));
    lb.b.unload_remote(lb.self);
    REQUIRE_FERRY_ERROR(lb.b.estimate(x), status::no_such_peer,
                        Equals(what("estimate: the peer was unloaded", status::no_such_peer)));
    CHECK(lb.b.release(x) == status::ok);
}

TEST_CASE("post, check and release refuse released and never-prepared transfers") {
    loopback lb;
    const ferry::desc local = lb.src.slice(0, 8);
    const ferry::desc remote = lb.dst.slice(0, 8);

    SECTION("never prepared") {
        const ferry::xfer none{};
        CHECK(lb.b.post(none) == status::invalid_argument);
        CHECK(lb.b.post(none, "notif") == status::invalid_argument);
        CHECK(lb.b.check(none) == status::invalid_argument);
        CHECK(lb.b.release(none) == status::invalid_argument);
        CHECK(lb.b.size_of(none) == 0);
        REQUIRE_FERRY_ERROR(
            lb.b.estimate(none), status::invalid_argument,
            Equals(what("estimate: the transfer handle is unknown or released", status::invalid_argument)));
        // An index that was never handed out.
        const ferry::xfer made_up{{12345, 0}};
        CHECK(lb.b.post(made_up) == status::invalid_argument);
        CHECK(lb.b.check(made_up) == status::invalid_argument);
        CHECK(lb.b.release(made_up) == status::invalid_argument);
    }
    SECTION("released") {
        auto x = lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), lb.self);
        CHECK(lb.b.release(x) == status::ok);
        CHECK(lb.b.post(x) == status::invalid_argument);
        CHECK(lb.b.check(x) == status::invalid_argument);
        CHECK(lb.b.release(x) == status::invalid_argument);
        CHECK(lb.b.size_of(x) == 0);
        REQUIRE_FERRY_ERROR(
            lb.b.estimate(x), status::invalid_argument,
            Equals(what("estimate: the transfer handle is unknown or released", status::invalid_argument)));
    }
    SECTION("released, after its slot went to a new transfer") {
        auto x = lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), lb.self);
        CHECK(lb.b.release(x) == status::ok);
        const ferry::desc local2 = lb.src.slice(100, 16);
        const ferry::desc remote2 = lb.dst.slice(100, 16);
        auto y = lb.b.prepare(ferry::xfer_op::write, std::span(&local2, 1), std::span(&remote2, 1), lb.self);
        CHECK(y != x);
        // The stale handle must neither post nor release the new transfer.
        CHECK(lb.b.post(x) == status::invalid_argument);
        CHECK(lb.b.release(x) == status::invalid_argument);
        CHECK(lb.b.size_of(y) == 16);
        CHECK(lb.b.check(y) == status::ok);
        ferry_test::fill_pattern(lb.src_mem.data() + 100, 16, 5, 0);
        const status s = lb.b.post(y);
        CHECK((s == status::ok || s == status::in_progress));
        CHECK(wait_for(lb.b, y) == status::ok);
        CHECK(ferry_test::check_pattern(lb.dst_mem.data() + 100, 16, 5, 0).empty());
        CHECK(lb.b.release(y) == status::ok);
    }
}

TEST_CASE("post refuses a transfer whose local region was deregistered") {
    loopback lb;
    std::vector<std::byte> mem(1024);
    auto local_region = std::make_unique<ferry::region>(lb.b.register_memory(mem.data(), mem.size()));
    const ferry::desc local = local_region->slice(10, 100);
    const ferry::desc remote = lb.dst.slice(10, 100);
    auto x = lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), lb.self);
    ferry_test::fill_pattern(mem.data() + 10, 100, 77, 0);

    SECTION("by reset") {
        local_region->reset();
        CHECK_FALSE(static_cast<bool>(*local_region));
        CHECK(lb.b.post(x) == status::not_registered);
        CHECK(lb.b.post(x, "notif") == status::not_registered);
        // Nothing was written.
        CHECK(ferry_test::check_filled(lb.dst_mem.data(), lb.dst_mem.size(), std::byte{0}).empty());
        // Registering the same memory again does not revive the old registration.
        auto again = lb.b.register_memory(mem.data(), mem.size());
        CHECK(lb.b.post(x) == status::not_registered);
        // A transfer prepared over the new registration works.
        auto y = lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), lb.self);
        const status s = lb.b.post(y);
        CHECK((s == status::ok || s == status::in_progress));
        CHECK(wait_for(lb.b, y) == status::ok);
        CHECK(ferry_test::check_pattern(lb.dst_mem.data() + 10, 100, 77, 0).empty());
    }
    SECTION("by destruction") {
        local_region.reset();
        CHECK(lb.b.post(x) == status::not_registered);
    }
    SECTION("by move-assigning another region over it") {
        *local_region = ferry::region{};
        CHECK(lb.b.post(x) == status::not_registered);
    }
    SECTION("deregistering an unrelated region does not affect it") {
        std::vector<std::byte> other_mem(64);
        auto other = lb.b.register_memory(other_mem.data(), other_mem.size());
        other.reset();
        const status s = lb.b.post(x);
        CHECK((s == status::ok || s == status::in_progress));
        CHECK(wait_for(lb.b, x) == status::ok);
        CHECK(ferry_test::check_pattern(lb.dst_mem.data() + 10, 100, 77, 0).empty());
    }
    CHECK(lb.b.release(x) == status::ok);
}

TEST_CASE("register_memory and allocate refuse bad arguments") {
    ferry::ucx_backend<> b(loop_config());
    std::vector<std::byte> mem(64);
    REQUIRE_FERRY_ERROR(b.register_memory(nullptr, 64), status::invalid_argument,
                        Equals(what("register_memory: ptr is null", status::invalid_argument)));
    REQUIRE_FERRY_ERROR(b.register_memory(mem.data(), 0), status::invalid_argument,
                        Equals(what("register_memory: len is 0", status::invalid_argument)));
    REQUIRE_FERRY_ERROR(
        b.register_memory(mem.data(), mem.size(), 1), status::invalid_argument,
        Equals(what("register_memory: dev 1 given, but memory::host takes device 0 only", status::invalid_argument)));
    REQUIRE_FERRY_ERROR(b.register_memory(reinterpret_cast<void*>(std::numeric_limits<std::uintptr_t>::max() - 15), 32),
                        status::invalid_argument,
                        Equals(what("register_memory: [ptr, ptr + len) wraps around", status::invalid_argument)));
    REQUIRE_FERRY_ERROR(b.allocate(0), status::invalid_argument,
                        Equals(what("allocate: len is 0", status::invalid_argument)));
    REQUIRE_FERRY_ERROR(
        b.allocate(64, 7), status::invalid_argument,
        Equals(what("allocate: dev 7 given, but memory::host takes device 0 only", status::invalid_argument)));
    REQUIRE_FERRY_ERROR(b.allocate_host(0), status::invalid_argument,
                        Equals(what("allocate_host: len is 0", status::invalid_argument)));
    // None of the refusals registered anything.
    CHECK(ferry::detail::decode_metadata(b.local_metadata()).regions.empty());
}

TEST_CASE("ucx_backend refuses a bad configuration") {
    SECTION("empty name") {
        REQUIRE_FERRY_ERROR(ferry::ucx_backend<>(std::string()), status::invalid_argument,
                            Equals(what("ucx_backend: name must be 1 to 255 bytes, got 0", status::invalid_argument)));
    }
    SECTION("name of 256 bytes") {
        REQUIRE_FERRY_ERROR(
            ferry::ucx_backend<>(loop_config(std::string(256, 'x'))), status::invalid_argument,
            Equals(what("ucx_backend: name must be 1 to 255 bytes, got 256", status::invalid_argument)));
    }
    SECTION("name of 255 bytes is accepted and published") {
        const std::string name(255, 'x');
        ferry::ucx_backend<> b(loop_config(name));
        CHECK(b.name() == name);
        CHECK(ferry::detail::decode_metadata(b.local_metadata()).name == name);
    }
    SECTION("max_notif_size over 1 GiB") {
        auto cfg = loop_config();
        cfg.max_notif_size = (std::size_t{1} << 30) + 1;
        REQUIRE_FERRY_ERROR(ferry::ucx_backend<>(cfg), status::invalid_argument,
                            Equals(what("ucx_backend: max_notif_size is larger than 1 GiB", status::invalid_argument)));
    }
    SECTION("a value UCX cannot parse") {
        auto cfg = loop_config();
        cfg.ucx_options.emplace_back("RNDV_THRESH", "not-a-size");
        REQUIRE_FERRY_ERROR(ferry::ucx_backend<>(cfg), status::invalid_argument,
                            Contains("ucx_config::ucx_options: UCX rejected RNDV_THRESH=not-a-size: "));
    }
}

TEST_CASE("notifications larger than max_notif_size are refused") {
    auto cfg = loop_config();
    cfg.max_notif_size = 100;
    loopback lb(cfg);
    const std::string at_limit(100, 'L');
    const std::string over_limit(101, 'O');

    CHECK(lb.b.send_notif(lb.self, over_limit) == status::invalid_argument);

    const ferry::desc local = lb.src.slice(0, 32);
    const ferry::desc remote = lb.dst.slice(0, 32);
    auto x = lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), lb.self);
    std::memset(lb.src_mem.data(), 0x11, 32);
    CHECK(lb.b.post(x, over_limit) == status::invalid_argument);
    // The refused post moved nothing and left the transfer postable.
    CHECK(lb.dst_mem[0] == std::byte{0});
    CHECK(lb.b.check(x) == status::ok);

    CHECK(lb.b.send_notif(lb.self, at_limit) == status::ok);
    const status s = lb.b.post(x, "with the data");
    CHECK((s == status::ok || s == status::in_progress));
    CHECK(wait_for(lb.b, x) == status::ok);
    CHECK(lb.dst_mem[31] == std::byte{0x11});

    std::vector<std::string> got;
    for (int i = 0; i < 100'000 && got.size() < 2; ++i)
        for (auto& [sender, msgs] : lb.b.take_notifs()) {
            CHECK(sender == "validation");
            got.insert(got.end(), msgs.begin(), msgs.end());
        }
    std::sort(got.begin(), got.end());
    CHECK(got == std::vector<std::string>{at_limit, "with the data"});
    CHECK(lb.b.dropped_notifs() == 0);
    CHECK(lb.b.release(x) == status::ok);
}

TEST_CASE("wait and wait_notifs report what check and take_notifs would") {
    loopback lb;
    CHECK(lb.b.wait(ferry::xfer{}, std::chrono::seconds(1)) == status::invalid_argument);
    CHECK_FALSE(lb.b.wait_notifs(std::chrono::nanoseconds(0)));

    const ferry::desc local = lb.src.slice(0, 64);
    const ferry::desc remote = lb.dst.slice(64, 64);
    auto x = lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), lb.self);
    ferry_test::fill_pattern(lb.src_mem.data(), 64, 21, 64);
    const status s = lb.b.post(x, "waited");
    CHECK((s == status::ok || s == status::in_progress));
    CHECK(lb.b.wait(x, std::chrono::seconds(30)) == status::ok);
    CHECK(ferry_test::check_pattern(lb.dst_mem.data() + 64, 64, 21, 64).empty());
    // The largest timeout means no deadline; it must not overflow into the past or trap.
    CHECK(lb.b.wait(x, std::chrono::nanoseconds::max()) == status::ok);

    REQUIRE(lb.b.wait_notifs(std::chrono::seconds(30)));
    const ferry::notif_map got = lb.b.take_notifs();
    CHECK(got == ferry::notif_map{{"validation", {"waited"}}});
    CHECK_FALSE(lb.b.wait_notifs(std::chrono::nanoseconds(0)));
    CHECK(lb.b.release(x) == status::ok);
    CHECK(lb.b.wait(x, std::chrono::seconds(1)) == status::invalid_argument);
}

TEST_CASE("a region describes its memory and slices only inside it") {
    ferry::ucx_backend<> b(loop_config());
    std::vector<std::byte> mem(1000);
    auto r = b.register_memory(mem.data(), mem.size());
    const auto base = reinterpret_cast<std::uintptr_t>(mem.data());

    CHECK(static_cast<bool>(r));
    CHECK(r.data() == mem.data());
    CHECK(r.size() == 1000);
    CHECK(r.dev() == 0);
    CHECK_FALSE(r.allocated());
    CHECK(r.whole() == ferry::desc{base, 1000, 0});
    CHECK(r.slice(0, 1000) == ferry::desc{base, 1000, 0});
    CHECK(r.slice(999, 1) == ferry::desc{base + 999, 1, 0});
    CHECK(r.slice(1000, 0) == ferry::desc{base + 1000, 0, 0});
    REQUIRE_FERRY_ERROR(
        r.slice(1000, 1), status::invalid_argument,
        Equals(what("region::slice: [1000, +1) leaves a region of 1000 bytes", status::invalid_argument)));
    REQUIRE_FERRY_ERROR(
        r.slice(0, 1001), status::invalid_argument,
        Equals(what("region::slice: [0, +1001) leaves a region of 1000 bytes", status::invalid_argument)));
    REQUIRE_FERRY_ERROR(r.slice(1001, 0), status::invalid_argument, Contains("region::slice: [1001, +0)"));
    REQUIRE_FERRY_ERROR(r.slice(1, std::numeric_limits<std::size_t>::max()), status::invalid_argument,
                        Contains("leaves a region of 1000 bytes"));

    auto a = b.allocate(12345);
    CHECK(a.allocated());
    CHECK(a.data() != nullptr);
    CHECK(a.size() == 12345);
    // Allocated memory is the caller's to use.
    std::memset(a.data(), 0xEE, a.size());

    r.reset();
    CHECK_FALSE(static_cast<bool>(r));
    CHECK(r.data() == nullptr);
    CHECK(r.size() == 0);
    r.reset();

    const ferry::region empty;
    CHECK_FALSE(static_cast<bool>(empty));
    CHECK(empty.whole() == ferry::desc{});
}

TEST_CASE("moving a region keeps one registration, assigning over one deregisters it") {
    ferry::ucx_backend<> b(loop_config());
    std::vector<std::byte> m1(64), m2(64);
    auto published = [&] { return ferry::detail::decode_metadata(b.local_metadata()).regions.size(); };

    auto r1 = b.register_memory(m1.data(), m1.size());
    ferry::region moved(std::move(r1));
    CHECK_FALSE(static_cast<bool>(r1));
    CHECK(moved.data() == m1.data());
    CHECK(published() == 1);

    auto r2 = b.register_memory(m2.data(), m2.size());
    CHECK(published() == 2);
    moved = std::move(r2);
    CHECK(moved.data() == m2.data());
    CHECK(published() == 1);
    CHECK(ferry::detail::decode_metadata(b.local_metadata()).regions[0].addr ==
          reinterpret_cast<std::uintptr_t>(m2.data()));

    auto& same = moved;
    moved = std::move(same);
    CHECK(moved.data() == m2.data());
    CHECK(published() == 1);
}

TEST_CASE("a region may outlive its backend") {
    std::vector<std::byte> mem(4096);
    ferry::region user;
    ferry::region allocated;
    {
        ferry::ucx_backend<> b(loop_config());
        user = b.register_memory(mem.data(), mem.size());
        allocated = b.allocate(4096);
    }
    CHECK(user.data() == mem.data());
    std::memset(allocated.data(), 1, allocated.size());
    user.reset();
    allocated.reset();
    CHECK_FALSE(static_cast<bool>(allocated));
}

TEST_CASE("estimate reports UCX's model of a prepared transfer") {
    loopback lb;
    std::vector<ferry::desc> local, remote;
    for (std::size_t i = 0; i < 4; ++i) {
        local.push_back(lb.src.slice(i * 1024, 1000));
        remote.push_back(lb.dst.slice(i * 1024, 1000));
    }
    // Over UCX: the automatic choice here is host_ipc, whose model is ferry's (next test).
    auto x = lb.b.prepare(ferry::xfer_op::write, local, remote, lb.self, xfer_path::ucx);
    CHECK(lb.b.path_of(x) == xfer_path::ucx);
    CHECK(lb.b.size_of(x) == 4000);
    const ferry::xfer_cost cost = lb.b.estimate(x);
    CHECK(cost.method == ferry::cost_method::ucx_evaluate_perf);
    CHECK(cost.duration.count() >= 0);
    CHECK(cost.margin == cost.duration / 2);
    CHECK(lb.b.release(x) == status::ok);
}

TEST_CASE("estimate reports ferry's model of a host_ipc transfer, more for more bytes") {
    loopback lb;
    // Into register_memory'd memory (process_vm_writev) and into allocated
    // memory, which the peer maps (memcpy).
    auto shared = lb.b.allocate(loopback::size);
    lb.self = lb.b.load_remote(lb.b.local_metadata());
    for (const ferry::region* into : {&lb.dst, &shared}) {
        INFO((into == &shared ? "into allocated memory" : "into register_memory'd memory"));
        std::vector<ferry::desc> local, remote;
        for (std::size_t i = 0; i < 4; ++i) {
            local.push_back(lb.src.slice(i * 1024, 1000));
            remote.push_back(into->slice(i * 1024, 1000));
        }
        auto x = lb.b.prepare(ferry::xfer_op::write, local, remote, lb.self);
        auto small = lb.b.prepare(ferry::xfer_op::write, std::span(local).first(1), std::span(remote).first(1),
                                  lb.self, xfer_path::host_ipc);
        CHECK(lb.b.path_of(x) == xfer_path::host_ipc);
        CHECK(lb.b.path_of(small) == xfer_path::host_ipc);
        const ferry::xfer_cost cost = lb.b.estimate(x);
        CHECK(cost.method == ferry::cost_method::host_ipc_model);
        CHECK(cost.duration.count() > 0);
        CHECK(cost.margin == cost.duration / 2);
        CHECK(lb.b.estimate(small).duration < cost.duration);
        CHECK(lb.b.release(x) == status::ok);
        CHECK(lb.b.release(small) == status::ok);
    }
}

// A peer that is not a process of this host, or does not say which it is,
// is out of host_ipc's reach: the automatic choice falls back to UCX, and
// asking for host_ipc is refused with the reason. The peers are this
// backend itself under an edited identity.
TEST_CASE("prepare takes host_ipc only for a process on this host, and says why not when asked for it") {
    loopback lb;
    const ferry::desc local = lb.src.slice(0, 64);
    const ferry::desc remote = lb.dst.slice(0, 64);
    const auto blob = lb.b.local_metadata();
    auto moves = [&](ferry::xfer x, std::uint64_t seed) {
        ferry_test::fill_pattern(lb.src_mem.data(), 64, seed, 0);
        const status s = lb.b.post(x);
        CHECK((s == status::ok || s == status::in_progress));
        CHECK(wait_for(lb.b, x) == status::ok);
        CHECK(ferry_test::check_pattern(lb.dst_mem.data(), 64, seed, 0).empty());
        CHECK(lb.b.release(x) == status::ok);
    };
    auto as_is = lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), lb.self);
    CHECK(lb.b.path_of(as_is) == xfer_path::host_ipc);
    moves(as_is, 1);

    auto refused_with = [&](const std::string& why, auto&& edit) {
        auto md = ferry::detail::decode_metadata(blob);
        edit(md);
        const auto edited = ferry::detail::encode_metadata(md);
        const ferry::peer p = lb.b.load_remote(edited);
        auto x = lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), p);
        CHECK(lb.b.path_of(x) == xfer_path::ucx);
        moves(x, 2);
        REQUIRE_FERRY_ERROR(
            lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), p, xfer_path::host_ipc),
            status::invalid_argument, Equals(what("prepare: path host_ipc: " + why, status::invalid_argument)));
    };
    SECTION("another host") {
        refused_with("the peer runs on another host", [](auto& md) { md.host_id = "another host"; });
    }
    SECTION("no host id") {
        refused_with("the peer runs on another host", [](auto& md) { md.host_id = {}; });
    }
    SECTION("no process id") {
        refused_with("the peer did not say which process it is", [](auto& md) {
            md.pid = 0;
            md.start_time = 0;  // a start time without a pid is refused as metadata
        });
    }
    SECTION("no PID namespace") {
        refused_with("the peer did not say which process it is", [](auto& md) { md.pid_namespace = 0; });
    }
    SECTION("another PID namespace") {
        refused_with("the peer runs in another PID namespace", [](auto& md) { md.pid_namespace ^= 1; });
    }
}

TEST_CASE("a backend keeps working after refusing bad calls") {
    loopback lb;
    const ferry::desc bad = shifted(lb.src.whole(), 1, 4096);
    const ferry::desc remote = lb.dst.whole();
    for (int i = 0; i < 100; ++i)
        CHECK_THROWS_AS(lb.b.prepare(ferry::xfer_op::write, std::span(&bad, 1), std::span(&remote, 1), lb.self),
                        ferry::error);
    CHECK_THROWS_AS(lb.b.load_remote(std::vector<std::byte>(10)), ferry::error);

    ferry_test::fill_pattern(lb.src_mem.data(), 4096, 9, 0);
    const ferry::desc local = lb.src.whole();
    auto x = lb.b.prepare(ferry::xfer_op::write, std::span(&local, 1), std::span(&remote, 1), lb.self);
    const status s = lb.b.post(x, "done");
    CHECK((s == status::ok || s == status::in_progress));
    CHECK(wait_for(lb.b, x) == status::ok);
    CHECK(ferry_test::check_pattern(lb.dst_mem.data(), 4096, 9, 0).empty());
    CHECK(lb.b.release(x) == status::ok);
}

namespace {

// Maps a mailbox as another process on this host could, to write into it
// what a sender should not.
void* map_mailbox(const ferry::detail::host::mailbox_address& at) {
    const int fd = ::open(("/proc/self/fd/" + std::to_string(at.fd)).c_str(), O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0);
    void* mapped = ::mmap(nullptr, at.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    REQUIRE(mapped != MAP_FAILED);
    return mapped;
}

}  // namespace

// The mailbox is shared memory that any process on this host allowed to
// open it may write: the receiver must read whatever is there without
// reading outside the ring, and the sender's slot must go on working.
TEST_CASE("a notification mailbox survives what a broken or hostile sender writes into it") {
    using namespace ferry::detail::host;
    mailbox box(true, 1024);
    REQUIRE(box.ok());
    mailbox_writer writer(static_cast<std::uint32_t>(::getpid()), box.address(), "writer");
    REQUIRE(writer.usable());
    const mailbox_address at = box.address();
    void* mapped = map_mailbox(at);
    auto* base = static_cast<std::byte*>(mapped);
    auto* header = reinterpret_cast<mailbox_header*>(base);
    auto* slot = reinterpret_cast<mailbox_slot*>(base + sizeof(mailbox_header));
    REQUIRE(slot->pid.load() == static_cast<std::uint32_t>(::getpid()));
    std::byte* ring = base + sizeof(mailbox_header) + sizeof(mailbox_slot);
    const std::uint64_t ring_bytes = header->ring_bytes;

    using message = std::pair<std::string, std::string>;
    std::vector<message> got;
    const auto poll = [&] {
        box.poll([&](std::string_view from, std::string_view msg) { got.emplace_back(from, msg); });
    };
    // An empty message, whose data pointer is null, is a message too.
    REQUIRE(writer.send(std::string_view{}));
    poll();
    REQUIRE(got == std::vector<message>{{"writer", ""}});
    got.clear();
    REQUIRE(writer.send("first"));
    poll();
    REQUIRE(got == std::vector<message>{{"writer", "first"}});
    const std::uint64_t tail = slot->tail.load();
    const auto put_length = [&](std::uint32_t len) {
        std::memcpy(ring + (tail & (ring_bytes - 1)), &len, 4);
    };

    SECTION("a head further ahead than the ring holds") {
        slot->head.store(tail + ring_bytes + 1);
    }
    SECTION("a head that has only part of a length") {
        slot->head.store(tail + 2);
    }
    SECTION("a length longer than what was published") {
        put_length(100);
        slot->head.store(tail + 4 + 10);
    }
    SECTION("a length of 2^32 - 1") {
        put_length(0xFFFFFFFFU);
        slot->head.store(tail + 8);
    }
    SECTION("a head behind the tail") {
        slot->head.store(tail - 1);
    }
    header->doorbell.fetch_add(1);
    poll();
    CHECK(got.size() == 1);
    CHECK(box.dropped() == 1);
    // The receiver discarded what it could not read; the slot goes on.
    REQUIRE(writer.send("after"));
    poll();
    CHECK(got == std::vector<message>{{"writer", "first"}, {"writer", "after"}});
    CHECK(box.dropped() == 1);
    ::munmap(mapped, at.size);
}

TEST_CASE("a sender refuses a mailbox whose header does not add up") {
    using namespace ferry::detail::host;
    mailbox box(true, 1024);
    REQUIRE(box.ok());
    const mailbox_address at = box.address();
    void* mapped = map_mailbox(at);
    auto* header = static_cast<mailbox_header*>(mapped);
    const auto me = static_cast<std::uint32_t>(::getpid());
    SECTION("a ring that is not a power of two") {
        header->ring_bytes += 8;
        mailbox_writer w(me, at, "w");
        CHECK_FALSE(w.usable());
        CHECK(w.why_not() == "the peer's mailbox header does not add up");
    }
    SECTION("more slots than the file holds") {
        header->slots = 4000;
        mailbox_writer w(me, at, "w");
        CHECK_FALSE(w.usable());
        CHECK(w.why_not() == "the peer's mailbox header does not add up");
    }
    SECTION("another format") {
        header->version = 99;
        mailbox_writer w(me, at, "w");
        CHECK_FALSE(w.usable());
        CHECK(w.why_not() == "the peer's mailbox has another format");
    }
    SECTION("another file than the one published") {
        mailbox_address wrong = at;
        ++wrong.inode;
        mailbox_writer w(me, wrong, "w");
        CHECK_FALSE(w.usable());
        CHECK_THAT(w.why_not(), Contains("is not the mailbox the peer published"));
    }
    SECTION("another size than the one published") {
        mailbox_address wrong = at;
        wrong.size -= 4096;
        mailbox_writer w(me, wrong, "w");
        CHECK_FALSE(w.usable());
        CHECK_THAT(w.why_not(), Contains("does not have the size the peer published"));
    }
    ::munmap(mapped, at.size);
}
