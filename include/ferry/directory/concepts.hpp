#pragma once

#include <ferry/version.hpp>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

FERRY_NAMESPACE_BEGIN

/// A change seen in a metadata directory: an agent published a blob (for the
/// first time, or again: a restart, or more memory registered), or its entry
/// went away (it removed it, or its lease ran out).
struct directory_event {
    enum class kind { put, remove };
    kind what = kind::put;
    std::string name;
    std::vector<std::byte> blob;  // empty for remove
};

/// Where agents find each other's metadata blobs, by agent name. Set-up
/// calls, never on the data path; failures throw ferry::error naming the
/// directory and the call.
///  - publish(name, blob): our blob under our name, replacing what was there.
///  - fetch(name): the blob published under `name`, or nullopt.
///  - remove(name): takes our entry away.
///  - poll_events(timeout): changes since the last call, waiting up to
///    `timeout` for the first; empty when nothing changed.
template <class D>
concept metadata_directory =
    requires(D& d, std::string_view name, std::span<const std::byte> blob, std::chrono::milliseconds timeout) {
        d.publish(name, blob);
        { d.fetch(name) } -> std::same_as<std::optional<std::vector<std::byte>>>;
        d.remove(name);
        { d.poll_events(timeout) } -> std::same_as<std::vector<directory_event>>;
    };

FERRY_NAMESPACE_END
