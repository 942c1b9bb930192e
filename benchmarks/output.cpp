#include "output.hpp"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace bench {

namespace {

// Shortest text that reads back as the same double; null when unset.
std::string number(const std::optional<double>& v) {
    if (!v || !std::isfinite(*v)) return "null";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.6g", *v);
    return buf;
}

std::ofstream open_out(const std::string& option, const std::string& path) {
    std::ofstream f(path, std::ios::trunc);
    if (!f) throw std::runtime_error(option + ": cannot write '" + path + "': " + std::strerror(errno));
    return f;
}

void close_out(const std::string& option, const std::string& path, std::ofstream& f) {
    f.close();
    if (!f) throw std::runtime_error(option + ": writing '" + path + "' failed");
}

}  // namespace

// ---- progress line ------------------------------------------------------------

progress_line::progress_line() : enabled_(::isatty(STDERR_FILENO) == 1) {}

void progress_line::show(const std::string& text) {
    if (!enabled_) return;
    std::fprintf(stderr, "\r\033[K%s", text.c_str());
    std::fflush(stderr);
    shown_ = true;
}

void progress_line::clear() {
    if (!enabled_ || !shown_) return;
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    shown_ = false;
}

// ---- files --------------------------------------------------------------------

std::vector<field> fields(const row_result& r) {
    std::vector<field> out;
    auto num = [&](const char* key, const std::optional<double>& v) {
        out.push_back({key, number(v), v && std::isfinite(*v) ? number(v) : std::string()});
    };
    auto str = [&](const char* key, std::string_view v) {
        out.push_back({key, cat("\"", v, "\""), std::string(v)});
    };
    auto step = [&](const char* key, const std::optional<step_summary>& s, double step_summary::*f) {
        num(key, s ? std::optional((*s).*f) : std::nullopt);
    };
    str("op", ferry::to_string(r.op));
    out.push_back({"block_size", std::to_string(r.block), std::to_string(r.block)});
    out.push_back({"batch", std::to_string(r.batch), std::to_string(r.batch)});
    str("mem", to_string(r.mem));
    str("pattern", pattern_name(r.pattern, r.run_length));
    out.push_back({"blocks", std::to_string(r.blocks), std::to_string(r.blocks)});
    out.push_back({"entries", std::to_string(r.entries), std::to_string(r.entries)});
    num("prepare_us", r.prepare_us);
    num("prepare_again_us", r.prepare_again_us);
    num("gbps", r.gbps);
    num("desc_per_s", r.desc_per_s);
    num("lat_p50_us", r.lat_p50_us);
    num("lat_p99_us", r.lat_p99_us);
    num("raw_gbps", r.raw_gbps);
    num("ratio", r.ratio);
    str("memory", r.memory);
    str("path", r.path);
    num("copy_gbps", r.copy_gbps);
    num("copy_ratio", r.copy_ratio);
    num("first_us", r.first_us);
    num("raw_first_us", r.raw_first_us);
    num("connect_us", r.connect_us);
    out.push_back({"first_after_load", r.first_after_load ? "true" : "false", r.first_after_load ? "true" : "false"});
    num("xfer_us", r.xfer_us);
    num("tel_p50_us", r.tel_p50_us);
    num("tel_p99_us", r.tel_p99_us);
    if (r.raw_buffer.empty()) out.push_back({"raw_buffer", "null", ""});
    else str("raw_buffer", r.raw_buffer);
    for (auto [prefix, s] : {std::pair{"step_", &r.step}, std::pair{"raw_step_", &r.raw_step}}) {
        step(cat(prefix, "p50_us").c_str(), *s, &step_summary::p50_us);
        step(cat(prefix, "p99_us").c_str(), *s, &step_summary::p99_us);
        step(cat(prefix, "min_us").c_str(), *s, &step_summary::min_us);
        step(cat(prefix, "mean_us").c_str(), *s, &step_summary::mean_us);
        step(cat(prefix, "post_us").c_str(), *s, &step_summary::post_us);
        step(cat(prefix, "complete_us").c_str(), *s, &step_summary::complete_us);
    }
    num("step_gbps", r.step_gbps);
    num("step_vs_bw", r.step_vs_bw);
    num("raw_step_vs_bw", r.raw_step_vs_bw);
    num("step_ratio", r.step_ratio);
    num("nixl_us", r.nixl_us);
    num("nixl_direct_us", r.nixl_direct_us);
    num("nixl_overhead_us", r.nixl_overhead_us);
    num("kernel_gbps", r.kernel_gbps);
    num("kernel_ratio", r.kernel_ratio);
    num("kernel_lat_us", r.kernel_lat_us);
    num("kernel_lat_ratio", r.kernel_lat_ratio);
    return out;
}

void write_json(const std::string& path, const std::vector<row_result>& rows) {
    auto f = open_out("--json", path);
    f << "[";
    for (std::size_t i = 0; i < rows.size(); ++i) {
        f << (i ? ",\n {" : "\n {");
        bool first = true;
        for (const auto& x : fields(rows[i])) {
            f << (first ? "" : ", ") << "\"" << x.key << "\": " << x.json;
            first = false;
        }
        f << "}";
    }
    f << (rows.empty() ? "]\n" : "\n]\n");
    close_out("--json", path, f);
}

void write_csv(const std::string& path, const std::vector<row_result>& rows) {
    auto f = open_out("--csv", path);
    const auto heads = fields(row_result{});
    for (std::size_t i = 0; i < heads.size(); ++i) f << (i ? "," : "") << heads[i].key;
    f << "\n";
    for (const auto& r : rows) {
        const auto cells = fields(r);
        for (std::size_t i = 0; i < cells.size(); ++i) {
            const bool quote = cells[i].text.find(',') != std::string::npos;
            f << (i ? "," : "") << (quote ? "\"" : "") << cells[i].text << (quote ? "\"" : "");
        }
        f << "\n";
    }
    close_out("--csv", path, f);
}

namespace {

std::string gnuplot_string(std::string_view s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out + "\"";
}

int run_gnuplot(const std::string& script) {
    char arg0[] = "gnuplot";
    std::string script_copy = script;
    char* argv[] = {arg0, script_copy.data(), nullptr};
    pid_t pid;
    if (int rc = ::posix_spawnp(&pid, "gnuplot", nullptr, nullptr, argv, environ); rc != 0)
        throw std::runtime_error(std::string("--plot: cannot run gnuplot: ") + std::strerror(rc) +
                                 " (on Debian: apt-get install gnuplot-nox)");
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
}

}  // namespace

void write_plot(const std::string& path, const std::vector<row_result>& rows, const std::string& title) {
    // One data block per batch: block size, ferry GB/s, raw GB/s.
    std::map<std::size_t, std::vector<const row_result*>> by_batch;
    std::set<std::size_t> blocks;
    bool any_raw = false;
    for (const auto& r : rows) {
        if (!r.gbps) continue;
        by_batch[r.batch].push_back(&r);
        blocks.insert(r.block);
        any_raw = any_raw || r.raw_gbps.has_value();
    }
    if (by_batch.empty()) throw std::runtime_error("--plot: no bandwidth rows to draw (--mode lat measures none)");

    char dir_template[] = "/tmp/ferry-bench-plot-XXXXXX";
    if (!::mkdtemp(dir_template)) throw std::runtime_error(std::string("--plot: mkdtemp: ") + std::strerror(errno));
    const std::string dir = dir_template;
    const std::string data = dir + "/data", script = dir + "/plot.gp";
    {
        std::ofstream d(data);
        for (const auto& [batch, list] : by_batch) {
            d << "# batch " << batch << "\n";
            for (const auto* r : list)
                d << r->block << " " << number(r->gbps) << " " << (r->raw_gbps ? number(r->raw_gbps) : "NaN") << "\n";
            d << "\n\n";
        }
    }
    const bool svg = path.size() >= 4 && path.substr(path.size() - 4) == ".svg";
    {
        std::ofstream g(script);
        if (svg) {
            g << "set terminal svg size 1000,620 dynamic enhanced font 'sans,11' background rgb 'white'\n";
        } else {
            g << "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) {\n"
                 "  set terminal pngcairo size 1000,620 enhanced font 'sans,10'\n"
                 "} else {\n"
                 "  set terminal png size 1000,620\n"
                 "}\n";
        }
        g << "set output " << gnuplot_string(path) << "\n"
          << "set title " << gnuplot_string(title) << " noenhanced\n"
          << "set xlabel 'block size (bytes)'\nset ylabel 'GB/s'\n"
          << "set logscale x 2\nset grid\nset key outside right top\nset yrange [0:*]\n";
        g << "set xrange [" << *blocks.begin() / 1.25 << ":" << *blocks.rbegin() * 1.25 << "]\n";
        g << "set xtics (";
        bool first = true;
        for (auto b : blocks) {
            g << (first ? "" : ", ") << gnuplot_string(format_size(b)) << " " << b;
            first = false;
        }
        g << ")\n";
        g << "plot ";
        std::size_t i = 0;
        for (const auto& [batch, list] : by_batch) {
            g << (i ? ", \\\n     " : "") << gnuplot_string(data) << " index " << i
              << " using 1:2 with linespoints lw 2 pt 7 ps 0.6 lc " << i + 1 << " dt 1 title 'ferry, batch " << batch
              << "'";
            if (any_raw)
                g << ", \\\n     " << gnuplot_string(data) << " index " << i
                  << " using 1:3 with linespoints lw 1 pt 6 ps 0.6 lc " << i + 1 << " dt 2 title 'raw, batch "
                  << batch << "'";
            ++i;
        }
        g << "\n";
    }
    int status = run_gnuplot(script);
    std::remove(data.c_str());
    std::remove(script.c_str());
    ::rmdir(dir.c_str());
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        throw std::runtime_error("--plot: gnuplot failed to draw '" + path + "' (its messages are above)");
}

}  // namespace bench
