#pragma once

#include <ferry/detail/mpsc_queue.hpp>
#include <ferry/version.hpp>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// Work an application thread hands to the progress thread. The object is
/// its own queue node, so handing it over allocates nothing.
struct command : mpsc_node {
    void (*execute)(command& self, void* backend) noexcept = nullptr;
};

}  // namespace detail
FERRY_NAMESPACE_END
