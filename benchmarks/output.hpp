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

/// One row of results. Unset fields were not measured (JSON null).
struct row_result {
    ferry::xfer_op op = ferry::xfer_op::write;
    std::size_t block = 0;
    std::size_t batch = 0;
    mem_kind mem = mem_kind::user;
    pattern_kind pattern = pattern_kind::contiguous;

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
};

class table_printer {
public:
    explicit table_printer(std::FILE* out) : out_(out) {}
    /// Prints the settings line and the column heads.
    void header(const options& o, std::size_t buffer);
    void row(const row_result& r);

private:
    std::FILE* out_;
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

void write_json(const std::string& path, const std::vector<row_result>& rows);
void write_csv(const std::string& path, const std::vector<row_result>& rows);
/// GB/s against block size, ferry solid and raw dashed, one colour per batch.
void write_plot(const std::string& path, const std::vector<row_result>& rows, const std::string& title);

}  // namespace bench
