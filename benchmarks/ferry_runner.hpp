#pragma once

// The ferry side of the benchmark, written against the concepts only: any
// backend and policy that models ferry::xfer_backend and ferry::notif_channel
// runs here unchanged.

#include "measure.hpp"

#include <ferry/concepts.hpp>
#include <ferry/desc.hpp>
#include <ferry/device/view.hpp>
#include <ferry/handles.hpp>
#include <ferry/policy.hpp>
#include <ferry/status.hpp>
#include <ferry/xfer_path.hpp>

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bench {

template <class B>
concept bench_backend = ferry::xfer_backend<B> && ferry::notif_channel<B>;

/// Backends that can block until something happens (beyond the concepts):
/// used where a progress thread does the work and spinning would only take
/// a core from it.
template <class B>
concept can_sleep = requires(B& b, ferry::xfer x, std::chrono::nanoseconds t) {
    { b.wait(x, t) } -> std::same_as<ferry::status>;
    { b.wait_notifs(t) } -> std::same_as<bool>;
};

/// A list of blocks as strided entries: each run of blocks one stride
/// apart (a stride at least a block, so that no entry's blocks overlap)
/// becomes one entry.
inline std::vector<ferry::strided_desc> entries_of(std::span<const std::uint64_t> offsets, std::uintptr_t base,
                                                   std::size_t block) {
    std::vector<ferry::strided_desc> out;
    for (std::size_t i = 0; i < offsets.size();) {
        std::size_t count = 1;
        std::uint64_t stride = 0;
        if (i + 1 < offsets.size() && offsets[i + 1] >= offsets[i] + block) {
            stride = offsets[i + 1] - offsets[i];
            while (i + count < offsets.size() && offsets[i + count] == offsets[i + count - 1] + stride) ++count;
        }
        out.emplace_back(base + offsets[i], block, 0, count > 1 ? stride : 0, count);
        i += count;
    }
    return out;
}

/// One side's ferry transfer for the current row and everything it counts.
/// The initiator calls bw() and pingpong(); the target calls poll() in a
/// loop, which drives progress, counts notifications and answers pings.
template <bench_backend B>
class ferry_runner {
    // Sleep instead of spinning only where a progress thread drives UCX; with
    // inline progress, spinning on check() is the progress, as in the raw loop.
    static constexpr bool sleeps = [] {
        if constexpr (requires { typename B::policy_type; })
            return can_sleep<B> && ferry::is_threaded_v<typename B::policy_type>;
        else
            return false;
    }();

public:
    ferry_runner(B& backend, ferry::peer peer, std::uintptr_t local_base, std::uintptr_t remote_base, double timeout,
                 ferry::xfer_options xo = {}, bool strided = false)
        : b_(backend),
          peer_(peer),
          local_base_(local_base),
          remote_base_(remote_base),
          timeout_(timeout),
          xo_(xo),
          strided_(strided) {}
    ~ferry_runner() { release(); }
    ferry_runner(const ferry_runner&) = delete;
    ferry_runner& operator=(const ferry_runner&) = delete;

    /// Prepares this row's transfer: block i moves between local_off[i] in
    /// this side's buffer and remote_off[i] in the peer's.
    void prepare(ferry::xfer_op op, std::span<const std::uint64_t> local_off, std::span<const std::uint64_t> remote_off,
                 std::size_t block) {
        release();
        op_ = op;
        if (strided_) {
            if constexpr (requires { b_.prepare(op, strided_local_, strided_remote_, peer_, xo_); }) {
                strided_local_ = entries_of(local_off, local_base_, block);
                strided_remote_ = entries_of(remote_off, remote_base_, block);
                entries_ = std::max(strided_local_.size(), strided_remote_.size());
            } else {
                throw std::runtime_error("--strided: this backend takes no strided descriptor lists");
            }
        } else {
            local_.resize(local_off.size());
            remote_.resize(remote_off.size());
            for (std::size_t i = 0; i < local_.size(); ++i) local_[i] = {local_base_ + local_off[i], block, 0};
            for (std::size_t i = 0; i < remote_.size(); ++i) remote_[i] = {remote_base_ + remote_off[i], block, 0};
            entries_ = local_.size();
        }
        prepare_seconds_ = timed_prepare();
        blocks_ = local_off.size();
        if constexpr (requires { b_.blocks_of(x_); }) blocks_ = b_.blocks_of(x_);
    }

    /// How many blocks the current row's transfer moves per post.
    [[nodiscard]] std::size_t blocks() const noexcept { return blocks_; }

    /// How many descriptors (or strided entries) the longer list had.
    [[nodiscard]] std::size_t entries() const noexcept { return entries_; }

    /// How long the current row's prepare took.
    [[nodiscard]] double prepare_seconds() const noexcept { return prepare_seconds_; }

    /// Releases the current row's transfer and prepares the same lists
    /// again, as an application that prepares per request does (what the
    /// first prepare paid once, such as mapping the peer's pages, this one
    /// does not); returns how long that prepare took.
    double prepare_again() {
        (void)b_.release(x_);
        return timed_prepare();
    }

    /// Moves to another handle of the peer (after it was loaded again); the
    /// current transfer, prepared for the old handle, is released.
    void set_peer(ferry::peer peer) noexcept {
        release();
        peer_ = peer;
    }

    /// The path the current row's transfer moves on.
    [[nodiscard]] ferry::xfer_path path() const {
        if constexpr (requires { b_.path_of(x_); }) return b_.path_of(x_);
        else return ferry::xfer_path::ucx;
    }

    /// The current row's transfer as a kernel sees it (--kernel): a
    /// backend with the device API and a cuda_ipc transfer only.
    [[nodiscard]] ferry::device::view device_view() {
        if constexpr (requires { b_.device_view(x_); }) return b_.device_view(x_);
        else throw std::runtime_error("--kernel: this backend has no device API");
    }

    void release() noexcept {
        if (!x_.valid()) return;
        // On the target an answer may still await its flush; its data and
        // pong have arrived, and ferry reclaims it when UCX completes it.
        (void)b_.release(x_);
        x_ = {};
        in_flight_ = false;
    }

    /// `iters` back-to-back posts, each waited for before the next. Kept out
    /// of line, like the raw loop (another translation unit), so that both
    /// are compiled alike and show up by name in a profile.
    [[gnu::noinline]] bw_sample bw(std::size_t iters, bool notif) {
        const std::string_view note = notif ? note_bw : std::string_view{};
        double post_seconds = 0;
        std::size_t timed = 0;
        const auto t0 = clock::now();
        for (std::size_t i = 0; i < iters; ++i) {
            ferry::status s;
            if ((i & 15U) == 0) {
                const auto a = clock::now();
                s = b_.post(x_, note);
                post_seconds += std::chrono::duration<double>(clock::now() - a).count();
                ++timed;
            } else {
                s = b_.post(x_, note);
            }
            if (s == ferry::status::in_progress) s = wait();
            if (s != ferry::status::ok) fail("post/check", s);
        }
        const double seconds = seconds_since(t0);
        if (notif) sent_ += iters;
        return {seconds, iters, timed ? post_seconds / static_cast<double>(timed) : 0};
    }

    /// One post with `note` (none if empty), waited for, with the times
    /// around post() and of the completion. Out of line, as bw().
    [[gnu::noinline]] post_times timed_post(std::string_view note) {
        post_times t;
        t.start = clock::now();
        ferry::status s = b_.post(x_, note);
        t.posted = clock::now();
        if (s == ferry::status::in_progress) s = wait();
        t.completed = clock::now();
        if (s != ferry::status::ok) fail("post/check", s);
        if (!note.empty()) ++sent_;
        return t;
    }

    /// `iters` ping-pongs: post with a ping, wait for the transfer and for
    /// the target's answer; appends each half round trip in seconds.
    [[gnu::noinline]] void pingpong(std::size_t iters, std::vector<double>& half_rtt) {
        half_rtt.reserve(half_rtt.size() + iters);
        auto visit = [this](std::string_view, std::string_view m) noexcept {
            if (m == note_pong) ++pongs_;
            else ++unexpected_;
        };
        stall_guard guard(timeout_, "ferry ping-pong");
        for (std::size_t i = 0; i < iters; ++i) {
            const std::uint64_t want = pongs_ + 1;
            const auto t0 = clock::now();
            ferry::status s = b_.post(x_, note_ping);
            while (s == ferry::status::in_progress || pongs_ < want) {
                if (s == ferry::status::in_progress) s = b_.check(x_);
                b_.poll_notifs(visit);
                guard.tick();
            }
            const auto t1 = clock::now();
            if (s != ferry::status::ok) fail("ping-pong post/check", s);
            half_rtt.push_back(std::chrono::duration<double>(t1 - t0).count() / 2);
        }
        sent_ += iters;
        if (unexpected_) throw std::runtime_error("ferry ping-pong: unexpected notifications arrived");
    }

    /// Target side: drive progress, count notifications, note when a step
    /// arrived, answer pings with this side's own transfer and a pong.
    void poll() {
        if constexpr (sleeps) b_.wait_notifs(std::chrono::microseconds(200));
        b_.poll_notifs([this](std::string_view, std::string_view m) noexcept {
            ++received_;
            if (m == note_step) {
                step_held_ = clock::now();
                ++steps_;
            } else if (m == note_ping) {
                ++pings_;
            } else if (m != note_bw) {
                ++unexpected_;
            }
        });
        if (in_flight_) {
            auto s = b_.check(x_);
            if (s == ferry::status::in_progress) return;
            if (s != ferry::status::ok) fail("answer check", s);
            in_flight_ = false;
        }
        if (pings_ > 0) {
            if (!x_.valid()) throw std::runtime_error("ferry: a ping arrived but no answer is prepared");
            --pings_;
            auto s = b_.post(x_, note_pong);
            if (ferry::is_error(s)) fail("answer post", s);
            in_flight_ = s == ferry::status::in_progress;
        }
    }

    /// Target side: step notifications that arrived since the last call
    /// (one, in a step run), and when the last of them was handed over.
    std::uint64_t take_steps(clock::time_point& held) noexcept {
        held = step_held_;
        return std::exchange(steps_, 0);
    }

    /// Notifications this side sent with its transfers / counted arriving.
    [[nodiscard]] std::uint64_t sent() const noexcept { return sent_; }
    [[nodiscard]] std::uint64_t received() const noexcept { return received_; }
    [[nodiscard]] std::uint64_t unexpected() const noexcept { return unexpected_; }

    /// Notifications the backend dropped as malformed, where it counts them.
    [[nodiscard]] std::uint64_t dropped() const noexcept {
        if constexpr (requires(const B& cb) { { cb.dropped_notifs() } -> std::convertible_to<std::uint64_t>; })
            return b_.dropped_notifs();
        else
            return 0;
    }

private:
    double timed_prepare() {
        const auto t0 = clock::now();
        if (strided_) {
            if constexpr (requires { b_.prepare(op_, strided_local_, strided_remote_, peer_, xo_); })
                x_ = b_.prepare(op_, strided_local_, strided_remote_, peer_, xo_);
        } else if constexpr (requires { b_.prepare(op_, local_, remote_, peer_, xo_); }) {
            // A backend with options takes the path and coalescing asked for.
            x_ = b_.prepare(op_, local_, remote_, peer_, xo_);
        } else {
            x_ = b_.prepare(op_, local_, remote_, peer_);
        }
        return std::chrono::duration<double>(clock::now() - t0).count();
    }

    ferry::status wait() {
        if constexpr (sleeps) {
            auto s = b_.wait(x_, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::duration<double>(timeout_)));
            if (s == ferry::status::in_progress)
                throw std::runtime_error("ferry wait: no completion after " + std::to_string(timeout_) +
                                         " s (--timeout); is the peer progressing?");
            return s;
        }
        stall_guard guard(timeout_, "ferry check");
        ferry::status s;
        do {
            s = b_.check(x_);
            guard.tick();
        } while (s == ferry::status::in_progress);
        return s;
    }

    [[noreturn]] static void fail(std::string_view what, ferry::status s) {
        throw std::runtime_error("ferry " + std::string(what) + " failed: " + std::string(ferry::to_string(s)));
    }

    B& b_;
    ferry::peer peer_;
    std::uintptr_t local_base_;
    std::uintptr_t remote_base_;
    double timeout_;
    ferry::xfer_options xo_;
    bool strided_ = false;
    std::size_t entries_ = 0;
    double prepare_seconds_ = 0;
    // The current row's lists, for prepare_again.
    ferry::xfer_op op_ = ferry::xfer_op::write;
    std::vector<ferry::desc> local_, remote_;
    std::vector<ferry::strided_desc> strided_local_, strided_remote_;
    std::size_t blocks_ = 0;
    ferry::xfer x_{};
    bool in_flight_ = false;
    std::uint64_t sent_ = 0;
    std::uint64_t received_ = 0;
    std::uint64_t pongs_ = 0;
    std::uint64_t pings_ = 0;
    std::uint64_t unexpected_ = 0;
    std::uint64_t steps_ = 0;
    clock::time_point step_held_{};
};

}  // namespace bench
