#pragma once

#include <ferry/cuda/copy_kernel.hpp>
#include <ferry/cuda/copy_pool.hpp>
#include <ferry/cuda/cuda_status.hpp>
#include <ferry/device/view.hpp>
#include <ferry/version.hpp>

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail::cuda {

/// One descriptor pair of a cuda_ipc transfer, or a run of `count` pairs
/// each strides after the one before, as device addresses.
struct copy_pair {
    std::uint64_t src;
    std::uint64_t dst;
    std::uint64_t len;
    std::uint64_t src_stride = 0;
    std::uint64_t dst_stride = 0;
    std::uint64_t count = 1;
};
// A pair is uploaded as a chunk row where it is one (pairs_are_chunks).
static_assert(sizeof(copy_pair) == sizeof(copy_chunk) && offsetof(copy_pair, src) == offsetof(copy_chunk, src) &&
              offsetof(copy_pair, dst) == offsetof(copy_chunk, dst) &&
              offsetof(copy_pair, len) == offsetof(copy_chunk, len) &&
              offsetof(copy_pair, src_stride) == offsetof(copy_chunk, src_stride) &&
              offsetof(copy_pair, dst_stride) == offsetof(copy_chunk, dst_stride) &&
              offsetof(copy_pair, count) == offsetof(copy_chunk, count));

/// The chunk size plan_chunks cuts `pairs` into. Chunks are large enough
/// that a block does real work and small enough that a big transfer still
/// spreads over every multiprocessor (about 8 blocks each), between 4 KiB
/// and 64 KiB and a multiple of 16 bytes, so aligned pairs stay aligned
/// piece by piece.
inline std::uint64_t chunk_bytes(std::span<const copy_pair> pairs, int multiprocessors) noexcept {
    std::uint64_t total = 0;
    for (const auto& p : pairs) total += p.len * p.count;
    const std::uint64_t want = total / (static_cast<std::uint64_t>(std::max(1, multiprocessors)) * 8);
    std::uint64_t chunk = 4096;
    while (chunk < 65536 && chunk * 2 <= want) chunk *= 2;
    return chunk;
}

/// Whether plan_chunks would give `pairs` back as they are, a row per pair
/// (a plain list of blocks no longer than a chunk, or runs that each fit
/// one): then the pairs are their own table, uploaded without a plan.
inline bool pairs_are_chunks(std::span<const copy_pair> pairs, std::uint64_t chunk) noexcept {
    return std::all_of(pairs.begin(), pairs.end(), [chunk](const copy_pair& p) {
        if (p.len == 0 || p.len > chunk) return false;
        return p.count == 1 ? p.src_stride == 0 && p.dst_stride == 0 : p.count <= chunk / p.len;
    });
}

/// Splits the pairs into chunks of chunk_bytes for one thread block each.
/// A run of pairs shorter than a chunk goes as chunks of as many of its
/// pairs as fit, so that its table has a row per chunk of bytes rather than
/// per pair.
inline std::vector<copy_chunk> plan_chunks(std::span<const copy_pair> pairs, int multiprocessors) {
    const std::uint64_t chunk = chunk_bytes(pairs, multiprocessors);
    auto per_chunk = [chunk](const copy_pair& p) { return p.len >= chunk ? 1 : chunk / p.len; };
    // A single pair that fits a chunk, the common row of a plain list, is
    // one row without a division.
    std::size_t rows = 0;
    for (const auto& p : pairs) {
        if (p.count == 1 && p.len <= chunk) ++rows;
        else if (p.len > chunk) rows += static_cast<std::size_t>(p.count * ((p.len + chunk - 1) / chunk));
        else rows += static_cast<std::size_t>((p.count + per_chunk(p) - 1) / per_chunk(p));
    }
    // Sized first and written through a pointer, a field at a time: a
    // chunk pushed whole is read back in wider pieces than it was written,
    // which stalls every row (a plain list of 10^5 pairs is 10^5 rows).
    std::vector<copy_chunk> out(rows);
    copy_chunk* row = out.data();
    auto put = [&row](std::uint64_t src, std::uint64_t dst, std::uint64_t len, std::uint64_t src_stride,
                      std::uint64_t dst_stride, std::uint64_t count) {
        row->src = src;
        row->dst = dst;
        row->len = len;
        row->src_stride = src_stride;
        row->dst_stride = dst_stride;
        row->count = count;
        ++row;
    };
    for (const auto& p : pairs) {
        if (p.count == 1 && p.len <= chunk) {
            put(p.src, p.dst, p.len, 0, 0, 1);
            continue;
        }
        if (p.len > chunk) {
            for (std::uint64_t k = 0; k < p.count; ++k) {
                const std::uint64_t src = p.src + k * p.src_stride, dst = p.dst + k * p.dst_stride;
                for (std::uint64_t at = 0; at < p.len; at += chunk)
                    put(src + at, dst + at, std::min(chunk, p.len - at), 0, 0, 1);
            }
            continue;
        }
        const std::uint64_t step = per_chunk(p);
        for (std::uint64_t k = 0; k < p.count; k += step)
            put(p.src + k * p.src_stride, p.dst + k * p.dst_stride, p.len, p.src_stride, p.dst_stride,
                std::min(step, p.count - k));
    }
    return out;
}

/// The GPU side of a cuda_ipc transfer: its chunk table in device memory, a
/// stream of its own, and an event that completes when the data is in place.
/// Built at prepare; a post is one kernel launch and one event record. A
/// user's kernel may move the same pairs itself (view()).
class device_copy {
public:
    // Keeps `pairs` (moved in, not copied) for view(). Takes its stream,
    // event and table memory from `pool` where a released copy left some,
    // and leaves them there when it goes (null: its own, freed with it).
    device_copy(int device, std::vector<copy_pair> pairs, std::vector<std::shared_ptr<void>> mappings,
                std::shared_ptr<copy_pool> pool = nullptr)
        : device_(device), pool_(std::move(pool)), pairs_(std::move(pairs)), mappings_(std::move(mappings)) {
        device_scope on(device);
        check_cu(driver_.ctx_get_current(&context_), "cuCtxGetCurrent");
        int sms = 1;
        check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
        // The rows uploaded: the pairs themselves where each is one chunk
        // as it is (a plain list of blocks: 10^5 pairs are not copied into
        // a table of the same 10^5 rows first), else a plan.
        std::vector<copy_chunk> planned;
        const void* rows = pairs_.data();
        std::size_t row_count = pairs_.size();
        if (!pairs_are_chunks(pairs_, chunk_bytes(pairs_, sms))) {
            planned = plan_chunks(pairs_, sms);
            rows = planned.data();
            row_count = planned.size();
        }
        if (row_count > 0x7FFFFFFFU)
            throw error(status::invalid_argument, "prepare: the transfer needs more than 2^31 - 1 thread blocks");
        blocks_ = static_cast<unsigned>(row_count);
        fn_ = copy_kernel(device);
        // One more chunk than the transfer needs: an empty one, for warm_up.
        const std::size_t table_bytes = (row_count + 1) * sizeof(copy_chunk);
        try {
            if (auto reused = pool_ ? pool_->take(table_bytes) : std::nullopt) {
                // Warm already: its stream and event served a launch before.
                stream_ = reused->stream;
                done_ = reused->done;
                table_ = reused->table;
                table_bytes_ = reused->table_bytes;
                if (table_bytes_ < table_bytes) {
                    cudaFree(reinterpret_cast<void*>(table_));
                    table_ = 0;
                    allocate_table(table_bytes);
                }
                // Ordered before every launch on the stream; the source may
                // go once the call returns (CUDA stages pageable memory).
                check_cuda(cudaMemcpyAsync(reinterpret_cast<void*>(table_), rows, row_count * sizeof(copy_chunk),
                                           cudaMemcpyHostToDevice, stream_),
                           "cudaMemcpyAsync(chunk table)");
            } else {
                allocate_table(table_bytes);
                check_cuda(cudaMemcpy(reinterpret_cast<void*>(table_), rows, row_count * sizeof(copy_chunk),
                                      cudaMemcpyHostToDevice),
                           "cudaMemcpy(chunk table)");
                check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
                check_cuda(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreateWithFlags");
                warm_up();
            }
        } catch (...) {
            release();
            throw;
        }
        args_[0] = &table_;
    }
    ~device_copy() { release(); }
    device_copy(const device_copy&) = delete;
    device_copy& operator=(const device_copy&) = delete;

    /// Starts the copy: one launch, one event. The calling thread's current
    /// context is borrowed only if it is not the device's already.
    [[nodiscard]] bool launch() noexcept {
        CUcontext current = nullptr;
        driver_.ctx_get_current(&current);
        const bool swap = current != context_;
        if (swap && driver_.ctx_push_current(context_) != CUDA_SUCCESS) return false;
        bool ok = driver_.launch_kernel(fn_, blocks_, 1, 1, copy_block_threads, 1, 1, 0,
                                        reinterpret_cast<CUstream>(stream_), args_, nullptr) == CUDA_SUCCESS &&
                  cudaEventRecord(done_, stream_) == cudaSuccess;
        if (swap) {
            CUcontext popped = nullptr;
            driver_.ctx_pop_current(&popped);
        }
        return ok;
    }

    /// 1 once the copy is complete, 0 while it runs, -1 if it failed.
    [[nodiscard]] int poll() const noexcept {
        switch (cudaEventQuery(done_)) {
            case cudaSuccess: return 1;
            case cudaErrorNotReady: return 0;
            default: return -1;
        }
    }

    [[nodiscard]] int device() const noexcept { return device_; }
    [[nodiscard]] unsigned blocks() const noexcept { return blocks_; }

    /// The pairs as a user's kernel sees them (ferry::device::view): a block
    /// table in device memory, a row per pair (runs spelled out: a kernel
    /// names blocks, not runs), built on the first request, since most
    /// transfers never have one, and kept while this copy, and so the
    /// mappings it holds, lives. Any thread.
    [[nodiscard]] device::view view() {
        std::call_once(view_built_, [this] {
            std::vector<device::block> table;
            std::size_t rows = 0;
            for (const auto& p : pairs_) rows += static_cast<std::size_t>(p.count);
            table.reserve(rows);
            for (const auto& p : pairs_)
                for (std::uint64_t k = 0; k < p.count; ++k)
                    table.push_back({p.src + k * p.src_stride, p.dst + k * p.dst_stride, p.len});
            device_scope on(device_);
            void* p = nullptr;
            const std::size_t bytes = table.size() * sizeof(device::block);
            check_cuda(cudaMalloc(&p, bytes), "device_view: cudaMalloc(block table)");
            // On the copy's own non-blocking stream: a user's kernel spinning
            // on another stream (waiting for a peer, say) must not hold this up.
            auto e = cudaMemcpyAsync(p, table.data(), bytes, cudaMemcpyHostToDevice, stream_);
            if (e == cudaSuccess) e = cudaStreamSynchronize(stream_);
            if (e != cudaSuccess) {
                cudaFree(p);
                throw_cuda(e, "device_view: cudaMemcpyAsync(block table)");
            }
            view_table_ = reinterpret_cast<CUdeviceptr>(p);
            view_rows_ = rows;
        });
        return {reinterpret_cast<const device::block*>(view_table_), view_rows_};
    }

private:
    // What the first launch on a new stream pays once — the kernel's lazy
    // load into the context, the stream's and the event's first use — is
    // paid here, at prepare, by one launch over the empty chunk, instead of
    // by the first post.
    void warm_up() {
        CUdeviceptr empty = table_ + blocks_ * sizeof(copy_chunk);
        void* args[1] = {&empty};
        check_cu(driver_.launch_kernel(fn_, 1, 1, 1, copy_block_threads, 1, 1, 0, reinterpret_cast<CUstream>(stream_),
                                       args, nullptr),
                 "cuLaunchKernel(warm-up)");
        check_cuda(cudaEventRecord(done_, stream_), "cudaEventRecord(warm-up)");
        check_cuda(cudaEventSynchronize(done_), "cudaEventSynchronize(warm-up)");
    }

    // A zeroed table of `bytes` (the empty chunk warm_up launches over is
    // the last), in table_.
    void allocate_table(std::size_t bytes) {
        void* table = nullptr;
        check_cuda(cudaMalloc(&table, bytes), "cudaMalloc(chunk table)");
        table_ = reinterpret_cast<CUdeviceptr>(table);
        table_bytes_ = bytes;
        check_cuda(cudaMemset(table, 0, bytes), "cudaMemset(chunk table)");
    }

    void release() noexcept {
        int previous = -1;
        cudaGetDevice(&previous);
        if (previous != device_) cudaSetDevice(device_);
        // The kernel reads the table until it is done; so may a user's copy
        // of the view's table, on the same stream.
        const bool idle = (!done_ || cudaEventSynchronize(done_) == cudaSuccess) &&
                          (!stream_ || cudaStreamSynchronize(stream_) == cudaSuccess);
        if (pool_ && idle && done_ && stream_ && table_) {
            pool_->give({stream_, done_, table_, table_bytes_});
        } else {
            copy_resources own{stream_, done_, table_, table_bytes_};
            copy_pool::destroy(device_, own);
        }
        // A user's kernel may still be reading it: a released transfer's
        // view is dangling, as a freed buffer is.
        if (view_table_) cudaFree(reinterpret_cast<void*>(view_table_));
        if (previous >= 0 && previous != device_) cudaSetDevice(previous);
        done_ = nullptr;
        stream_ = nullptr;
        table_ = 0;
        view_table_ = 0;
    }

    const driver_api& driver_ = checked_driver();
    int device_;
    CUcontext context_ = nullptr;
    CUfunction fn_ = nullptr;
    unsigned blocks_ = 0;
    CUdeviceptr table_ = 0;
    std::size_t table_bytes_ = 0;
    cudaStream_t stream_ = nullptr;
    cudaEvent_t done_ = nullptr;
    void* args_[1] = {nullptr};
    std::shared_ptr<copy_pool> pool_;
    std::vector<copy_pair> pairs_;  // for view(), which most transfers never call
    std::once_flag view_built_;
    CUdeviceptr view_table_ = 0;
    std::size_t view_rows_ = 0;
    // The peer's allocations this copy writes or reads, kept mapped while it lives.
    std::vector<std::shared_ptr<void>> mappings_;
};

}  // namespace detail::cuda
FERRY_NAMESPACE_END
