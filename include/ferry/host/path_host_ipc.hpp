#pragma once

#include <ferry/desc.hpp>
#include <ferry/detail/metadata.hpp>
#include <ferry/host/peer_process.hpp>
#include <ferry/host/shared_memory.hpp>
#include <ferry/peer_event.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/memory.hpp>
#include <ferry/ucx/path.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/ucx/xfer_state.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_cost.hpp>
#include <ferry/xfer_path.hpp>

#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// The host_ipc path: host memory on both sides and a peer process on this
/// host, whose blocks ferry copies itself, one-sided, with nothing to do at
/// the target. Where every remote block lies in shared memory that the
/// peer's backend allocated (host/shared_memory.hpp), that memory is mapped
/// here once and the list is a loop of memcpy; otherwise process_vm_writev /
/// process_vm_readv move up to 1024 blocks per system call, where the
/// kernel allows it (same user, ptrace access). The copy needs no worker, so
/// under the thread policy the posting thread makes it (copy), and only a
/// notification goes to the progress thread (notify).
class host_ipc_path {
public:
    static constexpr xfer_path id = xfer_path::host_ipc;
    static constexpr bool estimate_on_worker = false;  // a model, no UCX

    template <class Memory>
    explicit host_ipc_path(const Memory&) noexcept {}

    bool prepare(xfer_state& st, const resolved_pairs& pairs, xfer_path wanted) {
        const auto mapped = check(pairs, pairs.local.size(), wanted, [&](std::size_t i) { return pairs.remote[i].addr; });
        if (!mapped) return false;
        auto plan = std::make_unique<host_plan>();
        if (*mapped) {
            build_copies(*plan, st.op, pairs.local.size(), pairs.remote_regions, [&](std::size_t i) {
                return copy_run{pairs.local[i].addr, pairs.remote[i].addr, pairs.local[i].len, 0, 0, 1};
            });
        } else {
            build_vm(*plan, st.op, pairs, pairs.target.process());
        }
        st.path_data = plan.release();
        st.destroy_path_data = [](void* p) noexcept { delete static_cast<host_plan*>(p); };
        return true;
    }

    /// A strided transfer's runs: through mappings, one copy loop per run;
    /// through process_vm, laid out block by block, as the calls take them.
    bool prepare(xfer_state& st, const resolved_runs& resolved, xfer_path wanted) {
        const auto mapped = check(resolved, resolved.runs.size(), wanted,
                                  [&](std::size_t i) { return resolved.runs[i].remote.addr; });
        if (!mapped) return false;
        auto plan = std::make_unique<host_plan>();
        if (*mapped) {
            build_copies(*plan, st.op, resolved.runs.size(), resolved.remote_regions, [&](std::size_t i) {
                const block_run& r = resolved.runs[i];
                return copy_run{r.local.addr, r.remote.addr, r.local.len, r.local_stride, r.remote_stride, r.count};
            });
        } else {
            build_vm(*plan, st.op, laid_out_runs(resolved).pairs(), resolved.target.process());
        }
        st.path_data = plan.release();
        st.destroy_path_data = [](void* p) noexcept { delete static_cast<host_plan*>(p); };
        return true;
    }

    /// Moves every block of one post; any thread may call it, while the
    /// transfer is busy. ok, or what ended the copy.
    static status copy(xfer_state& st) noexcept {
        const host_plan& plan = plan_of(st);
        if (plan.process == nullptr) {
            // No fence of ferry's own: the peer learns of the data only from
            // something this thread does next (the notification, through
            // UCX's queues, or the application's own message), which is a
            // release and orders these stores before it.
            for (const host_copy& c : plan.copies) {
                auto* to = static_cast<std::byte*>(c.to);
                const auto* from = static_cast<const std::byte*>(c.from);
                for (std::size_t k = 0; k < c.count; ++k, to += c.to_stride, from += c.from_stride)
                    std::memcpy(to, from, c.len);
            }
            return status::ok;
        }
        if (!plan.process->alive()) {
            st.target->mark_failed(UCS_ERR_CONNECTION_RESET, peer_failure::process_exited,
                                   "a host_ipc copy found the process gone");
            return status::peer_failed;
        }
        const bool write = st.op == xfer_op::write;
        const iovec* here = plan.local.data();
        const iovec* there = plan.remote.data();
        for (const vm_call& call : plan.calls) {
            const std::size_t n = call.iovecs, bytes = call.bytes;
            const auto moved = write ? ::process_vm_writev(plan.process->pid(), here, n, there, n, 0)
                                     : ::process_vm_readv(plan.process->pid(), here, n, there, n, 0);
            if (moved < 0) {
                const int e = errno;
                if (e == ESRCH)
                    st.target->mark_failed(UCS_ERR_CONNECTION_RESET, peer_failure::process_exited,
                                           "a host_ipc copy found the process gone");
                return from_errno(e);
            }
            // Short: a remote block is no longer mapped in the peer.
            if (static_cast<std::size_t>(moved) != bytes) return status::not_registered;
            here += n;
            there += n;
        }
        return status::ok;
    }

    /// A post on the worker's thread: the copy, then its conclusion.
    static status start(xfer_state& st, bool with_notif) noexcept { return conclude(st, copy(st), with_notif); }

    /// The rest of a post whose copy another thread made: its notification.
    static status notify(xfer_state& st) noexcept { return conclude(st, status::ok, true); }

    /// A memcpy at about 10 GB/s and 20 ns a block, or a system call of
    /// about 2 us per 1024 blocks at about 6 GB/s (both measured on the
    /// development machine, and only a guide).
    xfer_cost estimate(const xfer_state& st) const noexcept {
        const host_plan& plan = plan_of(st);
        const auto bytes = static_cast<double>(st.total_bytes);
        double s = 0;
        if (plan.process == nullptr)
            s = bytes / 10e9 + 20e-9 * static_cast<double>(st.block_count);
        else
            s = bytes / 6e9 + 2e-6 * static_cast<double>(plan.calls.size());
        const auto d = std::chrono::nanoseconds(static_cast<std::int64_t>(s * 1e9));
        return {d, d / 2, cost_method::host_ipc_model};
    }

private:
    static constexpr std::size_t max_iov = 1024;  // IOV_MAX, what one process_vm call takes
    // The kernel moves at most MAX_RW_COUNT (2 GiB less a page) in one call
    // and reports a short count beyond, which would read as an unmapped
    // block: a call carries at most 1 GiB, a longer block several calls.
    static constexpr std::size_t max_call_bytes = std::size_t{1} << 30;

    struct vm_call {
        std::size_t iovecs = 0;
        std::size_t bytes = 0;
    };

    // `count` copies of `len` bytes, each strides after the one before.
    struct host_copy {
        void* to;
        const void* from;
        std::size_t len;
        std::size_t to_stride;
        std::size_t from_stride;
        std::size_t count;
    };

    // A pair, or a run of pairs, as prepare hands it to build_copies.
    struct copy_run {
        std::uintptr_t local;
        std::uint64_t remote;
        std::size_t len;
        std::size_t local_stride;
        std::size_t remote_stride;
        std::size_t count;
    };

    // Released plans' copy tables, kept for the process's next plan: a
    // table of 10^5 copies is 4.8 MB, which the allocator maps afresh for
    // each plan and unmaps when it goes, so that preparing a list again
    // would fault in every page of a new one (a third of that prepare's
    // time). One table is kept, the largest, and only tables that large are
    // handed out. Never destroyed, so that a plan released during the
    // program's exit still finds it.
    class copy_tables {
    public:
        static copy_tables& shared() {
            static auto* tables = new copy_tables;
            return *tables;
        }

        // A table with room for n copies, or an empty one.
        std::vector<host_copy> take(std::size_t n) {
            if (n < mapped_afresh) return {};
            std::lock_guard lock(mutex_);
            if (spare_.capacity() < n) return {};
            return std::exchange(spare_, {});
        }

        void give(std::vector<host_copy>& table) noexcept {
            if (table.capacity() < mapped_afresh) return;
            std::lock_guard lock(mutex_);
            if (table.capacity() > spare_.capacity()) {
                table.clear();
                spare_.swap(table);
            }
        }

    private:
        // glibc's first threshold for memory of its own mapping: 128 KiB.
        static constexpr std::size_t mapped_afresh = (std::size_t{128} << 10) / sizeof(host_copy);
        std::mutex mutex_;
        std::vector<host_copy> spare_;
    };

    struct host_plan {
        std::vector<host_copy> copies;      // through mappings
        std::vector<iovec> local, remote;   // through process_vm, when `process` is set
        std::vector<vm_call> calls;
        host::peer_process* process = nullptr;  // the target's, which the transfer keeps alive
        std::vector<std::shared_ptr<void>> mappings;

        host_plan() = default;
        host_plan(const host_plan&) = delete;
        host_plan& operator=(const host_plan&) = delete;
        ~host_plan() { copy_tables::shared().give(copies); }
    };

    static const host_plan& plan_of(const xfer_state& st) noexcept {
        return *static_cast<const host_plan*>(st.path_data);
    }

    // Whether the transfer's pairs (or runs) can go this way: nothing when
    // not (a throw when host_ipc was asked for by name), else whether every
    // remote block lies in a mapping of the peer's shared memory.
    template <class List, class RemoteAddr>
    static std::optional<bool> check(const List& list, std::size_t n, xfer_path wanted, RemoteAddr remote_addr) {
        const bool required = wanted == id;
        host::peer_process& peer = list.target.process();
        if (!peer.unreachable().empty()) {
            if (!required) return std::nullopt;
            throw error(status::invalid_argument, "prepare: path host_ipc: " + peer.unreachable());
        }
        std::size_t unmapped = n;  // the first pair a mapping cannot serve
        // Consecutive pairs mostly share their regions, and what is asked
        // here depends on the regions alone.
        const local_region* last_l = nullptr;
        const remote_region* last_r = nullptr;
        for (std::size_t i = 0; i < n; ++i) {
            if (list.local_regions[i] == last_l && list.remote_regions[i] == last_r) continue;
            last_l = list.local_regions[i];
            last_r = list.remote_regions[i];
            remote_region& r = *list.remote_regions[i];
            std::string why;
            if (list.local_regions[i]->facts.kind != memory_kind_code::host)
                why = "the local block is not host memory (GPU memory reaches a peer's host memory on this "
                      "host only where the peer allocated it with allocate_host)";
            else if (r.kind != memory_kind_code::host)
                why = "the remote block is not host memory";
            if (!why.empty()) {
                if (!required) return std::nullopt;
                throw error(status::invalid_argument, "prepare: path host_ipc: " + list.where(i) + ": " + why);
            }
            if (!r.ipc_handle.empty()) host::open_shared(r, static_cast<std::uint32_t>(peer.pid()));
            if (!r.ipc_mapping && unmapped == n) unmapped = i;
        }
        if (unmapped == n) return true;
        if (const std::string& why = peer.vm_refusal(remote_addr(unmapped)); !why.empty()) {
            if (!required) return std::nullopt;
            const remote_region& r = *list.remote_regions[unmapped];
            throw error(status::invalid_argument,
                        "prepare: path host_ipc: " + list.where(unmapped) + ": " +
                            (r.ipc_error.empty() ? "the remote block is not in memory the peer's backend allocated"
                                                 : "the remote block's shared memory cannot be mapped: " +
                                                       r.ipc_error) +
                            ", and " + why);
        }
        return false;
    }

    // The copies through mappings of n pairs or runs; run(i) gives the i-th.
    template <class Run>
    static void build_copies(host_plan& plan, xfer_op op, std::size_t n,
                             std::span<remote_region* const> remote_regions, Run run) {
        plan.copies = copy_tables::shared().take(n);
        // Sized first and written a field at a time through a pointer: a
        // copy pushed whole is read back in wider pieces than it was
        // written, a stall a copy.
        plan.copies.resize(n);
        host_copy* out = plan.copies.data();
        const bool write = op == xfer_op::write;
        const remote_region* last = nullptr;
        for (std::size_t i = 0; i < n; ++i, ++out) {
            const remote_region& r = *remote_regions[i];
            const copy_run c = run(i);
            // Inside the mapping: decode_metadata checked that the region lies
            // in its file, open_shared that the file is that large, prepare
            // that every block lies in the region.
            auto* there = reinterpret_cast<void*>(r.ipc_base + r.ipc_offset + (c.remote - r.addr));
            auto* here = reinterpret_cast<void*>(c.local);
            out->to = write ? there : here;
            out->from = write ? here : there;
            out->len = c.len;
            out->to_stride = write ? c.remote_stride : c.local_stride;
            out->from_stride = write ? c.local_stride : c.remote_stride;
            out->count = c.count;
            if (&r == last) continue;
            last = &r;
            if (std::find(plan.mappings.begin(), plan.mappings.end(), r.ipc_mapping) == plan.mappings.end())
                plan.mappings.push_back(r.ipc_mapping);
        }
        prefault(plan, op, remote_regions);
    }

    // Maps the pages of the peer's memory that the transfer touches now, so
    // that its first post does not take a page fault per page (milliseconds
    // for 1024 blocks of 4 KiB). Pages that an earlier prepare populated for
    // the same access are skipped (remote_region::populated), so that
    // preparing a list again costs no system call per page; the kernel may
    // have reclaimed one since, which costs a page fault, as without this.
    // Best effort: kernels before 5.14 lack MADV_POPULATE_*, and the first
    // post then pays as before.
    static void prefault(const host_plan& plan, xfer_op op, std::span<remote_region* const> remote_regions) {
#if defined(MADV_POPULATE_WRITE) && defined(MADV_POPULATE_READ)
        const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
        // A power of two: shifts and masks, not a division per block.
        const int shift = std::countr_zero(page);
        const std::uintptr_t mask = ~(page - 1);
        const bool write = op == xfer_op::write;
        // Pages in ascending runs, merged as they come: lists mostly walk
        // the peer's memory upwards, and then this stays short and unsorted
        // work is skipped.
        std::vector<std::pair<std::uintptr_t, std::uintptr_t>> spans;
        bool ascending = true;
        auto add = [&](remote_region& r, std::uintptr_t at, std::size_t len) {
            const std::uintptr_t lo = at & mask, hi = (at + len + page - 1) & mask;
            if (!r.populated.claim((lo - r.ipc_base) >> shift, (hi - r.ipc_base) >> shift, write,
                                   (r.ipc_alloc_size + page - 1) >> shift))
                return;
            if (!spans.empty() && lo >= spans.back().first && lo <= spans.back().second) {
                spans.back().second = std::max(spans.back().second, hi);
                return;
            }
            ascending = ascending && (spans.empty() || lo > spans.back().second);
            spans.emplace_back(lo, hi);
        };
        for (std::size_t i = 0; i < plan.copies.size(); ++i) {
            const host_copy& c = plan.copies[i];
            const auto at = reinterpret_cast<std::uintptr_t>(write ? c.to : c.from);
            const std::size_t stride = write ? c.to_stride : c.from_stride;
            // A run whose blocks lie a page or more apart, block by block (a
            // KV cache's page across its layers: the span between is other
            // layers' memory); a denser one by its span, gaps and all.
            // prepare checked that a run lies in one region.
            if (c.count > 1 && stride >= c.len + page) {
                for (std::size_t k = 0; k < c.count; ++k) add(*remote_regions[i], at + k * stride, c.len);
            } else {
                add(*remote_regions[i], at, (c.count - 1) * stride + c.len);
            }
        }
        if (!ascending) std::sort(spans.begin(), spans.end());
        const int advice = write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ;
        for (std::size_t i = 0; i < spans.size();) {
            auto [lo, hi] = spans[i];
            for (++i; i < spans.size() && spans[i].first <= hi; ++i) hi = std::max(hi, spans[i].second);
            ::madvise(reinterpret_cast<void*>(lo), hi - lo, advice);
        }
#else
        static_cast<void>(plan), static_cast<void>(op), static_cast<void>(remote_regions);
#endif
    }

    static void build_vm(host_plan& plan, xfer_op, const resolved_pairs& pairs, host::peer_process& peer) {
        plan.process = &peer;
        plan.local.reserve(pairs.local.size());
        plan.remote.reserve(pairs.local.size());
        for (std::size_t i = 0; i < pairs.local.size(); ++i) {
            auto* here = reinterpret_cast<std::byte*>(pairs.local[i].addr);
            auto* there = reinterpret_cast<std::byte*>(pairs.remote[i].addr);
            for (std::size_t done = 0, len = pairs.local[i].len; done < len;) {
                const std::size_t piece = std::min(len - done, max_call_bytes);
                if (plan.calls.empty() || plan.calls.back().iovecs == max_iov ||
                    plan.calls.back().bytes + piece > max_call_bytes)
                    plan.calls.emplace_back();
                plan.local.push_back({here + done, piece});
                plan.remote.push_back({there + done, piece});
                ++plan.calls.back().iovecs;
                plan.calls.back().bytes += piece;
                done += piece;
            }
        }
    }

    static status from_errno(int e) noexcept {
        switch (e) {
            case EFAULT: return status::not_registered;  // the peer unmapped a block
            case ENOMEM: return status::no_memory;
            default: return status::peer_failed;  // ESRCH: it exited; EPERM: it changed credentials
        }
    }

    // Ends a post whose copy went as `s`: sends the notification after the
    // data when asked and the copy succeeded, then finishes the transfer,
    // or leaves that to the notification's completion. On the worker's
    // thread, except for a post without notification, which touches no UCX.
    static status conclude(xfer_state& st, status s, bool with_notif) noexcept {
        st.first_error = UCS_OK;
        st.device_failed = false;
        if (s == status::ok && with_notif) {
            if (st.target->failed()) {
                s = status::peer_failed;
            } else {
                st.pending = 1;
                st.send_notif();
                if (st.pending > 1) {
                    --st.pending;  // the notification's callback finishes the transfer
                    ++st.target->in_flight;
                    return status::in_progress;
                }
                st.pending = 0;
                s = st.outcome();
            }
        }
        st.end_at_once(s);
        return s;
    }
};

}  // namespace detail
FERRY_NAMESPACE_END
