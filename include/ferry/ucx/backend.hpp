#pragma once

#include <ferry/desc.hpp>
#include <ferry/detail/metadata.hpp>
#include <ferry/detail/slot_table.hpp>
#include <ferry/handles.hpp>
#include <ferry/notif_map.hpp>
#include <ferry/policy.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/config.hpp>
#include <ferry/ucx/context.hpp>
#include <ferry/ucx/memory.hpp>
#include <ferry/ucx/notif.hpp>
#include <ferry/ucx/region.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/ucx/ucx_status.hpp>
#include <ferry/ucx/worker.hpp>
#include <ferry/ucx/xfer_state.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_cost.hpp>

#include <ucp/api/ucp.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

FERRY_NAMESPACE_BEGIN

namespace detail {

inline std::string hex(std::uintptr_t v) {
    char buf[2 + 16 + 1];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}

inline std::string describe(const desc& d) {
    return "[" + hex(d.addr) + ", +" + std::to_string(d.len) + ") on device " + std::to_string(d.dev);
}

}  // namespace detail

/// A transfer backend over UCX: registered memory, metadata exchange,
/// descriptor-list READ/WRITE over UCX RMA and notifications over UCX active
/// messages. Not copyable or movable: UCX callbacks hold its address.
template <class Policy = default_policy>
class ucx_backend {
    static_assert(is_policy<Policy>::value, "ucx_backend<Policy>: Policy must be ferry::policy<Progress, Memory>");
    static_assert(std::is_same_v<typename Policy::progress_mode, progress::inline_poll>,
                  "ucx_backend: this version implements progress::inline_poll only");
    static_assert(std::is_same_v<typename Policy::memory_kind, memory::host>,
                  "ucx_backend: this version implements memory::host only");

public:
    using policy_type = Policy;
    using region_type = region;

    explicit ucx_backend(std::string name) : ucx_backend(ucx_config{std::move(name), {}}) {}

    explicit ucx_backend(ucx_config cfg)
        : config_(validated(std::move(cfg))),
          context_(std::make_shared<detail::context>(config_, UCP_FEATURE_RMA | UCP_FEATURE_AM, false)),
          inbox_(config_.max_notif_size),
          worker_(context_->get(), UCS_THREAD_MODE_SINGLE),
          registry_(std::make_shared<detail::registry>()) {
        inbox_.attach(worker_.get());
        worker_address_ = worker_.address();
    }

    ucx_backend(const ucx_backend&) = delete;
    ucx_backend& operator=(const ucx_backend&) = delete;

    ~ucx_backend() { shut_down(); }

    [[nodiscard]] const std::string& name() const noexcept { return config_.name; }
    [[nodiscard]] const ucx_config& config() const noexcept { return config_; }

    // ---- memory ----------------------------------------------------------

    /// Registers [ptr, ptr + len) for transfers. The memory stays the
    /// caller's; it must outlive the returned region.
    [[nodiscard]] region register_memory(void* ptr, std::size_t len, std::uint32_t dev = 0) {
        if (ptr == nullptr) throw error(status::invalid_argument, "register_memory: ptr is null");
        if (len == 0) throw error(status::invalid_argument, "register_memory: len is 0");
        if (reinterpret_cast<std::uintptr_t>(ptr) + len < reinterpret_cast<std::uintptr_t>(ptr))
            throw error(status::invalid_argument, "register_memory: [ptr, ptr + len) wraps around");
        check_device("register_memory", dev);
        return add_region(ptr, len, dev);
    }

    /// Allocates `len` bytes through UCX (UCP_MEM_MAP_ALLOCATE) and registers
    /// them. On one host a peer maps such memory, and a put becomes a store.
    [[nodiscard]] region allocate(std::size_t len, std::uint32_t dev = 0) {
        if (len == 0) throw error(status::invalid_argument, "allocate: len is 0");
        check_device("allocate", dev);
        return add_region(nullptr, len, dev);
    }

    // ---- metadata and peers ---------------------------------------------

    /// This agent's name, worker address and every region registered now.
    [[nodiscard]] std::vector<std::byte> local_metadata() const {
        detail::metadata_view md;
        md.ucx_version = detail::ucx_library_version();
        md.name = config_.name;
        md.worker_address = worker_address_;
        for (const auto& r : registry_->regions())
            md.regions.push_back({r->begin(), r->mem.size(), r->dev, r->mem.packed_rkey()});
        return detail::encode_metadata(md);
    }

    /// Validates a peer's blob completely, connects to it and unpacks its
    /// rkeys. Loading a name that is already loaded replaces that peer (a
    /// restarted agent); handles to the old one become stale.
    peer load_remote(std::span<const std::byte> blob) {
        auto md = detail::decode_metadata(blob);
        auto p = std::make_unique<detail::remote_peer>(worker_.get(), md, config_.peer_error_handling);
        if (auto it = peers_by_name_.find(p->name()); it != peers_by_name_.end()) unload_remote(peer{it->second});
        std::string name = p->name();
        auto ref = peers_.insert(std::move(p));
        peers_by_name_[std::move(name)] = ref;
        return peer{ref};
    }

    /// Forgets a peer. Transfers prepared for it then fail with no_such_peer;
    /// its endpoint closes once transfers already in flight to it complete.
    void unload_remote(peer p) {
        auto gone = peers_.take(p.ref);
        if (!gone) throw error(status::no_such_peer, "unload_remote: the peer handle is unknown or already unloaded");
        peers_by_name_.erase(gone->name());
        retiring_.push_back(std::move(gone));
        closing_.reserve(closing_.size() + retiring_.size());
        reap();
    }

    /// The peer loaded under `name`, if any. For set-up, not the hot path.
    [[nodiscard]] std::optional<peer> find_peer(std::string_view name) const {
        auto it = peers_by_name_.find(name);
        if (it == peers_by_name_.end()) return std::nullopt;
        return peer{it->second};
    }

    /// The regions a loaded peer published, as descriptors in its address space.
    [[nodiscard]] std::vector<desc> remote_regions(peer p) const {
        auto* target = peers_.get(p.ref);
        if (!target) throw error(status::no_such_peer, "remote_regions: the peer handle is unknown or was unloaded");
        return target->published();
    }

    // ---- transfers --------------------------------------------------------

    /// Checks and resolves a transfer: lists of equal length, pairs of equal
    /// length, every local block inside a registered region and every remote
    /// block inside a region the peer published. Throws, naming the first bad
    /// index, and prepares nothing if any check fails.
    [[nodiscard]] xfer prepare(xfer_op op, std::span<const desc> local, std::span<const desc> remote, peer p) {
        if (op != xfer_op::read && op != xfer_op::write)
            throw error(status::invalid_argument, "prepare: op is neither read nor write");
        auto* target = peers_.get(p.ref);
        if (!target) throw error(status::no_such_peer, "prepare: the peer handle is unknown or was unloaded");
        if (local.empty() && remote.empty())
            throw error(status::invalid_argument, "prepare: the descriptor lists are empty");
        if (local.size() != remote.size())
            throw error(status::invalid_argument, "prepare: " + std::to_string(local.size()) +
                                                      " local descriptors but " + std::to_string(remote.size()) +
                                                      " remote descriptors");
        auto st = std::make_unique<detail::xfer_state>();
        st->op = op;
        st->peer_ref = p.ref;
        st->target = target;
        st->entries.reserve(local.size());
        st->notif_storage.reserve(256);
        for (std::size_t i = 0; i < local.size(); ++i) {
            const desc& l = local[i];
            const desc& r = remote[i];
            const std::string at = "prepare: descriptor " + std::to_string(i);
            if (l.len == 0) throw error(status::invalid_argument, at + ": length is 0");
            if (l.len != r.len)
                throw error(status::invalid_argument, at + ": local length " + std::to_string(l.len) +
                                                          " differs from remote length " + std::to_string(r.len));
            auto* lr = registry_->find(l.addr, l.len, l.dev);
            if (!lr)
                throw error(status::not_registered,
                            at + ": local block " + detail::describe(l) + " is not inside any registered region");
            auto* rr = target->find(r.addr, r.len, r.dev);
            if (!rr)
                throw error(status::not_registered, at + ": remote block " + detail::describe(r) +
                                                        " is not inside any region that peer '" + target->name() +
                                                        "' published");
            st->entries.push_back({reinterpret_cast<void*>(l.addr), l.len, r.addr, rr->key.get(), (*lr)->mem.get()});
            st->total_bytes += l.len;
            if (std::find(st->regions.begin(), st->regions.end(), *lr) == st->regions.end())
                st->regions.push_back(*lr);
        }
        st->registry_epoch = registry_->epoch();
        auto ref = xfers_.insert(std::move(st));
        ++live_xfers_;
        // Room for every live transfer to become an orphan, so release never allocates.
        orphans_.reserve(orphans_.size() + live_xfers_);
        return xfer{ref};
    }

    /// Starts a prepared transfer, with an optional notification that reaches
    /// the peer after all of the transfer's data. Returns ok when it completed
    /// inline, in_progress, or an error; busy while a previous post is in flight.
    status post(xfer x, std::string_view notif = {}) noexcept {
        auto* st = xfers_.get(x.ref);
        if (!st) return status::invalid_argument;
        if (st->pending > 0) return status::busy;
        if (peers_.get(st->peer_ref) == nullptr) return status::no_such_peer;
        if (st->target->failure()) return status::peer_failed;
        if (notif.size() > config_.max_notif_size) return status::invalid_argument;
        if (st->registry_epoch != registry_->epoch() && !still_registered(*st)) return status::not_registered;
        return st->start(worker_.get(), config_.name, notif);
    }

    /// Drives the worker once if the transfer is in flight, then reports it.
    status check(xfer x) noexcept {
        auto* st = xfers_.get(x.ref);
        if (!st) return status::invalid_argument;
        if (st->pending > 0) worker_.progress();
        return st->pending > 0 ? status::in_progress : st->result;
    }

    /// Frees a transfer without blocking. One still in flight is abandoned:
    /// data already handed to UCX may still land, and its state is reclaimed
    /// when UCX reports completion.
    status release(xfer x) noexcept {
        auto st = xfers_.take(x.ref);
        if (!st) return status::invalid_argument;
        --live_xfers_;
        if (st->pending > 0) orphans_.push_back(std::move(st));
        return status::ok;
    }

    /// Expected duration of one post, from UCX's model of the endpoint.
    [[nodiscard]] xfer_cost estimate(xfer x) const {
        auto* st = xfers_.get(x.ref);
        if (!st) throw error(status::invalid_argument, "estimate: the transfer handle is unknown or released");
        if (!peers_.get(st->peer_ref)) throw error(status::no_such_peer, "estimate: the peer was unloaded");
        double seconds = 0;
        std::size_t last_len = 0;
        double last_time = 0;
        for (const auto& e : st->entries) {
            if (e.len != last_len) {
                ucp_ep_evaluate_perf_param_t param{};
                param.field_mask = UCP_EP_PERF_PARAM_FIELD_MESSAGE_SIZE;
                param.message_size = e.len;
                ucp_ep_evaluate_perf_attr_t attr{};
                attr.field_mask = UCP_EP_PERF_ATTR_FIELD_ESTIMATED_TIME;
                if (ucp_ep_evaluate_perf(st->target->ep(), &param, &attr) != UCS_OK) return {};
                last_len = e.len;
                last_time = attr.estimated_time;
            }
            seconds += last_time;
        }
        auto d = std::chrono::nanoseconds(static_cast<std::int64_t>(seconds * 1e9));
        // UCX gives no error bound; its model ignores contention and software
        // emulation, so claim no better than half of the estimate.
        return {d, d / 2, cost_method::ucx_evaluate_perf};
    }

    /// Total bytes a post of this transfer moves; 0 for an unknown handle.
    [[nodiscard]] std::uint64_t size_of(xfer x) const noexcept {
        auto* st = xfers_.get(x.ref);
        return st ? st->total_bytes : 0;
    }

    // ---- notifications ----------------------------------------------------

    /// Sends `msg` to a loaded peer; unordered with respect to transfers.
    status send_notif(peer p, std::string_view msg) noexcept {
        auto* target = peers_.get(p.ref);
        if (!target) return status::no_such_peer;
        if (target->failure()) return status::peer_failed;
        if (msg.size() > config_.max_notif_size) return status::invalid_argument;
        auto* buf = send_pool_.acquire();
        if (!buf) return status::no_memory;
        auto r = detail::send_notif_am(target->ep(), config_.name, msg, buf->storage,
                                       &detail::notif_send_pool::on_sent, buf);
        if (r == nullptr || UCS_PTR_IS_ERR(r)) {
            send_pool_.release(buf);
            return r == nullptr ? status::ok : detail::from_ucs(UCS_PTR_STATUS(r));
        }
        return status::ok;
    }

    /// Everything that arrived, grouped by sender name, in arrival order.
    [[nodiscard]] notif_map take_notifs() {
        progress();
        notif_map out;
        inbox_.drain([&](std::string_view from, std::string_view msg) { out[std::string(from)].emplace_back(msg); });
        return out;
    }

    /// Hands each notification that arrived to f(sender, message) as views,
    /// valid during the call only. Returns how many were delivered.
    template <class F>
    std::size_t poll_notifs(F&& f) {
        progress();
        return inbox_.drain(std::forward<F>(f));
    }

    /// Notifications that arrived malformed or oversized and were dropped.
    [[nodiscard]] std::uint64_t dropped_notifs() const noexcept { return inbox_.dropped(); }

    // ---- progress ---------------------------------------------------------

    /// Drives the worker until it has nothing more to do right now. In inline
    /// mode a target must call this (or check/take_notifs) for transfers that
    /// UCX emulates with active messages to complete.
    unsigned progress() noexcept {
        unsigned n = 0;
        while (unsigned k = worker_.progress()) n += k;
        reap();
        return n;
    }

    /// The underlying UCX objects, for callers who need to go below ferry.
    [[nodiscard]] ucp_context_h ucx_context() const noexcept { return context_->get(); }
    [[nodiscard]] ucp_worker_h ucx_worker() const noexcept { return worker_.get(); }
    [[nodiscard]] ucp_ep_h ucx_endpoint(peer p) const noexcept {
        auto* target = peers_.get(p.ref);
        return target ? target->ep() : nullptr;
    }

private:
    static ucx_config validated(ucx_config cfg) {
        if (cfg.name.empty() || cfg.name.size() > detail::max_agent_name)
            throw error(status::invalid_argument,
                        "ucx_backend: name must be 1 to 255 bytes, got " + std::to_string(cfg.name.size()));
        if (cfg.max_notif_size > (std::size_t{1} << 30))
            throw error(status::invalid_argument, "ucx_backend: max_notif_size is larger than 1 GiB");
        return cfg;
    }

    static void check_device(const char* what, std::uint32_t dev) {
        if (dev != 0)
            throw error(status::invalid_argument, std::string(what) + ": dev " + std::to_string(dev) +
                                                      " given, but memory::host takes device 0 only");
    }

    region add_region(void* ptr, std::size_t len, std::uint32_t dev) {
        auto r = std::make_shared<detail::local_region>(context_, ptr, len, dev, UCS_MEMORY_TYPE_HOST);
        registry_->add(r);
        return region(registry_, std::move(r));
    }

    bool still_registered(detail::xfer_state& st) const noexcept {
        for (const auto& r : st.regions)
            if (!registry_->holds(r.get())) return false;
        st.registry_epoch = registry_->epoch();
        return true;
    }

    // Frees abandoned transfers that have completed, closes retired peers once
    // nothing is in flight to them, and frees finished close requests.
    void reap() noexcept {
        std::erase_if(orphans_, [](const auto& st) { return st->pending == 0; });
        for (auto it = retiring_.begin(); it != retiring_.end();) {
            if ((*it)->in_flight > 0) {
                ++it;
                continue;
            }
            auto r = (*it)->close();
            if (r != nullptr && !UCS_PTR_IS_ERR(r)) closing_.push_back(r);
            it = retiring_.erase(it);
        }
        std::erase_if(closing_, [](void* r) {
            if (ucp_request_check_status(r) == UCS_INPROGRESS) return false;
            ucp_request_free(r);
            return true;
        });
    }

    void shut_down() noexcept {
        using clock = std::chrono::steady_clock;
        const auto deadline = clock::now() + config_.close_timeout;
        auto busy = [this] {
            bool any = false;
            xfers_.for_each([&](detail::xfer_state& st) { any = any || st.pending > 0; });
            return any;
        };
        while (busy() && clock::now() < deadline) worker_.progress();
        reap();
        // Peers go before the worker; transfers still outstanding must not
        // reach for them when the worker cancels their requests.
        xfers_.for_each([](detail::xfer_state& st) { st.target = nullptr; });
        for (auto& st : orphans_) st->target = nullptr;

        peers_.for_each([this](detail::remote_peer& p) {
            auto r = p.close();
            if (r != nullptr && !UCS_PTR_IS_ERR(r)) closing_.push_back(r);
        });
        for (auto& p : retiring_) {
            auto r = p->close();
            if (r != nullptr && !UCS_PTR_IS_ERR(r)) closing_.push_back(r);
        }
        while (!closing_.empty() && clock::now() < deadline) {
            worker_.progress();
            reap();
        }
        // Whatever is still open is cancelled when the worker is destroyed;
        // the requests are released then.
        for (void* r : closing_) ucp_request_free(r);
        closing_.clear();
    }

    ucx_config config_;
    std::shared_ptr<detail::context> context_;
    // Declared before the worker so that they outlive it: destroying the
    // worker completes outstanding requests, whose callbacks touch them.
    detail::slot_table<detail::xfer_state> xfers_;
    std::vector<std::unique_ptr<detail::xfer_state>> orphans_;
    std::size_t live_xfers_ = 0;
    detail::notif_send_pool send_pool_;
    detail::notif_inbox inbox_;
    detail::worker worker_;
    std::shared_ptr<detail::registry> registry_;
    std::vector<std::byte> worker_address_;
    detail::slot_table<detail::remote_peer> peers_;
    std::map<std::string, detail::slot_ref, std::less<>> peers_by_name_;
    std::vector<std::unique_ptr<detail::remote_peer>> retiring_;
    std::vector<void*> closing_;
};

FERRY_NAMESPACE_END
