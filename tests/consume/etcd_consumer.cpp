// Builds against ferry::etcd and reports an unreachable etcd as ferry::error.
#include <ferry/etcd.hpp>
#include <ferry/ferry.hpp>

#include <cstdio>

int main() {
    ferry::etcd_options o;
    o.endpoints = {"http://127.0.0.1:1"};  // nothing listens on port 1
    o.connect_timeout = std::chrono::milliseconds(200);
    ferry::etcd_directory dir(o);
    try {
        (void)dir.fetch("nobody");
    } catch (const ferry::error& e) {
        std::printf("as expected: %s\n", e.what());
        return dir.health() ? 0 : 1;
    }
    std::printf("fetch from an unreachable etcd did not fail\n");
    return 1;
}
