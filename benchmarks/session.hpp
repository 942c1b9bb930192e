#pragma once

// The two roles, generic over the backend type: the initiator drives the
// sweep and measures (initiator.hpp); the target serves (target.hpp).

#include "backends.hpp"
#include "control.hpp"
#include "initiator.hpp"
#include "nixl_runner.hpp"
#include "options.hpp"
#include "output.hpp"
#include "plan.hpp"
#include "side.hpp"
#include "target.hpp"

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace bench {

template <bench_backend B>
std::vector<row_result> run_initiator(control& ctl, const options& o, table_printer& table) {
    const std::size_t buffer = buffer_bytes(o);
    ctl.send(msg::settings, wire_writer().str(encode_target_settings(o)).u64(buffer));
    side<B> me("bench-initiator", o, buffer, o.initiator_buffer, o.target_buffer);
    handshake(ctl, me, o.timeout);

    table.header(o, buffer);
    // Said once, in the output, where the raw loop does not run on ferry's
    // buffers (the rows say "own").
    const std::string mine = me.raw_note(), theirs = me.peer_raw_note();
    if (!mine.empty() && mine == theirs) std::printf("# raw baseline, both sides: %s\n", mine.c_str());
    else if (!mine.empty()) std::printf("# raw baseline, initiator: %s\n", mine.c_str());
    if (!theirs.empty() && mine != theirs) std::printf("# raw baseline, target: %s\n", theirs.c_str());
    table.columns();
    // After the handshake: the target progresses while the agent connects.
    std::optional<nixl_runner> nixl;
    if (o.nixl) nixl.emplace(o, reinterpret_cast<void*>(me.base()), buffer, me.peer_blob(), me.remote_base());
    initiator<B> run(ctl, o, buffer, me, nixl ? &*nixl : nullptr);
    const auto rows = make_rows(o);
    std::vector<row_result> results;
    progress_line progress;
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const std::string label = cat("[", std::to_string(i + 1), "/", std::to_string(rows.size()), "] ",
                                      ferry::to_string(o.op), " ", format_size(rows[i].block), " x ",
                                      std::to_string(rows[i].batch), ":");
        results.push_back(run.run_row(i, rows[i], progress, label));
        progress.clear();
        table.row(results.back());
    }
    // Its endpoint closes while the target still answers.
    nixl.reset();
    run.quit();
    if (!has_progress_thread<B>)
        std::printf("# %zu of %zu timed measurements had a side preempted by another process even after %zu "
                    "retries\n",
                    run.disturbed(), run.measurements(), o.retries);
    return results;
}

}  // namespace bench
