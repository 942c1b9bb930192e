// libFuzzer target: decode_metadata on arbitrary bytes must either return a
// view whose every span lies inside the input or throw ferry::error; it must
// never read or write out of bounds (ASan) or trip UB (UBSan).
#include <ferry/detail/metadata.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

namespace {

bool inside(std::span<const std::byte> part, std::span<const std::byte> whole) {
    return part.empty() || (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::byte> blob(reinterpret_cast<const std::byte*>(data), size);
    try {
        const auto md = ferry::detail::decode_metadata(blob);
        const auto name = std::as_bytes(std::span(md.name.data(), md.name.size()));
        bool ok = inside(name, blob) && inside(md.worker_address, blob);
        for (const auto& r : md.regions) ok = ok && inside(r.rkey, blob) && r.len != 0 && r.addr + r.len >= r.addr;
        // A blob that decodes must encode back to itself.
        ok = ok && ferry::detail::encode_metadata(md) == std::vector<std::byte>(blob.begin(), blob.end());
        if (!ok) std::abort();
    } catch (const ferry::error&) {
    }
    return 0;
}
