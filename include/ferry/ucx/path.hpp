#pragma once

#include <ferry/desc.hpp>
#include <ferry/detail/thread_owner.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/memory.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/ucx/strided.hpp>
#include <ferry/ucx/xfer_state.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_cost.hpp>
#include <ferry/xfer_path.hpp>

#include <concepts>
#include <optional>
#include <cstddef>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// A transfer's descriptor pairs as prepare checked them: local[i] lies in
/// *local_regions[i], remote[i] in *remote_regions[i] of `target`. Where
/// prepare merged runs of adjacent pairs, pair i begins with the caller's
/// descriptor first_descriptor[i], which is what errors name.
struct resolved_pairs {
    std::span<const desc> local;
    std::span<const desc> remote;
    std::span<local_region* const> local_regions;
    std::span<remote_region* const> remote_regions;
    remote_peer& target;
    std::span<const std::size_t> first_descriptor = {};  // empty: the caller's own pairs
    const strided_origin* origin = nullptr;              // the caller's strided entries, if it gave some

    [[nodiscard]] std::size_t descriptor(std::size_t i) const noexcept {
        return first_descriptor.empty() ? i : first_descriptor[i];
    }

    /// Pair i as errors name it: the caller's descriptor, or its block and
    /// the strided entries that hold it.
    [[nodiscard]] std::string where(std::size_t i) const { return name_block(descriptor(i), origin); }
};

/// A strided transfer's runs as prepare checked them (resolve_runs): every
/// local block of runs[i] lies in *local_regions[i], every remote block in
/// *remote_regions[i] of `target`. `blocks` counts the pairs, after
/// coalescing.
struct resolved_runs {
    std::span<const block_run> runs;
    std::span<local_region* const> local_regions;
    std::span<remote_region* const> remote_regions;
    remote_peer& target;
    const strided_origin& origin;

    /// Run i as errors name it: its first block and the entries that hold it.
    [[nodiscard]] std::string where(std::size_t i) const { return name_block(runs[i].first_block, &origin); }
};

/// The pairs of resolved runs laid out one by one, for a path that takes a
/// plain list (cuda_ipc's chunk table); it names each pair by its block.
class laid_out_runs {
public:
    explicit laid_out_runs(const resolved_runs& r) : target_(r.target), origin_(r.origin) {
        expand_runs(r.runs, local_, remote_);
        lrs_.reserve(local_.size());
        rrs_.reserve(local_.size());
        first_.reserve(local_.size());
        for (std::size_t i = 0; i < r.runs.size(); ++i) {
            lrs_.insert(lrs_.end(), r.runs[i].count, r.local_regions[i]);
            rrs_.insert(rrs_.end(), r.runs[i].count, r.remote_regions[i]);
            for (std::size_t k = 0; k < r.runs[i].count; ++k) first_.push_back(r.runs[i].first_block + k);
        }
    }

    [[nodiscard]] resolved_pairs pairs() const noexcept {
        return {local_, remote_, lrs_, rrs_, target_, first_, &origin_};
    }

private:
    std::vector<desc> local_, remote_;
    std::vector<local_region*> lrs_;
    std::vector<remote_region*> rrs_;
    std::vector<std::size_t> first_;
    remote_peer& target_;
    const strided_origin& origin_;
};

/// A path is one way of moving a prepared transfer's bytes, and one file:
/// path_ucx.hpp (UCX RMA), cuda/path_cuda_ipc.hpp (one copy kernel). The
/// backend holds one object of each path its memory kind offers, built from
/// the memory kind's state; all of a path's code runs where the worker may be
/// touched, except estimate when `estimate_on_worker` is false.
///  - prepare(st, pairs, wanted): sets st up on this path and returns true,
///    or returns false when the path cannot serve every pair. `wanted` is
///    automatic or the path the caller named (this one, or one it serves);
///    when it is this path's own id, it throws instead of returning false,
///    naming the first pair it cannot serve and why. Nothing is touched
///    before it decides.
///  - start(st, with_notif): starts one post of st, whose phase is busy, and,
///    when `with_notif`, its notification (in st.notif_storage) once the data
///    is visible at the target. Returns ok when it completed at once,
///    in_progress, or the error, as post does. A post that ends inside start
///    ends with st.end_at_once: under inline progress its regions are held
///    only once start returns in_progress (xfer_state::hold_regions).
///  - estimate(st): what one post is expected to take.
/// A path may also take a strided transfer's runs as they are (runs_path),
/// so that prepare stays O(entries); for any other, choose lays the runs out
/// as pairs first.
template <class P>
concept xfer_path_impl =
    requires(P& p, const P& cp, xfer_state& st, const resolved_pairs& pairs, xfer_path wanted, bool flag) {
    { P::id } -> std::convertible_to<xfer_path>;
    { P::estimate_on_worker } -> std::convertible_to<bool>;
    { p.prepare(st, pairs, wanted) } -> std::same_as<bool>;
    { p.start(st, flag) } noexcept -> std::same_as<status>;
    { cp.estimate(st) } -> std::same_as<xfer_cost>;
};

/// A path that prepares strided runs without laying them out block by block.
template <class P>
concept runs_path = requires(P& p, xfer_state& st, const resolved_runs& runs, xfer_path wanted) {
    { p.prepare(st, runs, wanted) } -> std::same_as<bool>;
};

/// Whether path P takes transfers asked for by `id`: its own id, and, for a
/// path that also serves another's placements (cuda_ipc copies GPU memory
/// to a peer's host memory, which is host_ipc's), that one where P says so
/// with a static `serves(id)`.
template <class P>
constexpr bool serves(xfer_path id) noexcept {
    if constexpr (requires { { P::serves(id) } -> std::convertible_to<bool>; }) return P::id == id || P::serves(id);
    else return P::id == id;
}

/// A path whose transfers complete without telling the worker (GPU work)
/// is polled instead: progress() polls every transfer of its in flight and
/// says how many moved on, poll(st) polls one (check under inline progress),
/// polling() says whether any is in flight, so that the progress thread does
/// not sleep on the worker meanwhile.
template <class P>
concept polled_path = xfer_path_impl<P> && requires(P& p, const P& cp, xfer_state& st, const thread_owner& owner) {
    { cp.polling() } noexcept -> std::same_as<bool>;
    { p.progress(owner) } noexcept -> std::same_as<unsigned>;
    { p.poll(st, owner) } noexcept;
};

/// A path whose bytes move without the worker (host_ipc): copy(st) moves
/// them on any thread, and notify(st) concludes such a post on the worker's
/// thread by sending its notification. Under the thread policy the posting
/// thread copies, so that the hand-off to the progress thread is paid only
/// for a notification.
template <class P>
concept direct_path = xfer_path_impl<P> && requires(xfer_state& st) {
    { P::copy(st) } noexcept -> std::same_as<status>;
    { P::notify(st) } noexcept -> std::same_as<status>;
};

/// The paths a backend offers (memory_traits<M>::paths), in the order that
/// prepare tries them for xfer_path::automatic: the most specific first, UCX
/// RMA, which serves every pair, last. This is the one seam between the
/// backend and its paths: prepare picks a path once and records it in the
/// transfer's `path` tag, and `with` sends every later call to that path by
/// a chain of compares that the last path ends without one — no compare at
/// all for a memory kind with one path, and no virtual call anywhere.
template <xfer_path_impl... Paths>
class path_set {
    static_assert(sizeof...(Paths) > 0, "path_set: a backend needs at least one path");
    using tuple = std::tuple<Paths...>;

public:
    static constexpr bool any_polled = (polled_path<Paths> || ...);
    static constexpr bool any_direct = (direct_path<Paths> || ...);

    // Each path is built from the memory kind's state: `memory` once per path.
    template <class Memory>
    explicit path_set(const Memory& memory) : paths_((static_cast<void>(sizeof(Paths)), memory)...) {}

    [[nodiscard]] static constexpr bool offers(xfer_path id) noexcept { return (serves<Paths>(id) || ...); }

    /// f(path) for the path with tag `id`, which must be one of these.
    template <class F>
    decltype(auto) with(xfer_path id, F&& f) {
        return with_from<0>(id, f);
    }

    /// prepare's choice: the first path that serves every pair when `wanted`
    /// is automatic, else the paths that serve the one named, of which the
    /// one whose own id it is throws if it cannot.
    void choose(xfer_state& st, const resolved_pairs& pairs, xfer_path wanted) {
        std::apply([&](auto&... path) { static_cast<void>((offer(path, st, pairs, wanted) || ...)); }, paths_);
    }

    /// The same for a strided transfer's runs, laid out as pairs, once, for
    /// the first path that does not take runs.
    void choose(xfer_state& st, const resolved_runs& runs, xfer_path wanted) {
        std::optional<laid_out_runs> laid_out;
        std::apply([&](auto&... path) { static_cast<void>((offer_runs(path, st, runs, laid_out, wanted) || ...)); },
                   paths_);
    }

    /// Polls the polled paths; how many transfers moved on.
    unsigned progress(const thread_owner& owner) noexcept {
        return std::apply([&](auto&... path) { return (0U + ... + progress_of(path, owner)); }, paths_);
    }

    /// Whether a polled path has transfers in flight.
    [[nodiscard]] bool polling() const noexcept {
        return std::apply([](const auto&... path) { return (false || ... || polling_of(path)); }, paths_);
    }

    /// Polls one transfer, if its path is polled.
    void poll(xfer_state& st, const thread_owner& owner) noexcept {
        with(st.path, [&](auto& path) {
            if constexpr (polled_path<std::remove_reference_t<decltype(path)>>) path.poll(st, owner);
        });
    }

private:
    template <std::size_t I, class F>
    decltype(auto) with_from(xfer_path id, F& f) {
        if constexpr (I + 1 == sizeof...(Paths)) {
            static_cast<void>(id);
            return f(std::get<I>(paths_));
        } else {
            if (id == std::tuple_element_t<I, tuple>::id) return f(std::get<I>(paths_));
            return with_from<I + 1>(id, f);
        }
    }

    template <class P>
    static bool offer(P& path, xfer_state& st, const resolved_pairs& pairs, xfer_path wanted) {
        if (wanted != xfer_path::automatic && !serves<P>(wanted)) return false;
        st.shown_path = P::id;  // prepare may name the placement it serves instead
        if (!path.prepare(st, pairs, wanted)) return false;
        st.path = P::id;
        return true;
    }

    template <class P>
    static bool offer_runs(P& path, xfer_state& st, const resolved_runs& runs, std::optional<laid_out_runs>& laid_out,
                           xfer_path wanted) {
        if constexpr (runs_path<P>) {
            if (wanted != xfer_path::automatic && !serves<P>(wanted)) return false;
            st.shown_path = P::id;
            if (!path.prepare(st, runs, wanted)) return false;
            st.path = P::id;
            return true;
        } else {
            if (wanted != xfer_path::automatic && !serves<P>(wanted)) return false;
            if (!laid_out) laid_out.emplace(runs);
            return offer(path, st, laid_out->pairs(), wanted);
        }
    }

    template <class P>
    static unsigned progress_of(P& path, const thread_owner& owner) noexcept {
        if constexpr (polled_path<P>) return path.progress(owner);
        else return 0;
    }

    template <class P>
    static bool polling_of(const P& path) noexcept {
        if constexpr (polled_path<P>) return path.polling();
        else return false;
    }

    tuple paths_;
};

}  // namespace detail
FERRY_NAMESPACE_END
