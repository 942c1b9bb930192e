#pragma once

#include <ferry/version.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

FERRY_NAMESPACE_BEGIN
namespace detail {

// CRC-32 (IEEE 802.3, reflected). It catches every single-byte corruption of
// a metadata blob, which matters because UCX trusts worker addresses and
// packed rkeys blindly and can crash on a damaged one.
inline constexpr std::array<std::uint32_t, 256> crc32_table = [] {
    std::array<std::uint32_t, 256> table{};
    for (std::uint32_t i = 0; i < 256; ++i) {
        std::uint32_t c = i;
        for (int k = 0; k < 8; ++k) c = (c & 1U) ? 0xEDB88320U ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    return table;
}();

[[nodiscard]] constexpr std::uint32_t crc32(std::span<const std::byte> bytes) noexcept {
    std::uint32_t c = 0xFFFFFFFFU;
    for (std::byte b : bytes) c = crc32_table[(c ^ static_cast<std::uint32_t>(b)) & 0xFFU] ^ (c >> 8);
    return c ^ 0xFFFFFFFFU;
}

}  // namespace detail
FERRY_NAMESPACE_END
