#include "control.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

namespace bench {

namespace {

constexpr std::size_t max_message = std::size_t{256} << 20;

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

void write_all(int fd, const void* data, std::size_t n) {
    auto* p = static_cast<const char*>(data);
    while (n > 0) {
        ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) throw peer_error(errno_text("control connection: send"));
        p += w;
        n -= static_cast<std::size_t>(w);
    }
}

// False on a clean EOF before the first byte.
bool read_all(int fd, void* data, std::size_t n) {
    auto* p = static_cast<char*>(data);
    std::size_t got = 0;
    while (got < n) {
        ssize_t r = ::recv(fd, p + got, n - got, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) throw peer_error(errno_text("control connection: recv"));
        if (r == 0) {
            if (got == 0) return false;
            throw peer_error("control connection: closed in the middle of a message");
        }
        got += static_cast<std::size_t>(r);
    }
    return true;
}

void put_le(std::vector<std::byte>& out, std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xFF));
}

std::uint64_t get_le(const std::byte* p, int bytes) {
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= std::uint64_t(std::to_integer<unsigned>(p[i])) << (8 * i);
    return v;
}

}  // namespace

// ---- wire format -----------------------------------------------------------

wire_writer& wire_writer::u64(std::uint64_t v) {
    put_le(buf_, v, 8);
    return *this;
}
wire_writer& wire_writer::f64(double v) {
    std::uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return u64(bits);
}
wire_writer& wire_writer::bytes(std::span<const std::byte> b) {
    u64(b.size());
    buf_.insert(buf_.end(), b.begin(), b.end());
    return *this;
}
wire_writer& wire_writer::str(std::string_view s) { return bytes(std::as_bytes(std::span(s.data(), s.size()))); }
wire_writer& wire_writer::u64s(std::span<const std::uint64_t> v) {
    u64(v.size());
    buf_.reserve(buf_.size() + 8 * v.size());
    for (auto x : v) put_le(buf_, x, 8);
    return *this;
}

std::span<const std::byte> wire_reader::take(std::size_t n) {
    if (n > in_.size() - pos_) throw peer_error("control connection: truncated message (version mismatch?)");
    auto out = in_.subspan(pos_, n);
    pos_ += n;
    return out;
}
std::uint64_t wire_reader::u64() { return get_le(take(8).data(), 8); }
double wire_reader::f64() {
    std::uint64_t bits = u64();
    double v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}
std::vector<std::byte> wire_reader::bytes() {
    auto n = u64();
    auto s = take(n);
    return {s.begin(), s.end()};
}
std::string wire_reader::str() {
    auto b = bytes();
    return {reinterpret_cast<const char*>(b.data()), b.size()};
}
std::vector<std::uint64_t> wire_reader::u64s() {
    auto n = u64();
    if (n > (in_.size() - pos_) / 8) throw peer_error("control connection: truncated message (version mismatch?)");
    std::vector<std::uint64_t> out(n);
    for (auto& x : out) x = u64();
    return out;
}
void wire_reader::expect_end() const {
    if (pos_ != in_.size()) throw peer_error("control connection: unexpected trailing bytes (version mismatch?)");
}

// ---- control ---------------------------------------------------------------

control::control(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {}
control::~control() { ::close(fd_); }

void control::send(msg type, std::span<const std::byte> body) {
    if (body.size() > max_message) throw std::length_error("control message too large");
    std::vector<std::byte> frame;
    frame.reserve(8 + body.size());
    put_le(frame, static_cast<std::uint32_t>(type), 4);
    put_le(frame, body.size(), 4);
    frame.insert(frame.end(), body.begin(), body.end());
    write_all(fd_, frame.data(), frame.size());
}

void control::send_error(std::string_view what) noexcept {
    try {
        send(msg::error, std::as_bytes(std::span(what.data(), what.size())));
    } catch (...) {
    }
}

bool control::readable() const {
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, 0);
    if (r < 0 && errno != EINTR) throw peer_error(errno_text("control connection: poll"));
    return r > 0;
}

message control::recv() {
    std::byte header[8];
    if (!read_all(fd_, header, sizeof header))
        throw peer_error("the " + peer_ + " closed the control connection (it exited or crashed)");
    message m;
    m.type = static_cast<msg>(get_le(header, 4));
    auto len = get_le(header + 4, 4);
    if (len > max_message) throw peer_error("control connection: oversized message (not ferry-bench?)");
    m.body.resize(len);
    if (len && !read_all(fd_, m.body.data(), len)) throw peer_error("control connection: closed mid-message");
    if (m.type == msg::error)
        throw peer_error("the " + peer_ + " failed: " +
                         std::string(reinterpret_cast<const char*>(m.body.data()), m.body.size()));
    return m;
}

message control::await_asleep(msg expected, double timeout, std::string_view what) {
    pollfd p{fd_, POLLIN, 0};
    const int ms = static_cast<int>(std::min(timeout * 1000, 2e9));
    int r;
    do r = ::poll(&p, 1, ms);
    while (r < 0 && errno == EINTR);
    if (r < 0) throw peer_error(errno_text("control connection: poll"));
    if (r == 0)
        throw peer_error(std::string("timed out after ") + std::to_string(timeout) + " s waiting for the " + peer_ +
                         " (" + std::string(what) + ")");
    return expect(recv(), expected, what);
}

message control::expect(message m, msg expected, std::string_view what) const {
    if (m.type != expected)
        throw peer_error("control connection: the " + peer_ + " sent message " +
                         std::to_string(static_cast<unsigned>(m.type)) + " while waiting for " + std::string(what) +
                         " (version mismatch?)");
    return m;
}

// ---- set-up ----------------------------------------------------------------

forked fork_pair() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) throw std::runtime_error(errno_text("socketpair"));
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t child = ::fork();
    if (child < 0) throw std::runtime_error(errno_text("fork"));
    if (child == 0) {
        ::close(fds[0]);
        return {fds[1], 0};
    }
    ::close(fds[1]);
    return {fds[0], child};
}

namespace {
void tune(int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}
}  // namespace

int listen_and_accept(std::uint16_t port) {
    int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
    bool v6 = fd >= 0;
    if (!v6) fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) throw std::runtime_error(errno_text("--listen: socket"));
    int one = 1, zero = 0;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (v6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    sockaddr_storage ss{};
    socklen_t len;
    if (v6) {
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_any;
        a->sin6_port = htons(port);
        len = sizeof *a;
    } else {
        auto* a = reinterpret_cast<sockaddr_in*>(&ss);
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_ANY);
        a->sin_port = htons(port);
        len = sizeof *a;
    }
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, 1) != 0) {
        auto e = errno_text(("--listen " + std::to_string(port)).c_str());
        ::close(fd);
        throw std::runtime_error(e);
    }
    len = sizeof ss;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    unsigned actual = v6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                         : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    std::fprintf(stderr, "ferry-bench: target listening on port %u\n", actual);
    int conn;
    do conn = ::accept(fd, nullptr, nullptr);
    while (conn < 0 && errno == EINTR);
    auto e = errno_text("--listen: accept");
    ::close(fd);
    if (conn < 0) throw std::runtime_error(e);
    tune(conn);
    return conn;
}

int connect_to(const std::string& host, std::uint16_t port, double timeout) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
        throw std::runtime_error("--connect: cannot resolve '" + host + "': " + gai_strerror(rc));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout);
    std::string last = "no address";
    while (true) {
        for (auto* ai = res; ai; ai = ai->ai_next) {
            int fd = ::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
            if (fd < 0) continue;
            if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
                ::freeaddrinfo(res);
                tune(fd);
                return fd;
            }
            last = std::strerror(errno);
            ::close(fd);
        }
        if (std::chrono::steady_clock::now() > deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ::freeaddrinfo(res);
    throw std::runtime_error("--connect " + host + ":" + std::to_string(port) + ": " + last + " (is a target running "
                             "with --listen " + std::to_string(port) + "?)");
}

}  // namespace bench
