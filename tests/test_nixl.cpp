// <ferry/nixl.hpp>: NIXL's agent calls between two processes, over shm and
// tcp, with both progress modes; every byte checked, NIXL's status codes for
// what is refused. Metadata exchanged by getLocalMD / loadRemoteMD, and
// through an agent's own listener (useListenThread: fetchRemoteMD,
// sendLocalMD, checkRemoteMD, invalidateLocalMD).

#include <ferry/nixl.hpp>

#include <catch2/catch.hpp>

#include "support/ferry_catch.hpp"
#include "support/two_process.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

using namespace ferry::nixl;
using ferry_test::expect;
using ferry_test::side;

namespace {

constexpr std::size_t block = 4096, blocks = 12, gap = 1000, size = 1 << 20;
constexpr unsigned char untouched = 0xEE;

std::uintptr_t at(const std::vector<unsigned char>& buf, std::size_t k, std::size_t base = 0) {
    return reinterpret_cast<std::uintptr_t>(buf.data()) + base + k * (block + gap);
}

unsigned char byte_of(std::size_t k, std::size_t i, unsigned seed) {
    return static_cast<unsigned char>((k * 131 + i * 7 + seed * 17 + 1) % 251);
}

void fill(std::vector<unsigned char>& buf, std::size_t base, unsigned seed) {
    for (std::size_t k = 0; k < blocks; ++k)
        for (std::size_t i = 0; i < block; ++i) buf[base + k * (block + gap) + i] = byte_of(k, i, seed);
}

// Every byte of the listed blocks, and every other byte of [0, end) untouched.
void check(const std::vector<unsigned char>& buf, std::size_t base, unsigned seed, const std::vector<int>& which,
           const std::string& what, std::size_t end = size) {
    std::vector<bool> inside(buf.size(), false);
    for (int k : which)
        for (std::size_t i = 0; i < block; ++i) {
            const std::size_t at_byte = base + static_cast<std::size_t>(k) * (block + gap) + i;
            inside[at_byte] = true;
            if (buf[at_byte] != byte_of(static_cast<std::size_t>(k), i, seed))
                ferry_test::fail(what + ": block " + std::to_string(k) + " byte " + std::to_string(i) + " is wrong");
        }
    for (std::size_t i = 0; i < end; ++i)
        if (!inside[i] && buf[i] != untouched) ferry_test::fail(what + ": byte " + std::to_string(i) + " changed");
}

nixl_reg_dlist_t whole(const std::vector<unsigned char>& buf) {
    nixl_reg_dlist_t d(DRAM_SEG);
    nixlBlobDesc b;
    b.addr = reinterpret_cast<std::uintptr_t>(buf.data());
    b.len = buf.size();
    d.addDesc(b);
    return d;
}

nixl_xfer_dlist_t blocks_of(const std::vector<unsigned char>& buf, std::size_t base,
                            const std::vector<int>& which) {
    nixl_xfer_dlist_t d(DRAM_SEG);
    for (int k : which) d.addDesc({at(buf, static_cast<std::size_t>(k), base), block, 0});
    return d;
}

nixl_xfer_dlist_t remote_blocks(std::uintptr_t remote, std::size_t base, const std::vector<int>& which) {
    nixl_xfer_dlist_t d(DRAM_SEG);
    for (int k : which) d.addDesc({remote + base + static_cast<std::size_t>(k) * (block + gap), block, 0});
    return d;
}

nixl_status_t wait(nixlAgent& agent, nixlXferReqH* req) {
    ferry_test::patience patience;
    nixl_status_t s = agent.getXferStatus(req);
    while (s == NIXL_IN_PROG) {
        patience.check("a NIXL transfer");
        s = agent.getXferStatus(req);
    }
    return s;
}

std::vector<int> all_blocks() {
    std::vector<int> v;
    for (int k = 0; k < static_cast<int>(blocks); ++k) v.push_back(k);
    return v;
}

/// Progresses the agent (getNotifs), collecting notifications, until a
/// message waits on the channel: an inline agent must, while its peer
/// transfers to or from it.
void serve_until_message(nixlAgent& agent, ferry_test::channel& ch, nixl_notifs_t& notifs) {
    while (!ch.readable()) expect(agent.getNotifs(notifs) == NIXL_SUCCESS, "getNotifs failed");
}

/// Progresses the agent until `from`'s notifications arrive, and expects
/// exactly `want` among them.
void await_notif(nixlAgent& agent, nixl_notifs_t& notifs, const std::string& from, const nixl_blob_t& want) {
    ferry_test::patience patience;
    while (notifs[from].empty()) {
        REQUIRE(agent.getNotifs(notifs) == NIXL_SUCCESS);
        patience.check("the WRITE's notification");
    }
    expect(notifs[from] == std::vector<nixl_blob_t>{want}, "the notification differs");
}

nixl_opt_args_t listener_at(int port) {
    nixl_opt_args_t extra;
    extra.ipAddr = "127.0.0.1";
    extra.port = port;
    return extra;
}

/// A loopback port that nobody listens on (just now).
int closed_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    expect(fd >= 0, "socket failed");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    expect(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
               ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0,
           "cannot find a free port");
    ::close(fd);
    return ntohs(addr.sin_port);
}

std::string code(nixl_status_t s) { return std::to_string(static_cast<int>(s)); }

void expect_code(nixl_status_t got, nixl_status_t want, const std::string& what) {
    expect(got == want, what + ": got " + code(got) + ", expected " + code(want));
}

}  // namespace

TEST_CASE("nixlAgent: WRITE with a notification, READ of picked indices, and NIXL's codes for what is refused") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    const bool prog_thread = GENERATE(false, true);
    CAPTURE(tls, prog_thread);

    auto target = [&](side& s) {
        ::setenv("UCX_TLS", s.tls.c_str(), 1);
        nixlAgent agent("nixl-target", nixlAgentConfig(false));
        std::vector<unsigned char> buf(size, untouched);
        fill(buf, size / 2, 2);  // what the initiator READs
        REQUIRE(agent.registerMem(whole(buf)) == NIXL_SUCCESS);
        nixl_blob_t md;
        REQUIRE(agent.getLocalMD(md) == NIXL_SUCCESS);
        s.ch.send(md);
        const std::uint64_t base = reinterpret_cast<std::uintptr_t>(buf.data());
        s.ch.send_u64s(std::span(&base, 1));
        // The notification comes after its data.
        nixl_notifs_t notifs;
        await_notif(agent, notifs, "nixl-initiator", "written");
        check(buf, 0, 1, all_blocks(), "the WRITE's blocks", size / 2);  // the upper half holds what is READ
        s.ch.send("checked");
        serve_until_message(agent, s.ch, notifs);
        s.ch.expect_message("bye");
        REQUIRE(agent.deregisterMem(whole(buf)) == NIXL_SUCCESS);
    };

    auto initiator = [&](side& s) {
        ::setenv("UCX_TLS", s.tls.c_str(), 1);
        nixlAgent agent("nixl-initiator", nixlAgentConfig(prog_thread));
        std::vector<nixl_backend_t> plugins;
        REQUIRE(agent.getAvailPlugins(plugins) == NIXL_SUCCESS);
        expect(plugins == std::vector<nixl_backend_t>{"UCX"}, "plugins");
        nixlBackendH* backend = nullptr;
        expect(agent.createBackend("UCX", {}, backend) == NIXL_SUCCESS && backend != nullptr, "createBackend(UCX)");
        expect(agent.createBackend("GDS", {}, backend) == NIXL_ERR_NOT_SUPPORTED, "createBackend(GDS)");
        expect(agent.sendLocalMD() == NIXL_ERR_NOT_SUPPORTED, "sendLocalMD");

        std::vector<unsigned char> local(size, untouched);
        fill(local, 0, 1);
        REQUIRE(agent.registerMem(whole(local)) == NIXL_SUCCESS);
        const auto md = s.ch.recv_bytes();
        const std::uintptr_t remote = s.ch.recv_u64s().at(0);
        std::string name;
        REQUIRE(agent.loadRemoteMD(nixl_blob_t(reinterpret_cast<const char*>(md.data()), md.size()), name) ==
                NIXL_SUCCESS);
        expect(name == "nixl-target", "loadRemoteMD named '" + name + "'");
        expect(agent.checkRemoteMD("nixl-target", remote_blocks(remote, 0, all_blocks())) == NIXL_SUCCESS,
               "checkRemoteMD of published memory");
        expect(agent.checkRemoteMD("nixl-target", remote_blocks(remote + size, 0, {0})) == NIXL_ERR_NOT_FOUND,
               "checkRemoteMD outside published memory");
        expect(agent.checkRemoteMD("nobody", remote_blocks(remote, 0, {0})) == NIXL_ERR_NOT_FOUND,
               "checkRemoteMD of an unknown agent");
        REQUIRE(agent.makeConnection("nixl-target") == NIXL_SUCCESS);

        // createXferReq + postXferReq: WRITE every block, with a notification.
        nixl_opt_args_t extra;
        extra.notifMsg = "written";
        extra.hasNotif = true;
        nixlXferReqH* req = nullptr;
        REQUIRE(agent.createXferReq(NIXL_WRITE, blocks_of(local, 0, all_blocks()), remote_blocks(remote, 0, all_blocks()),
                                    "nixl-target", req, &extra) == NIXL_SUCCESS);
        const nixl_status_t posted = agent.postXferReq(req);
        expect(posted == NIXL_SUCCESS || posted == NIXL_IN_PROG, "postXferReq returned " + std::to_string(posted));
        expect(wait(agent, req) == NIXL_SUCCESS, "the WRITE failed");
        s.ch.expect_message("checked");
        REQUIRE(agent.releaseXferReq(req) == NIXL_SUCCESS);
        expect(agent.releaseXferReq(req) == NIXL_ERR_NOT_FOUND, "releasing twice");

        // prepXferDlist + makeXferReq: READ blocks 7, 2 and 11 of the target's upper half into ours.
        std::vector<unsigned char> back(size, untouched);
        REQUIRE(agent.registerMem(whole(back)) == NIXL_SUCCESS);
        nixlDlistH* mine = nullptr;
        nixlDlistH* theirs = nullptr;
        REQUIRE(agent.prepXferDlist(NIXL_INIT_AGENT, blocks_of(back, size / 2, all_blocks()), mine) == NIXL_SUCCESS);
        REQUIRE(agent.prepXferDlist("nixl-target", remote_blocks(remote, size / 2, all_blocks()), theirs) ==
                NIXL_SUCCESS);
        expect(agent.prepXferDlist("nobody", remote_blocks(remote, 0, {0}), theirs) == NIXL_ERR_NOT_FOUND,
               "prepXferDlist for an unknown agent");
        const std::vector<int> picks{7, 2, 11};
        expect(agent.makeXferReq(NIXL_READ, mine, {0, 99}, theirs, {0, 1}, req) == NIXL_ERR_INVALID_PARAM,
               "makeXferReq with an index out of range");
        expect(agent.makeXferReq(NIXL_READ, theirs, picks, mine, picks, req) == NIXL_ERR_INVALID_PARAM,
               "makeXferReq with the sides swapped");
        REQUIRE(agent.makeXferReq(NIXL_READ, mine, picks, theirs, picks, req) == NIXL_SUCCESS);
        const nixl_status_t read = agent.postXferReq(req);
        expect(read == NIXL_SUCCESS || read == NIXL_IN_PROG, "postXferReq (READ) returned " + std::to_string(read));
        expect(wait(agent, req) == NIXL_SUCCESS, "the READ failed");
        check(back, size / 2, 2, picks, "the READ's blocks");
        REQUIRE(agent.releaseXferReq(req) == NIXL_SUCCESS);
        REQUIRE(agent.releasedDlistH(mine) == NIXL_SUCCESS);
        REQUIRE(agent.releasedDlistH(theirs) == NIXL_SUCCESS);

        // What is refused: unknown agents, memory outside registrations, unregistered descriptors.
        expect(agent.createXferReq(NIXL_WRITE, blocks_of(local, 0, {0}), remote_blocks(remote, 0, {0}), "nobody", req) ==
                   NIXL_ERR_NOT_FOUND,
               "createXferReq to an unknown agent");
        std::vector<unsigned char> stray(block);
        nixl_xfer_dlist_t unregistered(DRAM_SEG);
        unregistered.addDesc({reinterpret_cast<std::uintptr_t>(stray.data()), block, 0});
        expect(agent.createXferReq(NIXL_WRITE, unregistered, remote_blocks(remote, 0, {0}), "nixl-target", req) ==
                   NIXL_ERR_NOT_FOUND,
               "createXferReq from unregistered memory");
        expect(agent.deregisterMem(whole(stray)) == NIXL_ERR_NOT_FOUND, "deregisterMem of unregistered memory");
        expect(agent.genNotif("nobody", "hi") == NIXL_ERR_NOT_FOUND, "genNotif to an unknown agent");
        REQUIRE(agent.deregisterMem(whole(back)) == NIXL_SUCCESS);
        REQUIRE(agent.deregisterMem(whole(local)) == NIXL_SUCCESS);
        s.ch.send("bye");
        REQUIRE(agent.invalidateRemoteMD("nixl-target") == NIXL_SUCCESS);
        expect(agent.invalidateRemoteMD("nixl-target") == NIXL_ERR_NOT_FOUND, "invalidating twice");
    };
    ferry_test::run_two_process(tls, initiator, target);
}

TEST_CASE("nixlAgent: metadata through the listener: fetchRemoteMD, sendLocalMD, checkRemoteMD, invalidateLocalMD") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    const bool prog_thread = GENERATE(false, true);
    CAPTURE(tls, prog_thread);

    // "md-b" listens; "md-a" fetches its metadata from there and WRITEs to
    // it, pushes its own there, B loads it and READs from A, then A
    // invalidates it there and B drops A. One agent of each progress mode.
    auto listening = [&](side& s) {
        ::setenv("UCX_TLS", s.tls.c_str(), 1);
        nixlAgent agent("md-b", nixlAgentConfig(!prog_thread, true, 0));
        expect(agent.listenPort() > 0, "listenPort() is " + std::to_string(agent.listenPort()));
        std::vector<unsigned char> buf(size, untouched), back(size, untouched);
        // Registered after the listener published: A must see these regions.
        REQUIRE(agent.registerMem(whole(buf)) == NIXL_SUCCESS);
        REQUIRE(agent.registerMem(whole(back)) == NIXL_SUCCESS);
        s.ch.send(std::to_string(agent.listenPort()));
        const std::uint64_t base = reinterpret_cast<std::uintptr_t>(buf.data());
        s.ch.send_u64s(std::span(&base, 1));

        nixl_notifs_t notifs;
        await_notif(agent, notifs, "md-a", "fetched");
        check(buf, 0, 1, all_blocks(), "the WRITE to the fetched agent");
        const nixl_xfer_dlist_t none(DRAM_SEG);
        expect_code(agent.checkRemoteMD("md-a", none), NIXL_ERR_NOT_FOUND, "checkRemoteMD before A pushed");
        s.ch.send("checked");

        // A pushed its metadata to our listener: checkRemoteMD loads it.
        serve_until_message(agent, s.ch, notifs);
        s.ch.expect_message("pushed");
        const std::uintptr_t remote = s.ch.recv_u64s().at(0);
        expect_code(agent.checkRemoteMD("md-a", remote_blocks(remote, size / 2, all_blocks())), NIXL_SUCCESS,
                    "checkRemoteMD of the pushed agent");
        expect_code(agent.checkRemoteMD("md-a", remote_blocks(remote + size, 0, {0})), NIXL_ERR_NOT_FOUND,
                    "checkRemoteMD outside the pushed agent's memory");
        nixlDlistH* mine = nullptr;
        nixlDlistH* theirs = nullptr;
        REQUIRE(agent.prepXferDlist(NIXL_INIT_AGENT, blocks_of(back, size / 2, all_blocks()), mine) == NIXL_SUCCESS);
        REQUIRE(agent.prepXferDlist("md-a", remote_blocks(remote, size / 2, all_blocks()), theirs) == NIXL_SUCCESS);
        const std::vector<int> picks{7, 2, 11};
        nixlXferReqH* req = nullptr;
        REQUIRE(agent.makeXferReq(NIXL_READ, mine, picks, theirs, picks, req) == NIXL_SUCCESS);
        const nixl_status_t posted = agent.postXferReq(req);
        expect(posted == NIXL_SUCCESS || posted == NIXL_IN_PROG, "postXferReq (READ) returned " + code(posted));
        expect_code(wait(agent, req), NIXL_SUCCESS, "the READ from the pushed agent");
        check(back, size / 2, 3, picks, "the READ from the pushed agent");
        REQUIRE(agent.releaseXferReq(req) == NIXL_SUCCESS);
        s.ch.send("read");

        // A invalidated its metadata at our listener: we drop A.
        serve_until_message(agent, s.ch, notifs);
        s.ch.expect_message("invalidated");
        expect_code(agent.makeXferReq(NIXL_READ, mine, picks, theirs, picks, req), NIXL_ERR_NOT_FOUND,
                    "makeXferReq toward the invalidated agent");
        expect_code(agent.prepXferDlist("md-a", remote_blocks(remote, size / 2, {0}), theirs), NIXL_ERR_NOT_FOUND,
                    "prepXferDlist toward the invalidated agent");
        expect_code(agent.checkRemoteMD("md-a", none), NIXL_ERR_NOT_FOUND,
                    "checkRemoteMD of the invalidated agent (its pushed blob must be gone too)");
        REQUIRE(agent.releasedDlistH(mine) == NIXL_SUCCESS);
        REQUIRE(agent.releasedDlistH(theirs) == NIXL_SUCCESS);
        s.ch.send("dropped");

        // A push after the invalidation is a new incarnation, loaded again.
        serve_until_message(agent, s.ch, notifs);
        s.ch.expect_message("pushed again");
        expect_code(agent.checkRemoteMD("md-a", remote_blocks(remote, size / 2, {0})), NIXL_SUCCESS,
                    "checkRemoteMD of the agent pushed again");
        s.ch.send("reloaded");
        serve_until_message(agent, s.ch, notifs);
        s.ch.expect_message("bye");
        REQUIRE(agent.deregisterMem(whole(back)) == NIXL_SUCCESS);
        REQUIRE(agent.deregisterMem(whole(buf)) == NIXL_SUCCESS);
    };

    auto fetching = [&](side& s) {
        ::setenv("UCX_TLS", s.tls.c_str(), 1);
        expect(nixl_opt_args_t{}.port == 8888, "nixl_opt_args_t's port is not NIXL's default_comm_port");
        nixlAgent agent("md-a", nixlAgentConfig(prog_thread));
        expect(agent.listenPort() == 0, "an agent without useListenThread has a listenPort");
        try {
            nixlAgent bad("md-bad", nixlAgentConfig(prog_thread, true, 70000));
            ferry_test::fail("listenPort 70000 was accepted");
        } catch (const ferry::error& e) {
            expect(e.code_status() == ferry::status::invalid_argument, "listenPort 70000 threw the wrong error");
        }
        std::vector<unsigned char> local(size, untouched);
        fill(local, 0, 1);         // what A WRITEs
        fill(local, size / 2, 3);  // what B READs
        REQUIRE(agent.registerMem(whole(local)) == NIXL_SUCCESS);
        const int port = std::stoi(s.ch.recv());
        const std::uintptr_t remote = s.ch.recv_u64s().at(0);
        const auto at_b = listener_at(port);

        // What is refused, before anything is loaded.
        nixl_opt_args_t no_address;
        expect_code(agent.fetchRemoteMD("md-b"), NIXL_ERR_NOT_SUPPORTED, "fetchRemoteMD without extra");
        expect_code(agent.fetchRemoteMD("md-b", &no_address), NIXL_ERR_NOT_SUPPORTED, "fetchRemoteMD without ipAddr");
        expect_code(agent.sendLocalMD(&no_address), NIXL_ERR_NOT_SUPPORTED, "sendLocalMD without ipAddr");
        expect_code(agent.invalidateLocalMD(&no_address), NIXL_ERR_NOT_SUPPORTED, "invalidateLocalMD without ipAddr");
        const auto nobody = listener_at(closed_port());
        expect_code(agent.fetchRemoteMD("md-b", &nobody), NIXL_ERR_REMOTE_DISCONNECT,
                    "fetchRemoteMD from a port nobody listens on");
        expect_code(agent.sendLocalMD(&nobody), NIXL_ERR_REMOTE_DISCONNECT, "sendLocalMD to a port nobody listens on");
        expect_code(agent.invalidateLocalMD(&nobody), NIXL_ERR_REMOTE_DISCONNECT,
                    "invalidateLocalMD to a port nobody listens on");
        for (const int bad_port : {0, -1, 65536}) {
            const auto out_of_range = listener_at(bad_port);
            expect_code(agent.fetchRemoteMD("md-b", &out_of_range), NIXL_ERR_INVALID_PARAM,
                        "fetchRemoteMD from port " + std::to_string(bad_port));
        }
        expect_code(agent.fetchRemoteMD("someone-else", &at_b), NIXL_ERR_MISMATCH,
                    "fetchRemoteMD of a listener that serves another agent");
        const nixl_xfer_dlist_t none(DRAM_SEG);
        expect_code(agent.checkRemoteMD("md-b", none), NIXL_ERR_NOT_FOUND, "checkRemoteMD after a mismatch");

        // fetchRemoteMD, then a WRITE with a notification.
        expect_code(agent.fetchRemoteMD("md-b", &at_b), NIXL_SUCCESS, "fetchRemoteMD");
        expect_code(agent.checkRemoteMD("md-b", remote_blocks(remote, 0, all_blocks())), NIXL_SUCCESS,
                    "checkRemoteMD of memory B registered after its listener started");
        nixl_opt_args_t extra;
        extra.notifMsg = "fetched";
        extra.hasNotif = true;
        nixlXferReqH* req = nullptr;
        REQUIRE(agent.createXferReq(NIXL_WRITE, blocks_of(local, 0, all_blocks()), remote_blocks(remote, 0, all_blocks()),
                                    "md-b", req, &extra) == NIXL_SUCCESS);
        const nixl_status_t posted = agent.postXferReq(req);
        expect(posted == NIXL_SUCCESS || posted == NIXL_IN_PROG, "postXferReq returned " + code(posted));
        expect_code(wait(agent, req), NIXL_SUCCESS, "the WRITE to the fetched agent");
        REQUIRE(agent.releaseXferReq(req) == NIXL_SUCCESS);
        nixl_notifs_t notifs;
        serve_until_message(agent, s.ch, notifs);
        s.ch.expect_message("checked");

        // sendLocalMD: B loads us from its listener and READs from us.
        expect_code(agent.sendLocalMD(&at_b), NIXL_SUCCESS, "sendLocalMD");
        s.ch.send("pushed");
        const std::uint64_t base = reinterpret_cast<std::uintptr_t>(local.data());
        s.ch.send_u64s(std::span(&base, 1));
        serve_until_message(agent, s.ch, notifs);
        s.ch.expect_message("read");

        expect_code(agent.invalidateLocalMD(&at_b), NIXL_SUCCESS, "invalidateLocalMD");
        s.ch.send("invalidated");
        serve_until_message(agent, s.ch, notifs);
        s.ch.expect_message("dropped");
        expect_code(agent.sendLocalMD(&at_b), NIXL_SUCCESS, "sendLocalMD after invalidateLocalMD");
        s.ch.send("pushed again");
        serve_until_message(agent, s.ch, notifs);
        s.ch.expect_message("reloaded");
        s.ch.send("bye");
        REQUIRE(agent.deregisterMem(whole(local)) == NIXL_SUCCESS);
    };
    ferry_test::run_two_process(tls, fetching, listening);
}
