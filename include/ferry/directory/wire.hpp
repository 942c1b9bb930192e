#pragma once

#include <ferry/version.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>

FERRY_NAMESPACE_BEGIN
namespace detail {

// The listener's protocol: one request and one response per TCP connection,
// each a 16-byte header and a payload, integers little-endian:
//    0  u32 magic "FRLN"    4  u16 protocol version (1)
//    6  u16 code            8  u64 payload length
// Request codes: 1 fetch (empty payload; the response carries the blob the
// listener serves), 2 push (payload: the sender's metadata blob, which the
// listener validates and keeps under the agent name inside it), 3 invalidate
// (payload: an agent name of 1..max_agent_name bytes, NIXL's
// invalidateLocalMD: the listener drops that agent's pushed blob and tells
// its owner to unload the agent).
// Response codes: 0 ok (fetch: the blob; push, invalidate: empty), 1 nothing
// published, 2 refused (the pushed blob failed validation, or the listener
// keeps no more peers or pending invalidations), 3 too large, 4 bad request;
// the payload of 1..4 is a short text saying why. The server closes the connection after its response.
// The length is 64 bits so that a hostile prefix is checked against the
// limit before anything is allocated, not truncated into a plausible size.
inline constexpr std::uint32_t wire_magic = 0x4E4C5246U;  // "FRLN" read as little-endian
inline constexpr std::uint16_t wire_version = 1;
inline constexpr std::size_t wire_header_size = 16;
inline constexpr std::size_t max_wire_message = 1024;  // error texts

enum class wire_code : std::uint16_t {
    fetch = 1,
    push = 2,
    invalidate = 3,
};
enum class wire_reply : std::uint16_t {
    ok = 0,
    nothing_published = 1,
    refused = 2,
    too_large = 3,
    bad_request = 4,
};

struct wire_header {
    std::uint16_t code = 0;
    std::uint64_t length = 0;
};

inline std::array<std::byte, wire_header_size> encode_wire_header(std::uint16_t code, std::uint64_t length) {
    std::array<std::byte, wire_header_size> out{};
    auto put = [&](std::size_t at, auto value) {
        for (std::size_t i = 0; i < sizeof value; ++i)
            out[at + i] = static_cast<std::byte>((static_cast<std::uint64_t>(value) >> (8 * i)) & 0xFF);
    };
    put(0, wire_magic);
    put(4, wire_version);
    put(6, code);
    put(8, length);
    return out;
}

/// The header in `in`, or nothing if the magic or version is not ours.
inline std::optional<wire_header> decode_wire_header(const std::byte* in) {
    auto get = [&](std::size_t at, std::size_t n) {
        std::uint64_t v = 0;
        for (std::size_t i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(in[at + i]) << (8 * i);
        return v;
    };
    if (get(0, 4) != wire_magic || get(4, 2) != wire_version) return std::nullopt;
    return wire_header{static_cast<std::uint16_t>(get(6, 2)), get(8, 8)};
}

}  // namespace detail
FERRY_NAMESPACE_END
