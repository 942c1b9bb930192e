// ferry-device-demo: GPU-initiated transfers. Two processes on one GPU; the
// producer's kernel computes "KV blocks" layer by layer and writes each
// layer into the consumer's GPU memory with device puts, signalling after
// each layer; the consumer's kernel waits for each layer's signal and
// checks it as it arrives; the hosts only set up and check every byte at
// the end. --timing measures kernel-initiated put + signal (latency and
// 1024-block bandwidth) against host-initiated cuda_ipc posts of the same
// transfers. Needs a CUDA device and a UCX built with CUDA; exits 0 with a
// message where there is no GPU.
#include <ferry/cuda.hpp>

#include "ferry_device_demo.hpp"

#include <cuda_runtime_api.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

using backend = ferry::ucx_backend<ferry::policy<ferry::progress::inline_poll, ferry::memory::cuda>>;
using demo::word;
constexpr word timeout_ns = 20'000'000'000ULL;

struct options {
    std::size_t layers = 32;
    std::size_t per_layer = 16;
    std::size_t block_size = 4096;
    bool timing = false;
    std::size_t iterations = 1000;
    std::size_t reps = 20;
};

void usage(const char* argv0) {
    std::printf(
        "usage: %s [--layers N] [--blocks-per-layer M] [--block-size BYTES] [--timing [--iterations N] [--reps N]]\n"
        "\n"
        "Forks a producer and a consumer on CUDA device 0. The producer's kernel\n"
        "writes N layers of M KV blocks into the consumer's GPU memory with device\n"
        "puts and a signal per layer; the consumer's kernel checks each layer once\n"
        "its signal arrives; both hosts check every byte at the end.\n"
        "\n"
        "  --layers N            layers (default 32)\n"
        "  --blocks-per-layer M  blocks per layer, one producer thread block each (default 16)\n"
        "  --block-size BYTES    bytes per block (default 4096)\n"
        "  --timing              also measure: one 4 KiB put + signal seen by the peer's\n"
        "                        waiting kernel (half a kernel-to-kernel round trip), and\n"
        "                        1024 x 4 KiB from one kernel launch, each against\n"
        "                        host-initiated cuda_ipc posts of the same transfer\n"
        "  --iterations N        round trips for the latency (default 1000)\n"
        "  --reps N              repetitions of each bandwidth figure; the median is shown (default 20)\n"
        "  --help                this text\n",
        argv0);
}

std::size_t parse_size(const char* flag, const char* text) {
    char* end = nullptr;
    errno = 0;
    unsigned long long v = std::strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v == 0 || text[0] == '-')
        throw std::invalid_argument(std::string(flag) + ": expected a positive integer, got '" + text + "'");
    return static_cast<std::size_t>(v);
}

options parse(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) throw std::invalid_argument(std::string(a) + ": missing value");
            return argv[++i];
        };
        if (a == "--help" || a == "-h") {
            usage(argv[0]);
            std::exit(0);
        } else if (a == "--layers") {
            o.layers = parse_size("--layers", value());
        } else if (a == "--blocks-per-layer") {
            o.per_layer = parse_size("--blocks-per-layer", value());
        } else if (a == "--block-size") {
            o.block_size = parse_size("--block-size", value());
        } else if (a == "--timing") {
            o.timing = true;
        } else if (a == "--iterations") {
            o.iterations = parse_size("--iterations", value());
        } else if (a == "--reps") {
            o.reps = parse_size("--reps", value());
        } else {
            throw std::invalid_argument("unknown option '" + std::string(a) + "' (try --help)");
        }
    }
    if (o.per_layer > 65535) throw std::invalid_argument("--blocks-per-layer: at most 65535");
    if (o.layers * o.per_layer > (std::size_t{1} << 20))
        throw std::invalid_argument("--layers x --blocks-per-layer: at most 1048576");
    if (o.block_size > (std::size_t{1} << 30) / (o.layers * o.per_layer))
        throw std::invalid_argument("--layers x --blocks-per-layer x --block-size: at most 1 GiB in all");
    return o;
}

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Small messages over a socketpair: a length, then the bytes.
void send_bytes(int fd, std::span<const std::byte> bytes) {
    std::uint64_t n = bytes.size();
    if (write(fd, &n, sizeof n) != sizeof n ||
        write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))
        throw std::runtime_error("exchange: write failed");
}

std::vector<std::byte> recv_bytes(int fd) {
    std::uint64_t n = 0;
    if (read(fd, &n, sizeof n) != sizeof n || n > (1U << 26)) throw std::runtime_error("exchange: peer closed");
    std::vector<std::byte> out(n);
    for (std::size_t got = 0; got < n;) {
        auto r = read(fd, out.data() + got, n - got);
        if (r <= 0) throw std::runtime_error("exchange: peer closed");
        got += static_cast<std::size_t>(r);
    }
    return out;
}

void send_word(int fd, std::uint64_t v) { send_bytes(fd, std::as_bytes(std::span(&v, 1))); }

std::uint64_t recv_word(int fd) {
    auto b = recv_bytes(fd);
    std::uint64_t v = 0;
    if (b.size() != sizeof v) throw std::runtime_error("exchange: not a word");
    std::memcpy(&v, b.data(), sizeof v);
    return v;
}

struct stream {
    stream() { check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"); }
    ~stream() { cudaStreamDestroy(s); }
    stream(const stream&) = delete;
    stream& operator=(const stream&) = delete;
    cudaStream_t s = nullptr;
};

struct report_on_gpu {
    report_on_gpu() {
        void* at = nullptr;
        check(cudaMalloc(&at, sizeof *p), "cudaMalloc");
        p = static_cast<demo::report*>(at);
        check(cudaMemset(p, 0, sizeof *p), "cudaMemset");
    }
    ~report_on_gpu() { cudaFree(p); }
    report_on_gpu(const report_on_gpu&) = delete;
    report_on_gpu& operator=(const report_on_gpu&) = delete;
    demo::report read() const {
        demo::report r{};
        check(cudaMemcpy(&r, p, sizeof r, cudaMemcpyDeviceToHost), "cudaMemcpy");
        return r;
    }
    demo::report* p = nullptr;
};

// What each side has: GPU memory for its own blocks ([0, bytes)) and for
// the peer's ([bytes, 2 bytes)), `counters` counters that the peer signals,
// and the peer's counters.
struct side {
    side(const char* name, std::size_t bytes, std::size_t counters, int fd)
        : b(ferry::ucx_config{name, {}}),
          mem(b.allocate(2 * bytes, 0)),
          count(counters, 0),
          count_region(b.register_memory(count.data(), count.size(), count.dev())),
          bytes(bytes) {
        check(cudaMemset(mem.data(), 0, 2 * bytes), "cudaMemset");
        send_bytes(fd, b.local_metadata());
        send_word(fd, reinterpret_cast<std::uintptr_t>(mem.data()));
        send_word(fd, count.descriptor().addr);
        send_word(fd, count.size());
        peer = b.load_remote(recv_bytes(fd));
        peer_mem = recv_word(fd);
        const auto peer_counters = static_cast<std::uintptr_t>(recv_word(fd));
        peer_signal = b.device_signal(peer, {peer_counters, static_cast<std::size_t>(recv_word(fd)), 0});
    }

    // A WRITE of `n` blocks of `len` bytes from our side into the peer's landing area.
    ferry::xfer prepare(std::size_t n, std::size_t len) {
        std::vector<ferry::desc> local, remote;
        for (std::size_t i = 0; i < n; ++i) {
            local.push_back(mem.slice(i * len, len));
            remote.push_back({static_cast<std::uintptr_t>(peer_mem + bytes + i * len), len, 0});
        }
        // One view block per descriptor: without coalescing, adjacent blocks stay apart.
        return b.prepare(ferry::xfer_op::write, local, remote, peer,
                         ferry::xfer_options{.path = ferry::xfer_path::cuda_ipc, .coalesce = false});
    }

    backend b;
    ferry::region mem;
    ferry::device::counter count;
    ferry::region count_region;
    std::size_t bytes;
    ferry::peer peer{};
    std::uint64_t peer_mem = 0;
    ferry::device::signal peer_signal{};
};

// Each side's share of its memory: the layers, or the timing's 1024 x 4 KiB if more.
std::size_t side_bytes(const options& o) {
    return std::max(o.layers * o.per_layer * o.block_size, std::size_t{1024 * 4096});
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Host-initiated: post and wait, `reps` times; the median in seconds.
double host_post(backend& b, ferry::xfer x, std::size_t reps) {
    std::vector<double> t;
    for (std::size_t r = 0; r < reps + 1; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        auto s = b.post(x);
        if (s == ferry::status::in_progress) s = b.wait(x, std::chrono::seconds(20));
        if (s != ferry::status::ok) throw std::runtime_error("post: " + std::string(ferry::to_string(s)));
        if (r > 0) t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return median(t);
}

int run_producer(int fd, const options& o) {
    const std::size_t blocks = o.layers * o.per_layer, bytes = side_bytes(o);
    side me("producer", bytes, 1, fd);  // counter 0: the consumer's answers in the latency run
    const ferry::xfer layers = me.prepare(blocks, o.block_size);
    stream st;
    check(demo::produce(me.b.device_view(layers), me.peer_signal, o.layers, o.per_layer, st.s), "produce");
    check(cudaStreamSynchronize(st.s), "the producer kernel");
    // The host's check: our own blocks, as the kernel computed them.
    std::vector<unsigned char> seen(blocks * o.block_size);
    check(cudaMemcpy(seen.data(), me.mem.data(), seen.size(), cudaMemcpyDeviceToHost), "cudaMemcpy");
    std::size_t bad = 0;
    for (std::size_t i = 0; i < blocks; ++i)
        for (std::size_t k = 0; k < o.block_size; ++k)
            bad += seen[i * o.block_size + k] != demo::kv_byte(i / o.per_layer, i, k) ? 1 : 0;
    std::printf("producer: %zu layers x %zu blocks x %zu B written by one kernel, a signal per layer and block%s\n",
                o.layers, o.per_layer, o.block_size, bad ? "; SOURCE WRONG" : "");
    send_word(fd, 1);  // the layers are out
    if (recv_word(fd) != 0) return 1;
    if (o.timing) {
        const ferry::xfer one = me.prepare(1, 4096), many = me.prepare(1024, 4096);
        report_on_gpu rep;
        send_word(fd, 2);  // the consumer starts pong
        check(demo::ping(me.b.device_view(one), me.peer_signal, o.layers, me.count.ref(), 0, o.iterations, timeout_ns,
                         rep.p, st.s),
              "ping");
        check(cudaStreamSynchronize(st.s), "the ping kernel");
        const auto r = rep.read();
        if (r.timeouts) throw std::runtime_error("ping: the peer's kernel did not answer");
        const double kernel_lat = static_cast<double>(r.elapsed_ns) / static_cast<double>(o.iterations) / 2;
        const double host_lat = host_post(me.b, one, o.iterations) * 1e9;
        cudaEvent_t e0, e1;
        check(cudaEventCreate(&e0), "cudaEventCreate");
        check(cudaEventCreate(&e1), "cudaEventCreate");
        const ferry::device::view v = me.b.device_view(many);
        std::vector<double> t;
        for (std::size_t k = 0; k < o.reps + 1; ++k) {
            check(cudaEventRecord(e0, st.s), "cudaEventRecord");
            check(demo::burst(v, me.peer_signal, o.layers, st.s), "burst");
            check(cudaEventRecord(e1, st.s), "cudaEventRecord");
            check(cudaEventSynchronize(e1), "the burst kernel");
            float ms = 0;
            check(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
            if (k > 0) t.push_back(ms / 1e3);
        }
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
        const double kernel_bw = 1024.0 * 4096 / median(t) / 1e9;
        const double host_bw = 1024.0 * 4096 / host_post(me.b, many, o.reps) / 1e9;
        std::printf("timing: 1 x 4 KiB put + signal, seen by the peer's waiting kernel: %.2f us (half of %zu round "
                    "trips)\n",
                    kernel_lat / 1e3, o.iterations);
        std::printf("timing: 1 x 4 KiB host-initiated cuda_ipc post to completion: %.2f us (median of %zu)\n",
                    host_lat / 1e3, o.iterations);
        std::printf("timing: 1024 x 4 KiB from one kernel launch (puts + signals): %.2f GB/s (median of %zu)\n",
                    kernel_bw, o.reps);
        std::printf("timing: 1024 x 4 KiB host-initiated cuda_ipc post to completion: %.2f GB/s (median of %zu)\n",
                    host_bw, o.reps);
        if (kernel_lat > 100e3)
            std::printf("timing: the two processes' kernels took turns on the GPU (time-slicing) instead of running "
                        "together; run under MPS (nvidia-cuda-mps-control -d) for the device-to-device figure\n");
    }
    send_word(fd, 3);  // bye
    return bad == 0 ? 0 : 1;
}

int run_consumer(int fd, const options& o) {
    const std::size_t blocks = o.layers * o.per_layer, bytes = side_bytes(o);
    side me("consumer", bytes, o.layers + 1, fd);  // one per layer, then one for the latency run
    const auto* landing = static_cast<const unsigned char*>(me.mem.data()) + bytes;
    stream st;
    report_on_gpu rep;
    check(demo::consume(me.count.ref(), landing, o.block_size, o.layers, o.per_layer, timeout_ns, rep.p, st.s),
          "consume");
    check(cudaStreamSynchronize(st.s), "the consumer kernel");
    const auto r = rep.read();
    if (recv_word(fd) != 1) throw std::runtime_error("exchange: out of step");
    // The host's check of every byte that arrived.
    std::vector<unsigned char> seen(blocks * o.block_size);
    check(cudaMemcpy(seen.data(), landing, seen.size(), cudaMemcpyDeviceToHost), "cudaMemcpy");
    std::size_t bad = 0;
    for (std::size_t i = 0; i < blocks; ++i)
        for (std::size_t k = 0; k < o.block_size; ++k)
            bad += seen[i * o.block_size + k] != demo::kv_byte(i / o.per_layer, i, k) ? 1 : 0;
    bool counted = true;
    for (std::size_t layer = 0; layer < o.layers; ++layer) counted = counted && me.count.value(layer) == o.per_layer;
    const bool ok = r.timeouts == 0 && r.bad_bytes == 0 && bad == 0 && counted;
    std::printf("consumer: %zu layers consumed as their signals arrived (%llu bytes wrong at the signal, %llu "
                "timeouts); host check of %zu bytes: %s\n",
                o.layers, static_cast<unsigned long long>(r.bad_bytes), static_cast<unsigned long long>(r.timeouts),
                seen.size(), bad == 0 ? "every byte matches" : "WRONG");
    send_word(fd, ok ? 0 : 1);
    if (!ok) return 1;
    if (recv_word(fd) == 2) {
        const ferry::xfer one = me.prepare(1, 4096);
        report_on_gpu pr;
        check(demo::pong(me.b.device_view(one), me.peer_signal, 0, me.count.ref(), o.layers, o.iterations, timeout_ns,
                         pr.p, st.s),
              "pong");
        check(cudaStreamSynchronize(st.s), "the pong kernel");
        if (pr.read().timeouts) throw std::runtime_error("pong: the peer's kernel did not answer");
        if (recv_word(fd) != 3) throw std::runtime_error("exchange: out of step");
    }
    return 0;
}

// Whether this machine has a GPU, asked in a child so that the parent forks
// with no CUDA state (none survives a fork).
bool have_gpu() {
    std::fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        int n = 0;
        _exit(cudaGetDeviceCount(&n) == cudaSuccess && n > 0 ? 0 : 1);
    }
    int status = 0;
    return pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace

int main(int argc, char** argv) {
    options o;
    try {
        o = parse(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ferry-device-demo: %s\n", e.what());
        return 2;
    }
    if (!have_gpu()) {
        std::printf("ferry-device-demo: no CUDA device here; nothing to run (skipped)\n");
        return 0;
    }
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
        std::perror("ferry-device-demo: socketpair");
        return 1;
    }
    std::fflush(stdout);
    const pid_t child = fork();
    if (child < 0) {
        std::perror("ferry-device-demo: fork");
        return 1;
    }
    try {
        if (child == 0) {
            close(fds[0]);
            alarm(300);
            const int rc = run_consumer(fds[1], o);
            std::fflush(stdout);
            _exit(rc);
        }
        close(fds[1]);
        const int rc = run_producer(fds[0], o);
        int wstatus = 0;
        waitpid(child, &wstatus, 0);
        if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
            std::fprintf(stderr, "ferry-device-demo: the consumer failed\n");
            return 1;
        }
        if (rc == 0) std::printf("ferry-device-demo: OK\n");
        return rc;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ferry-device-demo (%s): %s\n", child == 0 ? "consumer" : "producer", e.what());
        if (child == 0) _exit(1);
        kill(child, SIGKILL);
        waitpid(child, nullptr, 0);
        return 1;
    }
}
