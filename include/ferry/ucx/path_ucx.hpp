#pragma once

#include <ferry/desc.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/path.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/ucx/xfer_state.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_cost.hpp>
#include <ferry/xfer_path.hpp>

#include <ucp/api/ucp.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// The ucx path: one UCX RMA operation per descriptor pair (ucp_put_nbx for
/// WRITE, ucp_get_nbx for READ), then one flush of the endpoint, whose
/// completion completes the post: for a WRITE, the data is then visible at
/// the target. A notification leaves when that flush completes. UCX reaches
/// every pair that prepare accepted, so this path serves any transfer and
/// comes last among a memory kind's paths. Its plan lives in xfer_state.
class ucx_rma_path {
public:
    static constexpr xfer_path id = xfer_path::ucx;
    static constexpr bool estimate_on_worker = true;  // asks the endpoint

    template <class Memory>
    explicit ucx_rma_path(const Memory&) noexcept {}

    /// Resolves each pair into exactly what ucp_put_nbx / ucp_get_nbx take.
    /// Unpacks a remote region's key on its first use, which touches the worker.
    bool prepare(xfer_state& st, const resolved_pairs& pairs, xfer_path) {
        const std::size_t n = pairs.local.size();
        st.blocks.clear();
        st.blocks.reserve(n);  // written once below, not zeroed first
        // One key pair per block only once a block needs another than the
        // first; a region's key is asked for once per run of blocks in it.
        const local_region* lr = pairs.local_regions[0];
        remote_region* rr = pairs.remote_regions[0];
        rma_keys k{pairs.target.key_of(*rr), lr->mem.get()};
        st.keys.assign(1, k);
        bool per_block = false;
        for (std::size_t i = 0; i < n; ++i) {
            const desc& l = pairs.local[i];
            st.blocks.push_back({reinterpret_cast<void*>(l.addr), l.len, pairs.remote[i].addr});
            if (pairs.local_regions[i] != lr || pairs.remote_regions[i] != rr) {
                lr = pairs.local_regions[i];
                rr = pairs.remote_regions[i];
                k = {pairs.target.key_of(*rr), lr->mem.get()};
                if (!per_block && k != st.keys.front()) {
                    per_block = true;
                    st.keys.reserve(n);
                    st.keys.resize(i, st.keys.front());
                }
            }
            if (per_block) st.keys.push_back(k);
        }
        set_params(st);
        return true;
    }

    /// A strided transfer's runs as they are: each run one loop of
    /// operations at post, so that prepare stays O(runs).
    bool prepare(xfer_state& st, const resolved_runs& resolved, xfer_path) {
        // Sized first and written through a pointer: emplacing a run at a
        // time reloads and stores the vector's end on every run.
        st.runs.resize(resolved.runs.size());
        rma_run* out = st.runs.data();
        for (std::size_t i = 0; i < resolved.runs.size(); ++i, ++out) {
            const block_run& run = resolved.runs[i];
            out->local = reinterpret_cast<std::byte*>(run.local.addr);
            out->len = run.local.len;
            out->remote = run.remote.addr;
            out->local_stride = run.local_stride;
            out->remote_stride = run.remote_stride;
            out->count = run.count;
            out->keys = {resolved.target.key_of(*resolved.remote_regions[i]), resolved.local_regions[i]->mem.get()};
        }
        st.keys.clear();
        set_params(st);
        return true;
    }

    /// Issues every operation, then the flush (carrying the notification
    /// when `with_notif`). Returns ok when all completed inline, in_progress
    /// when callbacks are outstanding, or the error. Inlined by force into
    /// post, so that a post is one call frame, as a raw UCX loop is.
    [[gnu::always_inline]] static status start(xfer_state& st, bool with_notif) noexcept {
        st.first_error = UCS_OK;
        st.pending = 1;  // held until every operation is issued, so no callback can finish early
        const ucp_ep_h ep = st.target->ep();

        // One loop per direction and plan, so that the per-descriptor path
        // holds no branch on either. A strided plan has no keys of its own.
        const bool write = st.op == xfer_op::write;
        if (st.keys.size() == 1) {
            if (write) issue_all<true, true>(st, ep);
            else issue_all<false, true>(st, ep);
        } else if (!st.keys.empty()) {
            if (write) issue_all<true, false>(st, ep);
            else issue_all<false, false>(st, ep);
        } else {
            if (write) issue_runs<true>(st, ep);
            else issue_runs<false>(st, ep);
        }

        if (with_notif && st.first_error == UCS_OK) {
            // The notification follows a flush of the endpoint, which
            // completes once every put/get above is complete at the target:
            // at once when they already are (memory the peer mapped), else in
            // a callback that sends it from the worker's progress. Not
            // ucp_worker_fence: since UCX 1.16 it defaults to a strong fence
            // that waits, inside this call, for every operation of the worker
            // to complete remotely, so a post to a target that does not
            // progress would never return.
            auto r = ucp_ep_flush_nbx(ep, &st.notify_param);
            if (r == nullptr) st.send_notif();
            else st.track(r);
        } else {
            st.track(ucp_ep_flush_nbx(ep, &st.flush_param));
        }

        if (st.pending > 1) {
            --st.pending;  // drop the hold taken above; callbacks finish the transfer
            ++st.target->in_flight;
            return status::in_progress;
        }
        st.pending = 0;
        const status s = st.outcome();
        st.end_at_once(s);
        return s;
    }

    /// UCX's model of the endpoint, asked once per distinct block length.
    xfer_cost estimate(const xfer_state& st) const {
        double seconds = 0;
        std::size_t last_len = 0;
        double last_time = 0;
        auto add = [&](std::size_t len, std::size_t count) {
            if (len != last_len) {
                ucp_ep_evaluate_perf_param_t param{};
                param.field_mask = UCP_EP_PERF_PARAM_FIELD_MESSAGE_SIZE;
                param.message_size = len;
                ucp_ep_evaluate_perf_attr_t attr{};
                attr.field_mask = UCP_EP_PERF_ATTR_FIELD_ESTIMATED_TIME;
                if (ucp_ep_evaluate_perf(st.target->ep(), &param, &attr) != UCS_OK) return false;
                last_len = len;
                last_time = attr.estimated_time;
            }
            seconds += last_time * static_cast<double>(count);
            return true;
        };
        for (const auto& e : st.blocks)
            if (!add(e.len, 1)) return {};
        for (const auto& run : st.runs)
            if (!add(run.len, run.count)) return {};
        auto d = std::chrono::nanoseconds(static_cast<std::int64_t>(seconds * 1e9));
        // UCX gives no error bound, and its model ignores contention and
        // software emulation, so claim no better than half the estimate.
        return {d, d / 2, cost_method::ucx_evaluate_perf};
    }

private:
    // The request parameters of every post, built once.
    static void set_params(xfer_state& st) noexcept {
        st.rma_param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
        st.flush_param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
        st.flush_param.cb.send = &xfer_state::on_complete;
        st.flush_param.user_data = &st;
        st.notify_param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
        st.notify_param.cb.send = &on_flushed;
        st.notify_param.user_data = &st;
    }

    // Every put (Write) or get of a strided post, run by run.
    template <bool Write>
    static void issue_runs(xfer_state& st, ucp_ep_h ep) noexcept {
        ucp_request_param_t& param = st.rma_param;
        for (const rma_run& run : st.runs) {
            param.memh = run.keys.memh;
            const ucp_rkey_h rkey = run.keys.rkey;
            std::byte* local = run.local;
            std::uint64_t remote = run.remote;
            for (std::size_t k = 0; k < run.count; ++k, local += run.local_stride, remote += run.remote_stride) {
                ucs_status_ptr_t r;
                if constexpr (Write) r = ucp_put_nbx(ep, local, run.len, remote, rkey, &param);
                else r = ucp_get_nbx(ep, local, run.len, remote, rkey, &param);
                if (r != nullptr) {
                    if (UCS_PTR_IS_ERR(r)) {
                        st.first_error = UCS_PTR_STATUS(r);
                        return;
                    }
                    ucp_request_free(r);  // the flush covers its completion
                }
            }
        }
    }

    // Every put (Write) or get of the post, stopping at the first error. With
    // one key pair for all blocks (SharedKeys, the usual case) the memh is
    // set once and the rkey stays in a register.
    template <bool Write, bool SharedKeys>
    [[gnu::always_inline]] static void issue_all(xfer_state& st, ucp_ep_h ep) noexcept {
        ucp_request_param_t& param = st.rma_param;
        const rma_keys* k = st.keys.data();
        const ucp_rkey_h rkey = k->rkey;
        if constexpr (SharedKeys) param.memh = k->memh;
        const rma_block* b = st.blocks.data();
        const rma_block* const end = b + st.blocks.size();
        for (; b != end; ++b) {
            ucs_status_ptr_t r;
            if constexpr (!SharedKeys) param.memh = k->memh;
            if constexpr (Write) r = ucp_put_nbx(ep, b->local, b->len, b->remote, SharedKeys ? rkey : k->rkey, &param);
            else r = ucp_get_nbx(ep, b->local, b->len, b->remote, SharedKeys ? rkey : k->rkey, &param);
            if constexpr (!SharedKeys) ++k;
            if (r != nullptr) {
                if (UCS_PTR_IS_ERR(r)) {
                    st.first_error = UCS_PTR_STATUS(r);
                    return;
                }
                ucp_request_free(r);  // the flush covers its completion
            }
        }
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
};

}  // namespace detail
FERRY_NAMESPACE_END
