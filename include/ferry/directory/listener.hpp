#pragma once

#include <ferry/detail/metadata.hpp>
#include <ferry/detail/socket.hpp>
#include <ferry/directory/concepts.hpp>
#include <ferry/directory/wire.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

FERRY_NAMESPACE_BEGIN

/// The largest blob a listener accepts or a client receives unless told
/// otherwise: far above any real blob (a few KiB per registered region).
inline constexpr std::size_t default_max_blob = std::size_t{16} << 20;

struct listener_config {
    /// The address to listen on. Loopback by default: a blob is a capability
    /// (see the README's threat model), so serving it beyond this host is a
    /// choice to make, e.g. "0.0.0.0" or one interface's address.
    std::string bind_address = "127.0.0.1";
    /// 0: a free port, which port() then names.
    std::uint16_t port = 0;
    /// How long one connection may take from accept to the end of its
    /// response; a client that is slower (a slow-loris sending a byte a
    /// second, or one that never reads its response) is dropped then.
    std::chrono::milliseconds io_timeout{5000};
    /// Pushed blobs larger than this are refused before anything is allocated.
    std::size_t max_blob = default_max_blob;
    /// Connections served at once; more are closed as soon as they are
    /// accepted (fetch_metadata and push_metadata try again within their
    /// timeout).
    std::size_t max_clients = 64;
    /// Distinct agents whose pushed blobs are kept; pushes from new names
    /// beyond that are refused. Bounds the invalidations waiting for
    /// take_invalidations the same way.
    std::size_t max_peers = 1024;
    /// Events kept until poll_events takes them; the oldest go first.
    std::size_t max_events = 4096;
};

/// What a listener has done, for tests and monitoring.
struct listener_stats {
    std::uint64_t fetches_served = 0;
    std::uint64_t pushes_accepted = 0;
    std::uint64_t pushes_refused = 0;  // failed validation, too large, or too many peers
    std::uint64_t invalidations_accepted = 0;
    std::uint64_t invalidations_refused = 0;  // too many waiting for take_invalidations
    std::uint64_t bad_requests = 0;    // not our protocol
    std::uint64_t timed_out = 0;       // dropped at io_timeout
    std::uint64_t turned_away = 0;     // over max_clients
    std::uint64_t events_dropped = 0;  // over max_events
};

/// Serves our metadata blob over TCP, takes the blobs peers push to it and
/// the invalidations they send (NIXL's listener: sendLocalMD, fetchRemoteMD,
/// invalidateLocalMD). One thread of its own
/// polls the listening socket and every connection, all non-blocking, so no
/// client can hold up another; see detail/wire.hpp for the protocol.
class metadata_listener {
public:
    explicit metadata_listener(listener_config config = {}) : config_(std::move(config)) {
        if (config_.max_clients == 0) throw error(status::invalid_argument, "metadata_listener: max_clients is 0");
        if (config_.io_timeout.count() <= 0)
            throw error(status::invalid_argument, "metadata_listener: io_timeout must be positive");
        open_socket();
        wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
        if (!wake_) fail_errno("eventfd");
        thread_ = std::thread([this] { run(); });
    }

    metadata_listener(const metadata_listener&) = delete;
    metadata_listener& operator=(const metadata_listener&) = delete;

    ~metadata_listener() {
        stop_.store(true, std::memory_order_relaxed);
        std::uint64_t one = 1;
        [[maybe_unused]] auto r = ::write(wake_.get(), &one, sizeof one);
        thread_.join();
    }

    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
    [[nodiscard]] const listener_config& config() const noexcept { return config_; }

    /// The blob served to fetches from now on, replacing the previous one
    /// (after registering more memory, say). Validated first: throws
    /// ferry::error(invalid_argument) and keeps the old one if it is bad.
    void publish(std::span<const std::byte> blob) {
        const auto md = detail::decode_metadata(blob);
        auto copy = std::make_shared<const std::vector<std::byte>>(blob.begin(), blob.end());
        std::lock_guard lock(mutex_);
        served_ = std::move(copy);
        served_name_ = std::string(md.name);
    }

    /// Serves nothing from now on: fetches are answered "nothing published".
    void unpublish() {
        std::lock_guard lock(mutex_);
        served_.reset();
        served_name_.clear();
    }

    /// The blob being served, if any, and the agent name inside it.
    [[nodiscard]] std::optional<std::vector<std::byte>> published() const {
        std::lock_guard lock(mutex_);
        if (!served_) return std::nullopt;
        return *served_;
    }
    [[nodiscard]] std::string published_name() const {
        std::lock_guard lock(mutex_);
        return served_name_;
    }

    /// The last blob agent `name` pushed to us (or that was stored with
    /// keep()), or nothing.
    [[nodiscard]] std::optional<std::vector<std::byte>> pushed(std::string_view name) const {
        std::lock_guard lock(mutex_);
        auto it = peers_.find(name);
        if (it == peers_.end()) return std::nullopt;
        return it->second;
    }

    /// Stores a blob obtained some other way (fetch_metadata) as if its agent
    /// had pushed it, reporting it as an event. Validates it first.
    void keep(std::span<const std::byte> blob) {
        const auto md = detail::decode_metadata(blob);
        std::lock_guard lock(mutex_);
        store_locked(std::string(md.name), std::vector<std::byte>(blob.begin(), blob.end()));
    }

    /// Forgets the blob agent `name` pushed; true if there was one.
    bool forget(std::string_view name) {
        std::lock_guard lock(mutex_);
        auto it = peers_.find(name);
        if (it == peers_.end()) return false;
        peers_.erase(it);
        return true;
    }

    /// The agents that invalidated their metadata here since the last call
    /// (invalidate_metadata), each once, for the owner to unload. The
    /// listener has already dropped their pushed blobs. A push that comes
    /// after an invalidation does not cancel it: it is a new incarnation,
    /// which the owner loads after unloading the old one.
    [[nodiscard]] std::vector<std::string> take_invalidations() {
        std::lock_guard lock(mutex_);
        std::vector<std::string> out(std::make_move_iterator(invalidated_.begin()),
                                     std::make_move_iterator(invalidated_.end()));
        invalidated_.clear();
        return out;
    }

    /// Blobs pushed since the last call, as put events, and invalidations,
    /// as remove events, waiting up to `timeout` for the first.
    [[nodiscard]] std::vector<directory_event> poll_events(std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        events_cv_.wait_for(lock, timeout, [&] { return !events_.empty(); });
        std::vector<directory_event> out(std::make_move_iterator(events_.begin()),
                                         std::make_move_iterator(events_.end()));
        events_.clear();
        return out;
    }

    [[nodiscard]] listener_stats stats() const {
        std::lock_guard lock(mutex_);
        return stats_;
    }

    /// Why the last push was refused, for logs; empty if none was.
    [[nodiscard]] std::string last_refusal() const {
        std::lock_guard lock(mutex_);
        return last_refusal_;
    }

private:
    enum class phase { header, body, reply };

    struct client {
        detail::unique_fd fd;
        detail::steady_deadline deadline;
        phase at = phase::header;
        std::array<std::byte, detail::wire_header_size> head{};
        std::size_t got = 0;
        detail::wire_header request;
        std::vector<std::byte> body;
        std::size_t body_total = 0;
        std::array<std::byte, detail::wire_header_size> reply_head{};
        std::shared_ptr<const std::vector<std::byte>> reply_body;
        std::size_t sent = 0;
        bool done = false;
    };

    [[noreturn]] void fail_errno(const std::string& what) const {
        throw error(status::invalid_argument, "metadata_listener on " + config_.bind_address + ":" +
                                                  std::to_string(config_.port) + ": " + what + ": " +
                                                  detail::errno_text(errno));
    }

    void open_socket() {
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
        addrinfo* found = nullptr;
        const std::string service = std::to_string(config_.port);
        if (const int rc = ::getaddrinfo(config_.bind_address.c_str(), service.c_str(), &hints, &found); rc != 0)
            throw error(status::invalid_argument, "metadata_listener: bind address '" + config_.bind_address +
                                                      "' is not a numeric address: " + ::gai_strerror(rc));
        std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(found, &::freeaddrinfo);
        listen_.reset(::socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        if (!listen_) fail_errno("socket");
        const int on = 1;
        if (::setsockopt(listen_.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0) fail_errno("SO_REUSEADDR");
        if (::bind(listen_.get(), found->ai_addr, found->ai_addrlen) != 0) fail_errno("bind");
        if (::listen(listen_.get(), SOMAXCONN) != 0) fail_errno("listen");
        sockaddr_storage bound{};
        socklen_t len = sizeof bound;
        if (::getsockname(listen_.get(), reinterpret_cast<sockaddr*>(&bound), &len) != 0) fail_errno("getsockname");
        port_ = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                            : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    }

    // Called with mutex_ held.
    void store_locked(std::string name, std::vector<std::byte> blob) {
        auto it = peers_.find(name);
        if (it != peers_.end())
            it->second = blob;
        else
            peers_.emplace(name, blob);
        event_locked({directory_event::kind::put, std::move(name), std::move(blob)});
    }

    // Called with mutex_ held.
    void event_locked(directory_event e) {
        if (events_.size() >= config_.max_events) {
            events_.pop_front();
            ++stats_.events_dropped;
        }
        events_.push_back(std::move(e));
        events_cv_.notify_all();
    }

    void count(std::uint64_t listener_stats::*field) {
        std::lock_guard lock(mutex_);
        ++(stats_.*field);
    }

    static void set_reply(client& c, detail::wire_reply code, std::shared_ptr<const std::vector<std::byte>> body) {
        c.reply_head = detail::encode_wire_header(static_cast<std::uint16_t>(code), body ? body->size() : 0);
        c.reply_body = std::move(body);
        c.at = phase::reply;
        c.sent = 0;
        c.body = {};
    }

    static void set_reply(client& c, detail::wire_reply code, std::string_view text) {
        text = text.substr(0, detail::max_wire_message);
        auto bytes = std::as_bytes(std::span(text.data(), text.size()));
        set_reply(c, code, std::make_shared<const std::vector<std::byte>>(bytes.begin(), bytes.end()));
    }

    void on_header(client& c) {
        auto h = detail::decode_wire_header(c.head.data());
        if (!h) {
            count(&listener_stats::bad_requests);
            return set_reply(c, detail::wire_reply::bad_request, "not a ferry listener request (magic or version)");
        }
        c.request = *h;
        if (h->code == static_cast<std::uint16_t>(detail::wire_code::fetch)) {
            if (h->length != 0) {
                count(&listener_stats::bad_requests);
                return set_reply(c, detail::wire_reply::bad_request, "a fetch carries no payload");
            }
            std::shared_ptr<const std::vector<std::byte>> blob;
            {
                std::lock_guard lock(mutex_);
                blob = served_;
                if (blob) ++stats_.fetches_served;
            }
            if (!blob) return set_reply(c, detail::wire_reply::nothing_published, "nothing published yet");
            return set_reply(c, detail::wire_reply::ok, std::move(blob));
        }
        if (h->code == static_cast<std::uint16_t>(detail::wire_code::push)) {
            if (h->length > config_.max_blob) {
                std::lock_guard lock(mutex_);
                ++stats_.pushes_refused;
                last_refusal_ = "a pushed blob of " + std::to_string(h->length) + " bytes is over the limit of " +
                                std::to_string(config_.max_blob);
                return set_reply(c, detail::wire_reply::too_large, last_refusal_);
            }
            if (h->length == 0) {
                count(&listener_stats::bad_requests);
                return set_reply(c, detail::wire_reply::bad_request, "an empty push");
            }
            // The buffer grows as bytes arrive, not to the announced length:
            // max_clients senders that announce max_blob and then stall
            // hold only what they actually sent.
            c.body_total = static_cast<std::size_t>(h->length);
            c.got = 0;
            c.at = phase::body;
            return;
        }
        if (h->code == static_cast<std::uint16_t>(detail::wire_code::invalidate)) {
            if (h->length == 0 || h->length > detail::max_agent_name) {
                count(&listener_stats::bad_requests);
                return set_reply(c, detail::wire_reply::bad_request,
                                 "an invalidation carries an agent name of 1.." +
                                     std::to_string(detail::max_agent_name) + " bytes, not " +
                                     std::to_string(h->length));
            }
            c.body_total = static_cast<std::size_t>(h->length);
            c.got = 0;
            c.at = phase::body;
            return;
        }
        count(&listener_stats::bad_requests);
        set_reply(c, detail::wire_reply::bad_request, "unknown request code " + std::to_string(h->code));
    }

    void on_push(client& c) {
        std::string name;
        try {
            name = std::string(detail::decode_metadata(c.body).name);
        } catch (const error& e) {
            std::lock_guard lock(mutex_);
            ++stats_.pushes_refused;
            last_refusal_ = std::string("pushed blob refused: ") + e.what();
            return set_reply(c, detail::wire_reply::refused, last_refusal_);
        }
        {
            std::lock_guard lock(mutex_);
            if (!peers_.contains(name) && peers_.size() >= config_.max_peers) {
                ++stats_.pushes_refused;
                last_refusal_ = "pushed blob of '" + name + "' refused: already keeping " +
                                std::to_string(config_.max_peers) + " peers";
                return set_reply(c, detail::wire_reply::refused, last_refusal_);
            }
            ++stats_.pushes_accepted;
            store_locked(std::move(name), std::move(c.body));
        }
        set_reply(c, detail::wire_reply::ok, std::shared_ptr<const std::vector<std::byte>>{});
    }

    void on_invalidate(client& c) {
        std::string name(reinterpret_cast<const char*>(c.body.data()), c.body_total);
        {
            std::lock_guard lock(mutex_);
            if (!invalidated_.contains(name) && invalidated_.size() >= config_.max_peers) {
                ++stats_.invalidations_refused;
                return set_reply(c, detail::wire_reply::refused,
                                 "invalidation refused: already holding " + std::to_string(config_.max_peers) +
                                     " that the owner has not taken");
            }
            ++stats_.invalidations_accepted;
            if (auto it = peers_.find(name); it != peers_.end()) peers_.erase(it);
            invalidated_.insert(name);
            event_locked({directory_event::kind::remove, std::move(name), {}});
        }
        set_reply(c, detail::wire_reply::ok, std::shared_ptr<const std::vector<std::byte>>{});
    }

    // Moves one client on as far as its socket allows without blocking.
    void step(client& c) {
        for (;;) {
            if (c.at == phase::reply) {
                const std::size_t total = c.reply_head.size() + (c.reply_body ? c.reply_body->size() : 0);
                if (c.sent == total) {
                    c.done = true;
                    return;
                }
                const std::byte* p = c.sent < c.reply_head.size() ? c.reply_head.data() + c.sent
                                                                   : c.reply_body->data() + (c.sent - c.reply_head.size());
                const std::size_t n = c.sent < c.reply_head.size() ? c.reply_head.size() - c.sent : total - c.sent;
                // MSG_MORE on the header: header and blob leave in one segment.
                const bool more = c.sent < c.reply_head.size() && total > c.reply_head.size();
                const ssize_t w = ::send(c.fd.get(), p, n, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
                if (w > 0) {
                    c.sent += static_cast<std::size_t>(w);
                    continue;
                }
                if (w < 0 && errno == EINTR) continue;
                if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
                c.done = true;  // the client went away
                return;
            }
            if (c.at == phase::body && c.got == c.body.size())
                c.body.resize(std::min(c.body_total, std::max(c.got * 2, std::size_t{64} * 1024)));
            std::byte* dst = c.at == phase::header ? c.head.data() : c.body.data();
            const std::size_t room = c.at == phase::header ? c.head.size() : c.body.size();
            const std::size_t want = c.at == phase::header ? c.head.size() : c.body_total;
            const ssize_t r = ::recv(c.fd.get(), dst + c.got, room - c.got, 0);
            if (r > 0) {
                c.got += static_cast<std::size_t>(r);
                if (c.got < want) continue;
                if (c.at == phase::header)
                    on_header(c);
                else if (c.request.code == static_cast<std::uint16_t>(detail::wire_code::invalidate))
                    on_invalidate(c);
                else
                    on_push(c);
                continue;
            }
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
            c.done = true;  // closed (or reset) before its request was complete
            return;
        }
    }

    void accept_all(std::vector<std::unique_ptr<client>>& clients, detail::steady_deadline& accept_paused_until) {
        for (;;) {
            detail::unique_fd fd(::accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
            if (!fd) {
                // Out of descriptors: the pending connection stays readable,
                // so stop polling for it a while instead of spinning.
                if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                    accept_paused_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
                return;
            }
            if (clients.size() >= config_.max_clients) {
                count(&listener_stats::turned_away);
                continue;  // closed at once by fd's destructor
            }
            auto c = std::make_unique<client>();
            c->fd = std::move(fd);
            c->deadline = std::chrono::steady_clock::now() + config_.io_timeout;
            clients.push_back(std::move(c));
        }
    }

    void run() noexcept {
        std::vector<std::unique_ptr<client>> clients;
        std::vector<pollfd> fds;
        detail::steady_deadline accept_paused_until{};
        while (!stop_.load(std::memory_order_relaxed)) {
            const auto now = std::chrono::steady_clock::now();
            fds.clear();
            fds.push_back({wake_.get(), POLLIN, 0});
            const bool accepting = now >= accept_paused_until;
            fds.push_back({accepting ? listen_.get() : -1, POLLIN, 0});
            auto next = accepting ? detail::steady_deadline::max() : accept_paused_until;
            for (const auto& c : clients) {
                fds.push_back({c->fd.get(), static_cast<short>(c->at == phase::reply ? POLLOUT : POLLIN), 0});
                next = std::min(next, c->deadline);
            }
            const int timeout = next == detail::steady_deadline::max() ? -1 : detail::ms_until(next);
            if (::poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) continue;
            if (fds[0].revents != 0) {
                std::uint64_t drained;
                [[maybe_unused]] auto r = ::read(wake_.get(), &drained, sizeof drained);
            }
            // Serve the connections already held before taking new ones, so
            // that a flood of new connections cannot starve them.
            for (std::size_t i = 0; i < clients.size(); ++i) {
                if (fds[i + 2].revents == 0) continue;
                try {
                    step(*clients[i]);
                } catch (...) {  // no memory for a body: drop this client, keep serving
                    clients[i]->done = true;
                }
            }
            const auto after = std::chrono::steady_clock::now();
            for (auto& c : clients)
                if (!c->done && after >= c->deadline) {
                    c->done = true;
                    count(&listener_stats::timed_out);
                }
            std::erase_if(clients, [](const auto& c) { return c->done; });
            if (fds[1].revents != 0) {
                try {
                    accept_all(clients, accept_paused_until);
                } catch (...) {
                    accept_paused_until = after + std::chrono::milliseconds(50);
                }
            }
        }
    }

    listener_config config_;
    detail::unique_fd listen_;
    detail::unique_fd wake_;
    std::uint16_t port_ = 0;
    std::atomic<bool> stop_{false};

    mutable std::mutex mutex_;
    std::condition_variable events_cv_;
    std::shared_ptr<const std::vector<std::byte>> served_;
    std::string served_name_;
    std::map<std::string, std::vector<std::byte>, std::less<>> peers_;
    std::set<std::string, std::less<>> invalidated_;  // for take_invalidations
    std::deque<directory_event> events_;
    listener_stats stats_;
    std::string last_refusal_;

    std::thread thread_;  // last: starts after everything it uses exists
};

FERRY_NAMESPACE_END
