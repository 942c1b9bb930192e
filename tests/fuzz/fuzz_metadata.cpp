// libFuzzer target: decode_metadata on arbitrary bytes must either return a
// view whose every span lies inside the input or throw ferry::error; it must
// never read or write out of bounds (ASan) or trip UB (UBSan).
//
// Each input is decoded twice: as it is, and with its total length and
// CRC-32 made to agree with it. A mutation almost never keeps the CRC right,
// so without the second decode the fuzzer would stop at the checksum and
// never reach the name, address and region records behind it.
#include <ferry/detail/crc32.hpp>
#include <ferry/detail/metadata.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

namespace {

bool inside(std::span<const std::byte> part, std::span<const std::byte> whole) {
    return part.empty() || (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

void check(std::span<const std::byte> blob) {
    try {
        const auto md = ferry::detail::decode_metadata(blob);
        const auto name = std::as_bytes(std::span(md.name.data(), md.name.size()));
        const auto host = std::as_bytes(std::span(md.host_id.data(), md.host_id.size()));
        bool ok = inside(name, blob) && inside(md.worker_address, blob) && inside(host, blob);
        for (const auto& r : md.regions) {
            ok = ok && inside(r.rkey, blob) && inside(r.ipc_handle, blob) && r.len != 0 && r.addr + r.len >= r.addr;
            // A host region's handle is a shared-memory file's, of one size.
            ok = ok && (r.kind != ferry::detail::memory_kind_code::host || r.ipc_handle.empty() ||
                        r.ipc_handle.size() == ferry::detail::host_share_handle_size);
        }
        // A blob that decodes must encode back to itself.
        ok = ok && ferry::detail::encode_metadata(md) == std::vector<std::byte>(blob.begin(), blob.end());
        if (!ok) std::abort();
    } catch (const ferry::error&) {
    }
}

// The input with bytes [8, 16) rewritten: total length and CRC-32 of [16, end).
std::vector<std::byte> resealed(std::span<const std::byte> blob) {
    std::vector<std::byte> out(blob.begin(), blob.end());
    const auto put = [&](std::size_t at, std::uint32_t v) {
        for (std::size_t i = 0; i < 4; ++i) out[at + i] = static_cast<std::byte>((v >> (8 * i)) & 0xFFU);
    };
    put(8, static_cast<std::uint32_t>(out.size()));
    put(12, ferry::detail::crc32(std::span(out).subspan(16)));
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::byte> blob(reinterpret_cast<const std::byte*>(data), size);
    check(blob);
    if (size >= 16) check(resealed(blob));
    return 0;
}
