#pragma once

#include <ferry/status.hpp>
#include <ferry/ucx/config.hpp>
#include <ferry/ucx/ucx_status.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <cstdint>
#include <memory>
#include <string>

FERRY_NAMESPACE_BEGIN
namespace detail {

class ucx_config_handle {
public:
    ucx_config_handle() { check_ucx(ucp_config_read(nullptr, nullptr, &config_), "ucp_config_read"); }
    ~ucx_config_handle() { ucp_config_release(config_); }
    ucx_config_handle(const ucx_config_handle&) = delete;
    ucx_config_handle& operator=(const ucx_config_handle&) = delete;

    void modify(const std::string& key, const std::string& value) {
        if (auto s = ucp_config_modify(config_, key.c_str(), value.c_str()); s != UCS_OK)
            throw error(status::invalid_argument,
                        "ucx_config::ucx_options: UCX rejected " + key + "=" + value + ": " + ucs_status_string(s),
                        static_cast<int>(s));
    }
    [[nodiscard]] const ucp_config_t* get() const noexcept { return config_; }

private:
    ucp_config_t* config_ = nullptr;
};

/// Owns a ucp_context. Shared, because registered memory must be unmapped
/// through the context that mapped it, even after the backend is gone.
class context {
public:
    context(const ucx_config& cfg, std::uint64_t features, bool multi_threaded) {
        ucx_config_handle config;
        for (const auto& [key, value] : cfg.ucx_options) config.modify(key, value);
        ucp_params_t params{};
        params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_NAME;
        params.features = features;
        params.mt_workers_shared = multi_threaded ? 1 : 0;
        params.name = cfg.name.c_str();
        check_ucx(ucp_init(&params, config.get(), &handle_), "ucp_init");
    }
    ~context() { ucp_cleanup(handle_); }
    context(const context&) = delete;
    context& operator=(const context&) = delete;

    [[nodiscard]] ucp_context_h get() const noexcept { return handle_; }

    [[nodiscard]] std::uint64_t memory_types() const {
        ucp_context_attr_t attr{};
        attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
        check_ucx(ucp_context_query(handle_, &attr), "ucp_context_query");
        return attr.memory_types;
    }

private:
    ucp_context_h handle_ = nullptr;
};

[[nodiscard]] inline std::uint32_t ucx_library_version() noexcept {
    unsigned major = 0, minor = 0, release = 0;
    ucp_get_version(&major, &minor, &release);
    return (major << 16) | (minor & 0xFFFFU);
}

}  // namespace detail
FERRY_NAMESPACE_END
