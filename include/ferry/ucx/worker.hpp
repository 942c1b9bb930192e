#pragma once

#include <ferry/ucx/ucx_status.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <cstddef>
#include <span>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

class worker {
public:
    worker(ucp_context_h ctx, ucs_thread_mode_t mode) {
        ucp_worker_params_t params{};
        params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
        params.thread_mode = mode;
        check_ucx(ucp_worker_create(ctx, &params, &handle_), "ucp_worker_create");
    }
    ~worker() { ucp_worker_destroy(handle_); }
    worker(const worker&) = delete;
    worker& operator=(const worker&) = delete;

    [[nodiscard]] ucp_worker_h get() const noexcept { return handle_; }

    [[nodiscard]] std::vector<std::byte> address() const {
        ucp_address_t* addr = nullptr;
        std::size_t len = 0;
        check_ucx(ucp_worker_get_address(handle_, &addr, &len), "ucp_worker_get_address");
        auto* p = reinterpret_cast<const std::byte*>(addr);
        std::vector<std::byte> out(p, p + len);
        ucp_worker_release_address(handle_, addr);
        return out;
    }

    unsigned progress() noexcept { return ucp_worker_progress(handle_); }

    /// The fd that becomes readable when the worker has events (needs UCP_FEATURE_WAKEUP).
    [[nodiscard]] int event_fd() const {
        int fd = -1;
        check_ucx(ucp_worker_get_efd(handle_, &fd), "ucp_worker_get_efd");
        return fd;
    }

private:
    ucp_worker_h handle_ = nullptr;
};

}  // namespace detail
FERRY_NAMESPACE_END
