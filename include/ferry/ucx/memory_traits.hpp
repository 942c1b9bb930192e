#pragma once

#include <ferry/policy.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/config.hpp>
#include <ferry/ucx/context.hpp>
#include <ferry/ucx/memory_facts.hpp>
#include <ferry/ucx/path.hpp>
#include <ferry/ucx/path_ucx.hpp>
#include <ferry/version.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// What a memory kind adds to ucx_backend: how memory is told apart and
/// registered, what the backend's threads must do first, and the paths its
/// transfers may take (path.hpp), in the order prepare tries them.
/// Specialised per memory kind; memory::cuda's specialisation lives in
/// <ferry/cuda.hpp>.
template <class Memory>
struct memory_traits;

template <class Memory>
inline constexpr bool has_memory_traits = requires { sizeof(memory_traits<Memory>); };

template <>
struct memory_traits<memory::host> {
    /// No path but UCX's.
    using paths = path_set<ucx_rma_path>;

    /// Per-backend state of the memory kind; host memory needs none.
    struct backend_state {
        backend_state(const ucx_config&, const context&) {}
        void bind_thread() const noexcept {}
    };

    static memory_facts classify(const backend_state&, const char* what, const void*, std::size_t,
                                 std::uint32_t dev) {
        if (dev != 0)
            throw error(status::invalid_argument, std::string(what) + ": dev " + std::to_string(dev) +
                                                      " given, but memory::host takes device 0 only");
        return {};
    }

    /// allocate(): UCX allocates (UCP_MEM_MAP_ALLOCATE), so that a peer on
    /// this host can map the memory. Null here means "let UCX allocate".
    static std::shared_ptr<void> allocate(const backend_state&, std::size_t, std::uint32_t dev) {
        if (dev != 0)
            throw error(status::invalid_argument,
                        "allocate: dev " + std::to_string(dev) + " given, but memory::host takes device 0 only");
        return nullptr;
    }
};

}  // namespace detail
FERRY_NAMESPACE_END
