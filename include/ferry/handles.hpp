#pragma once

#include <ferry/version.hpp>

#include <cstdint>

FERRY_NAMESPACE_BEGIN

namespace detail {

// A slot index plus the generation the slot had when the handle was made: a
// handle that outlives its object is recognised as stale, never dereferenced.
struct slot_ref {
    std::uint32_t index = UINT32_MAX;
    std::uint32_t generation = 0;

    friend constexpr bool operator==(const slot_ref&, const slot_ref&) = default;
};

}  // namespace detail

/// A loaded remote agent. Small and copyable; comparing two is cheap.
struct peer {
    detail::slot_ref ref;

    [[nodiscard]] constexpr bool valid() const noexcept { return ref.index != UINT32_MAX; }
    friend constexpr bool operator==(const peer&, const peer&) = default;
};

/// A prepared transfer. Valid until passed to `release`.
struct xfer {
    detail::slot_ref ref;

    [[nodiscard]] constexpr bool valid() const noexcept { return ref.index != UINT32_MAX; }
    friend constexpr bool operator==(const xfer&, const xfer&) = default;
};

FERRY_NAMESPACE_END
