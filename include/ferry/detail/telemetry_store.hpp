#pragma once

// The storage behind telemetry::on: per-peer counters and histograms, and a
// record of each transfer's last post. Everything the hot path touches is
// allocated by set-up calls (load_remote, prepare) and found by index, so
// that a post or check updates relaxed atomics and nothing else: no lock,
// no allocation, no lookup by name.
#include <ferry/detail/histogram.hpp>
#include <ferry/detail/tick_clock.hpp>
#include <ferry/desc.hpp>
#include <ferry/handles.hpp>
#include <ferry/policy.hpp>
#include <ferry/status.hpp>
#include <ferry/telemetry.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_path.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// Objects found by a handle's slot index without a lock: chunks that never
/// move, created under the owner's mutex by set-up calls.
template <class T>
class chunked_array {
    static constexpr std::uint32_t chunk_bits = 10;
    static constexpr std::uint32_t chunk_size = 1U << chunk_bits;
    static constexpr std::uint32_t max_chunks = 4096;  // as slot_table

public:
    chunked_array() = default;
    chunked_array(const chunked_array&) = delete;
    chunked_array& operator=(const chunked_array&) = delete;
    ~chunked_array() {
        for (auto& c : chunks_) delete[] c.load(std::memory_order_relaxed);
    }

    /// The object at `index`, creating its chunk; the caller holds the lock
    /// that serialises set-up calls.
    T& make(std::uint32_t index) {
        auto& c = chunks_[index >> chunk_bits];
        T* chunk = c.load(std::memory_order_relaxed);
        if (!chunk) {
            chunk = new T[chunk_size];
            c.store(chunk, std::memory_order_release);
        }
        return chunk[index & (chunk_size - 1)];
    }

    /// The object at `index`, or null when no set-up call made its chunk.
    [[nodiscard]] T* find(std::uint32_t index) const noexcept {
        if (index >= chunk_size * max_chunks) return nullptr;
        T* chunk = chunks_[index >> chunk_bits].load(std::memory_order_acquire);
        return chunk ? &chunk[index & (chunk_size - 1)] : nullptr;
    }

private:
    std::array<std::atomic<T*>, max_chunks> chunks_{};
};

template <bool SharedWriters>
struct peer_stats {
    using counter = relaxed_counter<SharedWriters>;

    explicit peer_stats(std::string n) : name(std::move(n)) {}

    const std::string name;
    counter posts, completions, failures, bytes, peer_failures, timed_out, notifs_sent;
    std::array<counter, telemetry_error_kinds> errors{};
    std::array<atomic_histogram<SharedWriters>, telemetry_paths.size()> latency{};
    // Whether this peer's current endpoint failure was counted already.
    std::atomic<bool> failure_counted{false};

    void error(status s) noexcept {
        errors[transfer_counters::error_index(s)].add();
        if (s == status::timed_out) timed_out.add();
        if (s == status::peer_failed && !failure_counted.exchange(true, std::memory_order_relaxed))
            peer_failures.add();
    }

    void read_into(peer_telemetry& out) const noexcept {
        out.name = name;
        auto& c = out.counters;
        c.posts = posts.load();
        c.completions = completions.load();
        c.failures = failures.load();
        c.bytes = bytes.load();
        c.peer_failures = peer_failures.load();
        c.timed_out = timed_out.load();
        c.notifs_sent = notifs_sent.load();
        for (std::size_t i = 0; i < errors.size(); ++i) c.errors[i] = errors[i].load();
        for (std::size_t i = 0; i < latency.size(); ++i) latency[i].read_into(out.latency[i]);
    }
};

/// What telemetry::on marks for a profiler: nothing. telemetry::nvtx's
/// ranges (cuda/nvtx.hpp) have the same members.
struct no_ranges {
    struct mark {};  // per transfer
    explicit no_ranges(const std::string&) noexcept {}
    void name(mark&, xfer_op, std::string_view /*peer*/, xfer_path) noexcept {}
    void start(mark&) noexcept {}
    void stop(mark&) noexcept {}
};

/// One transfer's last post. The fields below `open` are written by prepare
/// and read-only after; the times are tick_clock ticks.
template <bool SharedWriters, class Ranges>
struct xfer_trace {
    std::atomic<std::int64_t> posted{0}, handed{0}, completed{0};
    std::atomic<int> result{static_cast<int>(status::ok)};
    // 1 from an accepted post until its end is recorded, which happens once:
    // whoever swaps it back to 0 records it.
    std::atomic<std::uint8_t> open{0};
    std::atomic<bool> posted_once{false};

    peer_stats<SharedWriters>* stats = nullptr;
    std::uint64_t bytes = 0;
    std::size_t descriptors = 0;
    std::size_t blocks = 0;
    xfer_path path = xfer_path::ucx;
    slot_ref peer_ref{};
    [[no_unique_address]] typename Ranges::mark mark;
};

template <bool SharedWriters, class Ranges = no_ranges>
class telemetry_store {
public:
    using stats_type = peer_stats<SharedWriters>;
    using trace_type = xfer_trace<SharedWriters, Ranges>;

    explicit telemetry_store(std::string agent)
        : agent_(std::move(agent)), clock_(tick_clock::get()), ranges_(agent_) {}

    // ---- set-up: load_remote, prepare -----------------------------------

    /// The stats kept under `name`, created on first use, found by the
    /// peer handle's slot from now on. A peer handle whose slot held another
    /// peer before is pointed at this one.
    void on_load(peer p, std::string_view name) {
        std::lock_guard lock(mutex_);
        stats_type* s = nullptr;
        for (auto& e : peers_)
            if (e->name == name) s = e.get();
        if (!s) s = peers_.emplace_back(std::make_unique<stats_type>(std::string(name))).get();
        s->failure_counted.store(false, std::memory_order_relaxed);  // a new endpoint: its failure counts anew
        by_peer_.make(p.ref.index).store(s, std::memory_order_release);
    }

    void on_prepare(xfer x, xfer_op op, peer p, std::uint64_t bytes, std::size_t descriptors, std::size_t blocks,
                    xfer_path path) {
        std::lock_guard lock(mutex_);
        trace_type& t = traces_.make(x.ref.index);
        t.posted.store(0, std::memory_order_relaxed);
        t.handed.store(0, std::memory_order_relaxed);
        t.completed.store(0, std::memory_order_relaxed);
        t.result.store(static_cast<int>(status::ok), std::memory_order_relaxed);
        t.open.store(0, std::memory_order_relaxed);
        t.posted_once.store(false, std::memory_order_relaxed);
        t.stats = peer_of(p);
        t.bytes = bytes;
        t.descriptors = descriptors;
        t.blocks = blocks;
        t.path = path;
        t.peer_ref = p.ref;
        ranges_.name(t.mark, op, t.stats ? std::string_view(t.stats->name) : std::string_view{}, path);
    }

    // ---- hot path ---------------------------------------------------------

    /// The time the hot path records, in ticks.
    [[nodiscard]] std::int64_t now() const noexcept { return clock_.now(); }

    [[nodiscard]] trace_type& trace(xfer x) const noexcept { return *traces_.find(x.ref.index); }
    [[nodiscard]] stats_type* peer_of(peer p) const noexcept {
        auto* slot = by_peer_.find(p.ref.index);
        return slot ? slot->load(std::memory_order_acquire) : nullptr;
    }

    /// A post accepted at `now`: the previous post's end is recorded first
    /// if nobody looked at it (its status `previous`), then this one opens.
    void begin(trace_type& t, std::int64_t now, status previous) noexcept {
        if (t.open.load(std::memory_order_relaxed) != 0) end(t, previous, now);
        t.posted.store(now, std::memory_order_relaxed);
        t.handed.store(now, std::memory_order_relaxed);
        t.completed.store(0, std::memory_order_relaxed);
        t.result.store(static_cast<int>(status::in_progress), std::memory_order_relaxed);
        t.posted_once.store(true, std::memory_order_relaxed);
        ranges_.start(t.mark);
        t.open.store(1, std::memory_order_release);
        t.stats->posts.add();
    }

    /// The end of the open post, reported as `s`; counted once however many
    /// threads report it. Under inline progress one thread reports, and a
    /// plain load and store keep the lock prefix off the post.
    void end(trace_type& t, status s, std::int64_t now = 0) noexcept {
        if (t.open.load(std::memory_order_relaxed) == 0) return;
        if constexpr (SharedWriters) {
            if (t.open.exchange(0, std::memory_order_acq_rel) == 0) return;
        } else {
            t.open.store(0, std::memory_order_release);
        }
        if (now == 0) now = clock_.now();
        ranges_.stop(t.mark);
        t.completed.store(now, std::memory_order_relaxed);
        t.result.store(static_cast<int>(s), std::memory_order_relaxed);
        stats_type& p = *t.stats;
        if (s == status::ok) {
            p.completions.add();
            p.bytes.add(t.bytes);
            const std::int64_t d = clock_.to_ns(now - t.posted.load(std::memory_order_relaxed));
            p.latency[telemetry_path_index(t.path)].record(d > 0 ? static_cast<std::uint64_t>(d) : 0);
        } else {
            p.failures.add();
            p.error(s);
        }
    }

    /// A post or send_notif refused with `s` before anything started.
    static void refused(stats_type* p, status s) noexcept {
        if (p && is_error(s)) p->error(s);
    }

    void received(std::size_t n) noexcept { received_.add(n); }

    // ---- readers, any thread ---------------------------------------------

    [[nodiscard]] telemetry_snapshot snapshot(std::uint64_t dropped) const {
        telemetry_snapshot out;
        out.agent = agent_;
        out.notifs_received = received_.load();
        out.notifs_dropped = dropped;
        std::lock_guard lock(mutex_);
        out.peers.resize(peers_.size());
        for (std::size_t i = 0; i < peers_.size(); ++i) {
            peers_[i]->read_into(out.peers[i]);
            out.totals += out.peers[i].counters;
            for (std::size_t k = 0; k < out.latency.size(); ++k) out.latency[k] += out.peers[i].latency[k];
        }
        return out;
    }

    [[nodiscard]] xfer_telemetry read(xfer x) const {
        const trace_type& t = trace(x);
        xfer_telemetry out;
        out.posted_once = t.posted_once.load(std::memory_order_acquire);
        const bool open = t.open.load(std::memory_order_acquire) != 0;
        const auto now = clock_.read_both();
        out.posted = clock_.to_steady(t.posted.load(std::memory_order_relaxed), now);
        out.handed = clock_.to_steady(t.handed.load(std::memory_order_relaxed), now);
        out.completed = open ? std::chrono::steady_clock::time_point{}
                             : clock_.to_steady(t.completed.load(std::memory_order_relaxed), now);
        out.result = open ? status::in_progress : static_cast<status>(t.result.load(std::memory_order_relaxed));
        out.bytes = t.bytes;
        out.descriptors = t.descriptors;
        out.blocks = t.blocks;
        out.path = t.path;
        out.target = peer{t.peer_ref};
        if (t.stats) out.peer_name = t.stats->name;
        return out;
    }

private:
    std::string agent_;
    const tick_clock& clock_;
    [[no_unique_address]] Ranges ranges_;
    mutable std::mutex mutex_;  // set-up calls and snapshot, never the hot path
    std::vector<std::unique_ptr<stats_type>> peers_;
    chunked_array<std::atomic<stats_type*>> by_peer_;
    chunked_array<trace_type> traces_;
    relaxed_counter<true> received_;  // poll_notifs may run on several threads
};

/// telemetry::off: nothing, and [[no_unique_address]] makes it take no room.
struct no_telemetry {
    explicit no_telemetry(const std::string&) noexcept {}
};

/// The store a backend keeps for telemetry mode `Mode`.
template <bool Threaded, class Mode>
struct telemetry_storage {
    using type = telemetry_store<Threaded, typename Mode::ranges>;
};
template <bool Threaded>
struct telemetry_storage<Threaded, telemetry::off> {
    using type = no_telemetry;
};

}  // namespace detail
FERRY_NAMESPACE_END
