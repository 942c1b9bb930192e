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
//      u8 host id length, host id (the sender's kernel boot id; equal ids
//         mean one host, where CUDA IPC may connect the two)
//      u32 process id, u64 PID namespace id (0: unknown); equal namespaces
//         on one host mean the process id names the sender here too
//      u32 region count, then per region:
//          u64 addr, u64 len, u32 dev, u32 packed rkey length, packed rkey,
//          u8 memory kind (0 host, 1 CUDA device memory),
//          u16 IPC handle length (0: none), IPC handle, and with a handle:
//          u64 offset of addr in the handle's allocation, u64 allocation size.
//          A CUDA region's handle is a CUDA IPC handle; a host region's is
//          its shared-memory file: u32 descriptor in the sender, u64 inode.
//      then extensions to the end, each: u16 tag, u32 length, that many
//          bytes. Each tag appears at most once, with its exact length; a
//          tag this reader does not know is refused by number, as unknown
//          flags are, so that every byte of a blob is accounted for:
//          tag 1, process start time: u64, the sender's start time in clock
//             ticks after boot (/proc/PID/stat field 22), never 0. With the
//             host id (a boot id) and the process id it names the sender's
//             process for good, where a pid alone may be recycled.
//          tag 2, notification mailbox: u32 descriptor in the sender, u64
//             inode, u64 size of the shared-memory file that peers on this
//             host write notifications into (host/notif_mailbox.hpp).
//      A field is added as an extension, inside the checksum, rather than in
//      the fixed layout: a blob without it is byte for byte what an older
//      ferry wrote, and an older reader refuses a blob with it by name.
inline constexpr std::uint32_t metadata_magic = 0x59525246U;  // "FRRY" read as little-endian
inline constexpr std::uint16_t metadata_format_version = 3;
inline constexpr std::size_t metadata_header_size = 20;
inline constexpr std::size_t max_agent_name = 255;
inline constexpr std::size_t max_worker_address = 64 * 1024;
inline constexpr std::size_t max_packed_rkey = 64 * 1024;
inline constexpr std::size_t max_host_id = 64;
inline constexpr std::size_t max_ipc_handle = 256;
inline constexpr std::size_t host_share_handle_size = 4 + 8;
inline constexpr std::size_t min_region_record = 8 + 8 + 4 + 4 + 1 + 1 + 2;
inline constexpr std::uint16_t metadata_ext_start_time = 1;
inline constexpr std::uint16_t metadata_ext_mailbox = 2;
inline constexpr std::size_t metadata_mailbox_size = 4 + 8 + 8;
inline constexpr std::uint64_t max_mailbox_file = std::uint64_t{1} << 36;

/// What kind of memory a region is. Values are the wire encoding.
enum class memory_kind_code : std::uint8_t { host = 0, cuda = 1 };

struct region_record {
    std::uint64_t addr = 0;
    std::uint64_t len = 0;
    std::uint32_t dev = 0;
    std::span<const std::byte> rkey;
    memory_kind_code kind = memory_kind_code::host;
    // A handle to the allocation holding the region (CUDA IPC, or a host
    // region's shared-memory file), where in it the region starts, and how
    // large the allocation is. Empty: none.
    std::span<const std::byte> ipc_handle;
    std::uint64_t ipc_offset = 0;
    std::uint64_t ipc_alloc_size = 0;
};

struct metadata_view {
    std::uint32_t ucx_version = 0;
    std::string_view name;
    std::span<const std::byte> worker_address;
    std::string_view host_id;
    std::uint32_t pid = 0;
    std::uint64_t pid_namespace = 0;
    std::uint64_t start_time = 0;  // 0: unknown, and left out of the blob
    std::vector<region_record> regions;
    // The notification mailbox; size 0: none, and left out of the blob.
    std::uint32_t mailbox_fd = 0;
    std::uint64_t mailbox_inode = 0;
    std::uint64_t mailbox_size = 0;
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
    w.put<std::uint8_t>(static_cast<std::uint8_t>(md.host_id.size()));
    w.put_bytes(md.host_id);
    w.put<std::uint32_t>(md.pid);
    w.put<std::uint64_t>(md.pid_namespace);
    w.put<std::uint32_t>(static_cast<std::uint32_t>(md.regions.size()));
    for (const auto& r : md.regions) {
        w.put<std::uint64_t>(r.addr);
        w.put<std::uint64_t>(r.len);
        w.put<std::uint32_t>(r.dev);
        w.put<std::uint32_t>(static_cast<std::uint32_t>(r.rkey.size()));
        w.put_bytes(r.rkey);
        w.put<std::uint8_t>(static_cast<std::uint8_t>(r.kind));
        w.put<std::uint16_t>(static_cast<std::uint16_t>(r.ipc_handle.size()));
        if (!r.ipc_handle.empty()) {
            w.put_bytes(r.ipc_handle);
            w.put<std::uint64_t>(r.ipc_offset);
            w.put<std::uint64_t>(r.ipc_alloc_size);
        }
    }
    if (md.start_time != 0) {
        w.put<std::uint16_t>(metadata_ext_start_time);
        w.put<std::uint32_t>(8);
        w.put<std::uint64_t>(md.start_time);
    }
    if (md.mailbox_size != 0) {
        w.put<std::uint16_t>(metadata_ext_mailbox);
        w.put<std::uint32_t>(static_cast<std::uint32_t>(metadata_mailbox_size));
        w.put<std::uint32_t>(md.mailbox_fd);
        w.put<std::uint64_t>(md.mailbox_inode);
        w.put<std::uint64_t>(md.mailbox_size);
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

    auto host_len = r.get<std::uint8_t>("host id length");
    if (host_len > max_host_id)
        r.fail("host id length", std::to_string(host_len) + " is more than " + std::to_string(max_host_id));
    auto host = r.get_bytes(host_len, "host id");
    md.host_id = {reinterpret_cast<const char*>(host.data()), host.size()};
    md.pid = r.get<std::uint32_t>("process id");
    md.pid_namespace = r.get<std::uint64_t>("PID namespace");

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
        const auto kind = r.get<std::uint8_t>("memory kind");
        if (kind > static_cast<std::uint8_t>(memory_kind_code::cuda))
            r.fail("memory kind", "region " + std::to_string(i) + ": unknown memory kind " + std::to_string(kind));
        rec.kind = static_cast<memory_kind_code>(kind);
        auto ipc_len = r.get<std::uint16_t>("IPC handle length");
        if (ipc_len > max_ipc_handle)
            r.fail("IPC handle length", std::to_string(ipc_len) + " is more than " + std::to_string(max_ipc_handle));
        if (ipc_len > 0 && rec.kind == memory_kind_code::host && ipc_len != host_share_handle_size)
            r.fail("IPC handle length", "region " + std::to_string(i) + " is host memory, whose handle has " +
                                            std::to_string(host_share_handle_size) + " bytes, not " +
                                            std::to_string(ipc_len));
        if (ipc_len > 0) {
            rec.ipc_handle = r.get_bytes(ipc_len, "IPC handle");
            rec.ipc_offset = r.get<std::uint64_t>("IPC offset");
            rec.ipc_alloc_size = r.get<std::uint64_t>("IPC allocation size");
            // The importer maps the whole allocation and addresses the region
            // inside it: a region that leaves it would aim outside the mapping.
            if (rec.ipc_offset > rec.ipc_alloc_size || rec.len > rec.ipc_alloc_size - rec.ipc_offset)
                r.fail("IPC allocation size", "region " + std::to_string(i) + " (offset " +
                                                  std::to_string(rec.ipc_offset) + ", " + std::to_string(rec.len) +
                                                  " bytes) does not lie inside its IPC allocation");
        }
        md.regions.push_back(rec);
    }
    bool has_start_time = false, has_mailbox = false;
    while (r.remaining() > 0) {
        const auto tag = r.get<std::uint16_t>("extension tag");
        if (tag != metadata_ext_start_time && tag != metadata_ext_mailbox)
            r.fail("extension tag", "unknown extension " + std::to_string(tag) + " (from a later ferry?)");
        bool& seen = tag == metadata_ext_start_time ? has_start_time : has_mailbox;
        if (seen)
            r.fail("extension tag", std::string(tag == metadata_ext_start_time ? "the process start time"
                                                                               : "the notification mailbox") +
                                        " appears twice");
        seen = true;
        const auto len = r.get<std::uint32_t>("extension length");
        if (len > r.remaining())
            r.fail("extension length", "extension " + std::to_string(tag) + " says " + std::to_string(len) +
                                           " bytes but only " + std::to_string(r.remaining()) + " remain");
        if (tag == metadata_ext_mailbox) {
            if (len != metadata_mailbox_size)
                r.fail("extension length", "the notification mailbox has " + std::to_string(metadata_mailbox_size) +
                                               " bytes, not " + std::to_string(len));
            md.mailbox_fd = r.get<std::uint32_t>("mailbox descriptor");
            md.mailbox_inode = r.get<std::uint64_t>("mailbox inode");
            md.mailbox_size = r.get<std::uint64_t>("mailbox size");
            if (md.mailbox_size == 0 || md.mailbox_size > max_mailbox_file)
                r.fail("mailbox size", std::to_string(md.mailbox_size) + " is outside 1.." +
                                           std::to_string(max_mailbox_file));
            continue;
        }
        if (len != 8) r.fail("extension length", "the process start time has 8 bytes, not " + std::to_string(len));
        md.start_time = r.get<std::uint64_t>("process start time");
        // 0 is how the encoder says "unknown", by leaving the extension out,
        // and without a pid a start time names nothing: neither is ferry's.
        if (md.start_time == 0) r.fail("process start time", "is 0");
        if (md.pid == 0) r.fail("process start time", "is given for process id 0");
    }
    r.expect_end();
    return md;
}

}  // namespace detail
FERRY_NAMESPACE_END
