#pragma once

#include <ferry/version.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

FERRY_NAMESPACE_BEGIN

/// Direction of a transfer, seen from the initiator: READ pulls remote blocks
/// into local memory, WRITE pushes local blocks into remote memory.
enum class xfer_op : std::uint8_t { read, write };

[[nodiscard]] constexpr std::string_view to_string(xfer_op op) noexcept {
    return op == xfer_op::read ? "read" : "write";
}

/// One block of memory: an address in the owner's address space, a length,
/// and a device (0 for host memory, the CUDA ordinal for GPU memory).
struct desc {
    std::uintptr_t addr = 0;
    std::size_t len = 0;
    std::uint32_t dev = 0;

    friend constexpr bool operator==(const desc&, const desc&) = default;
};

FERRY_NAMESPACE_END
