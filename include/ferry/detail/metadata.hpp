#pragma once

#include <ferry/detail/byte_io.hpp>
#include <ferry/detail/crc32.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

// Blob layout, all integers little-endian:
//   0  magic "FRRY"        4  u16 format version   6  u16 flags (0)
//   8  u32 total length   12  u32 CRC-32 of bytes [16, total length)
//  16  u32 sender's UCX version (major << 16 | minor)
//  20  u16 name length, name
//      u32 worker address length, worker address
//      u32 region count, then per region:
//          u64 addr, u64 len, u32 dev, u32 packed rkey length, packed rkey
inline constexpr std::uint32_t metadata_magic = 0x59525246U;  // "FRRY" read as little-endian
inline constexpr std::uint16_t metadata_format_version = 1;
inline constexpr std::size_t metadata_header_size = 20;
inline constexpr std::size_t max_agent_name = 255;
inline constexpr std::size_t max_worker_address = 64 * 1024;
inline constexpr std::size_t max_packed_rkey = 64 * 1024;
inline constexpr std::size_t min_region_record = 8 + 8 + 4 + 4 + 1;

struct region_record {
    std::uint64_t addr = 0;
    std::uint64_t len = 0;
    std::uint32_t dev = 0;
    std::span<const std::byte> rkey;
};

struct metadata_view {
    std::uint32_t ucx_version = 0;
    std::string_view name;
    std::span<const std::byte> worker_address;
    std::vector<region_record> regions;
};

inline std::vector<std::byte> encode_metadata(const metadata_view& md) {
    std::vector<std::byte> out;
    byte_writer w(out);
    w.put<std::uint32_t>(metadata_magic);
    w.put<std::uint16_t>(metadata_format_version);
    w.put<std::uint16_t>(0);
    w.put<std::uint32_t>(0);  // total length, patched below
    w.put<std::uint32_t>(0);  // checksum, patched below
    w.put<std::uint32_t>(md.ucx_version);
    w.put<std::uint16_t>(static_cast<std::uint16_t>(md.name.size()));
    w.put_bytes(md.name);
    w.put<std::uint32_t>(static_cast<std::uint32_t>(md.worker_address.size()));
    w.put_bytes(md.worker_address);
    w.put<std::uint32_t>(static_cast<std::uint32_t>(md.regions.size()));
    for (const auto& r : md.regions) {
        w.put<std::uint64_t>(r.addr);
        w.put<std::uint64_t>(r.len);
        w.put<std::uint32_t>(r.dev);
        w.put<std::uint32_t>(static_cast<std::uint32_t>(r.rkey.size()));
        w.put_bytes(r.rkey);
    }
    w.patch<std::uint32_t>(8, static_cast<std::uint32_t>(out.size()));
    w.patch<std::uint32_t>(12, crc32(std::span(out).subspan(16)));
    return out;
}

/// Parses and validates a blob completely. The views point into `blob`.
/// Throws ferry::error(invalid_argument) naming the field and offset.
inline metadata_view decode_metadata(std::span<const std::byte> blob) {
    byte_reader r(blob, "metadata");
    if (r.get<std::uint32_t>("magic") != metadata_magic) r.fail("magic", "not a ferry metadata blob");
    if (auto v = r.get<std::uint16_t>("format version"); v != metadata_format_version)
        r.fail("format version", "version " + std::to_string(v) + " is not supported (expected " +
                                     std::to_string(metadata_format_version) + ")");
    if (r.get<std::uint16_t>("flags") != 0) r.fail("flags", "unknown flags set");
    if (auto total = r.get<std::uint32_t>("total length"); total != blob.size())
        r.fail("total length", "says " + std::to_string(total) + " bytes but the blob has " +
                                   std::to_string(blob.size()) + " (truncated or padded)");
    if (auto sum = r.get<std::uint32_t>("checksum"); sum != crc32(blob.subspan(16)))
        r.fail("checksum", "does not match the contents (corrupted)");

    metadata_view md;
    md.ucx_version = r.get<std::uint32_t>("ucx version");
    auto name_len = r.get<std::uint16_t>("name length");
    if (name_len == 0 || name_len > max_agent_name)
        r.fail("name length", std::to_string(name_len) + " is outside 1.." + std::to_string(max_agent_name));
    auto name = r.get_bytes(name_len, "name");
    md.name = {reinterpret_cast<const char*>(name.data()), name.size()};

    auto addr_len = r.get<std::uint32_t>("worker address length");
    if (addr_len == 0 || addr_len > max_worker_address)
        r.fail("worker address length",
               std::to_string(addr_len) + " is outside 1.." + std::to_string(max_worker_address));
    md.worker_address = r.get_bytes(addr_len, "worker address");

    auto count = r.get<std::uint32_t>("region count");
    if (count > r.remaining() / min_region_record)
        r.fail("region count", std::to_string(count) + " regions cannot fit in the " +
                                   std::to_string(r.remaining()) + " bytes that remain");
    md.regions.reserve(count);
    for (std::uint32_t i = 0; i < count; ++i) {
        region_record rec;
        rec.addr = r.get<std::uint64_t>("region address");
        rec.len = r.get<std::uint64_t>("region length");
        if (rec.len == 0) r.fail("region length", "region " + std::to_string(i) + " is empty");
        if (rec.addr + rec.len < rec.addr)
            r.fail("region length", "region " + std::to_string(i) + " wraps around the address space");
        rec.dev = r.get<std::uint32_t>("region device");
        auto rkey_len = r.get<std::uint32_t>("rkey length");
        if (rkey_len == 0 || rkey_len > max_packed_rkey)
            r.fail("rkey length", std::to_string(rkey_len) + " is outside 1.." + std::to_string(max_packed_rkey));
        rec.rkey = r.get_bytes(rkey_len, "rkey");
        md.regions.push_back(rec);
    }
    r.expect_end();
    return md;
}

}  // namespace detail
FERRY_NAMESPACE_END
