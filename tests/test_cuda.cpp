// memory::cuda between two real processes on one GPU: READ and WRITE of
// descriptor lists between device and device, host and device, device and
// host, host and host, over UCX RMA, over the cuda_ipc path (one copy kernel
// over the peer's memory mapped through CUDA IPC) and over the host_ipc path
// (ferry's own copy between host memory of two processes), with
// notifications that the target checks the bytes against when they arrive,
// under both progress policies.
//
// Every test needs a CUDA device and a UCX built with CUDA; where either is
// missing it is reported as skipped, naming what is missing. The parent
// process never touches CUDA (its state does not survive fork): a forked
// probe finds out what this machine has.

#include <ferry/cuda.hpp>

#include <catch2/catch.hpp>

#include "support/blocks.hpp"
#include "support/cuda_probe.hpp"
#include "support/ferry_catch.hpp"
#include "support/pattern.hpp"
#include "support/two_process.hpp"

#include <cuda_runtime_api.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using ferry::status;
using ferry::xfer_op;
using ferry::xfer_path;
using ferry_test::blocks;
using ferry_test::gpu_ready;
using ferry_test::probe;
using ferry_test::probe_result;
using ferry_test::expect;
using ferry_test::expect_status;
using ferry_test::fail;
using ferry_test::side;

namespace {

using inline_cuda = ferry::ucx_backend<ferry::policy<ferry::progress::inline_poll, ferry::memory::cuda>>;
using thread_cuda = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::cuda>>;

// ---- memory on both sides --------------------------------------------------------

constexpr std::size_t device_bytes = std::size_t{160} << 20;
constexpr std::size_t host_bytes = std::size_t{40} << 20;

// Device memory, pageable host memory, page-locked host memory, and the
// backend's shared host memory (allocate_host: page-locked, mappable by a peer).
enum class kind { host, device, pinned, shared };

std::string name_of(kind k) {
    switch (k) {
        case kind::host: return "host";
        case kind::device: return "device";
        case kind::pinned: return "page-locked host";
        case kind::shared: return "allocate_host";
    }
    return "?";
}

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) fail(std::string(what) + ": " + cudaGetErrorString(e));
}

struct pinned_buffer {
    explicit pinned_buffer(std::size_t len) {
        check(cudaMallocHost(&p, len), "cudaMallocHost");
        std::memset(p, 0, len);
    }
    ~pinned_buffer() { cudaFreeHost(p); }
    pinned_buffer(const pinned_buffer&) = delete;
    pinned_buffer& operator=(const pinned_buffer&) = delete;
    void* p = nullptr;
};

// One region of each kind, with a host staging copy for filling and
// checking device memory.
template <class Backend>
struct memory_pair {
    explicit memory_pair(Backend& b)
        : host_mem(host_bytes),
          pinned_mem(host_bytes),
          dev(b.allocate(device_bytes, 0)),
          host(b.register_memory(host_mem.data(), host_bytes)),
          pinned(b.register_memory(pinned_mem.p, host_bytes)),
          shared(b.allocate_host(host_bytes)) {}

    [[nodiscard]] std::byte* host_bytes_of(kind k) {
        return reinterpret_cast<std::byte*>(base(k));
    }
    [[nodiscard]] std::uintptr_t base(kind k) const {
        const ferry::region& r = k == kind::host ? host : k == kind::pinned ? pinned : k == kind::shared ? shared : dev;
        return reinterpret_cast<std::uintptr_t>(r.data());
    }

    // Sets [0, extent) to `untouched`, then the blocks to their pattern.
    void fill(kind k, const blocks& where, const blocks& keyed_by, std::uint64_t seed, std::size_t extent) {
        staging.assign(extent, ferry_test::untouched);
        ferry_test::fill_blocks(staging.data(), where, keyed_by, seed);
        put(k, extent);
    }
    void clear(kind k, std::size_t extent) {
        staging.assign(extent, ferry_test::untouched);
        put(k, extent);
    }
    [[nodiscard]] std::string verify(kind k, const blocks& where, const blocks& keyed_by, std::uint64_t seed,
                                     std::size_t extent) {
        staging.resize(extent);
        if (k != kind::device) std::memcpy(staging.data(), host_bytes_of(k), extent);
        else check(cudaMemcpy(staging.data(), dev.data(), extent, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
        return ferry_test::verify_blocks(staging.data(), where, keyed_by, seed, extent);
    }

    std::vector<std::byte> host_mem;
    pinned_buffer pinned_mem;
    ferry::region dev;
    ferry::region host;
    ferry::region pinned;
    ferry::region shared;
    std::vector<std::byte> staging;

private:
    void put(kind k, std::size_t extent) {
        if (k != kind::device) std::memcpy(host_bytes_of(k), staging.data(), extent);
        else check(cudaMemcpy(dev.data(), staging.data(), extent, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
    }
};

// ---- the cases ---------------------------------------------------------------------

struct gpu_case {
    xfer_op op;
    kind local;
    kind remote;
    std::size_t count;
    std::size_t len;
    bool scatter;    // remote blocks in a permuted order with gaps, else back to back
    std::size_t skew;  // bytes added to every offset: 0 keeps 16-byte alignment
    xfer_path want;    // what prepare is asked for
    xfer_path expect;  // what it must choose
    bool strided = false;  // both lists as strided entries (blocks::strided_descs)

    // Local blocks in order, 64 bytes apart (scattered cases) or back to
    // back; remote ones permuted with gaps as large as a block, or back to back.
    [[nodiscard]] blocks local_blocks() const {
        blocks b;
        b.len = len;
        for (std::size_t i = 0; i < count; ++i) b.at.push_back(skew + (scatter ? 64 + i * (len + 64) : i * len));
        return b;
    }
    [[nodiscard]] blocks remote_blocks() const {
        blocks b = ferry_test::scattered(count, len, 64, len);
        if (!scatter)
            for (std::size_t i = 0; i < count; ++i) b.at[i] = i * len;
        for (auto& a : b.at) a += skew;
        return b;
    }
    [[nodiscard]] std::string describe(std::size_t index) const {
        return "case " + std::to_string(index) + ": " + std::string(ferry::to_string(op)) + " " +
               std::to_string(count) + " x " + std::to_string(len) + " B, local " + name_of(local) + ", remote " +
               name_of(remote) + (scatter ? ", scattered" : ", contiguous") +
               (skew ? ", skewed by " + std::to_string(skew) : "") + (strided ? ", strided lists" : "") + ", path " +
               std::string(ferry::to_string(expect));
    }
};

std::vector<gpu_case> cases_for(bool full) {
    std::vector<gpu_case> out;
    const kind D = kind::device, H = kind::host, P = kind::pinned;
    for (xfer_op op : {xfer_op::write, xfer_op::read}) {
        // cuda_ipc: device to device, 1 to 10 000 descriptors of 256 B to 64 MiB.
        struct shape {
            std::size_t count, len;
            bool scatter;
            std::size_t skew;
        };
        const std::vector<shape> ipc = full ? std::vector<shape>{{1, 256, false, 0},     {1, 4096, false, 0},
                                                                 {16, 4096, true, 0},    {1024, 256, true, 0},
                                                                 {1024, 4096, true, 0},  {1024, 65536, true, 0},
                                                                 {10000, 1024, true, 0}, {10000, 4096, false, 0},
                                                                 {16, 1 << 20, true, 0}, {1, 64 << 20, false, 0},
                                                                 {33, 1000, true, 3}}
                                            : std::vector<shape>{{1, 4096, false, 0}, {1024, 4096, true, 0},
                                                                 {16, 1 << 20, true, 0}, {33, 1000, true, 3}};
        for (const auto& s : ipc)
            out.push_back({op, D, D, s.count, s.len, s.scatter, s.skew, xfer_path::automatic, xfer_path::cuda_ipc});
        // UCX RMA on device memory, forced: 1 to 1024 descriptors, 4 KiB to 64 MiB.
        const std::vector<shape> rma = full ? std::vector<shape>{{1, 4096, false, 0}, {16, 65536, true, 0},
                                                                 {1024, 4096, true, 0}, {4, 1 << 20, true, 0},
                                                                 {1, 16 << 20, false, 0}, {1, 64 << 20, false, 0}}
                                            : std::vector<shape>{{16, 65536, true, 0}, {1, 1 << 20, false, 0}};
        for (const auto& s : rma)
            out.push_back({op, D, D, s.count, s.len, s.scatter, s.skew, xfer_path::ucx, xfer_path::ucx});
        // Host and device mixed: UCX, chosen because cuda_ipc cannot serve it.
        const std::vector<shape> mixed = full ? std::vector<shape>{{1, 4096, false, 0}, {16, 65536, true, 0},
                                                                   {1, 16 << 20, false, 0}}
                                              : std::vector<shape>{{16, 65536, true, 0}};
        for (const auto& s : mixed) {
            out.push_back({op, H, D, s.count, s.len, s.scatter, s.skew, xfer_path::automatic, xfer_path::ucx});
            out.push_back({op, D, H, s.count, s.len, s.scatter, s.skew, xfer_path::automatic, xfer_path::ucx});
            out.push_back({op, D, P, s.count, s.len, s.scatter, s.skew, xfer_path::automatic, xfer_path::ucx});
            // Our page-locked host memory and the peer's device memory: the
            // copy kernel reaches both.
            out.push_back({op, P, D, s.count, s.len, s.scatter, s.skew, xfer_path::automatic, xfer_path::cuda_ipc});
        }
        // The peer's allocate_host memory: GPU memory to and from it moves as
        // one copy kernel over its mapping (host_ipc's placement); host memory
        // to and from it, as the CPU's memcpy; either way forced or chosen.
        const kind S = kind::shared;
        const std::vector<shape> shared = full ? std::vector<shape>{{1, 4096, false, 0}, {1024, 4096, true, 0},
                                                                    {16, 1 << 20, true, 0}, {33, 1000, true, 3}}
                                               : std::vector<shape>{{1024, 4096, true, 0}, {16, 1 << 20, true, 0}};
        for (const auto& s : shared) {
            out.push_back({op, D, S, s.count, s.len, s.scatter, s.skew, xfer_path::automatic, xfer_path::host_ipc});
            out.push_back({op, D, S, s.count, s.len, s.scatter, s.skew, xfer_path::host_ipc, xfer_path::host_ipc});
            out.push_back({op, S, D, s.count, s.len, s.scatter, s.skew, xfer_path::automatic, xfer_path::cuda_ipc});
            out.push_back({op, H, S, s.count, s.len, s.scatter, s.skew, xfer_path::automatic, xfer_path::host_ipc});
            out.push_back({op, P, S, s.count, s.len, s.scatter, s.skew, xfer_path::automatic, xfer_path::host_ipc});
        }
        // Host memory on both sides, pageable or page-locked: host_ipc, and
        // UCX when asked for.
        const std::vector<shape> host = full ? std::vector<shape>{{1, 4096, false, 0}, {16, 65536, true, 0},
                                                                  {1024, 256, true, 3}}
                                             : std::vector<shape>{{16, 65536, true, 0}};
        for (const auto& s : host) {
            out.push_back({op, H, H, s.count, s.len, s.scatter, s.skew, xfer_path::automatic, xfer_path::host_ipc});
            out.push_back({op, P, H, s.count, s.len, s.scatter, s.skew, xfer_path::automatic, xfer_path::host_ipc});
            out.push_back({op, H, P, s.count, s.len, s.scatter, s.skew, xfer_path::automatic, xfer_path::host_ipc});
            out.push_back({op, H, H, s.count, s.len, s.scatter, s.skew, xfer_path::ucx, xfer_path::ucx});
        }
    }
    // Strided lists: the local blocks one entry (a stride apart), the
    // remote ones one entry each (permuted) or one entry (back to back).
    const kind S = kind::shared;
    for (xfer_op op : {xfer_op::write, xfer_op::read}) {
        out.push_back({op, D, D, 1024, 4096, true, 0, xfer_path::automatic, xfer_path::cuda_ipc, true});
        out.push_back({op, D, D, 10000, 1024, false, 0, xfer_path::automatic, xfer_path::cuda_ipc, true});
        out.push_back({op, D, D, 16, 65536, true, 0, xfer_path::ucx, xfer_path::ucx, true});
        out.push_back({op, D, S, 1024, 4096, true, 0, xfer_path::automatic, xfer_path::host_ipc, true});
    }
    return out;
}

std::size_t extent_of(const blocks& b) { return b.end() + 64; }

// ferry::error's what() is the message, then ": " and the status's name.
bool starts_with(const char* what, std::string_view prefix) { return std::string_view(what).substr(0, prefix.size()) == prefix; }

// What the target publishes besides its metadata: where its two regions start.
struct target_bases {
    std::uint64_t dev = 0;
    std::uint64_t host = 0;
    std::uint64_t pinned = 0;
    std::uint64_t shared = 0;
    [[nodiscard]] std::uint64_t of(kind k) const {
        return k == kind::host ? host : k == kind::pinned ? pinned : k == kind::shared ? shared : dev;
    }
};

// The target's half of the set-up: its metadata, then where its regions start.
template <class Backend>
void publish(Backend& b, const memory_pair<Backend>& m, ferry_test::channel& ch) {
    ch.send(b.local_metadata());
    const std::array<std::uint64_t, 4> addrs{m.base(kind::device), m.base(kind::host), m.base(kind::pinned),
                                             m.base(kind::shared)};
    ch.send_u64s(addrs);
}

// The initiator's half: the target loaded, and where its regions start.
template <class Backend>
std::pair<ferry::peer, target_bases> load_target(Backend& b, ferry_test::channel& ch) {
    const ferry::peer p = b.load_remote(ch.recv_bytes());
    const auto addrs = ch.recv_u64s();
    expect(addrs.size() == 4, "the target sent " + std::to_string(addrs.size()) + " addresses");
    return {p, target_bases{addrs[0], addrs[1], addrs[2], addrs[3]}};
}

template <class Backend>
void serve_until(Backend& b, ferry_test::channel& ch) {
    while (!ch.readable())
        if (b.progress() == 0) ::sched_yield();
}

// Waits (progressing) for the notification `want` from `from`; fails on any other.
template <class Backend>
void await_notif(Backend& b, std::string_view from, const std::string& want) {
    ferry_test::patience patience;
    bool got = false;
    while (!got) {
        b.poll_notifs([&](std::string_view sender, std::string_view msg) {
            if (sender != from || msg != want)
                fail("unexpected notification '" + std::string(msg) + "' from '" + std::string(sender) +
                     "' while waiting for '" + want + "'");
            got = true;
        });
        if (!got) {
            b.progress();
            patience.check("notification '" + want + "'");
        }
    }
}

template <class Backend>
void run_cases(const std::vector<gpu_case>& cases) {
    auto initiator = [&](side& s) {
        Backend b(s.config("initiator"));
        memory_pair<Backend> m(b);
        const auto loaded = load_target(b, s.ch);
        const ferry::peer p = loaded.first;
        const target_bases t = loaded.second;
        for (std::size_t i = 0; i < cases.size(); ++i) {
            const gpu_case& c = cases[i];
            const std::string what = c.describe(i);
            const blocks lb = c.local_blocks(), rb = c.remote_blocks();
            const std::uint64_t seed = 7000 + i;
            if (c.op == xfer_op::write) m.fill(c.local, lb, rb, seed, extent_of(lb));
            else m.clear(c.local, extent_of(lb));
            s.ch.expect_message("ready " + std::to_string(i));
            const ferry::xfer x =
                c.strided ? b.prepare(c.op, lb.strided_descs(m.base(c.local)), rb.strided_descs(t.of(c.remote)), p,
                                      ferry::xfer_options{.path = c.want})
                          : b.prepare(c.op, lb.descs(m.base(c.local)), rb.descs(t.of(c.remote)), p, c.want);
            if (b.path_of(x) != c.expect)
                fail(what + ": prepare chose path " + std::string(ferry::to_string(b.path_of(x))));
            // Twice: a prepared transfer is posted again with the same result.
            for (int round = 0; round < 2; ++round) {
                const std::string notif = "case " + std::to_string(i) + " round " + std::to_string(round);
                const status posted = b.post(x, notif);
                if (posted != status::ok && posted != status::in_progress)
                    fail(what + ": post returned " + ferry_test::str(posted));
                expect_status(b.wait(x, std::chrono::seconds(60)), status::ok, what + ": wait");
                if (c.op == xfer_op::read)
                    if (auto e = m.verify(c.local, lb, rb, seed, extent_of(lb)); !e.empty()) fail(what + ": " + e);
                s.ch.expect_message("checked " + std::to_string(i) + " " + std::to_string(round));
            }
            expect_status(b.release(x), status::ok, what + ": release");
        }
        s.ch.send("bye");
    };
    auto target = [&](side& s) {
        Backend b(s.config("target"));
        memory_pair<Backend> m(b);
        publish(b, m, s.ch);
        for (std::size_t i = 0; i < cases.size(); ++i) {
            const gpu_case& c = cases[i];
            const blocks lb = c.local_blocks(), rb = c.remote_blocks();
            const std::uint64_t seed = 7000 + i;
            if (c.op == xfer_op::read) m.fill(c.remote, rb, rb, seed, extent_of(rb));
            else m.clear(c.remote, extent_of(rb));
            s.ch.send("ready " + std::to_string(i));
            for (int round = 0; round < 2; ++round) {
                // A WRITE's notification follows its data: the bytes must all
                // be in place when it arrives.
                await_notif(b, "initiator", "case " + std::to_string(i) + " round " + std::to_string(round));
                if (c.op == xfer_op::write)
                    if (auto e = m.verify(c.remote, rb, rb, seed, extent_of(rb)); !e.empty())
                        fail(c.describe(i) + ", round " + std::to_string(round) + ", at the notification: " + e);
                s.ch.send("checked " + std::to_string(i) + " " + std::to_string(round));
            }
        }
        serve_until(b, s.ch);
        s.ch.expect_message("bye");
    };
    ferry_test::run_two_process("all", initiator, target, std::chrono::seconds(240));
}

}  // namespace

TEST_CASE("memory::cuda, inline progress: every kind, path and layout delivers exact bytes, notifications after them") {
    if (!gpu_ready()) return;
    run_cases<inline_cuda>(cases_for(true));
}

TEST_CASE("memory::cuda, progress thread: every kind and path delivers exact bytes, notifications after them") {
    if (!gpu_ready()) return;
    run_cases<thread_cuda>(cases_for(false));
}

TEST_CASE("memory::cuda: prepare says which pair cuda_ipc cannot serve, and why") {
    if (!gpu_ready()) return;
    auto initiator = [](side& s) {
        inline_cuda b(s.config("initiator"));
        memory_pair<inline_cuda> m(b);
        const auto loaded = load_target(b, s.ch);
        const ferry::peer p = loaded.first;
        const target_bases t = loaded.second;
        const std::vector<ferry::desc> dev_dev_l = {{m.base(kind::device), 4096, 0}, {m.base(kind::device) + 8192, 64, 0}};
        const std::vector<ferry::desc> mixed_r = {{t.dev, 4096, 0}, {t.host, 64, 0}};
        auto e = ferry_test::error_from(
            [&] { static_cast<void>(b.prepare(xfer_op::write, dev_dev_l, mixed_r, p, xfer_path::cuda_ipc)); });
        expect(e.has_value(), "prepare(cuda_ipc) accepted host memory on the remote side");
        expect_status(e->code_status(), status::invalid_argument, "prepare(cuda_ipc) with a host block");
        expect(starts_with(e->what(), "prepare: path cuda_ipc: descriptor 1: the remote block is not CUDA device memory"),
               std::string("message: ") + e->what());
        const std::vector<ferry::desc> host_l = {{m.base(kind::host), 4096, 0}};
        const std::vector<ferry::desc> dev_r = {{t.dev, 4096, 0}};
        e = ferry_test::error_from(
            [&] { static_cast<void>(b.prepare(xfer_op::read, host_l, dev_r, p, xfer_path::cuda_ipc)); });
        expect(e.has_value() &&
                   starts_with(e->what(), "prepare: path cuda_ipc: descriptor 0: the local block is neither CUDA "
                                          "device memory nor page-locked host memory"),
               "message for a local host block: " + std::string(e ? e->what() : "(none)"));
        // automatic falls back to UCX for the same lists; ucx is always ucx.
        auto x = b.prepare(xfer_op::write, dev_dev_l, mixed_r, p);
        expect(b.path_of(x) == xfer_path::ucx, "automatic on a mixed list chose " +
                                                   std::string(ferry::to_string(b.path_of(x))));
        auto y = b.prepare(xfer_op::write, std::span(dev_dev_l).first(1), dev_r, p, xfer_path::ucx);
        expect(b.path_of(y) == xfer_path::ucx, "ucx was not honoured");
        auto z = b.prepare(xfer_op::write, std::span(dev_dev_l).first(1), dev_r, p);
        expect(b.path_of(z) == xfer_path::cuda_ipc, "automatic on device memory of one host chose " +
                                                        std::string(ferry::to_string(b.path_of(z))));
        const auto cost = b.estimate(z);
        expect(cost.method == ferry::cost_method::cuda_ipc_model && cost.duration.count() > 0, "estimate of cuda_ipc");
        // The peer's allocate_host memory is host_ipc's placement, also when
        // the GPU copies: cuda_ipc by name refuses it, host_ipc by name takes
        // it, and host_ipc by name refuses the peer's device memory.
        const std::vector<ferry::desc> shared_r = {{t.shared, 4096, 0}};
        e = ferry_test::error_from([&] {
            static_cast<void>(b.prepare(xfer_op::write, std::span(dev_dev_l).first(1), shared_r, p, xfer_path::cuda_ipc));
        });
        expect(e.has_value() &&
                   starts_with(e->what(), "prepare: path cuda_ipc: descriptor 0: the remote block is not CUDA device memory"),
               "cuda_ipc by name on the peer's allocate_host memory: " + std::string(e ? e->what() : "(none)"));
        auto hs = b.prepare(xfer_op::write, std::span(dev_dev_l).first(1), shared_r, p, xfer_path::host_ipc);
        expect(b.path_of(hs) == xfer_path::host_ipc, "host_ipc by name on the peer's allocate_host memory chose " +
                                                        std::string(ferry::to_string(b.path_of(hs))));
        expect(b.estimate(hs).method == ferry::cost_method::cuda_ipc_model, "estimate of a GPU copy to host memory");
        e = ferry_test::error_from([&] {
            static_cast<void>(b.prepare(xfer_op::write, std::span(dev_dev_l).first(1), dev_r, p, xfer_path::host_ipc));
        });
        expect(e.has_value() && starts_with(e->what(), "prepare: path host_ipc: descriptor 0: the local block is not host memory"),
               "host_ipc by name between device memory: " + std::string(e ? e->what() : "(none)"));
        // host_ipc: host memory on both sides, and only there.
        const std::vector<ferry::desc> host_r = {{t.host, 4096, 0}};
        auto h = b.prepare(xfer_op::write, host_l, host_r, p);
        expect(b.path_of(h) == xfer_path::host_ipc, "automatic on host memory of one host chose " +
                                                        std::string(ferry::to_string(b.path_of(h))));
        expect(b.estimate(h).method == ferry::cost_method::host_ipc_model, "estimate of host_ipc");
        e = ferry_test::error_from([&] {
            static_cast<void>(b.prepare(xfer_op::write, std::span(dev_dev_l).first(1), host_r, p, xfer_path::host_ipc));
        });
        expect(e.has_value() &&
                   starts_with(e->what(), "prepare: path host_ipc: descriptor 0: the local block is not host memory"),
               "prepare(host_ipc) with a device block: " + std::string(e ? e->what() : "(none)"));
        // allocate_host: page-locked, so the copy kernel reaches it too.
        auto staging = b.allocate_host(4096);
        const std::vector<ferry::desc> staging_l = {staging.whole()};
        auto k = b.prepare(xfer_op::read, staging_l, dev_r, p);
        expect(b.path_of(k) == xfer_path::cuda_ipc, "automatic from allocate_host memory to device memory chose " +
                                                        std::string(ferry::to_string(b.path_of(k))));
        for (ferry::xfer done : {x, y, z, h, k, hs}) expect_status(b.release(done), status::ok, "release");
        // dev must name the device the memory is on.
        e = ferry_test::error_from([&] { static_cast<void>(b.register_memory(m.dev.data(), 4096, 1)); });
        expect(e.has_value() && starts_with(e->what(), "register_memory: dev 1 given, but the memory is on CUDA device 0"),
               "register_memory with the wrong device: " + std::string(e ? e->what() : "(none)"));
        e = ferry_test::error_from([&] { static_cast<void>(b.register_memory(m.host_mem.data(), 4096, 1)); });
        expect(e.has_value() && starts_with(e->what(), "register_memory: dev 1 given, but the memory is host memory (dev 0)"),
               "register_memory of host memory with dev 1: " + std::string(e ? e->what() : "(none)"));
        e = ferry_test::error_from([&] {
            static_cast<void>(b.register_memory(static_cast<std::byte*>(m.dev.data()) + 4096, device_bytes, 0));
        });
        expect(e.has_value() && std::string(e->what()).find("runs past the end of its CUDA allocation") !=
                                    std::string::npos,
               "register_memory past the allocation: " + std::string(e ? e->what() : "(none)"));
        s.ch.send("bye");
    };
    auto target = [](side& s) {
        inline_cuda b(s.config("target"));
        memory_pair<inline_cuda> m(b);
        publish(b, m, s.ch);
        serve_until(b, s.ch);
        s.ch.expect_message("bye");
    };
    ferry_test::run_two_process("all", initiator, target);
}

TEST_CASE("memory::cuda: a peer that exits while its memory is mapped fails transfers, not the initiator") {
    if (!gpu_ready()) return;
    auto initiator = [](side& s) {
        inline_cuda b(s.config("initiator"));
        memory_pair<inline_cuda> m(b);
        const auto loaded = load_target(b, s.ch);
        const ferry::peer p = loaded.first;
        const target_bases t = loaded.second;
        const blocks lb = ferry_test::packed(64, 4096), rb = ferry_test::scattered(64, 4096, 64, 4096);
        m.fill(kind::device, lb, rb, 11, extent_of(lb));
        const ferry::xfer w = b.prepare(xfer_op::write, lb.descs(m.base(kind::device)), rb.descs(t.dev), p);
        const ferry::xfer r = b.prepare(xfer_op::read, lb.descs(m.base(kind::device)), rb.descs(t.dev), p);
        expect(b.path_of(w) == xfer_path::cuda_ipc && b.path_of(r) == xfer_path::cuda_ipc, "not on cuda_ipc");
        ferry_test::post_and_wait(b, w, "alive", "a WRITE while the target lives");
        s.ch.send("die");
        s.ch.expect_closed();
        // Until UCX notices the death, transfers may still complete: the
        // mapping keeps the dead process's memory alive. Afterwards they fail.
        ferry_test::patience patience(std::chrono::seconds(20));
        status last = status::ok;
        while (last != status::peer_failed) {
            patience.check("the target's death to be noticed");
            for (ferry::xfer x : {w, r}) {
                status st = b.post(x, "after death");
                if (st == status::in_progress) st = b.wait(x, std::chrono::seconds(10));
                if (st != status::ok && st != status::peer_failed)
                    fail("a transfer to a dead peer ended " + ferry_test::str(st));
                last = st;
            }
            b.progress();
        }
        expect_status(b.peer_status(p), status::peer_failed, "peer_status");
        expect_status(b.send_notif(p, "anyone?"), status::peer_failed, "send_notif to the dead peer");
        b.release(w);
        b.release(r);
        b.unload_remote(p);
        // The CUDA context took no harm.
        void* probe_mem = nullptr;
        check(cudaMalloc(&probe_mem, 1 << 20), "cudaMalloc after the peer died");
        check(cudaMemset(probe_mem, 1, 1 << 20), "cudaMemset after the peer died");
        check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after the peer died");
        cudaFree(probe_mem);
    };
    auto target = [](side& s) {
        inline_cuda b(s.config("target"));
        memory_pair<inline_cuda> m(b);
        publish(b, m, s.ch);
        serve_until(b, s.ch);
        s.ch.expect_message("die");
        ::_exit(0);  // without closing anything, as a crash would
    };
    ferry_test::run_two_process("all", initiator, target);
}

TEST_CASE("memory::cuda with a UCX that has no CUDA support fails with a message naming what is needed") {
    const auto& p = probe();
    if (p.result == probe_result::no_device) return ferry_test::skip("no CUDA device");
    if (p.result == probe_result::ready)
        return ferry_test::skip("this UCX has CUDA support, so its refusal cannot be shown here");
    CHECK(p.result == probe_result::ucx_without_cuda);
    CHECK_THAT(p.message, Catch::Matchers::Contains("ucx_backend<memory::cuda>: UCX ") &&
                              Catch::Matchers::Contains("needs a UCX >= 1.18 built with CUDA"));
}

TEST_CASE("the copy kernel's chunk table covers every pair's bytes once, runs in chunks of several pairs") {
    // No GPU needed: the table is planned on the host. Each row is applied
    // here as the kernel applies it, to host buffers standing in for device
    // memory, and the result compared with a pair-by-pair copy.
    using ferry::detail::cuda::copy_chunk;
    using ferry::detail::cuda::copy_pair;
    std::vector<std::byte> src(4 << 20), want(4 << 20), got(4 << 20);
    for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<std::byte>(i * 131 + 7);
    const auto s = reinterpret_cast<std::uint64_t>(src.data());
    const auto d = reinterpret_cast<std::uint64_t>(got.data());
    const std::vector<copy_pair> pairs{
        {s, d, 100'000},                                  // one pair, split into chunks
        {s + 200'000, d + 200'000, 4096, 8192, 4096, 300},  // 4 KiB pairs, a chunk holds several
        {s + 3'000'000, d + 1'500'000, 48, 0, 64, 2000},  // one block to many, 48 B apart
        {s + 2'500'000, d + 2'000'000, 70'000, 80'000, 90'000, 3},  // pairs longer than a chunk
        {s + 13, d + 3'000'001, 5, 7, 11, 1000},          // unaligned
    };
    // 1.6 MB: one multiprocessor takes 64 KiB chunks, 132 take 4 KiB ones.
    // Rows: 2 + 19 (16 pairs of 4 KiB a chunk) + 2 (1365 pairs of 48 B) + 3 x 2 + 1 at 64 KiB;
    // 25 + 300 + 24 (85 of 48 B) + 3 x 18 + 2 (819 of 5 B) at 4 KiB.
    for (const auto& [sms, rows] : {std::pair{1, 30U}, std::pair{132, 405U}}) {
        INFO(sms << " multiprocessors");
        const std::vector<copy_chunk> chunks = ferry::detail::cuda::plan_chunks(pairs, sms);
        std::fill(want.begin(), want.end(), std::byte{0});
        std::fill(got.begin(), got.end(), std::byte{0});
        for (const copy_pair& p : pairs)
            for (std::uint64_t k = 0; k < p.count; ++k)
                std::memcpy(want.data() + (p.dst + k * p.dst_stride - d),
                            reinterpret_cast<const void*>(p.src + k * p.src_stride), p.len);
        std::size_t rows_of_many = 0;
        for (const copy_chunk& c : chunks) {
            REQUIRE(c.count >= 1);
            if (c.count > 1) {
                ++rows_of_many;
                CHECK(c.len * c.count <= 65536);  // what the kernel indexes in 32 bits
            }
            for (std::uint64_t k = 0; k < c.count; ++k)
                std::memcpy(reinterpret_cast<void*>(c.dst + k * c.dst_stride),
                            reinterpret_cast<const void*>(c.src + k * c.src_stride), c.len);
        }
        CHECK(std::memcmp(got.data(), want.data(), got.size()) == 0);
        CHECK(rows_of_many > 0);
        CHECK(chunks.size() == rows);
    }
}

TEST_CASE("pairs that are each one chunk are their own table, row for row as the plan would write it") {
    // No GPU needed. A plain list of blocks no longer than a chunk, and runs
    // that fit one, are uploaded as they are (pairs_are_chunks); anything
    // the plan would cut or reshape is not.
    using ferry::detail::cuda::chunk_bytes;
    using ferry::detail::cuda::copy_chunk;
    using ferry::detail::cuda::copy_pair;
    using ferry::detail::cuda::pairs_are_chunks;
    using ferry::detail::cuda::plan_chunks;
    auto same_rows = [](const std::vector<copy_pair>& pairs, int sms) {
        const std::vector<copy_chunk> chunks = plan_chunks(pairs, sms);
        return chunks.size() == pairs.size() &&
               std::memcmp(chunks.data(), pairs.data(), pairs.size() * sizeof(copy_chunk)) == 0;
    };
    std::vector<copy_pair> plain;
    for (std::uint64_t i = 0; i < 1000; ++i) plain.push_back({i * 8192, (1ULL << 32) + i * 4096, 4096});
    // Runs of at most 4 KiB, the smallest chunk.
    const std::vector<copy_pair> runs{{0, 1ULL << 32, 1024, 8192, 1024, 4}, {1 << 20, 1ULL << 33, 1000, 3000, 1000, 4}};
    for (const int sms : {1, 132}) {
        INFO(sms << " multiprocessors");
        CHECK(pairs_are_chunks(plain, chunk_bytes(plain, sms)));
        CHECK(same_rows(plain, sms));
        CHECK(pairs_are_chunks(runs, chunk_bytes(runs, sms)));
        CHECK(same_rows(runs, sms));
    }
    // Cut or reshaped by the plan: longer than the largest chunk, a run of
    // more 4 KiB pairs than the largest chunk holds, a single pair carrying
    // strides.
    const std::vector<copy_pair> long_pair{{0, 1ULL << 32, 100'000}};
    const std::vector<copy_pair> long_run{{0, 1ULL << 32, 4096, 8192, 4096, 17}};
    const std::vector<copy_pair> strided_single{{0, 1ULL << 32, 4096, 8192, 4096, 1}};
    for (const auto* pairs : {&long_pair, &long_run, &strided_single}) {
        CHECK_FALSE(pairs_are_chunks(*pairs, chunk_bytes(*pairs, 1)));
        CHECK_FALSE(same_rows(*pairs, 1));
    }
}
