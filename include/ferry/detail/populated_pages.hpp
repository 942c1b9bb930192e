#pragma once

// Which pages of a mapping of a peer's memory this process populated
// (MADV_POPULATE_READ / MADV_POPULATE_WRITE), so that preparing transfers
// over the same pages again asks the kernel nothing.
#include <ferry/version.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

class populated_pages {
public:
    /// Records pages [first, last) of a mapping of `pages` pages as
    /// populated for writing (`write`) or for reading, and says whether any
    /// of them was not yet: the caller then populates them. A page populated
    /// for writing serves reading too; one populated for reading would fault
    /// again on the first write.
    bool claim(std::size_t first, std::size_t last, bool write, std::size_t pages) {
        std::vector<std::uint64_t>& bits = write ? write_ : read_;
        if (bits.empty()) bits.assign((pages + 63) / 64, 0);
        last = std::min(last, pages);
        bool fresh = false;
        // A word of the bitmap at a time: a run's span may cover many pages.
        for (std::size_t p = first; p < last;) {
            const std::size_t word = p / 64, shift = p % 64, n = std::min<std::size_t>(64 - shift, last - p);
            const std::uint64_t mask = (n == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << n) - 1) << shift;
            std::uint64_t had = bits[word];
            if (!write && !write_.empty()) had |= write_[word];
            fresh = fresh || (had & mask) != mask;
            bits[word] |= mask;
            p += n;
        }
        return fresh;
    }

private:
    std::vector<std::uint64_t> read_;
    std::vector<std::uint64_t> write_;
};

}  // namespace detail
FERRY_NAMESPACE_END
