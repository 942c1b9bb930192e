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

/// `count` blocks of `len` bytes each, the first at `addr`, each `stride`
/// bytes after the one before: how a KV cache lays out a layer's pages or a
/// head's slices, described once instead of block by block. A plain block
/// is count 1 (its stride is then unused). prepare pairs the local and the
/// remote list block by block, so the two lists may cut the same blocks into
/// different entries; it checks each entry by its first and last block.
struct strided_desc {
    std::uintptr_t addr = 0;
    std::size_t len = 0;
    std::uint32_t dev = 0;
    std::size_t stride = 0;
    std::size_t count = 1;

    constexpr strided_desc() noexcept = default;
    constexpr strided_desc(std::uintptr_t a, std::size_t l, std::uint32_t d, std::size_t s = 0,
                           std::size_t c = 1) noexcept
        : addr(a), len(l), dev(d), stride(s), count(c) {}
    /// A plain block, as an entry of a strided list.
    constexpr strided_desc(const desc& d) noexcept : addr(d.addr), len(d.len), dev(d.dev) {}  // NOLINT: implicit on purpose

    friend constexpr bool operator==(const strided_desc&, const strided_desc&) = default;
};

FERRY_NAMESPACE_END
