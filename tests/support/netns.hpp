#pragma once

// Two network namespaces joined by a veth pair, for tests that need two
// "hosts" on one machine: the parent test process builds them with `ip`
// (and impairs the link with `tc`), each forked child enters its own with
// `enter`, and the guard deletes both namespaces, and the veth pair with
// them, however the test ends.
//
// Nothing here uses Catch2, so the children may call it too.

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace ferry_test::netns {

/// Why the namespaces cannot be made here; the test skips with its text.
struct unavailable : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// Where `program` is: in PATH, or in the sbin directories, which a non-login
/// root shell does not always have in PATH.
[[nodiscard]] inline std::optional<std::string> find_program(std::string_view program) {
    if (program.find('/') != std::string_view::npos) {
        std::string path(program);
        if (::access(path.c_str(), X_OK) == 0) return path;
        return std::nullopt;
    }
    std::string dirs;
    if (const char* path = std::getenv("PATH")) dirs = path;
    dirs += ":/usr/sbin:/sbin:/usr/bin:/bin";
    std::stringstream in(dirs);
    std::string dir;
    while (std::getline(in, dir, ':')) {
        if (dir.empty()) continue;
        std::string candidate = dir + "/" + std::string(program);
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    return std::nullopt;
}

struct command_result {
    int exit_code = -1;  // -1: did not run to an exit (killed, or could not be started)
    std::string output;  // stdout and stderr together

    [[nodiscard]] bool ok() const noexcept { return exit_code == 0; }
};

/// Runs argv[0] (looked up with find_program) with its stdout and stderr
/// captured, and waits for it. No shell. posix_spawn rather than fork: it is
/// called from test processes whose UCX threads are running, where fork runs
/// every library's atfork handlers in a copy of a multithreaded process.
[[nodiscard]] inline command_result run(const std::vector<std::string>& argv) {
    command_result result;
    auto program = find_program(argv.at(0));
    if (!program) {
        result.exit_code = 127;
        result.output = argv[0] + ": not found";
        return result;
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) {
        result.output = std::string("pipe2: ") + std::strerror(errno);
        return result;
    }
    posix_spawn_file_actions_t actions;
    ::posix_spawn_file_actions_init(&actions);
    ::posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    ::posix_spawn_file_actions_adddup2(&actions, out[1], STDERR_FILENO);
    std::fflush(nullptr);
    pid_t pid = -1;
    const int spawned = ::posix_spawn(&pid, program->c_str(), &actions, nullptr, args.data(), environ);
    ::posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) {
        ::close(out[0]);
        ::close(out[1]);
        result.output = "posix_spawn " + *program + ": " + std::strerror(spawned);
        return result;
    }
    ::close(out[1]);
    char buf[1024];
    for (;;) {
        const ssize_t n = ::read(out[0], buf, sizeof buf);
        if (n > 0)
            result.output.append(buf, static_cast<std::size_t>(n));
        else if (n == 0 || errno != EINTR)
            break;
    }
    ::close(out[0]);
    int wstatus = 0;
    while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(wstatus)) result.exit_code = WEXITSTATUS(wstatus);
    while (!result.output.empty() && (result.output.back() == '\n' || result.output.back() == ' '))
        result.output.pop_back();
    return result;
}

/// The command line as one string, for messages.
[[nodiscard]] inline std::string joined(const std::vector<std::string>& argv) {
    std::string s;
    for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
    return s;
}

/// Runs the command and throws std::runtime_error, naming it and its
/// output, unless it exits 0.
inline void run_or_throw(const std::vector<std::string>& argv) {
    auto r = run(argv);
    if (!r.ok())
        throw std::runtime_error("'" + joined(argv) + "' exited with " + std::to_string(r.exit_code) + ": " + r.output);
}

/// Moves the calling process into network namespace `name` (made with `ip
/// netns add`) and, as `ip netns exec` does, into a mount namespace of its
/// own with a sysfs of that network namespace on /sys: UCX finds network
/// devices in /sys/class/net, which otherwise still lists the original
/// namespace's. Call it in a fresh child before any UCX object exists.
/// Returns an empty string on success, else what failed.
[[nodiscard]] inline std::string enter(const std::string& name) {
    const std::string path = "/var/run/netns/" + name;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return "open " + path + ": " + std::strerror(errno);
    const int rc = ::setns(fd, CLONE_NEWNET);
    const int setns_errno = errno;
    ::close(fd);
    if (rc != 0) return "setns " + path + ": " + std::strerror(setns_errno);
    if (::unshare(CLONE_NEWNS) != 0) return std::string("unshare(CLONE_NEWNS): ") + std::strerror(errno);
    // Keep the remount below out of the parent's mount namespace.
    if (::mount("", "/", nullptr, MS_SLAVE | MS_REC, nullptr) != 0)
        return std::string("mount --make-rslave /: ") + std::strerror(errno);
    unsigned long flags = 0;
    struct statvfs st {};
    if (::statvfs("/sys", &st) == 0 && (st.f_flag & ST_RDONLY)) flags |= MS_RDONLY;
    if (::umount2("/sys", MNT_DETACH) != 0 && errno != EINVAL)
        return std::string("umount /sys: ") + std::strerror(errno);
    if (::mount(name.c_str(), "/sys", "sysfs", flags, nullptr) != 0)
        return std::string("mount sysfs on /sys: ") + std::strerror(errno);
    return {};
}

/// A device's byte and packet counters, as the calling process's network
/// namespace sees them (/proc/self/net/dev).
struct link_counters {
    std::uint64_t rx_bytes = 0, rx_packets = 0, tx_bytes = 0, tx_packets = 0;
};

/// The device's counters in `text`, the contents of a /proc/net/dev.
[[nodiscard]] inline std::optional<link_counters> counters_in(const std::string& text, const std::string& dev) {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        const auto colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string name = line.substr(0, colon);
        name.erase(0, name.find_first_not_of(' '));
        if (name != dev) continue;
        std::istringstream fields(line.substr(colon + 1));
        link_counters c;
        std::uint64_t skip;
        // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets ...
        fields >> c.rx_bytes >> c.rx_packets >> skip >> skip >> skip >> skip >> skip >> skip >> c.tx_bytes >>
            c.tx_packets;
        if (!fields) return std::nullopt;
        return c;
    }
    return std::nullopt;
}

[[nodiscard]] inline std::optional<link_counters> counters(const std::string& dev) {
    std::ifstream in("/proc/self/net/dev");
    std::stringstream text;
    text << in.rdbuf();
    return counters_in(text.str(), dev);
}

/// Makes the calling process, after `enter`, read the contents of `file` as
/// the kernel's boot id (/proc/sys/kernel/random/boot_id, bind-mounted over
/// in its own mount namespace). ferry and UCX both take the boot id for the
/// host's identity: processes in one namespace that read another boot id
/// than those in the other are two hosts to them, so that neither shared
/// memory nor host_ipc nor the pid watch reaches across, and everything
/// between the two sides crosses the veth. Call it before any UCX object
/// exists. Returns an empty string on success, else what failed.
[[nodiscard]] inline std::string pose_as_other_host(const std::string& file) {
    static constexpr const char* boot_id = "/proc/sys/kernel/random/boot_id";
    if (::mount(file.c_str(), boot_id, nullptr, MS_BIND, nullptr) != 0)
        return "mount --bind " + file + " " + boot_id + ": " + std::strerror(errno);
    return {};
}

/// A counter of the "Tcp:" lines of /proc/net/snmp (e.g. "RetransSegs") in
/// `text`, the file's contents.
[[nodiscard]] inline std::optional<std::uint64_t> tcp_counter(const std::string& text, std::string_view name) {
    std::istringstream lines(text);
    std::string header, values;
    while (std::getline(lines, header)) {
        if (header.rfind("Tcp:", 0) != 0) continue;
        if (!std::getline(lines, values) || values.rfind("Tcp:", 0) != 0) return std::nullopt;
        std::istringstream h(header), v(values);
        std::string key, value;
        while (h >> key && v >> value)
            if (key == name) return std::strtoull(value.c_str(), nullptr, 10);
        return std::nullopt;
    }
    return std::nullopt;
}

/// One end of the pair: its namespace, its device and its address.
struct end {
    std::string ns;
    std::string dev;
    std::string addr;  // without the prefix length
};

/// Names unique to this process and call, so that parallel test programs
/// (ctest -j) do not collide; the prefix lets a later run find namespaces
/// that a killed run left behind.
inline constexpr std::string_view ns_prefix = "ferry-test-";

/// Deletes namespaces that earlier runs of ferry's tests left behind when
/// they were killed: those whose creating process no longer exists.
inline void remove_stale_namespaces(const std::string& ip) {
    auto listed = run({ip, "netns", "list"});
    if (!listed.ok()) return;
    std::istringstream lines(listed.output);
    std::string line;
    while (std::getline(lines, line)) {
        const std::string name = line.substr(0, line.find(' '));
        if (name.rfind(ns_prefix, 0) != 0) continue;
        const std::string rest = name.substr(ns_prefix.size());
        const long pid = std::strtol(rest.c_str(), nullptr, 10);
        if (pid <= 0 || pid == ::getpid()) continue;
        if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
        static_cast<void>(run({ip, "netns", "delete", name}));
    }
}

/// The two namespaces and the veth pair between them, addresses
/// 10.231.7.1/24 (`a`) and 10.231.7.2/24 (`b`), both ends up, loopback left
/// down so that nothing can go anywhere but over the veth. The constructor
/// throws `unavailable`, naming the missing prerequisite, where that cannot
/// be done; the destructor deletes both namespaces (and so the pair).
class veth_pair {
public:
    veth_pair() {
        if (::geteuid() != 0)
            throw unavailable("not running as root: network namespaces and veth pairs need root (euid is " +
                              std::to_string(::geteuid()) + ")");
        auto ip = find_program("ip");
        if (!ip) throw unavailable("the 'ip' program (iproute2) is not installed");
        ip_ = *ip;
        struct stat st {};
        if (::stat("/proc/self/ns/net", &st) != 0)
            throw unavailable("the kernel has no network namespaces (/proc/self/ns/net is missing)");
        remove_stale_namespaces(ip_);

        static int serial = 0;
        const std::string id = std::to_string(::getpid()) + "-" + std::to_string(serial++);
        a_ = {std::string(ns_prefix) + id + "-a", "fa" + id, "10.231.7.1"};
        b_ = {std::string(ns_prefix) + id + "-b", "fb" + id, "10.231.7.2"};
        if (a_.dev.size() > 15) a_.dev = a_.dev.substr(a_.dev.size() - 15);
        if (b_.dev.size() > 15) b_.dev = b_.dev.substr(b_.dev.size() - 15);

        for (const end* e : {&a_, &b_}) {
            auto r = run({ip_, "netns", "add", e->ns});
            if (!r.ok()) {
                teardown();
                throw unavailable("cannot create a network namespace ('ip netns add " + e->ns + "': " + r.output + ")");
            }
            made_.push_back(e->ns);
        }
        auto r =
            run({ip_, "link", "add", a_.dev, "netns", a_.ns, "type", "veth", "peer", "name", b_.dev, "netns", b_.ns});
        if (!r.ok()) {
            teardown();
            throw unavailable("cannot create a veth pair (" + r.output + ")");
        }
        try {
            for (const end* e : {&a_, &b_}) {
                run_or_throw({ip_, "-n", e->ns, "addr", "add", e->addr + "/24", "dev", e->dev});
                run_or_throw({ip_, "-n", e->ns, "link", "set", "dev", e->dev, "up"});
            }
        } catch (const std::exception& e) {
            teardown();
            throw unavailable(std::string("cannot configure the veth pair: ") + e.what());
        }
        for (const end* e : {&a_, &b_})
            if (auto why = wait_running(*e, std::chrono::seconds(5)); !why.empty()) {
                teardown();
                throw unavailable("the veth pair does not come up: " + why);
            }
    }

    veth_pair(const veth_pair&) = delete;
    veth_pair& operator=(const veth_pair&) = delete;
    ~veth_pair() { teardown(); }

    [[nodiscard]] const end& a() const noexcept { return a_; }
    [[nodiscard]] const end& b() const noexcept { return b_; }
    [[nodiscard]] const std::string& ip_program() const noexcept { return ip_; }

    /// `ip -n <ns> link set dev <dev> up|down` for one end.
    [[nodiscard]] command_result set_link(const end& e, bool up) const {
        return run({ip_, "-n", e.ns, "link", "set", "dev", e.dev, up ? "up" : "down"});
    }

    /// Waits until the end's device is up with carrier (the kernel reports
    /// carrier changes with a delay of up to a second; UCX lists only
    /// devices that are running). Empty on success, else the last state seen.
    [[nodiscard]] std::string wait_running(const end& e, std::chrono::milliseconds timeout) const {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            auto r = run({ip_, "-n", e.ns, "-o", "link", "show", "dev", e.dev});
            if (r.ok() && r.output.find(",LOWER_UP") != std::string::npos &&
                r.output.find("state UP") != std::string::npos)
                return {};
            if (std::chrono::steady_clock::now() > deadline) return r.output;
            ::usleep(10'000);
        }
    }

    /// Adds `tc qdisc add dev <dev> root <spec...>` on one end; throws
    /// `unavailable` with tc's answer if tc is missing or refuses.
    void add_root_qdisc(const end& e, const std::vector<std::string>& spec) const {
        auto tc = find_program("tc");
        if (!tc) throw unavailable("the 'tc' program (iproute2) is not installed");
        std::vector<std::string> argv{*tc, "-n", e.ns, "qdisc", "add", "dev", e.dev, "root"};
        argv.insert(argv.end(), spec.begin(), spec.end());
        auto r = run(argv);
        if (!r.ok()) throw unavailable("'" + joined(argv) + "' failed: " + r.output);
    }

    /// Drops `percent` % of the packets arriving at one end, at random,
    /// without netem: a classic-BPF filter on the clsact ingress hook picks a
    /// packet when a random number is below percent % of 2^32 and redirects
    /// it to a device that is down, which drops it. On ingress, so that the
    /// sender is not told (a drop on its own egress hook is reported to its
    /// TCP as a local drop, not lost on the wire). Needs sch_ingress
    /// (clsact), cls_bpf and act_mirred; throws `unavailable` with tc's
    /// answer where one is missing.
    void add_random_loss(const end& e, unsigned percent) const {
        auto tc = find_program("tc");
        if (!tc) throw unavailable("the 'tc' program (iproute2) is not installed");
        const std::string sink = "s" + e.dev.substr(1);
        const std::string sink_peer = "t" + e.dev.substr(1);
        auto r = run({ip_, "-n", e.ns, "link", "add", sink, "type", "veth", "peer", "name", sink_peer});
        if (!r.ok()) throw unavailable("cannot create the drop device: " + r.output);
        std::vector<std::string> clsact{*tc, "-n", e.ns, "qdisc", "add", "dev", e.dev, "clsact"};
        if (r = run(clsact); !r.ok()) throw unavailable("'" + joined(clsact) + "' failed: " + r.output);
        const auto threshold = static_cast<std::uint64_t>(percent) * ((std::uint64_t{1} << 32) / 100);
        // A = random; if A >= threshold return 0 (no match), else return -1 (match).
        const std::string program =
            "4,32 0 0 4294963256,53 1 0 " + std::to_string(threshold) + ",6 0 0 4294967295,6 0 0 0";
        std::vector<std::string> filter{*tc,      "-n",      e.ns,       "filter",   "add",   "dev",
                                        e.dev,    "ingress", "bpf",      "bytecode", program, "action",
                                        "mirred", "egress",  "redirect", "dev",      sink};
        if (r = run(filter); !r.ok()) throw unavailable("'" + joined(filter) + "' failed: " + r.output);
    }

    /// One end's device counters, read inside its namespace; nothing if
    /// they cannot be read.
    [[nodiscard]] std::optional<link_counters> counters_of(const end& e) const {
        auto r = run({ip_, "netns", "exec", e.ns, "cat", "/proc/net/dev"});
        if (!r.ok()) return std::nullopt;
        return counters_in(r.output, e.dev);
    }

    /// `tc -s filter show dev <dev> ingress` for one end: the loss filter's
    /// counters.
    [[nodiscard]] std::string filter_stats(const end& e) const {
        auto tc = find_program("tc");
        if (!tc) return "(no tc)";
        return run({*tc, "-n", e.ns, "-s", "filter", "show", "dev", e.dev, "ingress"}).output;
    }

    /// TCP segments retransmitted in one end's namespace since it was made
    /// (RetransSegs of its /proc/net/snmp); nothing if that cannot be read.
    [[nodiscard]] std::optional<std::uint64_t> tcp_retransmits(const end& e) const {
        auto r = run({ip_, "netns", "exec", e.ns, "cat", "/proc/net/snmp"});
        if (!r.ok()) return std::nullopt;
        return tcp_counter(r.output, "RetransSegs");
    }

    /// `tc -s qdisc show dev <dev>` for one end, for the report.
    [[nodiscard]] std::string qdisc_stats(const end& e) const {
        auto tc = find_program("tc");
        if (!tc) return "(no tc)";
        return run({*tc, "-n", e.ns, "-s", "qdisc", "show", "dev", e.dev}).output;
    }

private:
    void teardown() noexcept {
        for (const auto& ns : made_) static_cast<void>(run({ip_, "netns", "delete", ns}));
        made_.clear();
    }

    std::string ip_;
    end a_, b_;
    std::vector<std::string> made_;
};

/// Lines that forked children write for the parent to print after they
/// finish (timings, counters): a pipe that the children inherit.
class notes {
public:
    notes() {
        if (::pipe2(fds_, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
        // Big enough for every note a test writes, so no child blocks on it.
        ::fcntl(fds_[1], F_SETPIPE_SZ, 1 << 20);
        ::fcntl(fds_[0], F_SETFL, O_NONBLOCK);
    }
    notes(const notes&) = delete;
    notes& operator=(const notes&) = delete;
    ~notes() {
        ::close(fds_[0]);
        ::close(fds_[1]);
    }

    /// From a child: one line.
    void write(std::string line) const {
        line += '\n';
        const char* p = line.data();
        std::size_t left = line.size();
        while (left > 0) {
            const ssize_t n = ::write(fds_[1], p, left);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return;
            p += n;
            left -= static_cast<std::size_t>(n);
        }
    }

    /// In the parent, once the children are done: everything written so far.
    [[nodiscard]] std::string take() const {
        std::string out;
        char buf[4096];
        for (;;) {
            const ssize_t n = ::read(fds_[0], buf, sizeof buf);
            if (n > 0)
                out.append(buf, static_cast<std::size_t>(n));
            else if (n < 0 && errno == EINTR)
                continue;
            else
                break;
        }
        return out;
    }

private:
    int fds_[2]{-1, -1};
};

}  // namespace ferry_test::netns
