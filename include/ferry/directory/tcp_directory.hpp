#pragma once

#include <ferry/detail/metadata.hpp>
#include <ferry/directory/client.hpp>
#include <ferry/directory/concepts.hpp>
#include <ferry/directory/listener.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

FERRY_NAMESPACE_BEGIN

/// A metadata_directory made of a metadata_listener and its peers, with no
/// server between them: publish is what our listener serves; fetch(name) is
/// the blob that agent pushed to us, or that fetch_from got from it earlier;
/// poll_events reports pushes (and fetch_from's results) as put events.
class tcp_directory {
public:
    explicit tcp_directory(listener_config config = {}) : listener_(std::move(config)) {}

    [[nodiscard]] std::uint16_t port() const noexcept { return listener_.port(); }
    [[nodiscard]] metadata_listener& listener() noexcept { return listener_; }

    /// Serves `blob`, which must be agent `name`'s.
    void publish(std::string_view name, std::span<const std::byte> blob) {
        const auto md = detail::decode_metadata(blob);
        if (md.name != name)
            throw error(status::invalid_argument, "tcp_directory::publish: the blob is agent '" +
                                                      std::string(md.name) + "''s, not '" + std::string(name) + "'");
        listener_.publish(blob);
    }

    [[nodiscard]] std::optional<std::vector<std::byte>> fetch(std::string_view name) const {
        if (!name.empty() && listener_.published_name() == name) return listener_.published();
        return listener_.pushed(name);
    }

    /// Our own entry: stop serving it; a peer's: forget its blob.
    void remove(std::string_view name) {
        if (!name.empty() && listener_.published_name() == name)
            listener_.unpublish();
        else
            listener_.forget(name);
    }

    [[nodiscard]] std::vector<directory_event> poll_events(std::chrono::milliseconds timeout) {
        return listener_.poll_events(timeout);
    }

    /// Fetches the blob served at host:port and keeps it under its agent's
    /// name; returns that name.
    std::string fetch_from(const std::string& host, std::uint16_t port,
                           std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
        auto blob = fetch_metadata(host, port, timeout, listener_.config().max_blob);
        std::string name(detail::decode_metadata(blob).name);
        listener_.keep(blob);
        return name;
    }

    /// Pushes the blob we publish to the listener at host:port.
    void push_to(const std::string& host, std::uint16_t port,
                 std::chrono::milliseconds timeout = std::chrono::seconds(5)) const {
        auto blob = listener_.published();
        if (!blob) throw error(status::invalid_argument, "tcp_directory::push_to: nothing published yet");
        push_metadata(host, port, *blob, timeout);
    }

private:
    metadata_listener listener_;
};

static_assert(metadata_directory<tcp_directory>);

FERRY_NAMESPACE_END
