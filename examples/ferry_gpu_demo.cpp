// ferry-gpu-demo: ferry-demo on GPU memory. Two processes on one host, each
// with GPU memory from allocate(len, device); the initiator WRITEs a
// scattered list of blocks into the target's with a notification, the
// target checks the bytes when the notification arrives, and the initiator
// READs them back. prepare() picks the cuda_ipc path (one copy kernel over
// the target's memory mapped through CUDA IPC) unless --path says otherwise.
// Needs a CUDA device and a UCX built with CUDA.
#include <ferry/cuda.hpp>

#include <cuda_runtime_api.h>
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
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

using inline_backend = ferry::ucx_backend<ferry::policy<ferry::progress::inline_poll, ferry::memory::cuda>>;
using threaded_backend = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::cuda>>;

struct options {
    bool thread = false;
    ferry::xfer_path path = ferry::xfer_path::automatic;
    std::size_t blocks = 1024;
    std::size_t block_size = 4096;
};

void usage(const char* argv0) {
    std::printf(
        "usage: %s [--path auto|ucx|cuda_ipc] [--progress inline|thread] [--blocks N] [--block-size BYTES]\n"
        "\n"
        "Forks a target and an initiator on this host's CUDA device 0, WRITEs N\n"
        "scattered blocks of GPU memory into the target's GPU memory with a\n"
        "notification, READs them back, and checks every byte.\n"
        "\n"
        "  --path PATH         auto: let prepare choose (default); ucx: UCX RMA per\n"
        "                      block; cuda_ipc: one copy kernel over CUDA IPC\n"
        "  --progress MODE     inline: the application drives UCX (default);\n"
        "                      thread: a progress thread does\n"
        "  --blocks N          number of blocks (default 1024)\n"
        "  --block-size BYTES  size of each block (default 4096)\n"
        "  --help              this text\n",
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
        } else if (a == "--path") {
            std::string_view p = value();
            if (p == "auto") o.path = ferry::xfer_path::automatic;
            else if (p == "ucx") o.path = ferry::xfer_path::ucx;
            else if (p == "cuda_ipc") o.path = ferry::xfer_path::cuda_ipc;
            else throw std::invalid_argument("--path: expected auto, ucx or cuda_ipc, got '" + std::string(p) + "'");
        } else if (a == "--progress") {
            std::string_view m = value();
            if (m != "inline" && m != "thread")
                throw std::invalid_argument("--progress: expected inline or thread, got '" + std::string(m) + "'");
            o.thread = m == "thread";
        } else if (a == "--blocks") {
            o.blocks = parse_size("--blocks", value());
        } else if (a == "--block-size") {
            o.block_size = parse_size("--block-size", value());
        } else {
            throw std::invalid_argument("unknown option '" + std::string(a) + "' (try --help)");
        }
    }
    if (o.blocks > (std::size_t{1} << 20)) throw std::invalid_argument("--blocks: at most 1048576");
    if (o.block_size > (std::size_t{1} << 30) / o.blocks)
        throw std::invalid_argument("--blocks x --block-size: at most 1 GiB in all");
    return o;
}

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Metadata travels over a socketpair as a length-prefixed message.
void send_blob(int fd, std::span<const std::byte> blob) {
    std::uint64_t n = blob.size();
    if (write(fd, &n, sizeof n) != sizeof n ||
        write(fd, blob.data(), blob.size()) != static_cast<ssize_t>(blob.size()))
        throw std::runtime_error("metadata exchange: write failed");
}

std::vector<std::byte> recv_blob(int fd) {
    std::uint64_t n = 0;
    if (read(fd, &n, sizeof n) != sizeof n || n > (1U << 26)) throw std::runtime_error("metadata exchange: bad length");
    std::vector<std::byte> blob(n);
    std::size_t got = 0;
    while (got < n) {
        auto r = read(fd, blob.data() + got, n - got);
        if (r <= 0) throw std::runtime_error("metadata exchange: peer closed");
        got += static_cast<std::size_t>(r);
    }
    return blob;
}

std::byte pattern(std::size_t block, std::size_t offset) {
    return static_cast<std::byte>((block * 131 + offset * 7 + 1) & 0xFF);
}

// The target spreads the blocks out: block i lands at slot 2i.
template <class Backend>
int run_target(int fd, const options& o) {
    Backend backend(ferry::ucx_config{"target", {}});
    const std::size_t bytes = 2 * o.blocks * o.block_size;
    auto region = backend.allocate(bytes, 0);
    check(cudaMemset(region.data(), 0, bytes), "cudaMemset");
    send_blob(fd, backend.local_metadata());
    backend.load_remote(recv_blob(fd));

    bool done = false;
    int failures = 0;
    std::vector<std::byte> seen(bytes);
    while (!done) {
        backend.progress();
        backend.poll_notifs([&](std::string_view from, std::string_view msg) {
            if (msg == "written") {
                check(cudaMemcpy(seen.data(), region.data(), bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
                for (std::size_t b = 0; b < o.blocks; ++b)
                    for (std::size_t k = 0; k < o.block_size; ++k)
                        if (seen[2 * b * o.block_size + k] != pattern(b, k)) ++failures;
                std::printf("target: notification '%.*s' from %.*s; %s\n", static_cast<int>(msg.size()), msg.data(),
                            static_cast<int>(from.size()), from.data(),
                            failures ? "data WRONG" : "all blocks already in GPU memory");
            } else if (msg == "done") {
                done = true;
            }
        });
    }
    return failures == 0 ? 0 : 1;
}

template <class Backend>
int run_initiator(int fd, const options& o) {
    using clock = std::chrono::steady_clock;
    Backend backend(ferry::ucx_config{"initiator", {}});
    const std::size_t bytes = o.blocks * o.block_size;
    std::vector<std::byte> source(bytes), readback(bytes);
    for (std::size_t b = 0; b < o.blocks; ++b)
        for (std::size_t k = 0; k < o.block_size; ++k) source[b * o.block_size + k] = pattern(b, k);
    auto src = backend.allocate(bytes, 0);
    auto dst = backend.allocate(bytes, 0);
    check(cudaMemcpy(src.data(), source.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy");

    auto target_blob = recv_blob(fd);
    send_blob(fd, backend.local_metadata());
    ferry::peer target = backend.load_remote(target_blob);
    const std::uintptr_t remote = backend.remote_regions(target).at(0).addr;

    std::vector<ferry::desc> local_w, local_r, remote_blocks;
    for (std::size_t b = 0; b < o.blocks; ++b) {
        local_w.push_back(src.slice(b * o.block_size, o.block_size));
        local_r.push_back(dst.slice(b * o.block_size, o.block_size));
        remote_blocks.push_back({remote + 2 * b * o.block_size, o.block_size, 0});
    }
    auto write = backend.prepare(ferry::xfer_op::write, local_w, remote_blocks, target, o.path);
    auto read = backend.prepare(ferry::xfer_op::read, local_r, remote_blocks, target, o.path);

    auto run = [&](ferry::xfer x, std::string_view notif) {
        auto t0 = clock::now();
        auto s = backend.post(x, notif);
        if (s == ferry::status::in_progress) s = backend.wait(x, std::chrono::seconds(60));
        if (s != ferry::status::ok) throw std::runtime_error("transfer failed: " + std::string(ferry::to_string(s)));
        return std::chrono::duration<double>(clock::now() - t0).count();
    };
    run(write, {});  // the first post of each also maps what it needs; time the second
    run(read, {});
    const double tw = run(write, "written");
    const double tr = run(read, {});
    check(cudaMemcpy(readback.data(), dst.data(), bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
    const bool ok = readback == source;
    backend.send_notif(target, "done");

    const auto path = std::string(ferry::to_string(backend.path_of(write)));
    const double b = static_cast<double>(bytes);
    std::printf("initiator: WRITE %zu blocks x %zu B on path %s in %.1f us (%.2f GB/s)\n", o.blocks, o.block_size,
                path.c_str(), tw * 1e6, b / tw / 1e9);
    std::printf("initiator: READ  %zu blocks x %zu B on path %s in %.1f us (%.2f GB/s); %s\n", o.blocks, o.block_size,
                path.c_str(), tr * 1e6, b / tr / 1e9, ok ? "every byte matches" : "data WRONG");
    backend.release(write);
    backend.release(read);
    return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    options o;
    try {
        o = parse(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ferry-gpu-demo: %s\n", e.what());
        return 2;
    }
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
        std::perror("ferry-gpu-demo: socketpair");
        return 1;
    }
    std::fflush(stdout);
    // Fork before any CUDA or UCX state exists: neither survives a fork.
    pid_t child = fork();
    if (child < 0) {
        std::perror("ferry-gpu-demo: fork");
        return 1;
    }
    try {
        if (child == 0) {
            close(fds[0]);
            alarm(120);
            int rc = o.thread ? run_target<threaded_backend>(fds[1], o) : run_target<inline_backend>(fds[1], o);
            std::fflush(stdout);
            _exit(rc);
        }
        close(fds[1]);
        int rc = o.thread ? run_initiator<threaded_backend>(fds[0], o) : run_initiator<inline_backend>(fds[0], o);
        int wstatus = 0;
        waitpid(child, &wstatus, 0);
        if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
            std::fprintf(stderr, "ferry-gpu-demo: the target failed\n");
            return 1;
        }
        if (rc == 0) std::printf("ferry-gpu-demo: OK (%s progress)\n", o.thread ? "thread" : "inline");
        return rc;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ferry-gpu-demo (%s): %s\n", child == 0 ? "target" : "initiator", e.what());
        if (child == 0) _exit(1);
        kill(child, SIGKILL);
        waitpid(child, nullptr, 0);
        return 1;
    }
}
