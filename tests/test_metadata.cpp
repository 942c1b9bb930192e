// The metadata blob (include/ferry/detail/metadata.hpp): what encode writes,
// what decode accepts, and that load_remote refuses every truncated,
// corrupted or hostile blob with invalid_argument and a message that names
// the field, before UCX sees any of it.

#include <ferry/detail/crc32.hpp>
#include <ferry/detail/host_id.hpp>
#include <ferry/detail/metadata.hpp>
#include <ferry/detail/notif_codec.hpp>
#include <ferry/detail/process_id.hpp>
#include <ferry/ferry.hpp>

#include <ucp/api/ucp.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "support/ferry_catch.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
using ferry::detail::decode_metadata;
using ferry::detail::encode_metadata;
using ferry::detail::metadata_view;
using ferry::detail::region_record;

namespace {

using blob_t = std::vector<std::byte>;

std::span<const std::byte> bytes_of(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

template <class U>
void patch(blob_t& blob, std::size_t offset, U value) {
    for (std::size_t i = 0; i < sizeof(U); ++i)
        blob.at(offset + i) = static_cast<std::byte>((value >> (8 * i)) & 0xFFU);
}

template <class U>
U read_at(const blob_t& blob, std::size_t offset) {
    U value = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i) value |= static_cast<U>(static_cast<U>(blob.at(offset + i)) << (8 * i));
    return value;
}

// Makes the header agree with the contents again, so that only the edit
// under test can be what decode objects to.
void reseal(blob_t& blob) {
    patch<std::uint32_t>(blob, 8, static_cast<std::uint32_t>(blob.size()));
    patch<std::uint32_t>(blob, 12, ferry::detail::crc32(std::span(blob).subspan(16)));
}

std::size_t offset_in(const blob_t& blob, const void* p) {
    return static_cast<std::size_t>(static_cast<const std::byte*>(p) - blob.data());
}

ferry::ucx_config shm_config(std::string name) {
    ferry::ucx_config cfg;
    cfg.name = std::move(name);
    cfg.ucx_options = {{"TLS", "shm"}};
    return cfg;
}

// Fake worker address and rkeys: decode checks their lengths, never their contents.
const std::array<std::byte, 8> fake_address{std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4},
                                            std::byte{5}, std::byte{6}, std::byte{7}, std::byte{8}};
const std::array<std::byte, 5> fake_rkey{std::byte{0xA0}, std::byte{0xA1}, std::byte{0xA2}, std::byte{0xA3},
                                         std::byte{0xA4}};

const std::array<std::byte, 64> fake_ipc_handle = [] {
    std::array<std::byte, 64> h{};
    for (std::size_t i = 0; i < h.size(); ++i) h[i] = static_cast<std::byte>(0xC0 + (i % 16));
    return h;
}();

region_record host_record(std::uint64_t addr, std::uint64_t len, std::span<const std::byte> rkey) {
    region_record r;
    r.addr = addr;
    r.len = len;
    r.rkey = rkey;
    return r;
}

// Values whose every byte differs, so that a field written in the wrong
// place or order does not read back.
constexpr std::uint32_t sample_pid = 0x01020304U;
constexpr std::uint64_t sample_pid_namespace = 0xF0E1D2C3B4A59687ULL;

metadata_view sample_view() {
    metadata_view md;
    md.ucx_version = 0x0001000DU;
    md.name = "sample";
    md.worker_address = fake_address;
    md.host_id = "host-a";
    md.pid = sample_pid;
    md.pid_namespace = sample_pid_namespace;
    md.regions = {host_record(0x1000, 4096, fake_rkey), host_record(0x7F0000001000, 1, std::span(fake_rkey).first(1))};
    return md;
}

// Where the process id, the PID namespace and the region count sit in a
// blob of sample_view()'s shape: after the host id, which starts at 41.
constexpr std::size_t sample_pid_at = 32 + 8 + 1 + 6;
constexpr std::size_t sample_pid_namespace_at = sample_pid_at + 4;
constexpr std::size_t sample_count_at = sample_pid_namespace_at + 8;

// A host region's shared-memory handle: a u32 descriptor and a u64 inode.
const std::array<std::byte, ferry::detail::host_share_handle_size> fake_host_handle = [] {
    std::array<std::byte, ferry::detail::host_share_handle_size> h{};
    for (std::size_t i = 0; i < h.size(); ++i) h[i] = static_cast<std::byte>(0x50 + i);
    return h;
}();

// A sample with a third region: CUDA memory with an IPC handle.
metadata_view cuda_view() {
    metadata_view md = sample_view();
    region_record r = host_record(0x7F1000000000, 1 << 20, fake_rkey);
    r.dev = 3;
    r.kind = ferry::detail::memory_kind_code::cuda;
    r.ipc_handle = fake_ipc_handle;
    r.ipc_offset = 4096;
    r.ipc_alloc_size = 2 << 20;
    md.regions.push_back(r);
    return md;
}

// A real backend with several regions, whose blob the tests below take apart.
struct real_agent {
    ferry::ucx_backend<> backend{shm_config("metadata-agent")};
    std::vector<std::byte> user_a = std::vector<std::byte>(4096);
    std::vector<std::byte> user_b = std::vector<std::byte>(100'003);
    ferry::region a = backend.register_memory(user_a.data(), user_a.size());
    ferry::region b = backend.register_memory(user_b.data(), user_b.size());
    ferry::region c = backend.allocate(64 * 1024);
    blob_t blob = backend.local_metadata();
};

}  // namespace

TEST_CASE("encode_metadata writes the documented layout and decode_metadata reads it back") {
    const metadata_view md = sample_view();
    const blob_t blob = encode_metadata(md);

    // Header: magic "FRRY", version 3, flags 0, total length, CRC of [16, end).
    REQUIRE(blob.size() > ferry::detail::metadata_header_size);
    CHECK(std::string_view(reinterpret_cast<const char*>(blob.data()), 4) == "FRRY");
    CHECK(read_at<std::uint16_t>(blob, 4) == 3);
    CHECK(read_at<std::uint16_t>(blob, 6) == 0);
    CHECK(read_at<std::uint32_t>(blob, 8) == blob.size());
    CHECK(read_at<std::uint32_t>(blob, 12) == ferry::detail::crc32(std::span(blob).subspan(16)));
    CHECK(read_at<std::uint32_t>(blob, 16) == 0x0001000DU);
    CHECK(read_at<std::uint16_t>(blob, 20) == 6);
    // 20 header + 2 + name + 4 + address + 1 + host id + 4 process id + 8
    // PID namespace + 4 count + two host records of 24 bytes, their rkeys,
    // 1 byte of memory kind and 2 of (empty) IPC handle length.
    CHECK(blob.size() == 20 + 2 + 6 + 4 + 8 + 1 + 6 + 4 + 8 + 4 + (24 + 5 + 3) + (24 + 1 + 3));
    CHECK(read_at<std::uint8_t>(blob, 40) == 6);
    CHECK(read_at<std::uint32_t>(blob, sample_pid_at) == sample_pid);
    CHECK(read_at<std::uint64_t>(blob, sample_pid_namespace_at) == sample_pid_namespace);
    CHECK(read_at<std::uint32_t>(blob, sample_count_at) == 2);

    const metadata_view back = decode_metadata(blob);
    CHECK(back.ucx_version == md.ucx_version);
    CHECK(back.name == "sample");
    CHECK(std::ranges::equal(back.worker_address, md.worker_address));
    CHECK(back.host_id == "host-a");
    CHECK(back.pid == sample_pid);
    CHECK(back.pid_namespace == sample_pid_namespace);
    REQUIRE(back.regions.size() == 2);
    for (std::size_t i = 0; i < 2; ++i) {
        INFO("region " << i);
        CHECK(back.regions[i].addr == md.regions[i].addr);
        CHECK(back.regions[i].len == md.regions[i].len);
        CHECK(back.regions[i].dev == md.regions[i].dev);
        CHECK(std::ranges::equal(back.regions[i].rkey, md.regions[i].rkey));
        CHECK(back.regions[i].kind == ferry::detail::memory_kind_code::host);
        CHECK(back.regions[i].ipc_handle.empty());
    }
    // The views point into the blob, not into copies.
    CHECK(offset_in(blob, back.name.data()) == 22);
    CHECK(offset_in(blob, back.worker_address.data()) == 32);

    CHECK(encode_metadata(back) == blob);
}

TEST_CASE("a CUDA region's device, memory kind and IPC export round-trip") {
    const metadata_view md = cuda_view();
    const blob_t blob = encode_metadata(md);
    // The third record adds 64 bytes of handle and two u64 after it.
    CHECK(blob.size() == encode_metadata(sample_view()).size() + (24 + 5 + 3) + 64 + 16);
    const metadata_view back = decode_metadata(blob);
    REQUIRE(back.regions.size() == 3);
    const auto& r = back.regions[2];
    CHECK(r.dev == 3);
    CHECK(r.kind == ferry::detail::memory_kind_code::cuda);
    CHECK(std::ranges::equal(r.ipc_handle, fake_ipc_handle));
    CHECK(r.ipc_offset == 4096);
    CHECK(r.ipc_alloc_size == (2U << 20));
    CHECK(encode_metadata(back) == blob);
}

TEST_CASE("a host region's shared-memory handle round-trips") {
    metadata_view md = sample_view();
    md.regions[0].ipc_handle = fake_host_handle;
    md.regions[0].ipc_offset = 0;
    md.regions[0].ipc_alloc_size = 8192;
    const blob_t blob = encode_metadata(md);
    // The handle's 12 bytes and two u64 after it.
    CHECK(blob.size() == encode_metadata(sample_view()).size() + 12 + 16);
    const metadata_view back = decode_metadata(blob);
    REQUIRE(back.regions.size() == 2);
    const auto& r = back.regions[0];
    CHECK(r.kind == ferry::detail::memory_kind_code::host);
    CHECK(std::ranges::equal(r.ipc_handle, fake_host_handle));
    CHECK(r.ipc_offset == 0);
    CHECK(r.ipc_alloc_size == 8192);
    CHECK(back.regions[1].ipc_handle.empty());
    CHECK(encode_metadata(back) == blob);
}

TEST_CASE("the process id and PID namespace round-trip at their limits") {
    for (const auto& [pid, ns] : {std::pair<std::uint32_t, std::uint64_t>{0, 0},
                                  {1, 1},
                                  {std::numeric_limits<std::uint32_t>::max(), std::numeric_limits<std::uint64_t>::max()}}) {
        INFO("pid " << pid << ", PID namespace " << ns);
        metadata_view md = sample_view();
        md.pid = pid;
        md.pid_namespace = ns;
        const blob_t blob = encode_metadata(md);
        const metadata_view back = decode_metadata(blob);
        CHECK(back.pid == pid);
        CHECK(back.pid_namespace == ns);
        CHECK(back.host_id == "host-a");
        CHECK(back.regions.size() == 2);
    }
}

TEST_CASE("a metadata blob with no regions round-trips") {
    metadata_view md = sample_view();
    md.regions.clear();
    const blob_t blob = encode_metadata(md);
    const metadata_view back = decode_metadata(blob);
    CHECK(back.regions.empty());
    CHECK(back.name == "sample");
    CHECK(encode_metadata(back) == blob);
}

TEST_CASE("crc32 is the IEEE 802.3 CRC-32") {
    CHECK(ferry::detail::crc32(bytes_of("123456789")) == 0xCBF43926U);
    CHECK(ferry::detail::crc32({}) == 0U);
    CHECK(ferry::detail::crc32(bytes_of("a")) == 0xE8B7BE43U);
}

TEST_CASE("local_metadata publishes the backend's name, UCX version and every registered region") {
    real_agent agent;
    const metadata_view md = decode_metadata(agent.blob);

    unsigned major = 0, minor = 0, release = 0;
    ucp_get_version(&major, &minor, &release);
    CHECK(md.ucx_version == ((major << 16) | minor));
    CHECK(md.name == "metadata-agent");
    CHECK_FALSE(md.worker_address.empty());
    // Which process on which host: what a peer needs to reach it through host_ipc.
    CHECK(md.host_id == ferry::detail::host_id());
    CHECK(md.pid == static_cast<std::uint32_t>(::getpid()));
    CHECK(md.pid_namespace != 0);
    CHECK(md.pid_namespace == ferry::detail::pid_namespace());

    std::vector<ferry::desc> want = {agent.a.whole(), agent.b.whole(), agent.c.whole()};
    std::ranges::sort(want, {}, &ferry::desc::addr);
    REQUIRE(md.regions.size() == 3);
    for (std::size_t i = 0; i < 3; ++i) {
        INFO("region " << i);
        CHECK(md.regions[i].addr == want[i].addr);
        CHECK(md.regions[i].len == want[i].len);
        CHECK(md.regions[i].dev == 0);
        CHECK_FALSE(md.regions[i].rkey.empty());
        CHECK(md.regions[i].kind == ferry::detail::memory_kind_code::host);
        // Allocated memory is shared: its handle names the file that holds
        // it, from its start, a whole number of pages at least as large.
        if (md.regions[i].addr == agent.c.whole().addr) {
            CHECK(md.regions[i].ipc_handle.size() == ferry::detail::host_share_handle_size);
            CHECK(md.regions[i].ipc_offset == 0);
            CHECK(md.regions[i].ipc_alloc_size >= md.regions[i].len);
            CHECK(md.regions[i].ipc_alloc_size % static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)) == 0);
        } else {
            CHECK(md.regions[i].ipc_handle.empty());
        }
    }

    // The blob loads, and the peer it makes publishes the same regions.
    ferry::peer p = agent.backend.load_remote(agent.blob);
    CHECK(agent.backend.remote_regions(p) == want);

    SECTION("a deregistered region is no longer published") {
        const ferry::desc gone = agent.b.whole();
        agent.b.reset();
        const blob_t later = agent.backend.local_metadata();
        const metadata_view md2 = decode_metadata(later);
        REQUIRE(md2.regions.size() == 2);
        for (const auto& r : md2.regions) CHECK(r.addr != gone.addr);
    }
}

TEST_CASE("load_remote refuses a real blob truncated at every length") {
    real_agent agent;
    const blob_t& blob = agent.blob;
    for (std::size_t len = 0; len < blob.size(); ++len) {
        INFO("truncated to " << len << " of " << blob.size() << " bytes");
        const std::span<const std::byte> cut(blob.data(), len);
        std::string field;
        if (len < 4)
            field = "magic";
        else if (len < 6)
            field = "format version";
        else if (len < 8)
            field = "flags";
        else
            field = "total length";
        if (len < 12) {
            REQUIRE_FERRY_ERROR(agent.backend.load_remote(cut), ferry::status::invalid_argument,
                                Contains("metadata: " + field + " at offset ") && Contains(": needs ") &&
                                    Contains(" remain (truncated)"));
        } else {
            REQUIRE_FERRY_ERROR(agent.backend.load_remote(cut), ferry::status::invalid_argument,
                                Contains("metadata: total length at offset ") &&
                                    Contains(": says " + std::to_string(blob.size()) + " bytes but the blob has " +
                                             std::to_string(len) + " (truncated or padded)"));
        }
    }
    // Refusals leave the backend usable: the intact blob still loads.
    CHECK(agent.backend.load_remote(blob).valid());
}

TEST_CASE("load_remote refuses a real blob with any single byte corrupted") {
    real_agent agent;
    const blob_t& blob = agent.blob;
    std::size_t refused = 0;
    for (std::size_t at = 0; at < blob.size(); ++at) {
        // The checksum covers [16, end); the header fields are checked one by one.
        std::string field;
        if (at < 4)
            field = "magic";
        else if (at < 6)
            field = "format version";
        else if (at < 8)
            field = "flags";
        else if (at < 12)
            field = "total length";
        else
            field = "checksum";
        for (unsigned mask : {0x01U, 0x02U, 0x04U, 0x08U, 0x10U, 0x20U, 0x40U, 0x80U, 0xFFU, 0x5AU}) {
            blob_t bad = blob;
            bad[at] ^= static_cast<std::byte>(mask);
            auto e = ferry_test::error_from([&] { static_cast<void>(agent.backend.load_remote(bad)); });
            if (!e || e->code_status() != ferry::status::invalid_argument ||
                std::string(e->what()).find("metadata: " + field + " at offset ") != 0) {
                INFO("byte " << at << " of " << blob.size() << " xor " << mask << " should be refused at the " << field
                             << "; got " << (e ? e->what() : "no error"));
                FAIL_CHECK();
                continue;
            }
            ++refused;
        }
    }
    CHECK(refused == blob.size() * 10);
    CHECK(agent.backend.load_remote(blob).valid());
}

TEST_CASE("decode_metadata refuses a bad header") {
    const blob_t good = encode_metadata(sample_view());

    SECTION("wrong magic") {
        blob_t bad = good;
        bad[0] = std::byte{'G'};
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: magic at offset ") && Contains(": not a ferry metadata blob"));
    }
    SECTION("a blob of another format entirely") {
        const std::string json = R"({"name": "agent", "regions": []})";
        REQUIRE_FERRY_ERROR(decode_metadata(bytes_of(json)), ferry::status::invalid_argument,
                            Contains("metadata: magic at offset ") && Contains(": not a ferry metadata blob"));
    }
    SECTION("format versions 0, 1 (ferry 0.1), 2 (no process id) and 4") {
        for (std::uint16_t v : {std::uint16_t{0}, std::uint16_t{1}, std::uint16_t{2}, std::uint16_t{4},
                                std::uint16_t{0xFFFF}}) {
            blob_t bad = good;
            patch<std::uint16_t>(bad, 4, v);
            REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                                Contains("metadata: format version at offset ") &&
                                    Contains(": version " + std::to_string(v) + " is not supported (expected 3)"));
        }
    }
    SECTION("unknown flags") {
        blob_t bad = good;
        patch<std::uint16_t>(bad, 6, std::uint16_t{0x8000});
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: flags at offset ") && Contains(": unknown flags set"));
    }
    SECTION("padded: one byte more than the total length says") {
        blob_t bad = good;
        bad.push_back(std::byte{0});
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: total length at offset ") &&
                                Contains(": says " + std::to_string(good.size()) + " bytes but the blob has " +
                                         std::to_string(bad.size()) + " (truncated or padded)"));
    }
    SECTION("wrong checksum") {
        blob_t bad = good;
        patch<std::uint32_t>(bad, 12, read_at<std::uint32_t>(bad, 12) ^ 1U);
        REQUIRE_FERRY_ERROR(
            decode_metadata(bad), ferry::status::invalid_argument,
            Contains("metadata: checksum at offset ") && Contains(": does not match the contents (corrupted)"));
    }
}

TEST_CASE("decode_metadata refuses hostile blobs whose checksum is valid") {
    SECTION("agent name of 0 bytes") {
        metadata_view md = sample_view();
        md.name = "";
        REQUIRE_FERRY_ERROR(decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
                            Contains("metadata: name length at offset ") && Contains(": 0 is outside 1..255"));
    }
    SECTION("agent name of 256 bytes") {
        const std::string name(256, 'n');
        metadata_view md = sample_view();
        md.name = name;
        REQUIRE_FERRY_ERROR(decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
                            Contains("metadata: name length at offset ") && Contains(": 256 is outside 1..255"));
    }
    SECTION("agent name of 255 bytes is accepted") {
        const std::string name(255, 'n');
        metadata_view md = sample_view();
        md.name = name;
        CHECK(decode_metadata(encode_metadata(md)).name == name);
    }
    SECTION("name length past the end") {
        blob_t bad = encode_metadata(sample_view());
        patch<std::uint16_t>(bad, 20, std::uint16_t{250});
        reseal(bad);
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: name at offset 22: needs 250 bytes but only " +
                                     std::to_string(bad.size() - 22) + " remain (truncated)"));
    }
    SECTION("worker address of 0 bytes") {
        metadata_view md = sample_view();
        md.worker_address = {};
        REQUIRE_FERRY_ERROR(
            decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
            Contains("metadata: worker address length at offset ") && Contains(": 0 is outside 1..65536"));
    }
    SECTION("worker address of 64 KiB is accepted, one byte more is not") {
        const std::vector<std::byte> address(64 * 1024 + 1, std::byte{7});
        metadata_view md = sample_view();
        md.worker_address = std::span(address).first(64 * 1024);
        CHECK(decode_metadata(encode_metadata(md)).worker_address.size() == 64 * 1024);
        md.worker_address = address;
        REQUIRE_FERRY_ERROR(
            decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
            Contains("metadata: worker address length at offset ") && Contains(": 65537 is outside 1..65536"));
    }
    SECTION("worker address length past the end") {
        blob_t bad = encode_metadata(sample_view());
        patch<std::uint32_t>(bad, 28, std::uint32_t{60'000});
        reseal(bad);
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: worker address at offset 32: needs 60000 bytes but only ") &&
                                Contains(" remain (truncated)"));
    }
    SECTION("host id of 64 bytes is accepted, 65 is not") {
        const std::string id(65, 'h');
        metadata_view md = sample_view();
        md.host_id = std::string_view(id).substr(0, 64);
        CHECK(decode_metadata(encode_metadata(md)).host_id.size() == 64);
        md.host_id = id;
        REQUIRE_FERRY_ERROR(decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
                            Contains("metadata: host id length at offset 40: 65 is more than 64"));
    }
    SECTION("host id length past the end") {
        blob_t bad = encode_metadata(sample_view());
        bad.resize(41 + 3);
        reseal(bad);
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: host id at offset 41: needs 6 bytes but only 3 remain (truncated)"));
    }
    SECTION("process id and PID namespace cut short") {
        blob_t bad = encode_metadata(sample_view());
        bad.resize(sample_pid_at + 3);
        reseal(bad);
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: process id at offset " + std::to_string(sample_pid_at) +
                                     ": needs 4 bytes but only 3 remain (truncated)"));
        bad = encode_metadata(sample_view());
        bad.resize(sample_pid_namespace_at + 7);
        reseal(bad);
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: PID namespace at offset " + std::to_string(sample_pid_namespace_at) +
                                     ": needs 8 bytes but only 7 remain (truncated)"));
    }
    SECTION("absurd region count") {
        blob_t bad = encode_metadata(sample_view());
        const std::size_t count_at = sample_count_at;
        REQUIRE(read_at<std::uint32_t>(bad, count_at) == 2);
        patch<std::uint32_t>(bad, count_at, std::numeric_limits<std::uint32_t>::max());
        reseal(bad);
        const std::size_t remain = bad.size() - count_at - 4;
        REQUIRE_FERRY_ERROR(
            decode_metadata(bad), ferry::status::invalid_argument,
            Contains("metadata: region count at offset ") &&
                Contains(": 4294967295 regions cannot fit in the " + std::to_string(remain) + " bytes that remain"));
    }
    SECTION("region count one more than the records present") {
        // Rkeys long enough that a third record could fit by size alone, so
        // that the count passes the first check and the reader runs out.
        const std::vector<std::byte> rkey(40, std::byte{9});
        metadata_view md = sample_view();
        md.regions[0].rkey = rkey;
        md.regions[1].rkey = rkey;
        blob_t bad = encode_metadata(md);
        patch<std::uint32_t>(bad, sample_count_at, std::uint32_t{3});
        reseal(bad);
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: region address at offset ") && Contains(" remain (truncated)"));
    }
    SECTION("region count one fewer than the records present") {
        blob_t bad = encode_metadata(sample_view());
        patch<std::uint32_t>(bad, sample_count_at, std::uint32_t{1});
        reseal(bad);
        // After the regions come extensions: the record left over reads as
        // one, whose tag (the record's address bytes) is none ferry knows.
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: extension tag at offset ") && Contains(": unknown extension 4096"));
    }
    SECTION("trailing bytes after the last region") {
        blob_t bad = encode_metadata(sample_view());
        bad.insert(bad.end(), 3, std::byte{0});
        reseal(bad);
        // Read as an extension, tag 0: none ferry knows.
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: extension tag at offset ") && Contains(": unknown extension 0"));
    }
    SECTION("rkey length past the end") {
        blob_t bad = encode_metadata(sample_view());
        // The last record ends with its 1-byte rkey, the memory kind and the
        // IPC handle length: 4 bytes from the rkey to the end.
        const std::size_t rkey_len_at = bad.size() - 3 - 1 - 4;
        REQUIRE(read_at<std::uint32_t>(bad, rkey_len_at) == 1);
        patch<std::uint32_t>(bad, rkey_len_at, std::uint32_t{5});
        reseal(bad);
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: rkey at offset " + std::to_string(bad.size() - 4) +
                                     ": needs 5 bytes but only 4 remain (truncated)"));
    }
    SECTION("unknown memory kind") {
        blob_t bad = encode_metadata(sample_view());
        const std::size_t kind_at = bad.size() - 3;
        REQUIRE(read_at<std::uint8_t>(bad, kind_at) == 0);
        patch<std::uint8_t>(bad, kind_at, std::uint8_t{2});
        reseal(bad);
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: memory kind at offset " + std::to_string(kind_at) +
                                     ": region 1: unknown memory kind 2"));
    }
    SECTION("a host region's handle of any length but 12 bytes") {
        // A CUDA IPC handle (64 bytes) on host memory, and lengths next to 12.
        for (std::size_t len : {std::size_t{64}, std::size_t{1}, std::size_t{11}, std::size_t{13}}) {
            INFO("handle of " << len << " bytes");
            metadata_view md = sample_view();
            md.regions[1].ipc_handle = std::span(fake_ipc_handle).first(len);
            md.regions[1].ipc_alloc_size = 4096;
            REQUIRE_FERRY_ERROR(decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
                                Contains("metadata: IPC handle length at offset ") &&
                                    Contains(": region 1 is host memory, whose handle has 12 bytes, not " +
                                             std::to_string(len)));
        }
        // 12 bytes: accepted.
        metadata_view md = sample_view();
        md.regions[1].ipc_handle = fake_host_handle;
        md.regions[1].ipc_alloc_size = 4096;
        CHECK(decode_metadata(encode_metadata(md)).regions[1].ipc_handle.size() == 12);
    }
    SECTION("a host region that leaves its shared-memory file") {
        metadata_view md = sample_view();
        md.regions[0].ipc_handle = fake_host_handle;
        md.regions[0].ipc_offset = 1;
        md.regions[0].ipc_alloc_size = 4096;
        REQUIRE_FERRY_ERROR(decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
                            Contains("metadata: IPC allocation size at offset ") &&
                                Contains(": region 0 (offset 1, 4096 bytes) does not lie inside its IPC allocation"));
        md.regions[0].ipc_offset = 0;
        CHECK(decode_metadata(encode_metadata(md)).regions[0].ipc_alloc_size == 4096);
    }
    SECTION("an IPC handle longer than 256 bytes") {
        const std::vector<std::byte> big(257, std::byte{1});
        metadata_view md = cuda_view();
        md.regions[2].ipc_handle = big;
        REQUIRE_FERRY_ERROR(decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
                            Contains("metadata: IPC handle length at offset ") && Contains(": 257 is more than 256"));
    }
    SECTION("a CUDA region that leaves its IPC allocation") {
        constexpr auto top = std::numeric_limits<std::uint64_t>::max();
        for (auto [offset, size] : {std::pair<std::uint64_t, std::uint64_t>{(2U << 20) - (1U << 20) + 1, 2U << 20},
                                    {top, 2U << 20},
                                    {0, (1U << 20) - 1},
                                    {top - 10, top}}) {
            INFO("offset " << offset << ", allocation " << size);
            metadata_view md = cuda_view();
            md.regions[2].ipc_offset = offset;
            md.regions[2].ipc_alloc_size = size;
            REQUIRE_FERRY_ERROR(decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
                                Contains("metadata: IPC allocation size at offset ") &&
                                    Contains(": region 2 (offset " + std::to_string(offset) +
                                             ", 1048576 bytes) does not lie inside its IPC allocation"));
        }
        metadata_view md = cuda_view();
        md.regions[2].ipc_offset = 1U << 20;
        CHECK(decode_metadata(encode_metadata(md)).regions[2].ipc_offset == (1U << 20));
    }
    SECTION("rkey of 0 bytes and of more than 64 KiB") {
        const std::vector<std::byte> big(64 * 1024 + 1, std::byte{3});
        metadata_view md = sample_view();
        md.regions[1].rkey = {};
        REQUIRE_FERRY_ERROR(decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
                            Contains("metadata: rkey length at offset ") && Contains(": 0 is outside 1..65536"));
        md.regions[1].rkey = big;
        REQUIRE_FERRY_ERROR(decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
                            Contains("metadata: rkey length at offset ") && Contains(": 65537 is outside 1..65536"));
        md.regions[1].rkey = std::span(big).first(64 * 1024);
        CHECK(decode_metadata(encode_metadata(md)).regions[1].rkey.size() == 64 * 1024);
    }
    SECTION("empty region, named by its index") {
        metadata_view md = sample_view();
        md.regions[1].len = 0;
        REQUIRE_FERRY_ERROR(decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
                            Contains("metadata: region length at offset ") && Contains(": region 1 is empty"));
    }
    SECTION("region that wraps around the address space") {
        constexpr auto top = std::numeric_limits<std::uint64_t>::max();
        metadata_view md = sample_view();
        md.regions[0].addr = top - 10;
        md.regions[0].len = 100;
        REQUIRE_FERRY_ERROR(
            decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
            Contains("metadata: region length at offset ") && Contains(": region 0 wraps around the address space"));
        md.regions[0].addr = 1;
        md.regions[0].len = top;
        REQUIRE_FERRY_ERROR(decode_metadata(encode_metadata(md)), ferry::status::invalid_argument,
                            Contains(": region 0 wraps around the address space"));
        // Ending at the last address is not wrapping.
        md.regions[0].addr = top - 100;
        md.regions[0].len = 100;
        CHECK(decode_metadata(encode_metadata(md)).regions[0].addr == top - 100);
    }
}

// The process start time travels as an extension after the regions (tag 1,
// length 8), inside the checksum: a blob without it is what ferry wrote
// before it existed, and an extension this reader does not know is refused.
namespace {

void append_extension(blob_t& blob, std::uint16_t tag, std::uint32_t len, std::span<const std::byte> bytes) {
    const std::size_t at = blob.size();
    blob.resize(at + 6);
    patch<std::uint16_t>(blob, at, tag);
    patch<std::uint32_t>(blob, at + 2, len);
    blob.insert(blob.end(), bytes.begin(), bytes.end());
    reseal(blob);
}

std::array<std::byte, 8> u64_bytes(std::uint64_t v) {
    std::array<std::byte, 8> out{};
    for (std::size_t i = 0; i < 8; ++i) out[i] = static_cast<std::byte>((v >> (8 * i)) & 0xFFU);
    return out;
}

constexpr std::uint64_t sample_start_time = 0x1122334455667788ULL;

}  // namespace

TEST_CASE("the process start time round-trips as an extension, and its absence changes nothing") {
    const blob_t without = encode_metadata(sample_view());
    metadata_view md = sample_view();
    md.start_time = sample_start_time;
    const blob_t with = encode_metadata(md);
    REQUIRE(with.size() == without.size() + 2 + 4 + 8);
    // Everything before the extension is the blob without it, but for the
    // total length and the checksum.
    CHECK(std::equal(without.begin() + 16, without.end(), with.begin() + 16));
    CHECK(read_at<std::uint16_t>(with, without.size()) == 1);
    CHECK(read_at<std::uint32_t>(with, without.size() + 2) == 8);
    CHECK(read_at<std::uint64_t>(with, without.size() + 6) == sample_start_time);
    CHECK(decode_metadata(without).start_time == 0);
    const metadata_view back = decode_metadata(with);
    CHECK(back.start_time == sample_start_time);
    CHECK(back.pid == sample_pid);
    CHECK(encode_metadata(back) == with);

}

TEST_CASE("decode_metadata refuses a hostile process start time extension") {
    const blob_t without = encode_metadata(sample_view());
    const std::size_t ext_at = without.size();
    SECTION("cut inside the extension header") {
        blob_t bad = without;
        append_extension(bad, 1, 8, u64_bytes(sample_start_time));
        bad.resize(ext_at + 3);
        reseal(bad);
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: extension length at offset " + std::to_string(ext_at + 2) +
                                     ": needs 4 bytes but only 1 remain (truncated)"));
    }
    SECTION("cut inside the start time") {
        blob_t bad = without;
        append_extension(bad, 1, 8, u64_bytes(sample_start_time));
        bad.resize(bad.size() - 3);
        reseal(bad);
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: extension length at offset " + std::to_string(ext_at + 2) +
                                     ": extension 1 says 8 bytes but only 5 remain"));
    }
    SECTION("an extension length far past the end") {
        blob_t bad = without;
        append_extension(bad, 1, 0xFFFFFFFFU, u64_bytes(1));
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: extension length at offset ") &&
                                Contains(": extension 1 says 4294967295 bytes but only 8 remain"));
    }
    SECTION("an unknown extension, even after a good one") {
        blob_t bad = without;
        append_extension(bad, 1, 8, u64_bytes(sample_start_time));
        const std::array<std::byte, 3> three{std::byte{1}, std::byte{2}, std::byte{3}};
        append_extension(bad, 77, 3, three);
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: extension tag at offset " + std::to_string(ext_at + 14) +
                                     ": unknown extension 77 (from a later ferry?)"));
    }
    SECTION("a start time of another length") {
        blob_t bad = without;
        const auto bytes = u64_bytes(sample_start_time);
        append_extension(bad, 1, 4, std::span(bytes).first(4));
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: extension length at offset ") &&
                                Contains(": the process start time has 8 bytes, not 4"));
    }
    SECTION("a start time of 0") {
        blob_t bad = without;
        append_extension(bad, 1, 8, u64_bytes(0));
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: process start time at offset " + std::to_string(ext_at + 6) +
                                     ": is 0"));
    }
    SECTION("a start time for process id 0") {
        metadata_view md = sample_view();
        md.pid = 0;
        blob_t bad = encode_metadata(md);
        append_extension(bad, 1, 8, u64_bytes(sample_start_time));
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: process start time at offset ") &&
                                Contains(": is given for process id 0"));
    }
    SECTION("the start time twice") {
        blob_t bad = without;
        append_extension(bad, 1, 8, u64_bytes(sample_start_time));
        append_extension(bad, 1, 8, u64_bytes(sample_start_time));
        REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                            Contains("metadata: extension tag at offset " + std::to_string(ext_at + 14) +
                                     ": the process start time appears twice"));
    }
    SECTION("the notification mailbox: round trip, and every bad form") {
        metadata_view md = sample_view();
        md.mailbox_fd = 17;
        md.mailbox_inode = 0xABCDEF;
        md.mailbox_size = 1 << 20;
        const metadata_view back = decode_metadata(encode_metadata(md));
        CHECK(back.mailbox_fd == 17);
        CHECK(back.mailbox_inode == 0xABCDEF);
        CHECK(back.mailbox_size == (1 << 20));
        CHECK(decode_metadata(without).mailbox_size == 0);

        std::array<std::byte, 20> box{};
        const auto put_size = [&](std::uint64_t v) {
            const auto b = u64_bytes(v);
            std::copy(b.begin(), b.end(), box.begin() + 12);
        };
        put_size(4096);
        blob_t twice = without;
        append_extension(twice, 2, 20, box);
        append_extension(twice, 2, 20, box);
        REQUIRE_FERRY_ERROR(decode_metadata(twice), ferry::status::invalid_argument,
                            Contains("metadata: extension tag at offset " + std::to_string(ext_at + 26) +
                                     ": the notification mailbox appears twice"));
        blob_t short_one = without;
        append_extension(short_one, 2, 12, std::span(box).first(12));
        REQUIRE_FERRY_ERROR(decode_metadata(short_one), ferry::status::invalid_argument,
                            Contains(": the notification mailbox has 20 bytes, not 12"));
        put_size(0);
        blob_t empty = without;
        append_extension(empty, 2, 20, box);
        REQUIRE_FERRY_ERROR(decode_metadata(empty), ferry::status::invalid_argument,
                            Contains("metadata: mailbox size at offset ") && Contains(": 0 is outside 1..68719476736"));
    }
    SECTION("a real blob's start time, corrupted, is refused by the checksum") {
        real_agent agent;
        REQUIRE(decode_metadata(agent.blob).start_time != 0);
        blob_t bad = agent.blob;
        bad[bad.size() - 1] ^= std::byte{0x01};
        REQUIRE_FERRY_ERROR(agent.backend.load_remote(bad), ferry::status::invalid_argument,
                            Contains("metadata: checksum at offset "));
    }
}

TEST_CASE("load_remote refuses a hostile real blob before connecting") {
    real_agent agent;
    const metadata_view md = decode_metadata(agent.blob);
    // After the host id: a u32 process id and a u64 PID namespace.
    const std::size_t count_at =
        offset_in(agent.blob, md.worker_address.data()) + md.worker_address.size() + 1 + md.host_id.size() + 4 + 8;
    REQUIRE(read_at<std::uint32_t>(agent.blob, count_at) == 3);

    SECTION("absurd region count") {
        blob_t bad = agent.blob;
        patch<std::uint32_t>(bad, count_at, std::uint32_t{0x10000000});
        reseal(bad);
        REQUIRE_FERRY_ERROR(
            agent.backend.load_remote(bad), ferry::status::invalid_argument,
            Contains("metadata: region count at offset ") && Contains(": 268435456 regions cannot fit in the "));
    }
    SECTION("last rkey length past the end") {
        blob_t bad = agent.blob;
        const auto& last = md.regions.back();
        const std::size_t rkey_at = offset_in(agent.blob, last.rkey.data());
        // Past what follows it too: memory kind, IPC handle length, and the
        // handle where the last region is the allocated one.
        patch<std::uint32_t>(bad, rkey_at - 4, static_cast<std::uint32_t>(bad.size() - rkey_at + 1));
        reseal(bad);
        REQUIRE_FERRY_ERROR(agent.backend.load_remote(bad), ferry::status::invalid_argument,
                            Contains("metadata: rkey at offset ") && Contains(" remain (truncated)"));
    }
    SECTION("a region that wraps around") {
        blob_t bad = agent.blob;
        const std::size_t record_at = count_at + 4;
        patch<std::uint64_t>(bad, record_at, std::numeric_limits<std::uint64_t>::max() - 1);
        reseal(bad);
        REQUIRE_FERRY_ERROR(agent.backend.load_remote(bad), ferry::status::invalid_argument,
                            Contains(": region 0 wraps around the address space"));
    }
    // Nothing was loaded under the agent's name by any of the refusals.
    CHECK_FALSE(agent.backend.find_peer("metadata-agent").has_value());
}

// Bug: for a field whose value is wrong (rather than missing), the message
// names the offset just past the field instead of the field's own offset,
// unlike truncation errors and unlike what README.md promises ("a message
// naming the field and its offset").
TEST_CASE("metadata errors name the offset where the faulty field starts") {
    blob_t bad = encode_metadata(sample_view());
    bad[0] = std::byte{'X'};
    REQUIRE_FERRY_ERROR(decode_metadata(bad), ferry::status::invalid_argument,
                        Contains("metadata: magic at offset 0: not a ferry metadata blob"));

    // The same field, truncated, is reported at its own offset.
    REQUIRE_FERRY_ERROR(decode_metadata(std::span(bad).first(2)), ferry::status::invalid_argument,
                        Contains("metadata: magic at offset 0: needs 4 bytes but only 2 remain (truncated)"));
}

TEST_CASE("decode_notif accepts only what a notification can be") {
    using ferry::detail::decode_notif;
    const std::string name = "sender";
    const std::string msg = "payload";

    SECTION("a well-formed notification is returned as views of its input") {
        auto n = decode_notif(name.data(), name.size(), msg.data(), msg.size(), 64);
        REQUIRE(n.has_value());
        CHECK(n->sender == "sender");
        CHECK(n->message == "payload");
        CHECK(n->sender.data() == name.data());
        CHECK(n->message.data() == msg.data());
    }
    SECTION("missing or empty sender") {
        CHECK_FALSE(decode_notif(nullptr, 6, msg.data(), msg.size(), 64).has_value());
        CHECK_FALSE(decode_notif(nullptr, 0, msg.data(), msg.size(), 64).has_value());
        CHECK_FALSE(decode_notif(name.data(), 0, msg.data(), msg.size(), 64).has_value());
    }
    SECTION("sender of 255 bytes is accepted, 256 is not") {
        const std::string long_name(256, 's');
        auto n = decode_notif(long_name.data(), 255, msg.data(), msg.size(), 64);
        REQUIRE(n.has_value());
        CHECK(n->sender.size() == 255);
        CHECK_FALSE(decode_notif(long_name.data(), 256, msg.data(), msg.size(), 64).has_value());
    }
    SECTION("message of exactly the limit is accepted, one byte more is not") {
        const std::string body(65, 'm');
        CHECK(decode_notif(name.data(), name.size(), body.data(), 64, 64).has_value());
        CHECK_FALSE(decode_notif(name.data(), name.size(), body.data(), 65, 64).has_value());
        CHECK(decode_notif(name.data(), name.size(), body.data(), 0, 0).has_value());
        CHECK_FALSE(decode_notif(name.data(), name.size(), body.data(), 1, 0).has_value());
    }
    SECTION("empty message, with or without a data pointer") {
        auto n = decode_notif(name.data(), name.size(), nullptr, 0, 64);
        REQUIRE(n.has_value());
        CHECK(n->message.empty());
        CHECK(n->message.data() != nullptr);
        auto m = decode_notif(name.data(), name.size(), msg.data(), 0, 64);
        REQUIRE(m.has_value());
        CHECK(m->message.empty());
    }
    SECTION("null data with a length") {
        CHECK_FALSE(decode_notif(name.data(), name.size(), nullptr, 3, 64).has_value());
    }
    SECTION("binary content is kept byte for byte") {
        const std::string binary("a\0b\xff", 4);
        auto n = decode_notif(name.data(), name.size(), binary.data(), binary.size(), 64);
        REQUIRE(n.has_value());
        CHECK(n->message == binary);
    }
}
