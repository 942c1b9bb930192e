#pragma once

#include <ferry/status.hpp>
#include <ferry/ucx/config.hpp>
#include <ferry/ucx/ucx_status.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>

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
    /// For ferry's own defaults: a UCX built without the transport that
    /// owns `key` may not know it, which is no reason to fail.
    bool try_modify(const char* key, const std::string& value) noexcept {
        return ucp_config_modify(config_, key, value.c_str()) == UCS_OK;
    }
    [[nodiscard]] const ucp_config_t* get() const noexcept { return config_; }

private:
    ucp_config_t* config_ = nullptr;
};

/// Whether the transports this context may use include one named in
/// `names`: setting a transport's option when it is not loaded makes UCX warn.
inline bool may_use(const ucx_config& cfg, std::initializer_list<std::string_view> names) {
    std::string tls;
    if (const char* env = std::getenv("UCX_TLS")) tls = env;
    for (const auto& [key, value] : cfg.ucx_options)
        if (key == "TLS") tls = value;
    if (tls.empty() || tls.find('^') != std::string::npos) return true;
    std::size_t start = 0;
    while (start <= tls.size()) {
        auto end = tls.find(',', start);
        if (end == std::string::npos) end = tls.size();
        const std::string_view name(tls.data() + start, end - start);
        if (name == "all") return true;
        for (std::string_view n : names)
            if (name == n) return true;
        start = end + 1;
    }
    return false;
}

/// Owns a ucp_context. Shared, because registered memory must be unmapped
/// through the context that mapped it, even after the backend is gone.
class context {
public:
    context(const ucx_config& cfg, std::uint64_t features, bool multi_threaded) {
        ucx_config_handle config;
        auto user_sets = [&](std::string_view key) {
            return std::any_of(cfg.ucx_options.begin(), cfg.ucx_options.end(),
                               [&](const auto& kv) { return kv.first == key; });
        };
        if (cfg.keepalive_interval.count() > 0)
            config.try_modify("KEEPALIVE_INTERVAL", std::to_string(cfg.keepalive_interval.count()) + "ms");
        if (cfg.error_handling == error_mode::peer) {
            // UCX's shared-memory transports detect a dead peer only when
            // asked to, and without it cannot serve a PEER-mode endpoint.
            // Their settings share the "MM_" table, which is the key
            // ucp_config_modify knows; the environment may name either.
            constexpr const char* keys[] = {"MM_ERROR_HANDLING", "POSIX_ERROR_HANDLING", "SYSV_ERROR_HANDLING"};
            const bool set_elsewhere = std::any_of(std::begin(keys), std::end(keys), [&](const char* key) {
                return user_sets(key) || std::getenv((std::string("UCX_") + key).c_str()) != nullptr;
            });
            if (!set_elsewhere && may_use(cfg, {"sm", "shm", "mm", "posix", "sysv"}))
                config.try_modify("MM_ERROR_HANDLING", "y");
        }
        // UCX 1.13 connects a tcp endpoint with a blocking connect() inside
        // ucp_ep_create unless told otherwise, so load_remote of a peer that
        // cannot be reached held its caller (under the thread policy, the
        // progress thread) for the kernel's whole SYN retry time, about two
        // minutes. Connecting in the background instead, a transfer to such
        // a peer ends with peer_failed, or timed_out at its deadline. The
        // key has no transport prefix: UCX matches a key it does not know
        // against each transport's own field names, so "TCP_CONN_NB" would
        // be accepted and ignored; UCX 1.22 refuses "CONN_NB" and takes
        // "TCP_CONN_NB". The first key this UCX accepts is the one it reads.
        if (!user_sets("CONN_NB") && !user_sets("TCP_CONN_NB") && std::getenv("UCX_TCP_CONN_NB") == nullptr &&
            may_use(cfg, {"tcp"}) && !config.try_modify("CONN_NB", "y"))
            config.try_modify("TCP_CONN_NB", "y");
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
