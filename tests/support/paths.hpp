#pragma once

// Transfer paths in tests between two processes of this host. On host memory
// prepare's automatic choice is host_ipc there: ferry copies the whole list
// itself inside post, so nothing stays in flight and the target need not
// progress. Tests whose subject is UCX's behaviour (transfers in flight,
// deadlines, peers that die) ask for xfer_path::ucx; tests of delivered
// bytes run on both.

#include "support/two_process.hpp"

#include <ferry/ferry.hpp>

#include <string>

namespace ferry_test {

/// The path prepare must take when asked for `wanted`, every block being
/// host memory and the peer a process on this host (this one included).
[[nodiscard]] constexpr ferry::xfer_path local_host_path(ferry::xfer_path wanted) noexcept {
    return wanted == ferry::xfer_path::automatic ? ferry::xfer_path::host_ipc : wanted;
}

/// How estimate must answer for a transfer on path `p`.
[[nodiscard]] constexpr ferry::cost_method cost_method_of(ferry::xfer_path p) noexcept {
    switch (p) {
        case ferry::xfer_path::ucx: return ferry::cost_method::ucx_evaluate_perf;
        case ferry::xfer_path::cuda_ipc: return ferry::cost_method::cuda_ipc_model;
        case ferry::xfer_path::host_ipc: return ferry::cost_method::host_ipc_model;
        case ferry::xfer_path::automatic: break;
    }
    return ferry::cost_method::unknown;
}

inline std::string str(ferry::xfer_path p) { return std::string(ferry::to_string(p)); }

/// Fails the child unless prepare put `x` on path `want`.
template <class Backend>
void expect_path(const Backend& b, ferry::xfer x, ferry::xfer_path want, const std::string& what) {
    if (b.path_of(x) != want) fail(what + ": prepare chose path " + str(b.path_of(x)) + ", expected " + str(want));
}

}  // namespace ferry_test
