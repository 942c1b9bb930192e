#pragma once

// One process's half of a run, generic over the backend type: its memory,
// backend, region, the peer, and the ferry and raw runners over them.

#include "backends.hpp"
#include "control.hpp"
#if defined(FERRY_BENCH_CUDA)
#include "cuda_buffers.hpp"
#endif
#include "ferry_runner.hpp"
#if defined(FERRY_BENCH_KERNELS)
#include "kernel_runner.hpp"
#endif
#include "options.hpp"
#include "plan.hpp"
#include "raw_runner.hpp"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {

/// Members are declared so that they are destroyed in a safe order: the
/// runners (rkeys, transfers) before the region and the backend (endpoint,
/// context), and user memory last.
template <bench_backend B>
class side {
public:
    /// `mine` and `theirs`: where this side's and the peer's buffers live.
    side(const std::string& name, const options& o, std::size_t buffer, buffer_kind mine,
         [[maybe_unused]] buffer_kind theirs)  // used where ferry::cuda is built
        : opts_(o), buffer_(buffer) {
        const bool cuda = o.memory == memory_kind::cuda;
        if (!cuda && o.mem == mem_kind::user) {
            user_.reset(static_cast<std::byte*>(std::aligned_alloc(4096, buffer)));
            if (!user_) throw std::runtime_error("cannot allocate " + format_size(buffer) + " of user memory");
        }
        backend_ = backend_factory<B>::make(name, o);
        if (cuda) {
#if defined(FERRY_BENCH_CUDA)
            // Device memory, or page-locked host memory, which the copy
            // engine and UCX's CUDA transports reach directly.
            // --mem alloc: the backend's own memory, which a peer on this
            // host maps (host memory from allocate_host: the host_ipc
            // placement); else cudaMalloc / cudaMallocHost, registered.
            if (o.mem == mem_kind::alloc) {
                if constexpr (requires { backend_->allocate_host(buffer); }) {
                    region_.emplace(mine == buffer_kind::cuda ? backend_->allocate(buffer, 0)
                                                              : backend_->allocate_host(buffer));
                    cuda_fill(region_->data(), buffer, mine == buffer_kind::cuda, 0x5A);
                } else {
                    throw usage_error("--mem alloc: this backend has no allocate_host");
                }
            } else {
                gpu_mem_ = cuda_alloc(buffer, mine == buffer_kind::cuda, 0x5A);
                region_.emplace(backend_->register_memory(gpu_mem_.get(), buffer, 0));
            }
            if (name == "bench-initiator")
                copy_.emplace(region_->data(), mine == buffer_kind::cuda, theirs == buffer_kind::cuda, buffer);
#endif
        } else {
            if (o.mem == mem_kind::user) {
                region_.emplace(backend_->register_memory(user_.get(), buffer, 0));
            } else if (o.mem == mem_kind::alloc) {
                region_.emplace(backend_->allocate(buffer));
            } else if constexpr (raw_capable<B>) {
                ucx_mem_.emplace(backend_->ucx_context(), buffer);
                region_.emplace(backend_->register_memory(ucx_mem_->data(), buffer, 0));
            } else {
                throw usage_error("--mem ucx: this backend exposes no UCX context to allocate from");
            }
            // Fault every page in now, not inside a timed loop.
            std::memset(region_->data(), 0x5A, buffer);
            if (name == "bench-initiator") {
                // The memcpy reference's other buffer.
                scratch_.reset(static_cast<std::byte*>(std::aligned_alloc(4096, buffer)));
                if (!scratch_) throw std::runtime_error("cannot allocate " + format_size(buffer) + " for memcpy");
                std::memset(scratch_.get(), 0x5A, buffer);
            }
        }
        if (o.baseline == baseline_kind::raw) {
            if constexpr (raw_capable<B>)
                raw_.emplace(backend_->ucx_context(), backend_->ucx_worker(), region_->data(), buffer,
                             !cuda && o.mem != mem_kind::user, o.timeout, cuda && mine == buffer_kind::cuda);
            else
                throw usage_error("--baseline raw: this backend does not let the baseline drive its UCX worker "
                                  "(a progress thread owns it, or it exposes no UCX handles); use --baseline none");
        }
        if (o.kernel) {
#if defined(FERRY_BENCH_KERNELS)
            if constexpr (requires { backend_->device_signal(peer_, ferry::desc{}); }) {
                // Registered before hello() takes the metadata, so that the
                // peer finds them among the regions it loads.
                counters_.emplace(kernel_counters, 0);
                counter_region_.emplace(
                    backend_->register_memory(counters_->data(), counters_->size(), counters_->dev()));
                kernel_.emplace();
            } else {
                throw usage_error("--kernel: this backend has no device API (it needs --memory cuda)");
            }
#else
            throw usage_error("--kernel: this ferry-bench has no kernels of its own");
#endif
        }
    }

    [[nodiscard]] wire_writer hello() const {
        wire_writer w;
        w.bytes(backend_->local_metadata()).u64(base()).u64(buffer_).u64(raw_ ? 1 : 0);
        if (raw_) w.bytes(raw_->packed_rkey()).u64(raw_->base()).str(raw_->buffer_note());
#if defined(FERRY_BENCH_KERNELS)
        if (counters_) w.u64(counters_->descriptor().addr).u64(counters_->size());
#endif
        return w;
    }

    void load(const message& m) {
        auto r = m.reader();
        blob_ = r.bytes();
        remote_base_ = r.u64();
        const auto remote_size = r.u64();
        const bool remote_raw = r.u64() != 0;
        if (remote_size != buffer_) throw peer_error("the peer registered a buffer of a different size");
        if (remote_raw != raw_.has_value()) throw peer_error("the peer disagrees about --baseline raw");
        peer_ = backend_->load_remote(blob_);
        ferry_.emplace(*backend_, peer_, base(), remote_base_, opts_.timeout,
                       ferry::xfer_options{.path = to_xfer_path(opts_.path), .coalesce = opts_.coalesce},
                       opts_.strided);
        if (remote_raw) {
            raw_rkey_ = r.bytes();
            raw_remote_base_ = r.u64();
            peer_raw_note_ = r.str();
            if constexpr (raw_capable<B>) raw_->connect(backend_->ucx_endpoint(peer_), raw_rkey_, raw_remote_base_);
        }
#if defined(FERRY_BENCH_KERNELS)
        if (counters_) {
            peer_counters_ = r.u64();
            peer_counters_size_ = r.u64();
            map_peer_counters();
        }
#endif
        r.expect_end();
    }

    /// Forgets the peer and loads its metadata again, as a fresh peer: the
    /// raw loop's rkey goes first (it lives on the endpoint), and the ferry
    /// runner's transfer, prepared for the old handle, is released.
    void reload() {
        if (raw_) raw_->disconnect();
        ferry_->release();
        backend_->unload_remote(peer_);
        peer_ = backend_->load_remote(blob_);
        ferry_->set_peer(peer_);
        if constexpr (raw_capable<B>) {
            if (raw_) raw_->connect(backend_->ucx_endpoint(peer_), raw_rkey_, raw_remote_base_);
        }
#if defined(FERRY_BENCH_KERNELS)
        if (counters_) map_peer_counters();
#endif
    }

    /// connect() to the loaded peer, as the README advises after
    /// load_remote; returns how long it took, in seconds.
    double connect() {
        const auto t0 = std::chrono::steady_clock::now();
        const auto s = backend_->connect(
            peer_, std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(opts_.timeout)));
        if (s != ferry::status::ok) throw peer_error(std::string("connect: ") + std::string(ferry::to_string(s)));
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }

    void progress() { backend_->progress(); }
    B& backend() { return *backend_; }
    [[nodiscard]] std::uintptr_t base() const { return reinterpret_cast<std::uintptr_t>(region_->data()); }
    ferry_runner<B>& ferry() { return *ferry_; }
    /// The peer's metadata and buffer, as load() received them.
    [[nodiscard]] std::span<const std::byte> peer_blob() const noexcept { return blob_; }
    [[nodiscard]] std::uintptr_t remote_base() const noexcept { return remote_base_; }
    [[nodiscard]] bool has_raw() const { return raw_.has_value(); }
    raw_runner& raw() { return *raw_; }

    // --kernel. Counter kernel_bursts of each side takes the signals of the
    // other side's bursts; counter kernel_pings the ping-pong's.
    static constexpr std::uint64_t kernel_bursts = 0, kernel_pings = 1, kernel_counters = 2;

    [[nodiscard]] bool has_kernel() const noexcept {
#if defined(FERRY_BENCH_KERNELS)
        return kernel_.has_value();
#else
        return false;
#endif
    }

    /// Seconds for `iters` launches back to back, each moving every block
    /// of ferry's transfer for the row, with a signal per block.
    double kernel_burst(std::size_t iters) {
#if defined(FERRY_BENCH_KERNELS)
        return kernel_->burst(ferry_->device_view(), peer_signal_, kernel_bursts, iters);
#else
        static_cast<void>(iters);
        throw std::logic_error("--kernel: not built");
#endif
    }

    /// Half a round trip of block 0 put + signal between this side's kernel
    /// and the peer's, over `iterations` rounds; the peer's counter and this
    /// side's stood at `base` before.
    double kernel_ping(std::uint64_t base, std::size_t iterations) {
#if defined(FERRY_BENCH_KERNELS)
        return kernel_->ping(ferry_->device_view(), peer_signal_, kernel_pings, counters_->ref(), kernel_pings, base,
                             iterations, opts_.timeout);
#else
        static_cast<void>(base), static_cast<void>(iterations);
        throw std::logic_error("--kernel: not built");
#endif
    }

    /// The target's answer to kernel_ping, with its own transfer for the
    /// row (prepared for the ping-pong), launched without waiting.
    void kernel_start_pong(std::uint64_t base, std::size_t iterations) {
#if defined(FERRY_BENCH_KERNELS)
        kernel_->start_pong(ferry_->device_view(), peer_signal_, kernel_pings, counters_->ref(), kernel_pings, base,
                            iterations, opts_.timeout);
#else
        static_cast<void>(base), static_cast<void>(iterations);
        throw std::logic_error("--kernel: not built");
#endif
    }
    [[nodiscard]] bool kernel_finish_pong() {
#if defined(FERRY_BENCH_KERNELS)
        return kernel_->finish_pong();
#else
        throw std::logic_error("--kernel: not built");
#endif
    }

    /// Why the raw loop runs on a buffer of its own on this side / the
    /// peer's; empty where it runs on ferry's.
    [[nodiscard]] std::string raw_note() const { return raw_ ? raw_->buffer_note() : std::string(); }
    [[nodiscard]] const std::string& peer_raw_note() const noexcept { return peer_raw_note_; }

    /// GB/s of `iters` cudaMemcpys of `bytes` between the kinds of memory
    /// this row moves between; nothing without --memory cuda, or when the
    /// row moves more than the buffer holds (its blocks wrap around).
    std::optional<double> copy_gbps(std::size_t bytes, std::size_t iters, bool write) {
#if defined(FERRY_BENCH_CUDA)
        if (copy_ && bytes <= buffer_) return copy_->gbps(bytes, iters, write);
#endif
        static_cast<void>(bytes), static_cast<void>(iters), static_cast<void>(write);
        return std::nullopt;
    }

    /// GB/s of `iters` rounds of one thread's memcpy of the row's blocks,
    /// between this side's buffer at the local offsets and a second buffer
    /// of this process at the remote ones, in the direction the row moves
    /// them: what the host_ipc path does through the peer's mapping. Host
    /// memory only.
    std::optional<double> memcpy_gbps(const layout& l, std::size_t block, std::size_t iters, bool write) {
        if (!scratch_) return std::nullopt;
        std::byte* const mine = static_cast<std::byte*>(region_->data());
        std::byte* const other = scratch_.get();
        const auto t0 = clock::now();
        for (std::size_t it = 0; it < iters; ++it)
            for (std::size_t i = 0; i < l.local.size(); ++i) {
                if (write) std::memcpy(other + l.remote[i], mine + l.local[i], block);
                else std::memcpy(mine + l.local[i], other + l.remote[i], block);
            }
        const double s = seconds_since(t0);
        // Keep the copies: their result is read here, so none is dead.
        volatile std::byte sink = other[l.remote.empty() ? 0 : l.remote.back()];
        static_cast<void>(sink);
        return static_cast<double>(block) * static_cast<double>(l.local.size()) * static_cast<double>(iters) / s / 1e9;
    }

private:
    struct free_deleter {
        void operator()(std::byte* p) const noexcept { std::free(p); }
    };

    options opts_;
    std::size_t buffer_;
    std::unique_ptr<std::byte, free_deleter> user_;
    std::unique_ptr<std::byte, free_deleter> scratch_;  // host memory, initiator: the memcpy reference
#if defined(FERRY_BENCH_CUDA)
    cuda_buffer gpu_mem_{nullptr, cuda_free{true}};
    std::optional<copy_reference> copy_;
#endif
    std::unique_ptr<B> backend_;
#if defined(FERRY_BENCH_KERNELS)
    // --kernel: the counters the peer's kernels add to (registered, after
    // the backend, before their region), the peer's mapped for ours.
    std::optional<ferry::device::counter> counters_;
    std::optional<typename B::region_type> counter_region_;
    std::uint64_t peer_counters_ = 0;
    std::size_t peer_counters_size_ = 0;
    ferry::device::signal peer_signal_{};

    void map_peer_counters() {
        if constexpr (requires { backend_->device_signal(peer_, ferry::desc{}); })
            peer_signal_ = backend_->device_signal(peer_, {peer_counters_, peer_counters_size_, 0});
    }
#endif
    std::optional<ucx_allocation> ucx_mem_;  // --mem ucx: after the backend's context, before its region
    std::optional<typename B::region_type> region_;
    std::optional<raw_runner> raw_;
    std::vector<std::byte> blob_;
    std::uintptr_t remote_base_ = 0;
    std::vector<std::byte> raw_rkey_;
    std::uint64_t raw_remote_base_ = 0;
    std::string peer_raw_note_;
    ferry::peer peer_{};
    std::optional<ferry_runner<B>> ferry_;
#if defined(FERRY_BENCH_KERNELS)
    // Last, so that it goes first: its destructor waits for a kernel still
    // running on the transfer's blocks and the counters.
    std::optional<kernel_runner> kernel_;
#endif
};

/// Both sides: settings, metadata both ways, then "ready" both ways while
/// progressing, so that wire-up is over before anything is timed.
template <bench_backend B>
void handshake(control& ctl, side<B>& me, double timeout) {
    ctl.send(msg::hello, me.hello());
    me.load(ctl.await(msg::hello, [&] { me.progress(); }, timeout, "its metadata"));
    ctl.send(msg::ready);
    ctl.await(msg::ready, [&] { me.progress(); }, timeout, "ready");
}

}  // namespace bench
