#pragma once

// The raw UCX baseline: what a careful user writes by hand on the same
// worker, endpoint and buffers, with no library in between. Its own memh
// (ucp_mem_map over the buffer ferry registered, in the same context) and its
// own rkey (packed here, unpacked on ferry's endpoint) are resolved before
// any timing; each transfer is one ucp_put_nbx / ucp_get_nbx per descriptor
// with the memh given (no registration lookup) and no callback (the request,
// if any, is freed at once), then with a notification ucp_worker_fence and an
// eager active message, then one ucp_ep_flush_nbx waited for by progressing
// the worker.

#include "measure.hpp"

#include <ferry/desc.hpp>

#include <ucp/api/ucp.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace bench {

class raw_runner {
public:
    /// Maps [base, base + len) in `ctx` (the context the backend uses) and
    /// sets this side's active-message handler on `worker`. `allocated` says
    /// the memory came from UCP_MEM_MAP_ALLOCATE (ferry's allocate()): UCX's
    /// registration cache then hands this mapping the same shared-memory key,
    /// so the raw loop stores into the peer's mapping as ferry does. Where the
    /// cache is off (UCX_RCACHE_ENABLE=n, or under valgrind) the new mapping
    /// would lack that key and the raw loop would be emulated; the baseline
    /// then allocates its own buffer of the same size the same way, and says so.
    /// `device`: the buffer is CUDA device memory, mapped as such.
    raw_runner(ucp_context_h ctx, ucp_worker_h worker, void* base, std::size_t len, bool allocated, double timeout,
               bool device = false);
    ~raw_runner();
    raw_runner(const raw_runner&) = delete;
    raw_runner& operator=(const raw_runner&) = delete;

    [[nodiscard]] std::vector<std::byte> packed_rkey() const;
    [[nodiscard]] std::uintptr_t base() const noexcept { return reinterpret_cast<std::uintptr_t>(base_); }

    /// Unpacks the peer's rkey on `ep` (ferry's endpoint to the peer).
    void connect(ucp_ep_h ep, std::span<const std::byte> remote_rkey, std::uint64_t remote_base);

    void prepare(ferry::xfer_op op, std::span<const std::uint64_t> local_off, std::span<const std::uint64_t> remote_off,
                 std::size_t block);

    bw_sample bw(std::size_t iters, bool notif);
    void pingpong(std::size_t iters, std::vector<double>& half_rtt);

    /// Target side: answers pings (progress is driven by the caller's loop,
    /// which progresses the same worker).
    void poll();

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
    std::uint64_t sent_ = 0;
    std::uint64_t received_ = 0;
    std::uint64_t pings_ = 0;
    std::uint64_t pongs_ = 0;
    std::uint64_t unexpected_ = 0;
};

}  // namespace bench
