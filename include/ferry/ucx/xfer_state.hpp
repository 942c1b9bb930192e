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
#include <string>
#include <string_view>
#include <type_traits>
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

/// A prepared transfer. Everything `post` needs sits in `blocks` and `keys`; the rest
/// is bookkeeping that the hot path touches once per post, not per descriptor.
/// Under the thread policy the state is also the command that carries a post
/// to the progress thread.
struct deadline_tag;
struct device_tag;

struct xfer_state : command, list_hook<xfer_state, deadline_tag>, list_hook<xfer_state, device_tag> {
    // `expired`: past its deadline, reported as timed_out, while UCX still
    // holds its operations; it cannot be posted again until they are done.
    enum : std::uint8_t { idle, busy, released, expired };

    xfer_op op = xfer_op::write;
    xfer_path path = xfer_path::ucx;
    // The memory kind's state for a path that bypasses UCX (cuda_ipc), owned.
    void* device_op = nullptr;
    void (*destroy_device_op)(void*) noexcept = nullptr;
    bool device_failed = false;  // the device work of the last post failed
    slot_ref peer_ref;
    remote_peer* target = nullptr;
    std::shared_ptr<remote_peer> keep_target;  // keeps `target` valid while this state lives
    std::vector<rma_block> blocks;
    // One entry when every block shares it, else one per block.
    std::vector<rma_keys> keys;
    std::vector<std::shared_ptr<local_region>> regions;  // distinct; kept mapped while in flight
    std::uint64_t registry_epoch = 0;
    std::uint64_t total_bytes = 0;
    std::string notif_storage;
    // The agent name notifications carry; the backend's, which outlives this state.
    const std::string* sender = nullptr;
    // Built once at prepare, so that a post fills in nothing but each memh.
    ucp_request_param_t rma_param{};
    ucp_request_param_t flush_param{};
    ucp_request_param_t notify_param{};  // a flush whose completion sends notif_storage

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
    completion_signal* signal = nullptr;

    xfer_state() noexcept {
        rma_param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
        flush_param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
        flush_param.cb.send = &on_complete;
        flush_param.user_data = this;
        notify_param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
        notify_param.cb.send = &on_flushed;
        notify_param.user_data = this;
    }
    ~xfer_state() {
        if (destroy_device_op) destroy_device_op(device_op);
    }
    xfer_state(const xfer_state&) = delete;
    xfer_state& operator=(const xfer_state&) = delete;

    /// True when every local region is still registered; remembers the
    /// epoch so the question is asked again only after a deregistration.
    bool still_registered(std::uint64_t epoch) noexcept {
        for (const auto& r : regions)
            if (!r->registered.load(std::memory_order_seq_cst)) return false;
        registry_epoch = epoch;
        return true;
    }

    /// Counts a post in on every local region it uses, before the post
    /// checks that they are still registered, and out again once UCX is done
    /// with it: deregister_memory refuses while the count is not zero. With
    /// threads the count is sequentially consistent, as deregister_memory's
    /// look at it; under inline progress nothing else runs meanwhile, and a
    /// plain load and store keep the lock prefix off the post.
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

    // The flush of a post with a notification: every put/get of the post is
    // complete at the target, so the notification may leave now.
    static void on_flushed(void* request, ucs_status_t s, void* user_data) noexcept {
        auto* st = static_cast<xfer_state*>(user_data);
        if (request) ucp_request_free(request);
        // A flushing close (the backend going away) completes this flush
        // after the endpoint handle is gone: nothing can be sent then.
        if (s == UCS_OK && !st->target->failed() && st->target->ep() != nullptr) st->send_notif();
        st->complete_one(s);
    }

    void send_notif() noexcept {
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

    /// Starts every operation of the transfer, and its notification when
    /// `with_notif` (the message is in notif_storage). Returns ok when all
    /// completed inline, in_progress when callbacks are outstanding, or the error.
    status start(bool with_notif) noexcept {
        first_error = UCS_OK;
        pending = 1;  // held until every operation is issued, so no callback can finish early
        const ucp_ep_h ep = target->ep();

        ucp_request_param_t& param = rma_param;
        // One loop per direction and key layout, so that the per-descriptor
        // path holds no branch on either; with one key pair for all blocks
        // (the usual case) the memh is set once and the rkey stays in a register.
        auto issue_all = [&](auto rma, auto one_key_pair) {
            constexpr bool shared = decltype(one_key_pair)::value;
            const rma_keys* k = keys.data();
            const ucp_rkey_h rkey = k->rkey;
            if constexpr (shared) param.memh = k->memh;
            const rma_block* b = blocks.data();
            const rma_block* const end = b + blocks.size();
            for (; b != end; ++b) {
                if constexpr (!shared) param.memh = k->memh;
                auto r = rma(ep, b->local, b->len, b->remote, shared ? rkey : k->rkey, &param);
                if constexpr (!shared) ++k;
                if (r != nullptr) {
                    if (UCS_PTR_IS_ERR(r)) {
                        first_error = UCS_PTR_STATUS(r);
                        return;
                    }
                    ucp_request_free(r);  // the flush below covers its completion
                }
            }
        };
        using one = std::true_type;
        using many = std::false_type;
        const bool write = op == xfer_op::write;
        if (keys.size() == 1) {
            if (write) issue_all(&ucp_put_nbx, one{});
            else issue_all(&ucp_get_nbx, one{});
        } else {
            if (write) issue_all(&ucp_put_nbx, many{});
            else issue_all(&ucp_get_nbx, many{});
        }

        if (with_notif && first_error == UCS_OK) {
            // The notification follows a flush of the endpoint, which
            // completes once every put/get above is complete at the target:
            // at once when they already are (memory the peer mapped), else in
            // a callback that sends it from the worker's progress. Not
            // ucp_worker_fence: since UCX 1.16 it defaults to a strong fence
            // that waits, inside this call, for every operation of the worker
            // to complete remotely, so a post to a target that does not
            // progress would never return.
            auto r = ucp_ep_flush_nbx(ep, &notify_param);
            if (r == nullptr) send_notif();
            else track(r);
        } else {
            track(ucp_ep_flush_nbx(ep, &flush_param));
        }

        if (pending > 1) {
            --pending;  // drop the hold taken above; callbacks finish the transfer
            ++target->in_flight;
            return status::in_progress;
        }
        pending = 0;
        auto s = outcome();
        result.store(s, std::memory_order_relaxed);
        if (threaded) {
            finish(s);
        } else {
            let_go_regions();
            phase.store(idle, std::memory_order_relaxed);
        }
        return s;
    }
};

}  // namespace detail
FERRY_NAMESPACE_END
