#pragma once

// --mode step, the initiator's part: a layer's step is one post of a
// prepared list with a notification, until the target holds the
// notification. The target stamps that moment on the steady clock, which
// two processes on one host share, and sends it back over the control
// connection; no control message crosses the timed window.

#include "control.hpp"
#include "measure.hpp"
#include "output.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {

/// The samples of step measurements, in seconds from just before post().
struct step_samples {
    std::vector<double> post, complete, held;

    void add(const post_times& t, clock::time_point held_at) {
        auto since = [&](clock::time_point x) { return std::chrono::duration<double>(x - t.start).count(); };
        post.push_back(since(t.posted));
        complete.push_back(since(t.completed));
        held.push_back(since(held_at));
    }
    void append(const step_samples& more) {
        post.insert(post.end(), more.post.begin(), more.post.end());
        complete.insert(complete.end(), more.complete.begin(), more.complete.end());
        held.insert(held.end(), more.held.begin(), more.held.end());
    }
    [[nodiscard]] step_summary summary() {
        step_summary s;
        s.p50_us = percentile(held, 50) * 1e6;
        s.p99_us = percentile(held, 99) * 1e6;
        s.min_us = held.empty() ? 0 : *std::min_element(held.begin(), held.end()) * 1e6;
        s.mean_us = mean(held) * 1e6;
        s.post_us = percentile(post, 50) * 1e6;
        s.complete_us = percentile(complete, 50) * 1e6;
        return s;
    }
};

/// `n` steps of `runner` (ferry's or the raw loop): one post with a
/// notification, waited for; then, outside the timed window, the target's
/// word of when it held the notification, which this side sleeps for so that
/// the target has the CPU.
template <class Runner>
void run_steps(Runner& runner, control& ctl, std::size_t n, double timeout, step_samples& into) {
    for (std::size_t i = 0; i < n; ++i) {
        const post_times t = runner.timed_post(note_step);
        const message m = ctl.await_asleep(msg::step_held, timeout, "the step's notification");
        auto r = m.reader();
        const auto count = r.u64();
        const clock::time_point held{std::chrono::duration_cast<clock::duration>(std::chrono::nanoseconds(r.u64()))};
        r.expect_end();
        if (count != 1)
            throw std::runtime_error(std::string("step: the target held ") + std::to_string(count) +
                                     " step notifications at once, expected 1");
        if (held < t.start)
            throw std::runtime_error("step: the target held the notification before it was posted; are the "
                                     "two processes' clocks the same clock (one host)?");
        into.add(t, held);
    }
}

}  // namespace bench
