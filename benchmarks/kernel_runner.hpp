#pragma once

// --kernel: a row's blocks moved by ferry-bench's own kernels
// (device_kernels.cu) on the transfer ferry prepared, timed on the GPU: the
// kernel-initiated counterpart of ferry_runner's bw() and pingpong().

#include <ferry/device/view.hpp>

#include <cstddef>
#include <cstdint>

namespace bench {

struct kernel_report;

class kernel_runner {
public:
    /// A stream, two timing events and a report in GPU memory, on device 0.
    kernel_runner();
    ~kernel_runner();
    kernel_runner(const kernel_runner&) = delete;
    kernel_runner& operator=(const kernel_runner&) = delete;

    /// Seconds from the start of the first to the end of the last of
    /// `iters` launches back to back, each moving every block of `v` with a
    /// signal per block to counter `theirs` of `s`.
    double burst(const ferry::device::view& v, const ferry::device::signal& s, std::uint64_t theirs,
                 std::size_t iters);

    /// The initiator's side of `iterations` timed kernel ping-pongs (after
    /// one untimed round that waits for the other side's kernel): block 0 of
    /// `v` put, then an add to counter `theirs` of `s`, then a wait until
    /// counter `mine` of `c` reaches `base` + the round's number. Returns
    /// half the mean round trip in seconds; throws when the other side never
    /// answered within `timeout` seconds.
    double ping(const ferry::device::view& v, const ferry::device::signal& s, std::uint64_t theirs,
                const ferry::device::counter_ref& c, std::uint64_t mine, std::uint64_t base, std::size_t iterations,
                double timeout);

    /// The target's side: launches the answering kernel and returns at
    /// once; finish_pong waits for it and says whether every round was
    /// answered.
    void start_pong(const ferry::device::view& v, const ferry::device::signal& s, std::uint64_t theirs,
                    const ferry::device::counter_ref& c, std::uint64_t mine, std::uint64_t base,
                    std::size_t iterations, double timeout);
    [[nodiscard]] bool finish_pong();

private:
    // Launches the ping (or pong) kernel on the stream, its report zeroed first.
    void start_round_trips(bool ping, const ferry::device::view& v, const ferry::device::signal& s,
                           std::uint64_t theirs, const ferry::device::counter_ref& c, std::uint64_t mine,
                           std::uint64_t base, std::size_t iterations, double timeout);
    kernel_report read_report();
    void release() noexcept;

    void* stream_ = nullptr;
    void* start_ = nullptr;
    void* stop_ = nullptr;
    kernel_report* report_ = nullptr;
};

}  // namespace bench
