// GPU-initiated transfers (ferry/device.cuh) between two real processes on
// one GPU: a producer kernel writes layers of blocks into the peer's GPU
// memory with device puts and signals each layer; the consumer's kernel
// waits for each layer, checks it, and acknowledges the round with a signal
// back; the hosts check every byte at the end. Also: what device_view and
// device_signal refuse, and a peer that exits while its memory is mapped.
//
// The kernels are in test_device_kernels.cu (nvcc). Every GPU test skips,
// naming what is missing, without a CUDA device or a UCX built with CUDA;
// the NVRTC one needs neither.

#include <ferry/cuda.hpp>

#include <catch2/catch.hpp>

#include "support/child_output.hpp"
#include "support/cuda_probe.hpp"
#include "support/device_kernels.hpp"
#include "support/ferry_catch.hpp"
#include "support/two_process.hpp"

#include <cuda_runtime_api.h>
#include <nvrtc.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

using ferry::status;
using ferry::xfer_op;
using ferry::xfer_path;
using ferry_test::expect;
using ferry_test::fail;
using ferry_test::gpu_ready;
using ferry_test::side;
namespace kernels = ferry_test::device;
using kernels::word;

namespace {

using inline_cuda = ferry::ucx_backend<ferry::policy<ferry::progress::inline_poll, ferry::memory::cuda>>;
using thread_cuda = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::cuda>>;

void check(cudaError_t e, const std::string& what) {
    if (e != cudaSuccess) fail(what + ": " + cudaGetErrorString(e));
}

constexpr std::byte untouched{0xA5};

// A descriptor list of one.
std::vector<ferry::desc> one(ferry::desc d) { return {d}; }
constexpr word seconds_ns = 1'000'000'000ULL;

// Fails naming `what` unless f throws ferry::error with status `want` and a
// message that contains `text`.
void expect_refusal(const std::function<void()>& f, status want, const std::string& text, const std::string& what) {
    try {
        f();
    } catch (const ferry::error& e) {
        const std::string msg = e.what();
        if (e.code_status() != want || msg.find(text) == std::string::npos)
            fail(what + ": threw " + ferry_test::str(e.code_status()) + " '" + msg + "', expected " +
                 ferry_test::str(want) + " with '" + text + "'");
        return;
    }
    fail(what + ": did not throw");
}

// Kernel results in device memory, zeroed, read back by the host.
struct outcome_on_gpu {
    outcome_on_gpu() {
        void* at = nullptr;
        check(cudaMalloc(&at, sizeof *p), "cudaMalloc(outcome)");
        p = static_cast<kernels::outcome*>(at);
        check(cudaMemset(p, 0, sizeof *p), "cudaMemset(outcome)");
    }
    ~outcome_on_gpu() { cudaFree(p); }
    outcome_on_gpu(const outcome_on_gpu&) = delete;
    outcome_on_gpu& operator=(const outcome_on_gpu&) = delete;
    [[nodiscard]] kernels::outcome read() const {
        kernels::outcome o{};
        check(cudaMemcpy(&o, p, sizeof o, cudaMemcpyDeviceToHost), "cudaMemcpy(outcome)");
        return o;
    }
    kernels::outcome* p = nullptr;
};

struct stream {
    stream() { check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"); }
    ~stream() { cudaStreamDestroy(s); }
    stream(const stream&) = delete;
    stream& operator=(const stream&) = delete;
    cudaStream_t s = nullptr;
};

// The blocks of one run: `count` blocks of `len` bytes, `stride` apart in
// the consumer's memory, packed in the producer's.
struct layout {
    word len;
    word stride;
    kernels::plan plan;
    [[nodiscard]] word count() const { return plan.layers * plan.per_layer; }
    [[nodiscard]] std::size_t consumer_bytes() const { return static_cast<std::size_t>(count() * stride); }
    [[nodiscard]] std::size_t producer_bytes() const { return static_cast<std::size_t>(count() * len); }
};

// What the consumer publishes after its metadata: where its blocks and its
// counter are.
struct consumer_addresses {
    std::uint64_t blocks;
    std::uint64_t counter;
};

template <class Backend>
void run_layers(const layout& l) {
    auto producer = [l](side& s) {
        Backend b(s.config("producer"));
        auto src = b.allocate(l.producer_bytes(), 0);
        ferry::device::counter acks(1, 0);
        auto acks_region = b.register_memory(acks.data(), acks.size(), acks.dev());
        const ferry::peer p = b.load_remote(s.ch.recv_bytes());
        const auto at = s.ch.recv_u64s();
        s.ch.send(b.local_metadata());
        s.ch.send_u64s(std::vector<std::uint64_t>{acks.descriptor().addr});
        std::vector<ferry::desc> local, remote;
        for (word i = 0; i < l.count(); ++i) {
            local.push_back(src.slice(static_cast<std::size_t>(i * l.len), static_cast<std::size_t>(l.len)));
            remote.push_back({static_cast<std::uintptr_t>(at[0] + i * l.stride), l.len, 0});
        }
        // One block per descriptor, even where blocks are adjacent.
        const ferry::xfer_options separate{.path = xfer_path::cuda_ipc, .coalesce = false};
        const ferry::xfer x = b.prepare(xfer_op::write, local, remote, p, separate);
        const ferry::device::view v = b.device_view(x);
        expect(v.count == l.count() && v.count == b.blocks_of(x), "the view has " + std::to_string(v.count) +
                                                                      " blocks, expected " +
                                                                      std::to_string(l.count()));
        expect(b.device_view(x).blocks == v.blocks, "a second device_view built another table");
        const ferry::device::signal sig =
            b.device_signal(p, {static_cast<std::uintptr_t>(at[1]), 8 * l.plan.layers, 0});
        expect(sig.count == l.plan.layers, "the signal has " + std::to_string(sig.count) + " counters");
        s.ch.expect_message("consumer running");
        stream st;
        outcome_on_gpu out;
        check(kernels::produce_layers(v, sig, acks.ref(), l.plan, out.p, st.s), "produce_layers");
        check(cudaStreamSynchronize(st.s), "the producer kernel");
        const auto o = out.read();
        expect(o.timeouts == 0, "the producer timed out waiting for an acknowledgement");
        s.ch.expect_message("consumer done");
        expect(acks.value(0) == l.plan.rounds * l.plan.per_layer,
               "acknowledgements: " + std::to_string(acks.value(0)));
        b.release(x);
        s.ch.send("bye");
    };
    auto consumer = [l](side& s) {
        Backend b(s.config("consumer"));
        auto dst = b.allocate(l.consumer_bytes(), 0);
        check(cudaMemset(dst.data(), static_cast<int>(untouched), l.consumer_bytes()), "cudaMemset");
        ferry::device::counter count(static_cast<std::size_t>(l.plan.layers), 0);  // one per layer
        auto count_region = b.register_memory(count.data(), count.size(), count.dev());
        s.ch.send(b.local_metadata());
        s.ch.send_u64s(
            std::vector<std::uint64_t>{reinterpret_cast<std::uintptr_t>(dst.data()), count.descriptor().addr});
        const ferry::peer p = b.load_remote(s.ch.recv_bytes());
        const auto acks_at = s.ch.recv_u64s();
        const ferry::device::signal ack = b.device_signal(p, {static_cast<std::uintptr_t>(acks_at[0]), 8, 0});
        stream st;
        outcome_on_gpu out;
        check(kernels::consume_layers(count.ref(), ack, static_cast<const unsigned char*>(dst.data()), l.stride,
                                      l.len, l.plan, out.p, st.s),
              "consume_layers");
        s.ch.send("consumer running");
        check(cudaStreamSynchronize(st.s), "the consumer kernel");
        const auto o = out.read();
        expect(o.timeouts == 0, "the consumer timed out waiting for a layer");
        expect(o.bad_bytes == 0, std::to_string(o.bad_bytes) + " bytes were wrong when their layer's signal was seen");
        for (word layer = 0; layer < l.plan.layers; ++layer)
            expect(count.value(layer) == l.plan.rounds * l.plan.per_layer,
                   "layer " + std::to_string(layer) + "'s count is " + std::to_string(count.value(layer)));
        // Every byte, as the host sees it: the last round in the blocks, the gaps untouched.
        std::vector<unsigned char> seen(l.consumer_bytes());
        check(cudaMemcpy(seen.data(), dst.data(), seen.size(), cudaMemcpyDeviceToHost), "cudaMemcpy");
        const word last = l.plan.rounds - 1;
        for (word i = 0; i < l.count(); ++i)
            for (word k = 0; k < l.stride; ++k) {
                const unsigned char want =
                    k < l.len ? kernels::layer_byte(last, i, k) : static_cast<unsigned char>(untouched);
                if (seen[i * l.stride + k] != want)
                    fail("block " + std::to_string(i) + " byte " + std::to_string(k) + " is " +
                         std::to_string(seen[i * l.stride + k]) + ", expected " + std::to_string(want));
            }
        s.ch.send("consumer done");
        s.ch.expect_message("bye");
    };
    ferry_test::run_two_process("all", producer, consumer, std::chrono::seconds(240));
}

}  // namespace

TEST_CASE("ferry/device.cuh compiles with NVRTC, as a user's run-time kernel would include it") {
    const char* source = R"(
#include <ferry/device.cuh>
namespace fd = ferry::device;
extern "C" __global__ void user_kernel(fd::view v, fd::signal s, fd::counter_ref c, unsigned long long* ok) {
    fd::wait(c, 0, 1);
    fd::copy(v, blockIdx.x);
    fd::copy_warp(v, blockIdx.x);
    fd::notify(s, 1);
    fd::notify_thread(s, 0, 2);
    *ok = fd::wait_for(c, 1, 2, 1000) + fd::load(c, 0);
}
)";
    // NVRTC (CUDA 13) initialises CUDA in the process that runs it, and CUDA
    // does not survive fork: after it ran here, the peers that the GPU cases
    // fork from this process found no device. So it runs in a child.
    for (const char* checks : {"-DFERRY_DEVICE_CHECKS=1", "-DNDEBUG"}) {
        const ferry_test::child_result child = ferry_test::in_child([&] {
            nvrtcProgram program = nullptr;
            nvrtcResult r = nvrtcCreateProgram(&program, source, "user_kernel.cu", 0, nullptr, nullptr);
            std::string log = "nvrtcCreateProgram failed";
            if (r == NVRTC_SUCCESS) {
                const std::string include = std::string("-I") + FERRY_INCLUDE_DIR;
                const char* options[] = {"--gpu-architecture=compute_75", "--std=c++17", include.c_str(), checks};
                r = nvrtcCompileProgram(program, 4, options);
                std::size_t size = 0;
                nvrtcGetProgramLogSize(program, &size);
                log.assign(size, '\0');
                nvrtcGetProgramLog(program, log.data());
                nvrtcDestroyProgram(&program);
            }
            log.insert(log.begin(), r == NVRTC_SUCCESS ? 'y' : 'n');
            return std::pair{0, log};
        });
        const std::string& got = child.output;
        REQUIRE(child.exited);
        REQUIRE_FALSE(got.empty());
        INFO(checks << ": " << got.substr(1));
        CHECK(got[0] == 'y');
    }
}

TEST_CASE("device puts: every layer a kernel writes is complete when the peer's kernel sees its signal") {
    if (!gpu_ready()) return;
    SECTION("4 KiB blocks, 16-byte copies, 1000 rounds") {
        run_layers<inline_cuda>({4096, 8192, {1000, 4, 8, 20 * seconds_ns}});
    }
    SECTION("1000-byte blocks at odd offsets, byte copies, 200 rounds") {
        run_layers<inline_cuda>({1000, 3001, {200, 3, 5, 20 * seconds_ns}});
    }
    SECTION("progress::thread: the view and the signals taken on the application's thread, 100 rounds") {
        run_layers<thread_cuda>({4096, 4096, {100, 2, 16, 20 * seconds_ns}});
    }
}

TEST_CASE("device_view and device_signal refuse what a kernel must not reach") {
    if (!gpu_ready()) return;
    auto initiator = [](side& s) {
        inline_cuda b(s.config("initiator"));
        auto dev = b.allocate(1 << 20, 0);
        auto host = b.allocate_host(1 << 20);
        const auto blob = s.ch.recv_bytes();
        const ferry::peer p = b.load_remote(blob);
        const auto at = s.ch.recv_u64s();  // device region, host region, counter
        const std::uintptr_t there = at[0], there_host = at[1], counter = at[2];
        const ferry::desc here{reinterpret_cast<std::uintptr_t>(dev.data()), 4096, 0};
        const ferry::desc here_host{reinterpret_cast<std::uintptr_t>(host.data()), 4096, 0};

        const ferry::xfer on_ucx = b.prepare(xfer_op::write, one(here), one({there, 4096, 0}), p, xfer_path::ucx);
        expect_refusal([&] { (void)b.device_view(on_ucx); }, status::invalid_argument,
                       "prepared on path ucx, not cuda_ipc", "device_view of a transfer on ucx");
        const ferry::xfer host_to_host = b.prepare(xfer_op::write, one(here_host), one({there_host, 4096, 0}), p);
        expect(b.path_of(host_to_host) == xfer_path::host_ipc, "host to host memory is not on host_ipc");
        expect_refusal([&] { (void)b.device_view(host_to_host); }, status::invalid_argument,
                       "prepared on path host_ipc, not cuda_ipc", "device_view of host memory to host memory");
        const ferry::xfer ok = b.prepare(xfer_op::read, one(here), one({there, 4096, 0}), p);
        const ferry::device::view v = b.device_view(ok);
        expect(v.count == 1 && v.blocks != nullptr, "a cuda_ipc transfer's view is empty");
        ferry::device::block first{};
        check(cudaMemcpy(&first, v.blocks, sizeof first, cudaMemcpyDeviceToHost), "cudaMemcpy(block)");
        expect(first.dst == here.addr && first.len == 4096, "a READ's block does not land in local memory");
        b.release(ok);
        expect_refusal([&] { (void)b.device_view(ok); }, status::invalid_argument, "unknown or released",
                       "device_view of a released transfer");
        // Strided lists, which cuda_ipc keeps as runs: a row per block all the same.
        {
            const std::uintptr_t mine = here.addr;
            const std::vector<ferry::strided_desc> local{{mine, 1024, 0, 2048, 16}};
            const std::vector<ferry::strided_desc> remote{{there, 1024, 0, 4096, 8},
                                                          {there + 65536, 1024, 0, 1024, 8}};
            const ferry::xfer x = b.prepare(xfer_op::write, local, remote, p);
            const ferry::device::view sv = b.device_view(x);
            expect(sv.count == 16 && b.blocks_of(x) == 16, "a strided view has " + std::to_string(sv.count) +
                                                               " blocks, expected 16");
            std::vector<ferry::device::block> rows(16);
            check(cudaMemcpy(rows.data(), sv.blocks, 16 * sizeof rows[0], cudaMemcpyDeviceToHost), "cudaMemcpy");
            for (std::size_t k = 0; k < 16; ++k) {
                const std::uint64_t offset = k < 8 ? k * 4096 : 65536 + (k - 8) * 1024;
                expect(rows[k].src == mine + k * 2048 && rows[k].len == 1024 &&
                           rows[k].dst - rows[0].dst == offset,
                       "strided view block " + std::to_string(k) + " is out of place");
            }
            b.release(x);
        }

        const auto signal_at = [&](ferry::peer to, ferry::desc d) {
            return [&b, to, d] { (void)b.device_signal(to, d); };
        };
        expect_refusal(signal_at(p, {counter, 4, 0}), status::invalid_argument,
                       "4 bytes are not a whole number of them", "a 4-byte counter");
        expect_refusal(signal_at(p, {there + 4, 8, 0}), status::invalid_argument, "not aligned to 8 bytes",
                       "a misaligned counter");
        expect_refusal(signal_at(p, {8, 8, 0}), status::not_registered,
                       "is not inside any region that peer 'target' published", "a counter nowhere published");
        expect_refusal(signal_at(p, {there_host, 8, 0}), status::invalid_argument, "is not CUDA device memory",
                       "a counter in host memory");
        auto md = ferry::detail::decode_metadata(blob);
        md.name = "target-elsewhere";
        md.host_id = "0b0e1d2c-3a4f-4b5c-8d6e-7f8091a2b3c4";
        const ferry::peer elsewhere = b.load_remote(ferry::detail::encode_metadata(md));
        expect_refusal(signal_at(elsewhere, {counter, 8, 0}), status::invalid_argument, "runs on another host",
                       "a counter of a peer on another host");
        const ferry::device::signal sig = b.device_signal(p, {counter, 8, 0});
        expect(sig.counters != nullptr && sig.count == 1, "a published counter has no mapped address");
        // A kernel names blocks by index only; past the end, a checked build traps.
        const ferry::xfer last = b.prepare(xfer_op::write, one(here), one({there, 4096, 0}), p);
        const ferry::device::view lv = b.device_view(last);
        {
            stream st;
            check(kernels::copy_block(lv, lv.count - 1, st.s), "copy_block");
            check(cudaStreamSynchronize(st.s), "copying the view's last block");
            b.unload_remote(p);
            expect_refusal(signal_at(p, {counter, 8, 0}), status::no_such_peer, "unknown or was unloaded",
                           "a counter of an unloaded peer");
            check(kernels::copy_block(lv, lv.count, st.s), "copy_block");
            expect(cudaStreamSynchronize(st.s) != cudaSuccess, "copying the block past the view's end did not trap");
        }
        s.ch.send("bye");
        // The trap poisoned this process's context: end without tearing down.
        ::_exit(0);
    };
    auto target = [](side& s) {
        inline_cuda b(s.config("target"));
        auto dev = b.allocate(1 << 20, 0);
        auto host = b.allocate_host(1 << 20);
        ferry::device::counter count(1, 0);
        auto count_region = b.register_memory(count.data(), count.size(), count.dev());
        s.ch.send(b.local_metadata());
        s.ch.send_u64s(std::vector<std::uint64_t>{reinterpret_cast<std::uintptr_t>(dev.data()),
                                                  reinterpret_cast<std::uintptr_t>(host.data()),
                                                  count.descriptor().addr});
        s.ch.expect_message("bye");
    };
    ferry_test::run_two_process("all", initiator, target);
}

TEST_CASE("a peer that exits while mapped: a kernel's timed wait gives up, the host sees the peer fail") {
    if (!gpu_ready()) return;
    auto survivor = [](side& s) {
        inline_cuda b(s.config("survivor"));
        auto src = b.allocate(1 << 16, 0);
        ferry::device::counter mine(1, 0);  // the peer's kernels would add to it; it dies first
        const ferry::peer p = b.load_remote(s.ch.recv_bytes());
        const auto at = s.ch.recv_u64s();  // blocks, counter
        const ferry::desc here{reinterpret_cast<std::uintptr_t>(src.data()), 4096, 0};
        const ferry::desc there{static_cast<std::uintptr_t>(at[0]), 4096, 0};
        const ferry::xfer x = b.prepare(xfer_op::write, one(here), one(there), p, xfer_path::cuda_ipc);
        const ferry::device::view v = b.device_view(x);
        const ferry::device::signal sig = b.device_signal(p, {static_cast<std::uintptr_t>(at[1]), 8, 0});
        const kernels::plan one{1, 1, 1, 5 * seconds_ns};
        stream st;
        outcome_on_gpu out;
        check(kernels::produce_layers(v, sig, mine.ref(), one, out.p, st.s), "produce_layers");
        check(cudaStreamSynchronize(st.s), "the producer kernel");
        s.ch.send("sent");
        s.ch.expect_closed();  // the peer exited without closing anything
        // A kernel that waits for a signal from the dead peer gives up.
        const auto t0 = std::chrono::steady_clock::now();
        check(kernels::wait_once(mine.ref(), 1, 2 * seconds_ns, out.p, st.s), "wait_once");
        check(cudaStreamSynchronize(st.s), "the waiting kernel");
        expect(out.read().timeouts == 1, "the wait for a dead peer did not time out");
        expect(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30), "the timed wait took too long");
        // The host learns of it through ferry's peer events.
        ferry_test::patience patience(std::chrono::seconds(20));
        bool failed = false;
        while (!failed) {
            patience.check("the peer's failure event");
            for (const auto& e : b.take_peer_events()) failed = failed || e.kind == ferry::peer_event_kind::failed;
            if (!failed) ::usleep(1000);
        }
        ferry_test::expect_status(b.peer_status(p), status::peer_failed, "peer_status");
        // A kernel that still writes into the dead peer's memory and signals
        // it writes what the mapping keeps alive (cuda_ipc copies do the
        // same, see test_cuda): it completes, and the context takes no harm.
        check(kernels::produce_layers(v, sig, mine.ref(), one, out.p, st.s), "produce_layers after death");
        check(cudaStreamSynchronize(st.s), "a producer kernel into a dead peer's memory");
        b.release(x);
        void* probe_mem = nullptr;
        check(cudaMalloc(&probe_mem, 1 << 20), "cudaMalloc after the peer died");
        check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after the peer died");
        cudaFree(probe_mem);
    };
    auto dying = [](side& s) {
        inline_cuda b(s.config("dying"));
        auto dst = b.allocate(1 << 16, 0);
        ferry::device::counter count(1, 0);
        auto count_region = b.register_memory(count.data(), count.size(), count.dev());
        s.ch.send(b.local_metadata());
        s.ch.send_u64s(
            std::vector<std::uint64_t>{reinterpret_cast<std::uintptr_t>(dst.data()), count.descriptor().addr});
        s.ch.expect_message("sent");
        expect(count.value(0) == 1, "the layer's signal did not arrive");
        ::_exit(0);  // without closing anything, as a crash would
    };
    ferry_test::run_two_process("all", survivor, dying);
}
