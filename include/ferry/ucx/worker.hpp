#pragma once

#include <ferry/detail/thread_owner.hpp>
#include <ferry/ucx/ucx_status.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <cstddef>
#include <span>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// A UCS_THREAD_MODE_SINGLE worker and the thread that owns it: the one that
/// created it. Every call on the worker, on its endpoints and on their rkeys
/// must come from that thread (thread_owner says why); the worker's own
/// methods check it, and owner() lets the code around it check the rest.
class worker {
public:
    explicit worker(ucp_context_h ctx) {
        owner_.bind_here();
        ucp_worker_params_t params{};
        params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
        params.thread_mode = UCS_THREAD_MODE_SINGLE;
        check_ucx(ucp_worker_create(ctx, &params, &handle_), "ucp_worker_create");
    }
    ~worker() {
        owner_.check("ucp_worker_destroy");
        ucp_worker_destroy(handle_);
    }
    worker(const worker&) = delete;
    worker& operator=(const worker&) = delete;

    [[nodiscard]] ucp_worker_h get() const noexcept { return handle_; }
    [[nodiscard]] const thread_owner& owner() const noexcept { return owner_; }

    [[nodiscard]] std::vector<std::byte> address() const {
        owner_.check("ucp_worker_get_address");
        ucp_address_t* addr = nullptr;
        std::size_t len = 0;
        check_ucx(ucp_worker_get_address(handle_, &addr, &len), "ucp_worker_get_address");
        auto* p = reinterpret_cast<const std::byte*>(addr);
        std::vector<std::byte> out(p, p + len);
        ucp_worker_release_address(handle_, addr);
        return out;
    }

    unsigned progress() noexcept {
        owner_.check("ucp_worker_progress");
        return ucp_worker_progress(handle_);
    }

    /// Arms the event fd; UCS_ERR_BUSY means there are events to progress first.
    ucs_status_t arm() noexcept {
        owner_.check("ucp_worker_arm");
        return ucp_worker_arm(handle_);
    }

    /// The fd that becomes readable when the worker has events (needs UCP_FEATURE_WAKEUP).
    [[nodiscard]] int event_fd() const {
        owner_.check("ucp_worker_get_efd");
        int fd = -1;
        check_ucx(ucp_worker_get_efd(handle_, &fd), "ucp_worker_get_efd");
        return fd;
    }

private:
    thread_owner owner_;
    ucp_worker_h handle_ = nullptr;
};

}  // namespace detail
FERRY_NAMESPACE_END
