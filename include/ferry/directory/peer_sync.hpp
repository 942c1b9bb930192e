#pragma once

// ferry::peer_sync: keeps a backend's loaded peers in step with a metadata
// directory. The application calls sync_once where it does its other set-up
// work; nothing runs behind its back, so that load_remote and unload_remote
// stay on the thread that owns the backend's set-up calls.

#include <ferry/directory/concepts.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>

#include <chrono>
#include <cstddef>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

FERRY_NAMESPACE_BEGIN

/// What one sync_once changed.
struct sync_result {
    std::vector<std::string> loaded;    // new peers, and restarted ones reloaded
    std::vector<std::string> unloaded;  // peers whose entry went away
    /// Entries that could not be loaded (a malformed blob, a peer that died
    /// before we connected, a connection that failed): name and the error's
    /// message, reported once per blob. Each later sync_once tries them
    /// again until they load, the peer publishes another blob or its entry
    /// goes away.
    std::vector<std::pair<std::string, std::string>> failed;

    [[nodiscard]] bool empty() const noexcept { return loaded.empty() && unloaded.empty() && failed.empty(); }
};

template <metadata_directory Directory, class Backend>
class peer_sync {
public:
    /// `self`: our own agent name, whose entry is never loaded.
    peer_sync(Directory& dir, Backend& backend, std::string self)
        : dir_(dir), backend_(backend), self_(std::move(self)) {}

    /// Applies the directory's changes, waiting up to `timeout` for the
    /// first: loads (or, for a name already loaded, reloads) each peer that
    /// published a new blob, unloads each whose entry went away.
    sync_result sync_once(std::chrono::milliseconds timeout) {
        sync_result out;
        for (auto it = retry_.begin(); it != retry_.end();) {
            try {
                backend_.load_remote(std::span<const std::byte>(it->second));
                out.loaded.push_back(it->first);
                blobs_[it->first] = std::move(it->second);
                it = retry_.erase(it);
            } catch (const error&) {
                ++it;
            }
        }
        for (directory_event& ev : dir_.poll_events(timeout)) {
            if (ev.name == self_) continue;
            retry_.erase(ev.name);
            if (ev.what == directory_event::kind::remove) {
                blobs_.erase(ev.name);
                if (auto p = backend_.find_peer(ev.name)) {
                    backend_.unload_remote(*p);
                    out.unloaded.push_back(std::move(ev.name));
                }
                continue;
            }
            // The same blob again is the same incarnation: reloading it
            // would only make the handles the application holds stale.
            if (auto it = blobs_.find(ev.name); it != blobs_.end() && it->second == ev.blob) continue;
            try {
                backend_.load_remote(std::span<const std::byte>(ev.blob));
                blobs_[ev.name] = std::move(ev.blob);
                out.loaded.push_back(std::move(ev.name));
            } catch (const error& e) {
                blobs_.erase(ev.name);
                out.failed.emplace_back(ev.name, e.what());
                retry_[std::move(ev.name)] = std::move(ev.blob);
            }
        }
        return out;
    }

    /// The peers loaded through this object now.
    [[nodiscard]] std::vector<std::string> peers() const {
        std::vector<std::string> out;
        for (const auto& [name, blob] : blobs_) out.push_back(name);
        return out;
    }

private:
    Directory& dir_;
    Backend& backend_;
    std::string self_;
    std::map<std::string, std::vector<std::byte>, std::less<>> blobs_;  // loaded
    std::map<std::string, std::vector<std::byte>, std::less<>> retry_;  // failed to load
};

FERRY_NAMESPACE_END
