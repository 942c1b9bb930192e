#pragma once

// Which backend types ferry-bench can run, and how to build one. Adding a
// policy is one enumerator in options.hpp and one line in with_backend();
// adding a backend is a backend_factory specialization.

#include "options.hpp"

#if defined(FERRY_BENCH_CUDA)
#include <ferry/cuda.hpp>
#endif
#include <ferry/policy.hpp>
#include <ferry/ucx/backend.hpp>
#include <ferry/ucx/config.hpp>

#include <ucp/api/ucp.h>

#include <concepts>
#include <memory>
#include <string>
#include <type_traits>

namespace bench {

/// A backend that hands out its UCX handles lets the raw baseline run on the
/// same context, worker and endpoint.
template <class B>
concept exposes_ucx = requires(const B& b, ferry::peer p) {
    { b.ucx_context() } -> std::same_as<ucp_context_h>;
    { b.ucx_worker() } -> std::same_as<ucp_worker_h>;
    { b.ucx_endpoint(p) } -> std::same_as<ucp_ep_h>;
};

/// A backend whose worker belongs to its own progress thread: the raw
/// baseline cannot share it, and waiting is better done asleep.
template <class B>
concept has_progress_thread = requires { typename B::policy_type; } &&
                              ferry::is_threaded_v<typename B::policy_type>;

/// The raw baseline drives the backend's worker itself.
template <class B>
concept raw_capable = exposes_ucx<B> && !has_progress_thread<B>;

template <class B>
struct backend_factory;

template <class Policy>
struct backend_factory<ferry::ucx_backend<Policy>> {
    static std::unique_ptr<ferry::ucx_backend<Policy>> make(std::string name, const options& o) {
        ferry::ucx_config cfg;
        cfg.name = std::move(name);
        if (!o.tls.empty()) cfg.ucx_options.emplace_back("TLS", o.tls);
        cfg.error_handling = o.peer_error_handling ? ferry::error_mode::peer : ferry::error_mode::none;
        return std::make_unique<ferry::ucx_backend<Policy>>(std::move(cfg));
    }
};

/// Calls f.template operator()<Backend>() with the backend type that
/// --progress and --memory select.
template <class F>
decltype(auto) with_backend(const options& o, F&& f) {
    using ferry::policy;
    namespace progress = ferry::progress;
    namespace memory = ferry::memory;
    if (o.telemetry) {
        using ferry::telemetry::on;
        if (o.memory == memory_kind::cuda) {
#if defined(FERRY_BENCH_CUDA)
            if (o.progress == progress_kind::thread)
                return f.template operator()<ferry::ucx_backend<policy<progress::thread, memory::cuda, on>>>();
            return f.template operator()<ferry::ucx_backend<policy<progress::inline_poll, memory::cuda, on>>>();
#else
            throw usage_error("--progress/--memory: this combination is not built");
#endif
        }
        if (o.progress == progress_kind::thread)
            return f.template operator()<ferry::ucx_backend<policy<progress::thread, memory::host, on>>>();
        return f.template operator()<ferry::ucx_backend<policy<progress::inline_poll, memory::host, on>>>();
    }
    switch (o.progress) {
        case progress_kind::inline_poll:
            switch (o.memory) {
                case memory_kind::host:
                    return f.template operator()<ferry::ucx_backend<policy<progress::inline_poll, memory::host>>>();
                case memory_kind::cuda:
#if defined(FERRY_BENCH_CUDA)
                    return f.template operator()<ferry::ucx_backend<policy<progress::inline_poll, memory::cuda>>>();
#else
                    break;
#endif
            }
            break;
        case progress_kind::thread:
            switch (o.memory) {
                case memory_kind::host:
                    return f.template operator()<ferry::ucx_backend<policy<progress::thread, memory::host>>>();
                case memory_kind::cuda:
#if defined(FERRY_BENCH_CUDA)
                    return f.template operator()<ferry::ucx_backend<policy<progress::thread, memory::cuda>>>();
#else
                    break;
#endif
            }
            break;
    }
    throw usage_error("--progress/--memory: this combination is not built");
}

}  // namespace bench
