#pragma once

// Byte patterns that depend on a seed (a round, a case) and on the offset of
// each byte, so that data that landed in the wrong place, came from the wrong
// round or did not land at all is told apart from correct data.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace ferry_test {

// splitmix64's finaliser: every input bit affects every output bit.
[[nodiscard]] constexpr std::uint64_t mix(std::uint64_t seed, std::uint64_t word_index) noexcept {
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ULL + word_index * 0xC2B2AE3D27D4EB4FULL + 0x165667B19E3779F9ULL;
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    x ^= x >> 31;
    return x;
}

/// The pattern's byte at `offset` for `seed`.
[[nodiscard]] constexpr std::byte pattern_byte(std::uint64_t seed, std::uint64_t offset) noexcept {
    return static_cast<std::byte>((mix(seed, offset >> 3) >> (8 * (offset & 7))) & 0xFFU);
}

/// Writes the pattern for bytes [offset, offset + n) to p.
inline void fill_pattern(std::byte* p, std::size_t n, std::uint64_t seed, std::uint64_t offset) noexcept {
    std::size_t i = 0;
    while (i < n) {
        const std::uint64_t at = offset + i;
        const std::uint64_t word = mix(seed, at >> 3);
        for (unsigned k = static_cast<unsigned>(at & 7); k < 8 && i < n; ++k, ++i)
            p[i] = static_cast<std::byte>((word >> (8 * k)) & 0xFFU);
    }
}

inline std::string hex_byte(std::byte b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "0x%02x", static_cast<unsigned>(b));
    return buf;
}

/// Empty if p holds the pattern for [offset, offset + n); otherwise where and how it differs.
[[nodiscard]] inline std::string check_pattern(const std::byte* p, std::size_t n, std::uint64_t seed,
                                               std::uint64_t offset) {
    std::size_t i = 0;
    while (i < n) {
        const std::uint64_t at = offset + i;
        const std::uint64_t word = mix(seed, at >> 3);
        for (unsigned k = static_cast<unsigned>(at & 7); k < 8 && i < n; ++k, ++i) {
            const auto want = static_cast<std::byte>((word >> (8 * k)) & 0xFFU);
            if (p[i] != want)
                return "byte at pattern offset " + std::to_string(at) + " (seed " + std::to_string(seed) + ") is " +
                       hex_byte(p[i]) + ", expected " + hex_byte(want);
        }
    }
    return {};
}

/// Empty if every byte of [p, p + n) equals `value`; otherwise the first
/// that does not, numbered from `first_index`.
[[nodiscard]] inline std::string check_filled(const std::byte* p, std::size_t n, std::byte value,
                                              std::size_t first_index = 0) {
    for (std::size_t i = 0; i < n; ++i)
        if (p[i] != value)
            return "byte " + std::to_string(first_index + i) + " is " + hex_byte(p[i]) + ", expected untouched " +
                   hex_byte(value);
    return {};
}

}  // namespace ferry_test
