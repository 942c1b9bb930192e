#include "kernel_runner.hpp"

#include "device_kernels.hpp"

#include <cuda_runtime_api.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace bench {

namespace {

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string("--kernel: ") + what + ": " + cudaGetErrorString(e));
}

word nanoseconds(double seconds) { return static_cast<word>(std::llround(seconds * 1e9)); }

}  // namespace

kernel_runner::kernel_runner() {
    check(cudaSetDevice(0), "cudaSetDevice(0)");
    try {
        // Non-blocking: ferry's own copies and the counters' reads run on
        // streams of their own, and a ping or pong kernel spinning here must
        // not hold them up (the legacy default stream would).
        cudaStream_t s = nullptr;
        check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
        stream_ = s;
        cudaEvent_t e = nullptr;
        check(cudaEventCreate(&e), "cudaEventCreate");
        start_ = e;
        check(cudaEventCreate(&e), "cudaEventCreate");
        stop_ = e;
        void* p = nullptr;
        check(cudaMalloc(&p, sizeof(kernel_report)), "cudaMalloc");
        report_ = static_cast<kernel_report*>(p);
    } catch (...) {
        release();
        throw;
    }
}

kernel_runner::~kernel_runner() { release(); }

void kernel_runner::release() noexcept {
    if (stream_) cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
    if (report_) cudaFree(report_);
    if (stop_) cudaEventDestroy(static_cast<cudaEvent_t>(stop_));
    if (start_) cudaEventDestroy(static_cast<cudaEvent_t>(start_));
    if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
    report_ = nullptr;
    stop_ = start_ = stream_ = nullptr;
}

double kernel_runner::burst(const ferry::device::view& v, const ferry::device::signal& s, std::uint64_t theirs,
                            std::size_t iters) {
    auto* st = static_cast<cudaStream_t>(stream_);
    check(cudaEventRecord(static_cast<cudaEvent_t>(start_), st), "cudaEventRecord");
    for (std::size_t i = 0; i < iters; ++i) check(launch_burst(v, s, theirs, st), "the burst kernel's launch");
    check(cudaEventRecord(static_cast<cudaEvent_t>(stop_), st), "cudaEventRecord");
    check(cudaEventSynchronize(static_cast<cudaEvent_t>(stop_)), "the burst kernels");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start_), static_cast<cudaEvent_t>(stop_)),
          "cudaEventElapsedTime");
    return static_cast<double>(ms) / 1e3;
}

void kernel_runner::start_round_trips(bool ping, const ferry::device::view& v, const ferry::device::signal& s,
                                      std::uint64_t theirs, const ferry::device::counter_ref& c, std::uint64_t mine,
                                      std::uint64_t base, std::size_t iterations, double timeout) {
    auto* st = static_cast<cudaStream_t>(stream_);
    check(cudaMemsetAsync(report_, 0, sizeof(kernel_report), st), "cudaMemsetAsync");
    check((ping ? launch_ping : launch_pong)(v, s, theirs, c, mine, base, iterations, nanoseconds(timeout), report_,
                                             st),
          ping ? "the ping kernel's launch" : "the pong kernel's launch");
}

double kernel_runner::ping(const ferry::device::view& v, const ferry::device::signal& s, std::uint64_t theirs,
                           const ferry::device::counter_ref& c, std::uint64_t mine, std::uint64_t base,
                           std::size_t iterations, double timeout) {
    start_round_trips(true, v, s, theirs, c, mine, base, iterations, timeout);
    check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)), "the ping kernel");
    const kernel_report r = read_report();
    if (r.timeouts != 0)
        throw std::runtime_error("--kernel: the target's kernel did not answer a ping within " +
                                 std::to_string(timeout) + " s (--timeout)");
    return static_cast<double>(r.elapsed_ns) / 1e9 / static_cast<double>(iterations) / 2;
}

void kernel_runner::start_pong(const ferry::device::view& v, const ferry::device::signal& s, std::uint64_t theirs,
                               const ferry::device::counter_ref& c, std::uint64_t mine, std::uint64_t base,
                               std::size_t iterations, double timeout) {
    start_round_trips(false, v, s, theirs, c, mine, base, iterations, timeout);
}

bool kernel_runner::finish_pong() {
    check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)), "the pong kernel");
    return read_report().timeouts == 0;
}

kernel_report kernel_runner::read_report() {
    kernel_report r{};
    check(cudaMemcpyAsync(&r, report_, sizeof r, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream_)),
          "cudaMemcpyAsync");
    check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)), "cudaStreamSynchronize");
    return r;
}

}  // namespace bench
