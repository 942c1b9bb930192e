#pragma once

#include <ferry/cuda/backend_state.hpp>
#include <ferry/cuda/device_copy.hpp>
#include <ferry/cuda/ipc.hpp>
#include <ferry/detail/host_id.hpp>
#include <ferry/detail/intrusive_list.hpp>
#include <ferry/detail/metadata.hpp>
#include <ferry/detail/thread_owner.hpp>
#include <ferry/host/shared_memory.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/memory.hpp>
#include <ferry/ucx/path.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/ucx/xfer_state.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_cost.hpp>
#include <ferry/xfer_path.hpp>

#include <ucp/api/ucp.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// The cuda_ipc path: the peer's GPU memory mapped into this process through
/// CUDA IPC, and the whole descriptor list moved by one copy kernel on the
/// backend's GPU, whose event completes the post. It serves a transfer only
/// when every pair has GPU memory (or page-locked host memory) on our side
/// and memory of a peer on this host on the other: GPU memory, or host
/// memory that the peer's backend allocated (allocate_host), which is mapped
/// as the host_ipc path maps it and then registered with CUDA. Such a
/// transfer is host_ipc's placement and reported so (path_of), and a caller
/// that names host_ipc gets this path for it. Nothing tells the worker when
/// a kernel is done, so the path is polled (path.hpp).
class cuda_ipc_path {
public:
    static constexpr xfer_path id = xfer_path::cuda_ipc;
    static constexpr bool estimate_on_worker = false;  // a model, no UCX

    explicit cuda_ipc_path(const cuda::backend_state& memory) noexcept : memory_(memory) {}

    /// GPU memory to and from a peer's host memory on this host.
    static constexpr bool serves(xfer_path p) noexcept { return p == xfer_path::host_ipc; }

    /// Builds the copy: its chunk table on the GPU, its stream and event,
    /// and one empty launch that pays the first launch's costs now.
    bool prepare(xfer_state& st, const resolved_pairs& pairs, xfer_path wanted) {
        return build(st, pairs, pairs.local.size(), wanted, [&](std::size_t i) {
            return run_view{pairs.local[i].addr, pairs.remote[i].addr, pairs.local[i].len, 0, 0, 1};
        });
    }

    /// The same for a strided transfer's runs, which the chunk table holds
    /// as runs: a chunk per 4 to 64 KiB of a run, not a row per pair.
    bool prepare(xfer_state& st, const resolved_runs& resolved, xfer_path wanted) {
        return build(st, resolved, resolved.runs.size(), wanted, [&](std::size_t i) {
            const block_run& r = resolved.runs[i];
            return run_view{r.local.addr, r.remote.addr, r.local.len, r.local_stride, r.remote_stride, r.count};
        });
    }

    /// One kernel launch and one event record. The notification, when there
    /// is one, leaves once the event completes.
    status start(xfer_state& st, bool with_notif) noexcept {
        if (!with_notif) st.notif_storage.clear();  // poll sends whatever it holds
        st.first_error = UCS_OK;
        st.device_failed = false;
        if (!copy_of(st).launch()) {
            st.device_failed = true;
            st.pending = 0;
            st.end_at_once(status::device_error);
            return status::device_error;
        }
        st.pending = 1;  // the event
        ++st.target->in_flight;
        in_flight_.link(st);
        return status::in_progress;
    }

    /// Completes a transfer whose event has fired: sends its notification,
    /// which now follows the data, and ends it once that is handed to UCX.
    /// Returns whether it moved on.
    bool poll(xfer_state& st, const thread_owner& owner) noexcept {
        if (!in_flight_.contains(st)) return false;
        owner.check("a cuda_ipc transfer's completion");
        const int done = copy_of(st).poll();
        if (done == 0) return false;
        in_flight_.unlink(st);
        if (done < 0) {
            st.device_failed = true;
        } else if (st.target->failed()) {
            st.first_error = st.target->failure();
        } else if (!st.notif_storage.empty()) {
            st.send_notif();
        }
        st.complete_one(UCS_OK);  // the event's share; may free a released state
        return true;
    }

    unsigned progress(const thread_owner& owner) noexcept {
        unsigned n = 0;
        in_flight_.for_each([&](xfer_state& st) { n += poll(st, owner) ? 1 : 0; });
        return n;
    }

    [[nodiscard]] bool polling() const noexcept { return !in_flight_.empty(); }

    /// One launch and its completion (about 10 us measured on an H200) plus
    /// the bytes at device memory speed, read and written once.
    xfer_cost estimate(const xfer_state& st) const noexcept {
        constexpr double launch_s = 10e-6, bytes_per_s = 1.5e12;
        const auto d = std::chrono::nanoseconds(
            static_cast<std::int64_t>((launch_s + static_cast<double>(st.total_bytes) / bytes_per_s) * 1e9));
        return {d, d / 2, cost_method::cuda_ipc_model};
    }

private:
    // A pair, or a run of pairs, as prepare hands it to build.
    struct run_view {
        std::uint64_t local;
        std::uint64_t remote;
        std::uint64_t len;
        std::uint64_t local_stride;
        std::uint64_t remote_stride;
        std::uint64_t count;
    };

    // prepare for n pairs or runs of `list`; run(i) gives the i-th.
    template <class List, class Run>
    bool build(xfer_state& st, const List& list, std::size_t n, xfer_path wanted, Run run) {
        const bool required = wanted == id;
        bool gpu_there = false;
        // Consecutive pairs mostly share their regions: what was asked of
        // the last pair's pair of regions holds for the next one's.
        const local_region* last_l = nullptr;
        const remote_region* last_r = nullptr;
        for (std::size_t i = 0; i < n; ++i) {
            if (list.local_regions[i] == last_l && list.remote_regions[i] == last_r) continue;
            last_l = list.local_regions[i];
            last_r = list.remote_regions[i];
            const auto why = refusal(*list.local_regions[i], *list.remote_regions[i], list.target, wanted);
            if (why.empty()) {
                gpu_there = gpu_there || list.remote_regions[i]->kind == memory_kind_code::cuda;
                continue;
            }
            if (!required) return false;
            throw error(status::invalid_argument, "prepare: path cuda_ipc: " + list.where(i) + ": " + why);
        }
        // Sized first and written through a pointer: a pair pushed whole
        // is read back in wider pieces than it was written, a stall a pair.
        std::vector<cuda::copy_pair> copies(n);
        cuda::copy_pair* out = copies.data();
        std::vector<std::shared_ptr<void>> mappings;
        last_r = nullptr;
        const bool write = st.op == xfer_op::write;
        for (std::size_t i = 0; i < n; ++i, ++out) {
            const run_view r = run(i);
            const std::uint64_t here = gpu_address(*list.local_regions[i], r.local);
            const std::uint64_t there = mapped_address(*list.remote_regions[i], r.remote);
            out->src = write ? here : there;
            out->dst = write ? there : here;
            out->len = r.len;
            out->src_stride = write ? r.local_stride : r.remote_stride;
            out->dst_stride = write ? r.remote_stride : r.local_stride;
            out->count = r.count;
            const remote_region& rr = *list.remote_regions[i];
            if (&rr == last_r) continue;
            last_r = &rr;
            const auto& mapping = rr.kind == memory_kind_code::cuda ? rr.ipc_mapping : rr.gpu_registration;
            if (std::find(mappings.begin(), mappings.end(), mapping) == mappings.end()) mappings.push_back(mapping);
        }
        st.shown_path = gpu_there ? xfer_path::cuda_ipc : xfer_path::host_ipc;
        auto copy = std::make_unique<cuda::device_copy>(memory_.device, std::move(copies), std::move(mappings),
                                                        memory_.copies);
        st.path_data = copy.release();
        st.destroy_path_data = [](void* p) noexcept { delete static_cast<cuda::device_copy*>(p); };
        return true;
    }

    static cuda::device_copy& copy_of(xfer_state& st) noexcept {
        return *static_cast<cuda::device_copy*>(st.path_data);
    }

    // Why this path cannot serve a pair, or empty if it can. Opens the
    // peer's mapping on first use: CUDA IPC for its GPU memory; its shared
    // host memory mapped and registered with CUDA.
    std::string refusal(const local_region& l, remote_region& r, remote_peer& peer, xfer_path wanted) const {
        if (!l.facts.gpu_reachable)
            return "the local block is neither CUDA device memory nor page-locked host memory";
        if (l.facts.kind == memory_kind_code::cuda && static_cast<int>(l.dev) != memory_.device)
            return "the local block is on CUDA device " + std::to_string(l.dev) + ", the backend's is " +
                   std::to_string(memory_.device) + " (ucx_config::cuda_device)";
        if (peer.host_id().empty() || peer.host_id() != host_id()) return "the peer runs on another host";
        if (r.kind == memory_kind_code::cuda) {
            if (wanted == xfer_path::host_ipc) return "the remote block is CUDA device memory, not host memory";
            cuda::open_ipc(r, memory_.device);
            if (!r.ipc_error.empty()) return "the remote region cannot be mapped: " + r.ipc_error;
            return {};
        }
        if (wanted == xfer_path::cuda_ipc) return "the remote block is not CUDA device memory";
        // The CPU copies host memory to host memory (host_ipc's own copy).
        if (l.facts.kind != memory_kind_code::cuda) return "both blocks are host memory";
        if (!peer.process().unreachable().empty()) return peer.process().unreachable();
        if (r.ipc_handle.empty())
            return "the remote block is host memory that the peer's backend did not allocate (allocate_host), "
                   "which this process cannot map";
        host::open_shared(r, static_cast<std::uint32_t>(peer.process().pid()));
        if (!r.ipc_mapping) return "the remote block's shared memory cannot be mapped: " + r.ipc_error;
        cuda::register_shared(r, memory_.device);
        if (!r.gpu_registration) return "the remote block's shared memory cannot be reached by the GPU: " + r.gpu_error;
        return {};
    }

    // The device address, in this process, of `addr` in a mapped remote region.
    static std::uint64_t mapped_address(const remote_region& r, std::uint64_t addr) noexcept {
        const std::uintptr_t base = r.kind == memory_kind_code::cuda ? r.ipc_base : r.gpu_base;
        return base + r.ipc_offset + (addr - r.addr);
    }

    // The address at which the backend's GPU reaches `addr` in a local region.
    static std::uint64_t gpu_address(const local_region& l, std::uint64_t addr) noexcept {
        return addr + static_cast<std::uint64_t>(l.facts.gpu_offset);
    }

    const cuda::backend_state& memory_;  // the backend's, which outlives this
    intrusive_list<xfer_state, polled_tag> in_flight_;
};

}  // namespace detail
FERRY_NAMESPACE_END
