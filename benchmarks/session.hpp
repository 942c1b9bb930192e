#pragma once

// The two roles, generic over the backend type. The initiator drives the
// sweep and measures; the target serves: it progresses continuously (a
// poll_notifs loop), counts notifications, answers pings, and between
// measurements obeys the initiator's control messages.

#include "backends.hpp"
#include "control.hpp"
#if defined(FERRY_BENCH_CUDA)
#include "cuda_buffers.hpp"
#endif
#include "ferry_runner.hpp"
#include "measure.hpp"
#include "options.hpp"
#include "output.hpp"
#include "plan.hpp"
#include "raw_runner.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace bench {

/// One process's half: its memory, backend, region, the peer, and the two
/// runners over them. Members are declared so that they are destroyed in a
/// safe order: the runners (rkeys, transfers) before the region and the
/// backend (endpoint, context), and user memory last.
template <bench_backend B>
class side {
public:
    /// `mine` and `theirs`: where this side's and the peer's buffers live.
    side(const std::string& name, const options& o, std::size_t buffer, buffer_kind mine, buffer_kind theirs)
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
            gpu_mem_ = cuda_alloc(buffer, mine == buffer_kind::cuda, 0x5A);
            region_.emplace(backend_->register_memory(gpu_mem_.get(), buffer, 0));
            if (name == "bench-initiator")
                copy_.emplace(gpu_mem_.get(), mine == buffer_kind::cuda, theirs == buffer_kind::cuda, buffer);
#endif
        } else {
            if (o.mem == mem_kind::user) region_.emplace(backend_->register_memory(user_.get(), buffer, 0));
            else region_.emplace(backend_->allocate(buffer));
            // Fault every page in now, not inside a timed loop.
            std::memset(region_->data(), 0x5A, buffer);
        }
        if (o.baseline == baseline_kind::raw) {
            if constexpr (raw_capable<B>)
                raw_.emplace(backend_->ucx_context(), backend_->ucx_worker(), region_->data(), buffer,
                             !cuda && o.mem == mem_kind::ucx, o.timeout, cuda && mine == buffer_kind::cuda);
            else
                throw usage_error("--baseline raw: this backend does not let the baseline drive its UCX worker "
                                  "(a progress thread owns it, or it exposes no UCX handles); use --baseline none");
        }
    }

    [[nodiscard]] wire_writer hello() const {
        wire_writer w;
        w.bytes(backend_->local_metadata()).u64(base()).u64(buffer_).u64(raw_ ? 1 : 0);
        if (raw_) w.bytes(raw_->packed_rkey()).u64(raw_->base());
        return w;
    }

    void load(const message& m) {
        auto r = m.reader();
        auto blob = r.bytes();
        const auto remote_base = r.u64();
        const auto remote_size = r.u64();
        const bool remote_raw = r.u64() != 0;
        if (remote_size != buffer_) throw peer_error("the peer registered a buffer of a different size");
        if (remote_raw != raw_.has_value()) throw peer_error("the peer disagrees about --baseline raw");
        peer_ = backend_->load_remote(blob);
        ferry_.emplace(*backend_, peer_, base(), remote_base, opts_.timeout, to_xfer_path(opts_.path));
        if (remote_raw) {
            auto rkey = r.bytes();
            const auto raw_base = r.u64();
            if constexpr (raw_capable<B>) raw_->connect(backend_->ucx_endpoint(peer_), rkey, raw_base);
        }
        r.expect_end();
    }

    void progress() { backend_->progress(); }
    [[nodiscard]] std::uintptr_t base() const { return reinterpret_cast<std::uintptr_t>(region_->data()); }
    ferry_runner<B>& ferry() { return *ferry_; }
    [[nodiscard]] bool has_raw() const { return raw_.has_value(); }
    raw_runner& raw() { return *raw_; }
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

private:
    struct free_deleter {
        void operator()(std::byte* p) const noexcept { std::free(p); }
    };

    options opts_;
    std::size_t buffer_;
    std::unique_ptr<std::byte, free_deleter> user_;
#if defined(FERRY_BENCH_CUDA)
    cuda_buffer gpu_mem_{nullptr, cuda_free{true}};
    std::optional<copy_reference> copy_;
#endif
    std::unique_ptr<B> backend_;
    std::optional<typename B::region_type> region_;
    std::optional<raw_runner> raw_;
    ferry::peer peer_{};
    std::optional<ferry_runner<B>> ferry_;
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

// ---- initiator ------------------------------------------------------------------

template <bench_backend B>
class initiator {
public:
    initiator(control& ctl, const options& o, std::size_t buffer, side<B>& me)
        : ctl_(ctl), o_(o), buffer_(buffer), me_(me) {}

    row_result run_row(const row_spec& spec, progress_line& progress, const std::string& label) {
        const layout l = make_layout(o_.pattern, spec.block, spec.batch, buffer_, o_.seed);
        const bool bw = o_.mode != mode_kind::lat, lat = o_.mode != mode_kind::bw;
        const bool raw = me_.has_raw();
        ctl_.send(msg::row, wire_writer().u64(o_.op == ferry::xfer_op::read).u64(spec.block).u64(lat).u64s(l.local).u64s(
                                l.remote));
        me_.ferry().prepare(o_.op, l.local, l.remote, spec.block);
        if (raw) me_.raw().prepare(o_.op, l.local, l.remote, spec.block);
        await(msg::row_ok, "the row's answer transfers");

        row_result out;
        out.memory = std::string(to_string(o_.initiator_buffer)) + "," + std::string(to_string(o_.target_buffer));
        out.path = std::string(ferry::to_string(me_.ferry().path()));
        out.op = o_.op;
        out.block = spec.block;
        out.batch = spec.batch;
        out.mem = o_.mem;
        out.pattern = o_.pattern;
        const double bytes = static_cast<double>(spec.block) * static_cast<double>(spec.batch);

        if (bw) {
            progress.show(label + " warm-up");
            double per = warm([&](std::size_t n) { return me_.ferry().bw(n, o_.notif).seconds; });
            sync();
            if (raw) {
                per = std::max(per, warm([&](std::size_t n) { return me_.raw().bw(n, o_.notif).seconds; }));
                sync();
            }
            const std::size_t iters = iterations(per);
            // raw, ferry, raw, ferry, ..., raw: each ferry measurement is
            // compared with the mean of the raw ones on either side of it,
            // so that a linear drift cancels out.
            auto gbps_of = [&](const bw_sample& s) { return bytes * static_cast<double>(s.iters) / s.seconds / 1e9; };
            auto raw_once = [&] {
                return gbps_of(clean([&] {
                    auto s = me_.raw().bw(iters, o_.notif);
                    sync();
                    return s;
                }));
            };
            std::vector<double> f_gbps, f_dps, f_post, r_gbps, ratios;
            if (raw) r_gbps.push_back(raw_once());
            for (std::size_t rep = 0; rep < o_.reps; ++rep) {
                progress.show(label + " bw " + std::to_string(rep + 1) + "/" + std::to_string(o_.reps));
                auto s = clean([&] {
                    auto s = me_.ferry().bw(iters, o_.notif);
                    sync();
                    return s;
                });
                const double gbps = gbps_of(s);
                f_gbps.push_back(gbps);
                f_dps.push_back(static_cast<double>(s.iters * spec.batch) / s.seconds);
                f_post.push_back(s.post_seconds * 1e9 / static_cast<double>(spec.batch));
                if (raw) {
                    r_gbps.push_back(raw_once());
                    ratios.push_back(gbps / ((r_gbps[rep] + r_gbps[rep + 1]) / 2));
                }
            }
            out.gbps = median(f_gbps);
            out.desc_per_s = median(f_dps);
            out.post_ns = median(f_post);
            if (auto copy = me_.copy_gbps(static_cast<std::size_t>(bytes), iters, o_.op == ferry::xfer_op::write)) {
                out.copy_gbps = *copy;
                out.copy_ratio = *out.gbps / *copy;
            }
            if (raw) {
                out.raw_gbps = median(r_gbps);
                out.ratio = median(ratios);
            }
        }

        if (lat) {
            std::vector<double> scratch, f_lat, r_lat;
            progress.show(label + " ping-pong warm-up");
            double per = warm([&](std::size_t n) {
                scratch.clear();
                auto t0 = clock::now();
                me_.ferry().pingpong(n, scratch);
                return seconds_since(t0);
            });
            sync();
            if (raw) {
                per = std::max(per, warm([&](std::size_t n) {
                                   scratch.clear();
                                   auto t0 = clock::now();
                                   me_.raw().pingpong(n, scratch);
                                   return seconds_since(t0);
                               }));
                sync();
            }
            const std::size_t iters = iterations(per);
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
                progress.show(label + " ping-pong " + std::to_string(rep + 1) + "/" + std::to_string(o_.reps));
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
        }

        ctl_.send(msg::row_end);
        await(msg::row_end_ok, "the end of the row");
        me_.ferry().release();
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
    std::uint64_t target_switches_ = 0;
    std::size_t measurements_ = 0;
    std::size_t disturbed_ = 0;
};

template <bench_backend B>
std::vector<row_result> run_initiator(control& ctl, const options& o, table_printer& table) {
    const std::size_t buffer = buffer_bytes(o);
    ctl.send(msg::settings, wire_writer().str(encode_target_settings(o)).u64(buffer));
    side<B> me("bench-initiator", o, buffer, o.initiator_buffer, o.target_buffer);
    handshake(ctl, me, o.timeout);

    table.header(o, buffer);
    initiator<B> run(ctl, o, buffer, me);
    const auto rows = make_rows(o);
    std::vector<row_result> results;
    progress_line progress;
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const std::string label = cat("[", std::to_string(i + 1), "/", std::to_string(rows.size()), "] ",
                                      ferry::to_string(o.op), " ", format_size(rows[i].block), " x ",
                                      std::to_string(rows[i].batch), ":");
        results.push_back(run.run_row(rows[i], progress, label));
        progress.clear();
        table.row(results.back());
    }
    run.quit();
    if (!has_progress_thread<B>)
        std::printf("# %zu of %zu timed measurements had a side preempted by another process even after %zu "
                    "retries\n",
                    run.disturbed(), run.measurements(), o.retries);
    return results;
}

// ---- target ------------------------------------------------------------------------

template <bench_backend B>
void run_target(control& ctl, const options& settings, std::size_t buffer) {
    side<B> me("bench-target", settings, buffer, settings.target_buffer, settings.initiator_buffer);
    handshake(ctl, me, settings.timeout);
    const bool raw = me.has_raw();
    auto serve = [&] {
        me.ferry().poll();
        if (raw) me.raw().poll();
    };
    for (unsigned n = 0;; ++n) {
        serve();
        // Inline progress: this loop is what drives UCX, so look at the
        // socket only now and then. A progress thread needs no driving, and
        // poll() sleeps on it, so look every time.
        if ((!has_progress_thread<B> && (n & 1023U) != 0) || !ctl.readable()) continue;
        auto m = ctl.recv();
        switch (m.type) {
            case msg::row: {
                auto r = m.reader();
                const auto op = r.u64() ? ferry::xfer_op::read : ferry::xfer_op::write;
                const auto block = r.u64();
                const bool answers = r.u64() != 0;
                const auto initiator_off = r.u64s();
                const auto target_off = r.u64s();
                r.expect_end();
                // The answer to a ping moves the same blocks the other way
                // round: from this side's blocks to the initiator's.
                if (answers) {
                    me.ferry().prepare(op, target_off, initiator_off, block);
                    if (raw) me.raw().prepare(op, target_off, initiator_off, block);
                }
                ctl.send(msg::row_ok);
                break;
            }
            case msg::sync: {
                auto r = m.reader();
                const auto f_want = r.u64(), r_want = r.u64();
                auto f_got = [&] { return me.ferry().received(); };
                auto r_got = [&] { return raw ? me.raw().received() : 0; };
                // Wait for what is still in flight; on timeout, report what
                // did arrive and let the initiator name the shortfall.
                const auto deadline = clock::now() + std::chrono::duration<double>(settings.timeout);
                for (unsigned k = 1; f_got() < f_want || r_got() < r_want; ++k) {
                    serve();
                    if ((k & 0xFFFU) == 0 && clock::now() > deadline) break;
                }
                ctl.send(msg::sync_ok, wire_writer()
                                           .u64(f_got())
                                           .u64(r_got())
                                           .u64(me.ferry().unexpected() + (raw ? me.raw().unexpected() : 0))
                                           .u64(me.ferry().dropped())
                                           .u64(involuntary_switches()));
                break;
            }
            case msg::row_end:
                me.ferry().release();
                ctl.send(msg::row_end_ok);
                break;
            case msg::quit:
                ctl.send(msg::bye);
                return;
            default:
                throw peer_error("control connection: unexpected message " +
                                 std::to_string(static_cast<unsigned>(m.type)) + " from the initiator");
        }
    }
}

}  // namespace bench
