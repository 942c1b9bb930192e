#pragma once

// ferry::telemetry::nvtx: everything telemetry::on keeps, and an NVTX range
// per post, from the moment post accepts it to the moment ferry records its
// end (as telemetry_of's `posted` and `completed`), so that Nsight Systems
// shows each transfer on the timeline next to the kernels around it. Ranges
// live in the domain "ferry" and are named "<op> <agent> -> <peer> (<path>)",
// a string registered once per prepared transfer. Without a profiler
// attached each mark is a call that returns at once. Needs NVTX 3, which the
// CUDA toolkit ships (the ferry::cuda CMake target's include directories).
#include <ferry/desc.hpp>
#include <ferry/policy.hpp>
#include <ferry/xfer_path.hpp>
#include <ferry/detail/telemetry_store.hpp>

#include <nvtx3/nvToolsExt.h>

#include <atomic>
#include <string>
#include <string_view>
#include <type_traits>

FERRY_NAMESPACE_BEGIN
namespace detail {

class nvtx_ranges {
public:
    struct mark {
        nvtxStringHandle_t name = nullptr;
        // Written when the post opens, read by whoever records its end
        // (telemetry_store orders the two through the trace's `open`).
        std::atomic<nvtxRangeId_t> id{0};
    };

    explicit nvtx_ranges(const std::string& agent) : agent_(agent), domain_(domain()) {}

    /// Set-up (prepare): the name every range of this transfer carries.
    void name(mark& m, xfer_op op, std::string_view peer, xfer_path path) {
        std::string text(op == xfer_op::write ? "write " : "read ");
        text.append(agent_).append(" -> ").append(peer).append(" (").append(to_string(path)).append(")");
        m.name = nvtxDomainRegisterStringA(domain_, text.c_str());
    }

    void start(mark& m) noexcept {
        nvtxEventAttributes_t a{};
        a.version = NVTX_VERSION;
        a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
        a.messageType = NVTX_MESSAGE_TYPE_REGISTERED;
        a.message.registered = m.name;
        m.id.store(nvtxDomainRangeStartEx(domain_, &a), std::memory_order_relaxed);
    }

    void stop(mark& m) noexcept { nvtxDomainRangeEnd(domain_, m.id.load(std::memory_order_relaxed)); }

private:
    std::string agent_;
    nvtxDomainHandle_t domain_;

    // One domain for the process, never destroyed: every backend shares it,
    // and a profiler reads it after the backends are gone.
    static nvtxDomainHandle_t domain() noexcept {
        static const nvtxDomainHandle_t d = nvtxDomainCreateA("ferry");
        return d;
    }
};

}  // namespace detail

namespace telemetry {
/// telemetry::on, and an NVTX range per post (see the top of this file).
struct nvtx {
    using ranges = detail::nvtx_ranges;
};
}  // namespace telemetry

template <>
struct is_telemetry_mode<telemetry::nvtx> : std::true_type {};

FERRY_NAMESPACE_END
