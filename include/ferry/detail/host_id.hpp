#pragma once

#include <ferry/version.hpp>

#include <unistd.h>

#include <cstdio>
#include <string>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// Names this host for peers that want to know whether they share it: the
/// kernel's boot id, which every process (and container) on one running
/// kernel reads alike, else the host name. Empty if neither can be read.
inline const std::string& host_id() {
    static const std::string id = [] {
        std::string out;
        if (std::FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "r")) {
            char buf[64] = {};
            if (std::fgets(buf, sizeof buf, f)) out = buf;
            std::fclose(f);
        }
        while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
        if (out.empty()) {
            char name[64] = {};
            if (::gethostname(name, sizeof name - 1) == 0) out = name;
        }
        return out.substr(0, 64);
    }();
    return id;
}

}  // namespace detail
FERRY_NAMESPACE_END
