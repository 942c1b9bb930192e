#pragma once

#include <ferry/desc.hpp>
#include <ferry/detail/metadata.hpp>
#include <ferry/detail/populated_pages.hpp>
#include <ferry/handles.hpp>
#include <ferry/host/notif_mailbox.hpp>
#include <ferry/host/peer_process.hpp>
#include <ferry/peer_event.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/peer_events.hpp>
#include <ferry/ucx/config.hpp>
#include <ferry/ucx/endpoint.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

struct remote_region {
    std::uint64_t addr;
    std::uint64_t len;
    std::uint32_t dev;
    std::vector<std::byte> packed_key;
    memory_kind_code kind = memory_kind_code::host;
    std::vector<std::byte> ipc_handle;
    std::uint64_t ipc_offset = 0;
    std::uint64_t ipc_alloc_size = 0;
    // Unpacked by the first transfer that uses the region: unpacking a key
    // that UCX must emulate starts a wire-up exchange with the peer, which
    // stalls even mapped-memory puts on the endpoint until the peer answers,
    // and which UCX 1.13 over tcp cannot abandon without aborting.
    std::optional<rkey> key;
    // The allocation mapped into this process (through CUDA IPC, or the
    // peer's shared host memory file), opened by the first transfer on a
    // path that maps it; transfers that use it hold it open too. `ipc_error`
    // says why opening failed, so that it is tried once.
    std::shared_ptr<void> ipc_mapping;
    std::uintptr_t ipc_base = 0;
    std::string ipc_error;
    // The pages of that mapping that host_ipc's prepare populated already.
    populated_pages populated;
    // A peer's shared host memory, mapped as above and then registered with
    // CUDA by the first GPU transfer to it: the address at which the GPU
    // reaches the mapping's start, and the registration, which keeps the
    // mapping and is held like it. `gpu_error` says why registering failed.
    std::shared_ptr<void> gpu_registration;
    std::uintptr_t gpu_base = 0;
    std::string gpu_error;
    // The peer no longer publishes it (a later blob of the same incarnation
    // left it out): prepare no longer finds it, while transfers prepared
    // before keep their key.
    bool withdrawn = false;

    [[nodiscard]] bool contains(std::uint64_t a, std::size_t n, std::uint32_t device) const noexcept {
        return device == dev && a >= addr && n <= len && a - addr <= len - n;
    }
};

/// What load_remote made of a peer's metadata: its endpoint and the regions
/// it published, with their rkeys unpacked, sorted by address.
class remote_peer {
public:
    /// `failures`, if given, is bumped when the peer fails (UCX reports the
    /// endpoint failed, or its process is found gone), and `events`, if
    /// given, gets the failure as a peer_event.
    /// `mailbox_sender`, if not empty, is this agent's name, and asks for
    /// the peer's notification mailbox where the peer has one on this host.
    remote_peer(ucp_worker_h worker, const metadata_view& md, error_mode mode,
                std::atomic<std::uint64_t>* failures = nullptr, peer_event_queue* events = nullptr,
                std::string_view mailbox_sender = {})
        : name_(md.name),
          host_id_(md.host_id),
          mode_(mode),
          process_(md.host_id, md.pid, md.pid_namespace, md.start_time),
          failures_(failures),
          events_(events),
          ep_(worker, md.worker_address, mode, mode == error_mode::peer ? &on_error : nullptr, this),
          worker_address_(md.worker_address.begin(), md.worker_address.end()),
          pid_(md.pid),
          pid_namespace_(md.pid_namespace),
          start_time_(md.start_time) {
        regions_.reserve(md.regions.size());
        for (const auto& r : md.regions) regions_.push_back(region_of(r));
        sort_regions();
        if (!mailbox_sender.empty() && md.mailbox_size != 0 && process_.watchable() && process_.alive()) {
            auto w = std::make_unique<host::mailbox_writer>(
                md.pid, host::mailbox_address{md.mailbox_fd, md.mailbox_inode, md.mailbox_size}, mailbox_sender);
            if (w->usable()) mailbox_ = std::move(w);
        }
    }
    remote_peer(const remote_peer&) = delete;
    remote_peer& operator=(const remote_peer&) = delete;
    ~remote_peer() {
        // UCX requires rkeys to go before the endpoint they were unpacked on.
        regions_.clear();
    }

    [[nodiscard]] const std::string& name() const noexcept { return name_; }
    /// The peer's kernel boot id: equal to ours means the same host.
    [[nodiscard]] const std::string& host_id() const noexcept { return host_id_; }
    [[nodiscard]] ucp_ep_h ep() const noexcept { return ep_.get(); }
    /// The peer as a process on this host (the host_ipc path).
    [[nodiscard]] host::peer_process& process() noexcept { return process_; }
    /// Our slot in the peer's notification mailbox; null where notifications
    /// go as UCX active messages.
    [[nodiscard]] host::mailbox_writer* mailbox() const noexcept { return mailbox_.get(); }

    [[nodiscard]] remote_region* find(std::uint64_t addr, std::size_t len, std::uint32_t dev) noexcept {
        auto it = std::upper_bound(regions_.begin(), regions_.end(), addr,
                                   [](std::uint64_t a, const auto& r) { return a < r.addr; });
        while (it != regions_.begin()) {
            --it;
            if (!it->withdrawn && it->contains(addr, len, dev)) return &*it;
        }
        return nullptr;
    }

    [[nodiscard]] std::vector<desc> published() const {
        std::vector<desc> out;
        out.reserve(regions_.size());
        for (const auto& r : regions_)
            if (!r.withdrawn) out.push_back({static_cast<std::uintptr_t>(r.addr), r.len, r.dev});
        return out;
    }

    /// Whether `md` is a later blob of this very peer (the same worker of
    /// the same process), not of a restart under the same name.
    [[nodiscard]] bool same_incarnation(const metadata_view& md) const noexcept {
        return std::ranges::equal(md.worker_address, worker_address_) && md.host_id == host_id_ &&
               md.pid == pid_ && md.pid_namespace == pid_namespace_ && md.start_time == start_time_;
    }

    /// Takes a later blob of this peer (same_incarnation): regions it still
    /// publishes keep their state (unpacked key, mapping), new ones are
    /// added, and those it left out are withdrawn, not destroyed, since
    /// transfers prepared over them hold their keys. Where the worker may be
    /// touched, with the peer table locked (prepare reads the regions so).
    void refresh(const metadata_view& md) {
        std::vector<bool> kept(regions_.size(), false);
        std::vector<remote_region> added;
        for (const auto& r : md.regions) {
            auto same = [&](const remote_region& x) {
                return !x.withdrawn && x.addr == r.addr && x.len == r.len && x.dev == r.dev && x.kind == r.kind &&
                       std::ranges::equal(x.packed_key, r.rkey) && std::ranges::equal(x.ipc_handle, r.ipc_handle) &&
                       x.ipc_offset == r.ipc_offset && x.ipc_alloc_size == r.ipc_alloc_size;
            };
            auto it = std::find_if(regions_.begin(), regions_.end(), same);
            if (it != regions_.end()) kept[static_cast<std::size_t>(it - regions_.begin())] = true;
            else added.push_back(region_of(r));
        }
        for (std::size_t i = 0; i < regions_.size(); ++i)
            if (!kept[i]) regions_[i].withdrawn = true;
        for (auto& r : added) regions_.push_back(std::move(r));
        sort_regions();
    }

    /// The region's unpacked key; unpacks it on first use. Runs where the worker may be touched.
    ucp_rkey_h key_of(remote_region& r) {
        if (!r.key) r.key.emplace(ep_.get(), r.packed_key);
        return r.key->get();
    }

    /// True once UCX reported the endpoint failed (peer error handling only).
    /// Written by the thread that drives the worker, read by any.
    [[nodiscard]] bool failed() const noexcept { return failure_.load(std::memory_order_acquire) != UCS_OK; }
    /// UCX's verdict on the failure; UCS_OK while the peer is healthy.
    [[nodiscard]] ucs_status_t failure() const noexcept { return failure_.load(std::memory_order_acquire); }

    [[nodiscard]] error_mode mode() const noexcept { return mode_; }

    /// Records that the peer failed with `s`: UCX's error handler does, the
    /// pid watch when the peer's process exits, the host_ipc path when a
    /// copy finds it gone. The first call wins; it alone bumps the failure
    /// count (which makes the progress thread end the transfers in flight)
    /// and queues the one `failed` event. Any thread.
    void mark_failed(ucs_status_t s, peer_failure why = peer_failure::endpoint_error,
                     std::string_view detail = {}) noexcept {
        ucs_status_t healthy = UCS_OK;
        if (!failure_.compare_exchange_strong(healthy, s == UCS_OK ? UCS_ERR_CONNECTION_RESET : s,
                                              std::memory_order_acq_rel))
            return;
        if (failures_) failures_->fetch_add(1, std::memory_order_relaxed);
        if (!events_) return;
        peer_event e;
        e.kind = peer_event_kind::failed;
        e.why = why;
        e.handle = peer{handle_};
        try {
            e.name = name_;
            if (!detail.empty()) e.detail = detail;
            else e.detail = std::string("UCX reported the endpoint failed: ") + ucs_status_string(failure());
        } catch (const std::bad_alloc&) {
            // The event still says who failed and why, if not in words.
        }
        events_->push(std::move(e));
    }

    /// The handle the peer table filed this peer under, for its events. Set
    /// once, by load_remote, before the handle is handed out.
    void set_handle(slot_ref ref) noexcept { handle_ = ref; }
    [[nodiscard]] peer handle() const noexcept { return peer{handle_}; }

    /// Whether the pid watch (pid_watch) holds this peer. Touched only by
    /// the thread that drives the worker: inline check() reads it to decide
    /// whether a transfer's target is worth a look at the watch.
    bool watched = false;

    /// Transfers to this peer that UCX has not completed yet, and how many of
    /// them passed their deadline. Touched only by the thread that drives the worker.
    std::size_t in_flight = 0;
    std::size_t abandoned = 0;

    /// Whether closing should cancel what is outstanding instead of waiting
    /// for the peer: it failed, or transfers to it were given up on. Forcing
    /// needs peer error handling (on both sides, as UCX requires).
    [[nodiscard]] bool close_by_force() const noexcept {
        return mode_ == error_mode::peer && (failed() || abandoned > 0);
    }

    /// Set when the peer is unloaded, so that a post can check the peer it
    /// already holds instead of looking it up in the peer table again.
    std::atomic<bool> retired{false};

    /// Closes the endpoint, gives up the mailbox slot and destroys the
    /// rkeys. A flushing close comes after the rkeys, as UCX asks; a forced
    /// one first, because it completes (cancels) the operations in flight
    /// that still refer to them.
    ucs_status_ptr_t close(bool force) noexcept {
        // Nothing is sent to a closed peer: give its mailbox slot back now,
        // since the peer object itself may be kept until the backend goes.
        mailbox_.reset();
        if (!force) regions_.clear();
        auto r = ep_.close(force);
        regions_.clear();
        return r;
    }

private:
    static remote_region region_of(const region_record& r) {
        remote_region rr;
        rr.addr = r.addr;
        rr.len = r.len;
        rr.dev = r.dev;
        rr.packed_key.assign(r.rkey.begin(), r.rkey.end());
        rr.kind = r.kind;
        rr.ipc_handle.assign(r.ipc_handle.begin(), r.ipc_handle.end());
        rr.ipc_offset = r.ipc_offset;
        rr.ipc_alloc_size = r.ipc_alloc_size;
        return rr;
    }

    void sort_regions() {
        std::stable_sort(regions_.begin(), regions_.end(), [](const auto& a, const auto& b) { return a.addr < b.addr; });
    }

    static void on_error(void* arg, ucp_ep_h, ucs_status_t s) noexcept {
        static_cast<remote_peer*>(arg)->mark_failed(s);
    }

    std::string name_;
    std::string host_id_;
    error_mode mode_;
    host::peer_process process_;
    std::atomic<std::uint64_t>* failures_;  // before ep_, whose error handler uses it
    peer_event_queue* events_;              // likewise
    slot_ref handle_;
    endpoint ep_;
    std::vector<std::byte> worker_address_;
    std::uint32_t pid_;
    std::uint64_t pid_namespace_;
    std::uint64_t start_time_;
    std::vector<remote_region> regions_;
    std::atomic<ucs_status_t> failure_{UCS_OK};
    std::unique_ptr<host::mailbox_writer> mailbox_;
};

}  // namespace detail
FERRY_NAMESPACE_END
