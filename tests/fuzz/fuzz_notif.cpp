// libFuzzer target: decode_notif on arbitrary header/payload splits must
// return views inside what it was given, within the limits, or nothing.
#include <ferry/detail/notif_codec.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    // The first two bytes choose where the header ends and the size limit.
    const std::size_t header_len = data[0] % (size - 1);
    const std::size_t max_message = static_cast<std::size_t>(data[1]) * 64;
    const auto* header = data + 2;
    const auto* payload = header + header_len;
    const std::size_t payload_len = size - 2 - header_len;
    const auto n = ferry::detail::decode_notif(header, header_len, payload, payload_len, max_message);
    if (!n) return 0;
    const auto* begin = reinterpret_cast<const char*>(data);
    const auto* end = begin + size;
    const bool ok = n->sender.size() == header_len && n->sender.size() >= 1 &&
                    n->sender.size() <= ferry::detail::max_agent_name && n->message.size() == payload_len &&
                    n->message.size() <= max_message && n->sender.data() >= begin &&
                    n->sender.data() + n->sender.size() <= end &&
                    (n->message.empty() || (n->message.data() >= begin && n->message.data() + n->message.size() <= end));
    if (!ok) std::abort();
    return 0;
}
