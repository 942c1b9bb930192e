#pragma once

#include <ferry/detail/metadata.hpp>
#include <ferry/version.hpp>

#include <cstddef>
#include <optional>
#include <string_view>

FERRY_NAMESPACE_BEGIN
namespace detail {

// A notification travels as a UCX active message whose header is the
// sender's agent name and whose payload is the message itself.
struct notif_view {
    std::string_view sender;
    std::string_view message;
};

/// Checks what arrived from the wire; nullopt if it cannot be a notification.
[[nodiscard]] inline std::optional<notif_view> decode_notif(const void* header, std::size_t header_len,
                                                            const void* data, std::size_t data_len,
                                                            std::size_t max_message) noexcept {
    if (header == nullptr || header_len == 0 || header_len > max_agent_name) return std::nullopt;
    if (data_len > max_message || (data == nullptr && data_len != 0)) return std::nullopt;
    return notif_view{{static_cast<const char*>(header), header_len},
                      {data_len ? static_cast<const char*>(data) : "", data_len}};
}

}  // namespace detail
FERRY_NAMESPACE_END
