// etcd_directory and peer_sync against a real etcd (Debian's etcd-server),
// which each test starts on free loopback ports with a data directory of its
// own and kills afterwards. No etcd installed: the tests skip.
//
// Agents are separate processes: this program run again (exec, so that no
// UCX state crosses a fork) with FERRY_ETCD_AGENT set, which a static
// initializer below turns into the agent's main. An agent prints what it
// sees, one line each, on stdout, and exits when its stdin closes.
//
// FERRY_DEMO (where the examples are built): the path of ferry-demo, whose
// --directory mode runs here as two processes against the test's etcd.

#include <ferry/etcd.hpp>
#include <ferry/ferry.hpp>

#include <catch2/catch.hpp>

#include "support/ferry_catch.hpp"
#include "support/pattern.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

using agent_backend = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::host>>;
using sync_type = ferry::peer_sync<ferry::etcd_directory, agent_backend>;

constexpr std::size_t slot = 64;  // bytes each agent writes into each peer
constexpr auto test_ttl = 2s;

std::vector<std::byte> bytes(std::string_view s) {
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    return {p, p + s.size()};
}

std::string env(const char* name, const char* fallback = "") {
    const char* v = std::getenv(name);
    return v ? v : fallback;
}

ferry::ucx_config agent_config(std::string name) {
    ferry::ucx_config cfg;
    cfg.name = std::move(name);
    cfg.ucx_options = {{"TLS", "tcp"}};
    return cfg;
}

ferry::etcd_options directory_options(const std::string& endpoint, const std::string& ns) {
    ferry::etcd_options o;
    o.endpoints = {endpoint};
    o.name_space = ns;
    o.ttl = test_ttl;
    o.connect_timeout = 300ms;
    o.request_timeout = 1000ms;
    o.poll_interval = 50ms;
    return o;
}

// ---- the agent process ---------------------------------------------------------

// A region of (peers + 1) slots: slot k receives agent k's WRITE, the last
// holds our own pattern, the source of ours. Agent k's pattern has seed k.
struct agent_memory {
    agent_memory(agent_backend& b, std::size_t peers, std::uint64_t seed)
        : region(b.allocate((peers + 1) * slot)), source(peers * slot) {
        std::memset(region.data(), 0, (peers + 1) * slot);
        ferry_test::fill_pattern(static_cast<std::byte*>(region.data()) + source, slot, seed, 0);
    }
    ferry::region region;
    std::size_t source;
};

int agent_index(const std::string& name) {
    return name.rfind("agent", 0) == 0 ? std::atoi(name.c_str() + 5) : -1;
}

bool stdin_closed() {
    pollfd p{STDIN_FILENO, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return false;
    char c;
    return ::read(STDIN_FILENO, &c, 1) <= 0;
}

void say(const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
}

// FERRY_ETCD_AGENT=<name>, FERRY_ETCD_ENDPOINT, FERRY_ETCD_NS,
// FERRY_ETCD_MESH=<agents in the mesh> (0: no mesh, only answer checks).
int agent_main() {
    const std::string name = env("FERRY_ETCD_AGENT");
    const int mesh = std::atoi(env("FERRY_ETCD_MESH", "0").c_str());
    const int me = agent_index(name);
    try {
        agent_backend b(agent_config(name));
        const std::size_t slots = mesh > 0 ? static_cast<std::size_t>(mesh) : 1;
        agent_memory mem(b, slots, static_cast<std::uint64_t>(me));
        ferry::etcd_directory dir(directory_options(env("FERRY_ETCD_ENDPOINT"), env("FERRY_ETCD_NS")));
        dir.publish(name, b.local_metadata());
        sync_type sync(dir, b, name);
        say("published");
        bool written = false;
        std::set<std::string> writers;
        std::vector<ferry::region> grown;  // regions registered after the first publish
        bool healthy = true;
        while (!stdin_closed()) {
            const ferry::sync_result r = sync.sync_once(20ms);
            for (const auto& n : r.loaded) say("loaded " + n);
            for (const auto& n : r.unloaded) say("unloaded " + n);
            for (const auto& [n, why] : r.failed) say("failed " + n + " " + why);
            if (const bool h = !dir.health(); h != healthy) {
                healthy = h;
                say(h ? "etcd up" : "etcd down");
            }
            if (mesh > 0 && !written && sync.peers().size() == static_cast<std::size_t>(mesh - 1)) {
                say("all-loaded");
                const auto* base = static_cast<std::byte*>(mem.region.data());
                for (const std::string& peer : sync.peers()) {
                    const auto p = b.find_peer(peer);
                    if (!p) throw std::runtime_error("peer " + peer + " not loaded");
                    const ferry::desc remote = b.remote_regions(*p).front();
                    const ferry::desc local_d{reinterpret_cast<std::uintptr_t>(base + mem.source), slot, 0};
                    const ferry::desc remote_d{remote.addr + static_cast<std::size_t>(me) * slot, slot, 0};
                    const ferry::xfer x = b.prepare(ferry::xfer_op::write, {&local_d, 1}, {&remote_d, 1}, *p);
                    ferry::status s = b.post(x, "mesh");
                    if (s == ferry::status::in_progress) s = b.wait(x, 30s);
                    if (s != ferry::status::ok)
                        throw std::runtime_error("WRITE to " + peer + ": " + std::string(ferry::to_string(s)));
                }
                written = true;
                say("written");
            }
            for (auto& [from, msgs] : b.take_notifs()) {
                for (const std::string& m : msgs) {
                    const auto* base = static_cast<const std::byte*>(mem.region.data());
                    if (m == "grow") {
                        // More memory after peers loaded us: publish again.
                        grown.push_back(b.allocate(slot));
                        std::memset(grown.back().data(), 0, slot);
                        dir.publish(name, b.local_metadata());
                        say("grown " + std::to_string(reinterpret_cast<std::uintptr_t>(grown.back().data())));
                    } else if (m.rfind("check ", 0) == 0) {
                        // The observer wrote its pattern (seed in the message) into slot 0.
                        const auto seed = std::stoull(m.substr(6));
                        const std::string bad = ferry_test::check_pattern(base, slot, seed, 0);
                        say(bad.empty() ? "check ok" : "check bad: " + bad);
                    } else if (m == "mesh") {
                        const int k = agent_index(from);
                        const std::string bad =
                            ferry_test::check_pattern(base + static_cast<std::size_t>(k) * slot, slot,
                                                      static_cast<std::uint64_t>(k), 0);
                        if (!bad.empty()) say("mesh bad from " + from + ": " + bad);
                        writers.insert(from);
                        if (writers.size() == static_cast<std::size_t>(mesh - 1)) say("mesh ok");
                    }
                }
            }
        }
        return 0;
    } catch (const std::exception& e) {
        say(std::string("agent error: ") + e.what());
        return 1;
    }
}

// Runs before Catch2's main in an agent process, and never returns there.
[[maybe_unused]] const int agent_hook = [] {
    if (std::getenv("FERRY_ETCD_AGENT")) std::_Exit(agent_main());
    return 0;
}();

// ---- the test's side ------------------------------------------------------------

std::string etcd_binary() {
    for (const char* p : {"/usr/bin/etcd", "/usr/local/bin/etcd"})
        if (::access(p, X_OK) == 0) return p;
    return {};
}

int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

// A child process: exec'd with the given environment additions; its stdin a
// pipe from us (closing it ends an agent), its stdout a pipe to us (or a file).
class child {
public:
    child(const std::vector<std::string>& argv, const std::vector<std::string>& env_add, const std::string& log = {}) {
        int in[2], out[2];
        REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
        // Everything the child needs is made before fork: this process may
        // run threads (UCX's, the directory's), and the child of a threaded
        // process may call nothing that allocates before exec.
        std::vector<std::string> env_all(env_add);
        for (char** e = environ; *e; ++e) env_all.emplace_back(*e);
        std::vector<char*> envp;
        for (auto& e : env_all) envp.push_back(e.data());
        envp.push_back(nullptr);
        std::vector<std::string> argv_copy(argv);
        std::vector<char*> args;
        for (auto& a : argv_copy) args.push_back(a.data());
        args.push_back(nullptr);
        const int log_fd = log.empty() ? -1 : ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            ::dup2(in[0], STDIN_FILENO);
            if (log_fd < 0) {
                ::dup2(out[1], STDOUT_FILENO);
            } else {
                ::dup2(log_fd, STDOUT_FILENO);
                ::dup2(log_fd, STDERR_FILENO);
            }
            ::execve(args[0], args.data(), envp.data());
            ::_exit(127);
        }
        if (log_fd >= 0) ::close(log_fd);
        ::close(in[0]);
        ::close(out[1]);
        to_ = in[1];
        from_ = out[0];
    }
    child(const child&) = delete;
    child& operator=(const child&) = delete;
    ~child() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
        if (to_ >= 0) ::close(to_);
        if (from_ >= 0) ::close(from_);
    }

    void kill9() {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        pid_ = -1;
    }

    /// Closes its stdin and waits for it; its exit status.
    int finish() {
        ::close(to_);
        to_ = -1;
        int st = 0;
        ::waitpid(pid_, &st, 0);
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }

    /// The next line it printed, waiting until `deadline`.
    std::optional<std::string> line(steady::time_point deadline) {
        for (;;) {
            if (auto nl = buf_.find('\n'); nl != std::string::npos) {
                std::string l = buf_.substr(0, nl);
                buf_.erase(0, nl + 1);
                return l;
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now());
            if (left.count() <= 0) return std::nullopt;
            pollfd p{from_, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
            char b[4096];
            const ssize_t n = ::read(from_, b, sizeof b);
            if (n <= 0) return std::nullopt;
            buf_.append(b, static_cast<std::size_t>(n));
        }
    }

    /// Reads lines until one equal to `want` (or starting with it), failing on
    /// an agent error or at the deadline; the lines before it.
    std::vector<std::string> await(const std::string& want, std::chrono::milliseconds within = 20s) {
        const auto deadline = steady::now() + within;
        std::vector<std::string> seen;
        for (;;) {
            auto l = line(deadline);
            INFO("waiting for '" << want << "' after: " << join(seen));
            REQUIRE(l.has_value());
            REQUIRE(l->rfind("agent error", 0) != 0);
            if (l->rfind(want, 0) == 0) return seen;
            seen.push_back(*l);
        }
    }

    /// The first line starting with `want`, itself.
    std::string await_line(const std::string& want, std::chrono::milliseconds within = 20s) {
        const auto deadline = steady::now() + within;
        for (;;) {
            auto l = line(deadline);
            INFO("waiting for '" << want << "'");
            REQUIRE(l.has_value());
            REQUIRE(l->rfind("agent error", 0) != 0);
            if (l->rfind(want, 0) == 0) return *l;
        }
    }

    pid_t pid() const noexcept { return pid_; }

private:
    static std::string join(const std::vector<std::string>& v) {
        std::string s;
        for (const auto& l : v) s += "[" + l + "] ";
        return s;
    }
    pid_t pid_ = -1;
    int to_ = -1;
    int from_ = -1;
    std::string buf_;
};

// etcd on two free loopback ports with a data directory of its own.
class etcd_server {
public:
    explicit etcd_server(bool tls = false, std::string certs = {}) : tls_(tls), certs_(std::move(certs)) {
        char dir[] = "/tmp/ferry-etcd-XXXXXX";
        REQUIRE(::mkdtemp(dir) != nullptr);
        root_ = dir;
        client_port_ = free_port();
        peer_port_ = free_port();
        try {
            start();
        } catch (...) {
            // No destructor runs for a constructor that throws.
            proc_.reset();
            std::error_code ec;
            std::filesystem::remove_all(root_, ec);
            throw;
        }
    }
    ~etcd_server() {
        proc_.reset();
        std::error_code ec;
        std::filesystem::remove_all(root_, ec);
    }

    std::string endpoint() const {
        return (tls_ ? "https://127.0.0.1:" : "http://127.0.0.1:") + std::to_string(client_port_);
    }

    ferry::etcd_options options(const std::string& ns) const {
        auto o = directory_options(endpoint(), ns);
        if (tls_) {
            o.ca_file = certs_ + "/ca.pem";
            o.cert_file = certs_ + "/client.pem";
            o.key_file = certs_ + "/client-key.pem";
        }
        return o;
    }

    void start() {
        const std::string peer = "http://127.0.0.1:" + std::to_string(peer_port_);
        std::vector<std::string> argv{etcd_binary(),
                                      "--name=ferry",
                                      "--data-dir=" + root_ + "/data",
                                      "--listen-client-urls=" + endpoint(),
                                      "--advertise-client-urls=" + endpoint(),
                                      "--listen-peer-urls=" + peer,
                                      "--initial-advertise-peer-urls=" + peer,
                                      "--initial-cluster=ferry=" + peer,
                                      "--log-level=warn"};
        if (tls_) {
            argv.push_back("--cert-file=" + certs_ + "/server.pem");
            argv.push_back("--key-file=" + certs_ + "/server-key.pem");
            argv.push_back("--trusted-ca-file=" + certs_ + "/ca.pem");
            argv.push_back("--client-cert-auth");
        }
        proc_ = std::make_unique<child>(argv, std::vector<std::string>{}, root_ + "/etcd.log");
        // Ready once it answers a range request.
        ferry::etcd_directory probe(options("probe"));
        const auto deadline = steady::now() + 15s;
        for (;;) {
            try {
                (void)probe.fetch("nobody");
                return;
            } catch (const ferry::error& e) {
                INFO("etcd did not come up: " << e.what());
                REQUIRE(steady::now() < deadline);
                std::this_thread::sleep_for(50ms);
            }
        }
    }

    void stop() { proc_.reset(); }
    void wipe() {
        std::error_code ec;
        std::filesystem::remove_all(root_ + "/data", ec);
    }

private:
    bool tls_;
    std::string certs_;
    std::string root_;
    int client_port_ = 0;
    int peer_port_ = 0;
    std::unique_ptr<child> proc_;
};

bool have_etcd() {
    if (!etcd_binary().empty()) return true;
    ferry_test::skip("no etcd here (/usr/bin/etcd; Debian: apt-get install etcd-server)");
    return false;
}

std::unique_ptr<child> spawn_agent(const etcd_server& etcd, const std::string& ns, const std::string& name,
                                   int mesh = 0) {
    return std::make_unique<child>(
        std::vector<std::string>{"/proc/self/exe"},
        std::vector<std::string>{"FERRY_ETCD_AGENT=" + name, "FERRY_ETCD_ENDPOINT=" + etcd.endpoint(),
                                 "FERRY_ETCD_NS=" + ns, "FERRY_ETCD_MESH=" + std::to_string(mesh)});
}

// Syncs until `pred` holds for what was loaded and unloaded, or fails.
template <class Pred>
void sync_until(sync_type& sync, Pred pred, const std::string& what, std::chrono::milliseconds within = 15s) {
    const auto deadline = steady::now() + within;
    for (;;) {
        const ferry::sync_result r = sync.sync_once(50ms);
        for (const auto& [n, why] : r.failed) UNSCOPED_INFO("failed to load " << n << ": " << why);
        if (pred(r)) return;
        INFO("waiting for " << what);
        REQUIRE(steady::now() < deadline);
    }
}

bool has(const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
}

// The observer WRITEs its pattern with `seed` into the agent's slot 0 and
// the agent checks it.
void write_and_check(agent_backend& b, ferry::region& src, const std::string& name, child& agent,
                     std::uint64_t seed) {
    ferry_test::fill_pattern(static_cast<std::byte*>(src.data()), slot, seed, 0);
    const auto p = b.find_peer(name);
    REQUIRE(p.has_value());
    const ferry::desc remote = b.remote_regions(*p).front();
    const ferry::desc local_d{reinterpret_cast<std::uintptr_t>(src.data()), slot, 0};
    const ferry::desc remote_d{remote.addr, slot, 0};
    const ferry::xfer x = b.prepare(ferry::xfer_op::write, {&local_d, 1}, {&remote_d, 1}, *p);
    ferry::status s = b.post(x, "check " + std::to_string(seed));
    if (s == ferry::status::in_progress) s = b.wait(x, 20s);
    REQUIRE(s == ferry::status::ok);
    const auto before = agent.await("check ");
    (void)before;
}

}  // namespace

TEST_CASE("etcd_directory: publish, fetch, remove and the changes poll_events reports") {
    if (!have_etcd()) return;
    etcd_server etcd;
    ferry::etcd_directory a(etcd.options("basic"));
    ferry::etcd_directory b(etcd.options("basic"));
    ferry::etcd_directory other(etcd.options("other"));

    CHECK_FALSE(b.fetch("a").has_value());
    CHECK(b.poll_events(100ms).empty());

    a.publish("a", bytes("first blob"));
    CHECK(b.fetch("a") == bytes("first blob"));
    CHECK_FALSE(other.fetch("a").has_value());
    auto ev = b.poll_events(2s);
    REQUIRE(ev.size() == 1);
    CHECK(ev[0].what == ferry::directory_event::kind::put);
    CHECK(ev[0].name == "a");
    CHECK(ev[0].blob == bytes("first blob"));
    CHECK(other.poll_events(200ms).empty());

    // Binary blobs survive, bytes of every value.
    std::vector<std::byte> binary(1000);
    for (std::size_t i = 0; i < binary.size(); ++i) binary[i] = static_cast<std::byte>(i * 7);
    a.publish("a", binary);
    ev = b.poll_events(2s);
    REQUIRE(ev.size() == 1);
    CHECK(ev[0].what == ferry::directory_event::kind::put);
    CHECK(ev[0].blob == binary);

    // The same blob again is no change.
    a.publish("a", binary);
    CHECK(b.poll_events(300ms).empty());

    a.remove("a");
    CHECK_FALSE(b.fetch("a").has_value());
    ev = b.poll_events(2s);
    REQUIRE(ev.size() == 1);
    CHECK(ev[0].what == ferry::directory_event::kind::remove);
    CHECK(ev[0].name == "a");

    // Destruction revokes the lease: the entry goes at once, not after the TTL.
    {
        ferry::etcd_directory c(etcd.options("basic"));
        c.publish("c", bytes("c's blob"));
        ev = b.poll_events(2s);
        REQUIRE(ev.size() == 1);
    }
    const auto gone_from = steady::now();
    ev = b.poll_events(2s);
    REQUIRE(ev.size() == 1);
    CHECK(ev[0].what == ferry::directory_event::kind::remove);
    CHECK(steady::now() - gone_from < 1s);

    // The keep-alive holds the entry well past the TTL.
    a.publish("a", bytes("kept"));
    std::this_thread::sleep_for(test_ttl * 2);
    CHECK(b.fetch("a") == bytes("kept"));

    REQUIRE_FERRY_ERROR(a.publish("bad/name", bytes("x")), ferry::status::invalid_argument,
                        Catch::Matchers::Contains("holds '/'"));
}

TEST_CASE("an agent killed with SIGKILL leaves within the TTL and is unloaded, and is reloaded once restarted") {
    if (!have_etcd()) return;
    etcd_server etcd;
    auto agent = spawn_agent(etcd, "kill", "agent1");
    agent->await("published");

    agent_backend b(agent_config("observer"));
    auto src = b.allocate(slot);
    ferry::etcd_directory dir(etcd.options("kill"));
    dir.publish("observer", b.local_metadata());
    sync_type sync(dir, b, "observer");
    sync_until(sync, [](const ferry::sync_result& r) { return has(r.loaded, "agent1"); }, "agent1 loaded");
    write_and_check(b, src, "agent1", *agent, 1);

    agent->kill9();
    const auto killed = steady::now();
    // Within the TTL (and etcd's 0.5 s expiry sweep) on a quiet machine: a
    // figure to report, not to assert, so the bound here is a generous one.
    sync_until(sync, [](const ferry::sync_result& r) { return has(r.unloaded, "agent1"); }, "agent1 unloaded", 30s);
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - killed);
    std::printf("etcd lease expiry: agent1 unloaded %lld ms after SIGKILL (TTL %lld ms)\n",
                static_cast<long long>(took.count()),
                static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(test_ttl).count()));
    CHECK_FALSE(b.find_peer("agent1").has_value());
    CHECK_FALSE(dir.fetch("agent1").has_value());

    agent = spawn_agent(etcd, "kill", "agent1");
    agent->await("published");
    sync_until(sync, [](const ferry::sync_result& r) { return has(r.loaded, "agent1"); }, "agent1 reloaded");
    write_and_check(b, src, "agent1", *agent, 2);
    CHECK(agent->finish() == 0);
}

TEST_CASE("an agent that registers more memory and publishes again keeps its handle and its peers' transfers") {
    if (!have_etcd()) return;
    etcd_server etcd;
    auto agent = spawn_agent(etcd, "grow", "agent1");
    agent->await("published");

    agent_backend b(agent_config("observer"));
    auto src = b.allocate(slot);
    ferry::etcd_directory dir(etcd.options("grow"));
    dir.publish("observer", b.local_metadata());
    sync_type sync(dir, b, "observer");
    sync_until(sync, [](const ferry::sync_result& r) { return has(r.loaded, "agent1"); }, "agent1 loaded");
    const auto before = b.find_peer("agent1");
    REQUIRE(before.has_value());
    const ferry::desc first = b.remote_regions(*before).front();
    const ferry::desc local_d{reinterpret_cast<std::uintptr_t>(src.data()), slot, 0};
    const ferry::desc remote_d{first.addr, slot, 0};
    const ferry::xfer x = b.prepare(ferry::xfer_op::write, {&local_d, 1}, {&remote_d, 1}, *before);

    REQUIRE(b.send_notif(*before, "grow") == ferry::status::ok);
    const std::string grown_line = agent->await_line("grown ");
    sync_until(sync, [](const ferry::sync_result& r) { return has(r.loaded, "agent1"); }, "agent1's new blob");
    CHECK(b.find_peer("agent1") == before);
    CHECK(b.remote_regions(*before).size() == 2);

    // The transfer prepared before the new blob goes on, and the new region is reachable.
    ferry_test::fill_pattern(static_cast<std::byte*>(src.data()), slot, 3, 0);
    ferry::status s = b.post(x, "check 3");
    if (s == ferry::status::in_progress) s = b.wait(x, 20s);
    REQUIRE(s == ferry::status::ok);
    CHECK(agent->await_line("check ") == "check ok");
    const std::uint64_t added = std::stoull(grown_line.substr(6));
    const ferry::desc new_d{added, slot, 0};
    const ferry::xfer y = b.prepare(ferry::xfer_op::write, {&local_d, 1}, {&new_d, 1}, *before);
    s = b.post(y);
    if (s == ferry::status::in_progress) s = b.wait(y, 20s);
    CHECK(s == ferry::status::ok);
    CHECK(b.release(x) == ferry::status::ok);
    CHECK(b.release(y) == ferry::status::ok);
    CHECK(agent->finish() == 0);
}

TEST_CASE("etcd stopped and restarted: errors are reported, the directory recovers, loaded peers keep working") {
    if (!have_etcd()) return;
    etcd_server etcd;
    auto agent = spawn_agent(etcd, "restart", "agent1");
    agent->await("published");

    agent_backend b(agent_config("observer"));
    auto src = b.allocate(slot);
    ferry::etcd_directory dir(etcd.options("restart"));
    dir.publish("observer", b.local_metadata());
    sync_type sync(dir, b, "observer");
    sync_until(sync, [](const ferry::sync_result& r) { return has(r.loaded, "agent1"); }, "agent1 loaded");
    CHECK_FALSE(dir.health().has_value());

    etcd.stop();
    REQUIRE_FERRY_ERROR(dir.fetch("agent1"), ferry::status::timed_out, Catch::Matchers::Contains("no endpoint answered"));
    REQUIRE_FERRY_ERROR(dir.publish("observer", b.local_metadata()), ferry::status::timed_out,
                        Catch::Matchers::Contains("etcd"));
    CHECK(sync.sync_once(200ms).empty());
    REQUIRE(dir.health().has_value());
    CHECK(dir.health()->code_status() == ferry::status::timed_out);
    agent->await("etcd down");
    // Transfers do not go through etcd.
    write_and_check(b, src, "agent1", *agent, 3);

    // Down longer than the TTL; etcd keeps its leases across a restart.
    std::this_thread::sleep_for(test_ttl + 500ms);
    etcd.start();
    const auto deadline = steady::now() + 10s;
    while (dir.health() || !dir.fetch("observer").has_value() || !dir.fetch("agent1").has_value()) {
        REQUIRE(steady::now() < deadline);
        (void)sync.sync_once(50ms);
    }
    agent->await("etcd up");
    // The same incarnation: nothing to reload, the handles stay good.
    const auto r = sync.sync_once(500ms);
    CHECK_FALSE(has(r.unloaded, "agent1"));
    CHECK_FALSE(has(r.loaded, "agent1"));
    write_and_check(b, src, "agent1", *agent, 4);

    // etcd comes back without its data: both entries are put again, under new leases.
    etcd.stop();
    etcd.wipe();
    etcd.start();
    const auto deadline2 = steady::now() + 10s;
    while (!dir.fetch("observer").has_value() || !dir.fetch("agent1").has_value()) {
        INFO("entries put again after etcd lost its data");
        REQUIRE(steady::now() < deadline2);
        std::this_thread::sleep_for(50ms);
    }
    write_and_check(b, src, "agent1", *agent, 5);
    CHECK(agent->finish() == 0);
}

TEST_CASE("16 agents find each other through etcd and WRITE all-to-all") {
    if (!have_etcd()) return;
    constexpr int agents = 16;
    etcd_server etcd;
    const auto start = steady::now();
    std::vector<std::unique_ptr<child>> procs;
    for (int i = 0; i < agents; ++i) procs.push_back(spawn_agent(etcd, "mesh", "agent" + std::to_string(i), agents));
    for (auto& p : procs) p->await("all-loaded", 40s);
    const auto loaded = steady::now() - start;
    for (auto& p : procs) p->await("mesh ok", 40s);
    const auto done = steady::now() - start;
    std::printf("etcd discovery: %d agents, all-to-all loaded in %lld ms after the first start, WRITEs checked at %lld ms\n",
                agents, static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(loaded).count()),
                static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(done).count()));
    std::fflush(stdout);
    for (auto& p : procs) CHECK(p->finish() == 0);
}

TEST_CASE("etcd_directory over TLS with a client certificate") {
    if (!have_etcd()) return;
    if (std::system("command -v openssl > /dev/null") != 0) {
        ferry_test::skip("no openssl here to make certificates (Debian: apt-get install openssl)");
        return;
    }
    char dir[] = "/tmp/ferry-etcd-certs-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    const std::string certs = dir;
    struct cleanup {
        std::string path;
        ~cleanup() {
            std::error_code ec;
            std::filesystem::remove_all(path, ec);
        }
    } remove_certs{certs};
    // A CA, a server certificate for 127.0.0.1 and a client certificate it
    // signs. The server's serves as a client certificate too: etcd 3.4's
    // gateway reaches etcd's own gRPC server with it.
    const std::string script =
        "set -e; cd '" + certs + "'; k='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes';"
        "openssl req -x509 $k -keyout ca-key.pem -out ca.pem -days 1 -subj /CN=ferry-test-ca;"
        "openssl req $k -keyout server-key.pem -out server.csr -subj /CN=127.0.0.1;"
        "printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > server.ext;"
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 -extfile server.ext "
        "-out server.pem;"
        "openssl req $k -keyout client-key.pem -out client.csr -subj /CN=ferry-client;"
        "printf 'extendedKeyUsage=clientAuth\\n' > client.ext;"
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 -extfile client.ext "
        "-out client.pem";
    REQUIRE(std::system(("(" + script + ") > '" + certs + "/openssl.log' 2>&1").c_str()) == 0);

    etcd_server etcd(true, certs);
    ferry::etcd_directory a(etcd.options("tls"));
    ferry::etcd_directory b(etcd.options("tls"));
    a.publish("a", bytes("over TLS"));
    CHECK(b.fetch("a") == bytes("over TLS"));
    const auto ev = b.poll_events(2s);
    REQUIRE(ev.size() == 1);
    CHECK(ev[0].blob == bytes("over TLS"));

    // Without our client certificate etcd refuses the connection.
    auto no_cert = etcd.options("tls");
    no_cert.cert_file.clear();
    no_cert.key_file.clear();
    ferry::etcd_directory refused(no_cert);
    CHECK(ferry_test::error_from([&] { (void)refused.fetch("a"); }).has_value());
    CHECK(refused.health().has_value());
}

TEST_CASE("etcd_directory with etcd's authentication") {
    if (!have_etcd()) return;
    etcd_server etcd;
    {
        // As etcdctl enables authentication: a root user with the root role.
        ferry::detail::etcd_http admin(etcd.options("auth"));
        (void)admin.call("/v3/auth/user/add", R"({"name":"root","password":"secret"})");
        (void)admin.call("/v3/auth/role/add", R"({"name":"root"})");
        (void)admin.call("/v3/auth/user/grant", R"({"user":"root","role":"root"})");
        (void)admin.call("/v3/auth/enable", "{}");
    }
    auto opts = etcd.options("auth");
    opts.user = "root";
    opts.password = "secret";
    ferry::etcd_directory a(opts);
    ferry::etcd_directory b(opts);
    a.publish("a", bytes("authenticated"));
    CHECK(b.fetch("a") == bytes("authenticated"));
    const auto ev = b.poll_events(2s);
    REQUIRE(ev.size() == 1);
    CHECK(ev[0].blob == bytes("authenticated"));

    ferry::etcd_directory anonymous(etcd.options("auth"));
    REQUIRE_FERRY_ERROR((void)anonymous.fetch("a"), ferry::status::invalid_argument,
                        Catch::Matchers::Contains("etcd_directory::fetch"));
    auto wrong = opts;
    wrong.password = "wrong";
    ferry::etcd_directory refused(wrong);
    REQUIRE_FERRY_ERROR((void)refused.fetch("a"), ferry::status::invalid_argument,
                        Catch::Matchers::Contains("authenticate"));
}

TEST_CASE("ferry-demo --directory: a target and an initiator started separately meet in etcd and check the bytes") {
    if (!have_etcd()) return;
#if defined(FERRY_DEMO)
    const std::string demo = FERRY_DEMO;
#else
    const std::string demo;
#endif
    if (demo.empty()) {
        ferry_test::skip("ferry-demo is not built here (FERRY_BUILD_EXAMPLES=OFF)");
        return;
    }
    etcd_server etcd;
    const std::string url = "etcd://" + etcd.endpoint().substr(std::string("http://").size());
    struct variant {
        const char* name_space;
        bool target_first;
        std::vector<std::string> extra;
    };
    for (const variant& v : {variant{"demo-tcp", true, {"--tls", "tcp", "--path", "ucx"}},
                             variant{"demo-thread", false, {"--progress", "thread"}}}) {
        INFO("namespace " << v.name_space);
        auto side = [&](const char* role) {
            std::vector<std::string> argv{demo,          "--directory", url,  "--role",         role, "--namespace",
                                          v.name_space, "--blocks",    "16", "--block-size", "4096", "--wait", "30"};
            argv.insert(argv.end(), v.extra.begin(), v.extra.end());
            return std::make_unique<child>(argv, std::vector<std::string>{});
        };
        auto first = side(v.target_first ? "target" : "initiator");
        first->await_line(v.target_first ? "target: published" : "initiator: published");
        auto second = side(v.target_first ? "initiator" : "target");
        child& target = v.target_first ? *first : *second;
        child& initiator = v.target_first ? *second : *first;
        CHECK_THAT(initiator.await_line("initiator: READ"), Catch::Matchers::Contains("every byte matches"));
        initiator.await("ferry-demo: OK (initiator)");
        target.await("ferry-demo: OK (target)");
        CHECK(initiator.finish() == 0);
        CHECK(target.finish() == 0);
    }
}

TEST_CASE("the JSON reader is strict and base64 round-trips") {
    using ferry::detail::parse_json;
    const auto v = parse_json(R"({"header":{"revision":"7"},"kvs":[{"key":"L2E=","n":-1.5e3}],"ok":true,"x":null})");
    REQUIRE(v.find("header") != nullptr);
    CHECK(v.find("header")->find("revision")->text == "7");
    CHECK(v.find("kvs")->items.size() == 1);
    CHECK(v.find("kvs")->items[0].find("n")->text == "-1.5e3");
    CHECK(parse_json(R"("\u00e9\ud83d\ude00\n")").text == "\xc3\xa9\xf0\x9f\x98\x80\n");
    for (const char* bad : {"", "{", "{\"a\":}", "[1,]", "{\"a\" 1}", "\"\\x\"", "01x", "tru", "{} {}", "\"\\ud800\""})
        CHECK(ferry_test::error_from([&] { (void)parse_json(bad); }).has_value());
    std::string deep(100, '[');
    CHECK(ferry_test::error_from([&] { (void)parse_json(deep); }).has_value());
    CHECK(ferry::detail::json_quote("a\"b\\c\n") == "\"a\\\"b\\\\c\\u000a\"");

    for (std::size_t n = 0; n < 70; ++n) {
        std::string s;
        for (std::size_t i = 0; i < n; ++i) s += static_cast<char>(i * 37 + n);
        CHECK(ferry::detail::base64_decode(ferry::detail::base64_encode(s)) == s);
    }
    CHECK(ferry::detail::base64_encode("ferry") == "ZmVycnk=");
    for (const char* bad : {"Zm9", "Zm=v", "Zm9v!A==", "=AAA"}) CHECK_FALSE(ferry::detail::base64_decode(bad).has_value());
}
