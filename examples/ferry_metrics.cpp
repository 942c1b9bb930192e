// ferry-metrics: telemetry::on, and its metrics served to Prometheus. The
// program forks a target, WRITEs a list of blocks into it --transfers times
// (a notification on the last), then serves the initiator's counters and
// latency histograms in Prometheus' text format on a loopback port, from a
// plain socket: ferry writes the text (ferry::write_prometheus), any HTTP
// server an application already has can serve it.
#include <ferry/ferry.hpp>
#include <ferry/prometheus.hpp>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

template <class Progress>
using traced_backend = ferry::ucx_backend<ferry::policy<Progress, ferry::memory::host, ferry::telemetry::on>>;

struct options {
    std::string tls;  // empty: UCX's choice
    bool thread = false;
    std::size_t transfers = 1000;
    std::size_t blocks = 16;
    std::size_t block_size = 4096;
    int port = 9464;
    std::size_t scrapes = 0;  // 0: serve until SIGINT or SIGTERM
};

[[noreturn]] void usage(int code) {
    std::fprintf(code == 0 ? stdout : stderr,
                 "usage: ferry-metrics [OPTION]...\n"
                 "\n"
                 "Forks a target and WRITEs N blocks into it, --transfers times, with\n"
                 "ferry's telemetry on (policy<..., telemetry::on>), then serves the\n"
                 "initiator's counters and latency histograms in Prometheus' text format\n"
                 "at http://127.0.0.1:PORT/metrics.\n"
                 "\n"
                 "  --tls LIST          UCX transports (UCX_TLS): shm, tcp, ...  [UCX's choice]\n"
                 "  --progress inline|thread  ferry's progress policy          [inline]\n"
                 "  --transfers N       posts of the list                         [1000]\n"
                 "  --blocks N          blocks in the list                          [16]\n"
                 "  --block-size BYTES  bytes per block                           [4096]\n"
                 "  --port PORT         loopback port to serve on (0: any, printed) [9464]\n"
                 "  --scrapes N         exit after serving N requests (0: serve until\n"
                 "                      SIGINT or SIGTERM)                          [0]\n"
                 "  --help              this text\n");
    std::exit(code);
}

std::size_t parse_count(const char* option, const char* v, std::size_t lo, std::size_t hi) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long n = std::strtoull(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || v[0] == '-' || n < lo || n > hi)
        throw std::invalid_argument(std::string(option) + ": '" + v + "' is not a number from " + std::to_string(lo) +
                                    " to " + std::to_string(hi));
    return static_cast<std::size_t>(n);
}

options parse(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--help" || a == "-h") usage(0);
        if (i + 1 >= argc) throw std::invalid_argument(std::string(a) + ": needs a value (--help lists options)");
        const char* v = argv[++i];
        if (a == "--tls") o.tls = v;
        else if (a == "--progress") {
            if (std::string_view(v) != "inline" && std::string_view(v) != "thread")
                throw std::invalid_argument(std::string("--progress: '") + v + "' is neither inline nor thread");
            o.thread = std::string_view(v) == "thread";
        } else if (a == "--transfers") o.transfers = parse_count("--transfers", v, 1, 100'000'000);
        else if (a == "--blocks") o.blocks = parse_count("--blocks", v, 1, 1 << 20);
        else if (a == "--block-size") o.block_size = parse_count("--block-size", v, 1, 1 << 26);
        else if (a == "--port") o.port = static_cast<int>(parse_count("--port", v, 0, 65535));
        else if (a == "--scrapes") o.scrapes = parse_count("--scrapes", v, 0, 1'000'000);
        else throw std::invalid_argument("unknown option '" + std::string(a) + "' (--help lists options)");
    }
    if (o.blocks > (std::size_t{1} << 30) / o.block_size)
        throw std::invalid_argument("--blocks x --block-size: more than 1 GiB");
    return o;
}

// Length-prefixed messages over the socketpair between the two processes.
void send_msg(int fd, const std::vector<std::byte>& m) {
    const std::uint64_t n = m.size();
    if (::write(fd, &n, sizeof n) != sizeof n ||
        ::write(fd, m.data(), m.size()) != static_cast<ssize_t>(m.size()))
        throw std::runtime_error("the other process went away");
}
std::vector<std::byte> recv_msg(int fd) {
    std::uint64_t n = 0;
    if (::read(fd, &n, sizeof n) != sizeof n || n > (1U << 26)) throw std::runtime_error("the other process went away");
    std::vector<std::byte> m(n);
    for (std::size_t got = 0; got < n;) {
        const ssize_t r = ::read(fd, m.data() + got, n - got);
        if (r <= 0) throw std::runtime_error("the other process went away");
        got += static_cast<std::size_t>(r);
    }
    return m;
}

ferry::ucx_config config_of(const options& o, const char* name) {
    ferry::ucx_config c{name, {}};
    if (!o.tls.empty()) c.ucx_options = {{"TLS", o.tls}};
    return c;
}

template <class Backend>
int run_target(int fd, const options& o) {
    Backend b(config_of(o, "target"));
    auto mem = b.allocate(o.blocks * o.block_size);
    auto blob = b.local_metadata();
    std::vector<std::byte> addr(sizeof(std::uint64_t));
    const auto base = reinterpret_cast<std::uint64_t>(mem.data());
    std::memcpy(addr.data(), &base, sizeof base);
    send_msg(fd, blob);
    send_msg(fd, addr);
    static_cast<void>(b.load_remote(recv_msg(fd)));
    bool done = false;
    while (!done) {
        b.progress();
        b.poll_notifs([&](std::string_view, std::string_view msg) { done = msg == "last"; });
    }
    // The initiator may still flush to us; stay, idling, until it says goodbye.
    pollfd p{fd, POLLIN, 0};
    while (::poll(&p, 1, 10) == 0) b.progress();
    return 0;
}

volatile std::sig_atomic_t stop = 0;

// Serves GET /metrics until o.scrapes requests (or a signal).
template <class Backend>
void serve(Backend& b, const options& o) {
    const int ls = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int on = 1;
    ::setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(o.port));
    socklen_t len = sizeof a;
    if (ls < 0 || ::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(ls, 16) != 0 ||
        ::getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len) != 0)
        throw std::runtime_error("--port " + std::to_string(o.port) + ": " + std::strerror(errno));
    std::printf("initiator: listening on port %u: http://127.0.0.1:%u/metrics\n", ntohs(a.sin_port),
                ntohs(a.sin_port));
    std::fflush(stdout);
    for (std::size_t served = 0; !stop && (o.scrapes == 0 || served < o.scrapes);) {
        pollfd p{ls, POLLIN, 0};
        if (::poll(&p, 1, 200) <= 0) continue;
        const int c = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        // The request line is all that matters; a client that sends nothing
        // within a second is dropped.
        std::string req;
        char buf[1024];
        pollfd cp{c, POLLIN, 0};
        while (req.find("\r\n\r\n") == std::string::npos && req.size() < 8192 && ::poll(&cp, 1, 1000) > 0) {
            const ssize_t r = ::read(c, buf, sizeof buf);
            if (r <= 0) break;
            req.append(buf, static_cast<std::size_t>(r));
        }
        const bool metrics = req.starts_with("GET /metrics ") || req.starts_with("GET /metrics?");
        const std::string body = metrics ? ferry::to_prometheus(b.snapshot()) : "not found: try /metrics\n";
        const std::string head = std::string(metrics ? "HTTP/1.0 200 OK\r\n" : "HTTP/1.0 404 Not Found\r\n") +
                                 "Content-Type: text/plain; version=0.0.4\r\nContent-Length: " +
                                 std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
        const std::string reply = head + body;
        for (std::size_t sent = 0; sent < reply.size();) {
            const ssize_t w = ::send(c, reply.data() + sent, reply.size() - sent, MSG_NOSIGNAL);
            if (w <= 0) break;
            sent += static_cast<std::size_t>(w);
        }
        ::close(c);
        ++served;
    }
    ::close(ls);
}

template <class Backend>
int run_initiator(int fd, const options& o) {
    Backend b(config_of(o, "initiator"));
    auto mem = b.allocate(o.blocks * o.block_size);
    const ferry::peer target = b.load_remote(recv_msg(fd));
    const auto addr = recv_msg(fd);
    std::uint64_t remote = 0;
    std::memcpy(&remote, addr.data(), sizeof remote);
    send_msg(fd, b.local_metadata());
    std::vector<ferry::desc> local, far;
    const auto here = reinterpret_cast<std::uintptr_t>(mem.data());
    for (std::size_t i = 0; i < o.blocks; ++i) {
        local.push_back({here + i * o.block_size, o.block_size, 0});
        far.push_back({remote + i * o.block_size, o.block_size, 0});
    }
    const ferry::xfer x = b.prepare(ferry::xfer_op::write, local, far, target);
    for (std::size_t i = 0; i < o.transfers; ++i) {
        auto s = b.post(x, i + 1 == o.transfers ? "last" : "");
        if (s == ferry::status::in_progress) s = b.wait(x, std::chrono::seconds(30));
        if (s != ferry::status::ok) throw std::runtime_error("transfer " + std::to_string(i) + ": " +
                                                             std::string(ferry::to_string(s)));
    }
    const auto t = b.telemetry_of(x);
    std::printf("initiator: %zu WRITEs of %zu x %zu B, the last on path %s in %.1f us\n", o.transfers, o.blocks,
                o.block_size, std::string(ferry::to_string(t->path)).c_str(),
                std::chrono::duration<double, std::micro>(t->completed - t->posted).count());
    serve(b, o);
    static_cast<void>(b.release(x));
    ::close(fd);  // the target's goodbye
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    options o;
    try {
        o = parse(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ferry-metrics: %s\n", e.what());
        return 2;
    }
    std::signal(SIGINT, [](int) { stop = 1; });
    std::signal(SIGTERM, [](int) { stop = 1; });
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
        std::perror("ferry-metrics: socketpair");
        return 1;
    }
    const pid_t child = ::fork();
    if (child < 0) {
        std::perror("ferry-metrics: fork");
        return 1;
    }
    try {
        if (child == 0) {
            ::close(fds[0]);
            std::_Exit(o.thread ? run_target<traced_backend<ferry::progress::thread>>(fds[1], o)
                                : run_target<traced_backend<ferry::progress::inline_poll>>(fds[1], o));
        }
        ::close(fds[1]);
        const int rc = o.thread ? run_initiator<traced_backend<ferry::progress::thread>>(fds[0], o)
                                : run_initiator<traced_backend<ferry::progress::inline_poll>>(fds[0], o);
        int status = 0;
        ::waitpid(child, &status, 0);
        return rc != 0 ? rc : (WIFEXITED(status) ? WEXITSTATUS(status) : 1);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ferry-metrics: %s: %s\n", child == 0 ? "target" : "initiator", e.what());
        if (child != 0) {
            ::kill(child, SIGKILL);
            ::waitpid(child, nullptr, 0);
        }
        return 1;
    }
}
