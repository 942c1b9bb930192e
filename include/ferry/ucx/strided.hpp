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
#include <memory>
#include <span>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// The most blocks one strided transfer may hold. prepare lays every block
/// out once, so a few entries with huge counts must not become gigabytes.
inline constexpr std::size_t max_strided_blocks = std::size_t{1} << 24;

/// Where each block of a pair of strided lists comes from: the caller's two
/// lists, alive for the prepare that names their blocks, and the block
/// count. Only errors ask, so a block's entry is found by walking a list.
struct strided_origin {
    std::span<const strided_desc> local;
    std::span<const strided_desc> remote;
    std::size_t blocks = 0;

    // "entry i" or "entry i, block j" of one side.
    static std::string side(std::span<const strided_desc> list, std::size_t block) {
        std::size_t start = 0, entry = 0;
        while (entry + 1 < list.size() && block >= start + list[entry].count) start += list[entry++].count;
        return "entry " + std::to_string(entry) +
               (list[entry].count > 1 ? ", block " + std::to_string(block - start) : "");
    }
};

/// Block `block` of a transfer as errors name it: the caller's descriptor,
/// or, for strided lists, the entry (and the block inside it) of each side.
inline std::string name_block(std::size_t block, const strided_origin* origin) {
    if (!origin) return "descriptor " + std::to_string(block);
    return "block " + std::to_string(block) + " (local " + strided_origin::side(origin->local, block) +
           "; remote " + strided_origin::side(origin->remote, block) + ")";
}

/// Bytes from an entry's first block's start to its last block's end, or
/// nothing when that does not fit in an address.
inline bool strided_span(const strided_desc& d, std::uint64_t& span) noexcept {
    // Overflow checks without a division: prepare runs this per entry.
    std::uint64_t steps_bytes = 0, end = 0;
    if (__builtin_mul_overflow(std::uint64_t{d.count - 1}, std::uint64_t{d.stride}, &steps_bytes) ||
        __builtin_add_overflow(steps_bytes, std::uint64_t{d.len}, &span))
        return false;
    return !__builtin_add_overflow(std::uint64_t{d.addr}, span, &end);
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

/// A run of pairs that one entry of each list describes: `count` pairs of
/// `local.len` bytes, the k-th at local.addr + k * local_stride and
/// remote.addr + k * remote_stride; `first_block` is the transfer's index
/// of its first pair, which errors name.
struct block_run {
    desc local;
    desc remote;
    std::size_t local_stride = 0;
    std::size_t remote_stride = 0;
    std::size_t count = 1;
    std::size_t first_block = 0;
};

/// Cuts two checked strided lists of `blocks` blocks each into runs, in
/// O(entries): a run ends wherever an entry of either side ends; the runs
/// stay valid until the thread's next call. Records the
/// lists in `origin` and checks that the lengths of each pair of entries
/// that meet agree; a throw names the first block whose do not.
inline std::span<block_run> pair_runs(std::span<const strided_desc> local, std::span<const strided_desc> remote,
                                      std::size_t blocks, strided_origin& origin) {
    origin = {local, remote, blocks};
    // Kept per thread at the size of the longest list it paired, as
    // pair_regions is: a list prepared again allocates and faults in nothing
    // here. Written through a plain pointer: through a vector, every run
    // reloads and stores the vector's end, which costs half the loop.
    thread_local std::unique_ptr<block_run[]> table;
    thread_local std::size_t capacity = 0;
    const std::size_t most = local.size() + remote.size() - 1;
    if (capacity < most) {
        table = std::make_unique_for_overwrite<block_run[]>(most);
        capacity = most;
    }
    block_run* out = table.get();
    // Entry li of the local list holds its blocks [l_start, l_start + count); likewise ri.
    std::size_t li = 0, ri = 0, l_start = 0, r_start = 0;
    for (std::size_t b = 0; b < blocks;) {
        const strided_desc& l = local[li];
        const strided_desc& r = remote[ri];
        if (l.len != r.len)
            throw error(status::invalid_argument, "prepare: " + name_block(b, &origin) + ": local length " +
                                                      std::to_string(l.len) + " differs from remote length " +
                                                      std::to_string(r.len));
        const std::size_t l_end = l_start + l.count, r_end = r_start + r.count, end = std::min(l_end, r_end);
        // Field by field: a run built aside and copied in whole is read back
        // in wider pieces than it was written, which stalls every run.
        out->local = {l.addr + (b - l_start) * l.stride, l.len, l.dev};
        out->remote = {r.addr + (b - r_start) * r.stride, r.len, r.dev};
        out->local_stride = l.stride;
        out->remote_stride = r.stride;
        out->count = end - b;
        out->first_block = b;
        ++out;
        b = end;
        if (b == l_end) {
            ++li;
            l_start = l_end;
        }
        if (b == r_end) {
            ++ri;
            r_start = r_end;
        }
    }
    return {table.get(), out};
}

/// Bytes from a run's first block's start to its last block's end, on the
/// local or the remote side; checked not to overflow by check_strided_list.
inline std::size_t run_span(const desc& first, std::size_t stride, std::size_t count) noexcept {
    return (count - 1) * stride + first.len;
}

/// The pairs of some runs laid out one by one, for code that takes plain
/// lists: the k-th pair of a run follows its first by k strides.
inline void expand_runs(std::span<const block_run> runs, std::vector<desc>& local, std::vector<desc>& remote) {
    std::size_t blocks = 0;
    for (const block_run& run : runs) blocks += run.count;
    local.resize(blocks);
    remote.resize(blocks);
    desc* l = local.data();
    desc* r = remote.data();
    for (const block_run& run : runs) {
        for (std::size_t k = 0; k < run.count; ++k) {
            *l++ = {run.local.addr + k * run.local_stride, run.local.len, run.local.dev};
            *r++ = {run.remote.addr + k * run.remote_stride, run.remote.len, run.remote.dev};
        }
    }
}

}  // namespace detail
FERRY_NAMESPACE_END
