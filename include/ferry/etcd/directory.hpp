#pragma once

// ferry::etcd_directory: a metadata_directory in etcd (v3, through its JSON
// gateway; see http.hpp). Our entry is bound to a lease that a thread of the
// directory keeps alive, so that a process that dies leaves the directory
// within the TTL. Changes are found by reading the namespace (one range
// request) every poll_interval and comparing with what was seen, rather than
// by a streaming watch: a request that either answers or fails is simpler to
// recover from when etcd goes away, and etcd's revision in each reply tells
// at once whether anything changed.

#include <ferry/directory/concepts.hpp>
#include <ferry/etcd/http.hpp>
#include <ferry/etcd/json.hpp>
#include <ferry/etcd/options.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

FERRY_NAMESPACE_BEGIN

class etcd_directory {
    using json_value = detail::json_value;

    // Runs f; an error it throws names the call, as the concept asks.
    template <class F>
    static auto named(const char* call, F&& f) {
        try {
            return f();
        } catch (const error& e) {
            // what() ends in ": <status>", which the new error adds again.
            std::string what = e.what();
            const std::string tail = ": " + std::string(to_string(e.code_status()));
            if (what.size() >= tail.size() && what.compare(what.size() - tail.size(), tail.size(), tail) == 0)
                what.resize(what.size() - tail.size());
            throw error(e.code_status(), std::string("etcd_directory::") + call + ": " + what);
        }
    }

public:
    explicit etcd_directory(etcd_options opts)
        : opts_(check(std::move(opts))),
          prefix_("/ferry/" + opts_.name_space + "/"),
          calls_(opts_),
          keeper_http_(opts_),
          keeper_([this] { keep_alive(); }) {}

    etcd_directory(const etcd_directory&) = delete;
    etcd_directory& operator=(const etcd_directory&) = delete;

    /// Stops the keep-alive and revokes our lease, which takes our entry
    /// away at once (best effort: if etcd cannot be reached, the TTL does).
    ~etcd_directory() {
        {
            std::lock_guard lock(mutex_);
            stop_ = true;
        }
        wake_.notify_all();
        keeper_.join();
        try {
            std::lock_guard lock(mutex_);
            revoke_locked(calls_);
        } catch (const error&) {
        }
    }

    /// Puts our blob under /ferry/<namespace>/<name>, bound to our lease
    /// (granted now if we hold none). One name per directory: publishing
    /// another name takes the previous entry away. On failure it throws, and
    /// the keep-alive thread puts the blob once etcd answers again.
    void publish(std::string_view name, std::span<const std::byte> blob) {
        check_name(name, "publish");
        std::lock_guard lock(mutex_);
        named("publish", [&] {
            if (!published_.empty() && published_ != name) revoke_locked(calls_);
        });
        published_ = std::string(name);
        blob_.assign(reinterpret_cast<const char*>(blob.data()), blob.size());
        named("publish", [&] { put_locked(calls_); });
    }

    /// The blob published under `name`, or nullopt.
    [[nodiscard]] std::optional<std::vector<std::byte>> fetch(std::string_view name) {
        check_name(name, "fetch");
        return named("fetch", [&]() -> std::optional<std::vector<std::byte>> {
            const json_value reply = note(calls_, "/v3/kv/range", "{\"key\":" + key64(name) + "}");
            const json_value* kvs = reply.find("kvs");
            if (!kvs || kvs->type != json_value::kind::array || kvs->items.empty()) return std::nullopt;
            const json_value* value = kvs->items.front().find("value");
            return bytes_of(value ? decode(*value, "value") : std::string());
        });
    }

    /// Takes the entry under `name` away; for our own name, revokes our lease
    /// and stops keeping it alive.
    void remove(std::string_view name) {
        check_name(name, "remove");
        std::lock_guard lock(mutex_);
        named("remove", [&] {
            if (name == published_) {
                published_.clear();
                blob_.clear();
                revoke_locked(calls_);
            }
            note(calls_, "/v3/kv/deleterange", "{\"key\":" + key64(name) + "}");
        });
    }

    /// Changes in the namespace since the last call (the first call reports
    /// every entry as a put), waiting up to `timeout` for one. An entry
    /// re-put with the same blob (our keep-alive after etcd came back) is no
    /// change. While etcd cannot be reached it returns nothing; health()
    /// says why.
    [[nodiscard]] std::vector<directory_event> poll_events(std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            std::vector<directory_event> events;
            try {
                events = scan();
            } catch (const error&) {
                // Recorded by note(); the caller asks health().
            }
            if (!events.empty()) return events;
            const auto now = std::chrono::steady_clock::now();
            if (now >= deadline) return events;
            std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(opts_.poll_interval, deadline - now));
        }
    }

    /// Nothing while the last request to etcd (from any call or the
    /// keep-alive thread) succeeded; otherwise the error it failed with.
    [[nodiscard]] std::optional<error> health() const {
        std::lock_guard lock(health_mutex_);
        return last_error_;
    }

    [[nodiscard]] const etcd_options& options() const noexcept { return opts_; }

private:
    static etcd_options check(etcd_options o) {
        if (o.endpoints.empty()) throw error(status::invalid_argument, "etcd_directory: no endpoints");
        if (o.name_space.empty() || o.name_space.find('/') != std::string::npos)
            throw error(status::invalid_argument, "etcd_directory: namespace '" + o.name_space +
                                                      "' is empty or holds '/'");
        if (o.ttl < std::chrono::seconds(1)) o.ttl = std::chrono::seconds(1);
        if (o.poll_interval <= std::chrono::milliseconds(0)) o.poll_interval = std::chrono::milliseconds(1);
        return o;
    }

    static void check_name(std::string_view name, const char* call) {
        if (name.empty() || name.find('/') != std::string_view::npos)
            throw error(status::invalid_argument,
                        std::string("etcd_directory::") + call + ": agent name '" + std::string(name) +
                            "' is empty or holds '/'");
    }

    static std::vector<std::byte> bytes_of(const std::string& s) {
        const auto* p = reinterpret_cast<const std::byte*>(s.data());
        return {p, p + s.size()};
    }

    static std::string decode(const json_value& v, const char* what) {
        if (v.type != json_value::kind::string)
            throw error(status::invalid_argument, std::string("etcd: reply's ") + what + " is not a string");
        auto out = detail::base64_decode(v.text);
        if (!out) throw error(status::invalid_argument, std::string("etcd: reply's ") + what + " is not base64");
        return *out;
    }

    static std::string number_text(const json_value* v) {
        if (!v || (v->type != json_value::kind::string && v->type != json_value::kind::number)) return "0";
        return v->text;
    }

    [[nodiscard]] std::string key64(std::string_view name) const {
        return detail::json_quote(detail::base64_encode(prefix_ + std::string(name)));
    }

    // Every request goes through here, so that health() tells how the last
    // one went.
    json_value note(detail::etcd_http& http, std::string_view path, const std::string& body) const {
        try {
            json_value v = http.call(path, body);
            std::lock_guard lock(health_mutex_);
            last_error_.reset();
            return v;
        } catch (const error& e) {
            std::lock_guard lock(health_mutex_);
            last_error_ = e;
            throw;
        }
    }

    // With mutex_ held: grants a lease if we hold none and puts our blob.
    void put_locked(detail::etcd_http& http) {
        if (published_.empty()) return;
        if (lease_.empty() || lease_ == "0") {
            const auto secs = std::chrono::ceil<std::chrono::seconds>(opts_.ttl).count();
            const json_value g = note(http, "/v3/lease/grant", "{\"TTL\":" + std::to_string(secs) + "}");
            lease_ = number_text(g.find("ID"));
            if (lease_ == "0") throw error(status::invalid_argument, "etcd: /v3/lease/grant: no lease in the reply");
        }
        note(http, "/v3/kv/put",
             "{\"key\":" + key64(published_) + ",\"value\":" + detail::json_quote(detail::base64_encode(blob_)) + ",\"lease\":\"" +
                 lease_ + "\"}");
        stale_ = false;
        wake_.notify_all();
    }

    void revoke_locked(detail::etcd_http& http) {
        if (lease_.empty()) return;
        const std::string id = std::exchange(lease_, std::string());
        // etcd 3.4's gateway serves LeaseRevoke under /v3/kv/lease/revoke
        // (3.5 adds /v3/lease/revoke).
        note(http, "/v3/kv/lease/revoke", "{\"ID\":\"" + id + "\"}");
    }

    // The keep-alive thread: refreshes the lease a few times per TTL; when
    // etcd has forgotten it (it was down longer than the TTL, or lost its
    // data), or a put failed, grants a new one and puts the blob again.
    void keep_alive() {
        std::unique_lock lock(mutex_);
        while (!stop_) {
            const auto period = stale_ ? opts_.poll_interval * 5 : opts_.ttl / 3;
            wake_.wait_for(lock, period, [&] { return stop_; });
            if (stop_ || published_.empty()) continue;
            try {
                // After a failure the lease may be gone (etcd lost its data,
                // or was down past the TTL): a new one, and the blob again;
                // an old lease that survived runs out on its own.
                if (stale_) lease_.clear();
                if (!lease_.empty()) {
                    const json_value r = note(keeper_http_, "/v3/lease/keepalive", "{\"ID\":\"" + lease_ + "\"}");
                    const json_value* result = r.find("result");
                    const std::string ttl = number_text(result ? result->find("TTL") : nullptr);
                    if (ttl != "0") continue;
                    lease_.clear();  // expired: etcd no longer knows it
                }
                put_locked(keeper_http_);
            } catch (const error&) {
                // etcd unreachable or refusing: put everything again once it answers.
                stale_ = true;
            }
        }
    }

    // One read of the namespace, compared with the last.
    std::vector<directory_event> scan() {
        std::string end = prefix_;
        end.back() = static_cast<char>(end.back() + 1);
        const json_value reply = note(calls_, "/v3/kv/range",
                                      "{\"key\":" + detail::json_quote(detail::base64_encode(prefix_)) +
                                          ",\"range_end\":" + detail::json_quote(detail::base64_encode(end)) + "}");
        const json_value* header = reply.find("header");
        const std::string revision = number_text(header ? header->find("revision") : nullptr);
        if (revision == seen_revision_) return {};
        std::map<std::string, std::string, std::less<>> now;
        if (const json_value* kvs = reply.find("kvs"); kvs && kvs->type == json_value::kind::array) {
            for (const json_value& kv : kvs->items) {
                const json_value* k = kv.find("key");
                const json_value* v = kv.find("value");
                if (!k) continue;
                std::string key = decode(*k, "key");
                if (key.size() <= prefix_.size() || key.compare(0, prefix_.size(), prefix_) != 0) continue;
                now.emplace(key.substr(prefix_.size()), v ? decode(*v, "value") : std::string());
            }
        }
        std::vector<directory_event> events;
        for (const auto& [name, blob] : seen_)
            if (!now.contains(name)) events.push_back({directory_event::kind::remove, name, {}});
        for (const auto& [name, blob] : now) {
            auto it = seen_.find(name);
            if (it == seen_.end() || it->second != blob)
                events.push_back({directory_event::kind::put, name, bytes_of(blob)});
        }
        seen_ = std::move(now);
        seen_revision_ = revision;
        return events;
    }

    const etcd_options opts_;
    const std::string prefix_;
    detail::etcd_http calls_;        // the application's calls
    detail::etcd_http keeper_http_;  // the keep-alive thread's

    std::mutex mutex_;  // our entry and lease; held across their requests
    std::condition_variable wake_;
    bool stop_ = false;
    bool stale_ = false;  // a request of the keep-alive thread failed
    std::string published_;
    std::string blob_;
    std::string lease_;  // etcd's lease ID, as its decimal text; empty: none

    mutable std::mutex health_mutex_;
    mutable std::optional<error> last_error_;

    std::map<std::string, std::string, std::less<>> seen_;  // by poll_events
    std::string seen_revision_;

    std::thread keeper_;  // last: started once everything above exists
};

static_assert(metadata_directory<etcd_directory>);

FERRY_NAMESPACE_END
