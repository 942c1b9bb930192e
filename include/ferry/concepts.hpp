#pragma once

#include <ferry/desc.hpp>
#include <ferry/handles.hpp>
#include <ferry/notif_map.hpp>
#include <ferry/status.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_cost.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

FERRY_NAMESPACE_BEGIN

namespace detail {
// A visitor of the shape poll_notifs hands notifications to.
struct notif_visitor_archetype {
    void operator()(std::string_view, std::string_view) const noexcept {}
};
}  // namespace detail

/// The transfer half of the contract: registration, metadata, and the
/// prepare / post / check / release / estimate life of a transfer. The data
/// path is noexcept and reports through `status`.
template <class B>
concept xfer_backend = requires(B& b, const B& cb, void* ptr, std::size_t len, std::uint32_t dev,
                                std::span<const std::byte> blob, xfer_op op, std::span<const desc> descs, peer p,
                                xfer x, std::string_view notif) {
    typename B::region_type;
    { b.register_memory(ptr, len, dev) } -> std::same_as<typename B::region_type>;
    { b.allocate(len) } -> std::same_as<typename B::region_type>;
    { cb.local_metadata() } -> std::same_as<std::vector<std::byte>>;
    { b.load_remote(blob) } -> std::same_as<peer>;
    b.unload_remote(p);
    { b.prepare(op, descs, descs, p) } -> std::same_as<xfer>;
    { b.post(x, notif) } noexcept -> std::same_as<status>;
    { b.post(x) } noexcept -> std::same_as<status>;
    { b.check(x) } noexcept -> std::same_as<status>;
    { b.release(x) } noexcept -> std::same_as<status>;
    { b.estimate(x) } -> std::same_as<xfer_cost>;
    b.progress();
};

/// The notification half: standalone messages to a peer, and collection of
/// what arrived, grouped by sender, as a map or through a visitor.
template <class B>
concept notif_channel = requires(B& b, peer p, std::string_view msg, detail::notif_visitor_archetype visit) {
    { b.send_notif(p, msg) } noexcept -> std::same_as<status>;
    { b.take_notifs() } -> std::same_as<notif_map>;
    { b.poll_notifs(visit) } -> std::same_as<std::size_t>;
};

FERRY_NAMESPACE_END
