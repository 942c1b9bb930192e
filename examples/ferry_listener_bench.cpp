// ferry-listener-bench: how many fetch_metadata calls per second a
// metadata_listener answers over loopback TCP. One connection per fetch, as
// fetch_metadata makes; client threads in this process, the listener's own
// thread serving them.

#include <ferry/ferry.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

void usage(const char* argv0) {
    std::printf(
        "usage: %s [--fetches N] [--clients C] [--regions R]\n"
        "  Starts a metadata_listener on 127.0.0.1 serving a blob with R regions\n"
        "  (default 16, each with a 64-byte rkey), then C client threads (default 1)\n"
        "  make N fetch_metadata calls in all (default 5000), each over a new\n"
        "  connection, and prints the blob size and fetches per second.\n",
        argv0);
}

std::vector<std::byte> make_blob(std::uint32_t regions) {
    const std::vector<std::byte> address(64, std::byte{0xA5});
    const std::vector<std::byte> rkey(64, std::byte{0x3C});
    ferry::detail::metadata_view md;
    md.name = "bench-target";
    md.worker_address = address;
    md.host_id = "bench";
    for (std::uint32_t i = 0; i < regions; ++i) {
        ferry::detail::region_record r;
        r.addr = 0x100000 + std::uint64_t{i} * 0x100000;
        r.len = 0x100000;
        r.rkey = rkey;
        md.regions.push_back(r);
    }
    return ferry::detail::encode_metadata(md);
}

}  // namespace

int main(int argc, char** argv) {
    long fetches = 5000, clients = 1, regions = 16;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&]() -> long {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", arg.c_str());
                std::exit(2);
            }
            return std::strtol(argv[++i], nullptr, 10);
        };
        if (arg == "--help" || arg == "-h") {
            usage(argv[0]);
            return 0;
        } else if (arg == "--fetches") {
            fetches = value();
        } else if (arg == "--clients") {
            clients = value();
        } else if (arg == "--regions") {
            regions = value();
        } else {
            std::fprintf(stderr, "unknown argument '%s'\n", arg.c_str());
            usage(argv[0]);
            return 2;
        }
    }
    if (fetches < 1 || clients < 1 || regions < 0 || regions > 100000) {
        std::fprintf(stderr, "--fetches and --clients must be at least 1, --regions 0..100000\n");
        return 2;
    }

    ferry::metadata_listener listener;
    const auto blob = make_blob(static_cast<std::uint32_t>(regions));
    listener.publish(blob);

    std::atomic<long> next{0};
    std::atomic<long> failures{0};
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (long c = 0; c < clients; ++c)
        threads.emplace_back([&] {
            while (next.fetch_add(1) < fetches) {
                try {
                    if (ferry::fetch_metadata("127.0.0.1", listener.port()) != blob) failures.fetch_add(1);
                } catch (const ferry::error& e) {
                    if (failures.fetch_add(1) == 0) std::fprintf(stderr, "fetch failed: %s\n", e.what());
                }
            }
        });
    for (auto& t : threads) t.join();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    std::printf("blob %zu bytes, %ld fetches by %ld client thread(s) in %.3f s: %.0f fetches/s (%.1f us each)\n",
                blob.size(), fetches, clients, seconds, static_cast<double>(fetches) / seconds,
                seconds * 1e6 / static_cast<double>(fetches));
    if (failures.load() != 0) {
        std::fprintf(stderr, "%ld fetches failed or returned the wrong blob\n", failures.load());
        return 1;
    }
    return 0;
}
