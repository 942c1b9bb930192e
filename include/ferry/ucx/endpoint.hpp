#pragma once

#include <ferry/ucx/config.hpp>
#include <ferry/ucx/ucx_status.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <cstddef>
#include <span>
#include <string>
#include <utility>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// An unpacked remote key.
class rkey {
public:
    rkey(ucp_ep_h ep, std::span<const std::byte> packed) {
        check_ucx(ucp_ep_rkey_unpack(ep, packed.data(), &handle_), "ucp_ep_rkey_unpack");
    }
    rkey(rkey&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    rkey& operator=(rkey&& other) noexcept {
        std::swap(handle_, other.handle_);
        return *this;
    }
    rkey(const rkey&) = delete;
    rkey& operator=(const rkey&) = delete;
    ~rkey() {
        if (handle_) ucp_rkey_destroy(handle_);
    }

    [[nodiscard]] ucp_rkey_h get() const noexcept { return handle_; }

private:
    ucp_rkey_h handle_ = nullptr;
};

/// An endpoint to a remote worker. Closing never blocks: `close` hands back
/// the close request for the owner to progress, and the destructor of an
/// endpoint never closed explicitly lets UCX finish the close on its own.
class endpoint {
public:
    endpoint(ucp_worker_h worker, std::span<const std::byte> address, error_mode mode, ucp_err_handler_cb_t on_error,
             void* arg) {
        ucp_ep_params_t params{};
        params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
        params.address = reinterpret_cast<const ucp_address_t*>(address.data());
        params.err_mode = mode == error_mode::peer ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
        if (on_error) {
            params.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
            params.err_handler.cb = on_error;
            params.err_handler.arg = arg;
        }
        check_ucx(ucp_ep_create(worker, &params, &handle_), "ucp_ep_create");
    }
    endpoint(const endpoint&) = delete;
    endpoint& operator=(const endpoint&) = delete;
    ~endpoint() {
        if (auto req = close(); req != nullptr && !UCS_PTR_IS_ERR(req)) ucp_request_free(req);
    }

    [[nodiscard]] ucp_ep_h get() const noexcept { return handle_; }

    /// Starts closing; returns null when done at once, else the close request.
    /// A flushing close needs the peer's cooperation to finish. A forced one
    /// (`force`, valid only with peer error handling on both sides) does not
    /// wait: every operation still outstanding completes with
    /// UCS_ERR_CANCELED, and the peer sees the connection fail.
    ucs_status_ptr_t close(bool force = false) noexcept {
        if (handle_ == nullptr) return nullptr;
        ucp_request_param_t param{};
        param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
        param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
        return ucp_ep_close_nbx(std::exchange(handle_, nullptr), &param);
    }

private:
    ucp_ep_h handle_ = nullptr;
};

}  // namespace detail
FERRY_NAMESPACE_END
