#include "output.hpp"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

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

std::string fixed(const std::optional<double>& v, int decimals) {
    if (!v || !std::isfinite(*v)) return "-";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, *v);
    return buf;
}

// Microseconds: two decimals while they matter, fewer as values grow.
std::string micros(const std::optional<double>& v) {
    if (!v || !std::isfinite(*v)) return "-";
    return fixed(v, *v < 100 ? 2 : *v < 10000 ? 1 : 0);
}

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

std::string ucx_version() {
    unsigned major = 0, minor = 0, release = 0;
    ucp_get_version(&major, &minor, &release);
    return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(release);
}

}  // namespace

// ---- table ------------------------------------------------------------------

void table_printer::header(const options& o, std::size_t buffer) {
    std::fprintf(out_,
                 "# ferry-bench: op %s, mem %s, pattern %s, tls %s, notif %s, mode %s, baseline %s, progress %s, "
                 "memory %s, path %s\n"
                 "# %s posts per measurement, %zu repetitions (raw, ferry, raw, ..., ferry, raw), %s per side, UCX %s\n",
                 std::string(ferry::to_string(o.op)).c_str(), std::string(to_string(o.mem)).c_str(),
                 std::string(to_string(o.pattern)).c_str(), o.tls.empty() ? "(UCX default)" : o.tls.c_str(),
                 o.notif ? "on" : "off", std::string(to_string(o.mode)).c_str(),
                 std::string(to_string(o.baseline)).c_str(), std::string(to_string(o.progress)).c_str(),
                 (std::string(to_string(o.initiator_buffer)) + "," + std::string(to_string(o.target_buffer))).c_str(),
                 std::string(to_string(o.path)).c_str(), o.iters ? std::to_string(o.iters).c_str() : ("auto (" + fixed(o.time, 3) + " s)").c_str(), o.reps,
                 format_size(buffer).c_str(), ucx_version().c_str());
    std::fprintf(out_, "%6s %6s %8s %8s %8s %8s %8s %9s %6s %8s %8s %9s %8s %9s %7s\n", "block", "batch", "GB/s",
                 "Mdesc/s", "ns/desc", "p50 us", "p99 us", "raw GB/s", "ratio", "raw p50", "raw p99", "lat ratio",
                 "path", "copy GB/s", "vs copy");
    std::fflush(out_);
}

void table_printer::row(const row_result& r) {
    std::optional<double> mdesc;
    if (r.desc_per_s) mdesc = *r.desc_per_s / 1e6;
    std::fprintf(out_, "%6s %6zu %8s %8s %8s %8s %8s %9s %6s %8s %8s %9s %8s %9s %7s\n", format_size(r.block).c_str(),
                 r.batch, fixed(r.gbps, 3).c_str(), fixed(mdesc, 3).c_str(), fixed(r.post_ns, 1).c_str(),
                 micros(r.lat_p50_us).c_str(), micros(r.lat_p99_us).c_str(), fixed(r.raw_gbps, 3).c_str(),
                 fixed(r.ratio, 3).c_str(), micros(r.raw_p50_us).c_str(), micros(r.raw_p99_us).c_str(),
                 fixed(r.lat_ratio, 3).c_str(), r.path.c_str(), fixed(r.copy_gbps, 2).c_str(),
                 fixed(r.copy_ratio, 3).c_str());
    std::fflush(out_);
}

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

void write_json(const std::string& path, const std::vector<row_result>& rows) {
    auto f = open_out("--json", path);
    f << "[";
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const auto& r = rows[i];
        f << (i ? ",\n " : "\n ") << "{\"op\": \"" << ferry::to_string(r.op) << "\", \"block_size\": " << r.block
          << ", \"batch\": " << r.batch << ", \"mem\": \"" << to_string(r.mem) << "\", \"pattern\": \""
          << to_string(r.pattern) << "\", \"gbps\": " << number(r.gbps)
          << ", \"desc_per_s\": " << number(r.desc_per_s) << ", \"lat_p50_us\": " << number(r.lat_p50_us)
          << ", \"lat_p99_us\": " << number(r.lat_p99_us) << ", \"raw_gbps\": " << number(r.raw_gbps)
          << ", \"ratio\": " << number(r.ratio) << ", \"memory\": \"" << r.memory << "\", \"path\": \""
          << r.path << "\", \"copy_gbps\": " << number(r.copy_gbps) << ", \"copy_ratio\": " << number(r.copy_ratio)
          << "}";
    }
    f << (rows.empty() ? "]\n" : "\n]\n");
    close_out("--json", path, f);
}

void write_csv(const std::string& path, const std::vector<row_result>& rows) {
    auto f = open_out("--csv", path);
    auto cell = [](const std::optional<double>& v) { return v && std::isfinite(*v) ? number(v) : std::string(); };
    f << "op,block_size,batch,mem,pattern,gbps,desc_per_s,lat_p50_us,lat_p99_us,raw_gbps,ratio,memory,path,copy_gbps,"
         "copy_ratio\n";
    for (const auto& r : rows)
        f << ferry::to_string(r.op) << "," << r.block << "," << r.batch << "," << to_string(r.mem) << ","
          << to_string(r.pattern) << "," << cell(r.gbps) << "," << cell(r.desc_per_s) << "," << cell(r.lat_p50_us)
          << "," << cell(r.lat_p99_us) << "," << cell(r.raw_gbps) << "," << cell(r.ratio) << ",\"" << r.memory
          << "\"," << r.path << "," << cell(r.copy_gbps) << "," << cell(r.copy_ratio) << "\n";
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
