#pragma once

// What a sweep measures: its rows, the buffer each side registers, and where
// each row's blocks lie in those buffers (offsets, so that ferry and the raw
// loop, whose buffers may differ, use the same layout).

#include "options.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bench {

struct row_spec {
    std::size_t block = 0;
    std::size_t batch = 0;
};

/// Offsets of a row's blocks: local[i] in the initiator's buffer pairs with
/// remote[i] in the target's.
struct layout {
    std::vector<std::uint64_t> local;
    std::vector<std::uint64_t> remote;
};

std::vector<row_spec> make_rows(const options& o);

/// Bytes each side registers: what the largest row needs under --pattern,
/// capped at --buffer-size, but never less than two of the largest blocks.
std::size_t buffer_bytes(const options& o);

/// Local blocks lie back to back; remote ones per --pattern: back to back,
/// every other block slot, distinct random slots (random with repeats when
/// the batch has more blocks than the buffer has slots), runs of
/// `run_length` back to back slots, each followed by one free slot, or
/// every other page of `run_length` layers, page by page (kv). Blocks
/// that do not fit wrap around. Deterministic for a given seed.
layout make_layout(pattern_kind p, std::size_t block, std::size_t batch, std::size_t buffer, std::uint64_t seed,
                   std::size_t run_length = 1);

}  // namespace bench
