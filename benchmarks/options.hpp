#pragma once

// ferry-bench's settings: their types, the command line that sets them
// (option_table.cpp: one entry per option, walked by cli.cpp), and the few
// the initiator hands to the target over the control socket.

#include <ferry/desc.hpp>
#include <ferry/xfer_path.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace bench {

enum class mem_kind { user, alloc, ucx };
enum class pattern_kind { contiguous, strided, random, runs, kv };
/// --mode: what each row measures. A step run measures bw too: the step's
/// bandwidth is reported as a fraction of the back-to-back one.
struct mode_set {
    bool bw = true;     // back-to-back transfers, one in flight
    bool lat = true;    // ping-pong
    bool step = false;  // one post with a notification until the target holds it
};
enum class baseline_kind { none, raw };
// One enumerator per ferry policy that exists; main.cpp maps each to its type.
enum class progress_kind { inline_poll, thread };
enum class memory_kind { host, cuda };
// Where a side's buffer lives.
enum class buffer_kind { host, cuda };
// --path: what the ferry transfer is prepared on.
enum class path_kind { automatic, ucx, cuda_ipc, host_ipc };

std::string_view to_string(mem_kind m) noexcept;
std::string_view to_string(pattern_kind p) noexcept;
/// --pattern as given: the kind, and for runs its length (runs:16).
std::string pattern_name(pattern_kind p, std::size_t run_length);
std::string to_string(mode_set m);
std::string_view to_string(baseline_kind b) noexcept;
std::string_view to_string(progress_kind p) noexcept;
std::string_view to_string(memory_kind m) noexcept;
std::string_view to_string(buffer_kind b) noexcept;
std::string_view to_string(path_kind p) noexcept;

/// Whether this ferry-bench was built with ferry::cuda (--memory cuda).
bool built_with_cuda() noexcept;

/// Whether it has kernels of its own (--kernel): ferry::cuda and nvcc.
bool built_with_kernels() noexcept;

[[nodiscard]] constexpr ferry::xfer_path to_xfer_path(path_kind p) noexcept {
    switch (p) {
        case path_kind::automatic: return ferry::xfer_path::automatic;
        case path_kind::ucx: return ferry::xfer_path::ucx;
        case path_kind::cuda_ipc: return ferry::xfer_path::cuda_ipc;
        case path_kind::host_ipc: return ferry::xfer_path::host_ipc;
    }
    return ferry::xfer_path::automatic;
}

/// Concatenates strings. (GCC 12 warns, wrongly, under -Wrestrict about
/// chains of std::string operator+ that start with a literal.)
template <class... T>
std::string cat(const T&... parts) {
    std::string out;
    (out.append(std::string_view(parts)), ...);
    return out;
}

/// A bad command line or configuration; the message names the option.
struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct options {
    // What to measure.
    ferry::xfer_op op = ferry::xfer_op::write;
    std::vector<std::size_t> block_sizes;  // parse() fills in the default
    std::vector<std::size_t> batches;      // parse() fills in the default
    mode_set mode;
    mem_kind mem = mem_kind::user;
    pattern_kind pattern = pattern_kind::contiguous;
    std::size_t run_length = 0;  // N of --pattern runs:N or kv:N
    bool coalesce = false;       // xfer_options::coalesce for ferry's transfers
    bool strided = false;        // ferry's lists as strided_desc entries
    bool notif = false;
    baseline_kind baseline = baseline_kind::raw;  // none by default under --progress thread

    // How long.
    std::size_t iters = 0;  // 0: as many as fit in `time`
    double time = 0.02;     // seconds per measurement when iters == 0
    std::size_t warmup = 16;
    std::size_t reps = 5;
    std::size_t retries = 3;  // per measurement, while another process preempted a side
    bool reload_peer = false;  // load the peer again before every row
    bool no_connect = false;   // no connect() after load_remote
    bool telemetry = false;    // --telemetry: ferry with telemetry::on, its histogram next to the figures
    bool nixl = false;         // --nixl: the NIXL facade against its own backend, per row
    bool kernel = false;       // --kernel: the row's blocks moved by kernels too, through ferry's device API

    // Transport and backend.
    std::string tls;  // empty: UCX's own choice
    bool peer_error_handling = true;  // --error-handling peer|none
    progress_kind progress = progress_kind::inline_poll;
    memory_kind memory = memory_kind::host;  // cuda when either buffer is
    buffer_kind initiator_buffer = buffer_kind::host;
    buffer_kind target_buffer = buffer_kind::host;
    path_kind path = path_kind::automatic;
    std::size_t buffer_size = std::size_t{64} << 20;
    std::uint64_t seed = 1;
    double timeout = 30;

    // Two hosts.
    std::optional<std::uint16_t> listen_port;
    std::string connect_host;
    std::uint16_t connect_port = 0;

    // Output.
    std::string json_path;
    std::string csv_path;
    std::string plot_path;
};

struct parse_result {
    options opts;
    bool help = false;
};

/// Parses and validates argv; throws usage_error naming the option at fault.
parse_result parse_options(int argc, const char* const* argv);

/// The --help text: every option with its default.
std::string help_text();

/// Parses a size such as 4096, 4K, 64M (K, M, G: powers of 1024).
std::size_t parse_size(std::string_view option, std::string_view text);

/// Parses a list of sizes and ranges: "64,4K:64K" (a range doubles).
std::vector<std::size_t> parse_size_list(std::string_view option, std::string_view text, std::size_t max);

/// 4096 -> "4K", 1048576 -> "1M", 100 -> "100".
std::string format_size(std::size_t n);

/// The settings the target needs, as the initiator sends them, and back.
std::string encode_target_settings(const options& o);
options decode_target_settings(std::string_view text);

}  // namespace bench
