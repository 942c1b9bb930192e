#pragma once

// The initiator: drives the sweep and measures each row, ferry and the raw
// loop alternating so that drift and noise hit both.

#include "control.hpp"
#include "measure.hpp"
#include "nixl_runner.hpp"
#include "options.hpp"
#include "output.hpp"
#include "plan.hpp"
#include "side.hpp"
#include "step.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace bench {

template <bench_backend B>
class initiator {
public:
    /// `nixl`: the facade's runner, with --nixl.
    initiator(control& ctl, const options& o, std::size_t buffer, side<B>& me, nixl_runner* nixl = nullptr)
        : ctl_(ctl), o_(o), buffer_(buffer), me_(me), nixl_(nixl) {}

    /// Row `index` of the sweep.
    row_result run_row(std::size_t index, const row_spec& spec, progress_line& progress, const std::string& label) {
        if (index > 0 && o_.reload_peer) me_.reload();
        std::optional<double> connect_us;
        if ((index == 0 || o_.reload_peer) && !o_.no_connect) connect_us = me_.connect() * 1e6;
        const layout l = make_layout(o_.pattern, spec.block, spec.batch, buffer_, o_.seed, o_.run_length);
        const bool raw = me_.has_raw();
        ctl_.send(msg::row, wire_writer()
                                .u64(o_.op == ferry::xfer_op::read)
                                .u64(spec.block)
                                .u64(o_.mode.lat)
                                .u64s(l.local)
                                .u64s(l.remote));
        me_.ferry().prepare(o_.op, l.local, l.remote, spec.block);
        if (raw) me_.raw().prepare(o_.op, l.local, l.remote, spec.block);
        if (nixl_) nixl_->prepare(o_.op, l.local, l.remote, spec.block);
        await(msg::row_ok, "the row's answer transfers");

        row_result out;
        out.memory = cat(to_string(o_.initiator_buffer), ",", to_string(o_.target_buffer));
        out.path = std::string(ferry::to_string(me_.ferry().path()));
        out.op = o_.op;
        out.block = spec.block;
        out.batch = spec.batch;
        out.mem = o_.mem;
        out.pattern = o_.pattern;
        out.run_length = o_.run_length;
        out.blocks = me_.ferry().blocks();
        out.entries = me_.ferry().entries();
        out.prepare_us = me_.ferry().prepare_seconds() * 1e6;
        if (raw) out.raw_buffer = me_.raw_note().empty() && me_.peer_raw_note().empty() ? "same" : "own";
        const double bytes = static_cast<double>(spec.block) * static_cast<double>(spec.batch);

        // Before any warm-up: the cost of a transfer's first post.
        const std::string_view first_note = o_.notif || o_.mode.step ? note_bw : std::string_view{};
        out.first_us = micros(me_.ferry().timed_post(first_note));
        out.first_after_load = index == 0 || o_.reload_peer;
        out.connect_us = connect_us;
        if (raw) out.raw_first_us = micros(me_.raw().timed_post(first_note));
        sync();

        if (o_.mode.bw) measure_bw(out, l, bytes, progress, label);
        if (nixl_) measure_nixl(out, progress, label);
        if (o_.mode.bw && me_.has_kernel()) measure_kernel_bw(out, bytes, progress, label);
        if (o_.mode.lat) measure_lat(out, progress, label);
        if (o_.mode.step) measure_step(out, bytes, progress, label);
        out.prepare_again_us = me_.ferry().prepare_again() * 1e6;

        ctl_.send(msg::row_end);
        await(msg::row_end_ok, "the end of the row");
        me_.ferry().release();
        if (nixl_) nixl_->release();
        return out;
    }

    void quit() {
        ctl_.send(msg::quit);
        await(msg::bye, "its goodbye");
    }

    /// Timed measurements, and those during which another process still
    /// preempted either side after every retry.
    [[nodiscard]] std::size_t measurements() const noexcept { return measurements_; }
    [[nodiscard]] std::size_t disturbed() const noexcept { return disturbed_; }

private:
    static double micros(const post_times& t) {
        return std::chrono::duration<double, std::micro>(t.completed - t.start).count();
    }

    void measure_bw(row_result& out, const layout& l, double bytes, progress_line& progress,
                    const std::string& label) {
        const bool raw = me_.has_raw();
        progress.show(label + " warm-up");
        auto timed = [&](auto& runner, std::size_t n) { return runner.bw(n, o_.notif).seconds; };
        const std::size_t iters = warm_both(timed);
        // raw, ferry, raw, ferry, ..., raw: each ferry measurement is
        // compared with the mean of the raw ones on either side of it, so
        // that a linear drift cancels out.
        auto gbps_of = [&](const bw_sample& s) { return bytes * static_cast<double>(s.iters) / s.seconds / 1e9; };
        auto raw_once = [&] {
            return gbps_of(clean([&] {
                auto s = me_.raw().bw(iters, o_.notif);
                sync();
                return s;
            }));
        };
        std::vector<double> f_gbps, f_dps, f_post, f_xfer, r_gbps, ratios;
        // --telemetry: ferry's histogram over the repetitions below, taken
        // as the difference of two snapshots.
        auto histogram = [&] {
            std::pair<ferry::latency_histogram, std::uint64_t> h{};
            if constexpr (requires { me_.backend().snapshot(); }) {
                const auto snap = me_.backend().snapshot();
                h = {snap.latency[ferry::telemetry_path_index(me_.ferry().path())], snap.totals.posts};
            }
            return h;
        };
        const auto before = histogram();
        std::uint64_t posts = 0;
        if (raw) r_gbps.push_back(raw_once());
        for (std::size_t rep = 0; rep < o_.reps; ++rep) {
            progress.show(cat(label, " bw ", std::to_string(rep + 1), "/", std::to_string(o_.reps)));
            auto s = clean([&] {
                auto s = me_.ferry().bw(iters, o_.notif);
                sync();
                return s;
            });
            posts += s.iters;
            const double gbps = gbps_of(s);
            f_gbps.push_back(gbps);
            f_dps.push_back(static_cast<double>(s.iters * out.batch) / s.seconds);
            f_post.push_back(s.post_seconds * 1e9 / static_cast<double>(out.batch));
            f_xfer.push_back(s.seconds / static_cast<double>(s.iters) * 1e6);
            if (raw) {
                r_gbps.push_back(raw_once());
                ratios.push_back(gbps / ((r_gbps[rep] + r_gbps[rep + 1]) / 2));
            }
        }
        out.gbps = median(f_gbps);
        out.desc_per_s = median(f_dps);
        out.post_ns = median(f_post);
        out.xfer_us = median(f_xfer);
        if constexpr (requires { me_.backend().snapshot(); }) {
            auto [h, total] = histogram();
            for (std::size_t i = 0; i < h.cumulative.size(); ++i) h.cumulative[i] -= before.first.cumulative[i];
            h.count -= before.first.count;
            h.sum_ns -= before.first.sum_ns;
            // clean() may repeat a disturbed measurement: every post it made counts.
            if (h.count != total - before.second || h.count < posts)
                throw std::runtime_error("--telemetry: the histogram counted " + std::to_string(h.count) +
                                         " completions for " + std::to_string(total - before.second) + " posts");
            out.tel_p50_us = h.quantile_ns(0.5) / 1e3;
            out.tel_p99_us = h.quantile_ns(0.99) / 1e3;
        }
        const bool write = o_.op == ferry::xfer_op::write;
        auto copy = me_.copy_gbps(static_cast<std::size_t>(bytes), iters, write);
        if (!copy) {
            std::vector<double> m;
            for (int i = 0; i < 3; ++i)
                if (auto g = me_.memcpy_gbps(l, out.block, iters, write)) m.push_back(*g);
            if (!m.empty()) copy = median(m);
        }
        if (copy) {
            out.copy_gbps = *copy;
            out.copy_ratio = *out.gbps / *copy;
        }
        if (raw) {
            out.raw_gbps = median(r_gbps);
            out.ratio = median(ratios);
        }
    }

    // --nixl: direct, nixl, direct, ..., nixl, direct on the agent's one
    // request; each facade measurement is compared with the mean of the
    // direct ones either side of it, as ferry's are with the raw loop's.
    void measure_nixl(row_result& out, progress_line& progress, const std::string& label) {
        nixl_runner& n = *nixl_;
        auto facade = [&](std::size_t k) { return n.facade(k); };
        auto direct = [&](std::size_t k) { return n.direct(k); };
        progress.show(label + " nixl warm-up");
        const double per = std::max(warm(facade), warm(direct));
        sync();
        const std::size_t iters = iterations(per);
        auto us = [&](auto& run) {
            const double seconds = clean([&] {
                const double s = run(iters);
                sync();
                return s;
            });
            return seconds / static_cast<double>(iters) * 1e6;
        };
        std::vector<double> f_us, d_us, extra;
        d_us.push_back(us(direct));
        for (std::size_t rep = 0; rep < o_.reps; ++rep) {
            progress.show(cat(label, " nixl ", std::to_string(rep + 1), "/", std::to_string(o_.reps)));
            f_us.push_back(us(facade));
            d_us.push_back(us(direct));
            extra.push_back(f_us[rep] - (d_us[rep] + d_us[rep + 1]) / 2);
        }
        out.nixl_us = median(f_us);
        out.nixl_direct_us = median(d_us);
        out.nixl_overhead_us = median(extra);
    }

    void measure_lat(row_result& out, progress_line& progress, const std::string& label) {
        const bool raw = me_.has_raw();
        std::vector<double> scratch, f_lat, r_lat;
        progress.show(label + " ping-pong warm-up");
        auto timed = [&](auto& runner, std::size_t n) {
            scratch.clear();
            auto t0 = clock::now();
            runner.pingpong(n, scratch);
            return seconds_since(t0);
        };
        const std::size_t iters = warm_both(timed);
        auto pingpong = [&](auto& runner, std::vector<double>& into) {
            auto samples = clean([&] {
                std::vector<double> v;
                runner.pingpong(iters, v);
                sync();
                return v;
            });
            into.insert(into.end(), samples.begin(), samples.end());
        };
        if (raw) pingpong(me_.raw(), r_lat);
        for (std::size_t rep = 0; rep < o_.reps; ++rep) {
            progress.show(cat(label, " ping-pong ", std::to_string(rep + 1), "/", std::to_string(o_.reps)));
            pingpong(me_.ferry(), f_lat);
            if (raw) pingpong(me_.raw(), r_lat);
        }
        out.lat_p50_us = percentile(f_lat, 50) * 1e6;
        out.lat_p99_us = percentile(f_lat, 99) * 1e6;
        if (raw) {
            out.raw_p50_us = percentile(r_lat, 50) * 1e6;
            out.raw_p99_us = percentile(r_lat, 99) * 1e6;
            out.lat_ratio = *out.lat_p50_us / *out.raw_p50_us;
        }
        if (me_.has_kernel()) {
            // A short run first, which warms up and sizes the timed ones to
            // --time, as warm() does for the host's.
            progress.show(label + " kernel ping-pong warm-up");
            const double probe = kernel_pingpong(16);
            const std::size_t rounds = std::clamp<std::size_t>(iterations(2 * probe), 16, 100000);
            std::vector<double> k_lat;
            for (std::size_t rep = 0; rep < o_.reps; ++rep) {
                progress.show(cat(label, " kernel ping-pong ", std::to_string(rep + 1), "/", std::to_string(o_.reps)));
                k_lat.push_back(kernel_pingpong(rounds));
            }
            out.kernel_lat_us = median(k_lat) * 1e6;
            out.kernel_lat_ratio = *out.kernel_lat_us / *out.lat_p50_us;
            if (*out.kernel_lat_us > 100 && !told_time_slicing_) {
                told_time_slicing_ = true;
                std::printf("# --kernel: the two processes' kernels took turns on the GPU (time-slicing) instead of "
                            "running together; run under MPS (nvidia-cuda-mps-control -d) for the kernel-to-kernel "
                            "latency\n");
            }
        }
    }

    // --kernel, bw: host, kernel, host, ..., kernel, host, as raw and ferry
    // alternate in measure_bw: each kernel measurement is compared with the
    // mean of ferry's host-initiated ones on either side of it.
    void measure_kernel_bw(row_result& out, double bytes, progress_line& progress, const std::string& label) {
        progress.show(label + " kernel warm-up");
        const double per = warm([&](std::size_t n) { return me_.kernel_burst(n); });
        const std::size_t iters = iterations(per);
        auto host_once = [&] {
            const bw_sample s = clean([&] {
                auto s = me_.ferry().bw(iters, o_.notif);
                sync();
                return s;
            });
            return bytes * static_cast<double>(s.iters) / s.seconds / 1e9;
        };
        auto kernel_once = [&] { return bytes * static_cast<double>(iters) / me_.kernel_burst(iters) / 1e9; };
        std::vector<double> host{host_once()}, kernel, ratios;
        for (std::size_t rep = 0; rep < o_.reps; ++rep) {
            progress.show(cat(label, " kernel bw ", std::to_string(rep + 1), "/", std::to_string(o_.reps)));
            kernel.push_back(kernel_once());
            host.push_back(host_once());
            ratios.push_back(kernel[rep] / ((host[rep] + host[rep + 1]) / 2));
        }
        out.kernel_gbps = median(kernel);
        out.kernel_ratio = median(ratios);
    }

    // One kernel ping-pong of `rounds` timed round trips: the target's
    // answering kernel first, then this side's; half a round trip, seconds.
    double kernel_pingpong(std::size_t rounds) {
        ctl_.send(msg::kernel_pong, wire_writer().u64(kernel_rounds_).u64(rounds));
        await(msg::kernel_pong_ok, "its answering kernel");
        const double half = me_.kernel_ping(kernel_rounds_, rounds);
        kernel_rounds_ += rounds + 1;  // the untimed first round too
        ctl_.send(msg::kernel_end);
        const message m = await(msg::kernel_end_ok, "the end of its answering kernel");
        auto r = m.reader();
        const bool answered = r.u64() == 0;
        r.expect_end();
        if (!answered) throw std::runtime_error("--kernel: the target's answering kernel gave up waiting for a ping");
        return half;
    }

    void measure_step(row_result& out, double bytes, progress_line& progress, const std::string& label) {
        const bool raw = me_.has_raw();
        step_samples scratch, f, r;
        auto timed = [&](auto& runner, std::size_t n) {
            scratch = {};
            auto t0 = clock::now();
            run_steps(runner, ctl_, n, o_.timeout, scratch);
            return seconds_since(t0);
        };
        progress.show(label + " step warm-up");
        const std::size_t iters = warm_both(timed);
        auto once = [&](auto& runner, step_samples& into) {
            auto got = clean([&] {
                step_samples s;
                run_steps(runner, ctl_, iters, o_.timeout, s);
                sync();
                return s;
            });
            into.append(got);
        };
        if (raw) once(me_.raw(), r);
        for (std::size_t rep = 0; rep < o_.reps; ++rep) {
            progress.show(cat(label, " step ", std::to_string(rep + 1), "/", std::to_string(o_.reps)));
            once(me_.ferry(), f);
            if (raw) once(me_.raw(), r);
        }
        out.step = f.summary();
        out.step_gbps = bytes / (out.step->p50_us * 1e-6) / 1e9;
        if (out.gbps) out.step_vs_bw = *out.step_gbps / *out.gbps;
        if (raw) {
            out.raw_step = r.summary();
            if (out.raw_gbps) out.raw_step_vs_bw = bytes / (out.raw_step->p50_us * 1e-6) / 1e9 / *out.raw_gbps;
            out.step_ratio = out.step->p50_us / out.raw_step->p50_us;
        }
    }

    // Runs one measurement, with its sync, again while either side was
    // preempted during it, up to --retries times. A progress thread preempts
    // its own process, so under that policy nothing is retried.
    template <class F>
    auto clean(F&& f) {
        for (std::size_t attempt = 0;; ++attempt) {
            const auto mine = involuntary_switches();
            const auto theirs = target_switches_;
            auto r = f();
            const bool quiet = involuntary_switches() == mine && target_switches_ == theirs;
            if (quiet || has_progress_thread<B> || attempt >= o_.retries) {
                ++measurements_;
                if (!quiet) ++disturbed_;
                return r;
            }
        }
    }

    // Warm-up: --warmup posts in doubling chunks, cut short after --time.
    // Returns seconds per post from the largest chunk, for --iters auto.
    template <class Run>
    double warm(Run run) {
        if (o_.warmup == 0 && o_.iters != 0) return 0;
        std::size_t done = 0, chunk = 1, largest = 0;
        double spent = 0, per = 0;
        while (true) {
            const double s = run(chunk);
            done += chunk;
            spent += s;
            if (chunk >= largest) {
                largest = chunk;
                per = s / static_cast<double>(chunk);
            }
            if (done >= o_.warmup || spent >= o_.time) return per;
            chunk = std::min(chunk * 2, o_.warmup - done);
        }
    }

    // Warms ferry's runner, then raw's if there is one, with timed(runner, n);
    // returns the iterations for the slower of the two.
    template <class Timed>
    std::size_t warm_both(Timed& timed) {
        double per = warm([&](std::size_t n) { return timed(me_.ferry(), n); });
        sync();
        if (me_.has_raw()) {
            per = std::max(per, warm([&](std::size_t n) { return timed(me_.raw(), n); }));
            sync();
        }
        return iterations(per);
    }

    [[nodiscard]] std::size_t iterations(double per_post) const {
        if (o_.iters) return o_.iters;
        if (per_post <= 0) return 1;
        return static_cast<std::size_t>(std::clamp(o_.time / per_post, 1.0, 1e8));
    }

    message await(msg type, std::string_view what) {
        return ctl_.await(type, [this] { me_.progress(); }, o_.timeout, what);
    }

    // Every notification sent so far must have reached the target, no more.
    void sync() {
        const std::uint64_t f_sent = me_.ferry().sent();
        const std::uint64_t r_sent = me_.has_raw() ? me_.raw().sent() : 0;
        ctl_.send(msg::sync, wire_writer().u64(f_sent).u64(r_sent));
        const message m = await(msg::sync_ok, "its notification count");
        auto r = m.reader();
        const auto f_got = r.u64(), r_got = r.u64(), bad = r.u64(), dropped = r.u64();
        target_switches_ = r.u64();
        if (f_got != f_sent || r_got != r_sent || bad != 0 || dropped != 0)
            throw std::runtime_error(
                "notifications do not add up: ferry sent " + std::to_string(f_sent) + ", the target counted " +
                std::to_string(f_got) + "; raw sent " + std::to_string(r_sent) + ", the target counted " +
                std::to_string(r_got) + "; unexpected " + std::to_string(bad) + ", dropped " + std::to_string(dropped));
    }

    control& ctl_;
    const options& o_;
    std::size_t buffer_;
    side<B>& me_;
    nixl_runner* nixl_;
    std::uint64_t target_switches_ = 0;
    std::uint64_t kernel_rounds_ = 0;  // --kernel: ping-pong rounds so far, each side's counter's value
    bool told_time_slicing_ = false;
    std::size_t measurements_ = 0;
    std::size_t disturbed_ = 0;
};

}  // namespace bench
