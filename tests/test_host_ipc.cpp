// The host_ipc path between two real processes on this host, over shm and
// tcp and under both progress policies: ferry copies a peer's host memory
// itself, through the peer's memory file mapped here where every remote
// block lies in memory the peer allocated (mapped mode), else with
// process_vm_writev/readv (vm mode). Every byte that moves is checked where
// it lands, against a pattern keyed by the round, the region and the offset,
// and the bytes around the blocks are checked to be untouched.
//
// Which mode a transfer took shows from outside: only a mapped transfer maps
// the peer's memory file into this process (its inode appears in
// /proc/self/maps), and only a vm transfer goes through the peer's own page
// tables, so only it sees pages that the peer protected or cut off.

#include <ferry/detail/byte_io.hpp>
#include <ferry/detail/metadata.hpp>
#include <ferry/detail/populated_pages.hpp>
#include <ferry/ferry.hpp>

#include <catch2/catch.hpp>

#include "support/blocks.hpp"
#include "support/ferry_catch.hpp"
#include "support/grandchild.hpp"
#include "support/pattern.hpp"
#include "support/two_process.hpp"

#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

using namespace std::chrono_literals;
using ferry::status;
using ferry_test::grandchild;
using ferry::xfer_op;
using ferry::xfer_path;
using ferry_test::channel;
using ferry_test::expect;
using ferry_test::expect_status;
using ferry_test::fail;
using ferry_test::patience;
using ferry_test::side;
using ferry_test::str;
using ferry_test::untouched;

namespace {

using inline_backend = ferry::ucx_backend<>;
using threaded_backend = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::host>>;

template <class Backend>
constexpr bool threaded_v = ferry::is_threaded_v<typename Backend::policy_type>;

// A transport and a progress policy, which both processes of a run use.
struct variant {
    const char* tls;
    bool threaded;
};

std::string describe(const variant& v) {
    return std::string(v.tls) + ", " + (v.threaded ? "progress::thread" : "progress::inline_poll");
}

// Runs run<Backend>(tls) with the backend type that `v` names.
template <class F>
void with_policy(const variant& v, F&& run) {
    if (v.threaded) run.template operator()<threaded_backend>(std::string(v.tls));
    else run.template operator()<inline_backend>(std::string(v.tls));
}

ferry::ucx_config config_for(const std::string& tls, std::string name) {
    ferry::ucx_config cfg;
    cfg.name = std::move(name);
    cfg.ucx_options = {{"TLS", tls}};
    return cfg;
}

std::uintptr_t addr_of(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

std::string errno_text(int e) { return std::string(std::strerror(e)) + " (errno " + std::to_string(e) + ")"; }

// Drives the backend until a message waits on the channel. Under the thread
// policy the progress thread drives it, and this thread sleeps.
template <class Backend>
void serve_until_message(Backend& b, channel& ch) {
    if constexpr (threaded_v<Backend>) {
        while (!ch.readable(-1)) {
        }
    } else {
        ferry_test::progress_until_message(b, ch);
    }
}

// Waits for `message`, driving the worker meanwhile: a notification or a
// connection may need this side to answer.
template <class Backend>
void await_message(Backend& b, channel& ch, std::string_view message) {
    serve_until_message(b, ch);
    ch.expect_message(message);
}

// Requires the ferry::error that f throws to carry `want` and exactly the
// message `want_message` (what() adds ": " and the status, as std::system_error does).
template <class F>
void expect_error(F&& f, status want, const std::string& want_message, const std::string& what) {
    const auto e = ferry_test::error_from(std::forward<F>(f));
    if (!e) fail(what + ": did not throw");
    const std::string want_what = want_message + ": " + str(want);
    if (e->code_status() != want || std::string(e->what()) != want_what)
        fail(what + ": threw " + str(e->code_status()) + " '" + e->what() + "', expected " + str(want) + " '" +
             want_what + "'");
}

// ---- memory on both sides ------------------------------------------------------------

// Page-aligned anonymous memory for register_memory, whose protection its
// owner may change.
class anon_pages {
public:
    explicit anon_pages(std::size_t bytes) : size_(bytes) {
        void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) fail("mmap of " + std::to_string(bytes) + " bytes: " + errno_text(errno));
        data_ = static_cast<std::byte*>(p);
    }
    anon_pages(const anon_pages&) = delete;
    anon_pages& operator=(const anon_pages&) = delete;
    ~anon_pages() { ::munmap(data_, size_); }

    [[nodiscard]] std::byte* data() const noexcept { return data_; }

private:
    std::size_t size_;
    std::byte* data_ = nullptr;
};

// Every process has four regions of the same size: two that its backend
// allocated (shared memory files, which a peer maps) and two that it
// registered (anonymous pages, which a peer reaches with process_vm).
enum region_id : std::size_t { alloc0, alloc1, user0, user1, region_count };
const std::vector<std::size_t> every_region = {alloc0, alloc1, user0, user1};

const char* region_name(std::size_t r) {
    constexpr const char* names[] = {"allocated region 0", "allocated region 1", "registered region 0",
                                     "registered region 1"};
    return r < region_count ? names[r] : "no region";
}

bool is_allocated(std::size_t r) { return r == alloc0 || r == alloc1; }

struct memory_set {
    template <class Backend>
    memory_set(Backend& b, std::size_t bytes) : size(bytes), user_mem0(bytes), user_mem1(bytes) {
        regions[alloc0] = b.allocate(bytes);
        regions[alloc1] = b.allocate(bytes);
        regions[user0] = b.register_memory(user_mem0.data(), bytes);
        regions[user1] = b.register_memory(user_mem1.data(), bytes);
        for (std::size_t r : every_region) reset(r);
    }

    [[nodiscard]] std::byte* base(std::size_t r) const { return static_cast<std::byte*>(regions[r].data()); }
    [[nodiscard]] std::array<std::uint64_t, region_count> addrs() const {
        std::array<std::uint64_t, region_count> out{};
        for (std::size_t r : every_region) out[r] = addr_of(regions[r].data());
        return out;
    }
    void reset(std::size_t r) const { std::memset(base(r), static_cast<int>(untouched), size); }

    std::size_t size;
    anon_pages user_mem0;
    anon_pages user_mem1;
    std::array<ferry::region, region_count> regions;
};

// ---- layouts and patterns ------------------------------------------------------------------

struct shape {
    std::size_t count;
    std::size_t len;
    bool contiguous;
};

std::string describe(const shape& s) {
    return std::to_string(s.count) + " x " + std::to_string(s.len) + " B " +
           (s.contiguous ? "contiguous" : "scattered");
}

// Where a block lies: a region and an offset in it.
struct spot {
    std::size_t region;
    std::size_t offset;
};

// What a block's pattern is keyed by: the offset, in one space, of the remote block it belongs to.
std::uint64_t key_of(const spot& s) { return (static_cast<std::uint64_t>(s.region) << 40) + s.offset; }

// The blocks of one side of a transfer: descriptor i lies in region
// cycle[i % cycle.size()]; in each region they start at `first`, either
// back to back in descriptor order (contiguous) or 13 bytes apart in an order
// shuffled by `layout_seed` (scattered), so that neighbouring descriptors are
// not neighbours in memory.
struct block_set {
    shape s;
    std::vector<std::size_t> cycle;
    std::size_t first = 0;
    std::uint64_t layout_seed = 0;

    [[nodiscard]] std::vector<spot> spots() const {
        std::array<std::vector<std::size_t>, region_count> members;
        for (std::size_t i = 0; i < s.count; ++i) members[cycle[i % cycle.size()]].push_back(i);
        std::vector<spot> out(s.count);
        std::mt19937_64 rng(layout_seed);
        for (std::size_t r = 0; r < region_count; ++r) {
            std::vector<std::size_t> slots(members[r].size());
            std::iota(slots.begin(), slots.end(), std::size_t{0});
            if (!s.contiguous) std::shuffle(slots.begin(), slots.end(), rng);
            const std::size_t stride = s.contiguous ? s.len : s.len + 13;
            for (std::size_t k = 0; k < slots.size(); ++k) out[members[r][k]] = {r, first + slots[k] * stride};
        }
        return out;
    }

    [[nodiscard]] std::vector<ferry::desc> descs(const std::array<std::uint64_t, region_count>& base) const {
        std::vector<ferry::desc> out;
        out.reserve(s.count);
        for (const spot& p : spots()) out.push_back({static_cast<std::uintptr_t>(base[p.region] + p.offset), s.len, 0});
        return out;
    }

    [[nodiscard]] std::size_t extent() const {
        std::size_t end = 0;
        for (const spot& p : spots()) end = std::max(end, p.offset + s.len);
        return end;
    }

    // The regions that hold a block: the whole cycle unless there are fewer blocks.
    [[nodiscard]] std::vector<std::size_t> regions() const {
        const std::size_t n = std::min(cycle.size(), std::max<std::size_t>(s.count, 1));
        std::set<std::size_t> used(cycle.begin(), cycle.begin() + static_cast<std::ptrdiff_t>(n));
        return {used.begin(), used.end()};
    }

    [[nodiscard]] bool all_allocated() const {
        const auto used = regions();
        return std::all_of(used.begin(), used.end(), is_allocated);
    }

    // As text, for a command to the target, and back.
    [[nodiscard]] std::string encode() const {
        std::string out = std::to_string(s.count) + " " + std::to_string(s.len) + " " +
                          std::to_string(s.contiguous ? 1 : 0) + " " + std::to_string(first) + " " +
                          std::to_string(layout_seed) + " " + std::to_string(cycle.size());
        for (std::size_t r : cycle) out += " " + std::to_string(r);
        return out;
    }
    static block_set decode(std::istream& in) {
        block_set b;
        int contiguous = 0;
        std::size_t n = 0;
        in >> b.s.count >> b.s.len >> contiguous >> b.first >> b.layout_seed >> n;
        b.s.contiguous = contiguous != 0;
        b.cycle.resize(n);
        for (auto& r : b.cycle) in >> r;
        const bool known = std::all_of(b.cycle.begin(), b.cycle.end(), [](std::size_t r) { return r < region_count; });
        if (!in || n == 0 || !known) fail("a malformed block set");
        return b;
    }
};

// Writes into `where` the pattern that the blocks keyed by `keyed_by` carry.
void fill_blocks(const memory_set& m, const std::vector<spot>& where, const std::vector<spot>& keyed_by,
                 std::size_t len, std::uint64_t seed) {
    for (std::size_t i = 0; i < where.size(); ++i)
        ferry_test::fill_pattern(m.base(where[i].region) + where[i].offset, len, seed, key_of(keyed_by[i]));
}

// Fills a whole region with the pattern its blocks are keyed by: a READ source.
void fill_region(const memory_set& m, std::size_t r, std::uint64_t seed) {
    ferry_test::fill_pattern(m.base(r), m.size, seed, key_of({r, 0}));
}

std::string check_region_source(const memory_set& m, std::size_t r, std::uint64_t seed) {
    if (auto e = ferry_test::check_pattern(m.base(r), m.size, seed, key_of({r, 0})); !e.empty())
        return std::string(region_name(r)) + ", a READ source, changed: " + e;
    return {};
}

// check_filled, but a page at a time through memcmp, since whole regions of megabytes are checked.
std::string check_untouched(const std::byte* p, std::size_t n, std::size_t first_index) {
    static const std::vector<std::byte> reference(4096, untouched);
    for (std::size_t at = 0; at < n; at += reference.size()) {
        const std::size_t k = std::min(reference.size(), n - at);
        if (std::memcmp(p + at, reference.data(), k) != 0)
            return ferry_test::check_filled(p + at, k, untouched, first_index + at);
    }
    return {};
}

// Empty if block i of `where` holds the pattern of block i of `keyed_by`,
// and every other byte of `regions` is untouched; otherwise the first difference.
std::string verify_blocks(const memory_set& m, const std::vector<spot>& where, const std::vector<spot>& keyed_by,
                          std::size_t len, std::uint64_t seed, const std::vector<std::size_t>& regions) {
    for (std::size_t i = 0; i < where.size(); ++i)
        if (auto e = ferry_test::check_pattern(m.base(where[i].region) + where[i].offset, len, seed,
                                               key_of(keyed_by[i]));
            !e.empty())
            return "descriptor " + std::to_string(i) + " (" + region_name(where[i].region) + ", offset " +
                   std::to_string(where[i].offset) + "): " + e;
    for (std::size_t r : regions) {
        std::vector<std::size_t> starts;
        for (const spot& p : where)
            if (p.region == r) starts.push_back(p.offset);
        std::sort(starts.begin(), starts.end());
        std::size_t pos = 0;
        for (std::size_t start : starts) {
            if (auto e = check_untouched(m.base(r) + pos, start - pos, pos); !e.empty())
                return std::string(region_name(r)) + ", outside the blocks: " + e;
            pos = start + len;
        }
        if (auto e = check_untouched(m.base(r) + pos, m.size - pos, pos); !e.empty())
            return std::string(region_name(r)) + ", outside the blocks: " + e;
    }
    return {};
}

// ---- what the initiator sees of the target --------------------------------------------------

// A host region's shared-memory file as its metadata names it.
struct memory_file {
    std::uint32_t fd = 0;
    std::uint64_t inode = 0;
};

std::optional<memory_file> file_of(const ferry::detail::region_record& r) {
    if (r.ipc_handle.size() != ferry::detail::host_share_handle_size) return std::nullopt;
    ferry::detail::byte_reader in(r.ipc_handle, "shared-memory handle");
    memory_file f;
    f.fd = in.get<std::uint32_t>("descriptor");
    f.inode = in.get<std::uint64_t>("inode");
    return f;
}

std::vector<std::byte> handle_bytes(const memory_file& f) {
    std::vector<std::byte> out;
    ferry::detail::byte_writer w(out);
    w.put<std::uint32_t>(f.fd);
    w.put<std::uint64_t>(f.inode);
    return out;
}

struct target_view {
    ferry::peer p;
    std::vector<std::byte> blob;
    std::uint32_t pid = 0;
    std::array<std::uint64_t, region_count> base{};
    std::array<memory_file, region_count> file{};  // allocated regions only
};

template <class Backend>
void publish(Backend& b, const memory_set& m, channel& ch) {
    ch.send(b.local_metadata());
    ch.send_u64s(m.addrs());
}

template <class Backend>
target_view load_target(Backend& b, channel& ch) {
    target_view t;
    t.blob = ch.recv_bytes();
    t.p = b.load_remote(t.blob);
    const auto md = ferry::detail::decode_metadata(t.blob);
    t.pid = md.pid;
    const auto addrs = ch.recv_u64s();
    expect(addrs.size() == region_count, "the target sent " + std::to_string(addrs.size()) + " addresses");
    std::copy(addrs.begin(), addrs.end(), t.base.begin());
    for (std::size_t r : every_region) {
        const auto rec = std::find_if(md.regions.begin(), md.regions.end(),
                                      [&](const auto& x) { return x.addr == t.base[r]; });
        expect(rec != md.regions.end(), std::string("the target's metadata lacks its ") + region_name(r));
        const auto f = file_of(*rec);
        expect(f.has_value() == is_allocated(r),
               std::string("the target's ") + region_name(r) +
                   (is_allocated(r) ? " came without a shared-memory file" : " came with a shared-memory file"));
        if (f) t.file[r] = *f;
    }
    return t;
}

// Whether this process maps the memory file with this inode (memfd files
// show as /memfd:NAME): a mapped transfer maps the peer's.
bool maps_memory_file(std::uint64_t inode) {
    std::ifstream maps("/proc/self/maps");
    for (std::string line; std::getline(maps, line);) {
        std::istringstream in(line);
        std::string range, perms, offset, device, path;
        std::uint64_t ino = 0;
        in >> range >> perms >> offset >> device >> ino >> path;
        if (ino == inode && path.rfind("/memfd:", 0) == 0) return true;
    }
    return false;
}

// Whether the kernel lets this process read a byte of process `pid` at
// `addr` with process_vm_readv: what vm mode needs, asked independently of ferry.
bool vm_allowed(std::uint32_t pid, std::uint64_t addr) {
    char byte = 0;
    iovec here{&byte, 1};
    iovec there{reinterpret_cast<void*>(addr), 1};
    return ::process_vm_readv(static_cast<pid_t>(pid), &here, 1, &there, 1, 0) == 1;
}

// vm mode needs the kernel to let this process use process_vm_readv on the
// target: said plainly where it does not, rather than through a path_of
// that says ucx.
void expect_vm_allowed(const target_view& t) {
    if (!vm_allowed(t.pid, t.base[user0]))
        fail("process_vm_readv on the target (pid " + std::to_string(t.pid) + ") is refused here (" +
             errno_text(errno) +
             "): vm mode needs the same user and ptrace access (CAP_SYS_PTRACE, or kernel.yama.ptrace_scope=0)");
}

// The checks every host_ipc transfer passes after prepare: its path, its
// size and ferry's model of its cost.
template <class Backend>
void expect_host_ipc(Backend& b, ferry::xfer x, std::uint64_t bytes, const std::string& what) {
    const xfer_path path = b.path_of(x);
    expect(path == xfer_path::host_ipc,
           what + ": path_of says " + std::string(ferry::to_string(path)) + ", expected host_ipc");
    expect(b.size_of(x) == bytes,
           what + ": size_of says " + std::to_string(b.size_of(x)) + ", expected " + std::to_string(bytes));
    const ferry::xfer_cost cost = b.estimate(x);
    expect(cost.method == ferry::cost_method::host_ipc_model && cost.duration.count() > 0 &&
               cost.margin == cost.duration / 2,
           what + ": estimate gave " + std::string(ferry::to_string(cost.method)) + ", " +
               std::to_string(cost.duration.count()) + " ns +- " + std::to_string(cost.margin.count()) +
               " ns; expected host_ipc_model, a positive duration and half of it as margin");
}

// Posts a transfer without a notification: a host_ipc copy is over before
// post returns, under either policy.
template <class Backend>
void post_now(Backend& b, ferry::xfer x, const std::string& what) {
    expect_status(b.post(x), status::ok, what + ": post");
    expect_status(b.check(x), status::ok, what + ": check after post");
}

// ---- a target that does what it is told ----------------------------------------------------

// Between commands it does nothing at all (under the inline policy not even
// progress), so what completes meanwhile completed one-sidedly.
//   serve              progress until the next command (the ucx path needs the target)
//   fill R SEED        fills region R with the pattern SEED; answers "filled"
//   reset R            fills region R with untouched bytes; answers "reset"
//   verify SEED SET... requires the block sets (of one block length) to hold SEED, and the
//                      rest of their regions to be untouched; answers "verified"
//   protect R PROT     mprotect(2) of region R; answers "protected"
//   unmap R            munmap(2) of the last page of registered region R; answers "unmapped"
//   notifs A|B|...     drives the worker until these notifications came, then requires that
//                      exactly these came so far, in this order; answers "notified"
//   bye                returns
// `extra` handles commands of a particular test; true if it knew the command.
using extra_commands = std::function<bool(const std::string& cmd, std::istream& args, channel& ch)>;

template <class Backend>
void command_target(channel& ch, ferry::ucx_config cfg, std::size_t bytes, const memory_set* given = nullptr,
                    Backend* given_backend = nullptr, const extra_commands& extra = {}) {
    std::optional<Backend> own_backend;
    std::optional<memory_set> own_memory;
    Backend* bp = given_backend;
    if (!bp) bp = &own_backend.emplace(std::move(cfg));
    Backend& b = *bp;
    const memory_set& m = given ? *given : own_memory.emplace(b, bytes);
    if (!given) publish(b, m, ch);

    std::vector<std::string> notifs;
    bool serving = false;
    for (;;) {
        if (serving) serve_until_message(b, ch);
        const std::string msg = ch.recv();
        std::istringstream in(msg);
        std::string cmd;
        in >> cmd;
        serving = false;
        if (cmd == "serve") {
            serving = true;
        } else if (cmd == "fill") {
            std::size_t r = 0;
            std::uint64_t seed = 0;
            in >> r >> seed;
            fill_region(m, r, seed);
            ch.send("filled");
        } else if (cmd == "reset") {
            std::size_t r = 0;
            in >> r;
            m.reset(r);
            ch.send("reset");
        } else if (cmd == "verify") {
            std::uint64_t seed = 0;
            in >> seed;
            std::vector<spot> where;
            std::set<std::size_t> regions;
            std::size_t len = 0;
            while (in >> std::ws, !in.eof()) {
                const block_set set = block_set::decode(in);
                expect(len == 0 || set.s.count == 0 || set.s.len == len, "verify: block sets of different lengths");
                if (set.s.count > 0) len = set.s.len;
                const auto spots = set.spots();
                where.insert(where.end(), spots.begin(), spots.end());
                const auto used = set.regions();
                regions.insert(used.begin(), used.end());
            }
            if (auto e = verify_blocks(m, where, where, len, seed, {regions.begin(), regions.end()}); !e.empty())
                fail("'" + msg + "': " + e);
            ch.send("verified");
        } else if (cmd == "protect") {
            std::size_t r = 0;
            int prot = 0;
            in >> r >> prot;
            if (::mprotect(m.base(r), m.size, prot) != 0) fail("mprotect: " + errno_text(errno));
            ch.send("protected");
        } else if (cmd == "unmap") {
            std::size_t r = 0;
            in >> r;
            expect(!is_allocated(r), "unmap: only registered regions");
            const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
            if (::munmap(m.base(r) + m.size - page, page) != 0) fail("munmap: " + errno_text(errno));
            ch.send("unmapped");
        } else if (cmd == "notifs") {
            std::string rest;
            std::getline(in, rest);
            std::vector<std::string> want;
            std::istringstream list(rest.substr(rest.empty() ? 0 : 1));
            for (std::string item; std::getline(list, item, '|');) want.push_back(item);
            patience p(std::chrono::seconds(20));
            while (notifs.size() < want.size()) {
                b.wait_notifs(std::chrono::milliseconds(20));
                b.poll_notifs([&](std::string_view from, std::string_view text) {
                    notifs.push_back(std::string(from) + ": " + std::string(text));
                });
                p.check("the notifications '" + rest + "'; " + std::to_string(notifs.size()) + " came");
            }
            if (notifs != want) {
                std::string got;
                for (const auto& n : notifs) got += (got.empty() ? "" : "|") + n;
                fail("notifications: got '" + got + "', expected '" + rest + "'");
            }
            ch.send("notified");
        } else if (cmd == "bye") {
            return;
        } else if (!extra || !extra(cmd, in, ch)) {
            fail("unknown command '" + msg + "'");
        }
    }
}

// Commands to a command target; the initiator drives its worker while it
// waits for the answer, since the target may need it.
template <class Backend>
void command(Backend& b, channel& ch, const std::string& cmd, std::string_view answer) {
    ch.send(cmd);
    await_message(b, ch, answer);
}

template <class Backend>
void verify_at_target(Backend& b, channel& ch, std::uint64_t seed, const std::vector<block_set>& remote) {
    std::string cmd = "verify " + std::to_string(seed);
    for (const block_set& set : remote) cmd += " " + set.encode();
    command(b, ch, cmd, "verified");
}

template <class Backend>
void verify_at_target(Backend& b, channel& ch, std::uint64_t seed, const block_set& remote) {
    verify_at_target(b, ch, seed, std::vector<block_set>{remote});
}

// ---- every byte of every layout, both directions, both modes ------------------------------

constexpr std::uint64_t read_seed = 77;

// One remote placement per mode: blocks in allocated memory (one region or
// two: mapped), in registered memory (vm), and spread over all four (vm,
// since not every block is in allocated memory).
struct placement {
    const char* name;
    std::vector<std::size_t> cycle;
};
const placement placements[] = {
    {"allocated", {alloc0}},
    {"two allocated", {alloc0, alloc1}},
    {"registered", {user0}},
    {"mixed", {alloc0, user1, alloc1, user0}},
};
constexpr std::size_t placement_count = std::size(placements);

struct xfer_case {
    std::size_t index;
    xfer_op op;
    shape s;
    std::size_t local_placement;
    std::size_t remote_placement;

    [[nodiscard]] block_set local() const { return {s, placements[local_placement].cycle, 5, 17 * index + 1}; }
    [[nodiscard]] block_set remote() const { return {s, placements[remote_placement].cycle, 11, 31 * index + 2}; }
    [[nodiscard]] std::uint64_t seed() const { return op == xfer_op::write ? 10'000 + index : read_seed; }
    [[nodiscard]] std::string describe() const {
        return std::string(ferry::to_string(op)) + " case " + std::to_string(index) + ": " + ::describe(s) +
               ", local " + placements[local_placement].name + ", remote " + placements[remote_placement].name;
    }
};

// Every shape with every remote placement, READs first (the target's
// regions hold one pattern until the WRITEs begin); the local placement
// turns, so that each meets several remote ones.
std::vector<xfer_case> cases_of(const std::vector<shape>& shapes) {
    std::vector<xfer_case> out;
    for (xfer_op op : {xfer_op::read, xfer_op::write})
        for (std::size_t k = 0; k < shapes.size(); ++k)
            for (std::size_t r = 0; r < placement_count; ++r)
                out.push_back({out.size(), op, shapes[k], (k + r + 1) % placement_count, r});
    return out;
}

template <class Backend>
void layouts_initiator(side& s, const std::vector<shape>& shapes, std::size_t region_bytes) {
    {
        Backend b(s.config("initiator"));
        memory_set m(b, region_bytes);
        const target_view t = load_target(b, s.ch);
        expect_vm_allowed(t);
        bool writing = false;
        for (const xfer_case& c : cases_of(shapes)) {
            const std::string what = c.describe();
            const std::string k = std::to_string(c.index);
            if (c.op == xfer_op::write && !writing) {
                s.ch.send("writes");
                s.ch.expect_message("reset");
                writing = true;
            }
            const block_set local = c.local(), remote = c.remote();
            expect(local.extent() <= region_bytes && remote.extent() <= region_bytes,
                   what + ": does not fit the test regions");
            const auto local_spots = local.spots(), remote_spots = remote.spots();
            if (c.op == xfer_op::write) fill_blocks(m, local_spots, remote_spots, c.s.len, c.seed());
            const ferry::xfer x = b.prepare(c.op, local.descs(m.addrs()), remote.descs(t.base), t.p);
            expect_host_ipc(b, x, c.s.count * c.s.len, what);
            if (remote.all_allocated())
                for (std::size_t r : remote.regions())
                    expect(maps_memory_file(t.file[r].inode),
                           what + ": the target's " + region_name(r) + " is not mapped here (mapped mode expected)");
            post_now(b, x, what);
            if (c.op == xfer_op::read) {
                if (auto e = verify_blocks(m, local_spots, remote_spots, c.s.len, c.seed(), every_region); !e.empty())
                    fail(what + ": " + e);
                for (std::size_t r : local.regions()) m.reset(r);
            }
            expect_status(b.release(x), status::ok, what + ": release");
            if (c.op == xfer_op::write) {
                s.ch.send("written " + k);
                s.ch.expect_message("verified " + k);
            }
        }
        s.ch.send("serve");
    }
    s.ch.send("bye");
}

template <class Backend>
void layouts_target(side& s, const std::vector<shape>& shapes, std::size_t region_bytes) {
    Backend b(s.config("target"));
    memory_set m(b, region_bytes);
    for (std::size_t r : every_region) fill_region(m, r, read_seed);
    publish(b, m, s.ch);
    // The READs need nothing from this side, not even progress.
    s.ch.expect_message("writes");
    for (std::size_t r : every_region) {
        if (auto e = check_region_source(m, r, read_seed); !e.empty()) fail(e);
        m.reset(r);
    }
    s.ch.send("reset");
    for (const xfer_case& c : cases_of(shapes)) {
        if (c.op != xfer_op::write) continue;
        // Waiting here, without progress: the initiator saw its WRITE complete meanwhile.
        s.ch.expect_message("written " + std::to_string(c.index));
        const block_set remote = c.remote();
        const auto where = remote.spots();
        if (auto e = verify_blocks(m, where, where, c.s.len, c.seed(), every_region); !e.empty())
            fail(c.describe() + ": " + e);
        for (std::size_t r : remote.regions()) m.reset(r);
        s.ch.send("verified " + std::to_string(c.index));
    }
    s.ch.expect_message("serve");
    serve_until_message(b, s.ch);
    s.ch.expect_message("bye");
}

void run_layouts(const variant& v, const std::vector<shape>& shapes, std::size_t region_bytes) {
    with_policy(v, [&]<class Backend>(const std::string& tls) {
        ferry_test::run_two_process(
            tls, [&](side& s) { layouts_initiator<Backend>(s, shapes, region_bytes); },
            [&](side& s) { layouts_target<Backend>(s, shapes, region_bytes); });
    });
}

const variant every_variant[] = {{"shm", false}, {"shm", true}, {"tcp", false}, {"tcp", true}};

// ---- one-sided completion, and notifications ------------------------------------------------------------------------

// The four transfers of a mode test: WRITE and READ, mapped and vm.
struct mode_xfer {
    xfer_op op;
    std::size_t local_region;
    std::size_t remote_region;
    const char* name;

    [[nodiscard]] bool mapped() const { return is_allocated(remote_region); }
};
const mode_xfer mode_xfers[] = {
    {xfer_op::write, user0, alloc0, "WRITE into allocated memory (mapped)"},
    {xfer_op::write, alloc0, user0, "WRITE into registered memory (vm)"},
    {xfer_op::read, user1, alloc1, "READ from allocated memory (mapped)"},
    {xfer_op::read, alloc1, user1, "READ from registered memory (vm)"},
};

constexpr shape mode_shape{64, 1000, false};
constexpr std::size_t mode_bytes = 128 * 1024;

block_set mode_local(const mode_xfer& x) { return {mode_shape, {x.local_region}, 5, 3}; }
block_set mode_remote(const mode_xfer& x) { return {mode_shape, {x.remote_region}, 11, 4}; }

template <class Backend>
std::vector<ferry::xfer> prepare_mode_xfers(Backend& b, const memory_set& m, const target_view& t,
                                            xfer_path path = xfer_path::automatic) {
    expect_vm_allowed(t);
    std::vector<ferry::xfer> out;
    for (const mode_xfer& x : mode_xfers) {
        out.push_back(b.prepare(x.op, mode_local(x).descs(m.addrs()), mode_remote(x).descs(t.base), t.p, path));
        expect_host_ipc(b, out.back(), mode_shape.count * mode_shape.len, x.name);
        if (x.mapped())
            expect(maps_memory_file(t.file[x.remote_region].inode),
                   std::string(x.name) + ": the target's memory file is not mapped here");
    }
    return out;
}

// Round k posts transfer k / 2, without a notification when k is even, with one when k is odd.
constexpr std::size_t notif_rounds = 2 * std::size(mode_xfers);
std::string note(std::size_t k) { return "round " + std::to_string(k) + " is in place"; }
std::uint64_t round_seed(std::size_t k) { return 500 + k; }

template <class Backend>
void notif_initiator(side& s) {
    {
        Backend b(s.config("initiator"));
        memory_set m(b, mode_bytes);
        const target_view t = load_target(b, s.ch);
        const auto xs = prepare_mode_xfers(b, m, t);
        for (std::size_t k = 0; k < notif_rounds; ++k) {
            const mode_xfer& mx = mode_xfers[k / 2];
            const bool notify = k % 2 == 1;
            const std::string what =
                std::string(mx.name) + (notify ? " with a notification" : " without a notification");
            const auto local = mode_local(mx).spots(), remote = mode_remote(mx).spots();
            s.ch.expect_message("ready " + std::to_string(k));
            if (mx.op == xfer_op::write) fill_blocks(m, local, remote, mode_shape.len, round_seed(k));
            else m.reset(mx.local_region);
            if (!notify) {
                // Complete while the target sits in a blocking read of the channel.
                post_now(b, xs[k / 2], what);
            } else {
                const status posted = b.post(xs[k / 2], note(k));
                expect(posted == status::ok || posted == status::in_progress,
                       what + ": post returned " + str(posted));
            }
            // The copy is over when post returns, notification or not.
            if (mx.op == xfer_op::read)
                if (auto e = verify_blocks(m, local, remote, mode_shape.len, round_seed(k), {mx.local_region});
                    !e.empty())
                    fail(what + ": " + e);
            s.ch.send("posted " + std::to_string(k));
            if (notify) expect_status(b.wait(xs[k / 2], 20s), status::ok, what + ": wait");
            await_message(b, s.ch, "checked " + std::to_string(k));
        }
        expect_status(b.send_notif(t.p, "last"), status::ok, "send_notif of the last notification");
        await_message(b, s.ch, "all notified");
        for (auto x : xs) expect_status(b.release(x), status::ok, "release");
        s.ch.send("serve");
    }
    s.ch.send("bye");
}

template <class Backend>
void notif_target(side& s) {
    Backend b(s.config("target"));
    memory_set m(b, mode_bytes);
    publish(b, m, s.ch);
    std::vector<std::string> got, want;
    auto joined = [](const std::vector<std::string>& v) {
        std::string out;
        for (const auto& n : v) out += (out.empty() ? "'" : ", '") + n + "'";
        return out.empty() ? std::string("none") : out;
    };
    auto collect_until = [&](const std::string& n, const std::string& what) {
        patience p(std::chrono::seconds(20));
        while (std::find(got.begin(), got.end(), n) == got.end()) {
            b.wait_notifs(std::chrono::milliseconds(20));
            b.poll_notifs([&](std::string_view from, std::string_view text) {
                got.push_back(std::string(from) + ": " + std::string(text));
            });
            p.check("the notification of " + what + " (arrived so far: " + joined(got) + ")");
        }
        if (got != want) fail("after " + what + ": notifications " + joined(got) + ", expected " + joined(want));
    };
    for (std::size_t k = 0; k < notif_rounds; ++k) {
        const mode_xfer& mx = mode_xfers[k / 2];
        const bool notify = k % 2 == 1;
        const std::string what =
            std::string(mx.name) + (notify ? " with a notification" : " without a notification");
        const auto remote = mode_remote(mx).spots();
        if (mx.op == xfer_op::write) m.reset(mx.remote_region);
        else fill_region(m, mx.remote_region, round_seed(k));
        s.ch.send("ready " + std::to_string(k));
        // A blocking read: this side does nothing until the initiator has posted.
        s.ch.expect_message("posted " + std::to_string(k));
        auto check_data = [&](const std::string& when) {
            const std::string e = mx.op == xfer_op::write
                                      ? verify_blocks(m, remote, remote, mode_shape.len, round_seed(k),
                                                      {mx.remote_region})
                                      : check_region_source(m, mx.remote_region, round_seed(k));
            if (!e.empty()) fail(what + ", " + when + ": " + e);
        };
        check_data("before the target took any notification");
        if (notify) {
            want.push_back("initiator: " + note(k));
            collect_until(want.back(), what);
            check_data("once its notification was taken");
        }
        s.ch.send("checked " + std::to_string(k));
    }
    want.push_back("initiator: last");
    collect_until(want.back(), "the standalone notification");
    s.ch.send("all notified");
    s.ch.expect_message("serve");
    serve_until_message(b, s.ch);
    s.ch.expect_message("bye");
    b.poll_notifs([&](std::string_view from, std::string_view text) {
        got.push_back(std::string(from) + ": " + std::string(text));
    });
    if (got != want) fail("notifications arrived late: " + joined(got) + ", expected " + joined(want));
}

// ---- peers whose metadata rules host_ipc out ------------------------------------------------

// A real peer's metadata, changed the way `change` says and published under another name.
std::vector<std::byte> forged(const std::vector<std::byte>& blob, const std::string& name,
                              const std::function<void(ferry::detail::metadata_view&)>& change) {
    auto md = ferry::detail::decode_metadata(blob);
    md.name = name;
    change(md);
    return ferry::detail::encode_metadata(md);
}

struct forgery {
    const char* name;
    std::function<void(ferry::detail::metadata_view&)> change;
    const char* why;
};

void forged_initiator(side& s) {
    {
        inline_backend b(s.config("initiator"));
        memory_set m(b, mode_bytes);
        const target_view t = load_target(b, s.ch);
        const std::string another_host = "0b0e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4";
        const forgery forgeries[] = {
            {"another-host", [&](auto& md) { md.host_id = another_host; }, "the peer runs on another host"},
            {"no-host", [](auto& md) { md.host_id = {}; }, "the peer runs on another host"},
            {"another-pid-namespace", [](auto& md) { md.pid_namespace += 1; },
             "the peer runs in another PID namespace"},
            {"no-pid",
             [](auto& md) {
                 md.pid = 0;
                 md.start_time = 0;  // a start time without a pid is refused as metadata
             },
             "the peer did not say which process it is"},
            {"no-pid-namespace", [](auto& md) { md.pid_namespace = 0; }, "the peer did not say which process it is"},
        };
        const block_set local{{4, 1000, false}, {user0}, 5, 8};
        const block_set remote{{4, 1000, false}, {alloc0}, 11, 9};
        std::uint64_t seed = 900;
        for (const forgery& f : forgeries) {
            const std::string what = std::string("a peer forged as ") + f.name;
            const ferry::peer p = b.load_remote(forged(t.blob, std::string("target-") + f.name, f.change));
            const auto forced = [&] {
                return b.prepare(xfer_op::write, local.descs(m.addrs()), remote.descs(t.base), p, xfer_path::host_ipc);
            };
            expect_error(forced, status::invalid_argument, std::string("prepare: path host_ipc: ") + f.why,
                         what + ": prepare on host_ipc");
            // Allocated memory, which host_ipc would map, goes through UCX instead.
            const ferry::xfer x = b.prepare(xfer_op::write, local.descs(m.addrs()), remote.descs(t.base), p);
            expect(b.path_of(x) == xfer_path::ucx,
                   what + ": path_of says " + std::string(ferry::to_string(b.path_of(x))) + ", expected ucx");
            expect(b.estimate(x).method == ferry::cost_method::ucx_evaluate_perf,
                   what + ": the estimate is not UCX's");
            ++seed;
            fill_blocks(m, local.spots(), remote.spots(), 1000, seed);
            command(b, s.ch, "reset " + std::to_string(alloc0), "reset");
            s.ch.send("serve");
            ferry_test::post_and_wait(b, x, {}, what);
            verify_at_target(b, s.ch, seed, remote);
            expect_status(b.release(x), status::ok, what + ": release");
        }
        // A region that claims to be GPU memory: host_ipc names the pair, UCX moves it.
        {
            const std::string what = "a peer whose registered region claims to be GPU memory";
            const ferry::peer p = b.load_remote(forged(t.blob, "target-gpu", [&](auto& md) {
                for (auto& r : md.regions)
                    if (r.addr == t.base[user0]) r.kind = ferry::detail::memory_kind_code::cuda;
            }));
            const block_set mixed_local{{4, 1000, false}, {user0}, 5, 10};
            const block_set mixed_remote{{4, 1000, false}, {alloc0, user0}, 11, 11};
            const auto forced = [&] {
                return b.prepare(xfer_op::write, mixed_local.descs(m.addrs()), mixed_remote.descs(t.base), p,
                                 xfer_path::host_ipc);
            };
            expect_error(forced, status::invalid_argument,
                         "prepare: path host_ipc: descriptor 1: the remote block is not host memory",
                         what + ": prepare on host_ipc");
            const ferry::xfer x =
                b.prepare(xfer_op::write, mixed_local.descs(m.addrs()), mixed_remote.descs(t.base), p);
            expect(b.path_of(x) == xfer_path::ucx,
                   what + ": path_of says " + std::string(ferry::to_string(b.path_of(x))) + ", expected ucx");
            fill_blocks(m, mixed_local.spots(), mixed_remote.spots(), 1000, 950);
            command(b, s.ch, "reset " + std::to_string(alloc0), "reset");
            command(b, s.ch, "reset " + std::to_string(user0), "reset");
            s.ch.send("serve");
            ferry_test::post_and_wait(b, x, {}, what);
            verify_at_target(b, s.ch, 950, mixed_remote);
            expect_status(b.release(x), status::ok, what + ": release");
        }
        // The real peer: host_ipc on request, and without a request.
        for (xfer_path path : {xfer_path::host_ipc, xfer_path::automatic}) {
            const std::string what = std::string("the real peer, path ") + std::string(ferry::to_string(path));
            const ferry::xfer x = b.prepare(xfer_op::write, local.descs(m.addrs()), remote.descs(t.base), t.p, path);
            expect_host_ipc(b, x, 4000, what);
            fill_blocks(m, local.spots(), remote.spots(), 1000, 960);
            command(b, s.ch, "reset " + std::to_string(alloc0), "reset");
            post_now(b, x, what);
            verify_at_target(b, s.ch, 960, remote);
            expect_status(b.release(x), status::ok, what + ": release");
        }
        s.ch.send("serve");
    }
    s.ch.send("bye");
}

// ---- a target killed while the initiator posts ---------------------------------------------


constexpr std::uint64_t death_write_seed = 4242;

template <class Backend>
void victim(channel& up, const std::string& tls) {
    Backend b(config_for(tls, "target"));
    memory_set m(b, mode_bytes);
    for (const mode_xfer& x : mode_xfers)
        if (x.op == xfer_op::read) fill_region(m, x.remote_region, read_seed);
    publish(b, m, up);
    serve_until_message(b, up);
    fail("the victim was told '" + up.recv() + "' instead of being killed");
}

void supervisor(side& s, bool threaded) {
    const std::string tls = s.tls;
    grandchild v("victim", [&](channel& up) {
        if (threaded) victim<threaded_backend>(up, tls);
        else victim<inline_backend>(up, tls);
    });
    s.ch.send(v.ch().recv_bytes());
    s.ch.send_u64s(v.ch().recv_u64s());
    s.ch.expect_message("kill");
    v.kill_now();
    s.ch.send("killed");
    s.ch.expect_message("bye");
}

template <class Backend>
void death_initiator(side& s) {
    {
        Backend b(s.config("initiator"));
        memory_set m(b, mode_bytes);
        const target_view t = load_target(b, s.ch);
        // The four mode transfers, then a READ of what the mapped WRITE
        // wrote in the same round: the memory file outlives its creator
        // while mapped here, and stays shared between the two transfers.
        struct tracked {
            mode_xfer mx;
            block_set local, remote;
            bool written_here;  // the blocks hold what a WRITE of this round wrote, else the target's source
            ferry::xfer x;
        };
        std::vector<tracked> all;
        const auto xs = prepare_mode_xfers(b, m, t);
        for (std::size_t j = 0; j < std::size(mode_xfers); ++j) {
            const mode_xfer& mx = mode_xfers[j];
            all.push_back({mx, mode_local(mx), mode_remote(mx), mx.op == xfer_op::write, xs[j]});
        }
        const mode_xfer readback{xfer_op::read, user1, alloc0, "READ back from allocated memory (mapped)"};
        const block_set readback_local = mode_local(mode_xfers[2]), readback_remote = mode_remote(mode_xfers[0]);
        all.push_back({readback, readback_local, readback_remote, true,
                       b.prepare(xfer_op::read, readback_local.descs(m.addrs()), readback_remote.descs(t.base), t.p)});
        std::uint64_t round = 0;
        // One post, and its status, once what a READ that succeeded brought is checked.
        auto post_one = [&](const tracked& tx) {
            const auto local = tx.local.spots(), remote = tx.remote.spots();
            const std::uint64_t seed = tx.written_here ? death_write_seed + round : read_seed;
            if (tx.mx.op == xfer_op::write) fill_blocks(m, local, remote, mode_shape.len, seed);
            else m.reset(tx.mx.local_region);
            const status st = b.post(tx.x);
            // Without a notification a host_ipc post is over when it returns.
            expect(st != status::in_progress, std::string(tx.mx.name) + ": post returned in_progress");
            const status checked = b.check(tx.x);
            expect(checked != status::in_progress, std::string(tx.mx.name) + ": check returned in_progress");
            if (st == status::ok && tx.mx.op == xfer_op::read)
                if (auto e = verify_blocks(m, local, remote, mode_shape.len, seed, {tx.mx.local_region}); !e.empty())
                    fail(std::string(tx.mx.name) + ": ok, but " + e);
            return st;
        };
        for (; round < 3; ++round)
            for (const tracked& tx : all)
                expect_status(post_one(tx), status::ok, std::string(tx.mx.name) + " before the kill");

        s.ch.send("kill");
        std::vector<status> last(all.size(), status::ok);
        bool reaped = false;
        int rounds_after = 0;
        patience p(std::chrono::seconds(20));
        while (rounds_after < 20) {
            if (!reaped && s.ch.readable()) {
                s.ch.expect_message("killed");
                reaped = true;
            }
            for (std::size_t j = 0; j < all.size(); ++j) {
                const mode_xfer& mx = all[j].mx;
                const status st = post_one(all[j]);
                const std::string what = std::string(mx.name) + (reaped ? " after" : " while") +
                                         " the target was killed: post returned " + str(st);
                // vm: the process is gone (peer_failed), or its memory is going (not_registered).
                // mapped: the memory stays, until UCX too finds the peer failed.
                const bool allowed = st == status::ok || st == status::peer_failed ||
                                     (!mx.mapped() && st == status::not_registered);
                expect(allowed, what);
                if (reaped && !mx.mapped()) expect(st == status::peer_failed, what + ", expected peer_failed");
                expect(last[j] == status::ok || st != status::ok, what + " after " + str(last[j]) + " before");
                last[j] = st;
            }
            if (reaped) ++rounds_after;
            ++round;
            p.check("the supervisor to report the kill");
        }

        // UCX finds the failure too, and then every post says so.
        patience q(std::chrono::seconds(20));
        while (b.peer_status(t.p) != status::peer_failed) {
            if (b.progress() == 0) ::sched_yield();
            q.check("peer_status to say peer_failed; it says " + str(b.peer_status(t.p)));
        }
        for (const tracked& tx : all) {
            const std::string what = std::string(tx.mx.name) + " once UCX found the target failed";
            expect_status(b.post(tx.x), status::peer_failed, what + ": post");
            expect_status(b.post(tx.x, "to the dead"), status::peer_failed, what + ": post with a notification");
            const status waited = b.wait(tx.x, 5s);
            expect(waited != status::in_progress, what + ": wait returned in_progress");
            expect_status(b.release(tx.x), status::ok, what + ": release");
        }
        expect_status(b.send_notif(t.p, "anyone?"), status::peer_failed, "send_notif to the dead target");
    }
    s.ch.send("bye");
}

// ---- sealed memory files, and hostile ones ---------------------------------------------------

// A memory file made by a hostile peer, sealed as it likes.
class hostile_file {
public:
    hostile_file(const char* name, unsigned flags, int seals, std::size_t bytes) : size_(bytes) {
        fd_ = ::memfd_create(name, MFD_CLOEXEC | flags);
        if (fd_ < 0) fail(std::string("memfd_create: ") + errno_text(errno));
        if (::ftruncate(fd_, static_cast<off_t>(bytes)) != 0) fail("ftruncate: " + errno_text(errno));
        if (seals != 0 && ::fcntl(fd_, F_ADD_SEALS, seals) != 0) fail("F_ADD_SEALS: " + errno_text(errno));
        void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
        if (p == MAP_FAILED) fail("mmap of a memory file: " + errno_text(errno));
        data_ = static_cast<std::byte*>(p);
        struct stat st {};
        if (::fstat(fd_, &st) != 0) fail("fstat: " + errno_text(errno));
        inode_ = static_cast<std::uint64_t>(st.st_ino);
        std::memset(data_, static_cast<int>(untouched), bytes);
    }
    hostile_file(const hostile_file&) = delete;
    hostile_file& operator=(const hostile_file&) = delete;
    ~hostile_file() {
        ::munmap(data_, size_);
        ::close(fd_);
    }

    [[nodiscard]] std::byte* data() const noexcept { return data_; }
    [[nodiscard]] memory_file file() const noexcept { return {static_cast<std::uint32_t>(fd_), inode_}; }

    // Cuts the file to nothing, as its lack of seals allows.
    void shrink() const {
        if (::ftruncate(fd_, 0) != 0) fail("ftruncate of an unsealed hostile file: " + errno_text(errno));
    }

private:
    std::size_t size_;
    int fd_ = -1;
    std::byte* data_ = nullptr;
    std::uint64_t inode_ = 0;
};

constexpr std::size_t hostile_bytes = 64 * 1024;
constexpr std::size_t hostile_blocks = 4;
constexpr std::size_t hostile_block = 1000;
constexpr std::uint32_t absent_fd = 1'000'000;

// The memory files of a hostile peer, each registered and published with a
// handle that the initiator must not map: the file itself unsealed or sealed
// against growing only, or a sealed file behind a handle that names another
// file's descriptor, claims more bytes than the file has, or names a
// descriptor the peer does not have.
struct hostile_kind {
    const char* name;
    unsigned flags;  // memfd_create's, besides MFD_CLOEXEC
    int seals;
    enum { own_fd, first_file_fd, no_fd } names;
    std::uint64_t claimed_size;
};
const hostile_kind hostile_kinds[] = {
    {"a memory file sealed against nothing", 0, 0, hostile_kind::own_fd, hostile_bytes},
    {"a memory file sealed against growing only", MFD_ALLOW_SEALING, F_SEAL_GROW, hostile_kind::own_fd,
     hostile_bytes},
    {"a handle with another file's descriptor", MFD_ALLOW_SEALING, F_SEAL_SHRINK | F_SEAL_GROW,
     hostile_kind::first_file_fd, hostile_bytes},
    {"a handle that claims a larger file", MFD_ALLOW_SEALING, F_SEAL_SHRINK | F_SEAL_GROW, hostile_kind::own_fd,
     2 * hostile_bytes},
    {"a handle with a descriptor the peer does not have", MFD_ALLOW_SEALING, F_SEAL_SHRINK | F_SEAL_GROW,
     hostile_kind::no_fd, hostile_bytes},
};
constexpr std::size_t hostile_count = std::size(hostile_kinds);

// Why the initiator may not map hostile file k, whose handle names `proc_fd`.
std::string hostile_reason(std::size_t k, const std::string& proc_fd) {
    switch (k) {
        case 0:
        case 1: return proc_fd + " is not sealed against shrinking, so a mapping of it could fault";
        case 2: return proc_fd + " is not the file the peer published (another inode: a restarted peer?)";
        case 3:
            return proc_fd + " holds " + std::to_string(hostile_bytes) + " bytes, not the " +
                   std::to_string(2 * hostile_bytes) + " the peer published";
        default: return "opening " + proc_fd + ": No such file or directory";
    }
}

// Block i of a transfer to a hostile file, at this offset in the file (and in
// the initiator's local region): what its pattern is keyed by.
std::size_t hostile_offset(std::size_t i) { return 100 + i * 2000; }

std::vector<ferry::desc> hostile_descs(std::uint64_t base) {
    std::vector<ferry::desc> out;
    for (std::size_t i = 0; i < hostile_blocks; ++i) out.push_back({base + hostile_offset(i), hostile_block, 0});
    return out;
}

// Checks, in the process that allocated it, that an allocated region's
// memory file is sealed: neither this process nor one that opens the file
// anew can cut it short under a peer's mapping, or grow it.
void expect_sealed(const std::vector<std::byte>& blob, const ferry::region& r) {
    const auto md = ferry::detail::decode_metadata(blob);
    const auto rec = std::find_if(md.regions.begin(), md.regions.end(),
                                  [&](const auto& x) { return x.addr == addr_of(r.data()); });
    expect(rec != md.regions.end(), "the allocated region is not in this backend's own metadata");
    const auto f = file_of(*rec);
    expect(f.has_value(), "the allocated region's record names no memory file");
    const int fd = static_cast<int>(f->fd);
    struct stat st {};
    expect(::fstat(fd, &st) == 0 && static_cast<std::uint64_t>(st.st_ino) == f->inode,
           "descriptor " + std::to_string(fd) + " of this process is not the published memory file");
    const off_t size = st.st_size;
    expect(static_cast<std::uint64_t>(size) == rec->ipc_alloc_size && static_cast<std::size_t>(size) >= r.size(),
           "the memory file holds " + std::to_string(size) + " bytes, its record says " +
               std::to_string(rec->ipc_alloc_size));
    const int seals = ::fcntl(fd, F_GET_SEALS);
    expect(seals >= 0 && (seals & F_SEAL_SHRINK) != 0 && (seals & F_SEAL_GROW) != 0 && (seals & F_SEAL_SEAL) != 0,
           "the memory file's seals are " + std::to_string(seals) + ", expected shrink, grow and seal");
    auto refused = [](int rc, const std::string& what) {
        const int e = errno;
        expect(rc == -1 && e == EPERM, what + " returned " + std::to_string(rc) +
                                           (rc == -1 ? " with " + errno_text(e) : std::string()) + ", expected EPERM");
    };
    refused(::ftruncate(fd, 0), "ftruncate of the allocated region's memory file to 0");
    refused(::ftruncate(fd, size / 2), "ftruncate of the allocated region's memory file to half");
    refused(::ftruncate(fd, size + 4096), "ftruncate of the allocated region's memory file to a page more");
    refused(::fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), "F_ADD_SEALS of F_SEAL_WRITE");
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    const int again = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    expect(again >= 0, "open " + path + ": " + errno_text(errno));
    refused(::ftruncate(again, 0), "ftruncate to 0 through " + path);
    ::close(again);
    expect(::fstat(fd, &st) == 0 && st.st_size == size, "the memory file's size changed");
}

// Flips CAP_SYS_PTRACE in this thread's effective set, and with `permanently`
// drops it from the permitted set as well (system calls: no libcap here).
void set_ptrace_capability(bool on, bool permanently = false) {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    std::array<__user_cap_data_struct, _LINUX_CAPABILITY_U32S_3> data{};
    if (::syscall(SYS_capget, &header, data.data()) != 0) fail("capget: " + errno_text(errno));
    auto& word = data[CAP_TO_INDEX(CAP_SYS_PTRACE)];
    const auto bit = static_cast<std::uint32_t>(CAP_TO_MASK(CAP_SYS_PTRACE));
    if (on) word.effective |= bit;
    else word.effective &= ~bit;
    if (permanently) {
        word.permitted &= ~bit;
        word.inheritable &= ~bit;
    }
    if (::syscall(SYS_capset, &header, data.data()) != 0) fail("capset: " + errno_text(errno));
}

// The target of the hostile tests: a command target whose metadata attaches
// the hostile_kinds handles to registered memory files, as a hostile peer
// could. `restricted`: it gives up CAP_SYS_PTRACE first, so that an
// initiator without it may still open its files (see restricted_initiator).
//   check-hostile K SEED   requires the blocks of hostile file K to hold SEED, the rest untouched; answers "checked"
//   shrink                 cuts the unsealed file to nothing; answers "shrunk"
void hostile_target(side& s, bool restricted) {
    if (restricted) set_ptrace_capability(false, true);
    inline_backend b(s.config("target"));
    memory_set m(b, mode_bytes);
    expect_sealed(b.local_metadata(), m.regions[alloc0]);
    std::vector<std::unique_ptr<hostile_file>> files;
    std::vector<ferry::region> regions;
    for (const hostile_kind& k : hostile_kinds) {
        files.push_back(std::make_unique<hostile_file>("hostile", k.flags, k.seals, hostile_bytes));
        regions.push_back(b.register_memory(files.back()->data(), hostile_bytes));
    }

    const auto blob = b.local_metadata();
    auto md = ferry::detail::decode_metadata(blob);
    std::vector<std::vector<std::byte>> handles;
    for (std::size_t k = 0; k < hostile_count; ++k) {
        memory_file f = files[k]->file();
        if (hostile_kinds[k].names == hostile_kind::first_file_fd) f.fd = files[0]->file().fd;
        if (hostile_kinds[k].names == hostile_kind::no_fd) f.fd = absent_fd;
        handles.push_back(handle_bytes(f));
    }
    std::size_t attached = 0;
    for (auto& r : md.regions)
        for (std::size_t k = 0; k < hostile_count; ++k)
            if (r.addr == addr_of(files[k]->data())) {
                r.ipc_handle = handles[k];
                r.ipc_offset = 0;
                r.ipc_alloc_size = hostile_kinds[k].claimed_size;
                ++attached;
            }
    expect(attached == hostile_count, "the hostile regions are not in this backend's metadata");
    s.ch.send(ferry::detail::encode_metadata(md));
    s.ch.send_u64s(m.addrs());
    std::vector<std::uint64_t> addrs;
    for (const auto& f : files) addrs.push_back(addr_of(f->data()));
    s.ch.send_u64s(addrs);

    command_target<inline_backend>(s.ch, {}, 0, &m, &b, [&](const std::string& cmd, std::istream& in, channel& ch) {
        if (cmd == "check-hostile") {
            std::size_t k = 0;
            std::uint64_t seed = 0;
            in >> k >> seed;
            expect(k < hostile_count, "check-hostile: no such file");
            const std::byte* base = files[k]->data();
            std::size_t pos = 0;
            for (std::size_t i = 0; i < hostile_blocks; ++i) {
                if (auto e = check_untouched(base + pos, hostile_offset(i) - pos, pos); !e.empty())
                    fail(std::string(hostile_kinds[k].name) + ", outside the blocks: " + e);
                const std::size_t at = hostile_offset(i);
                if (auto e = ferry_test::check_pattern(base + at, hostile_block, seed, at); !e.empty())
                    fail(std::string(hostile_kinds[k].name) + ", descriptor " + std::to_string(i) + ": " + e);
                pos = hostile_offset(i) + hostile_block;
            }
            if (auto e = check_untouched(base + pos, hostile_bytes - pos, pos); !e.empty())
                fail(std::string(hostile_kinds[k].name) + ", outside the blocks: " + e);
            ch.send("checked");
            return true;
        }
        if (cmd == "shrink") {
            files[0]->shrink();
            ch.send("shrunk");
            return true;
        }
        return false;
    });
}

// What the initiator of a hostile test knows of its target.
struct hostile_view {
    target_view t;
    std::array<std::uint64_t, hostile_count> base{};
    std::array<memory_file, hostile_count> file{};  // as the handles name them

    [[nodiscard]] std::string proc_fd(std::size_t k) const {
        return "/proc/" + std::to_string(t.pid) + "/fd/" + std::to_string(file[k].fd);
    }
    // Whether any of the hostile files is mapped here (each handle carries its own file's inode).
    [[nodiscard]] bool any_mapped() const {
        return std::any_of(file.begin(), file.end(), [](const memory_file& f) { return maps_memory_file(f.inode); });
    }
};

hostile_view load_hostile(inline_backend& b, channel& ch) {
    hostile_view h;
    h.t.blob = ch.recv_bytes();
    h.t.p = b.load_remote(h.t.blob);
    const auto md = ferry::detail::decode_metadata(h.t.blob);
    h.t.pid = md.pid;
    const auto addrs = ch.recv_u64s();
    expect(addrs.size() == region_count, "the target sent " + std::to_string(addrs.size()) + " addresses");
    std::copy(addrs.begin(), addrs.end(), h.t.base.begin());
    const auto hostile = ch.recv_u64s();
    expect(hostile.size() == hostile_count,
           "the target sent " + std::to_string(hostile.size()) + " hostile addresses");
    std::copy(hostile.begin(), hostile.end(), h.base.begin());
    for (const auto& rec : md.regions) {
        for (std::size_t r : every_region)
            if (auto f = file_of(rec); f && rec.addr == h.t.base[r]) h.t.file[r] = *f;
        for (std::size_t k = 0; k < hostile_count; ++k)
            if (auto f = file_of(rec); f && rec.addr == h.base[k]) h.file[k] = *f;
    }
    const bool complete = h.t.file[alloc0].inode != 0 &&
                          std::all_of(h.file.begin(), h.file.end(), [](const memory_file& f) { return f.inode != 0; });
    expect(complete, "the target's metadata lacks a memory file");
    return h;
}

// The local side of a transfer to a hostile file: the same offsets in registered region 0.
std::vector<ferry::desc> hostile_local(const memory_set& m) { return hostile_descs(m.addrs()[user0]); }

void fill_hostile_local(const memory_set& m, std::uint64_t seed) {
    for (std::size_t i = 0; i < hostile_blocks; ++i)
        ferry_test::fill_pattern(m.base(user0) + hostile_offset(i), hostile_block, seed, hostile_offset(i));
}

void hostile_initiator(side& s) {
    {
        inline_backend b(s.config("initiator"));
        memory_set m(b, mode_bytes);
        const hostile_view h = load_hostile(b, s.ch);
        // Whether vm mode is open here decides what a file ferry must not map falls back to.
        const bool vm = vm_allowed(h.t.pid, h.base[0]);
        const xfer_path fallback = vm ? xfer_path::host_ipc : xfer_path::ucx;
        std::vector<ferry::xfer> kept;
        for (std::size_t k = 0; k < hostile_count; ++k) {
            const std::string what = std::string("a WRITE into ") + hostile_kinds[k].name;
            const auto remote = hostile_descs(h.base[k]);
            const ferry::xfer x = b.prepare(xfer_op::write, hostile_local(m), remote, h.t.p);
            expect(!h.any_mapped(), what + ": prepare mapped a hostile file");
            expect(b.path_of(x) == fallback, what + ": path_of says " + std::string(ferry::to_string(b.path_of(x))) +
                                                 ", expected " + std::string(ferry::to_string(fallback)));
            const auto forced = ferry_test::error_from([&] {
                const ferry::xfer y = b.prepare(xfer_op::write, hostile_local(m), remote, h.t.p, xfer_path::host_ipc);
                expect(b.path_of(y) == xfer_path::host_ipc, what + ": prepare on host_ipc is on another path");
                expect_status(b.release(y), status::ok, what + ": release");
            });
            const std::string reason = hostile_reason(k, h.proc_fd(k));
            if (vm) {
                expect(!forced, what + ": prepare on host_ipc threw '" + (forced ? forced->what() : "") +
                                    "' although process_vm_readv is open");
            } else {
                expect(forced && std::string(forced->what()).find(reason) != std::string::npos,
                       what + ": prepare on host_ipc " +
                           (forced ? "threw '" + std::string(forced->what()) + "'" : std::string("did not throw")) +
                           ", expected a refusal that says '" + reason + "'");
            }
            expect(!h.any_mapped(), what + ": prepare on host_ipc mapped a hostile file");
            fill_hostile_local(m, 70 + k);
            if (!vm) s.ch.send("serve");
            ferry_test::post_and_wait(b, x, {}, what);
            command(b, s.ch, "check-hostile " + std::to_string(k) + " " + std::to_string(70 + k), "checked");
            kept.push_back(x);
        }
        // The honest allocation beside them is mapped.
        {
            const mode_xfer& mx = mode_xfers[0];
            const ferry::xfer x = b.prepare(mx.op, mode_local(mx).descs(m.addrs()), mode_remote(mx).descs(h.t.base),
                                            h.t.p, xfer_path::host_ipc);
            expect_host_ipc(b, x, mode_shape.count * mode_shape.len, mx.name);
            expect(maps_memory_file(h.t.file[alloc0].inode), std::string(mx.name) + ": the file is not mapped here");
            fill_blocks(m, mode_local(mx).spots(), mode_remote(mx).spots(), mode_shape.len, 80);
            post_now(b, x, mx.name);
            verify_at_target(b, s.ch, 80, mode_remote(mx));
            expect_status(b.release(x), status::ok, "release");
        }
        if (vm) {
            // The hostile target cuts its unsealed file short. A mapping of
            // it here would kill this process with SIGBUS now; process_vm
            // finds the peer's pages gone and says so.
            const ferry::xfer r = b.prepare(xfer_op::read, hostile_local(m), hostile_descs(h.base[0]), h.t.p);
            command(b, s.ch, "shrink", "shrunk");
            expect_status(b.post(kept[0]), status::not_registered, "a WRITE into the shrunk file: post");
            expect_status(b.check(kept[0]), status::not_registered, "a WRITE into the shrunk file: check");
            expect_status(b.post(r), status::not_registered, "a READ from the shrunk file: post");
            expect_status(b.release(r), status::ok, "release");
            for (std::size_t k = 1; k < hostile_count; ++k)
                expect_status(b.post(kept[k]), status::ok,
                              std::string("a WRITE into ") + hostile_kinds[k].name + ", after the shrink");
        }
        for (auto x : kept) expect_status(b.release(x), status::ok, "release");
        s.ch.send("serve");
    }
    s.ch.send("bye");
}

// The kernel allows process_vm_readv to a process of the same real user, and
// opening /proc/<pid>/fd/<fd> to one of the same filesystem user whose
// capabilities are no more than its own; CAP_SYS_PTRACE overrides both. An
// initiator whose real user is nobody, with its effective user still root
// and CAP_SYS_PTRACE out of its effective set, facing a target that gave up
// CAP_SYS_PTRACE, may therefore map the target's memory files but not
// process_vm its memory: vm mode is refused, mapped mode is not.
constexpr uid_t nobody = 65534;

void restricted_initiator(side& s) {
    if (::setresuid(nobody, 0, 0) != 0) fail("setresuid: " + errno_text(errno));
    set_ptrace_capability(false);
    {
        inline_backend b(s.config("initiator"));
        memory_set m(b, mode_bytes);
        const hostile_view h = load_hostile(b, s.ch);
        const std::string pid = std::to_string(h.t.pid);
        expect(!vm_allowed(h.t.pid, h.t.base[user0]) && errno == EPERM,
               "the test could not make the kernel refuse process_vm_readv (" + errno_text(errno) + ")");
        const std::string proc_fd = "/proc/" + pid + "/fd/" + std::to_string(h.t.file[alloc0].fd);
        const int fd = ::open(proc_fd.c_str(), O_RDWR | O_CLOEXEC);
        expect(fd >= 0, "the test made the kernel refuse to open " + proc_fd + " as well: " + errno_text(errno));
        ::close(fd);
        const std::string refusal =
            "process_vm_readv on pid " + pid +
            " fails (Operation not permitted: another user, or ptrace access control forbids it)";

        // Allocated memory needs no process_vm: mapped.
        {
            const mode_xfer& mx = mode_xfers[0];
            const ferry::xfer x =
                b.prepare(mx.op, mode_local(mx).descs(m.addrs()), mode_remote(mx).descs(h.t.base), h.t.p);
            expect_host_ipc(b, x, mode_shape.count * mode_shape.len, mx.name);
            expect(maps_memory_file(h.t.file[alloc0].inode), std::string(mx.name) + ": the file is not mapped here");
            fill_blocks(m, mode_local(mx).spots(), mode_remote(mx).spots(), mode_shape.len, 90);
            post_now(b, x, mx.name);
            verify_at_target(b, s.ch, 90, mode_remote(mx));
            expect_status(b.release(x), status::ok, "release");
        }
        // Registered memory, alone or beside allocated memory, and the hostile
        // files: refused by name on request, ucx without one.
        struct refused_case {
            std::string what;
            std::vector<ferry::desc> local, remote;
            std::string why;
            std::function<void(std::uint64_t)> fill, verify;
        };
        const block_set user_remote{{16, 1000, false}, {user0}, 11, 21};
        const block_set user_local{{16, 1000, false}, {user1}, 5, 22};
        const block_set mixed_remote{{2, 1000, false}, {alloc1, user1}, 11, 23};
        const block_set mixed_local{{2, 1000, false}, {user1}, 40'000, 24};
        std::vector<refused_case> cases;
        auto blocks_case = [&](std::string what, const block_set& local, const block_set& remote, std::string why) {
            return refused_case{std::move(what), local.descs(m.addrs()), remote.descs(h.t.base), std::move(why),
                                [&, local, remote](std::uint64_t seed) {
                                    fill_blocks(m, local.spots(), remote.spots(), local.s.len, seed);
                                },
                                [&, remote](std::uint64_t seed) { verify_at_target(b, s.ch, seed, remote); }};
        };
        cases.push_back(blocks_case(
            "a WRITE into registered memory", user_local, user_remote,
            "descriptor 0: the remote block is not in memory the peer's backend allocated, and " + refusal));
        cases.push_back(blocks_case(
            "a WRITE into allocated and registered memory", mixed_local, mixed_remote,
            "descriptor 1: the remote block is not in memory the peer's backend allocated, and " + refusal));
        for (std::size_t k = 0; k < hostile_count; ++k)
            cases.push_back({std::string("a WRITE into ") + hostile_kinds[k].name, hostile_local(m),
                             hostile_descs(h.base[k]),
                             "descriptor 0: the remote block's shared memory cannot be mapped: " +
                                 hostile_reason(k, h.proc_fd(k)) + ", and " + refusal,
                             [&](std::uint64_t seed) { fill_hostile_local(m, seed); },
                             [&, k](std::uint64_t seed) {
                                 command(b, s.ch, "check-hostile " + std::to_string(k) + " " + std::to_string(seed),
                                         "checked");
                             }});
        std::uint64_t seed = 91;
        for (const refused_case& c : cases) {
            expect_error([&] { return b.prepare(xfer_op::write, c.local, c.remote, h.t.p, xfer_path::host_ipc); },
                         status::invalid_argument, "prepare: path host_ipc: " + c.why,
                         c.what + ": prepare on host_ipc");
            const ferry::xfer x = b.prepare(xfer_op::write, c.local, c.remote, h.t.p);
            expect(b.path_of(x) == xfer_path::ucx,
                   c.what + ": path_of says " + std::string(ferry::to_string(b.path_of(x))) + ", expected ucx");
            expect(!h.any_mapped(), c.what + ": a hostile file is mapped here");
            c.fill(seed);
            s.ch.send("serve");
            ferry_test::post_and_wait(b, x, {}, c.what);
            c.verify(seed);
            expect_status(b.release(x), status::ok, c.what + ": release");
            ++seed;
        }
        s.ch.send("serve");
    }
    s.ch.send("bye");
    // Back to root, for the checks at exit (LeakSanitizer traces this process).
    set_ptrace_capability(true);
    if (::setresuid(0, 0, 0) != 0) fail("setresuid back: " + errno_text(errno));
}

// ---- deregistration ------------------------------------------------------------------------------

std::string in_use_message(const ferry::region& r, std::size_t transfers) {
    return "deregister_memory: region " + ferry::detail::hex(addr_of(r.data())) + " (+" + std::to_string(r.size()) +
           ") is used by " + std::to_string(transfers) + " transfer(s) in flight";
}

// Every process of a run must use the same FIFO size: a peer attaches to
// another's FIFO by the size that its own configuration gives.
constexpr const char* small_fifo = "64";
constexpr std::size_t fillers = 256;  // notifications that fill a FIFO of 64 the target does not drain

ferry::ucx_config dereg_config(const side& s, std::string name) {
    auto cfg = s.config(std::move(name));
    if (s.tls == "shm") cfg.ucx_options.emplace_back("MM_FIFO_SIZE", small_fifo);
    // The notification must queue in UCX's FIFO, not go through the mailbox.
    cfg.notif_mailbox = false;
    return cfg;
}

template <class Backend>
void dereg_initiator(side& s) {
    {
        Backend b(dereg_config(s, "initiator"));
        memory_set m(b, mode_bytes);
        const target_view t = load_target(b, s.ch);
        // The two WRITEs, mapped and vm, each from a local region of its own.
        const auto xs = prepare_mode_xfers(b, m, t);
        for (std::size_t j = 0; j < 2; ++j) {
            const mode_xfer& mx = mode_xfers[j];
            fill_blocks(m, mode_local(mx).spots(), mode_remote(mx).spots(), mode_shape.len, 60 + j);
            post_now(b, xs[j], mx.name);
            verify_at_target(b, s.ch, 60 + j, mode_remote(mx));
            ferry::region& r = m.regions[mx.local_region];
            b.deregister_memory(r);
            expect(!r && r.data() == nullptr, std::string(mx.name) + ": the deregistered region is not empty");
            expect_status(b.post(xs[j]), status::not_registered, std::string(mx.name) + ": post once deregistered");
            expect_status(b.post(xs[j], "n"), status::not_registered,
                          std::string(mx.name) + ": post with a notification once deregistered");
            // Under the thread policy this error would cross threads through
            // std::promise, whose reference counting of the exception
            // ThreadSanitizer cannot see (libstdc++ is not instrumented); the
            // check is the policy's, not the path's, so one policy makes it.
            if constexpr (!threaded_v<Backend>) {
                const auto gone = ferry_test::error_from([&] {
                    return b.prepare(mx.op, mode_local(mx).descs(m.addrs()), mode_remote(mx).descs(t.base), t.p);
                });
                expect(gone && gone->code_status() == status::not_registered &&
                           std::string(gone->what()).find("is not inside any registered region") != std::string::npos,
                       std::string(mx.name) + ": prepare over the deregistered region: " +
                           (gone ? gone->what() : "did not throw"));
            }
        }
        if constexpr (!threaded_v<Backend>) {
            if (s.tls == "shm") {
                // The target does not drain its FIFO, so the notification of
                // this post waits behind the fillers, and the post with it.
                // Its local region, user1, is still registered.
                const block_set local{mode_shape, {user1}, 5, 30};
                const block_set remote{mode_shape, {alloc1}, 11, 31};
                const ferry::xfer x =
                    b.prepare(xfer_op::write, local.descs(m.addrs()), remote.descs(t.base), t.p);
                expect_host_ipc(b, x, mode_shape.count * mode_shape.len, "a WRITE behind a full FIFO");
                fill_blocks(m, local.spots(), remote.spots(), mode_shape.len, 65);
                std::string want;
                for (std::size_t i = 0; i < fillers; ++i) {
                    expect_status(b.send_notif(t.p, "filler " + std::to_string(i)), status::ok, "send_notif");
                    want += "initiator: filler " + std::to_string(i) + "|";
                }
                want += "initiator: behind the fillers";
                expect_status(b.post(x, "behind the fillers"), status::in_progress,
                              "a WRITE whose notification waits behind a full FIFO: post");
                ferry::region& r = m.regions[user1];
                const std::string busy_message = in_use_message(r, 1);
                expect_error([&] { b.deregister_memory(r); }, status::busy, busy_message,
                             "deregister_memory while the notification is outstanding");
                expect(r && r.data() == m.user_mem1.data(), "a refused deregistration changed the region");
                expect_status(b.post(x), status::busy, "a repost while the notification is outstanding");
                // The data is in place before the notification, and before the target progressed.
                command(b, s.ch, "verify 65 " + remote.encode(), "verified");
                command(b, s.ch, "notifs " + want, "notified");
                expect_status(b.wait(x, 20s), status::ok, "the WRITE once its notification left");
                b.deregister_memory(r);
                expect_status(b.post(x), status::not_registered, "the WRITE once its region is deregistered");
                expect_status(b.release(x), status::ok, "release");
            }
        }
        for (auto x : xs) expect_status(b.release(x), status::ok, "release");
        s.ch.send("serve");
    }
    s.ch.send("bye");
}

// ---- reposting ------------------------------------------------------------------------------

constexpr int repost_rounds = 100;

// `again`: every round prepares its transfers anew over the same blocks, so
// that later prepares find the peer's pages populated already.
template <class Backend>
void repost_initiator(side& s, bool again) {
    {
        Backend b(s.config("initiator"));
        memory_set m(b, mode_bytes);
        const target_view t = load_target(b, s.ch);
        auto xs = prepare_mode_xfers(b, m, t);
        std::string want;
        for (int round = 0; round < repost_rounds; ++round) {
            const auto seed = static_cast<std::uint64_t>(1000 + round);
            if (again && round > 0) {
                for (auto x : xs) expect_status(b.release(x), status::ok, "release before preparing again");
                xs = prepare_mode_xfers(b, m, t);
            }
            for (const mode_xfer& mx : mode_xfers)
                if (mx.op == xfer_op::read)
                    command(b, s.ch, "fill " + std::to_string(mx.remote_region) + " " + std::to_string(seed), "filled");
            for (std::size_t j = 0; j < std::size(mode_xfers); ++j) {
                const mode_xfer& mx = mode_xfers[j];
                const std::string what = std::string(mx.name) + ", round " + std::to_string(round);
                const auto local = mode_local(mx).spots(), remote = mode_remote(mx).spots();
                if (mx.op == xfer_op::write) fill_blocks(m, local, remote, mode_shape.len, seed);
                else m.reset(mx.local_region);
                // Every tenth round the mapped WRITE carries a notification.
                if (j == 0 && round % 10 == 0) {
                    const std::string n = "round " + std::to_string(round);
                    const status posted = b.post(xs[j], n);
                    expect(posted == status::ok || posted == status::in_progress,
                           what + ": post returned " + str(posted));
                    expect_status(b.wait(xs[j], 20s), status::ok, what + ": wait");
                    want += (want.empty() ? "" : "|") + std::string("initiator: ") + n;
                } else {
                    post_now(b, xs[j], what);
                }
                expect_status(b.check(xs[j]), status::ok, what + ": check again");
                if (mx.op == xfer_op::read) {
                    if (auto e = verify_blocks(m, local, remote, mode_shape.len, seed, {mx.local_region}); !e.empty())
                        fail(what + ": " + e);
                } else {
                    verify_at_target(b, s.ch, seed, mode_remote(mx));
                }
            }
        }
        command(b, s.ch, "notifs " + want, "notified");
        for (auto x : xs) {
            expect_status(b.release(x), status::ok, "release");
            expect_status(b.post(x), status::invalid_argument, "post after release");
            expect_status(b.check(x), status::invalid_argument, "check after release");
            expect_status(b.release(x), status::invalid_argument, "release twice");
        }
        s.ch.send("serve");
    }
    s.ch.send("bye");
}

// ---- the modes seen through the target's page protections --------------------------------------

template <class Backend>
void protect_initiator(side& s) {
    {
        Backend b(s.config("initiator"));
        memory_set m(b, mode_bytes);
        const target_view t = load_target(b, s.ch);
        // Prepared while everything is open: prepare asks the kernel about process_vm once.
        const auto xs = prepare_mode_xfers(b, m, t);
        const block_set mixed_local{mode_shape, {user1}, 65'536 + 5, 40};
        const block_set mixed_remote{mode_shape, {alloc0, user0}, 65'536 + 11, 41};
        const ferry::xfer mixed =
            b.prepare(xfer_op::write, mixed_local.descs(m.addrs()), mixed_remote.descs(t.base), t.p);
        expect_host_ipc(b, mixed, mode_shape.count * mode_shape.len, "a WRITE into allocated and registered memory");
        // One block in the last page of registered region 1.
        const std::size_t tail = mode_bytes - 100;
        const ferry::desc tail_local{m.addrs()[alloc1] + tail, 100, 0};
        const ferry::desc tail_remote{t.base[user1] + tail, 100, 0};
        const ferry::xfer tail_read =
            b.prepare(xfer_op::read, std::span(&tail_local, 1), std::span(&tail_remote, 1), t.p);
        expect_host_ipc(b, tail_read, 100, "a READ of the last page");

        auto post_all = [&](std::uint64_t seed, const std::array<status, 4>& want, status want_mixed) {
            for (std::size_t j = 0; j < std::size(mode_xfers); ++j) {
                const mode_xfer& mx = mode_xfers[j];
                const std::string what = std::string(mx.name) + " (seed " + std::to_string(seed) + ")";
                const auto local = mode_local(mx).spots(), remote = mode_remote(mx).spots();
                if (mx.op == xfer_op::write) fill_blocks(m, local, remote, mode_shape.len, seed);
                else m.reset(mx.local_region);
                expect_status(b.post(xs[j]), want[j], what + ": post");
                expect_status(b.check(xs[j]), want[j], what + ": check");
                if (mx.op == xfer_op::read && want[j] == status::ok)
                    if (auto e = verify_blocks(m, local, remote, mode_shape.len, seed, {mx.local_region}); !e.empty())
                        fail(what + ": " + e);
            }
            fill_blocks(m, mixed_local.spots(), mixed_remote.spots(), mode_shape.len, seed);
            expect_status(b.post(mixed), want_mixed, "a WRITE into allocated and registered memory: post");
        };
        auto fill_sources = [&](std::uint64_t seed) {
            for (std::size_t r : {alloc1, user1})
                command(b, s.ch, "fill " + std::to_string(r) + " " + std::to_string(seed), "filled");
        };
        auto protect = [&](std::size_t r, int prot) {
            command(b, s.ch, "protect " + std::to_string(r) + " " + std::to_string(prot), "protected");
        };
        // What the three WRITEs left in alloc0 and user0: all of their blocks, or the mapped one's only.
        auto verify_writes = [&](std::uint64_t seed, bool vm_landed) {
            if (vm_landed)
                verify_at_target(b, s.ch, seed, {mode_remote(mode_xfers[0]), mode_remote(mode_xfers[1]), mixed_remote});
            else
                verify_at_target(b, s.ch, seed, {mode_remote(mode_xfers[0]), block_set{{0, 1, false}, {user0}, 0, 0}});
            for (std::size_t r : {alloc0, user0}) command(b, s.ch, "reset " + std::to_string(r), "reset");
        };

        fill_sources(50);
        post_all(50, {status::ok, status::ok, status::ok, status::ok}, status::ok);
        verify_writes(50, true);

        // The target's own view of its memory: the WRITE regions read-only,
        // the READ regions inaccessible. A mapped transfer goes through this
        // process's mapping and does not see it; process_vm does.
        fill_sources(51);
        protect(alloc0, PROT_READ);
        protect(user0, PROT_READ);
        protect(alloc1, PROT_NONE);
        protect(user1, PROT_NONE);
        post_all(51, {status::ok, status::not_registered, status::ok, status::not_registered}, status::not_registered);
        // The failed WRITEs wrote nothing: the mixed one failed at its first block (in alloc0).
        for (std::size_t r : every_region) protect(r, PROT_READ | PROT_WRITE);
        verify_writes(51, false);

        // Open again: every post goes through.
        fill_sources(52);
        post_all(52, {status::ok, status::ok, status::ok, status::ok}, status::ok);
        verify_writes(52, true);
        expect_status(b.post(tail_read), status::ok, "a READ of the last page");

        // A page the target no longer maps at all.
        command(b, s.ch, "unmap " + std::to_string(user1), "unmapped");
        expect_status(b.post(tail_read), status::not_registered, "a READ of the unmapped last page: post");
        expect_status(b.check(tail_read), status::not_registered, "a READ of the unmapped last page: check");
        expect_status(b.wait(tail_read, 1s), status::not_registered, "a READ of the unmapped last page: wait");

        for (auto x : xs) expect_status(b.release(x), status::ok, "release");
        expect_status(b.release(mixed), status::ok, "release");
        expect_status(b.release(tail_read), status::ok, "release");
        s.ch.send("serve");
    }
    s.ch.send("bye");
}

// ---- an unloaded peer ------------------------------------------------------------------------

template <class Backend>
void unloaded_initiator(side& s) {
    {
        Backend b(s.config("initiator"));
        memory_set m(b, mode_bytes);
        const target_view t = load_target(b, s.ch);
        const auto xs = prepare_mode_xfers(b, m, t);
        for (std::size_t j = 0; j < std::size(mode_xfers); ++j) post_now(b, xs[j], mode_xfers[j].name);
        b.unload_remote(t.p);
        for (std::size_t j = 0; j < std::size(mode_xfers); ++j) {
            const std::string what = std::string(mode_xfers[j].name) + " to the unloaded peer";
            expect_status(b.post(xs[j]), status::no_such_peer, what + ": post");
            expect_status(b.post(xs[j], "n"), status::no_such_peer, what + ": post with a notification");
        }
        // The peer loaded again is reached again, mapped and through process_vm.
        const ferry::peer again = b.load_remote(t.blob);
        target_view t2 = t;
        t2.p = again;
        const auto ys = prepare_mode_xfers(b, m, t2);
        for (std::size_t j = 0; j < 2; ++j) {
            const mode_xfer& mx = mode_xfers[j];
            fill_blocks(m, mode_local(mx).spots(), mode_remote(mx).spots(), mode_shape.len, 30 + j);
            post_now(b, ys[j], std::string(mx.name) + " to the peer loaded again");
            verify_at_target(b, s.ch, 30 + j, mode_remote(mx));
        }
        for (auto y : ys) expect_status(b.release(y), status::ok, "release");
        // As for a transfer on the ucx path (test_validation), estimate refuses a transfer whose peer is gone.
        for (std::size_t j = 0; j < std::size(mode_xfers); ++j)
            expect_error([&] { return b.estimate(xs[j]); }, status::no_such_peer, "estimate: the peer was unloaded",
                         std::string(mode_xfers[j].name) + " to the unloaded peer: estimate");
        for (auto x : xs) expect_status(b.release(x), status::ok, "release");
        s.ch.send("serve");
    }
    s.ch.send("bye");
}

// Runs `initiator` against a command target, both with `v`'s policy.
template <template <class> class Initiator>
void against_command_target(const variant& v, std::chrono::seconds limit = std::chrono::seconds(60)) {
    with_policy(v, [&]<class Backend>(const std::string& tls) {
        ferry_test::run_two_process(
            tls, [](side& s) { Initiator<Backend>::run(s); },
            [](side& s) { command_target<Backend>(s.ch, dereg_config(s, "target"), mode_bytes); }, limit);
    });
}

template <class Backend>
struct dereg_role {
    static void run(side& s) { dereg_initiator<Backend>(s); }
};
template <class Backend>
struct repost_role {
    static void run(side& s) { repost_initiator<Backend>(s, false); }
};
template <class Backend>
struct reprepare_role {
    static void run(side& s) { repost_initiator<Backend>(s, true); }
};
template <class Backend>
struct protect_role {
    static void run(side& s) { protect_initiator<Backend>(s); }
};
template <class Backend>
struct unloaded_role {
    static void run(side& s) { unloaded_initiator<Backend>(s); }
};

}  // namespace

TEST_CASE("host_ipc WRITE and READ move every byte, mapped and through process_vm, over shm and tcp, both policies") {
    const variant v = GENERATE(from_range(std::begin(every_variant), std::end(every_variant)));
    CAPTURE(describe(v));
    const std::vector<shape> shapes = {{1, 1, true}, {16, 4097, false}, {1025, 64, false}, {64, 1024, true}};
    run_layouts(v, shapes, 96 * 1024);
}

TEST_CASE("host_ipc lists of 1 to 10000 blocks of 1 B to 4 MiB, across the 1024 blocks of one process_vm call") {
    const variant v = GENERATE(variant{"shm", false}, variant{"tcp", true});
    CAPTURE(describe(v));
    const std::vector<shape> shapes = {
        {1, 1, true},        {2, 1, false},        {1023, 7, false},          {1024, 1, true},
        {1024, 64, false},   {1025, 3, false},     {1025, 4096, true},        {10000, 1, false},
        {10000, 100, true},  {16, 4097, false},    {3, (1 << 20) + 3, false}, {1, 4 << 20, true},
    };
    run_layouts(v, shapes, (4 << 20) + 8192);
}

TEST_CASE("a host_ipc transfer completes while the target idles, and its notification comes once, after the data") {
    const variant v = GENERATE(from_range(std::begin(every_variant), std::end(every_variant)));
    CAPTURE(describe(v));
    with_policy(v, [&]<class Backend>(const std::string& tls) {
        ferry_test::run_two_process(tls, notif_initiator<Backend>, notif_target<Backend>);
    });
}

TEST_CASE("host_ipc to a peer that its metadata puts on another host or PID namespace: refused by name, ucx serves") {
    ferry_test::run_two_process("tcp", forged_initiator,
                                [](side& s) { command_target<inline_backend>(s.ch, s.config("target"), mode_bytes); });
}

TEST_CASE("a target killed while host_ipc posts go on: each post returns a status and the initiator lives on") {
    const variant v = GENERATE(variant{"tcp", false}, variant{"shm", true});
    CAPTURE(describe(v));
    with_policy(v, [&]<class Backend>(const std::string& tls) {
        ferry_test::run_two_process(tls, death_initiator<Backend>, [&](side& s) { supervisor(s, v.threaded); });
    });
}

TEST_CASE("allocated memory files are sealed against their owner, and a peer's unsealed memory file is never mapped") {
    ferry_test::run_two_process("tcp", hostile_initiator, [](side& s) { hostile_target(s, false); });
}

TEST_CASE("where the kernel refuses process_vm, allocated memory is still mapped, the rest refused or sent over ucx") {
    if (::geteuid() != 0) {
        ferry_test::skip("the kernel's refusal is staged with setresuid and capabilities, which need root");
        return;
    }
    ferry_test::run_two_process("tcp", restricted_initiator, [](side& s) { hostile_target(s, true); });
}

TEST_CASE("deregister_memory refuses a region while a host_ipc notification is out, then posts get not_registered") {
    const variant v = GENERATE(variant{"shm", false}, variant{"tcp", true});
    CAPTURE(describe(v));
    against_command_target<dereg_role>(v);
}

TEST_CASE("a prepared host_ipc transfer posted 100 times moves each round's data") {
    const variant v = GENERATE(variant{"shm", false}, variant{"tcp", true});
    CAPTURE(describe(v));
    against_command_target<repost_role>(v);
}

TEST_CASE("host_ipc lists prepared again over the same blocks each round move each round's data") {
    const variant v = GENERATE(variant{"shm", false}, variant{"tcp", true});
    CAPTURE(describe(v));
    against_command_target<reprepare_role>(v);
}

TEST_CASE("populated_pages: a page is claimed once per access, and one populated for writing serves reading") {
    ferry::detail::populated_pages p;
    CHECK(p.claim(0, 4, true, 100));
    CHECK_FALSE(p.claim(1, 3, true, 100));
    CHECK(p.claim(3, 5, true, 100));  // page 4 is new
    CHECK_FALSE(p.claim(0, 5, false, 100));  // written pages read without faulting
    CHECK(p.claim(10, 12, false, 100));
    CHECK(p.claim(10, 12, true, 100));  // read-populated pages fault on the first write
    CHECK_FALSE(p.claim(10, 12, true, 100));
    CHECK(p.claim(63, 65, false, 100));  // across a word of the bitmap
    CHECK_FALSE(p.claim(64, 65, false, 100));
    CHECK_FALSE(p.claim(100, 120, true, 100));  // past the mapping: nothing to populate
}

TEST_CASE("only process_vm transfers meet the target's page protections and unmapped pages, as not_registered") {
    const variant v = GENERATE(variant{"tcp", false}, variant{"shm", true});
    CAPTURE(describe(v));
    against_command_target<protect_role>(v);
}

TEST_CASE("host_ipc transfers to an unloaded peer: no_such_peer, and a peer loaded again is reached") {
    const variant v = GENERATE(variant{"tcp", false}, variant{"tcp", true});
    CAPTURE(describe(v));
    against_command_target<unloaded_role>(v);
}
