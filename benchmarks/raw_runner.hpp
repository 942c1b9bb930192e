#pragma once

// The raw UCX baseline: what a careful user writes by hand on the same
// worker, endpoint and buffers, with no library in between. Its own memh
// (ucp_mem_map over the buffer ferry registered, in the same context) and its
// own rkey (packed here, unpacked on ferry's endpoint) are resolved before
// any timing; each transfer is one ucp_put_nbx / ucp_get_nbx per descriptor
// with the memh given (no registration lookup) and no callback (the request,
// if any, is freed at once), then one ucp_ep_flush_nbx waited for by
// progressing the worker; with a notification, the flush's callback sends it
// as an eager active message, as ferry does (ucp_worker_fence would wait
// inside the call on UCX >= 1.16, where it defaults to a strong fence).

#include "measure.hpp"

#include <ferry/desc.hpp>

#include <ucp/api/ucp.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bench {

/// Memory that UCX allocates (UCP_MEM_MAP_ALLOCATE) in `ctx`, for --mem ucx.
class ucx_allocation {
public:
    ucx_allocation(ucp_context_h ctx, std::size_t len);
    ~ucx_allocation();
    ucx_allocation(const ucx_allocation&) = delete;
    ucx_allocation& operator=(const ucx_allocation&) = delete;
    [[nodiscard]] void* data() const noexcept { return base_; }

private:
    ucp_context_h ctx_;
    ucp_mem_h memh_ = nullptr;
    void* base_ = nullptr;
};

class raw_runner {
public:
    /// Maps [base, base + len) in `ctx` (the context the backend uses) and
    /// sets this side's active-message handler on `worker`. `allocated` says
    /// the memory came from ferry's allocate(): the raw loop then compares
    /// with UCX's best on one host, memory from UCP_MEM_MAP_ALLOCATE, whose
    /// shared-memory key (where the UCX build gives one, as 1.13 does) lets a
    /// put be a plain store into the peer's mapping. A ucp_mem_map of
    /// ferry's buffer gets no such key, so the loop then allocates a buffer
    /// of its own, of the same size and kind, and own_buffer() and
    /// buffer_note() say so.
    /// `device`: the buffer is CUDA device memory, mapped as such.
    raw_runner(ucp_context_h ctx, ucp_worker_h worker, void* base, std::size_t len, bool allocated, double timeout,
               bool device = false);
    ~raw_runner();
    raw_runner(const raw_runner&) = delete;
    raw_runner& operator=(const raw_runner&) = delete;

    /// True when the raw loop runs on a buffer of its own, not on ferry's;
    /// buffer_note() then says why, in a sentence.
    [[nodiscard]] bool own_buffer() const noexcept { return !note_.empty(); }
    [[nodiscard]] const std::string& buffer_note() const noexcept { return note_; }

    [[nodiscard]] std::vector<std::byte> packed_rkey() const;
    [[nodiscard]] std::uintptr_t base() const noexcept { return reinterpret_cast<std::uintptr_t>(base_); }

    /// Unpacks the peer's rkey on `ep` (ferry's endpoint to the peer).
    void connect(ucp_ep_h ep, std::span<const std::byte> remote_rkey, std::uint64_t remote_base);
    /// Destroys the peer's rkey, before its endpoint goes away.
    void disconnect() noexcept;

    void prepare(ferry::xfer_op op, std::span<const std::uint64_t> local_off, std::span<const std::uint64_t> remote_off,
                 std::size_t block);

    bw_sample bw(std::size_t iters, bool notif);
    void pingpong(std::size_t iters, std::vector<double>& half_rtt);
    /// One transfer with `note` (none if empty), waited for, timed as
    /// ferry_runner::timed_post times ferry's.
    post_times timed_post(std::string_view note);

    /// Target side: answers pings (progress is driven by the caller's loop,
    /// which progresses the same worker).
    void poll();
    /// Target side: step notifications since the last call, and when the
    /// last of them reached the active-message handler.
    std::uint64_t take_steps(clock::time_point& held) noexcept {
        held = step_held_;
        return std::exchange(steps_, 0);
    }

    [[nodiscard]] std::uint64_t sent() const noexcept { return sent_; }
    [[nodiscard]] std::uint64_t received() const noexcept { return received_; }
    [[nodiscard]] std::uint64_t unexpected() const noexcept { return unexpected_; }

private:
    struct entry {
        void* local;
        std::size_t len;
        std::uint64_t remote;
    };

    static ucs_status_t on_am(void* arg, const void* header, std::size_t header_len, void* data, std::size_t len,
                              const ucp_am_recv_param_t* param) noexcept;
    // Issues one transfer (and its notification) and returns the flush request.
    ucs_status_ptr_t issue(const char* note) noexcept;
    void wait(ucs_status_ptr_t flush);
    // The notification of the transfer whose flush just completed.
    static void on_flushed(void* request, ucs_status_t status, void* self) noexcept;
    void send_note() noexcept;

    ucp_context_h ctx_;
    ucp_worker_h worker_;
    void* base_;
    std::size_t len_;
    double timeout_;
    ucp_mem_h memh_ = nullptr;
    ucp_ep_h ep_ = nullptr;
    ucp_rkey_h rkey_ = nullptr;
    std::uint64_t remote_base_ = 0;
    ferry::xfer_op op_ = ferry::xfer_op::write;
    std::vector<entry> entries_;
    ucs_status_ptr_t answer_ = nullptr;  // target: the answer's flush in flight
    const char* note_to_send_ = nullptr;  // initiator: sent when the flush completes
    ucs_status_ptr_t note_sent_ = nullptr;  // its send, until complete
    std::uint64_t sent_ = 0;
    std::uint64_t received_ = 0;
    std::uint64_t pings_ = 0;
    std::uint64_t pongs_ = 0;
    std::uint64_t unexpected_ = 0;
    std::uint64_t steps_ = 0;
    clock::time_point step_held_{};
    std::string note_;
};

}  // namespace bench
