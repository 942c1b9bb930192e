// ferry-demo: two processes from one command. The target registers memory and
// publishes its metadata; the initiator WRITEs a list of blocks into it with
// a notification, the target checks the bytes when the notification arrives,
// then the initiator READs the blocks back and checks them too.
// With --listen and --connect, the two are started separately (on two hosts,
// say) and find each other through a metadata_listener.
#include <ferry/ferry.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

using inline_backend = ferry::ucx_backend<ferry::policy<ferry::progress::inline_poll, ferry::memory::host>>;
using threaded_backend = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::host>>;

struct options {
    std::string tls;  // empty: let UCX choose
    bool thread = false;
    std::size_t blocks = 256;
    std::size_t block_size = 64 * 1024;
    ferry::xfer_path path = ferry::xfer_path::automatic;
    int listen_port = -1;  // >= 0: be the target alone, serving our blob on this port
    std::string connect_host;  // non-empty: be the initiator alone, finding the target there
    std::uint16_t connect_port = 0;
};

void usage(const char* argv0) {
    std::printf(
        "usage: %s [--tls LIST] [--progress inline|thread] [--path auto|ucx|host_ipc] [--blocks N]\n"
        "          [--block-size BYTES] [--listen PORT | --connect HOST:PORT]\n"
        "\n"
        "Forks a target and an initiator, WRITEs N scattered blocks into the\n"
        "target with a notification, READs them back, and checks every byte.\n"
        "With --listen, this process is the target alone, and waits for an\n"
        "initiator started elsewhere with --connect (give both the same --blocks\n"
        "and --block-size).\n"
        "\n"
        "  --tls LIST          UCX transports, as UCX_TLS takes them (e.g. shm, tcp);\n"
        "                      default: UCX's own choice\n"
        "  --progress MODE     inline: the application drives UCX (default);\n"
        "                      thread: a progress thread does\n"
        "  --path PATH         auto: host_ipc (ferry copies into the target's memory\n"
        "                      itself) where the kernel lets it, else ucx (default);\n"
        "                      ucx: UCX RMA; host_ipc: fail if it cannot be had\n"
        "  --blocks N          number of blocks (default 256)\n"
        "  --block-size BYTES  size of each block (default 65536)\n"
        "  --listen PORT       be the target: serve our metadata on PORT of every\n"
        "                      interface (0: a free port, printed), take the\n"
        "                      initiator's when it pushes it. The metadata gives\n"
        "                      access to the target's memory: trusted networks only\n"
        "  --connect HOST:PORT be the initiator: fetch the target's metadata from its\n"
        "                      listener and push ours there\n"
        "  --help              this text\n",
        argv0);
}

std::size_t parse_size(const char* flag, const char* text) {
    char* end = nullptr;
    errno = 0;
    unsigned long long v = std::strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v == 0 || text[0] == '-')
        throw std::invalid_argument(std::string(flag) + ": expected a positive integer, got '" + text + "'");
    return static_cast<std::size_t>(v);
}

options parse(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) throw std::invalid_argument(std::string(a) + ": missing value");
            return argv[++i];
        };
        if (a == "--help" || a == "-h") {
            usage(argv[0]);
            std::exit(0);
        } else if (a == "--tls") {
            o.tls = value();
        } else if (a == "--progress") {
            std::string_view m = value();
            if (m != "inline" && m != "thread")
                throw std::invalid_argument("--progress: expected inline or thread, got '" + std::string(m) + "'");
            o.thread = m == "thread";
        } else if (a == "--path") {
            std::string_view p = value();
            if (p == "auto") o.path = ferry::xfer_path::automatic;
            else if (p == "ucx") o.path = ferry::xfer_path::ucx;
            else if (p == "host_ipc") o.path = ferry::xfer_path::host_ipc;
            else throw std::invalid_argument("--path: expected auto, ucx or host_ipc, got '" + std::string(p) + "'");
        } else if (a == "--blocks") {
            o.blocks = parse_size("--blocks", value());
        } else if (a == "--block-size") {
            o.block_size = parse_size("--block-size", value());
        } else if (a == "--listen") {
            const std::string_view v = value();
            const std::size_t port = v == "0" ? 0 : parse_size("--listen", v.data());
            if (port > 65535) throw std::invalid_argument("--listen: a port is at most 65535");
            o.listen_port = static_cast<int>(port);
        } else if (a == "--connect") {
            const std::string v = value();
            const auto colon = v.rfind(':');
            if (colon == std::string::npos || colon == 0)
                throw std::invalid_argument("--connect: expected HOST:PORT, got '" + v + "'");
            const std::size_t port = parse_size("--connect", v.c_str() + colon + 1);
            if (port > 65535) throw std::invalid_argument("--connect: a port is at most 65535");
            o.connect_host = v.substr(0, colon);
            o.connect_port = static_cast<std::uint16_t>(port);
        } else {
            throw std::invalid_argument("unknown option '" + std::string(a) + "' (try --help)");
        }
    }
    if (o.listen_port >= 0 && !o.connect_host.empty())
        throw std::invalid_argument("--listen and --connect: one process is one side");
    if (o.blocks > (std::size_t{1} << 20)) throw std::invalid_argument("--blocks: at most 1048576");
    if (o.block_size > (std::size_t{1} << 30) / o.blocks)
        throw std::invalid_argument("--blocks × --block-size: at most 1 GiB in all");
    return o;
}

// Metadata travels over a socketpair as a length-prefixed message.
void send_blob(int fd, std::span<const std::byte> blob) {
    std::uint64_t n = blob.size();
    if (write(fd, &n, sizeof n) != sizeof n ||
        write(fd, blob.data(), blob.size()) != static_cast<ssize_t>(blob.size()))
        throw std::runtime_error("metadata exchange: write failed");
}

std::vector<std::byte> recv_blob(int fd) {
    std::uint64_t n = 0;
    if (read(fd, &n, sizeof n) != sizeof n || n > (1U << 26)) throw std::runtime_error("metadata exchange: bad length");
    std::vector<std::byte> blob(n);
    std::size_t got = 0;
    while (got < n) {
        auto r = read(fd, blob.data() + got, n - got);
        if (r <= 0) throw std::runtime_error("metadata exchange: peer closed");
        got += static_cast<std::size_t>(r);
    }
    return blob;
}

ferry::ucx_config make_config(const char* name, const options& o) {
    ferry::ucx_config cfg;
    cfg.name = name;
    if (!o.tls.empty()) cfg.ucx_options.emplace_back("TLS", o.tls);
    return cfg;
}

std::byte pattern(std::size_t block, std::size_t offset) {
    return static_cast<std::byte>((block * 131 + offset * 7 + 1) & 0xFF);
}

// The target spreads the blocks out: block i lands at slot 2i, so the list is
// scattered the way KV-cache blocks are. Its memory comes from allocate():
// shared memory that the initiator, on this host, maps and copies into.
template <class Backend>
int run_target(int fd, const options& o) {
    Backend backend(make_config("target", o));
    auto region = backend.allocate(2 * o.blocks * o.block_size);
    std::span<const std::byte> memory(static_cast<const std::byte*>(region.data()), region.size());
    std::optional<ferry::metadata_listener> listener;
    ferry::peer initiator;
    if (fd >= 0) {
        send_blob(fd, backend.local_metadata());
        initiator = backend.load_remote(recv_blob(fd));
    } else {
        ferry::listener_config lc;
        lc.bind_address = "0.0.0.0";
        lc.port = static_cast<std::uint16_t>(o.listen_port);
        listener.emplace(lc);
        listener->publish(backend.local_metadata());
        std::printf("target: listening on port %u; start the initiator with --connect HOST:%u\n", listener->port(),
                    listener->port());
        std::fflush(stdout);
        const auto give_up = std::chrono::steady_clock::now() + std::chrono::minutes(10);
        while (!initiator.valid()) {
            if (std::chrono::steady_clock::now() > give_up) throw std::runtime_error("no initiator came in 10 minutes");
            for (auto& e : listener->poll_events(std::chrono::seconds(1)))
                if (e.name == "initiator") initiator = backend.load_remote(e.blob);
        }
        std::printf("target: the initiator pushed its metadata\n");
    }

    // The notifications need this side to progress, and so does the data
    // wherever UCX carries it (another host, or --path ucx, where UCX
    // emulates RMA on this memory): so poll until the initiator says it is done.
    bool done = false;
    int failures = 0;
    while (!done) {
        backend.wait_notifs(std::chrono::milliseconds(100));
        backend.poll_notifs([&](std::string_view from, std::string_view msg) {
            if (msg == "written") {
                for (std::size_t b = 0; b < o.blocks; ++b)
                    for (std::size_t k = 0; k < o.block_size; ++k)
                        if (memory[2 * b * o.block_size + k] != pattern(b, k)) ++failures;
                std::printf("target: notification '%.*s' from %.*s; %s\n", static_cast<int>(msg.size()), msg.data(),
                            static_cast<int>(from.size()), from.data(),
                            failures ? "data WRONG" : "all blocks already in place");
            } else if (msg == "done") {
                done = true;
            }
        });
    }
    // Tell the initiator it may go: its worker must outlive our connection
    // to it, which it does not otherwise wait for (host_ipc needs nothing of us).
    if (fd >= 0) {
        const char bye = 'k';
        if (write(fd, &bye, 1) != 1) throw std::runtime_error("telling the initiator it may go: write failed");
    } else if (auto s = backend.send_notif(initiator, "bye"); ferry::is_error(s)) {
        throw std::runtime_error("telling the initiator it may go: " + std::string(ferry::to_string(s)));
    }
    return failures == 0 ? 0 : 1;
}

// Progresses until the target says it is done with us.
template <class Backend>
void await_target(int fd, Backend& backend) {
    if (fd < 0) {  // no socket between us: the target says so in a notification
        const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        bool bye = false;
        while (!bye) {
            if (std::chrono::steady_clock::now() > give_up) throw std::runtime_error("the target never said bye");
            backend.wait_notifs(std::chrono::milliseconds(100));
            backend.poll_notifs([&](std::string_view from, std::string_view msg) {
                bye = bye || (from == "target" && msg == "bye");
            });
        }
        return;
    }
    pollfd p{fd, POLLIN, 0};
    while (::poll(&p, 1, 1) == 0) backend.progress();
    char bye = 0;
    if (read(fd, &bye, 1) != 1) throw std::runtime_error("waiting for the target: it closed the connection");
}

template <class Backend>
int run_initiator(int fd, const options& o) {
    using clock = std::chrono::steady_clock;
    Backend backend(make_config("initiator", o));
    std::vector<std::byte> source(o.blocks * o.block_size), readback(o.blocks * o.block_size);
    for (std::size_t b = 0; b < o.blocks; ++b)
        for (std::size_t k = 0; k < o.block_size; ++k) source[b * o.block_size + k] = pattern(b, k);
    auto src = backend.register_memory(source.data(), source.size());
    auto dst = backend.register_memory(readback.data(), readback.size());

    std::vector<std::byte> target_blob;
    if (fd >= 0) {
        target_blob = recv_blob(fd);
        send_blob(fd, backend.local_metadata());
    } else {
        target_blob = ferry::fetch_metadata(o.connect_host, o.connect_port, std::chrono::seconds(10));
        ferry::push_metadata(o.connect_host, o.connect_port, backend.local_metadata(), std::chrono::seconds(10));
    }
    ferry::peer target = backend.load_remote(target_blob);
    // The target published one region; its blocks lie there.
    std::uintptr_t remote = backend.remote_regions(target).at(0).addr;

    std::vector<ferry::desc> local_w, local_r, remote_blocks;
    for (std::size_t b = 0; b < o.blocks; ++b) {
        local_w.push_back(src.slice(b * o.block_size, o.block_size));
        local_r.push_back(dst.slice(b * o.block_size, o.block_size));
        remote_blocks.push_back({remote + 2 * b * o.block_size, o.block_size, 0});
    }
    auto write = backend.prepare(ferry::xfer_op::write, local_w, remote_blocks, target, o.path);
    auto read = backend.prepare(ferry::xfer_op::read, local_r, remote_blocks, target, o.path);

    auto wait = [&](ferry::xfer x, std::string_view notif) {
        auto t0 = clock::now();
        auto s = backend.post(x, notif);
        if (s == ferry::status::in_progress) s = backend.wait(x, std::chrono::seconds(60));
        if (s != ferry::status::ok) throw std::runtime_error("transfer failed: " + std::string(ferry::to_string(s)));
        return std::chrono::duration<double>(clock::now() - t0).count();
    };
    double bytes = static_cast<double>(o.blocks * o.block_size);
    double tw = wait(write, "written");
    double tr = wait(read, {});
    bool ok = readback == source;
    backend.send_notif(target, "done");
    await_target(fd, backend);

    auto cost = backend.estimate(write);
    std::printf("initiator: WRITE %zu blocks x %zu B = %.1f KiB in %.1f us (%.2f GB/s), path %s\n", o.blocks,
                o.block_size, bytes / 1024, tw * 1e6, bytes / tw / 1e9,
                std::string(ferry::to_string(backend.path_of(write))).c_str());
    std::printf("initiator: READ  %zu blocks x %zu B = %.1f KiB in %.1f us (%.2f GB/s); %s\n", o.blocks, o.block_size,
                bytes / 1024, tr * 1e6, bytes / tr / 1e9, ok ? "every byte matches" : "data WRONG");
    std::printf("initiator: the WRITE was estimated at %.1f us (%s)\n", static_cast<double>(cost.duration.count()) / 1e3,
                std::string(ferry::to_string(cost.method)).c_str());
    backend.release(write);
    backend.release(read);
    return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    options o;
    try {
        o = parse(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ferry-demo: %s\n", e.what());
        return 2;
    }
    if (o.listen_port >= 0 || !o.connect_host.empty()) {
        const bool target = o.listen_port >= 0;
        try {
            int rc = target ? (o.thread ? run_target<threaded_backend>(-1, o) : run_target<inline_backend>(-1, o))
                            : (o.thread ? run_initiator<threaded_backend>(-1, o) : run_initiator<inline_backend>(-1, o));
            if (rc == 0) std::printf("ferry-demo: OK (%s)\n", target ? "target" : "initiator");
            return rc;
        } catch (const std::exception& e) {
            std::fprintf(stderr, "ferry-demo (%s): %s\n", target ? "target" : "initiator", e.what());
            return 1;
        }
    }
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
        std::perror("ferry-demo: socketpair");
        return 1;
    }
    std::fflush(stdout);
    // Fork before any UCX object exists: UCX state does not survive a fork.
    pid_t child = fork();
    if (child < 0) {
        std::perror("ferry-demo: fork");
        return 1;
    }
    try {
        if (child == 0) {
            close(fds[0]);
            alarm(120);
            int rc = o.thread ? run_target<threaded_backend>(fds[1], o) : run_target<inline_backend>(fds[1], o);
            std::fflush(stdout);
            _exit(rc);
        }
        close(fds[1]);
        int rc = o.thread ? run_initiator<threaded_backend>(fds[0], o) : run_initiator<inline_backend>(fds[0], o);
        int wstatus = 0;
        waitpid(child, &wstatus, 0);
        if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
            std::fprintf(stderr, "ferry-demo: the target failed\n");
            return 1;
        }
        if (rc == 0)
            std::printf("ferry-demo: OK (%s, %s progress)\n", o.tls.empty() ? "transports chosen by UCX" : o.tls.c_str(),
                        o.thread ? "thread" : "inline");
        return rc;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ferry-demo (%s): %s\n", child == 0 ? "target" : "initiator", e.what());
        if (child == 0) _exit(1);
        kill(child, SIGKILL);
        waitpid(child, nullptr, 0);
        return 1;
    }
}
