// The table ferry-bench prints on stdout: a settings line, then one line per
// row, with the columns of what the run measures.

#include "output.hpp"

#include <ucp/api/ucp.h>

#include <cmath>
#include <cstdio>
#include <string>

namespace bench {

std::string fixed(const std::optional<double>& v, int decimals) {
    if (!v || !std::isfinite(*v)) return "-";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, *v);
    return buf;
}

std::string micros(const std::optional<double>& v) {
    if (!v || !std::isfinite(*v)) return "-";
    return fixed(v, *v < 100 ? 2 : *v < 10000 ? 1 : 0);
}

namespace {

std::string ucx_version() {
    unsigned major = 0, minor = 0, release = 0;
    ucp_get_version(&major, &minor, &release);
    return cat(std::to_string(major), ".", std::to_string(minor), ".", std::to_string(release));
}

// A step figure, when the step was measured.
template <double step_summary::*F>
std::string ferry_step(const row_result& r) {
    return r.step ? micros((*r.step).*F) : "-";
}
template <double step_summary::*F>
std::string raw_step(const row_result& r) {
    return r.raw_step ? micros((*r.raw_step).*F) : "-";
}

using column = table_printer::column;

const column block_columns[] = {
    {"block", 6, [](const row_result& r) { return format_size(r.block); }},
    {"batch", 6, [](const row_result& r) { return std::to_string(r.batch); }},
    {"blocks", 6, [](const row_result& r) { return std::to_string(r.blocks); }},
    {"entries", 7, [](const row_result& r) { return std::to_string(r.entries); }},
    {"prep us", 8, [](const row_result& r) { return micros(r.prepare_us); }},
    {"again us", 8, [](const row_result& r) { return micros(r.prepare_again_us); }},
};
const column bw_columns[] = {
    {"GB/s", 8, [](const row_result& r) { return fixed(r.gbps, 3); }},
    {"Mdesc/s", 8,
     [](const row_result& r) { return fixed(r.desc_per_s ? std::optional(*r.desc_per_s / 1e6) : std::nullopt, 3); }},
    {"ns/desc", 8, [](const row_result& r) { return fixed(r.post_ns, 1); }},
};
const column raw_bw_columns[] = {
    {"raw GB/s", 9, [](const row_result& r) { return fixed(r.raw_gbps, 3); }},
    {"ratio", 6, [](const row_result& r) { return fixed(r.ratio, 3); }},
};
const column lat_columns[] = {
    {"p50 us", 8, [](const row_result& r) { return micros(r.lat_p50_us); }},
    {"p99 us", 8, [](const row_result& r) { return micros(r.lat_p99_us); }},
};
const column raw_lat_columns[] = {
    {"raw p50", 8, [](const row_result& r) { return micros(r.raw_p50_us); }},
    {"raw p99", 8, [](const row_result& r) { return micros(r.raw_p99_us); }},
    {"lat ratio", 9, [](const row_result& r) { return fixed(r.lat_ratio, 3); }},
};
const column step_columns[] = {
    {"step p50", 9, ferry_step<&step_summary::p50_us>},
    {"step p99", 9, ferry_step<&step_summary::p99_us>},
    {"min", 8, ferry_step<&step_summary::min_us>},
    {"mean", 8, ferry_step<&step_summary::mean_us>},
    {"in post", 8, ferry_step<&step_summary::post_us>},
    {"done", 8, ferry_step<&step_summary::complete_us>},
    {"step GB/s", 9, [](const row_result& r) { return fixed(r.step_gbps, 3); }},
    {"vs bw", 6, [](const row_result& r) { return fixed(r.step_vs_bw, 2); }},
};
const column raw_step_columns[] = {
    {"raw s.p50", 9, raw_step<&step_summary::p50_us>},
    {"raw s.p99", 9, raw_step<&step_summary::p99_us>},
    {"raw done", 8, raw_step<&step_summary::complete_us>},
    {"raw vs bw", 9, [](const row_result& r) { return fixed(r.raw_step_vs_bw, 2); }},
    {"step ratio", 10, [](const row_result& r) { return fixed(r.step_ratio, 3); }},
};
const column first_columns[] = {
    {"conn us", 8, [](const row_result& r) { return micros(r.connect_us); }},
    {"first us", 9, [](const row_result& r) { return micros(r.first_us); }},
    {"xfer us", 8, [](const row_result& r) { return micros(r.xfer_us); }},
};
const column nixl_columns[] = {
    {"nixl us", 8, [](const row_result& r) { return fixed(r.nixl_us, 3); }},
    {"direct us", 9, [](const row_result& r) { return fixed(r.nixl_direct_us, 3); }},
    {"nixl +us", 8, [](const row_result& r) { return fixed(r.nixl_overhead_us, 3); }},
};
const column kernel_bw_columns[] = {
    {"kern GB/s", 9, [](const row_result& r) { return fixed(r.kernel_gbps, 3); }},
    {"kern/host", 9, [](const row_result& r) { return fixed(r.kernel_ratio, 3); }},
};
const column kernel_lat_columns[] = {
    {"kern us", 8, [](const row_result& r) { return micros(r.kernel_lat_us); }},
    {"kern/host lat", 13, [](const row_result& r) { return fixed(r.kernel_lat_ratio, 3); }},
};
const column telemetry_columns[] = {
    {"tel p50", 8, [](const row_result& r) { return micros(r.tel_p50_us); }},
    {"tel p99", 8, [](const row_result& r) { return micros(r.tel_p99_us); }},
};
const column raw_first_columns[] = {
    {"raw first", 9, [](const row_result& r) { return micros(r.raw_first_us); }},
};
const column path_columns[] = {
    {"path", 8, [](const row_result& r) { return r.path; }},
};
const column raw_buffer_columns[] = {
    {"raw buf", 7, [](const row_result& r) { return r.raw_buffer.empty() ? std::string("-") : r.raw_buffer; }},
};
const column copy_columns[] = {
    {"copy GB/s", 9, [](const row_result& r) { return fixed(r.copy_gbps, 2); }},
    {"vs copy", 7, [](const row_result& r) { return fixed(r.copy_ratio, 3); }},
};

}  // namespace

void table_printer::header(const options& o, std::size_t buffer) {
    const std::string iters = o.iters ? std::to_string(o.iters) : cat("auto (", fixed(o.time, 3), " s)");
    std::fprintf(out_,
                 "# ferry-bench: op %s, mem %s, pattern %s, coalesce %s, strided %s, tls %s, notif %s, mode %s, baseline %s, progress %s, "
                 "memory %s,%s, path %s%s%s%s\n"
                 "# %s posts per measurement, %zu repetitions (raw, ferry, raw, ..., ferry, raw), %s per side, UCX %s\n",
                 std::string(ferry::to_string(o.op)).c_str(), std::string(to_string(o.mem)).c_str(),
                 pattern_name(o.pattern, o.run_length).c_str(), o.coalesce ? "on" : "off", o.strided ? "on" : "off", o.tls.empty() ? "(UCX default)" : o.tls.c_str(),
                 o.notif ? "on" : "off", to_string(o.mode).c_str(), std::string(to_string(o.baseline)).c_str(),
                 std::string(to_string(o.progress)).c_str(), std::string(to_string(o.initiator_buffer)).c_str(),
                 std::string(to_string(o.target_buffer)).c_str(), std::string(to_string(o.path)).c_str(),
                 o.reload_peer ? ", peer reloaded every row" : "",
                 o.nixl ? ", NIXL facade timed (direct, nixl, ..., direct)" : "",
                 o.kernel ? ", kernels through the device API timed (host, kernel, ..., host)" : "", iters.c_str(), o.reps, format_size(buffer).c_str(),
                 ucx_version().c_str());
    const bool raw = o.baseline == baseline_kind::raw;
    columns_.clear();
    auto add = [&](const auto& set, bool on = true) {
        if (on) columns_.insert(columns_.end(), std::begin(set), std::end(set));
    };
    add(block_columns);
    add(bw_columns, o.mode.bw);
    add(raw_bw_columns, o.mode.bw && raw);
    add(telemetry_columns, o.mode.bw && o.telemetry);
    add(nixl_columns, o.nixl);
    add(kernel_bw_columns, o.mode.bw && o.kernel);
    add(lat_columns, o.mode.lat);
    add(raw_lat_columns, o.mode.lat && raw);
    add(kernel_lat_columns, o.mode.lat && o.kernel);
    add(step_columns, o.mode.step);
    add(raw_step_columns, o.mode.step && raw);
    add(first_columns);
    add(raw_first_columns, raw);
    add(path_columns);
    add(raw_buffer_columns, raw);
    add(copy_columns, o.mode.bw);
    std::fflush(out_);
}

void table_printer::columns() {
    std::string line;
    for (const auto& c : columns_) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%s%*s", line.empty() ? "" : " ", c.width, c.head);
        line += buf;
    }
    std::fprintf(out_, "%s\n", line.c_str());
    std::fflush(out_);
}

void table_printer::row(const row_result& r) {
    std::string line;
    for (const auto& c : columns_) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%s%*s", line.empty() ? "" : " ", c.width, c.cell(r).c_str());
        line += buf;
    }
    std::fprintf(out_, "%s\n", line.c_str());
    std::fflush(out_);
}

}  // namespace bench
