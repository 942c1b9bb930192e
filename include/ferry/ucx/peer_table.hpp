#pragma once

#include <ferry/desc.hpp>
#include <ferry/detail/host_id.hpp>
#include <ferry/detail/metadata.hpp>
#include <ferry/detail/process_id.hpp>
#include <ferry/detail/slot_table.hpp>
#include <ferry/detail/thread_owner.hpp>
#include <ferry/handles.hpp>
#include <ferry/peer_event.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/config.hpp>
#include <ferry/ucx/context.hpp>  // ucx_library_version
#include <ferry/ucx/memory.hpp>
#include <ferry/ucx/peer_events.hpp>
#include <ferry/ucx/pid_watch.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/ucx/worker.hpp>
#include <ferry/version.hpp>

#include <ucp/api/ucp.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// The metadata blob this agent publishes: its name, its worker's address
/// and every region registered now.
inline std::vector<std::byte> publish_metadata(const std::string& name, std::span<const std::byte> worker_address,
                                               const registry& regions, host::mailbox_address mailbox = {}) {
    auto snapshot = regions.regions();
    metadata_view md;
    md.ucx_version = ucx_library_version();
    md.name = name;
    md.worker_address = worker_address;
    md.host_id = host_id();
    md.pid = process_id();
    md.pid_namespace = pid_namespace();
    md.start_time = process_start_time();
    md.mailbox_fd = mailbox.fd;
    md.mailbox_inode = mailbox.inode;
    md.mailbox_size = mailbox.size;
    for (const auto& r : snapshot) {
        region_record rec;
        rec.addr = r->begin();
        rec.len = r->mem.size();
        rec.dev = r->dev;
        rec.rkey = r->mem.packed_rkey();
        rec.kind = r->facts.kind;
        rec.ipc_handle = r->facts.ipc_handle;
        rec.ipc_offset = r->facts.ipc_offset;
        rec.ipc_alloc_size = r->facts.ipc_alloc_size;
        md.regions.push_back(rec);
    }
    return encode_metadata(md);
}

/// The peers loaded from their metadata: a slot table that the hot path
/// reads without a lock, names for set-up, and peers being closed. Loading,
/// unloading and closing run where the worker may be touched (the caller
/// passes the worker's owner for the checks); lookups run on any thread.
template <class Mutex>
class peer_table {
    struct entry {
        std::shared_ptr<remote_peer> p;
    };

public:
    /// `events`, if given, receives what happens to the peers (peer_event).
    explicit peer_table(peer_event_queue* events = nullptr) noexcept : events_(events) {}

    /// load_remote's work: connects to the peer `md` describes and files it
    /// under its name, retiring a peer loaded under that name before.
    /// `mailbox_sender`: as remote_peer takes it.
    peer load(ucp_worker_h worker, const metadata_view& md, error_mode mode, const thread_owner& owner,
              std::string_view mailbox_sender = {}) {
        {
            // A later blob of a peer loaded already (it registered more
            // memory, say): the same peer, handle and endpoint, its regions
            // brought up to date; transfers prepared for it go on.
            std::lock_guard lock(mutex_);
            if (auto it = by_name_.find(md.name); it != by_name_.end()) {
                auto* e = peers_.get(it->second);
                if (e && !e->p->failed() && e->p->same_incarnation(md)) {
                    e->p->refresh(md);
                    return peer{it->second};
                }
            }
        }
        std::shared_ptr<remote_peer> p;
        try {
            p = std::make_shared<remote_peer>(worker, md, mode, &failures_, events_, mailbox_sender);
        } catch (const error& e) {
            std::string what = "load_remote: cannot connect to '" + std::string(md.name) + "': " + e.what();
            if (e.ucx_status() == UCS_ERR_UNREACHABLE && mode == error_mode::peer)
                what += " (the peer did not answer, or, with error_mode::peer, which uses only transports "
                        "that detect a dead peer, none of this context's reaches it)";
            throw error(e.code_status(), what, e.ucx_status());
        }
        peer result;
        std::optional<peer> replaced;
        {
            std::lock_guard lock(mutex_);
            if (auto it = by_name_.find(p->name()); it != by_name_.end()) {
                replaced = peer{it->second};
                retire(it->second);
            }
            auto ref = peers_.insert(std::make_unique<entry>(entry{p}));
            p->set_handle(ref);
            by_name_[p->name()] = ref;
            result = peer{ref};
        }
        if (replaced) note(peer_event_kind::replaced, p->name(), *replaced, result);
        // After the replaced event: a restart that is dead already reads
        // as replaced, then failed.
        watch_.add(*p);
        reap(owner);  // closing a peer takes mutex_ itself
        return result;
    }

    /// unload_remote's work.
    void unload(peer p, const thread_owner& owner) {
        std::string name;
        {
            std::lock_guard lock(mutex_);
            auto* e = peers_.get(p.ref);
            if (!e)
                throw error(status::no_such_peer, "unload_remote: the peer handle is unknown or already unloaded");
            name = e->p->name();
            retire(p.ref);
        }
        note(peer_event_kind::unloaded, name, p, peer{});
        reap(owner);  // closing a peer takes mutex_ itself
    }

    /// The watch over the processes of peers on this host. Only for the
    /// thread that drives the worker.
    [[nodiscard]] pid_watch& watch() noexcept { return watch_; }
    /// The watch's fd, fixed for the table's life; any thread.
    [[nodiscard]] int watch_fd() const noexcept { return watch_.fd(); }

    /// The loaded peer behind a handle, or null. No lock: for the hot path.
    [[nodiscard]] remote_peer* get(slot_ref ref) const noexcept {
        auto* e = peers_.get(ref);
        return e ? e->p.get() : nullptr;
    }

    /// As get, sharing ownership; the caller holds lock().
    [[nodiscard]] std::shared_ptr<remote_peer> share(slot_ref ref) const {
        auto* e = peers_.get(ref);
        return e ? e->p : nullptr;
    }

    /// Held while reading a peer's regions (prepare), so that it is not closed meanwhile.
    [[nodiscard]] std::unique_lock<Mutex> lock() const { return std::unique_lock<Mutex>(mutex_); }

    [[nodiscard]] std::optional<peer> find(std::string_view name) const {
        std::lock_guard lock(mutex_);
        auto it = by_name_.find(name);
        if (it == by_name_.end()) return std::nullopt;
        return peer{it->second};
    }

    [[nodiscard]] std::vector<desc> published(peer p) const {
        std::lock_guard lock(mutex_);
        auto* e = peers_.get(p.ref);
        if (!e) throw error(status::no_such_peer, "remote_regions: the peer handle is unknown or was unloaded");
        return e->p->published();
    }

    [[nodiscard]] std::string name_of(peer p) const {
        std::lock_guard lock(mutex_);
        auto* e = peers_.get(p.ref);
        if (!e) throw error(status::no_such_peer, "peer_name: the peer handle is unknown or was unloaded");
        return e->p->name();
    }

    [[nodiscard]] status status_of(peer p) const noexcept {
        auto* e = peers_.get(p.ref);
        if (!e) return status::no_such_peer;
        return e->p->failed() ? status::peer_failed : status::ok;
    }

    /// How many times a peer's endpoint has failed; bumped by UCX's error handlers.
    [[nodiscard]] std::uint64_t failures() const noexcept { return failures_.load(std::memory_order_relaxed); }

    /// Closes retired peers once nothing is in flight to them (or by force,
    /// see retire), and frees close requests that UCX has finished.
    void reap(const thread_owner& owner) noexcept {
        if (retiring_.empty() && closing_.empty()) return;
        owner.check("closing an unloaded peer");
        for (auto it = retiring_.begin(); it != retiring_.end();) {
            const bool force = (*it)->close_by_force();
            if ((*it)->in_flight > 0 && !force) {
                ++it;
                continue;
            }
            close_peer(**it, force, owner);
            it = retiring_.erase(it);
        }
        std::erase_if(closing_, [](void* r) {
            if (ucp_request_check_status(r) == UCS_INPROGRESS) return false;
            ucp_request_free(r);
            return true;
        });
    }

    /// The backend's shutdown, on the worker's owner: closes every endpoint
    /// and progresses the closes until `deadline`. A healthy peer gets a
    /// flushing close even with transfers still in flight: a forced one fails
    /// the connection under it, and UCX 1.13 aborts in a peer that is still
    /// wiring that connection up. Every endpoint and rkey goes before the
    /// worker; what is still open then is cancelled with the worker.
    void close_all(worker& w, std::chrono::steady_clock::time_point deadline) noexcept {
        watch_.clear();
        reap(w.owner());
        auto close_for_good = [&](const std::shared_ptr<remote_peer>& p) {
            close_peer(*p, p->close_by_force(), w.owner());
        };
        peers_.for_each([&](entry& e) { close_for_good(e.p); });
        for (auto& p : retiring_) close_for_good(p);
        retiring_.clear();
        while (!closing_.empty() && std::chrono::steady_clock::now() < deadline) {
            w.progress();
            reap(w.owner());
        }
        for (void* r : closing_) ucp_request_free(r);
        closing_.clear();
    }

private:
    // Takes a peer out of the table; its endpoint closes once nothing is in
    // flight to it, or at once, cancelling what is, when the peer failed or
    // transfers to it expired. Caller holds mutex_, runs where the worker may
    // be touched, and calls reap() once it has let go of the lock. The entry
    // itself is kept until the backend goes: under the thread policy a
    // send_notif or peer_status may still be reading it, having looked it up
    // just before.
    void retire(slot_ref ref) {
        auto e = peers_.take(ref);
        e->p->retired.store(true, std::memory_order_release);
        watch_.remove(*e->p);
        e->p->process().release();
        by_name_.erase(e->p->name());
        retiring_.push_back(e->p);
        closing_.reserve(closing_.size() + retiring_.size());
        retired_entries_.push_back(std::move(e));
    }

    void note(peer_event_kind kind, const std::string& name, peer about, peer replacement) noexcept {
        if (!events_) return;
        peer_event e;
        e.kind = kind;
        e.handle = about;
        e.replacement = replacement;
        try {
            e.name = name;
            e.detail = kind == peer_event_kind::unloaded ? "unload_remote" : "load_remote took a restarted process's metadata";
        } catch (const std::bad_alloc&) {
        }
        events_->push(std::move(e));
    }

    // The caller holds a reference to p: a forced close completes the
    // transfers in flight to it, which may free the last other reference.
    void close_peer(remote_peer& p, bool force, const thread_owner& owner) noexcept {
        owner.check("ucp_ep_close_nbx");
        ucs_status_ptr_t r;
        {
            std::lock_guard lock(mutex_);  // prepare may be reading its regions
            r = p.close(force);
        }
        if (r != nullptr && !UCS_PTR_IS_ERR(r)) closing_.push_back(r);
    }

    std::atomic<std::uint64_t> failures_{0};  // before the peers, whose error handlers bump it
    peer_event_queue* events_;                // likewise
    pid_watch watch_;                         // before the peers, whose pidfds it holds
    mutable Mutex mutex_;                     // by_name_, insertion and removal, closing peers
    slot_table<entry, Mutex> peers_;
    std::map<std::string, slot_ref, std::less<>> by_name_;
    std::vector<std::unique_ptr<entry>> retired_entries_;  // under mutex_
    // Owned by whichever thread drives the worker.
    std::vector<std::shared_ptr<remote_peer>> retiring_;
    std::vector<void*> closing_;
};

}  // namespace detail
FERRY_NAMESPACE_END
