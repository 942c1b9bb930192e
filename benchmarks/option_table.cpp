// ferry-bench's options: what each one means, as a table (cli.hpp walks it),
// and the checks that involve more than one option.

#include "cli.hpp"
#include "option_values.hpp"
#include "options.hpp"

#include <cctype>

namespace bench {

namespace {

constexpr std::size_t max_block_size = std::size_t{1} << 30;
constexpr std::size_t max_batch = std::size_t{1} << 20;
constexpr std::size_t max_reps = 1000;

using setter = void (*)(options&, std::string_view, std::string_view);

// The setter of a flag that sets a bool member.
template <bool options::*M>
constexpr setter flag = [](options& o, std::string_view, std::string_view) { o.*M = true; };

// The setter of an output file option.
template <std::string options::*M>
constexpr setter file = [](options& o, std::string_view n, std::string_view v) {
    if (v.empty()) fail(n, "the file name is empty");
    o.*M = v;
};

constexpr std::string_view what = "What to measure", how_long = "How long",
                           transport = "Transport and backend",
                           two_hosts = "Two hosts (default: fork both sides on this host)",
                           output = "Output (a table on stdout always)";

const option_spec table[] = {
    {what, "--op", "read|write", "direction, seen from the initiator", "write", true,
     [](options& o, std::string_view n, std::string_view v) {
         o.op = parse_choice<ferry::xfer_op>(n, v, {{"read", ferry::xfer_op::read}, {"write", ferry::xfer_op::write}});
     }},
    {what, "--block-sizes", "LIST",
     "block sizes: sizes and ranges, e.g. 4K,64K or 64:64M (a range doubles); K, M, G are powers of 1024", "64:1M",
     true, [](options& o, std::string_view n, std::string_view v) { o.block_sizes = parse_size_list(n, v, max_block_size); }},
    {what, "--batch", "LIST", "descriptors per transfer, same syntax", "1,16,256,1024", true,
     [](options& o, std::string_view n, std::string_view v) { o.batches = parse_size_list(n, v, max_batch); }},
    {what, "--mode", "MODES",
     "bw: back-to-back transfers, one in flight; lat: ping-pong, the op + a notification, answered by the "
     "target's own op + notification (half round trip, p50/p99); step: one post with a notification until the "
     "target holds it, as one layer of a KV-cache transfer (p50/p99/min/mean, time inside post and until the "
     "initiator sees completion; bw is measured too, for the step's fraction of it). A list (bw,step), both "
     "(bw,lat) or all",
     "both", true, [](options& o, std::string_view n, std::string_view v) { o.mode = parse_modes(n, v); }},
    {what, "--mem", "user|alloc|ucx",
     "user: memory the program allocates and registers; alloc: memory from the backend's allocate() (host: "
     "shared memory that a peer on this host maps, which the host_ipc path copies with memcpy; --memory cuda: "
     "device memory from allocate, host memory from allocate_host, which a GPU peer on this host copies into); "
     "ucx: memory that "
     "UCX allocates (UCP_MEM_MAP_ALLOCATE), registered with register_memory, which some UCX builds (1.13) map "
     "into a peer on this host, so that --path ucx puts are stores",
     "user", true, [](options& o, std::string_view n, std::string_view v) { o.mem = parse_mem(n, v); }},
    {what, "--pattern", "contiguous|strided|random|runs:N|kv:N",
     "where the remote blocks lie: back to back, every other block, scattered at random over the buffer, in "
     "runs of N back to back blocks with a block's gap after each run, or as a KV cache of N layers holds "
     "pages: layer after layer, the transfer taking every other page of every layer, page by page (block i is "
     "layer i % N of page i / N). Local blocks always lie back to back. Every block is its own descriptor "
     "unless --strided; --coalesce merges adjacent ones",
     "contiguous", true,
     [](options& o, std::string_view n, std::string_view v) {
         for (auto [prefix, kind] : {std::pair{"runs:", pattern_kind::runs}, std::pair{"kv:", pattern_kind::kv}}) {
             if (!v.starts_with(prefix)) continue;
             o.pattern = kind;
             o.run_length = parse_size(n, v.substr(std::string_view(prefix).size()));
             if (o.run_length == 0 || o.run_length > max_batch) fail(n, cat(prefix, "N takes N from 1 to 1M"));
             return;
         }
         o.pattern = parse_choice<pattern_kind>(n, v, {{"contiguous", pattern_kind::contiguous},
                                                       {"strided", pattern_kind::strided},
                                                       {"random", pattern_kind::random}});
     }},
    {what, "--coalesce", "",
     "let prepare merge runs of adjacent descriptors into one operation (xfer_options::coalesce, the library's "
     "default). Off here unless asked for, so that ferry posts one operation per descriptor as the raw loop does; "
     "the blocks column says how many operations a transfer became",
     "off", false, flag<&options::coalesce>},
    {what, "--strided", "",
     "hand ferry each side's list as strided descriptors (strided_desc: addr, len, stride, count): every run of "
     "blocks one stride apart is one entry, so kv:N is one entry per page on the remote side and one for the "
     "whole local side. Not the same as --pattern strided, which names where blocks lie. The entries column "
     "says how many entries the longer list became, prep us how long prepare took; the raw loop still posts "
     "block by block",
     "off", false, flag<&options::strided>},
    {what, "--notif", "",
     "a notification with every post; the target counts them and the run fails if one is missing", "off", false,
     flag<&options::notif>},
    {what, "--telemetry", "",
     "run ferry with telemetry::on and print its latency histogram's p50/p99 (post to completion, over the bw "
     "repetitions) next to the measured figures; the run fails unless the histogram counted every post",
     "off", false, flag<&options::telemetry>},
    {what, "--nixl", "",
     "also time the NIXL facade (<ferry/nixl.hpp>: postXferReq, then getXferStatus until done) against the same "
     "request posted through the agent's own backend (post, then check), alternated (direct, nixl, direct, ..., "
     "nixl, direct) on each row's blocks: the agent is a second backend in the initiator's process, on the "
     "transports of --tls and the policy of --progress, on the path of --path (auto: host_ipc on one host, where "
     "a transfer completes inside postXferReq; --path ucx to poll getXferStatus). "
     "Its transfers carry no notification. Host memory, --mode bw",
     "off", false, flag<&options::nixl>},
    {what, "--kernel", "",
     "also move each row's blocks from kernels of ferry-bench's own through ferry's device API (<ferry/device.cuh>, "
     "on the transfer that ferry-bench prepared, via device_view and device_signal): bw, one launch that puts every "
     "block, a thread block each, each followed by a signal to the target's counter, launches back to back, timed "
     "by CUDA events and alternated with ferry's host-initiated posts (host, kernel, host, ...); lat, block 0 put + "
     "signal each way between a kernel on each side, half a round trip on the GPU's clock. Needs --memory cuda on "
     "both sides and the cuda_ipc path, both processes on this host, and a ferry-bench built with nvcc. Two "
     "processes' kernels share one GPU by time-slicing unless MPS runs (nvidia-cuda-mps-control -d)",
     "off", false, flag<&options::kernel>},
    {what, "--no-connect", "",
     "skip connect() after load_remote, so that the first transfer also finishes the endpoint (UCX wires some "
     "transports up at their first use: a round trip to the peer)",
     "off", false, flag<&options::no_connect>},
    {what, "--reload-peer", "",
     "before every row, unload the peer and load its metadata again, so that each row's first transfer is the "
     "first after load_remote, as the first row's always is",
     "off", false, flag<&options::reload_peer>},
    {what, "--baseline", "raw|none",
     "raw: interleave the raw UCX loop (memh and rkey resolved up front, ucp_put_nbx/ucp_get_nbx per descriptor, "
     "one ucp_ep_flush_nbx per transfer; with a notification, an active message sent when that flush "
     "completes). Not with "
     "--progress thread, whose worker belongs to ferry's thread",
     "raw; none with --progress thread", false,
     [](options& o, std::string_view n, std::string_view v) { o.baseline = parse_baseline(n, v); }},

    {how_long, "--iters", "N|auto", "posts per measurement; auto: as many as fit in --time", "auto", true,
     [](options& o, std::string_view n, std::string_view v) {
         o.iters = v == "auto" ? 0 : parse_uint(n, v, 1, std::uint64_t{1} << 32);
     }},
    {how_long, "--time", "SECONDS", "length of one measurement with --iters auto", "0.02", true,
     [](options& o, std::string_view n, std::string_view v) { o.time = parse_seconds(n, v, 0.0001, 600); }},
    {how_long, "--warmup", "N", "untimed posts per row and side before measuring (stops early after --time)", "16",
     true, [](options& o, std::string_view n, std::string_view v) { o.warmup = parse_uint(n, v, 0, std::uint64_t{1} << 32); }},
    {how_long, "--reps", "N",
     "ferry measurements per row, interleaved with raw ones (raw, ferry, raw, ..., ferry, raw); the table shows "
     "medians",
     "5", true, [](options& o, std::string_view n, std::string_view v) { o.reps = parse_uint(n, v, 1, max_reps); }},
    {how_long, "--retries", "N",
     "measure again, up to N times, when another process preempted either side during a measurement (the count "
     "of measurements still disturbed is printed at the end)",
     "3", true, [](options& o, std::string_view n, std::string_view v) { o.retries = parse_uint(n, v, 0, 100); }},

    {transport, "--tls", "LIST", "UCX transports, as UCX_TLS takes them: shm, tcp, ...", "UCX's choice", false,
     [](options& o, std::string_view n, std::string_view v) {
         if (v.empty()) fail(n, "the transport list is empty");
         for (char c : v)
             if (!(std::isalnum(static_cast<unsigned char>(c)) || c == ',' || c == '_' || c == '^' || c == '-' ||
                   c == ':' || c == '\\'))
                 fail(n, quoted(v) + " is not a UCX transport list (e.g. shm, tcp, shm,tcp)");
         o.tls = v;
     }},
    {transport, "--error-handling", "peer|none",
     "UCX's peer error handling on the endpoints (ferry::error_mode), raw loop included", "peer", true,
     [](options& o, std::string_view n, std::string_view v) { o.peer_error_handling = parse_error_handling(n, v); }},
    {transport, "--progress", "inline|thread",
     "ferry's progress policy: inline (the caller's thread drives UCX) or thread (a progress thread does)",
     "inline", true, [](options& o, std::string_view n, std::string_view v) { o.progress = parse_progress(n, v); }},
    {transport, "--memory", "KIND[,KIND]",
     "where the initiator's and the target's buffers live: host or cuda (device 0); one value for both. Any cuda "
     "selects ferry::memory::cuda, and its host buffers are then page-locked (cudaMallocHost). Each row then also "
     "times one cudaMemcpy of the same total bytes between the same kinds of memory (copy GB/s); with host "
     "memory on both sides, one thread's memcpy of the same blocks between two buffers of this process",
     "host", true, [](options& o, std::string_view n, std::string_view v) { parse_memory(n, v, o); }},
    {transport, "--path", "auto|ucx|cuda_ipc|host_ipc",
     "what ferry's transfers are prepared on: auto lets prepare choose (cuda_ipc for device memory on both "
     "sides, host_ipc for host memory on both sides of one host), or force one",
     "auto", true, [](options& o, std::string_view n, std::string_view v) { o.path = parse_path(n, v); }},
    {transport, "--buffer-size", "SIZE", "memory registered per side; blocks that do not fit wrap around inside it",
     "64M", true,
     [](options& o, std::string_view n, std::string_view v) {
         o.buffer_size = parse_size(n, v);
         if (o.buffer_size > (std::size_t{16} << 30)) fail(n, "at most 16G");
     }},
    {transport, "--seed", "N", "seed of --pattern random", "1", true,
     [](options& o, std::string_view n, std::string_view v) { o.seed = parse_uint(n, v, 0, UINT64_MAX); }},
    {transport, "--timeout", "SECONDS", "fail when the peer or a transfer makes no progress for this long", "30",
     true, [](options& o, std::string_view n, std::string_view v) { o.timeout = parse_seconds(n, v, 0.1, 86400); }},

    {two_hosts, "--listen", "PORT",
     "be the target; wait for an initiator on PORT (0: any, printed). Every other setting comes from the initiator",
     "", false,
     [](options& o, std::string_view n, std::string_view v) {
         o.listen_port = static_cast<std::uint16_t>(parse_uint(n, v, 0, 65535));
     }},
    {two_hosts, "--connect", "HOST:PORT", "be the initiator, against a --listen target", "", false,
     [](options& o, std::string_view n, std::string_view v) {
         auto colon = v.rfind(':');
         if (colon == std::string_view::npos || colon == 0 || colon + 1 == v.size())
             fail(n, "expected HOST:PORT, got " + quoted(v));
         auto host = v.substr(0, colon);
         if (host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);  // [::1]:port
         o.connect_host = host;
         o.connect_port = static_cast<std::uint16_t>(parse_uint(n, v.substr(colon + 1), 0, 65535));
         if (o.connect_port == 0) fail(n, "port 0 cannot be connected to");
     }},

    {output, "--json", "FILE",
     "one object per row, with every figure of the table under the names in the README (null: not measured)", "",
     false, file<&options::json_path>},
    {output, "--csv", "FILE", "the same columns as CSV", "", false, file<&options::csv_path>},
    {output, "--plot", "FILE", "GB/s against block size, ferry and raw, through gnuplot; PNG or SVG by the file's "
     "extension", "", false, file<&options::plot_path>},
    {output, "--help", "", "this text", "", false, nullptr},
};

// The checks that involve more than one option, or the world.
void finish(options& o, const command_line& given) {
    if (o.listen_port && !o.connect_host.empty()) fail("--listen", "cannot be combined with --connect");
    if (o.listen_port && given.given.size() > 1)
        fail("--listen", "the target takes every setting from the initiator; give the other options on the "
                         "--connect side");
    if (o.mode.step && !o.connect_host.empty())
        fail("--mode", "step compares the two processes' clocks, so both must run on one host: not with --connect");
    if (o.progress == progress_kind::thread && o.baseline == baseline_kind::raw) {
        // The raw loop drives the UCX worker itself; under this policy the
        // worker belongs to ferry's progress thread.
        if (given.has("--baseline"))
            fail("--baseline", "'raw' drives the UCX worker from the benchmark's thread, but under --progress thread "
                               "the worker belongs to ferry's progress thread; use --baseline none");
        o.baseline = baseline_kind::none;
    }
    if (o.nixl && o.memory != memory_kind::host) fail("--nixl", "the facade is timed on host memory only");
    if (o.nixl && !o.mode.bw) fail("--nixl", "times back-to-back transfers: --mode must include bw");
    if (o.kernel) {
        if (!built_with_kernels())
            fail("--kernel", "this ferry-bench has no kernels of its own: it was built without ferry::cuda or without "
                             "a CUDA compiler (CMake's CMAKE_CUDA_COMPILER)");
        if (o.initiator_buffer != buffer_kind::cuda || o.target_buffer != buffer_kind::cuda)
            fail("--kernel", "a kernel moves blocks between GPU memory here and GPU memory mapped from the peer: give "
                             "--memory cuda (both sides)");
        if (o.path != path_kind::automatic && o.path != path_kind::cuda_ipc)
            fail("--kernel", "a kernel moves the blocks of a cuda_ipc transfer, not of --path " +
                                 std::string(to_string(o.path)));
        if (!o.connect_host.empty())
            fail("--kernel", "a kernel reaches the peer's GPU memory through CUDA IPC, on this host only: not with "
                             "--connect");
        if (!o.mode.bw && !o.mode.lat) fail("--kernel", "times bw and lat: --mode must include one of them");
    }
    if (!o.json_path.empty()) check_writable("--json", o.json_path);
    if (!o.csv_path.empty()) check_writable("--csv", o.csv_path);
    if (!o.plot_path.empty()) {
        check_writable("--plot", o.plot_path);
        if (!o.mode.bw) fail("--plot", "draws GB/s, which --mode lat does not measure");
        auto ends_with = [&](std::string_view suffix) {
            return o.plot_path.size() >= suffix.size() &&
                   std::string_view(o.plot_path).substr(o.plot_path.size() - suffix.size()) == suffix;
        };
        if (!ends_with(".png") && !ends_with(".svg"))
            fail("--plot", quoted(o.plot_path) + ": the file name must end in .png or .svg");
        if (!on_path("gnuplot"))
            fail("--plot", "gnuplot is not installed (on Debian: apt-get install gnuplot-nox), so " +
                               quoted(o.plot_path) + " cannot be drawn");
    }
}

}  // namespace

parse_result parse_options(int argc, const char* const* argv) {
    parse_result r;
    const command_line given = parse_command_line(table, argc, argv, r.opts);
    r.help = given.help;
    if (!r.help) finish(r.opts, given);
    return r;
}

std::string help_text() {
    return format_help(table, R"(usage: ferry-bench [OPTION]...

Measures ferry's descriptor-list READ and WRITE between two processes and,
in the same run, a raw UCX loop on the same registered buffers (raw, ferry,
raw, ferry... per row), and prints ratio = ferry / raw for every row.
By default one command forks the initiator and the target on this host.
)",
                       R"(
Columns: GB/s and Mdesc/s are ferry's (1 GB = 1e9 bytes); ns/desc is the
time spent inside post() per descriptor; p50/p99 are half round trips of the
ping-pong in microseconds (raw p50/p99: the raw loop's). ratio is the median
over repetitions of ferry's GB/s divided by the mean of the two raw
measurements taken just before and just after it (1.00: no overhead, below
1: ferry is slower); lat ratio is ferry p50 / raw p50 (1.00: no overhead, above
1: ferry is slower). step p50/p99/min/mean: microseconds from just before
post() until the target held the notification; in post and done: medians of
the time until post() returned and until the initiator saw completion; step
GB/s: bytes / step p50, and vs bw its fraction of the row's GB/s (raw s.*:
the raw loop's; step ratio: ferry step p50 / raw step p50). conn us: connect() right after
load_remote (first row; every row with --reload-peer). first us: the row's
first post, post to completion, right after prepare (and load_remote);
xfer us: the same in steady state (back to back, median). blocks: the
operations (or copies) a transfer became; entries: the descriptors (with
--strided, the strided entries) of the longer list; prep us: how long its
prepare took, and again us the same lists prepared again after a release,
once the row is measured. raw buf: whether the raw loop ran on ferry's buffers (same)
or on its own (own; the output says why). With --nixl: nixl us and direct us
are one transfer, post to completion, through the NIXL facade and through
the agent's own backend (medians), and nixl +us the median over repetitions
of the facade's time minus the mean of the direct measurements on either
side of it: the facade's cost per transfer. With --kernel: kern GB/s is the
row's blocks moved by kernels (median), kern/host the median over
repetitions of kern GB/s divided by the mean of ferry's host-initiated GB/s
measured just before and just after it; kern us is half a round trip of
block 0 put + signal between the two sides' kernels (median), kern/host lat
kern us / ferry's p50.
)");
}

}  // namespace bench
