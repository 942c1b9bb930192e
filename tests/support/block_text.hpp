#pragma once

// How ferry's errors print a block, spelled out independently of
// ferry::detail::describe, so that the tests check the exact text.

#include <ferry/desc.hpp>

#include <cstdint>
#include <cstdio>
#include <string>

namespace ferry_test {

inline std::string hex(std::uintptr_t v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}

inline std::string block_text(const ferry::desc& d) {
    return "[" + hex(d.addr) + ", +" + std::to_string(d.len) + ") on device " + std::to_string(d.dev);
}

}  // namespace ferry_test
