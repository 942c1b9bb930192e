#pragma once

// NIXL's C++ agent API over ucx_backend: an engine that calls nixlAgent
// switches to ferry by including this header and naming
// ferry::nixl::nixlAgent (host memory) or ferry::nixl::basic_agent<memory::cuda>
// (with <ferry/cuda.hpp>). Same names, argument shapes and nixl_status_t
// results; ferry's errors become NIXL's codes instead of exceptions. What
// ferry cannot do returns NIXL_ERR_NOT_SUPPORTED. The README's "NIXL's agent,
// on ferry" says, method by method, what is the same and what differs.
#include <ferry/directory/client.hpp>
#include <ferry/directory/listener.hpp>
#include <ferry/ferry.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace nixl {

// NIXL's enumerations, with NIXL's values.
enum nixl_mem_t { DRAM_SEG, VRAM_SEG, BLK_SEG, OBJ_SEG, FILE_SEG };
enum nixl_xfer_op_t { NIXL_READ, NIXL_WRITE };
enum nixl_status_t {
    NIXL_IN_PROG = 1,
    NIXL_SUCCESS = 0,
    NIXL_ERR_NOT_POSTED = -1,
    NIXL_ERR_INVALID_PARAM = -2,
    NIXL_ERR_BACKEND = -3,
    NIXL_ERR_NOT_FOUND = -4,
    NIXL_ERR_MISMATCH = -5,
    NIXL_ERR_NOT_ALLOWED = -6,
    NIXL_ERR_REPOST_ACTIVE = -7,
    NIXL_ERR_UNKNOWN = -8,
    NIXL_ERR_NOT_SUPPORTED = -9,
    NIXL_ERR_REMOTE_DISCONNECT = -10,
    NIXL_ERR_CANCELED = -11,
    NIXL_ERR_NO_TELEMETRY = -12,
};

using nixl_blob_t = std::string;
using nixl_backend_t = std::string;
using nixl_b_params_t = std::unordered_map<std::string, std::string>;
using nixl_mem_list_t = std::vector<nixl_mem_t>;
using nixl_notifs_t = std::unordered_map<std::string, std::vector<nixl_blob_t>>;
inline const std::string NIXL_INIT_AGENT;  // the local side of prepXferDlist
/// The port nixl_opt_args_t::port names unless told otherwise, as NIXL's
/// (and ferry.nixl's DEFAULT_COMM_PORT).
inline constexpr int default_comm_port = 8888;

struct nixlBasicDesc {
    std::uintptr_t addr = 0;
    std::size_t len = 0;
    std::uint64_t devId = 0;
};

struct nixlBlobDesc : nixlBasicDesc {
    nixl_blob_t metaInfo;
};

template <class Desc>
class nixlDescList {
public:
    explicit nixlDescList(nixl_mem_t type) : type_(type) {}
    void addDesc(const Desc& d) { descs_.push_back(d); }
    [[nodiscard]] int descCount() const noexcept { return static_cast<int>(descs_.size()); }
    [[nodiscard]] bool isEmpty() const noexcept { return descs_.empty(); }
    [[nodiscard]] nixl_mem_t getType() const noexcept { return type_; }
    [[nodiscard]] const Desc& operator[](std::size_t i) const { return descs_.at(i); }
    void clear() noexcept { descs_.clear(); }

private:
    nixl_mem_t type_;
    std::vector<Desc> descs_;
};

using nixl_reg_dlist_t = nixlDescList<nixlBlobDesc>;
using nixl_xfer_dlist_t = nixlDescList<nixlBasicDesc>;

class nixlBackendH {};

/// The optional arguments NIXL's calls take; ferry reads notifMsg,
/// hasNotif, skipDescMerge, and ipAddr and port (the listener of another
/// agent, for sendLocalMD, fetchRemoteMD and invalidateLocalMD), and ignores
/// the backend list (one backend).
struct nixl_opt_args_t {
    std::vector<nixlBackendH*> backends;
    nixl_blob_t notifMsg;
    bool hasNotif = false;
    bool skipDescMerge = false;
    std::string ipAddr;
    int port = default_comm_port;
    // ferry's addition: the path createXferReq / makeXferReq prepare on
    // (automatic picks as prepare does; a named one is refused if it cannot
    // serve every descriptor). NIXL's agent has no such choice.
    xfer_path path = xfer_path::automatic;
};

struct nixlAgentConfig {
    bool useProgThread = false;
    bool useListenThread = false;
    int listenPort = 0;

    nixlAgentConfig() = default;
    explicit nixlAgentConfig(bool use_prog_thread, bool use_listen_thread = false, int port = 0)
        : useProgThread(use_prog_thread), useListenThread(use_listen_thread), listenPort(port) {}
};

/// A prepared transfer: ferry's handle, its notification and its owner's peer.
class nixlXferReqH {
public:
    xfer x;
    nixl_blob_t notif;
    bool has_notif = false;
};

/// A descriptor list prepared for one side of makeXferReq.
class nixlDlistH {
public:
    std::string agent;  // empty: local
    std::vector<desc> descs;
};

namespace detail {

[[nodiscard]] inline nixl_status_t to_nixl(status s) noexcept {
    switch (s) {
        case status::ok: return NIXL_SUCCESS;
        case status::in_progress: return NIXL_IN_PROG;
        case status::invalid_argument: return NIXL_ERR_INVALID_PARAM;
        case status::not_registered:
        case status::no_such_peer: return NIXL_ERR_NOT_FOUND;
        case status::busy: return NIXL_ERR_REPOST_ACTIVE;
        case status::canceled: return NIXL_ERR_CANCELED;
        case status::peer_failed: return NIXL_ERR_REMOTE_DISCONNECT;
        default: return NIXL_ERR_BACKEND;
    }
}

/// extra's listener address, or nothing: NIXL then names etcd, which this
/// header does not use (ferry's etcd directory needs libcurl, and an engine
/// that includes nixl.hpp must build without it).
[[nodiscard]] inline bool names_listener(const nixl_opt_args_t* extra) noexcept {
    return extra && !extra->ipAddr.empty();
}

[[nodiscard]] inline std::uint16_t listener_port(int port) {
    if (port <= 0 || port > 65535)
        throw error(status::invalid_argument, "nixl: port " + std::to_string(port) + " is outside 1..65535");
    return static_cast<std::uint16_t>(port);
}

template <class F>
nixl_status_t guarded(F&& f) noexcept {
    try {
        return f();
    } catch (const error& e) {
        return to_nixl(e.code_status());
    } catch (const std::bad_alloc&) {
        return NIXL_ERR_BACKEND;
    } catch (...) {
        return NIXL_ERR_UNKNOWN;
    }
}

}  // namespace detail

/// nixlAgent over ucx_backend<policy<progress, Memory>>: the progress mode
/// follows nixlAgentConfig::useProgThread, so both are compiled and one is
/// made. Not copyable; the handles it gives out are its own.
template <class Memory>
class basic_agent {
public:
    using inline_backend = ucx_backend<policy<progress::inline_poll, Memory>>;
    using thread_backend = ucx_backend<policy<progress::thread, Memory>>;

    /// useListenThread: the agent owns a metadata_listener on every
    /// interface, as NIXL's, at listenPort (0: any free port, which
    /// listenPort() names). It serves this agent's metadata, published again
    /// whenever registerMem or deregisterMem changes it, and keeps what
    /// peers push (checkRemoteMD loads it) or invalidate. Throws
    /// ferry::error, as NIXL's constructor may throw, if the backend or the
    /// listener cannot be made.
    basic_agent(const std::string& name, const nixlAgentConfig& cfg) : name_(name) {
        if (cfg.useProgThread) backend_.template emplace<std::unique_ptr<thread_backend>>(
            std::make_unique<thread_backend>(ucx_config{name, {}}));
        else backend_.template emplace<std::unique_ptr<inline_backend>>(
            std::make_unique<inline_backend>(ucx_config{name, {}}));
        if (cfg.useListenThread) {
            if (cfg.listenPort < 0 || cfg.listenPort > 65535)
                throw error(status::invalid_argument,
                            "nixlAgent: listenPort " + std::to_string(cfg.listenPort) + " is outside 0..65535");
            listener_config lc;
            lc.bind_address = "0.0.0.0";
            lc.port = static_cast<std::uint16_t>(cfg.listenPort);
            listener_ = std::make_unique<metadata_listener>(lc);
            republish();
        }
    }
    basic_agent(const basic_agent&) = delete;
    basic_agent& operator=(const basic_agent&) = delete;

    // ---- plugins and backends ------------------------------------------------
    nixl_status_t getAvailPlugins(std::vector<nixl_backend_t>& plugins) const {
        plugins = {"UCX"};
        return NIXL_SUCCESS;
    }
    nixl_status_t getPluginParams(const nixl_backend_t& type, nixl_mem_list_t& mems, nixl_b_params_t& params) const {
        if (type != "UCX") return NIXL_ERR_NOT_FOUND;
        mems = std::is_same_v<Memory, memory::host> ? nixl_mem_list_t{DRAM_SEG} : nixl_mem_list_t{DRAM_SEG, VRAM_SEG};
        params.clear();
        return NIXL_SUCCESS;
    }
    /// "UCX" only: the one backend, made with the agent.
    nixl_status_t createBackend(const nixl_backend_t& type, const nixl_b_params_t&, nixlBackendH*& backend) {
        if (type != "UCX") return NIXL_ERR_NOT_SUPPORTED;
        backend = &ucx_handle_;
        return NIXL_SUCCESS;
    }

    // ---- memory ----------------------------------------------------------------
    /// Registers every descriptor; on a failure, none stays registered.
    nixl_status_t registerMem(const nixl_reg_dlist_t& descs, const nixl_opt_args_t* = nullptr) {
        if (descs.getType() != DRAM_SEG && descs.getType() != VRAM_SEG) return NIXL_ERR_NOT_SUPPORTED;
        return detail::guarded([&] {
            std::vector<std::pair<key, region>> made;
            for (int i = 0; i < descs.descCount(); ++i) {
                const auto& d = descs[static_cast<std::size_t>(i)];
                made.emplace_back(key{d.addr, d.len, d.devId},
                                  visit([&](auto& b) {
                                      return b.register_memory(reinterpret_cast<void*>(d.addr), d.len,
                                                               static_cast<std::uint32_t>(d.devId));
                                  }));
            }
            for (auto& [k, r] : made) registered_.emplace_back(k, std::move(r));
            republish();
            return NIXL_SUCCESS;
        });
    }
    /// Deregisters the descriptors in order, as registerMem registered them; stops at the first it did not
    /// register (NIXL_ERR_NOT_FOUND) or that a transfer uses (NIXL_ERR_REPOST_ACTIVE), which stays registered.
    nixl_status_t deregisterMem(const nixl_reg_dlist_t& descs, const nixl_opt_args_t* = nullptr) {
        return detail::guarded([&] {
            // Those before a failure are gone either way: publish what is left.
            nixl_status_t s = NIXL_SUCCESS;
            try {
                s = deregister_each(descs);
            } catch (...) {
                republish();
                throw;
            }
            republish();
            return s;
        });
    }

    // ---- metadata and peers ----------------------------------------------------
    nixl_status_t getLocalMD(nixl_blob_t& str) const {
        return detail::guarded([&] {
            const auto blob = visit([](auto& b) { return b.local_metadata(); });
            str.assign(reinterpret_cast<const char*>(blob.data()), blob.size());
            return NIXL_SUCCESS;
        });
    }
    nixl_status_t loadRemoteMD(const nixl_blob_t& remote_metadata, std::string& agent_name) {
        return detail::guarded([&] {
            agent_name = load(std::as_bytes(std::span(remote_metadata.data(), remote_metadata.size())));
            return NIXL_SUCCESS;
        });
    }
    nixl_status_t invalidateRemoteMD(const std::string& remote_agent) {
        return detail::guarded([&] {
            const auto p = find(remote_agent);
            if (!p) return NIXL_ERR_NOT_FOUND;
            visit([&](auto& b) { b.unload_remote(*p); });
            return NIXL_SUCCESS;
        });
    }
    /// NIXL_SUCCESS once the agent is loaded and every descriptor lies in memory it published. An agent
    /// that is not loaded but pushed its metadata to our listener (sendLocalMD) is loaded first, as NIXL's
    /// listener thread would have done already.
    nixl_status_t checkRemoteMD(const std::string& remote_name, const nixl_xfer_dlist_t& descs) const {
        return detail::guarded([&] {
            auto p = find(remote_name);
            if (!p && listener_) {
                if (const auto pushed = listener_->pushed(remote_name)) {
                    load(*pushed);
                    p = find(remote_name);
                }
            }
            if (!p) return NIXL_ERR_NOT_FOUND;
            const auto published = visit([&](auto& b) { return b.remote_regions(*p); });
            for (int i = 0; i < descs.descCount(); ++i) {
                const auto& d = descs[static_cast<std::size_t>(i)];
                const bool inside = std::any_of(published.begin(), published.end(), [&](const desc& r) {
                    return r.dev == d.devId && d.addr >= r.addr && d.len <= r.len && d.addr - r.addr <= r.len - d.len;
                });
                if (!inside) return NIXL_ERR_NOT_FOUND;
            }
            return NIXL_SUCCESS;
        });
    }
    nixl_status_t makeConnection(const std::string& remote_agent, const nixl_opt_args_t* = nullptr) {
        return detail::guarded([&] {
            const auto p = find(remote_agent);
            if (!p) return NIXL_ERR_NOT_FOUND;
            return detail::to_nixl(visit([&](auto& b) { return b.connect(*p, std::chrono::seconds(10)); }));
        });
    }

    // The listener-backed metadata calls: extra->ipAddr and port name another agent's listener
    // (useListenThread). Without ipAddr NIXL would use etcd: NIXL_ERR_NOT_SUPPORTED here (see
    // detail::names_listener). Each call is done when it returns, where NIXL's may still be under way in
    // its listener thread. A listener that cannot be reached gives NIXL_ERR_REMOTE_DISCONNECT (refused) or
    // NIXL_ERR_BACKEND (timed out, 5 s); one that refuses the request, NIXL_ERR_INVALID_PARAM; one that
    // publishes nothing yet (fetchRemoteMD), NIXL_ERR_NOT_FOUND. A port outside 1..65535 is
    // NIXL_ERR_INVALID_PARAM.

    /// Pushes this agent's metadata to the listener at ipAddr:port, which keeps it for its owner's
    /// checkRemoteMD.
    nixl_status_t sendLocalMD(const nixl_opt_args_t* extra_params = nullptr) const {
        if (!detail::names_listener(extra_params)) return NIXL_ERR_NOT_SUPPORTED;
        return detail::guarded([&] {
            const auto blob = visit([](auto& b) { return b.local_metadata(); });
            push_metadata(extra_params->ipAddr, detail::listener_port(extra_params->port), blob);
            return NIXL_SUCCESS;
        });
    }
    /// Fetches the metadata the listener at ipAddr:port serves and loads it (loadRemoteMD). A listener that
    /// serves another agent than `remote_name` gives NIXL_ERR_MISMATCH, and nothing is loaded.
    nixl_status_t fetchRemoteMD(const std::string& remote_name, const nixl_opt_args_t* extra_params = nullptr) {
        if (!detail::names_listener(extra_params)) return NIXL_ERR_NOT_SUPPORTED;
        return detail::guarded([&] {
            const auto blob = fetch_metadata(extra_params->ipAddr, detail::listener_port(extra_params->port));
            if (ferry::detail::decode_metadata(blob).name != remote_name) return NIXL_ERR_MISMATCH;
            load(blob);
            return NIXL_SUCCESS;
        });
    }
    /// Tells the listener at ipAddr:port that this agent's metadata is no longer valid: that listener's
    /// agent drops it (unloads this agent) at its next call that names or loads an agent, or getNotifs.
    nixl_status_t invalidateLocalMD(const nixl_opt_args_t* extra_params = nullptr) const {
        if (!detail::names_listener(extra_params)) return NIXL_ERR_NOT_SUPPORTED;
        return detail::guarded([&] {
            invalidate_metadata(extra_params->ipAddr, detail::listener_port(extra_params->port), name_);
            return NIXL_SUCCESS;
        });
    }
    /// ferry's addition: the port this agent's listener took (useListenThread; listenPort 0 picks a free
    /// one), or 0 without a listener.
    [[nodiscard]] int listenPort() const noexcept { return listener_ ? listener_->port() : 0; }

    // ---- transfers -------------------------------------------------------------
    nixl_status_t createXferReq(nixl_xfer_op_t operation, const nixl_xfer_dlist_t& local_descs,
                                const nixl_xfer_dlist_t& remote_descs, const std::string& remote_agent,
                                nixlXferReqH*& req_hndl, const nixl_opt_args_t* extra_params = nullptr) {
        return make_request(operation, to_descs(local_descs), to_descs(remote_descs), remote_agent, req_hndl,
                            extra_params);
    }
    nixl_status_t prepXferDlist(const std::string& agent_name, const nixl_xfer_dlist_t& descs,
                                nixlDlistH*& dlist_hndl, const nixl_opt_args_t* = nullptr) {
        return detail::guarded([&] {
            if (!agent_name.empty() && !find(agent_name)) return NIXL_ERR_NOT_FOUND;
            auto h = std::make_unique<nixlDlistH>();
            h->agent = agent_name;
            h->descs = to_descs(descs);
            dlist_hndl = h.get();
            dlists_.push_back(std::move(h));
            return NIXL_SUCCESS;
        });
    }
    nixl_status_t makeXferReq(nixl_xfer_op_t operation, const nixlDlistH* local_side,
                              const std::vector<int>& local_indices, const nixlDlistH* remote_side,
                              const std::vector<int>& remote_indices, nixlXferReqH*& req_hndl,
                              const nixl_opt_args_t* extra_params = nullptr) {
        if (!local_side || !remote_side || !local_side->agent.empty() || remote_side->agent.empty())
            return NIXL_ERR_INVALID_PARAM;
        std::vector<desc> local, remote;
        if (!pick(*local_side, local_indices, local) || !pick(*remote_side, remote_indices, remote))
            return NIXL_ERR_INVALID_PARAM;
        return make_request(operation, std::move(local), std::move(remote), remote_side->agent, req_hndl,
                            extra_params);
    }
    nixl_status_t releasedDlistH(nixlDlistH* dlist_hndl) {
        auto it = std::find_if(dlists_.begin(), dlists_.end(), [&](const auto& h) { return h.get() == dlist_hndl; });
        if (it == dlists_.end()) return NIXL_ERR_NOT_FOUND;
        dlists_.erase(it);
        return NIXL_SUCCESS;
    }

    /// ferry's post: NIXL_SUCCESS when done inside the call, NIXL_IN_PROG, or an error.
    nixl_status_t postXferReq(nixlXferReqH* req_hndl, const nixl_opt_args_t* extra_params = nullptr) noexcept {
        if (!req_hndl) return NIXL_ERR_INVALID_PARAM;
        const bool has = extra_params && extra_params->hasNotif;
        const std::string_view notif = has ? std::string_view(extra_params->notifMsg)
                                           : (req_hndl->has_notif ? std::string_view(req_hndl->notif) : std::string_view());
        return detail::to_nixl(visit([&](auto& b) noexcept { return b.post(req_hndl->x, notif); }));
    }
    nixl_status_t getXferStatus(nixlXferReqH* req_hndl) noexcept {
        if (!req_hndl) return NIXL_ERR_INVALID_PARAM;
        return detail::to_nixl(visit([&](auto& b) noexcept { return b.check(req_hndl->x); }));
    }
    /// Frees the handle; a transfer still in flight is abandoned safely (ferry's release).
    nixl_status_t releaseXferReq(nixlXferReqH* req_hndl) {
        auto it = std::find_if(requests_.begin(), requests_.end(), [&](const auto& r) { return r.get() == req_hndl; });
        if (it == requests_.end()) return NIXL_ERR_NOT_FOUND;
        const auto s = visit([&](auto& b) { return b.release((*it)->x); });
        requests_.erase(it);
        return detail::to_nixl(s);
    }

    // ---- notifications ---------------------------------------------------------------
    /// Appends what arrived to `notif_map`, per sender.
    /// Also applies the invalidations our listener received (invalidateLocalMD), so that an agent that
    /// only waits for notifications still drops the peers that withdrew.
    nixl_status_t getNotifs(nixl_notifs_t& notif_map, const nixl_opt_args_t* = nullptr) {
        return detail::guarded([&] {
            apply_invalidations();
            visit([&](auto& b) {
                b.poll_notifs([&](std::string_view from, std::string_view msg) {
                    notif_map[std::string(from)].emplace_back(msg);
                });
            });
            return NIXL_SUCCESS;
        });
    }
    nixl_status_t genNotif(const std::string& remote_agent, const nixl_blob_t& msg,
                           const nixl_opt_args_t* = nullptr) {
        return detail::guarded([&] {
            const auto p = find(remote_agent);
            if (!p) return NIXL_ERR_NOT_FOUND;
            return detail::to_nixl(visit([&](auto& b) { return b.send_notif(*p, msg); }));
        });
    }

    [[nodiscard]] const std::string& name() const noexcept { return name_; }

    /// The ferry backend underneath, for what NIXL's API does not say.
    template <class F>
    decltype(auto) visit(F&& f) const {
        return std::visit([&](const auto& b) -> decltype(auto) { return f(*b); }, backend_);
    }

private:
    struct key {
        std::uintptr_t addr;
        std::size_t len;
        std::uint64_t dev;
        friend bool operator==(const key&, const key&) = default;
    };

    auto find_registered(const key& k) {
        return std::find_if(registered_.begin(), registered_.end(), [&](const auto& e) { return e.first == k; });
    }

    // Every call that names an agent looks it up here, so an invalidation our listener received is
    // applied before the name is resolved.
    [[nodiscard]] std::optional<peer> find(const std::string& agent) const {
        apply_invalidations();
        return visit([&](auto& b) { return b.find_peer(agent); });
    }

    // Invalidations that came before a load concern the incarnation loaded before it, so loads apply them
    // first too.
    std::string load(std::span<const std::byte> blob) const {
        apply_invalidations();
        const peer p = visit([&](auto& b) { return b.load_remote(blob); });
        return visit([&](auto& b) { return b.peer_name(p); });
    }

    // Unloads the agents that invalidated their metadata at our listener.
    void apply_invalidations() const {
        if (!listener_) return;
        for (const auto& agent : listener_->take_invalidations())
            visit([&](auto& b) {
                if (const auto p = b.find_peer(agent)) b.unload_remote(*p);
            });
    }

    void republish() const {
        if (listener_) listener_->publish(visit([](auto& b) { return b.local_metadata(); }));
    }

    nixl_status_t deregister_each(const nixl_reg_dlist_t& descs) {
        for (int i = 0; i < descs.descCount(); ++i) {
            const auto& d = descs[static_cast<std::size_t>(i)];
            auto it = find_registered(key{d.addr, d.len, d.devId});
            if (it == registered_.end()) return NIXL_ERR_NOT_FOUND;
            visit([&](auto& b) { b.deregister_memory(it->second); });
            registered_.erase(it);
        }
        return NIXL_SUCCESS;
    }

    template <class Desc>
    static std::vector<desc> to_descs(const nixlDescList<Desc>& list) {
        std::vector<desc> out;
        out.reserve(static_cast<std::size_t>(list.descCount()));
        for (int i = 0; i < list.descCount(); ++i) {
            const auto& d = list[static_cast<std::size_t>(i)];
            out.push_back({d.addr, d.len, static_cast<std::uint32_t>(d.devId)});
        }
        return out;
    }

    static bool pick(const nixlDlistH& side, const std::vector<int>& indices, std::vector<desc>& out) {
        out.reserve(indices.size());
        for (int i : indices) {
            if (i < 0 || static_cast<std::size_t>(i) >= side.descs.size()) return false;
            out.push_back(side.descs[static_cast<std::size_t>(i)]);
        }
        return true;
    }

    nixl_status_t make_request(nixl_xfer_op_t operation, std::vector<desc> local, std::vector<desc> remote,
                               const std::string& remote_agent, nixlXferReqH*& req_hndl,
                               const nixl_opt_args_t* extra_params) {
        if (operation != NIXL_READ && operation != NIXL_WRITE) return NIXL_ERR_INVALID_PARAM;
        return detail::guarded([&] {
            const auto p = find(remote_agent);
            if (!p) return NIXL_ERR_NOT_FOUND;
            xfer_options options;
            options.coalesce = !(extra_params && extra_params->skipDescMerge);
            if (extra_params) options.path = extra_params->path;
            auto r = std::make_unique<nixlXferReqH>();
            const xfer_op op = operation == NIXL_READ ? xfer_op::read : xfer_op::write;
            r->x = visit([&](auto& b) {
                return b.prepare(op, std::span<const desc>(local), std::span<const desc>(remote), *p, options);
            });
            if (extra_params && extra_params->hasNotif) {
                r->notif = extra_params->notifMsg;
                r->has_notif = true;
            }
            req_hndl = r.get();
            requests_.push_back(std::move(r));
            return NIXL_SUCCESS;
        });
    }

    std::string name_;
    nixlBackendH ucx_handle_;
    std::variant<std::unique_ptr<inline_backend>, std::unique_ptr<thread_backend>> backend_;
    // Destroyed before the backend; a region may outlive it anyway.
    std::vector<std::pair<key, region>> registered_;
    std::vector<std::unique_ptr<nixlXferReqH>> requests_;
    std::vector<std::unique_ptr<nixlDlistH>> dlists_;
    // Last: it publishes the backend's metadata, so it stops serving before the backend goes.
    std::unique_ptr<metadata_listener> listener_;
};

using nixlAgent = basic_agent<memory::host>;

}  // namespace nixl
FERRY_NAMESPACE_END
