#pragma once

#include <ferry/version.hpp>
#include <ferry/xfer_path.hpp>

FERRY_NAMESPACE_BEGIN

/// How prepare sets a transfer up.
struct xfer_options {
    /// The path that moves it (xfer_path); automatic lets prepare choose.
    xfer_path path = xfer_path::automatic;
    /// Merges runs of pairs whose local blocks follow one another in one
    /// registered region and whose remote blocks follow one another in one
    /// published region into one block: one UCX operation, one copy. Errors
    /// still name the caller's descriptor indices. Off, every descriptor is
    /// its own operation, as a benchmark of the cost per descriptor needs.
    bool coalesce = true;
};

FERRY_NAMESPACE_END
