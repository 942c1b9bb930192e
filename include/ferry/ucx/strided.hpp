#pragma once

// Strided descriptor lists at prepare: their checks, entry by entry, and the
// names errors give their blocks.
#include <ferry/desc.hpp>
#include <ferry/detail/describe.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// The most blocks one strided transfer may hold. prepare lays every block
/// out once, so a few entries with huge counts must not become gigabytes.
inline constexpr std::size_t max_strided_blocks = std::size_t{1} << 24;

/// Where each block of a pair of strided lists comes from: entry i of a side
/// holds that side's blocks [starts[i], starts[i + 1]); the last start is
/// the block count.
struct strided_origin {
    std::vector<std::size_t> local_starts;
    std::vector<std::size_t> remote_starts;

    // "entry i" or "entry i, block j" of one side.
    static std::string side(const std::vector<std::size_t>& starts, std::size_t block) {
        const auto it = std::upper_bound(starts.begin(), starts.end() - 1, block) - 1;
        const auto entry = static_cast<std::size_t>(it - starts.begin());
        return "entry " + std::to_string(entry) + (*(it + 1) - *it > 1 ? ", block " + std::to_string(block - *it) : "");
    }
};

/// Block `block` of a transfer as errors name it: the caller's descriptor,
/// or, for strided lists, the entry (and the block inside it) of each side.
inline std::string name_block(std::size_t block, const strided_origin* origin) {
    if (!origin) return "descriptor " + std::to_string(block);
    return "block " + std::to_string(block) + " (local " + strided_origin::side(origin->local_starts, block) +
           "; remote " + strided_origin::side(origin->remote_starts, block) + ")";
}

/// Bytes from an entry's first block's start to its last block's end, or
/// nothing when that does not fit in an address.
inline bool strided_span(const strided_desc& d, std::uint64_t& span) noexcept {
    constexpr auto most = std::numeric_limits<std::uint64_t>::max();
    const std::uint64_t steps = d.count - 1;
    if (d.stride != 0 && steps > (most - d.len) / d.stride) return false;
    span = steps * d.stride + d.len;
    return d.addr <= most - span;
}

/// prepare's checks of one strided list on its own, entry by entry; returns
/// the list's block count. `written`: the side the transfer writes, whose
/// blocks may not overlap each other.
inline std::size_t check_strided_list(std::span<const strided_desc> list, const char* side, bool written) {
    std::size_t blocks = 0;
    for (std::size_t i = 0; i < list.size(); ++i) {
        const strided_desc& d = list[i];
        auto at = [&] { return std::string("prepare: ") + side + " entry " + std::to_string(i); };
        if (d.len == 0) throw error(status::invalid_argument, at() + ": length is 0");
        if (d.count == 0) throw error(status::invalid_argument, at() + ": count is 0");
        std::uint64_t span = 0;
        if (!strided_span(d, span))
            throw error(status::invalid_argument, at() + ": " + std::to_string(d.count) + " blocks of stride " +
                                                      std::to_string(d.stride) + " from " + hex(d.addr) +
                                                      " run past the end of the address space");
        if (written && d.count > 1 && d.stride < d.len)
            throw error(status::invalid_argument, at() + ": stride " + std::to_string(d.stride) +
                                                      " is smaller than the length " + std::to_string(d.len) +
                                                      ", so the blocks it receives overlap");
        if (d.count > max_strided_blocks - blocks)
            throw error(status::invalid_argument, std::string("prepare: the ") + side + " list holds more than " +
                                                      std::to_string(max_strided_blocks) + " blocks");
        blocks += d.count;
    }
    return blocks;
}

/// Lays the blocks of two checked strided lists out as pairs of plain
/// descriptors, and records where each came from. Every pair's lengths
/// must agree; a throw names the first pair whose do not.
inline void expand_strided(std::span<const strided_desc> local, std::span<const strided_desc> remote,
                           std::size_t blocks, std::vector<desc>& flat_local, std::vector<desc>& flat_remote,
                           strided_origin& origin) {
    auto lay_out = [blocks](std::span<const strided_desc> list, std::vector<desc>& flat,
                            std::vector<std::size_t>& starts) {
        flat.resize(blocks);
        starts.resize(list.size() + 1);
        desc* out = flat.data();
        std::size_t next = 0;
        for (std::size_t i = 0; i < list.size(); ++i) {
            const strided_desc& d = list[i];
            starts[i] = next;
            next += d.count;
            std::uintptr_t a = d.addr;
            for (std::size_t k = 0; k < d.count; ++k, a += d.stride) *out++ = {a, d.len, d.dev};
        }
        starts.back() = next;
    };
    lay_out(local, flat_local, origin.local_starts);
    lay_out(remote, flat_remote, origin.remote_starts);
    // Lengths are equal within an entry, so each pair of entries that meet
    // is checked once, where they first meet.
    std::size_t li = 0, ri = 0;
    std::size_t l_end = local[0].count, r_end = remote[0].count;
    for (std::size_t b = 0;;) {
        if (local[li].len != remote[ri].len)
            throw error(status::invalid_argument, "prepare: " + name_block(b, &origin) + ": local length " +
                                                      std::to_string(local[li].len) + " differs from remote length " +
                                                      std::to_string(remote[ri].len));
        b = std::min(l_end, r_end);
        if (b == blocks) break;
        if (b == l_end) l_end += local[++li].count;
        if (b == r_end) r_end += remote[++ri].count;
    }
}

}  // namespace detail
FERRY_NAMESPACE_END
