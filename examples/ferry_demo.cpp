// ferry-demo: two processes from one command. The target registers memory and
// publishes its metadata; the initiator WRITEs a list of blocks into it with
// a notification, the target checks the bytes when the notification arrives,
// then the initiator READs the blocks back and checks them too.
// With --listen and --connect, the two are started separately (on two hosts,
// say) and find each other through a metadata_listener; with --directory,
// through etcd (ferry::etcd_directory and ferry::peer_sync), where this
// program was built with ferry::etcd.
#include <ferry/ferry.hpp>
#if defined(FERRY_DEMO_ETCD)
#include <ferry/etcd.hpp>
#endif

#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
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

    // --directory: etcd's endpoints as base URLs, and the argument as given.
    std::vector<std::string> directory;
    std::string directory_arg;
    std::string role;  // "target" or "initiator"
    std::string name;  // ours; empty: the role's
    std::string peer;  // the other side's; empty: the other role's
    std::string name_space = "ferry-demo";
    double wait_s = 60;
    double ttl_s = 10;
    std::size_t measure_restarts = 0;  // > 0: measure peer_sync instead of the demo
};

constexpr bool have_etcd =
#if defined(FERRY_DEMO_ETCD)
    true;
#else
    false;
#endif

// Agent names: --name and --peer where given (--directory), else the roles'.
std::string own_name(const options& o, bool target) {
    return o.name.empty() ? (target ? "target" : "initiator") : o.name;
}
std::string peer_name(const options& o, bool target) {
    return o.peer.empty() ? (target ? "initiator" : "target") : o.peer;
}

void usage(const char* argv0) {
    std::printf(
        "usage: %s [--tls LIST] [--progress inline|thread] [--path auto|ucx|host_ipc] [--blocks N]\n"
        "          [--block-size BYTES] [--listen PORT | --connect HOST:PORT |\n"
        "           --directory etcd://HOST:PORT[,HOST:PORT...] --role target|initiator\n"
        "           [--name NAME] [--peer NAME] [--namespace NS] [--wait SECONDS] [--ttl SECONDS]]\n"
        "       %s --directory etcd://HOST:PORT[,...] --measure-restarts N [--ttl SECONDS]\n"
        "\n"
        "Forks a target and an initiator, WRITEs N scattered blocks into the\n"
        "target with a notification, READs them back, and checks every byte.\n"
        "With --listen, this process is the target alone, and waits for an\n"
        "initiator started elsewhere with --connect (give both the same --blocks\n"
        "and --block-size). With --directory, the two sides are started separately\n"
        "and find each other in etcd.\n"
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
        "  --directory etcd://HOST:PORT[,HOST:PORT...]\n"
        "                      find the peer in etcd (its client URLs, tried in turn):\n"
        "                      publish our metadata under our name, load the peer's\n"
        "                      once it appears (ferry::etcd_directory, ferry::peer_sync)%s\n"
        "  --role ROLE         with --directory: target or initiator\n"
        "  --name NAME         with --directory: our agent name (default: the role)\n"
        "  --peer NAME         with --directory: the other side's name (default: the\n"
        "                      other role)\n"
        "  --namespace NS      with --directory: etcd namespace (default ferry-demo)\n"
        "  --wait SECONDS      with --directory: how long to wait for the peer to appear\n"
        "                      (default 60)\n"
        "  --ttl SECONDS       with --directory: lease of our entry; a process killed\n"
        "                      leaves etcd within about this long (default 10)\n"
        "  --measure-restarts N\n"
        "                      with --directory, instead of the demo: start an observer\n"
        "                      that runs peer_sync, then N times start an agent, kill it\n"
        "                      (SIGKILL) and start it again at once, kill it again, and\n"
        "                      print how long after each publish the observer had it\n"
        "                      loaded, and after each kill unloaded\n"
        "  --help              this text\n",
        argv0, argv0, have_etcd ? "" : ";\n                      not in this build, made without libcurl (ferry::etcd)");
}

std::size_t parse_size(const char* flag, const char* text) {
    char* end = nullptr;
    errno = 0;
    unsigned long long v = std::strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v == 0 || text[0] == '-')
        throw std::invalid_argument(std::string(flag) + ": expected a positive integer, got '" + text + "'");
    return static_cast<std::size_t>(v);
}

double parse_seconds(const char* flag, const char* text) {
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !std::isfinite(v) || v <= 0 || v > 86400)
        throw std::invalid_argument(std::string(flag) + ": expected seconds (0 < s <= 86400), got '" + text + "'");
    return v;
}

// "etcd://HOST:PORT[,HOST:PORT...]" (each item may repeat the scheme) into
// the gateway's base URLs.
std::vector<std::string> parse_directory(const std::string& text) {
    const std::string scheme = "etcd://";
    auto bad = [&](const std::string& why) {
        return std::invalid_argument("--directory: " + why + " in '" + text +
                                     "' (expected etcd://HOST:PORT[,HOST:PORT...])");
    };
    if (text.rfind(scheme, 0) != 0) throw bad("no etcd:// scheme");
    std::vector<std::string> out;
    std::size_t start = 0;
    for (;;) {
        const std::size_t comma = text.find(',', start);
        std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (item.rfind(scheme, 0) == 0) item.erase(0, scheme.size());
        const std::size_t colon = item.rfind(':');
        if (item.empty() || colon == std::string::npos || colon == 0 || colon + 1 == item.size())
            throw bad("'" + item + "' is not HOST:PORT");
        const std::string port = item.substr(colon + 1);
        if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 || std::stoul(port) == 0 ||
            std::stoul(port) > 65535)
            throw bad("'" + port + "' is not a port");
        if (item.find_first_of("/?#@ ") != std::string::npos) throw bad("'" + item + "' is not HOST:PORT");
        out.push_back("http://" + item);
        if (comma == std::string::npos) return out;
        start = comma + 1;
    }
}

std::string parse_agent_name(const char* flag, std::string_view v) {
    if (v.empty() || v.find('/') != std::string_view::npos)
        throw std::invalid_argument(std::string(flag) + ": '" + std::string(v) + "' is empty or holds '/'");
    return std::string(v);
}

options parse(int argc, char** argv) {
    options o;
    std::string directory_flag;  // the first option given that only --directory takes
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        for (std::string_view f : {"--role", "--name", "--peer", "--namespace", "--wait", "--ttl", "--measure-restarts"})
            if (a == f && directory_flag.empty()) directory_flag = f;
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
        } else if (a == "--directory") {
            o.directory_arg = value();
            if (!have_etcd)
                throw std::invalid_argument("--directory: this ferry-demo was built without etcd support (ferry::etcd "
                                            "needs libcurl, which its build did not find)");
            o.directory = parse_directory(o.directory_arg);
        } else if (a == "--role") {
            o.role = value();
            if (o.role != "target" && o.role != "initiator")
                throw std::invalid_argument("--role: expected target or initiator, got '" + o.role + "'");
        } else if (a == "--name") {
            o.name = parse_agent_name("--name", value());
        } else if (a == "--peer") {
            o.peer = parse_agent_name("--peer", value());
        } else if (a == "--namespace") {
            o.name_space = parse_agent_name("--namespace", value());
        } else if (a == "--wait") {
            o.wait_s = parse_seconds("--wait", value());
        } else if (a == "--ttl") {
            o.ttl_s = parse_seconds("--ttl", value());
        } else if (a == "--measure-restarts") {
            o.measure_restarts = parse_size("--measure-restarts", value());
        } else {
            throw std::invalid_argument("unknown option '" + std::string(a) + "' (try --help)");
        }
    }
    if (o.listen_port >= 0 && !o.connect_host.empty())
        throw std::invalid_argument("--listen and --connect: one process is one side");
    if (!o.directory.empty() && (o.listen_port >= 0 || !o.connect_host.empty()))
        throw std::invalid_argument("--directory: the peer is found there, not with --listen or --connect");
    if (o.directory.empty() && !directory_flag.empty())
        throw std::invalid_argument(directory_flag + ": only with --directory");
    if (!o.directory.empty() && o.role.empty() == (o.measure_restarts == 0))
        throw std::invalid_argument("--directory: give either --role target|initiator or --measure-restarts N");
    if (!o.role.empty() && own_name(o, o.role == "target") == peer_name(o, o.role == "target"))
        throw std::invalid_argument("--name and --peer: the two sides need different names");
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

#if defined(FERRY_DEMO_ETCD)
ferry::etcd_options etcd_settings(const options& o) {
    ferry::etcd_options e;
    e.endpoints = o.directory;
    e.name_space = o.name_space;
    e.ttl = std::chrono::milliseconds(std::llround(o.ttl_s * 1000));
    return e;
}

// The etcd directory and the peer_sync over it, for one side of the demo.
template <class Backend>
struct directory_link {
    directory_link(Backend& backend, const options& o, std::string me)
        : dir(etcd_settings(o)), sync(dir, backend, me), self(std::move(me)) {}
    ferry::etcd_directory dir;
    ferry::peer_sync<ferry::etcd_directory, Backend> sync;
    std::string self;
};

// Publishes our metadata and syncs until `them` is loaded; the errors name
// --directory and say what failed: etcd that cannot be reached, or a peer
// that never appears.
template <class Backend>
ferry::peer meet_in_directory(directory_link<Backend>& link, Backend& backend, const options& o,
                              const std::string& them) {
    try {
        link.dir.publish(link.self, backend.local_metadata());
    } catch (const ferry::error& e) {
        throw std::runtime_error("--directory " + o.directory_arg + ": cannot publish our metadata: " + e.what());
    }
    std::printf("%s: published our metadata as '%s' in etcd namespace '%s'; waiting for '%s'\n", o.role.c_str(),
                link.self.c_str(), o.name_space.c_str(), them.c_str());
    std::fflush(stdout);
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::duration<double>(o.wait_s);
    for (;;) {
        const ferry::sync_result r = link.sync.sync_once(std::chrono::milliseconds(500));
        for (const auto& [name, why] : r.failed)
            std::fprintf(stderr, "%s: could not load '%s' (trying again): %s\n", o.role.c_str(), name.c_str(),
                         why.c_str());
        if (auto p = backend.find_peer(them)) return *p;
        if (std::chrono::steady_clock::now() > give_up) {
            char within[32];
            std::snprintf(within, sizeof within, "%g", o.wait_s);
            std::string why = "'" + them + "' did not appear in namespace '" + o.name_space + "' within " + within +
                              " s (is it started with --directory " + o.directory_arg + " --role " +
                              (o.role == "target" ? "initiator" : "target") + "?)";
            if (auto h = link.dir.health()) why += "; etcd's last error: " + std::string(h->what());
            throw std::runtime_error("--directory " + o.directory_arg + ": " + why);
        }
    }
}
#endif

// The target spreads the blocks out: block i lands at slot 2i, so the list is
// scattered the way KV-cache blocks are. Its memory comes from allocate():
// shared memory that the initiator, on this host, maps and copies into.
template <class Backend>
int run_target(int fd, const options& o) {
    const std::string me = own_name(o, true), them = peer_name(o, true);
    Backend backend(make_config(me.c_str(), o));
    auto region = backend.allocate(2 * o.blocks * o.block_size);
    std::span<const std::byte> memory(static_cast<const std::byte*>(region.data()), region.size());
    std::optional<ferry::metadata_listener> listener;
#if defined(FERRY_DEMO_ETCD)
    std::optional<directory_link<Backend>> link;
#endif
    ferry::peer initiator;
    if (fd >= 0) {
        send_blob(fd, backend.local_metadata());
        initiator = backend.load_remote(recv_blob(fd));
    } else if (!o.directory.empty()) {
#if defined(FERRY_DEMO_ETCD)
        link.emplace(backend, o, me);
        initiator = meet_in_directory(*link, backend, o, them);
        std::printf("target: loaded '%s' from etcd\n", them.c_str());
#endif
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
                if (e.name == them) initiator = backend.load_remote(e.blob);
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
        // A dead initiator sends no "done": its failure (on this host, the
        // moment its process exits) wakes wait_notifs instead.
        for (const ferry::peer_event& e : backend.take_peer_events())
            if (e.kind == ferry::peer_event_kind::failed && e.name == them)
                throw std::runtime_error("the initiator failed: " + e.detail);
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
#if defined(FERRY_DEMO_ETCD)
    // The entry we loaded may have been one a killed initiator left behind
    // (it lingers for its TTL) and the one that did the transfer published
    // since: take the latest before saying bye.
    if (link) {
        static_cast<void>(link->sync.sync_once(std::chrono::milliseconds(0)));
        if (auto p = backend.find_peer(them)) initiator = *p;
    }
#endif
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
void await_target(int fd, Backend& backend, const std::string& target) {
    if (fd < 0) {  // no socket between us: the target says so in a notification
        const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        bool bye = false;
        while (!bye) {
            if (std::chrono::steady_clock::now() > give_up) throw std::runtime_error("the target never said bye");
            backend.wait_notifs(std::chrono::milliseconds(100));
            // Notifications first: the target exits right after its bye, and
            // its exit may be noticed in the same round as the bye itself.
            backend.poll_notifs([&](std::string_view from, std::string_view msg) {
                bye = bye || (from == target && msg == "bye");
            });
            if (bye) break;
            for (const ferry::peer_event& e : backend.take_peer_events())
                if (e.kind == ferry::peer_event_kind::failed && e.name == target)
                    throw std::runtime_error("the target failed before it said bye: " + e.detail);
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
    const std::string me = own_name(o, false), them = peer_name(o, false);
    Backend backend(make_config(me.c_str(), o));
    std::vector<std::byte> source(o.blocks * o.block_size), readback(o.blocks * o.block_size);
    for (std::size_t b = 0; b < o.blocks; ++b)
        for (std::size_t k = 0; k < o.block_size; ++k) source[b * o.block_size + k] = pattern(b, k);
    auto src = backend.register_memory(source.data(), source.size());
    auto dst = backend.register_memory(readback.data(), readback.size());

#if defined(FERRY_DEMO_ETCD)
    std::optional<directory_link<Backend>> link;
#endif
    ferry::peer target;
    if (fd >= 0) {
        const std::vector<std::byte> blob = recv_blob(fd);
        send_blob(fd, backend.local_metadata());
        target = backend.load_remote(blob);
    } else if (!o.directory.empty()) {
#if defined(FERRY_DEMO_ETCD)
        link.emplace(backend, o, me);
        target = meet_in_directory(*link, backend, o, them);
        std::printf("initiator: loaded '%s' from etcd\n", them.c_str());
#endif
    } else {
        target = backend.load_remote(ferry::fetch_metadata(o.connect_host, o.connect_port, std::chrono::seconds(10)));
        ferry::push_metadata(o.connect_host, o.connect_port, backend.local_metadata(), std::chrono::seconds(10));
    }
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
    await_target(fd, backend, them);

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

#if defined(FERRY_DEMO_ETCD)
// ---- --measure-restarts -----------------------------------------------------
// This process only forks and times: it makes no UCX or etcd object, so that
// every child starts clean (UCX state does not survive a fork). An observer
// child runs peer_sync and reports each load and unload with its time; agent
// children publish, report when, and wait to be killed. The times are
// steady_clock's, which on Linux is CLOCK_MONOTONIC: one clock for every
// process of this host.

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

void put_line(int fd, const std::string& line) {
    const std::string l = line + "\n";
    if (write(fd, l.data(), l.size()) != static_cast<ssize_t>(l.size()))
        throw std::runtime_error("reporting to the measuring process: write failed");
}

class child_process {
public:
    // Forks a child that runs body(report_fd, stop_fd) and exits with what it
    // returns; closing our end of stop_fd tells it to finish.
    template <class Body>
    explicit child_process(Body body) {
        int out[2], in[2];
        if (pipe(out) != 0 || pipe(in) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
        std::fflush(stdout);
        std::fflush(stderr);
        pid_ = fork();
        if (pid_ < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
        if (pid_ == 0) {
            close(out[0]);
            close(in[1]);
            int rc = 1;
            try {
                rc = body(out[1], in[0]);
            } catch (const std::exception& e) {
                std::fprintf(stderr, "ferry-demo (measuring): %s\n", e.what());
            }
            std::fflush(stdout);
            std::fflush(stderr);
            _exit(rc);
        }
        close(out[1]);
        close(in[0]);
        from_ = out[0];
        to_ = in[1];
    }
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;
    ~child_process() {
        if (pid_ > 0) kill9();
        close(from_);
        if (to_ >= 0) close(to_);
    }

    // Kills it with SIGKILL; when.
    std::int64_t kill9() {
        const std::int64_t at = now_ns();
        kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
        pid_ = -1;
        return at;
    }

    // Tells it to finish and waits; whether it exited 0.
    bool finish() {
        close(to_);
        to_ = -1;
        int st = 0;
        waitpid(pid_, &st, 0);
        pid_ = -1;
        return WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }

    // The next line it reports, waiting until `deadline`.
    std::string line(std::chrono::steady_clock::time_point deadline, const std::string& what) {
        for (;;) {
            if (auto nl = buf_.find('\n'); nl != std::string::npos) {
                std::string l = buf_.substr(0, nl);
                buf_.erase(0, nl + 1);
                return l;
            }
            const auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) throw std::runtime_error("timed out waiting for " + what);
            pollfd p{from_, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
            char b[512];
            const ssize_t n = read(from_, b, sizeof b);
            if (n <= 0) throw std::runtime_error(what + ": the process exited first (its error is above)");
            buf_.append(b, static_cast<std::size_t>(n));
        }
    }

private:
    pid_t pid_ = -1;
    int from_ = -1;
    int to_ = -1;
    std::string buf_;
};

int observe(int report, int stop, const options& o) {
    inline_backend backend(make_config("observer", o));
    ferry::etcd_directory dir(etcd_settings(o));
    ferry::peer_sync<ferry::etcd_directory, inline_backend> sync(dir, backend, "observer");
    static_cast<void>(sync.sync_once(std::chrono::milliseconds(0)));
    if (auto h = dir.health())
        throw std::runtime_error("--directory " + o.directory_arg + ": " + std::string(h->what()));
    put_line(report, "ready");
    for (;;) {
        pollfd p{stop, POLLIN, 0};
        if (::poll(&p, 1, 0) > 0) return 0;
        backend.progress();
        // Waiting inside sync_once, as an application would: the directory
        // reads etcd every poll_interval meanwhile.
        const ferry::sync_result r = sync.sync_once(std::chrono::seconds(1));
        const std::string t = std::to_string(now_ns());
        for (const auto& n : r.loaded) put_line(report, "loaded " + n + " " + t);
        for (const auto& n : r.unloaded) put_line(report, "unloaded " + n + " " + t);
        for (const auto& [n, why] : r.failed) put_line(report, "failed " + n + " " + why);
    }
}

int restarting_agent(int report, int stop, const options& o, const std::string& name) {
    threaded_backend backend(make_config(name.c_str(), o));
    auto region = backend.allocate(4096);
    ferry::etcd_directory dir(etcd_settings(o));
    dir.publish(name, backend.local_metadata());
    put_line(report, "published " + std::to_string(now_ns()));
    char c = 0;
    while (read(stop, &c, 1) < 0 && errno == EINTR) {
    }
    return 0;
}

// The time of the observer's next report of `event` ("loaded", "unloaded")
// for `name`.
std::int64_t await_event(child_process& observer, const std::string& event, const std::string& name,
                         std::chrono::steady_clock::time_point deadline) {
    for (;;) {
        const std::string l = observer.line(deadline, "the observer to report '" + name + "' " + event);
        if (l.rfind("failed ", 0) == 0) {
            std::fprintf(stderr, "observer: %s\n", l.c_str());
            continue;
        }
        const auto first = l.find(' '), last = l.rfind(' ');
        if (first == std::string::npos || first == last) continue;
        if (l.substr(0, first) == event && l.substr(first + 1, last - first - 1) == name)
            return std::stoll(l.substr(last + 1));
    }
}

int measure_restarts(const options& o) {
    const std::string name = o.name.empty() ? "agent" : o.name;
    const auto patience = std::chrono::duration<double>(30 + 2 * o.ttl_s);
    auto deadline = [&] {
        return std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::milliseconds>(patience);
    };
    // The observer reports an event just after it read etcd, and the parent
    // starts the next agent at once: without a random pause first, each
    // publish would fall at the same point of the observer's poll_interval.
    std::minstd_rand random(12345);
    std::uniform_int_distribution<long long> pause_us(
        0, std::chrono::duration_cast<std::chrono::microseconds>(ferry::etcd_options{}.poll_interval).count());
    auto start_agent = [&] {
        std::this_thread::sleep_for(std::chrono::microseconds(pause_us(random)));
        auto agent = std::make_unique<child_process>(
            [&](int report, int stop) { return restarting_agent(report, stop, o, name); });
        const std::string l = agent->line(deadline(), "the agent to publish");
        if (l.rfind("published ", 0) != 0) throw std::runtime_error("the agent said '" + l + "'");
        return std::pair{std::move(agent), std::stoll(l.substr(10))};
    };
    auto ms = [](std::int64_t from, std::int64_t to) { return static_cast<double>(to - from) / 1e6; };

    child_process observer([&](int report, int stop) { return observe(report, stop, o); });
    if (observer.line(deadline(), "the observer to start") != "ready")
        throw std::runtime_error("the observer did not start");
    std::vector<double> loaded, reloaded, unloaded;
    for (std::size_t i = 1; i <= o.measure_restarts; ++i) {
        auto [agent, published] = start_agent();
        loaded.push_back(ms(published, await_event(observer, "loaded", name, deadline())));
        agent->kill9();
        // Started again at once: its entry replaces the killed one's, which
        // is still there (its lease has not run out).
        std::tie(agent, published) = start_agent();
        reloaded.push_back(ms(published, await_event(observer, "loaded", name, deadline())));
        const std::int64_t killed = agent->kill9();
        unloaded.push_back(ms(killed, await_event(observer, "unloaded", name, deadline())));
        std::printf("round %zu/%zu: published -> loaded %.1f ms; killed, started again: published -> reloaded "
                    "%.1f ms; SIGKILL -> unloaded %.0f ms\n",
                    i, o.measure_restarts, loaded.back(), reloaded.back(), unloaded.back());
        std::fflush(stdout);
    }
    auto row = [](const char* what, std::vector<double> v) {
        std::sort(v.begin(), v.end());
        std::printf("  %-42s %8.1f %8.1f %8.1f ms\n", what, v.front(), v[v.size() / 2], v.back());
    };
    std::printf("ferry-demo: %zu rounds, TTL %g s, poll interval %lld ms; min, median, max:\n", o.measure_restarts,
                o.ttl_s, static_cast<long long>(ferry::etcd_options{}.poll_interval.count()));
    row("published -> loaded (no entry before)", loaded);
    row("published -> reloaded (restarted at once)", reloaded);
    row("SIGKILL -> unloaded", unloaded);
    if (!observer.finish()) throw std::runtime_error("the observer failed");
    return 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
    options o;
    try {
        o = parse(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ferry-demo: %s\n", e.what());
        return 2;
    }
#if defined(FERRY_DEMO_ETCD)
    if (o.measure_restarts > 0) {
        try {
            return measure_restarts(o);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "ferry-demo: %s\n", e.what());
            return 1;
        }
    }
#endif
    if (o.listen_port >= 0 || !o.connect_host.empty() || !o.role.empty()) {
        const bool target = o.listen_port >= 0 || o.role == "target";
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
