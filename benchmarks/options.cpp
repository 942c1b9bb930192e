#include "options.hpp"

#include "option_values.hpp"

#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace bench {

std::string_view to_string(mem_kind m) noexcept {
    switch (m) {
        case mem_kind::user: return "user";
        case mem_kind::alloc: return "alloc";
        case mem_kind::ucx: return "ucx";
    }
    return "user";
}
std::string_view to_string(pattern_kind p) noexcept {
    switch (p) {
        case pattern_kind::contiguous: return "contiguous";
        case pattern_kind::strided: return "strided";
        case pattern_kind::random: return "random";
        case pattern_kind::runs: return "runs";
        case pattern_kind::kv: return "kv";
    }
    return "?";
}
std::string pattern_name(pattern_kind p, std::size_t run_length) {
    if (p == pattern_kind::runs || p == pattern_kind::kv) return cat(to_string(p), ":", std::to_string(run_length));
    return std::string(to_string(p));
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
        case path_kind::host_ipc: return "host_ipc";
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

bool built_with_kernels() noexcept {
#if defined(FERRY_BENCH_KERNELS)
    return true;
#else
    return false;
#endif
}

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

bool on_path(const char* program) {
    const char* path = std::getenv("PATH");
    if (!path) return false;
    for (auto dir : split(path, ':')) {
        std::string candidate = std::string(dir.empty() ? "." : dir) + "/" + program;
        if (access(candidate.c_str(), X_OK) == 0) return true;
    }
    return false;
}

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

path_kind parse_path(std::string_view option, std::string_view v) {
    return parse_choice<path_kind>(option, v,
                                   {{"auto", path_kind::automatic},
                                    {"ucx", path_kind::ucx},
                                    {"cuda_ipc", path_kind::cuda_ipc},
                                    {"host_ipc", path_kind::host_ipc}});
}

baseline_kind parse_baseline(std::string_view option, std::string_view v) {
    return parse_choice<baseline_kind>(option, v, {{"raw", baseline_kind::raw}, {"none", baseline_kind::none}});
}

mem_kind parse_mem(std::string_view option, std::string_view v) {
    return parse_choice<mem_kind>(option, v, {{"user", mem_kind::user}, {"alloc", mem_kind::alloc}, {"ucx", mem_kind::ucx}});
}

bool parse_error_handling(std::string_view option, std::string_view v) {
    return parse_choice<bool>(option, v, {{"peer", true}, {"none", false}});
}

progress_kind parse_progress(std::string_view option, std::string_view v) {
    if (v == "inline") return progress_kind::inline_poll;
    if (v == "thread") return progress_kind::thread;
    fail(option, quoted(v) + ": that progress policy is not built yet; this ferry implements 'inline' "
                             "(ferry::progress::inline_poll) and 'thread' (ferry::progress::thread)");
}

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

void check_writable(std::string_view option, const std::string& path) {
    auto slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    if (access(dir.c_str(), W_OK) != 0)
        fail(option, "cannot write " + quoted(path) + ": directory " + quoted(dir) + ": " + std::strerror(errno));
    if (access(path.c_str(), F_OK) == 0 && access(path.c_str(), W_OK) != 0)
        fail(option, "cannot write " + quoted(path) + ": " + std::strerror(errno));
}

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

std::string encode_target_settings(const options& o) {
    std::ostringstream out;
    out << "mem=" << to_string(o.mem) << "\n"
        << "tls=" << o.tls << "\n"
        << "error_handling=" << (o.peer_error_handling ? "peer" : "none") << "\n"
        << "progress=" << to_string(o.progress) << "\n"
        << "memory=" << to_string(o.initiator_buffer) << "," << to_string(o.target_buffer) << "\n"
        << "path=" << to_string(o.path) << "\n"
        << "baseline=" << to_string(o.baseline) << "\n"
        << "timeout=" << o.timeout << "\n"
        << "kernel=" << (o.kernel ? 1 : 0) << "\n";
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
        if (key == "mem") o.mem = parse_mem("mem", v);
        else if (key == "tls") o.tls = v;
        else if (key == "error_handling")
            o.peer_error_handling = parse_error_handling("--error-handling", v);
        else if (key == "progress") o.progress = parse_progress("--progress", v);
        else if (key == "memory") {
            parse_memory("--memory", v, o);
        } else if (key == "path") {
            o.path = parse_path("--path", v);
        } else if (key == "baseline")
            o.baseline = parse_baseline("baseline", v);
        else if (key == "timeout") o.timeout = parse_seconds("timeout", v, 0.1, 86400);
        else if (key == "kernel") o.kernel = v == "1";
        else throw usage_error("settings from the initiator: unknown key " + quoted(key) + " (version mismatch?)");
    }
    return o;
}

}  // namespace bench
