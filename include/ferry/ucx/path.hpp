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
#include <cstddef>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>

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
template <class P>
concept xfer_path_impl =
    requires(P& p, const P& cp, xfer_state& st, const resolved_pairs& pairs, xfer_path wanted, bool flag) {
    { P::id } -> std::convertible_to<xfer_path>;
    { P::estimate_on_worker } -> std::convertible_to<bool>;
    { p.prepare(st, pairs, wanted) } -> std::same_as<bool>;
    { p.start(st, flag) } noexcept -> std::same_as<status>;
    { cp.estimate(st) } -> std::same_as<xfer_cost>;
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
