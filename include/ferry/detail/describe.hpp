#pragma once

#include <ferry/desc.hpp>
#include <ferry/version.hpp>

#include <cstdint>
#include <cstdio>
#include <string>

FERRY_NAMESPACE_BEGIN
namespace detail {

// Addresses and blocks as ferry's error messages print them.

inline std::string hex(std::uintptr_t v) {
    char buf[2 + 16 + 1];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}

inline std::string describe(const desc& d) {
    return "[" + hex(d.addr) + ", +" + std::to_string(d.len) + ") on device " + std::to_string(d.dev);
}

}  // namespace detail
FERRY_NAMESPACE_END
