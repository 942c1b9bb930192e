#pragma once

// ucx_backend's transfer calls: prepare, post, check, wait, release and
// estimate, and the command that carries a post to the progress thread.
#include <ferry/ucx/backend.hpp>
#include <ferry/ucx/prepare.hpp>

#include <atomic>
#include <memory>
#include <new>
#include <system_error>
#include <type_traits>

FERRY_NAMESPACE_BEGIN

template <class Policy>
inline xfer ucx_backend<Policy>::prepare(xfer_op op, std::span<const desc> local, std::span<const desc> remote,
                                         peer p, const xfer_options& options) {
    detail::check_prepare_arguments<paths_type>(op, local, remote, options.path);
    return prepare_with(op, p, local.size(), [&](detail::xfer_state& st, const detail::registry& regions) {
        detail::resolve(st, local, remote, regions, paths_, options);
    });
}

template <class Policy>
template <class Resolve>
inline xfer ucx_backend<Policy>::prepare_with(xfer_op op, peer p, std::size_t descriptors, Resolve&& resolve) {
    // Resolving remote blocks may unpack rkeys, which touches the worker.
    const xfer x = on_worker("prepare", [&] {
        auto st = std::make_unique<xfer_state>();
        st->op = op;
        st->peer_ref = p.ref;
        st->threaded = threaded;
        st->sender = &config_.name;
        st->signal = threaded ? &signal_ : nullptr;
        st->deadlines = threaded ? expiry_.list() : nullptr;
        st->execute = &execute_post;
        st->notif_storage.reserve(256);
        st->registry_epoch = registration_.regions().epoch();

        auto lock = peers_.lock();
        st->keep_target = peers_.share(p.ref);
        if (!st->keep_target) throw error(status::no_such_peer, "prepare: the peer handle is unknown or was unloaded");
        st->target = st->keep_target.get();
        resolve(*st, registration_.regions());
        return xfer{xfers_.insert(std::move(st))};
    });
    if constexpr (traced) {
        auto* st = xfers_.get(x.ref);
        st->slot = x.ref.index;
        telemetry_.on_prepare(x, op, p, st->total_bytes, descriptors, st->block_count, st->shown_path);
    } else {
        static_cast<void>(descriptors);
    }
    return x;
}

// Strided lists are paired into runs and checked run by run, in O(entries);
// where a run's blocks do not lie in one region on a side, its blocks are
// laid out and resolved one by one, which finds each one's region or names
// the bad block.
template <class Policy>
inline xfer ucx_backend<Policy>::prepare(xfer_op op, std::span<const strided_desc> local,
                                         std::span<const strided_desc> remote, peer p, const xfer_options& options) {
    const std::size_t blocks = detail::check_prepare_arguments<paths_type>(op, local, remote, options.path);
    detail::strided_origin origin;
    const std::span<detail::block_run> runs = detail::pair_runs(local, remote, blocks, origin);
    return prepare_with(op, p, blocks, [&](detail::xfer_state& st, const detail::registry& regions) {
        if (detail::resolve_runs(st, runs, origin, regions, paths_, options)) return;
        std::vector<desc> flat_local, flat_remote;
        detail::expand_runs(runs, flat_local, flat_remote);
        detail::resolve(st, flat_local, flat_remote, regions, paths_, options, &origin);
    });
}

template <class Policy>
inline status ucx_backend<Policy>::post(xfer x, std::string_view notif, std::chrono::nanoseconds timeout) noexcept {
    // telemetry::on: post_traced. The branch below is the post itself,
    // untouched, so that telemetry::off compiles to the same instructions.
    if constexpr (traced) {
        return post_traced(x, notif, timeout);
    } else {
        auto* st = xfers_.get(x.ref);
        if (!st) return status::invalid_argument;
        if (notif.size() > config_.max_notif_size) return status::invalid_argument;
        if constexpr (threaded) {
            std::uint8_t expected = xfer_state::idle;
            // seq_cst, as deregister_memory's look at the phase: see there.
            if (!st->phase.compare_exchange_strong(expected, xfer_state::busy, std::memory_order_seq_cst))
                return status::busy;
            // From here until it is queued, the state belongs to this thread alone.
            st->hold_regions();
            auto s = st->admissible(registration_.regions());
            if (s == status::ok && st->target->failed()) s = status::peer_failed;
            if (s == status::ok) s = st->keep_notif(notif);
            if (s != status::ok) {
                st->let_go_regions();
                st->phase.store(xfer_state::idle, std::memory_order_release);
                return s;
            }
            st->deadline = timeout.count() > 0 ? detail::deadline_after(timeout) : no_deadline;
            if constexpr (paths_type::any_direct) {
                // A copy needs no worker: it runs here, and only a notification
                // is handed to the progress thread. in_progress: another path's
                // transfer, which the progress thread starts.
                const status copied = paths_.with(st->path, [&](auto& path) {
                    if constexpr (detail::direct_path<std::remove_reference_t<decltype(path)>>) return path.copy(*st);
                    else return status::in_progress;
                });
                if (copied != status::in_progress && (copied != status::ok || notif.empty())) {
                    st->finish(copied);
                    return copied;
                }
            }
            engine_.submit(st);  // execute_post starts it there
            return status::in_progress;
        } else {
            touch("post");
            if (st->phase.load(std::memory_order_relaxed) != xfer_state::idle) return status::busy;
            if (auto s = st->admissible(registration_.regions()); s != status::ok) return s;
            if (st->target->failed()) return status::peer_failed;
            st->deadline = timeout.count() > 0 ? detail::deadline_after(timeout) : no_deadline;
            if (!notif.empty())
                if (auto s = st->keep_notif(notif); s != status::ok) return s;
            st->phase.store(xfer_state::busy, std::memory_order_relaxed);
            const status s = paths_.with(st->path, [&](auto& path) { return path.start(*st, !notif.empty()); });
            if (s == status::in_progress) st->hold_regions();  // see hold_regions
            return s;
        }
    }
}

// post with telemetry::on: the same steps, each outcome recorded.
template <class Policy>
inline status ucx_backend<Policy>::post_traced(xfer x, std::string_view notif, std::chrono::nanoseconds timeout) noexcept {
    auto* st = xfers_.get(x.ref);
    if (!st) return status::invalid_argument;
    auto* trace = &telemetry_.trace(x);
    auto refuse = [&](status s) noexcept {
        telemetry_type::refused(trace->stats, s);
        return s;
    };
    if (notif.size() > config_.max_notif_size) return refuse(status::invalid_argument);
    if constexpr (threaded) {
        std::uint8_t expected = xfer_state::idle;
        // seq_cst, as deregister_memory's look at the phase: see there.
        if (!st->phase.compare_exchange_strong(expected, xfer_state::busy, std::memory_order_seq_cst))
            return refuse(status::busy);
        // From here until it is queued, the state belongs to this thread alone.
        st->hold_regions();
        auto s = st->admissible(registration_.regions());
        if (s == status::ok && st->target->failed()) s = status::peer_failed;
        if (s == status::ok) s = st->keep_notif(notif);
        if (s != status::ok) {
            st->let_go_regions();
            st->phase.store(xfer_state::idle, std::memory_order_release);
            return refuse(s);
        }
        st->deadline = timeout.count() > 0 ? detail::deadline_after(timeout) : no_deadline;
        // Opened before anything can end it, so that a check on another
        // thread never sees the end of a post that is not open yet.
        telemetry_.begin(*trace, telemetry_.now(), st->result.load(std::memory_order_relaxed));
        if (!notif.empty()) trace->stats->notifs_sent.add();
        if constexpr (paths_type::any_direct) {
            // A copy needs no worker: it runs here, and only a notification
            // is handed to the progress thread. in_progress: another path's
            // transfer, which the progress thread starts.
            const status copied = paths_.with(st->path, [&](auto& path) {
                if constexpr (detail::direct_path<std::remove_reference_t<decltype(path)>>) return path.copy(*st);
                else return status::in_progress;
            });
            if (copied != status::in_progress && (copied != status::ok || notif.empty())) {
                telemetry_.end(*trace, copied);
                st->finish(copied);
                return copied;
            }
        }
        engine_.submit(st);  // execute_post starts it there
        return status::in_progress;
    } else {
        touch("post");
        if (st->phase.load(std::memory_order_relaxed) != xfer_state::idle) return refuse(status::busy);
        if (auto s = st->admissible(registration_.regions()); s != status::ok) return refuse(s);
        if (st->target->failed()) return refuse(status::peer_failed);
        st->deadline = timeout.count() > 0 ? detail::deadline_after(timeout) : no_deadline;
        if (!notif.empty())
            if (auto s = st->keep_notif(notif); s != status::ok) return refuse(s);
        st->phase.store(xfer_state::busy, std::memory_order_relaxed);
        telemetry_.begin(*trace, telemetry_.now(), st->result.load(std::memory_order_relaxed));
        if (!notif.empty()) trace->stats->notifs_sent.add();
        const status s = paths_.with(st->path, [&](auto& path) { return path.start(*st, !notif.empty()); });
        if (s == status::in_progress) st->hold_regions();
        else telemetry_.end(*trace, s);
        return s;
    }
}

template <class Policy>
inline status ucx_backend<Policy>::check(xfer x) noexcept {
    auto* st = xfers_.get(x.ref);
    if (!st) return status::invalid_argument;
    if constexpr (!threaded) {
        const auto phase = st->phase.load(std::memory_order_relaxed);
        if (phase == xfer_state::busy || phase == xfer_state::expired) {
            // An expired transfer still reports timed_out, but UCX must
            // be driven to let go of it, or a caller that checks and
            // reposts never gets past busy.
            paths_.poll(*st, worker_->owner());
            worker_->progress();
            // A target on this host is watched through its process. Looking
            // costs a syscall, too much for every check of a healthy peer's
            // transfer: check() looks at most once per kernel tick, and reads
            // the (coarse) clock only every 16th time (pid_watch::on_check).
            // A peer on another host costs a flag test (not watched).
            if (st->target->watched) peers_.watch().on_check();
            if (st->phase.load(std::memory_order_relaxed) == xfer_state::busy) {
                // A failed peer's operations may never be purged: UCX
                // 1.13's shared memory cannot flush to a dead peer whose
                // receive queue is full.
                if (st->target->failed()) st->expire(status::peer_failed);
                else if (st->deadline != no_deadline && std::chrono::steady_clock::now() >= st->deadline)
                    st->expire();
            }
        }
    }
    if (st->phase.load(std::memory_order_acquire) == xfer_state::busy) return status::in_progress;
    const status s = st->result.load(std::memory_order_relaxed);
    if constexpr (traced) telemetry_.end(telemetry_.trace(x), s);
    return s;
}

template <class Policy>
inline status ucx_backend<Policy>::wait(xfer x, std::chrono::nanoseconds timeout) noexcept {
    auto* st = xfers_.get(x.ref);
    if (!st) return status::invalid_argument;
    const auto deadline = detail::deadline_after(timeout);
    if constexpr (threaded) {
        try {
            signal_.wait_until(deadline, config_.progress_spin, [st] {
                return st->phase.load(std::memory_order_seq_cst) != xfer_state::busy;
            });
        } catch (const std::system_error&) {
            return status::ucx_error;
        }
        return check(x);
    } else {
        for (;;) {
            auto s = check(x);
            if (s != status::in_progress || std::chrono::steady_clock::now() >= deadline) return s;
        }
    }
}

template <class Policy>
inline status ucx_backend<Policy>::release(xfer x) noexcept {
    auto st = xfers_.take(x.ref);
    if (!st) return status::invalid_argument;
    const auto prev = st->phase.exchange(xfer_state::released, std::memory_order_acq_rel);
    if constexpr (traced) {
        // A post nobody looked at ends here: canceled while in flight, else
        // with the status it completed with.
        const bool in_flight = prev == xfer_state::busy || prev == xfer_state::expired;
        telemetry_.end(telemetry_.trace(x),
                       in_flight && prev == xfer_state::busy ? status::canceled
                                                             : st->result.load(std::memory_order_relaxed));
    }
    if (prev == xfer_state::busy || prev == xfer_state::expired) st.release();  // whoever finishes it frees it
    return status::ok;
}

template <class Policy>
inline xfer_cost ucx_backend<Policy>::estimate(xfer x) {
    auto* st = xfers_.get(x.ref);
    if (!st) throw error(status::invalid_argument, "estimate: the transfer handle is unknown or released");
    return paths_.with(st->path, [&](auto& path) -> xfer_cost {
        if constexpr (!std::remove_reference_t<decltype(path)>::estimate_on_worker) {
            if (!peers_.get(st->peer_ref)) throw error(status::no_such_peer, "estimate: the peer was unloaded");
            return path.estimate(*st);
        } else {
            return on_worker("estimate", [&] {
                if (!peers_.get(st->peer_ref)) throw error(status::no_such_peer, "estimate: the peer was unloaded");
                return path.estimate(*st);
            });
        }
    });
}

template <class Policy>
inline void ucx_backend<Policy>::execute_post(detail::command& c, void* self) noexcept {
    auto& st = static_cast<xfer_state&>(c);
    auto& b = *static_cast<ucx_backend*>(self);
    // Unloading runs on this thread too, so this answer cannot go stale.
    if (st.target->retired.load(std::memory_order_relaxed)) return st.finish(status::no_such_peer);
    if (st.target->failed()) return st.finish(status::peer_failed);
    if constexpr (traced) b.telemetry_.trace(xfer{detail::slot_ref{st.slot, 0}}).handed.store(b.telemetry_.now(), std::memory_order_relaxed);
    const status started = b.paths_.with(st.path, [&](auto& path) {
        // A direct path's post copied on the posting thread already.
        if constexpr (detail::direct_path<std::remove_reference_t<decltype(path)>>) return path.notify(st);
        else return path.start(st, !st.notif_storage.empty());
    });
    if (started == status::in_progress && st.deadline != no_deadline) b.expiry_.list()->link(st);
}

FERRY_NAMESPACE_END
