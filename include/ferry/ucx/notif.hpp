#pragma once

#include <ferry/detail/completion_signal.hpp>
#include <ferry/detail/notif_codec.hpp>
#include <ferry/handles.hpp>
#include <ferry/ucx/command.hpp>
#include <ferry/notif_map.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/ucx_status.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

// UCX sizes a worker's handler table by the largest id, so keep them small.
inline constexpr unsigned notif_am_id = 1;
// An empty message that ucx_backend::connect sends over a peer's endpoint
// so that UCX finishes wiring the endpoint up then, not at the first
// notification; the receiver drops it.
inline constexpr unsigned connect_am_id = 2;

/// Notifications received but not yet handed to the application, packed
/// into one growing buffer: arrival costs a copy out of UCX's buffer and, in
/// steady state, no allocation. With a progress thread, arrivals and drains
/// happen on different threads; `Mutex` guards the hand-over, and a drain
/// swaps the whole buffer out so that visitors run without the lock.
template <class Mutex>
class notif_inbox {
public:
    notif_inbox(std::size_t max_message, completion_signal* signal) : max_message_(max_message), signal_(signal) {}

    void attach(ucp_worker_h worker) {
        worker_ = worker;
        ucp_am_handler_param_t param{};
        param.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                           UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
        param.id = notif_am_id;
        param.flags = UCP_AM_FLAG_WHOLE_MSG;
        param.cb = &on_message;
        param.arg = this;
        check_ucx(ucp_worker_set_am_recv_handler(worker, &param), "ucp_worker_set_am_recv_handler");
        param.id = connect_am_id;
        param.cb = &on_connect;
        check_ucx(ucp_worker_set_am_recv_handler(worker, &param), "ucp_worker_set_am_recv_handler");
    }

    /// Calls f(sender, message) for each queued notification, oldest first,
    /// then empties the queue. Returns how many were delivered.
    template <class F>
    std::size_t drain(F&& f) {
        std::lock_guard drain_lock(drain_mutex_);
        {
            std::lock_guard lock(mutex_);
            if (buffer_.empty()) return 0;
            buffer_.swap(draining_);
            has_mail_.store(false, std::memory_order_seq_cst);
        }
        std::size_t n = 0, pos = 0;
        while (pos < draining_.size()) {
            std::uint32_t name_len, msg_len;
            std::memcpy(&name_len, draining_.data() + pos, sizeof name_len);
            std::memcpy(&msg_len, draining_.data() + pos + 4, sizeof msg_len);
            const char* name = draining_.data() + pos + 8;
            f(std::string_view(name, name_len), std::string_view(name + name_len, msg_len));
            pos += 8 + name_len + msg_len;
            ++n;
        }
        draining_.clear();
        return n;
    }

    /// Whether anything waits to be drained; safe from any thread.
    [[nodiscard]] bool has_mail() const noexcept { return has_mail_.load(std::memory_order_seq_cst); }
    /// Messages refused because they were malformed, too large, or did not fit in memory.
    [[nodiscard]] std::uint64_t dropped() const noexcept { return dropped_.load(std::memory_order_relaxed); }

private:
    static ucs_status_t on_message(void* arg, const void* header, std::size_t header_len, void* data,
                                   std::size_t len, const ucp_am_recv_param_t* param) noexcept {
        auto& self = *static_cast<notif_inbox*>(arg);
        if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
            // ferry sends eagerly; a rendezvous message is not ours to fetch.
            ucp_am_data_release(self.worker_, data);
            ++self.dropped_;
            return UCS_OK;
        }
        auto n = decode_notif(header, header_len, data, len, self.max_message_);
        if (!n) {
            ++self.dropped_;
            return UCS_OK;
        }
        self.push(n->sender, n->message);
        return UCS_OK;
    }

public:
    /// Queues a notification that arrived another way than as an active
    /// message (the shared-memory mailbox); drops one over the size limit.
    void push(std::string_view sender, std::string_view message) noexcept {
        if (message.size() > max_message_ || sender.size() > max_agent_name) {
            ++dropped_;
            return;
        }
        try {
            std::lock_guard lock(mutex_);
            auto name_len = static_cast<std::uint32_t>(sender.size());
            auto msg_len = static_cast<std::uint32_t>(message.size());
            auto pos = buffer_.size();
            buffer_.resize(pos + 8 + name_len + msg_len);
            char* p = buffer_.data() + pos;
            std::memcpy(p, &name_len, 4);
            std::memcpy(p + 4, &msg_len, 4);
            std::memcpy(p + 8, sender.data(), name_len);
            if (msg_len) std::memcpy(p + 8 + name_len, message.data(), msg_len);
            has_mail_.store(true, std::memory_order_seq_cst);
        } catch (const std::bad_alloc&) {
            ++dropped_;
            return;
        }
        if (signal_) signal_->notify();
    }

private:

    // Returning UCS_OK lets UCX free whatever came with it.
    static ucs_status_t on_connect(void*, const void*, std::size_t, void*, std::size_t,
                                   const ucp_am_recv_param_t*) noexcept {
        return UCS_OK;
    }

    Mutex mutex_;
    Mutex drain_mutex_;
    std::vector<char> buffer_;
    std::vector<char> draining_;
    std::atomic<bool> has_mail_{false};
    std::size_t max_message_;
    completion_signal* signal_;
    std::atomic<std::uint64_t> dropped_{0};
    ucp_worker_h worker_ = nullptr;
};

/// Sends one notification. The fast path sends straight from the caller's
/// buffer and insists on completing at once; only when UCX would have to keep
/// the buffer does the message get copied into `storage`, which must then
/// stay untouched until `cb` runs. Returns the request to wait for, null when
/// already done, or an error pointer.
inline ucs_status_ptr_t send_notif_am(ucp_ep_h ep, std::string_view sender, std::string_view msg,
                                      std::string& storage, ucp_send_nbx_callback_t cb, void* user_data) noexcept {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                         UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL;
    param.flags = UCP_AM_SEND_FLAG_EAGER;
    param.cb.send = cb;
    param.user_data = user_data;
    auto r = ucp_am_send_nbx(ep, notif_am_id, sender.data(), sender.size(), msg.data(), msg.size(), &param);
    if (!UCS_PTR_IS_ERR(r) || UCS_PTR_STATUS(r) != UCS_ERR_NO_RESOURCE) return r;
    try {
        if (msg.data() != storage.data()) storage.assign(msg);
    } catch (const std::bad_alloc&) {
        return UCS_STATUS_PTR(UCS_ERR_NO_MEMORY);
    }
    param.op_attr_mask &= ~static_cast<std::uint32_t>(UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL);
    return ucp_am_send_nbx(ep, notif_am_id, sender.data(), sender.size(), storage.data(), storage.size(), &param);
}

/// Sends connect's empty message the way notifications go (eagerly, on the
/// same lane), so that what UCX sets up for their first one is set up by
/// it. Returns the request to poll, null when already done, or an error.
inline ucs_status_ptr_t send_connect_am(ucp_ep_h ep) noexcept {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_EAGER;
    return ucp_am_send_nbx(ep, connect_am_id, nullptr, 0, nullptr, 0, &param);
}

/// Buffers for standalone notifications: where UCX keeps the message until
/// it is sent, and, with a progress thread, the command that carries it
/// there. Each goes back to the free list when its send completes.
template <class Mutex>
class notif_send_pool {
public:
    struct buffer : command {
        std::string storage;
        slot_ref to;
        notif_send_pool* pool = nullptr;
    };

    /// A free buffer, or null when none is free and none can be made.
    buffer* acquire() noexcept {
        std::lock_guard lock(mutex_);
        try {
            if (free_.empty()) {
                all_.push_back(std::make_unique<buffer>());
                all_.back()->pool = this;
                free_.reserve(all_.size());
                return all_.back().get();
            }
        } catch (const std::bad_alloc&) {
            return nullptr;
        }
        auto* b = free_.back();
        free_.pop_back();
        return b;
    }

    // free_ has room for every buffer, so this never allocates.
    void release(buffer* b) noexcept {
        std::lock_guard lock(mutex_);
        free_.push_back(b);
    }

    static void on_sent(void* request, ucs_status_t, void* user_data) noexcept {
        auto* b = static_cast<buffer*>(user_data);
        b->pool->release(b);
        ucp_request_free(request);
    }

private:
    Mutex mutex_;
    std::vector<std::unique_ptr<buffer>> all_;
    std::vector<buffer*> free_;
};

}  // namespace detail
FERRY_NAMESPACE_END
