#pragma once

// The target: it progresses continuously (a poll_notifs loop), counts
// notifications, answers pings, tells the initiator when it held each step's
// notification, and between measurements obeys the initiator's control
// messages.

#include "control.hpp"
#include "measure.hpp"
#include "side.hpp"

#include <chrono>
#include <cstdint>
#include <string>

namespace bench {

template <bench_backend B>
void run_target(control& ctl, const options& settings, std::size_t buffer) {
    side<B> me("bench-target", settings, buffer, settings.target_buffer, settings.initiator_buffer);
    handshake(ctl, me, settings.timeout);
    const bool raw = me.has_raw();
    auto serve = [&] {
        me.ferry().poll();
        if (raw) me.raw().poll();
    };
    // A step's notification was handed over: say when, at once (the
    // initiator waits for this before its next step; the clocks of two
    // processes on one host are the same clock).
    auto report_steps = [&](std::uint64_t n, clock::time_point held) {
        if (n != 0)
            ctl.send(msg::step_held, wire_writer().u64(n).u64(static_cast<std::uint64_t>(
                                                               std::chrono::nanoseconds(held.time_since_epoch()).count())));
    };
    for (unsigned n = 0;; ++n) {
        serve();
        clock::time_point held;
        report_steps(me.ferry().take_steps(held), held);
        if (raw) report_steps(me.raw().take_steps(held), held);
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
            case msg::kernel_pong: {
                auto r = m.reader();
                const auto base = r.u64();
                const auto rounds = r.u64();
                r.expect_end();
                me.kernel_start_pong(base, rounds);
                ctl.send(msg::kernel_pong_ok);
                break;
            }
            case msg::kernel_end:
                ctl.send(msg::kernel_end_ok, wire_writer().u64(me.kernel_finish_pong() ? 0 : 1));
                break;
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
