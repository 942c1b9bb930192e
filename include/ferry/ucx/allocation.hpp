#pragma once

#include <ferry/version.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// Memory a memory kind allocated for a region: the memory itself, freed when
/// the last owner goes, and, when a process on this host can map it, the
/// handle that says how (published with the region) and the size of what it maps.
/// Null memory means "let UCX allocate" (UCP_MEM_MAP_ALLOCATE).
struct allocation {
    std::shared_ptr<void> memory;
    std::vector<std::byte> share_handle;
    std::uint64_t share_size = 0;
};

}  // namespace detail
FERRY_NAMESPACE_END
