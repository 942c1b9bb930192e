#pragma once

#include <ferry/desc.hpp>
#include <ferry/handles.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/memory.hpp>
#include <ferry/ucx/notif.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/ucx/ucx_status.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// One descriptor pair, resolved by prepare into exactly what the UCX call takes.
struct rma_entry {
    void* local;
    std::size_t len;
    std::uint64_t remote;
    ucp_rkey_h rkey;
    ucp_mem_h memh;
};

/// A prepared transfer. Everything `post` needs sits in `entries`; the rest
/// is bookkeeping that the hot path touches once per post, not per descriptor.
struct xfer_state {
    xfer_op op = xfer_op::write;
    slot_ref peer_ref;
    remote_peer* target = nullptr;  // valid while peer_ref is current
    std::vector<rma_entry> entries;
    std::vector<std::shared_ptr<local_region>> regions;  // distinct, kept alive while in flight
    std::uint64_t registry_epoch = 0;
    std::uint64_t total_bytes = 0;
    std::string notif_storage;

    // Completion: `pending` UCX callbacks are outstanding; when it reaches
    // zero the transfer is done, with `result` telling how it ended.
    int pending = 0;
    ucs_status_t first_error = UCS_OK;
    status result = status::ok;

    static void on_complete(void* request, ucs_status_t s, void* user_data) noexcept {
        auto* st = static_cast<xfer_state*>(user_data);
        if (request) ucp_request_free(request);
        st->complete_one(s);
    }

    void complete_one(ucs_status_t s) noexcept {
        if (s != UCS_OK && first_error == UCS_OK) first_error = s;
        if (--pending > 0) return;
        result = first_error == UCS_OK ? status::ok : from_ucs(first_error);
        // Null only while the backend shuts down and its peers are gone.
        if (target) --target->in_flight;
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

    /// Starts every operation of the transfer. Returns ok when all completed
    /// inline, in_progress when callbacks are outstanding, or the error.
    status start(ucp_worker_h worker, std::string_view sender, std::string_view notif) noexcept {
        first_error = UCS_OK;
        pending = 1;  // held until every operation is issued, so no callback can finish early
        const ucp_ep_h ep = target->ep();

        ucp_request_param_t param{};
        param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
        if (op == xfer_op::write) {
            for (const auto& e : entries) {
                param.memh = e.memh;
                auto r = ucp_put_nbx(ep, e.local, e.len, e.remote, e.rkey, &param);
                if (r != nullptr) {
                    if (UCS_PTR_IS_ERR(r)) {
                        first_error = UCS_PTR_STATUS(r);
                        break;
                    }
                    ucp_request_free(r);  // the flush below covers its completion
                }
            }
        } else {
            for (const auto& e : entries) {
                param.memh = e.memh;
                auto r = ucp_get_nbx(ep, e.local, e.len, e.remote, e.rkey, &param);
                if (r != nullptr) {
                    if (UCS_PTR_IS_ERR(r)) {
                        first_error = UCS_PTR_STATUS(r);
                        break;
                    }
                    ucp_request_free(r);
                }
            }
        }

        if (!notif.empty() && first_error == UCS_OK) {
            // The fence orders the message after every put/get above, so the
            // target sees it only once the data is in place, and nobody has to
            // poll the initiator again for it to be sent.
            if (auto s = ucp_worker_fence(worker); s != UCS_OK) first_error = s;
            else track(send_notif_am(ep, sender, notif, notif_storage, &on_complete, this));
        }

        ucp_request_param_t flush{};
        flush.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
        flush.cb.send = &on_complete;
        flush.user_data = this;
        track(ucp_ep_flush_nbx(ep, &flush));

        ++target->in_flight;
        complete_one(UCS_OK);  // drop the hold taken above
        return pending > 0 ? status::in_progress : result;
    }
};

}  // namespace detail
FERRY_NAMESPACE_END
