#pragma once

#include <ferry/detail/metadata.hpp>
#include <ferry/detail/socket.hpp>
#include <ferry/directory/listener.hpp>
#include <ferry/directory/wire.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

struct wire_response {
    wire_reply code = wire_reply::ok;
    std::vector<std::byte> payload;
};

[[nodiscard]] inline std::string wire_text(const std::vector<std::byte>& payload) {
    return {reinterpret_cast<const char*>(payload.data()), payload.size()};
}

/// One request and its response over a fresh connection. A connection that
/// the listener closes before answering anything is one it turned away (it
/// had max_clients already): try again, a little later, until the deadline.
inline wire_response wire_exchange(const std::string& host, std::uint16_t port, wire_code code,
                                   std::span<const std::byte> payload, std::chrono::milliseconds timeout,
                                   std::size_t max_blob, const std::string& who) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto backoff = std::chrono::milliseconds(2);
    for (;;) {
        auto fd = tcp_connect(host, port, deadline, who);
        std::array<std::byte, wire_header_size> head{};
        std::size_t got = 0;
        try {
            const auto request = encode_wire_header(static_cast<std::uint16_t>(code), payload.size());
            send_all(fd.get(), request.data(), request.size(), deadline, who, !payload.empty());
            if (!payload.empty()) send_all(fd.get(), payload.data(), payload.size(), deadline, who);
        } catch (const error& e) {
            if (e.code_status() != status::peer_failed) throw;
            // Closed under us; whatever the listener answered may still be
            // waiting, and an empty read below means "turned away".
        }
        got = recv_all(fd.get(), head.data(), head.size(), deadline, who);
        if (got == 0) {
            if (std::chrono::steady_clock::now() + backoff >= deadline)
                throw error(status::timed_out, who + ": " + host + ":" + std::to_string(port) +
                                                   " kept closing the connection without an answer (busy)");
            std::this_thread::sleep_for(backoff);
            backoff = std::min(backoff * 2, std::chrono::milliseconds(50));
            continue;
        }
        if (got < head.size()) throw error(status::peer_failed, who + ": the response ended inside its header");
        auto h = decode_wire_header(head.data());
        if (!h) throw error(status::invalid_argument, who + ": the response is not a ferry listener's");
        const std::size_t limit = h->code == static_cast<std::uint16_t>(wire_reply::ok) ? max_blob : max_wire_message;
        if (h->code > static_cast<std::uint16_t>(wire_reply::bad_request))
            throw error(status::invalid_argument, who + ": unknown response code " + std::to_string(h->code));
        if (h->length > limit)
            throw error(status::invalid_argument, who + ": a response of " + std::to_string(h->length) +
                                                      " bytes is over the limit of " + std::to_string(limit));
        wire_response out{static_cast<wire_reply>(h->code), std::vector<std::byte>(h->length)};
        if (recv_all(fd.get(), out.payload.data(), out.payload.size(), deadline, who) < out.payload.size())
            throw error(status::peer_failed, who + ": the response ended early");
        return out;
    }
}

}  // namespace detail

/// Fetches the blob that the metadata_listener at host:port serves (NIXL's
/// fetchRemoteMD), validated completely before it is returned. Every step
/// (connecting, sending, receiving) ends by `timeout` altogether. Throws
/// ferry::error: timed_out, peer_failed (refused, reset), no_such_peer
/// (the listener publishes nothing yet), invalid_argument (a bad or
/// oversized answer).
[[nodiscard]] inline std::vector<std::byte> fetch_metadata(const std::string& host, std::uint16_t port,
                                                           std::chrono::milliseconds timeout = std::chrono::seconds(5),
                                                           std::size_t max_blob = default_max_blob) {
    const std::string who = "fetch_metadata from " + host + ":" + std::to_string(port);
    auto r = detail::wire_exchange(host, port, detail::wire_code::fetch, {}, timeout, max_blob, who);
    if (r.code == detail::wire_reply::nothing_published)
        throw error(status::no_such_peer, who + ": the listener publishes nothing yet");
    if (r.code != detail::wire_reply::ok)
        throw error(status::invalid_argument, who + ": refused: " + detail::wire_text(r.payload));
    static_cast<void>(detail::decode_metadata(r.payload));
    return std::move(r.payload);
}

/// Pushes our blob to the metadata_listener at host:port (NIXL's
/// sendLocalMD), which keeps it under the agent name inside it. Throws
/// ferry::error as fetch_metadata does; invalid_argument carries the
/// listener's reason when it refused the blob.
inline void push_metadata(const std::string& host, std::uint16_t port, std::span<const std::byte> blob,
                          std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const std::string who = "push_metadata to " + host + ":" + std::to_string(port);
    auto r = detail::wire_exchange(host, port, detail::wire_code::push, blob, timeout, 0, who);
    if (r.code != detail::wire_reply::ok)
        throw error(status::invalid_argument, who + ": refused: " + detail::wire_text(r.payload));
}

/// Tells the metadata_listener at host:port that agent `name`'s metadata is
/// no longer valid (NIXL's invalidateLocalMD): it drops the blob `name`
/// pushed and its owner unloads `name`. Throws ferry::error as
/// push_metadata does; invalid_argument also for a name outside
/// 1..max_agent_name bytes, before anything is sent.
inline void invalidate_metadata(const std::string& host, std::uint16_t port, std::string_view name,
                                std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    std::string who = "invalidate_metadata to ";
    who.append(host).append(":").append(std::to_string(port));
    if (name.empty() || name.size() > detail::max_agent_name)
        throw error(status::invalid_argument, who + ": an agent name has 1.." +
                                                  std::to_string(detail::max_agent_name) + " bytes");
    auto r = detail::wire_exchange(host, port, detail::wire_code::invalidate,
                                   std::as_bytes(std::span(name.data(), name.size())), timeout, 0, who);
    if (r.code != detail::wire_reply::ok)
        throw error(status::invalid_argument, who + ": refused: " + detail::wire_text(r.payload));
}

FERRY_NAMESPACE_END
