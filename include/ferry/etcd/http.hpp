#pragma once

// Requests to etcd v3's JSON gateway over libcurl. Why the gateway and not
// gRPC: it is part of etcd's own server since 3.4 (no proxy to run), and it
// needs HTTP/1.1 and JSON only, so ferry takes one small dependency that
// every distribution packages (libcurl) instead of a gRPC and protobuf
// toolchain and generated code.

#include <ferry/etcd/json.hpp>
#include <ferry/etcd/options.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <curl/curl.h>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

FERRY_NAMESPACE_BEGIN
namespace detail {

inline void curl_init_once() {
    // Once per process, before any handle; never cleaned up, since another
    // part of the program may use libcurl too.
    static const CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK)
        throw error(status::invalid_argument, std::string("etcd: curl_global_init: ") + curl_easy_strerror(rc));
}

/// One connection's worth of state (a curl handle, the auth token) for one
/// thread at a time.
class etcd_http {
public:
    explicit etcd_http(etcd_options opts) : opts_(std::move(opts)) {
        curl_init_once();
        curl_.reset(curl_easy_init());
        if (!curl_) throw error(status::no_memory, "etcd: curl_easy_init failed");
    }

    /// POSTs `body` to `path` (e.g. "/v3/kv/range") and returns the reply.
    /// Tries each endpoint in turn; throws ferry::error with timed_out when
    /// none answered, invalid_argument when etcd refused the request.
    json_value call(std::string_view path, const std::string& body) {
        if (!opts_.user.empty() && token_.empty()) authenticate();
        auto [code, reply] = call_any(path, body, true);
        if (code == 401 && !opts_.user.empty()) {  // the token expired
            authenticate();
            std::tie(code, reply) = call_any(path, body, true);
        }
        if (code != 200) throw refused(path, code, reply);
        return parse_json(reply);
    }

private:
    struct curl_deleter {
        void operator()(CURL* c) const noexcept { curl_easy_cleanup(c); }
    };
    struct slist_deleter {
        void operator()(curl_slist* l) const noexcept { curl_slist_free_all(l); }
    };

    static std::size_t on_data(char* p, std::size_t size, std::size_t n, void* out) {
        static_cast<std::string*>(out)->append(p, size * n);
        return size * n;
    }

    static error refused(std::string_view path, long code, const std::string& reply) {
        std::string why = reply;
        try {
            const json_value v = parse_json(reply);
            if (const json_value* m = v.find("message"); m && m->type == json_value::kind::string) why = m->text;
            else if (const json_value* e = v.find("error"); e && e->type == json_value::kind::string) why = e->text;
        } catch (const error&) {
        }
        return error(status::invalid_argument,
                     "etcd: " + std::string(path) + ": HTTP " + std::to_string(code) + ": " + why);
    }

    void authenticate() {
        token_.clear();
        const std::string body = "{\"name\":" + json_quote(opts_.user) + ",\"password\":" + json_quote(opts_.password) + "}";
        auto [code, reply] = call_any("/v3/auth/authenticate", body, false);
        if (code != 200) throw refused("/v3/auth/authenticate", code, reply);
        const json_value v = parse_json(reply);
        const json_value* t = v.find("token");
        if (!t || t->type != json_value::kind::string || t->text.empty())
            throw error(status::invalid_argument, "etcd: /v3/auth/authenticate: no token in the reply");
        token_ = t->text;
    }

    std::pair<long, std::string> call_any(std::string_view path, const std::string& body, bool with_token) {
        if (opts_.endpoints.empty()) throw error(status::invalid_argument, "etcd: no endpoints");
        std::string failures;
        for (std::size_t i = 0; i < opts_.endpoints.size(); ++i) {
            const std::size_t at = (next_ + i) % opts_.endpoints.size();
            std::string reply;
            long code = 0;
            const CURLcode rc = perform(opts_.endpoints[at], path, body, with_token, reply, code);
            if (rc == CURLE_OK) {
                next_ = at;
                return {code, std::move(reply)};
            }
            failures += (failures.empty() ? "" : "; ") + opts_.endpoints[at] + ": " + curl_easy_strerror(rc);
        }
        throw error(status::timed_out, "etcd: " + std::string(path) + ": no endpoint answered (" + failures + ")");
    }

    CURLcode perform(const std::string& endpoint, std::string_view path, const std::string& body, bool with_token,
                     std::string& reply, long& code) {
        CURL* c = curl_.get();
        curl_easy_reset(c);
        const std::string url = endpoint + std::string(path);
        std::unique_ptr<curl_slist, slist_deleter> headers(curl_slist_append(nullptr, "Content-Type: application/json"));
        if (with_token && !token_.empty())
            headers.reset(curl_slist_append(headers.release(), ("Authorization: " + token_).c_str()));
        curl_easy_setopt(c, CURLOPT_URL, url.c_str());
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &on_data);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &reply);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opts_.connect_timeout.count()));
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(opts_.request_timeout.count()));
        // No signals: libcurl runs on any of the application's threads.
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
        if (!opts_.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, opts_.ca_file.c_str());
        if (!opts_.cert_file.empty()) curl_easy_setopt(c, CURLOPT_SSLCERT, opts_.cert_file.c_str());
        if (!opts_.key_file.empty()) curl_easy_setopt(c, CURLOPT_SSLKEY, opts_.key_file.c_str());
        const CURLcode rc = curl_easy_perform(c);
        if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        return rc;
    }

    etcd_options opts_;
    std::unique_ptr<CURL, curl_deleter> curl_;
    std::string token_;
    std::size_t next_ = 0;
};

}  // namespace detail
FERRY_NAMESPACE_END
