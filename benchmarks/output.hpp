#pragma once

// Everything ferry-bench writes: the table on stdout, the progress line on
// stderr, and the --json, --csv and --plot files.

#include "options.hpp"

#include <cstddef>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace bench {

/// A step's times in microseconds (--mode step): from just before post()
/// until the target held the notification (p50, p99, min, mean), and the
/// medians of the time inside post() and until the initiator saw completion.
struct step_summary {
    double p50_us = 0;
    double p99_us = 0;
    double min_us = 0;
    double mean_us = 0;
    double post_us = 0;
    double complete_us = 0;
};

/// One row of results. Unset fields were not measured (JSON null).
struct row_result {
    ferry::xfer_op op = ferry::xfer_op::write;
    std::size_t block = 0;
    std::size_t batch = 0;
    mem_kind mem = mem_kind::user;
    pattern_kind pattern = pattern_kind::contiguous;
    std::size_t run_length = 0;
    std::size_t blocks = 0;   // what ferry's transfer became: operations (ucx) or copies
    std::size_t entries = 0;  // descriptors, or strided entries (--strided), of the longer list
    std::optional<double> prepare_us;        // ferry's prepare of the row's transfer
    std::optional<double> prepare_again_us;  // the same list prepared again, after a release

    std::optional<double> gbps;         // ferry, median over repetitions
    std::optional<double> desc_per_s;   // ferry, median
    std::optional<double> post_ns;      // ferry, ns inside post() per descriptor, median
    std::optional<double> raw_gbps;     // raw loop, median
    std::optional<double> ratio;        // median over repetitions of ferry / raw GB/s
    std::optional<double> lat_p50_us;   // ferry ping-pong half round trip
    std::optional<double> lat_p99_us;
    std::optional<double> raw_p50_us;   // raw ping-pong half round trip
    std::optional<double> raw_p99_us;
    std::optional<double> lat_ratio;    // ferry p50 / raw p50
    std::string memory = "host,host";   // initiator's and target's buffers
    std::string path = "ucx";           // what ferry's transfer moved on
    std::optional<double> copy_gbps;    // one cudaMemcpy of the same bytes (--memory cuda)
    std::optional<double> copy_ratio;   // ferry GB/s / copy GB/s

    // The row's first post, prepared just before, post to completion: after
    // load_remote on the first row (every row with --reload-peer).
    std::optional<double> first_us;
    std::optional<double> raw_first_us;  // the raw loop's, on the same endpoint, after ferry's
    bool first_after_load = false;
    std::optional<double> connect_us;    // connect() after that load_remote; none with --no-connect
    std::optional<double> xfer_us;       // steady state: back-to-back post to completion, median
    std::optional<double> tel_p50_us;    // --telemetry: ferry's own histogram over the bw repetitions
    std::optional<double> tel_p99_us;
    std::string raw_buffer;              // "same": ferry's buffers; "own": its own (see raw_runner); "": none

    std::optional<step_summary> step;      // --mode step, ferry
    std::optional<step_summary> raw_step;  // the same, raw UCX
    std::optional<double> step_gbps;       // bytes / step p50
    std::optional<double> step_vs_bw;      // step_gbps / gbps (back to back, same row, same run)
    std::optional<double> raw_step_vs_bw;  // the same for the raw loop
    std::optional<double> step_ratio;      // ferry step p50 / raw step p50

    // --nixl: the NIXL facade against the agent's own backend, same request.
    std::optional<double> nixl_us;           // postXferReq + getXferStatus to done, median
    std::optional<double> nixl_direct_us;    // post + check to done, median
    std::optional<double> nixl_overhead_us;  // median over repetitions of facade - mean of its direct neighbours

    // --kernel: the same blocks moved by kernels through ferry's device API.
    std::optional<double> kernel_gbps;       // launches back to back, median
    std::optional<double> kernel_ratio;      // median over repetitions of kernel / ferry host-initiated GB/s
    std::optional<double> kernel_lat_us;     // block 0 put + signal between the sides' kernels, half round trip
    std::optional<double> kernel_lat_ratio;  // kernel_lat_us / lat_p50_us
};

/// The table on stdout: its columns follow what the run measures.
class table_printer {
public:
    explicit table_printer(std::FILE* out) : out_(out) {}
    /// Prints the settings line and chooses the columns.
    void header(const options& o, std::size_t buffer);
    /// Prints the column heads.
    void columns();
    void row(const row_result& r);

    struct column {
        const char* head;
        int width;
        std::string (*cell)(const row_result&);
    };

private:
    std::FILE* out_;
    std::vector<column> columns_;
};

/// "\r[3/60] ..." on stderr while a sweep runs, only when stderr is a terminal.
class progress_line {
public:
    progress_line();
    ~progress_line() { clear(); }
    void show(const std::string& text);
    void clear();

private:
    bool enabled_;
    bool shown_ = false;
};

/// A row's fields, named and formatted as --json writes them (null for
/// what was not measured), in the order --csv writes them.
struct field {
    std::string key;
    std::string json;  // a JSON value
    std::string text;  // the CSV cell: empty for null
};
std::vector<field> fields(const row_result& r);

/// Numbers for humans: fixed decimals, "-" when unset.
std::string fixed(const std::optional<double>& v, int decimals);
/// Microseconds: two decimals while they matter, fewer as values grow.
std::string micros(const std::optional<double>& v);

void write_json(const std::string& path, const std::vector<row_result>& rows);
void write_csv(const std::string& path, const std::vector<row_result>& rows);
/// GB/s against block size, ferry solid and raw dashed, one colour per batch.
void write_plot(const std::string& path, const std::vector<row_result>& rows, const std::string& title);

}  // namespace bench
