#pragma once

// Descriptor layouts for transfer tests, and the patterns that fill and
// check them: block i of a transfer carries the pattern bytes at the offsets
// of its remote block, so a block that lands in the wrong place, or bytes
// that land outside every block, are told apart from correct data.

#include "support/pattern.hpp"

#include <ferry/desc.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ferry_test {

/// What memory outside the blocks holds, and must still hold afterwards.
inline constexpr std::byte untouched{0xA5};

// Blocks scattered over a region: descriptor i sits at `at[i]`.
struct blocks {
    std::size_t len = 0;
    std::vector<std::size_t> at;

    [[nodiscard]] std::size_t end() const { return len == 0 ? 0 : *std::max_element(at.begin(), at.end()) + len; }

    [[nodiscard]] std::vector<ferry::desc> descs(std::uint64_t base, std::uint32_t dev = 0) const {
        std::vector<ferry::desc> out;
        out.reserve(at.size());
        for (std::size_t off : at) out.push_back({static_cast<std::uintptr_t>(base + off), len, dev});
        return out;
    }

    // The same blocks as strided entries: each run of blocks one stride
    // apart (a stride of at least a block) is one entry.
    [[nodiscard]] std::vector<ferry::strided_desc> strided_descs(std::uint64_t base, std::uint32_t dev = 0) const {
        std::vector<ferry::strided_desc> out;
        for (std::size_t i = 0; i < at.size();) {
            std::size_t count = 1, stride = 0;
            if (i + 1 < at.size() && at[i + 1] >= at[i] + len) {
                stride = at[i + 1] - at[i];
                while (i + count < at.size() && at[i + count] == at[i + count - 1] + stride) ++count;
            }
            out.emplace_back(static_cast<std::uintptr_t>(base + at[i]), len, dev, count > 1 ? stride : 0, count);
            i += count;
        }
        return out;
    }
};

// `count` blocks of `len` bytes, `gap` bytes apart after `first`, in the
// order of a fixed permutation so that neighbouring descriptors are not
// neighbours in memory.
inline blocks scattered(std::size_t count, std::size_t len, std::size_t first, std::size_t gap) {
    blocks b;
    b.len = len;
    for (std::size_t i = 0; i < count; ++i) {
        const std::size_t slot = (i * 389 + 7) % count;
        b.at.push_back(first + slot * (len + gap));
    }
    return b;
}

// Local blocks in order, with small gaps.
inline blocks packed(std::size_t count, std::size_t len) {
    blocks b;
    b.len = len;
    for (std::size_t i = 0; i < count; ++i) b.at.push_back(5 + i * (len + 13));
    return b;
}

// Writes into `base` the pattern that block i should carry: the bytes of
// `seed` at the offsets of the corresponding remote block.
inline void fill_blocks(std::byte* base, const blocks& where, const blocks& keyed_by, std::uint64_t seed) {
    for (std::size_t i = 0; i < where.at.size(); ++i)
        ferry_test::fill_pattern(base + where.at[i], where.len, seed, keyed_by.at[i]);
}

// Empty if every block of `where` holds its pattern and, when `total` is
// not 0, every byte of [0, total) outside the blocks is untouched.
inline std::string verify_blocks(const std::byte* base, const blocks& where, const blocks& keyed_by, std::uint64_t seed,
                          std::size_t total) {
    for (std::size_t i = 0; i < where.at.size(); ++i)
        if (auto e = ferry_test::check_pattern(base + where.at[i], where.len, seed, keyed_by.at[i]); !e.empty())
            return "descriptor " + std::to_string(i) + " (offset " + std::to_string(where.at[i]) + "): " + e;
    if (total == 0) return {};
    std::vector<std::size_t> starts = where.at;
    std::sort(starts.begin(), starts.end());
    std::size_t pos = 0;
    for (std::size_t start : starts) {
        if (auto e = ferry_test::check_filled(base + pos, start - pos, untouched, pos); !e.empty())
            return "outside the blocks: " + e;
        pos = start + where.len;
    }
    if (auto e = ferry_test::check_filled(base + pos, total - pos, untouched, pos); !e.empty())
        return "outside the blocks: " + e;
    return {};
}

}  // namespace ferry_test
