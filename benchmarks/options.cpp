#include "options.hpp"

#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>

namespace bench {

std::string_view to_string(mem_kind m) noexcept { return m == mem_kind::user ? "user" : "ucx"; }
std::string_view to_string(pattern_kind p) noexcept {
    switch (p) {
        case pattern_kind::contiguous: return "contiguous";
        case pattern_kind::strided: return "strided";
        case pattern_kind::random: return "random";
    }
    return "?";
}
std::string to_string(mode_set m) {
    std::string out;
    for (auto [on, name] : {std::pair{m.bw, "bw"}, std::pair{m.lat, "lat"}, std::pair{m.step, "step"}})
        if (on) out += cat(out.empty() ? "" : ",", name);
    return out;
}
std::string_view to_string(baseline_kind b) noexcept { return b == baseline_kind::raw ? "raw" : "none"; }
std::string_view to_string(progress_kind p) noexcept { return p == progress_kind::thread ? "thread" : "inline"; }
std::string_view to_string(memory_kind m) noexcept { return m == memory_kind::cuda ? "cuda" : "host"; }
std::string_view to_string(buffer_kind b) noexcept { return b == buffer_kind::cuda ? "cuda" : "host"; }
std::string_view to_string(path_kind p) noexcept {
    switch (p) {
        case path_kind::automatic: return "auto";
        case path_kind::ucx: return "ucx";
        case path_kind::cuda_ipc: return "cuda_ipc";
    }
    return "auto";
}

bool built_with_cuda() noexcept {
#if defined(FERRY_BENCH_CUDA)
    return true;
#else
    return false;
#endif
}

namespace {

constexpr std::size_t max_block_size = std::size_t{1} << 30;
constexpr std::size_t max_batch = std::size_t{1} << 20;
constexpr std::size_t max_reps = 1000;

[[noreturn]] void fail(std::string_view option, const std::string& problem) {
    throw usage_error(std::string(option) + ": " + problem);
}

std::string quoted(std::string_view s) { return cat("'", s, "'"); }

std::uint64_t parse_uint(std::string_view option, std::string_view text, std::uint64_t min, std::uint64_t max) {
    std::uint64_t v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc{} || end != text.data() + text.size())
        fail(option, "expected a whole number, got " + quoted(text));
    if (v < min || v > max)
        fail(option, quoted(text) + " is out of range " + std::to_string(min) + ".." + std::to_string(max));
    return v;
}

double parse_seconds(std::string_view option, std::string_view text, double min, double max) {
    std::string s(text);
    char* end = nullptr;
    errno = 0;
    double v = std::strtod(s.c_str(), &end);
    if (s.empty() || errno != 0 || end != s.c_str() + s.size() || !std::isfinite(v))
        fail(option, "expected a number of seconds, got " + quoted(text));
    if (v < min || v > max) {
        char range[64];
        std::snprintf(range, sizeof range, "%g..%g", min, max);
        fail(option, quoted(text) + " is out of range " + range + " seconds");
    }
    return v;
}

template <class E>
E parse_choice(std::string_view option, std::string_view text, std::initializer_list<std::pair<const char*, E>> choices) {
    std::string all;
    for (const auto& [name, value] : choices) {
        if (text == name) return value;
        all += all.empty() ? "" : "|";
        all += name;
    }
    fail(option, "expected " + all + ", got " + quoted(text));
}

std::vector<std::string_view> split(std::string_view text, char sep) {
    std::vector<std::string_view> out;
    std::size_t start = 0;
    while (true) {
        auto at = text.find(sep, start);
        out.push_back(text.substr(start, at == std::string_view::npos ? std::string_view::npos : at - start));
        if (at == std::string_view::npos) return out;
        start = at + 1;
    }
}

std::uint16_t parse_port(std::string_view option, std::string_view text) {
    return static_cast<std::uint16_t>(parse_uint(option, text, 0, 65535));
}

bool on_path(const char* program) {
    const char* path = std::getenv("PATH");
    if (!path) return false;
    for (auto dir : split(path, ':')) {
        std::string candidate = std::string(dir.empty() ? "." : dir) + "/" + program;
        if (access(candidate.c_str(), X_OK) == 0) return true;
    }
    return false;
}

// --mode bw|lat|step|both|all, or a list of bw, lat and step.
mode_set parse_modes(std::string_view option, std::string_view v) {
    if (v == "both") return {true, true, false};
    if (v == "all") return {true, true, true};
    mode_set m{false, false, false};
    for (auto item : split(v, ',')) {
        bool* on = item == "bw" ? &m.bw : item == "lat" ? &m.lat : item == "step" ? &m.step : nullptr;
        if (on == nullptr) fail(option, "expected bw, lat, step, a list of them, both or all, got " + quoted(v));
        if (*on) fail(option, quoted(item) + " appears twice in " + quoted(v));
        *on = true;
    }
    m.bw = m.bw || m.step;
    return m;
}

progress_kind parse_progress(std::string_view option, std::string_view v) {
    if (v == "inline") return progress_kind::inline_poll;
    if (v == "thread") return progress_kind::thread;
    fail(option, quoted(v) + ": that progress policy is not built yet; this ferry implements 'inline' "
                             "(ferry::progress::inline_poll) and 'thread' (ferry::progress::thread)");
}

// --memory host | cuda | cuda,host | host,cuda.
void parse_memory(std::string_view option, std::string_view v, options& o) {
    auto parts = split(v, ',');
    if (parts.size() > 2) fail(option, quoted(v) + ": at most two kinds, the initiator's and the target's");
    auto kind_of = [&](std::string_view k) {
        return parse_choice<buffer_kind>(option, k, {{"host", buffer_kind::host}, {"cuda", buffer_kind::cuda}});
    };
    o.initiator_buffer = kind_of(parts[0]);
    o.target_buffer = parts.size() == 2 ? kind_of(parts[1]) : o.initiator_buffer;
    const bool cuda = o.initiator_buffer == buffer_kind::cuda || o.target_buffer == buffer_kind::cuda;
    if (cuda && !built_with_cuda())
        fail(option, quoted(v) + ": this ferry-bench was built without CUDA (ferry::cuda was not found at its build)");
    o.memory = cuda ? memory_kind::cuda : memory_kind::host;
}

// Fails now, not after a long sweep, when an output file cannot be created.
void check_writable(std::string_view option, const std::string& path) {
    auto slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    if (access(dir.c_str(), W_OK) != 0)
        fail(option, "cannot write " + quoted(path) + ": directory " + quoted(dir) + ": " + std::strerror(errno));
    if (access(path.c_str(), F_OK) == 0 && access(path.c_str(), W_OK) != 0)
        fail(option, "cannot write " + quoted(path) + ": " + std::strerror(errno));
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

std::size_t parse_size(std::string_view option, std::string_view text) {
    std::string_view digits = text;
    std::uint64_t scale = 1;
    if (!digits.empty()) {
        switch (digits.back()) {
            case 'k': case 'K': scale = std::uint64_t{1} << 10; break;
            case 'm': case 'M': scale = std::uint64_t{1} << 20; break;
            case 'g': case 'G': scale = std::uint64_t{1} << 30; break;
            default: break;
        }
        if (scale != 1) digits.remove_suffix(1);
    }
    std::uint64_t v = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
    if (digits.empty() || ec != std::errc{} || end != digits.data() + digits.size())
        fail(option, "expected a size such as 4096, 4K, 64M or 1G, got " + quoted(text));
    if (v == 0) fail(option, "a size must be positive, got " + quoted(text));
    if (v > (std::uint64_t{1} << 40) / scale) fail(option, quoted(text) + " is too large");
    return static_cast<std::size_t>(v * scale);
}

std::vector<std::size_t> parse_size_list(std::string_view option, std::string_view text, std::size_t max) {
    if (text.empty()) fail(option, "the list is empty");
    std::vector<std::size_t> out;
    for (auto item : split(text, ',')) {
        if (item.empty()) fail(option, "empty item in " + quoted(text));
        auto ends = split(item, ':');
        if (ends.size() > 2) fail(option, quoted(item) + " is not a size or a range FIRST:LAST");
        std::size_t first = parse_size(option, ends[0]);
        std::size_t last = ends.size() == 2 ? parse_size(option, ends[1]) : first;
        if (last < first) fail(option, "the range " + quoted(item) + " runs backwards");
        if (last > max) fail(option, quoted(item) + " goes past the largest allowed, " + format_size(max));
        for (std::size_t v = first; v <= last; v *= 2) {
            out.push_back(v);
            if (v > last / 2) break;
        }
    }
    for (std::size_t i = 0; i < out.size(); ++i)
        for (std::size_t j = 0; j < i; ++j)
            if (out[i] == out[j]) fail(option, format_size(out[i]) + " appears twice in " + quoted(text));
    return out;
}

std::string format_size(std::size_t n) {
    if (n >= (std::size_t{1} << 30) && n % (std::size_t{1} << 30) == 0) return std::to_string(n >> 30) + "G";
    if (n >= (std::size_t{1} << 20) && n % (std::size_t{1} << 20) == 0) return std::to_string(n >> 20) + "M";
    if (n >= (std::size_t{1} << 10) && n % (std::size_t{1} << 10) == 0) return std::to_string(n >> 10) + "K";
    return std::to_string(n);
}

std::string help_text() {
    return R"(usage: ferry-bench [OPTION]...

Measures ferry's descriptor-list READ and WRITE between two processes and,
in the same run, a raw UCX loop on the same registered buffers (raw, ferry,
raw, ferry... per row), and prints ratio = ferry / raw for every row.
By default one command forks the initiator and the target on this host.

What to measure:
  --op read|write          direction, seen from the initiator        [write]
  --block-sizes LIST       block sizes: sizes and ranges, e.g. 4K,64K or
                           64:64M (a range doubles); K, M, G are powers
                           of 1024                                   [64:1M]
  --batch LIST             descriptors per transfer, same syntax
                                                           [1,16,256,1024]
  --mode bw|lat|both       bw: back-to-back transfers, one in flight;
                           lat: ping-pong, the op + a notification,
                           answered by the target's own op + notification
                           (half round trip, p50/p99); both: each row
                           measures both                              [both]
  --mem user|ucx           user: memory the program allocates and
                           registers; ucx: memory from allocate()     [user]
  --pattern contiguous|strided|random
                           where the remote blocks lie: back to back,
                           every other block, or scattered at random
                           over the buffer                      [contiguous]
  --notif                  a notification with every post; the target
                           counts them and the run fails if one is
                           missing                                     [off]
  --baseline raw|none      raw: interleave the raw UCX loop (memh and rkey
                           resolved up front, ucp_put_nbx/ucp_get_nbx per
                           descriptor, one ucp_ep_flush_nbx per transfer;
                           with --notif, ucp_worker_fence + an active
                           message). Not with --progress thread, whose
                           worker belongs to ferry's thread  [raw; none with
                           --progress thread]

How long:
  --iters N|auto           posts per measurement; auto: as many as fit in
                           --time                                     [auto]
  --time SECONDS           length of one measurement with --iters auto
                                                                      [0.02]
  --warmup N               untimed posts per row and side before measuring
                           (stops early after --time)                   [16]
  --reps N                 ferry measurements per row, interleaved with raw
                           ones (raw, ferry, raw, ..., ferry, raw); the
                           table shows medians                           [5]
  --retries N              measure again, up to N times, when another
                           process preempted either side during a
                           measurement (the count of measurements still
                           disturbed is printed at the end)              [3]

Transport and backend:
  --tls LIST               UCX transports, as UCX_TLS takes them: shm, tcp,
                           ...                                  [UCX's choice]
  --error-handling peer|none
                           UCX's peer error handling on the endpoints
                           (ferry::error_mode), raw loop included  [peer]
  --progress inline|thread ferry's progress policy: inline (the caller's
                           thread drives UCX) or thread (a progress thread
                           does)                                    [inline]
  --memory KIND[,KIND]     where the initiator's and the target's buffers
                           live: host or cuda (device 0); one value for
                           both. Any cuda selects ferry::memory::cuda, and
                           its host buffers are then page-locked
                           (cudaMallocHost). Each row then also times one
                           cudaMemcpy of the same total bytes between the
                           same kinds of memory (copy GB/s)          [host]
  --path auto|ucx|cuda_ipc what ferry's transfers are prepared on: auto
                           lets prepare choose (cuda_ipc for device memory
                           on both sides), or force one          [auto]
  --buffer-size SIZE       memory registered per side; blocks that do not
                           fit wrap around inside it                   [64M]
  --seed N                 seed of --pattern random                      [1]
  --timeout SECONDS        fail when the peer or a transfer makes no
                           progress for this long                       [30]

Two hosts (default: fork both sides on this host):
  --listen PORT            be the target; wait for an initiator on PORT (0:
                           any, printed). Every other setting comes from
                           the initiator
  --connect HOST:PORT      be the initiator, against a --listen target

Output (a table on stdout always):
  --json FILE              one object per row: op, block_size, batch, mem,
                           pattern, gbps, desc_per_s, lat_p50_us,
                           lat_p99_us, raw_gbps, ratio (null: not measured)
  --csv FILE               the same columns as CSV
  --plot FILE              GB/s against block size, ferry and raw, through
                           gnuplot; PNG or SVG by the file's extension
  --help                   this text

Columns: GB/s and Mdesc/s are ferry's (1 GB = 1e9 bytes); ns/desc is the
time spent inside post() per descriptor; p50/p99 are half round trips of the
ping-pong in microseconds (raw p50/p99: the raw loop's). ratio is the median
over repetitions of ferry's GB/s divided by the mean of the two raw
measurements taken just before and just after it (1.00: no overhead, below
1: ferry is slower); lat ratio is ferry p50 / raw p50 (1.00: no overhead, above
1: ferry is slower).
)";
}

parse_result parse_options(int argc, const char* const* argv) {
    parse_result r;
    options& o = r.opts;
    std::string block_sizes = "64:1M";
    std::string batches = "1,16,256,1024";
    std::map<std::string, int, std::less<>> seen;
    bool bench_option = false;  // anything a --listen target would ignore
    bool baseline_given = false;

    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            r.help = true;
            return r;
        }
        if (arg.substr(0, 2) != "--") throw usage_error("unexpected argument " + quoted(arg) + " (try --help)");
        std::string_view name = arg;
        std::optional<std::string_view> inline_value;
        if (auto eq = arg.find('='); eq != std::string_view::npos) {
            name = arg.substr(0, eq);
            inline_value = arg.substr(eq + 1);
        }
        if (seen[std::string(name)]++ > 0) fail(name, "given twice");
        auto value = [&]() -> std::string_view {
            if (inline_value) return *inline_value;
            if (i + 1 >= argc) fail(name, "needs a value (try --help)");
            return argv[++i];
        };
        auto flag = [&] {
            if (inline_value) fail(name, "takes no value");
        };
        if (name != "--listen") bench_option = true;

        if (name == "--op") {
            o.op = parse_choice<ferry::xfer_op>(name, value(), {{"read", ferry::xfer_op::read},
                                                                {"write", ferry::xfer_op::write}});
        } else if (name == "--block-sizes") {
            block_sizes = value();
        } else if (name == "--batch") {
            batches = value();
        } else if (name == "--mode") {
            o.mode = parse_modes(name, value());
        } else if (name == "--mem") {
            o.mem = parse_choice<mem_kind>(name, value(), {{"user", mem_kind::user}, {"ucx", mem_kind::ucx}});
        } else if (name == "--pattern") {
            o.pattern = parse_choice<pattern_kind>(name, value(),
                                                   {{"contiguous", pattern_kind::contiguous},
                                                    {"strided", pattern_kind::strided},
                                                    {"random", pattern_kind::random}});
        } else if (name == "--reload-peer") {
            flag();
            o.reload_peer = true;
        } else if (name == "--notif") {
            flag();
            o.notif = true;
        } else if (name == "--baseline") {
            o.baseline = parse_choice<baseline_kind>(name, value(),
                                                     {{"raw", baseline_kind::raw}, {"none", baseline_kind::none}});
            baseline_given = true;
        } else if (name == "--iters") {
            auto v = value();
            o.iters = v == "auto" ? 0 : parse_uint(name, v, 1, std::uint64_t{1} << 32);
        } else if (name == "--time") {
            o.time = parse_seconds(name, value(), 0.0001, 600);
        } else if (name == "--warmup") {
            o.warmup = parse_uint(name, value(), 0, std::uint64_t{1} << 32);
        } else if (name == "--reps") {
            o.reps = parse_uint(name, value(), 1, max_reps);
        } else if (name == "--retries") {
            o.retries = parse_uint(name, value(), 0, 100);
        } else if (name == "--tls") {
            auto v = value();
            if (v.empty()) fail(name, "the transport list is empty");
            for (char c : v)
                if (!(std::isalnum(static_cast<unsigned char>(c)) || c == ',' || c == '_' || c == '^' || c == '-' ||
                      c == ':' || c == '\\'))
                    fail(name, quoted(v) + " is not a UCX transport list (e.g. shm, tcp, shm,tcp)");
            o.tls = v;
        } else if (name == "--error-handling") {
            o.peer_error_handling =
                parse_choice<bool>(name, value(), {{"peer", true}, {"none", false}});
        } else if (name == "--progress") {
            o.progress = parse_progress(name, value());
        } else if (name == "--memory") {
            parse_memory(name, value(), o);
        } else if (name == "--path") {
            o.path = parse_choice<path_kind>(
                name, value(), {{"auto", path_kind::automatic}, {"ucx", path_kind::ucx}, {"cuda_ipc", path_kind::cuda_ipc}});
        } else if (name == "--buffer-size") {
            o.buffer_size = parse_size(name, value());
            if (o.buffer_size > (std::size_t{16} << 30)) fail(name, "at most 16G");
        } else if (name == "--seed") {
            o.seed = parse_uint(name, value(), 0, UINT64_MAX);
        } else if (name == "--timeout") {
            o.timeout = parse_seconds(name, value(), 0.1, 86400);
        } else if (name == "--listen") {
            o.listen_port = parse_port(name, value());
        } else if (name == "--connect") {
            auto v = value();
            auto colon = v.rfind(':');
            if (colon == std::string_view::npos || colon == 0 || colon + 1 == v.size())
                fail(name, "expected HOST:PORT, got " + quoted(v));
            auto host = v.substr(0, colon);
            if (host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);  // [::1]:port
            o.connect_host = host;
            o.connect_port = parse_port(name, v.substr(colon + 1));
            if (o.connect_port == 0) fail(name, "port 0 cannot be connected to");
        } else if (name == "--json" || name == "--csv" || name == "--plot") {
            auto v = value();
            if (v.empty()) fail(name, "the file name is empty");
            (name == "--json" ? o.json_path : name == "--csv" ? o.csv_path : o.plot_path) = v;
        } else {
            throw usage_error("unknown option " + quoted(name) + " (try --help)");
        }
    }

    o.block_sizes = parse_size_list("--block-sizes", block_sizes, max_block_size);
    o.batches = parse_size_list("--batch", batches, max_batch);

    if (o.listen_port && !o.connect_host.empty()) fail("--listen", "cannot be combined with --connect");
    if (o.listen_port && bench_option)
        fail("--listen", "the target takes every setting from the initiator; give the other options on the "
                         "--connect side");
    if (o.mode.step && !o.connect_host.empty())
        fail("--mode", "step compares the two processes' clocks, so both must run on one host: not with --connect");
    if (o.progress == progress_kind::thread && o.baseline == baseline_kind::raw) {
        // The raw loop drives the UCX worker itself; under this policy the
        // worker belongs to ferry's progress thread.
        if (baseline_given)
            fail("--baseline", "'raw' drives the UCX worker from the benchmark's thread, but under --progress thread "
                               "the worker belongs to ferry's progress thread; use --baseline none");
        o.baseline = baseline_kind::none;
    }
    if (!o.json_path.empty()) check_writable("--json", o.json_path);
    if (!o.csv_path.empty()) check_writable("--csv", o.csv_path);
    if (!o.plot_path.empty()) {
        check_writable("--plot", o.plot_path);
        if (!o.mode.bw) fail("--plot", "draws GB/s, which --mode lat does not measure");
        if (!ends_with(o.plot_path, ".png") && !ends_with(o.plot_path, ".svg"))
            fail("--plot", quoted(o.plot_path) + ": the file name must end in .png or .svg");
        if (!on_path("gnuplot"))
            fail("--plot", "gnuplot is not installed (on Debian: apt-get install gnuplot-nox), so " +
                               quoted(o.plot_path) + " cannot be drawn");
    }
    return r;
}

std::string encode_target_settings(const options& o) {
    std::ostringstream out;
    out << "mem=" << to_string(o.mem) << "\n"
        << "tls=" << o.tls << "\n"
        << "error_handling=" << (o.peer_error_handling ? "peer" : "none") << "\n"
        << "progress=" << to_string(o.progress) << "\n"
        << "memory=" << to_string(o.initiator_buffer) << "," << to_string(o.target_buffer) << "\n"
        << "path=" << to_string(o.path) << "\n"
        << "baseline=" << to_string(o.baseline) << "\n"
        << "timeout=" << o.timeout << "\n";
    return out.str();
}

options decode_target_settings(std::string_view text) {
    options o;
    for (auto line : split(text, '\n')) {
        if (line.empty()) continue;
        auto eq = line.find('=');
        if (eq == std::string_view::npos) throw usage_error("settings from the initiator: bad line " + quoted(line));
        auto key = line.substr(0, eq);
        auto v = line.substr(eq + 1);
        if (key == "mem") o.mem = parse_choice<mem_kind>("mem", v, {{"user", mem_kind::user}, {"ucx", mem_kind::ucx}});
        else if (key == "tls") o.tls = v;
        else if (key == "error_handling")
            o.peer_error_handling = parse_choice<bool>("--error-handling", v, {{"peer", true}, {"none", false}});
        else if (key == "progress") o.progress = parse_progress("--progress", v);
        else if (key == "memory") {
            parse_memory("--memory", v, o);
        } else if (key == "path") {
            o.path = parse_choice<path_kind>(
                "--path", v, {{"auto", path_kind::automatic}, {"ucx", path_kind::ucx}, {"cuda_ipc", path_kind::cuda_ipc}});
        } else if (key == "baseline")
            o.baseline = parse_choice<baseline_kind>("baseline", v,
                                                     {{"raw", baseline_kind::raw}, {"none", baseline_kind::none}});
        else if (key == "timeout") o.timeout = parse_seconds("timeout", v, 0.1, 86400);
        else throw usage_error("settings from the initiator: unknown key " + quoted(key) + " (version mismatch?)");
    }
    return o;
}

}  // namespace bench
