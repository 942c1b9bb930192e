#include "plan.hpp"

#include <algorithm>
#include <numeric>
#include <random>

namespace bench {

namespace {
constexpr std::size_t page = 4096;

std::size_t spread(pattern_kind p) {
    switch (p) {
        case pattern_kind::contiguous: return 1;
        case pattern_kind::strided: return 2;
        case pattern_kind::random: return 4;  // scattered over a pool four times the blocks
        case pattern_kind::runs: return 2;    // at most a gap block per block
        case pattern_kind::kv: return 2;      // every other page
    }
    return 1;
}
}  // namespace

std::vector<row_spec> make_rows(const options& o) {
    std::vector<row_spec> rows;
    for (auto block : o.block_sizes)
        for (auto batch : o.batches) rows.push_back({block, batch});
    return rows;
}

std::size_t buffer_bytes(const options& o) {
    std::size_t need = 0, max_block = 0;
    for (auto block : o.block_sizes) {
        max_block = std::max(max_block, block);
        for (auto batch : o.batches) {
            // Saturate instead of overflowing: 1G blocks x 1M batch.
            std::size_t n = block > SIZE_MAX / batch / spread(o.pattern) ? SIZE_MAX : block * batch * spread(o.pattern);
            need = std::max(need, n);
        }
    }
    std::size_t bytes = std::max(std::min(need, o.buffer_size), 2 * max_block);
    return (bytes + page - 1) / page * page;
}

layout make_layout(pattern_kind p, std::size_t block, std::size_t batch, std::size_t buffer, std::uint64_t seed,
                   std::size_t run_length) {
    const std::uint64_t slots = std::max<std::uint64_t>(1, buffer / block);
    layout l;
    l.local.resize(batch);
    l.remote.resize(batch);
    for (std::size_t i = 0; i < batch; ++i) l.local[i] = (i % slots) * block;
    switch (p) {
        case pattern_kind::contiguous:
            for (std::size_t i = 0; i < batch; ++i) l.remote[i] = (i % slots) * block;
            break;
        case pattern_kind::strided:
            for (std::size_t i = 0; i < batch; ++i) l.remote[i] = ((2 * i) % slots) * block;
            break;
        case pattern_kind::runs:
            for (std::size_t i = 0; i < batch; ++i)
                l.remote[i] = (((i / run_length) * (run_length + 1) + i % run_length) % slots) * block;
            break;
        case pattern_kind::kv: {
            // run_length layers of 2 * pages pages; block i is layer i % layers of page i / layers.
            const std::size_t layers = run_length;
            const std::size_t pages = (batch + layers - 1) / layers;
            for (std::size_t i = 0; i < batch; ++i)
                l.remote[i] = (((i % layers) * 2 * pages + 2 * (i / layers)) % slots) * block;
            break;
        }
        case pattern_kind::random: {
            std::mt19937_64 rng(seed ^ (block * 0x9E3779B97F4A7C15ULL) ^ batch);
            if (batch <= slots) {
                // A partial Fisher-Yates shuffle: `batch` distinct slots.
                std::vector<std::uint64_t> all(slots);
                std::iota(all.begin(), all.end(), 0);
                for (std::size_t i = 0; i < batch; ++i) {
                    std::uniform_int_distribution<std::uint64_t> pick(i, slots - 1);
                    std::swap(all[i], all[pick(rng)]);
                    l.remote[i] = all[i] * block;
                }
            } else {
                std::uniform_int_distribution<std::uint64_t> pick(0, slots - 1);
                for (std::size_t i = 0; i < batch; ++i) l.remote[i] = pick(rng) * block;
            }
            break;
        }
    }
    return l;
}

}  // namespace bench
