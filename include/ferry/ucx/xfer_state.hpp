#pragma once

#include <ferry/desc.hpp>
#include <ferry/handles.hpp>
#include <ferry/xfer_path.hpp>
#include <ferry/status.hpp>
#include <ferry/detail/completion_signal.hpp>
#include <ferry/detail/intrusive_list.hpp>
#include <ferry/ucx/command.hpp>
#include <ferry/ucx/memory.hpp>
#include <ferry/ucx/notif.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/ucx/ucx_status.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// One descriptor pair, resolved by prepare into exactly what the UCX call takes.
struct rma_block {
    void* local;
    std::size_t len;
    std::uint64_t remote;
};

/// The keys of one descriptor pair, kept apart from the blocks because most
/// transfers use one local and one remote region, and then one key pair
/// serves every block.
struct rma_keys {
    ucp_rkey_h rkey;
    ucp_mem_h memh;

    friend bool operator==(const rma_keys&, const rma_keys&) = default;
};

/// A run of descriptor pairs of a strided transfer, resolved by prepare:
/// `count` operations of `len` bytes, each `local_stride` and
/// `remote_stride` bytes after the one before, all with `keys`.
struct rma_run {
    std::byte* local;
    std::size_t len;
    std::uint64_t remote;
    std::size_t local_stride;
    std::size_t remote_stride;
    std::size_t count;
    rma_keys keys;
};

struct deadline_tag;
struct polled_tag;

/// A prepared transfer and its completion. prepare fills it in and hands it
/// to one path (path.hpp), which moves its bytes on every post; UCX's
/// callbacks, or the path's polling, then count its operations down here,
/// and the last one ends it. Under the thread policy the state is also the
/// command that carries a post to the progress thread.
struct xfer_state : command, list_hook<xfer_state, deadline_tag>, list_hook<xfer_state, polled_tag> {
    // `expired`: past its deadline, reported as timed_out, while UCX still
    // holds its operations; it cannot be posted again until they are done.
    enum : std::uint8_t { idle, busy, released, expired };

    xfer_op op = xfer_op::write;
    xfer_path path = xfer_path::ucx;        // the path object that moves it (path_set::with)
    xfer_path shown_path = xfer_path::ucx;  // what path_of reports: the placement it serves
    slot_ref peer_ref;
    remote_peer* target = nullptr;
    std::shared_ptr<remote_peer> keep_target;  // keeps `target` valid while this state lives
    std::vector<std::shared_ptr<local_region>> regions;  // distinct; kept mapped while in flight
    std::uint64_t registry_epoch = 0;
    std::uint64_t total_bytes = 0;
    std::size_t block_count = 0;  // after coalescing
    std::string notif_storage;
    // The agent name notifications carry; the backend's, which outlives this state.
    const std::string* sender = nullptr;

    // The ucx path's plan (path_ucx.hpp), kept here rather than behind
    // path_data so that a post reaches it without a pointer chase: `blocks`
    // and `keys`, which has one entry when every block shares it, else one
    // per block; or, for a strided transfer, `runs` and no keys.
    // The request parameters are built once at prepare, so that a post
    // fills in nothing but each memh.
    std::vector<rma_block> blocks;
    std::vector<rma_run> runs;
    std::vector<rma_keys> keys;
    ucp_request_param_t rma_param{};
    ucp_request_param_t flush_param{};
    ucp_request_param_t notify_param{};  // a flush whose completion sends notif_storage
    // Any other path's plan, owned.
    void* path_data = nullptr;
    void (*destroy_path_data)(void*) noexcept = nullptr;
    bool device_failed = false;  // the device work of the last post failed

    // Touched only by the thread that drives the worker: `pending` UCX
    // callbacks are outstanding; at zero the transfer is over, and
    // `first_error` says how it went.
    int pending = 0;
    ucs_status_t first_error = UCS_OK;
    bool abandoned = false;  // expired, and counted in target->abandoned
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
    // The progress thread's list of transfers with a deadline; null under
    // inline progress, where check() looks at the deadline itself.
    intrusive_list<xfer_state, deadline_tag>* deadlines = nullptr;

    // What application threads see. `phase` goes idle -> busy on post and
    // back to idle when the transfer is over, after `result` is written. Past
    // its deadline a busy transfer becomes `expired` (result timed_out) until
    // UCX is done with it. release() of a busy or expired transfer turns it
    // into `released`, and whoever finishes it then frees it.
    std::atomic<std::uint8_t> phase{idle};
    std::atomic<status> result{status::ok};
    bool threaded = false;
    // The handle's slot, for telemetry::on to find the transfer's record from
    // the state alone (on the progress thread). In padding: the state keeps
    // its size and layout.
    std::uint32_t slot = 0;
    completion_signal* signal = nullptr;

    xfer_state() noexcept = default;
    ~xfer_state() {
        if (destroy_path_data) destroy_path_data(path_data);
    }
    xfer_state(const xfer_state&) = delete;
    xfer_state& operator=(const xfer_state&) = delete;

    /// The checks a post makes before anything reaches UCX; `regions` is
    /// the registry the transfer's local regions came from.
    status admissible(const registry& regions) noexcept {
        if (target->retired.load(std::memory_order_acquire)) return status::no_such_peer;
        if (auto epoch = regions.epoch(); registry_epoch != epoch && !still_registered(epoch))
            return status::not_registered;
        return status::ok;
    }

    /// True when every local region is still registered; remembers the
    /// epoch so the question is asked again only after a deregistration.
    bool still_registered(std::uint64_t epoch) noexcept {
        for (const auto& r : regions)
            if (!r->registered.load(std::memory_order_seq_cst)) return false;
        registry_epoch = epoch;
        return true;
    }

    /// Counts a post in on every local region it uses, and out again once
    /// UCX is done with it: deregister_memory refuses while the count is not
    /// zero. With threads the post counts itself in before it checks that the
    /// regions are still registered, and the count is sequentially consistent,
    /// as deregister_memory's look at it. Under inline progress nothing else
    /// runs until post returns, so post counts in only a transfer that is
    /// still in flight then (a post that completes at once costs no count),
    /// and a plain load and store keep the lock prefix off it.
    void hold_regions() noexcept {
        for (const auto& r : regions) {
            if (threaded) r->users.fetch_add(1, std::memory_order_seq_cst);
            else r->users.store(r->users.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        }
    }
    void let_go_regions() noexcept {
        for (const auto& r : regions) {
            if (threaded) r->users.fetch_sub(1, std::memory_order_release);
            else r->users.store(r->users.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
        }
    }

    /// Ends the transfer with `s`, or, when it already expired, with the
    /// status it reported then. Runs on the thread that drives the worker.
    void finish(status s) noexcept {
        let_go_regions();
        if (deadlines) deadlines->unlink(*this);
        if (abandoned) {
            abandoned = false;
            --target->abandoned;
        }
        // Once the phase says idle, an application thread may release and
        // free this state: read what is needed first, touch nothing after.
        completion_signal* const wake = signal;
        std::uint8_t prev;
        if (threaded) {
            // Only this thread makes a transfer expire, so the answer holds;
            // a concurrent release() makes the result moot.
            if (phase.load(std::memory_order_acquire) != expired) result.store(s, std::memory_order_relaxed);
            prev = phase.exchange(idle, std::memory_order_seq_cst);
        } else {
            prev = phase.load(std::memory_order_relaxed);
            if (prev != expired) result.store(s, std::memory_order_relaxed);
            phase.store(idle, std::memory_order_relaxed);
        }
        if (prev == released) delete this;
        if (wake) wake->notify();
    }

    /// Ends a post that completed inside the path's start, before post
    /// returned. Under inline progress such a post never held its regions,
    /// and nothing else can have looked at it: no deadline list, not
    /// abandoned, not released, nobody to wake.
    void end_at_once(status s) noexcept {
        if (threaded) return finish(s);
        result.store(s, std::memory_order_relaxed);
        phase.store(idle, std::memory_order_relaxed);
    }

    /// The deadline passed (`why` timed_out) or the peer failed (`why`
    /// peer_failed) while UCX still holds the transfer's operations: report
    /// `why` now and let them finish (or be cancelled) in the background.
    /// Runs on the thread that drives the worker.
    void expire(status why = status::timed_out) noexcept {
        if (abandoned) return;
        if (deadlines) deadlines->unlink(*this);
        abandoned = true;
        ++target->abandoned;
        result.store(why, std::memory_order_relaxed);
        completion_signal* const wake = signal;
        std::uint8_t expected = busy;
        if (threaded) {
            if (phase.compare_exchange_strong(expected, expired, std::memory_order_seq_cst) && wake) wake->notify();
        } else {
            phase.store(expired, std::memory_order_relaxed);
        }
    }

    static void on_complete(void* request, ucs_status_t s, void* user_data) noexcept {
        auto* st = static_cast<xfer_state*>(user_data);
        if (request) ucp_request_free(request);
        st->complete_one(s);
    }

    /// Copies the notification a post carries: it may leave after the post
    /// returns (from a flush callback, or once a kernel is done). prepare
    /// reserved room for the usual sizes; a larger one grows it once.
    status keep_notif(std::string_view notif) noexcept {
        try {
            notif_storage.assign(notif);
        } catch (const std::bad_alloc&) {
            return status::no_memory;
        }
        return status::ok;
    }

    /// Sends the notification in notif_storage, once the transfer's data is
    /// visible at the target.
    void send_notif() noexcept {
        if (auto* box = target->mailbox(); box && box->send(notif_storage)) return;
        track(send_notif_am(target->ep(), *sender, notif_storage, notif_storage, &on_complete, this));
    }

    void complete_one(ucs_status_t s) noexcept {
        if (s != UCS_OK && first_error == UCS_OK) first_error = s;
        if (--pending > 0) return;
        --target->in_flight;
        finish(outcome());
    }

    /// The transfer's status once UCX is done with it. Operations that UCX
    /// purged from a failed endpoint report CANCELED or a transport error;
    /// either way the peer is what failed. And UCX 1.13 completes a flush
    /// that waits for remote completions with UCS_OK when it purges a failed
    /// endpoint (ucp_ep_reqs_purge emulates the missing completions), so an
    /// OK that comes after the failure proves nothing: that is peer_failed too.
    [[nodiscard]] status outcome() const noexcept {
        if (device_failed) return status::device_error;
        if (target->failed()) return status::peer_failed;
        return first_error == UCS_OK ? status::ok : from_ucs(first_error);
    }

    /// Adds one UCX operation's outcome to the transfer.
    void track(ucs_status_ptr_t r) noexcept {
        if (r == nullptr) return;
        if (UCS_PTR_IS_ERR(r)) {
            if (first_error == UCS_OK) first_error = UCS_PTR_STATUS(r);
            return;
        }
        ++pending;
    }

};

}  // namespace detail
FERRY_NAMESPACE_END
