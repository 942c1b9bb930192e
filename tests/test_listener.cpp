// The metadata listener (NIXL's sendLocalMD / fetchRemoteMD) between real
// processes over loopback TCP, and between two network namespaces:
//
//  - a real backend's blob fetched from its listener, loaded, and one WRITE
//    landing with the right bytes; a push the other way; the served blob
//    replaced and fetched again;
//  - invalidations (NIXL's invalidateLocalMD): the pushed blob dropped, the
//    name handed to the owner once and reported as a remove event, their
//    number bounded, malformed ones answered bad request;
//  - hostile clients (garbage, a 4 GiB length prefix, a slow-loris, 200
//    connections held, connections closed at once, a client that never reads
//    a large answer, a pushed blob that fails validation), each in a process
//    of its own while this process, well behaved, still gets its fetch within
//    a second;
//  - tcp_directory as a metadata_directory.
//
// Listeners here time clients out after 200 ms, so that the hostile cases
// end quickly. No case asserts a rate: ferry-listener-bench measures one.

#include <ferry/directory/client.hpp>
#include <ferry/directory/listener.hpp>
#include <ferry/directory/tcp_directory.hpp>
#include <ferry/ferry.hpp>

#include <catch2/catch.hpp>

#include "support/ferry_catch.hpp"
#include "support/netns.hpp"
#include "support/pattern.hpp"
#include "support/two_process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using ferry::status;
using ferry_test::expect;
using ferry_test::fail;
using ferry_test::side;
using namespace std::chrono_literals;
namespace netns = ferry_test::netns;

namespace {

using backend = ferry::ucx_backend<>;

/// A valid blob for agent `name` that no UCX made: enough for the listener,
/// which only validates and stores it. `rkey_bytes` per region sets its size.
std::vector<std::byte> fake_blob(const std::string& name, std::uint32_t regions = 1, std::size_t rkey_bytes = 8) {
    static const std::vector<std::byte> address(32, std::byte{0xA5});
    const std::vector<std::byte> rkey(rkey_bytes, std::byte{0x3C});
    ferry::detail::metadata_view md;
    md.ucx_version = 1 << 16 | 13;
    md.name = name;
    md.worker_address = address;
    md.host_id = "listener-test";
    md.pid = 1234;
    for (std::uint32_t i = 0; i < regions; ++i) {
        ferry::detail::region_record r;
        r.addr = 0x10000 + std::uint64_t{i} * 0x10000;
        r.len = 4096;
        r.rkey = rkey;
        md.regions.push_back(r);
    }
    return ferry::detail::encode_metadata(md);
}

ferry::listener_config test_config() {
    ferry::listener_config cfg;
    cfg.io_timeout = 200ms;
    return cfg;
}

/// The fetch that a well-behaved client makes while others misbehave: it
/// must have its answer, and soon: the bound is generous, for a loaded CI
/// machine, yet shorter than a listener that served its clients one at a
/// time would take behind the 32 connections held open (200 ms each).
void fetch_while_others_misbehave(const ferry::metadata_listener& l, const std::vector<std::byte>& want) {
    std::vector<std::byte> got;
    try {
        got = ferry::fetch_metadata("127.0.0.1", l.port(), 5000ms);
    } catch (const ferry::error& e) {
        FAIL("a well-behaved fetch failed: " << e.what());
    }
    REQUIRE(got == want);
}

/// A blocking TCP connection to the listener, for clients that misbehave.
ferry::detail::unique_fd raw_connect(std::uint16_t port) {
    ferry::detail::unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    expect(static_cast<bool>(fd), "socket failed");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    expect(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0,
           std::string("connect failed: ") + std::strerror(errno));
    return fd;
}

void send_raw(int fd, const void* data, std::size_t len) {
    expect(::send(fd, data, len, MSG_NOSIGNAL) == static_cast<ssize_t>(len),
           std::string("send failed: ") + std::strerror(errno));
}

/// Reads the listener's response header; its code, or -1 if the connection
/// closed first. Waits at most 5 s.
int read_reply_code(int fd) {
    std::array<std::byte, ferry::detail::wire_header_size> head{};
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    std::size_t got = 0;
    while (got < head.size()) {
        pollfd p{fd, POLLIN, 0};
        expect(::poll(&p, 1, ferry::detail::ms_until(deadline)) > 0, "no response within 5 s");
        const ssize_t n = ::recv(fd, head.data() + got, head.size() - got, 0);
        if (n <= 0) return -1;
        got += static_cast<std::size_t>(n);
    }
    auto h = ferry::detail::decode_wire_header(head.data());
    expect(h.has_value(), "the response header is not the listener's");
    return h->code;
}

/// Waits up to 5 s for the server to close `fd`; true if it did.
bool closed_by_server(int fd) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    char buf[256];
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, ferry::detail::ms_until(deadline)) <= 0) return false;
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) return true;
    }
}

/// A forked process that misbehaves towards a listener of this one. Its body
/// gets `ready()`, to call once its mischief is under way, and
/// `released()`, true once the parent has made its own fetch. It checks with
/// ferry_test::expect, and must not touch Catch2 or the listener object.
class hostile_process {
public:
    struct control {
        int ready_fd;
        int release_fd;
        void ready() const {
            const char c = 'r';
            expect(::write(ready_fd, &c, 1) == 1, "cannot tell the parent it is ready");
        }
        [[nodiscard]] bool released(int wait_ms = 0) const {
            pollfd p{release_fd, POLLIN, 0};
            return ::poll(&p, 1, wait_ms) > 0;
        }
    };

    explicit hostile_process(const std::function<void(const control&)>& body) {
        int ready[2], release[2];
        REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(release, O_CLOEXEC) == 0);
        std::fflush(nullptr);
        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            ferry_test::detail::reset_signals_in_child();
            ferry_test::detail::role_name() = "hostile client";
            ::close(ready[0]);
            ::close(release[1]);
            ::alarm(20);
            // Not end_child_after: its leak check would report what the
            // listener's thread holds, copied here by fork without the
            // thread that reaches it.
            try {
                body(control{ready[1], release[0]});
            } catch (const std::exception& e) {
                fail(std::string("uncaught exception: ") + e.what());
            }
            ::_exit(0);
        }
        ::close(ready[1]);
        ::close(release[0]);
        ready_ = ready[0];
        release_ = release[1];
        pollfd p{ready_, POLLIN, 0};
        char c = 0;
        if (::poll(&p, 1, 10'000) <= 0 || ::read(ready_, &c, 1) != 1) {
            ::kill(pid_, SIGKILL);
            static_cast<void>(finish());
            FAIL("the hostile client did not get going (its output is above)");
        }
    }

    hostile_process(const hostile_process&) = delete;
    hostile_process& operator=(const hostile_process&) = delete;
    ~hostile_process() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            static_cast<void>(finish());
        }
    }

    /// Lets the child finish and reports whether it passed.
    [[nodiscard]] bool finish() {
        if (release_ >= 0) ::close(std::exchange(release_, -1));
        if (ready_ >= 0) ::close(std::exchange(ready_, -1));
        int st = 0;
        while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
        }
        pid_ = -1;
        return WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }

private:
    pid_t pid_ = -1;
    int ready_ = -1;
    int release_ = -1;
};

/// Runs `body` in a hostile process while this one makes a well-behaved
/// fetch; both must pass.
void fetch_while(ferry::metadata_listener& l, const std::vector<std::byte>& served,
                 const std::function<void(const hostile_process::control&)>& body) {
    hostile_process h(body);
    fetch_while_others_misbehave(l, served);
    REQUIRE(h.finish());
}

}  // namespace

static_assert(ferry::metadata_directory<ferry::tcp_directory>);

TEST_CASE("listener: a real backend's blob fetched and pushed between processes, loaded, written to, replaced") {
    constexpr std::size_t len = 64 * 1024;
    constexpr std::uint64_t seed = 77;
    auto initiator = [&](side& s) {
        const auto port = static_cast<std::uint16_t>(std::stoul(s.ch.recv()));
        backend b(s.config("initiator"));
        ferry::region src = b.allocate(len);
        ferry_test::fill_pattern(static_cast<std::byte*>(src.data()), len, seed, 0);
        ferry::push_metadata("127.0.0.1", port, b.local_metadata(), 5s);

        const auto blob = ferry::fetch_metadata("127.0.0.1", port, 5s);
        const ferry::peer p = b.load_remote(blob);
        const auto regions = b.remote_regions(p);
        expect(regions.size() == 1 && regions[0].len >= len, "the fetched blob has the wrong regions");
        std::vector<ferry::desc> local{src.slice(0, len)}, remote{{regions[0].addr, len, regions[0].dev}};
        const ferry::xfer x = b.prepare(ferry::xfer_op::write, local, remote, p);
        ferry_test::post_and_wait(b, x, {}, "WRITE to the fetched peer");
        ferry_test::expect_status(b.release(x), status::ok, "release");
        s.ch.send("written");

        s.ch.expect_message("republished");
        const auto again = ferry::fetch_metadata("127.0.0.1", port, 5s);
        expect(again != blob, "the second fetch returned the first blob");
        expect(ferry::detail::decode_metadata(again).regions.size() == 2,
               "the replaced blob does not list the second region");
        s.ch.send("done");
    };
    auto target = [&](side& s) {
        backend b(s.config("target"));
        ferry::region dst = b.allocate(len);
        std::memset(dst.data(), 0x5A, len);
        ferry::metadata_listener l(test_config());
        l.publish(b.local_metadata());
        s.ch.send(std::to_string(l.port()));

        const auto events = l.poll_events(10s);
        expect(events.size() == 1 && events[0].what == ferry::directory_event::kind::put &&
                   events[0].name == "initiator",
               "the initiator's push was not reported as one put event");
        expect(l.pushed("initiator") == events[0].blob, "the pushed blob was not kept under its agent's name");

        ferry_test::progress_until_message(b, s.ch);
        s.ch.expect_message("written");
        if (auto e = ferry_test::check_pattern(static_cast<const std::byte*>(dst.data()), len, seed, 0); !e.empty())
            fail("WRITE landed wrong: " + e);

        ferry::region more = b.allocate(len);
        l.publish(b.local_metadata());
        s.ch.send("republished");
        s.ch.expect_message("done");
        expect(l.stats().fetches_served == 2 && l.stats().pushes_accepted == 1, "the listener's counts are wrong");
    };
    ferry_test::run_two_process("tcp", initiator, target, 30s);
}

TEST_CASE("listener: publish replaces the served blob, a bad one is refused, nothing published is said so") {
    ferry::metadata_listener l(test_config());
    REQUIRE(l.port() != 0);
    REQUIRE_FERRY_ERROR(ferry::fetch_metadata("127.0.0.1", l.port(), 1s), status::no_such_peer,
                        Catch::Contains("publishes nothing"));
    const auto first = fake_blob("agent-a", 1);
    const auto second = fake_blob("agent-a", 3);
    l.publish(first);
    fetch_while_others_misbehave(l, first);
    l.publish(second);
    fetch_while_others_misbehave(l, second);

    auto bad = second;
    bad.back() ^= std::byte{1};
    REQUIRE_FERRY_ERROR(l.publish(bad), status::invalid_argument, Catch::Contains("checksum"));
    fetch_while_others_misbehave(l, second);

    l.unpublish();
    REQUIRE_FERRY_ERROR(ferry::fetch_metadata("127.0.0.1", l.port(), 1s), status::no_such_peer,
                        Catch::Contains("publishes nothing"));
}

TEST_CASE("listener: a pushed blob that fails validation is refused with its reason and nothing is stored") {
    ferry::metadata_listener l(test_config());
    const auto served = fake_blob("server");
    l.publish(served);
    fetch_while(l, served, [&](const hostile_process::control& c) {
        auto bad = fake_blob("intruder");
        bad[bad.size() / 2] ^= std::byte{0xFF};
        try {
            ferry::push_metadata("127.0.0.1", l.port(), bad, 2s);
            fail("a corrupted blob was accepted");
        } catch (const ferry::error& e) {
            expect(e.code_status() == status::invalid_argument && std::string(e.what()).find("checksum") !=
                                                                      std::string::npos,
                   std::string("the refusal does not say why: ") + e.what());
        }
        c.ready();
    });
    CHECK(l.stats().pushes_refused == 1);
    CHECK(l.stats().pushes_accepted == 0);
    CHECK_THAT(l.last_refusal(), Catch::Contains("checksum"));
    CHECK_FALSE(l.pushed("intruder").has_value());
    CHECK(l.poll_events(0ms).empty());

    // A good push afterwards is taken and reported.
    const auto good = fake_blob("friend");
    ferry::push_metadata("127.0.0.1", l.port(), good, 1s);
    const auto events = l.poll_events(1s);
    REQUIRE(events.size() == 1);
    CHECK(events[0].name == "friend");
    CHECK(events[0].blob == good);
    CHECK(l.pushed("friend") == good);

    // So is a large one, whose buffer grows as its bytes arrive.
    const auto large = fake_blob("large-friend", 128, 64 * 1024);
    ferry::push_metadata("127.0.0.1", l.port(), large, 2s);
    CHECK(l.pushed("large-friend") == large);
}

TEST_CASE("listener: garbage is answered bad request and the connection closed") {
    ferry::metadata_listener l(test_config());
    const auto served = fake_blob("server");
    l.publish(served);
    fetch_while(l, served, [&](const hostile_process::control& c) {
        auto fd = raw_connect(l.port());
        const std::string junk = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        send_raw(fd.get(), junk.data(), junk.size());
        expect(read_reply_code(fd.get()) == static_cast<int>(ferry::detail::wire_reply::bad_request),
               "garbage was not answered bad request");
        expect(closed_by_server(fd.get()), "the listener kept a garbage connection open");
        c.ready();
    });
    CHECK(l.stats().bad_requests == 1);
}

TEST_CASE("listener: a 4 GiB length prefix is refused at once, before its payload") {
    ferry::metadata_listener l(test_config());
    const auto served = fake_blob("server");
    l.publish(served);
    fetch_while(l, served, [&](const hostile_process::control& c) {
        auto fd = raw_connect(l.port());
        const auto head =
            ferry::detail::encode_wire_header(static_cast<std::uint16_t>(ferry::detail::wire_code::push), 4ULL << 30);
        send_raw(fd.get(), head.data(), head.size());
        expect(read_reply_code(fd.get()) == static_cast<int>(ferry::detail::wire_reply::too_large),
               "a 4 GiB push was not answered too large");
        c.ready();
    });
    CHECK(l.stats().pushes_refused == 1);
    CHECK_THAT(l.last_refusal(), Catch::Contains("4294967296 bytes is over the limit"));
}

TEST_CASE("listener: a slow-loris client is dropped at the timeout") {
    ferry::metadata_listener l(test_config());
    const auto served = fake_blob("server");
    l.publish(served);
    fetch_while(l, served, [&](const hostile_process::control& c) {
        auto fd = raw_connect(l.port());
        const auto head =
            ferry::detail::encode_wire_header(static_cast<std::uint16_t>(ferry::detail::wire_code::push), 4096);
        std::size_t sent = 0;
        const auto start = std::chrono::steady_clock::now();
        for (;;) {
            // One byte every 50 ms: a well-formed request that would take
            // minutes to arrive.
            const std::byte b = sent < head.size() ? head[sent] : std::byte{0};
            if (::send(fd.get(), &b, 1, MSG_NOSIGNAL) != 1) break;
            if (++sent == 3) c.ready();
            pollfd p{fd.get(), POLLIN, 0};
            if (::poll(&p, 1, 50) > 0) {
                char x;
                if (::recv(fd.get(), &x, 1, 0) <= 0) break;
            }
            expect(std::chrono::steady_clock::now() - start < 5s, "a slow-loris client was kept for 5 s");
        }
    });
    CHECK(l.stats().timed_out >= 1);
}

TEST_CASE("listener: 200 connections opened and held are bounded and do not stall service") {
    auto cfg = test_config();
    cfg.max_clients = 32;
    ferry::metadata_listener l(cfg);
    const auto served = fake_blob("server");
    l.publish(served);
    fetch_while(l, served, [&](const hostile_process::control& c) {
        std::vector<ferry::detail::unique_fd> held;
        for (int i = 0; i < 200; ++i) held.push_back(raw_connect(l.port()));
        c.ready();
        // Every one of them is closed by the listener: the extras at once,
        // the others at the timeout.
        for (auto& fd : held) expect(closed_by_server(fd.get()), "a held connection was never closed");
    });
    CHECK(l.stats().turned_away >= 168 - 1);
    CHECK(l.stats().timed_out >= 1);
}

TEST_CASE("listener: clients that connect and close at once, or never read a large answer, do no harm") {
    ferry::metadata_listener l(test_config());
    // 8 MiB: more than the socket buffers hold, so the listener is still
    // writing when the client has gone. A client that sends its fetch and
    // closes at once has its FIN in before the answer; its kernel answers the
    // first bytes with a reset, after which the listener's next send fails
    // with EPIPE, which without MSG_NOSIGNAL would kill this process.
    const auto served = fake_blob("server", 128, 64 * 1024);
    REQUIRE(served.size() > 8'000'000);
    l.publish(served);
    fetch_while(l, served, [&](const hostile_process::control& c) {
        const auto head =
            ferry::detail::encode_wire_header(static_cast<std::uint16_t>(ferry::detail::wire_code::fetch), 0);
        for (int i = 0; i < 50; ++i) static_cast<void>(raw_connect(l.port()));
        for (int i = 0; i < 20; ++i) {
            auto fd = raw_connect(l.port());
            send_raw(fd.get(), head.data(), head.size());
        }
        for (int i = 0; i < 20; ++i) {
            auto fd = raw_connect(l.port());
            send_raw(fd.get(), head.data(), head.size());
            char x[100];
            static_cast<void>(::recv(fd.get(), x, sizeof x, 0));
            // Closed with the answer unread: a reset instead of a FIN.
        }
        c.ready();
    });
    fetch_while_others_misbehave(l, served);
}

TEST_CASE("listener: an invalidation drops the pushed blob and is handed to the owner once") {
    auto cfg = test_config();
    cfg.max_peers = 2;
    ferry::metadata_listener l(cfg);
    const auto friend_blob = fake_blob("friend");
    ferry::push_metadata("127.0.0.1", l.port(), friend_blob, 1s);
    REQUIRE(l.pushed("friend") == friend_blob);
    ferry::invalidate_metadata("127.0.0.1", l.port(), "friend", 1s);
    CHECK_FALSE(l.pushed("friend").has_value());
    const auto events = l.poll_events(1s);
    REQUIRE(events.size() == 2);
    CHECK(events[0].what == ferry::directory_event::kind::put);
    CHECK(events[1].what == ferry::directory_event::kind::remove);
    CHECK(events[1].name == "friend");
    CHECK(events[1].blob.empty());
    CHECK(l.take_invalidations() == std::vector<std::string>{"friend"});
    CHECK(l.take_invalidations().empty());

    // A name that pushed nothing is taken too (it may have been fetched),
    // each name once however often it comes, and no more than max_peers
    // names wait for the owner.
    ferry::invalidate_metadata("127.0.0.1", l.port(), "stranger", 1s);
    ferry::invalidate_metadata("127.0.0.1", l.port(), "stranger", 1s);
    ferry::invalidate_metadata("127.0.0.1", l.port(), "friend", 1s);
    REQUIRE_FERRY_ERROR(ferry::invalidate_metadata("127.0.0.1", l.port(), "third", 1s), status::invalid_argument,
                        Catch::Contains("already holding 2"));
    CHECK(l.take_invalidations() == std::vector<std::string>{"friend", "stranger"});
    CHECK(l.stats().invalidations_accepted == 4);
    CHECK(l.stats().invalidations_refused == 1);

    // A push after an invalidation is kept: a new incarnation.
    ferry::push_metadata("127.0.0.1", l.port(), friend_blob, 1s);
    CHECK(l.pushed("friend") == friend_blob);

    // Names outside 1..255 bytes are refused before anything is sent.
    REQUIRE_FERRY_ERROR(ferry::invalidate_metadata("127.0.0.1", l.port(), "", 1s), status::invalid_argument,
                        Catch::Contains("1..255 bytes"));
    REQUIRE_FERRY_ERROR(ferry::invalidate_metadata("127.0.0.1", l.port(), std::string(256, 'n'), 1s),
                        status::invalid_argument, Catch::Contains("1..255 bytes"));
    CHECK(l.stats().bad_requests == 0);
}

TEST_CASE("listener: malformed invalidations are answered bad request and change nothing") {
    ferry::metadata_listener l(test_config());
    const auto served = fake_blob("server");
    l.publish(served);
    const auto kept = fake_blob("kept");
    ferry::push_metadata("127.0.0.1", l.port(), kept, 1s);
    fetch_while(l, served, [&](const hostile_process::control& c) {
        const auto invalidate = static_cast<std::uint16_t>(ferry::detail::wire_code::invalidate);
        for (const std::uint64_t length : {std::uint64_t{0}, std::uint64_t{256}, std::uint64_t{4} << 30}) {
            auto fd = raw_connect(l.port());
            const auto head = ferry::detail::encode_wire_header(invalidate, length);
            send_raw(fd.get(), head.data(), head.size());
            expect(read_reply_code(fd.get()) == static_cast<int>(ferry::detail::wire_reply::bad_request),
                   "an invalidation of " + std::to_string(length) + " bytes was not answered bad request");
            expect(closed_by_server(fd.get()), "the listener kept a bad invalidation's connection open");
        }
        // A name cut short: the connection closes before its bytes are in.
        auto fd = raw_connect(l.port());
        const auto head = ferry::detail::encode_wire_header(invalidate, 4);
        send_raw(fd.get(), head.data(), head.size());
        send_raw(fd.get(), "ke", 2);
        fd = {};
        c.ready();
    });
    CHECK(l.stats().bad_requests == 3);
    CHECK(l.stats().invalidations_accepted == 0);
    CHECK(l.take_invalidations().empty());
    CHECK(l.pushed("kept") == kept);
}

TEST_CASE("listener: tcp_directory is a metadata_directory over listeners") {
    ferry::tcp_directory a(test_config()), b(test_config());
    const auto blob_a = fake_blob("dir-a"), blob_b = fake_blob("dir-b", 2);
    a.publish("dir-a", blob_a);
    b.publish("dir-b", blob_b);
    REQUIRE_FERRY_ERROR(a.publish("someone-else", blob_a), status::invalid_argument, Catch::Contains("dir-a"));
    CHECK(a.fetch("dir-a") == blob_a);
    CHECK_FALSE(a.fetch("dir-b").has_value());

    // Pushed to us: kept and reported.
    b.push_to("127.0.0.1", a.port(), 1s);
    auto events = a.poll_events(1s);
    REQUIRE(events.size() == 1);
    CHECK(events[0].what == ferry::directory_event::kind::put);
    CHECK(events[0].name == "dir-b");
    CHECK(a.fetch("dir-b") == blob_b);

    // Fetched by us: kept too.
    CHECK(b.fetch_from("127.0.0.1", a.port(), 1s) == "dir-a");
    CHECK(b.fetch("dir-a") == blob_a);
    events = b.poll_events(1s);
    REQUIRE(events.size() == 1);
    CHECK(events[0].name == "dir-a");

    a.remove("dir-b");
    CHECK_FALSE(a.fetch("dir-b").has_value());
    a.remove("dir-a");
    CHECK_FALSE(a.fetch("dir-a").has_value());
    REQUIRE_FERRY_ERROR(ferry::fetch_metadata("127.0.0.1", a.port(), 1s), status::no_such_peer,
                        Catch::Contains("publishes nothing"));
    CHECK(a.poll_events(0ms).empty());
}

TEST_CASE("listener: a fetch and a push between two network namespaces") {
    std::unique_ptr<netns::veth_pair> pair;
    try {
        pair = std::make_unique<netns::veth_pair>();
    } catch (const netns::unavailable& e) {
        ferry_test::skip(std::string("two network namespaces cannot be made here: ") + e.what());
        return;
    }
    const auto served = fake_blob("in-namespace-a", 2);
    const auto pushed = fake_blob("in-namespace-b", 1);
    auto in_b = [&](side& s) {
        if (auto why = netns::enter(pair->b().ns); !why.empty()) fail("cannot enter namespace b: " + why);
        const auto port = static_cast<std::uint16_t>(std::stoul(s.ch.recv()));
        expect(ferry::fetch_metadata(pair->a().addr, port, 5s) == served, "the fetch across namespaces differs");
        ferry::push_metadata(pair->a().addr, port, pushed, 5s);
        s.ch.send("done");
    };
    auto in_a = [&](side& s) {
        if (auto why = netns::enter(pair->a().ns); !why.empty()) fail("cannot enter namespace a: " + why);
        auto cfg = test_config();
        cfg.bind_address = pair->a().addr;
        cfg.io_timeout = 5s;
        ferry::metadata_listener l(cfg);
        l.publish(served);
        s.ch.send(std::to_string(l.port()));
        s.ch.expect_message("done");
        expect(l.pushed("in-namespace-b") == pushed, "the push across namespaces was not kept");
    };
    ferry_test::run_two_process("tcp", in_b, in_a, 20s);
}
