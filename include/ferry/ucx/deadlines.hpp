#pragma once

#include <ferry/detail/intrusive_list.hpp>
#include <ferry/detail/slot_table.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/xfer_state.hpp>
#include <ferry/version.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>

FERRY_NAMESPACE_BEGIN
namespace detail {

// now() + timeout, saturating, so that nanoseconds::max() means "no deadline".
inline std::chrono::steady_clock::time_point deadline_after(std::chrono::nanoseconds timeout) noexcept {
    using clock = std::chrono::steady_clock;
    const auto now = clock::now();
    if (timeout <= std::chrono::nanoseconds::zero()) return now;
    if (timeout >= clock::time_point::max() - now) return clock::time_point::max();
    return now + std::chrono::duration_cast<clock::duration>(timeout);
}

/// The transfers that the progress thread ends without waiting for UCX:
/// those past their deadline, and those in flight to a peer that failed,
/// whether or not UCX ever purges their operations. Under inline progress
/// check() makes the same two tests on the transfer it reports.
class expiry {
public:
    using clock = std::chrono::steady_clock;
    static constexpr auto never = clock::time_point::max();

    /// Where a transfer posted with a deadline goes (xfer_state::deadlines).
    [[nodiscard]] intrusive_list<xfer_state, deadline_tag>* list() noexcept { return &deadlines_; }

    /// Expires the transfers whose deadline has passed; returns the earliest
    /// deadline still ahead.
    clock::time_point expire_due(clock::time_point now) noexcept {
        auto earliest = never;
        if (deadlines_.empty()) return earliest;
        deadlines_.for_each([&](xfer_state& st) {
            if (st.deadline <= now) st.expire();  // unlinks it
            else earliest = std::min(earliest, st.deadline);
        });
        return earliest;
    }

    /// Ends the transfers in flight to failed peers, when `failures` (the
    /// peer table's count of failures) moved since the last sweep.
    template <class Mutex>
    void sweep(slot_table<xfer_state, Mutex>& xfers, std::uint64_t failures) noexcept {
        if (failures == swept_) return;
        swept_ = failures;
        xfers.for_each_locked([](xfer_state& st) {
            if (st.phase.load(std::memory_order_acquire) == xfer_state::busy && st.target->failed() && st.pending > 0)
                st.expire(status::peer_failed);
        });
    }

private:
    intrusive_list<xfer_state, deadline_tag> deadlines_;
    std::uint64_t swept_ = 0;
};

}  // namespace detail
FERRY_NAMESPACE_END
