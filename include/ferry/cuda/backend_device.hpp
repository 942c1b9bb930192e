#pragma once

// ucx_backend<policy<..., memory::cuda>>'s GPU-initiated transfers:
// device_view and device_signal, which hand a user's kernel what
// <ferry/device.cuh> operates on.
#include <ferry/cuda/backend_state.hpp>
#include <ferry/cuda/device_copy.hpp>
#include <ferry/cuda/ipc.hpp>
#include <ferry/detail/describe.hpp>
#include <ferry/detail/host_id.hpp>
#include <ferry/device/view.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/backend.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_path.hpp>

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <string>

FERRY_NAMESPACE_BEGIN

template <class Policy>
inline device::view ucx_backend<Policy>::device_view(xfer x)
    requires std::same_as<typename Policy::memory_kind, memory::cuda>
{
    auto* st = xfers_.get(x.ref);
    if (!st) throw error(status::invalid_argument, "device_view: the transfer handle is unknown or released");
    if (st->path != xfer_path::cuda_ipc)
        throw error(status::invalid_argument,
                    "device_view: the transfer was prepared on path " + std::string(to_string(st->shown_path)) +
                        ", not cuda_ipc: only a transfer whose peer's memory is mapped into this process can be "
                        "moved by a kernel (prepare it with xfer_path::cuda_ipc to be told why it is not)");
    return static_cast<detail::cuda::device_copy*>(st->path_data)->view();
}

template <class Policy>
inline device::signal ucx_backend<Policy>::device_signal(peer p, const desc& counters)
    requires std::same_as<typename Policy::memory_kind, memory::cuda>
{
    const std::string what = "device_signal: counters " + detail::describe(counters);
    if (counters.len == 0 || counters.len % sizeof(device::word) != 0)
        throw error(status::invalid_argument, what + ": counters are " + std::to_string(sizeof(device::word)) +
                                                  " bytes each, and " + std::to_string(counters.len) +
                                                  " bytes are not a whole number of them");
    if (counters.addr % alignof(device::word) != 0)
        throw error(status::invalid_argument, what + ": not aligned to 8 bytes, as an atomic add needs");
    // The peer table's lock, as prepare takes it: it also guards the
    // region's mapping, which prepare may be opening on another thread.
    auto lock = peers_.lock();
    auto* target = peers_.get(p.ref);
    if (!target) throw error(status::no_such_peer, "device_signal: the peer handle is unknown or was unloaded");
    if (target->failed()) throw error(status::peer_failed, "device_signal: peer '" + target->name() + "' failed");
    if (target->host_id().empty() || target->host_id() != detail::host_id())
        throw error(status::invalid_argument, what + ": peer '" + target->name() +
                                                  "' runs on another host; a kernel reaches only a peer's memory "
                                                  "that CUDA IPC maps, on this host");
    detail::remote_region* r = target->find(counters.addr, counters.len, counters.dev);
    if (!r)
        throw error(status::not_registered,
                    what + " is not inside any region that peer '" + target->name() + "' published");
    if (r->kind != detail::memory_kind_code::cuda)
        throw error(status::invalid_argument, what + " is not CUDA device memory of peer '" + target->name() + "'");
    detail::cuda::open_ipc(*r, memory_.device);
    if (!r->ipc_mapping)
        throw error(status::device_error, what + ": the remote region cannot be mapped: " + r->ipc_error);
    auto& kept = memory_.signal_mappings;
    if (std::find(kept.begin(), kept.end(), r->ipc_mapping) == kept.end()) kept.push_back(r->ipc_mapping);
    const std::uint64_t at = r->ipc_base + r->ipc_offset + (counters.addr - r->addr);
    return {reinterpret_cast<device::word*>(at), counters.len / sizeof(device::word)};
}

FERRY_NAMESPACE_END
