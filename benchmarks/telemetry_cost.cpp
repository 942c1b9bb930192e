// ferry-telemetry-cost: what telemetry::on adds to a post, measured in one
// process so that both builds share the machine's state. Two backends, one
// of each policy, each WRITE the same shape of list to a peer that is the
// backend itself (loopback over the transport named), and take turns: a
// round of posts (post, then check until done) on one, then on the other,
// alternating which goes first. Prints each build's median and fastest
// round in ns a post, the difference, and the ratio.

#include <ferry/ferry.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

struct options {
    std::size_t block = 64;
    std::size_t batch = 16;
    std::size_t posts = 20000;
    std::size_t rounds = 41;
    std::string tls = "shm";
};

void usage(std::FILE* to) {
    std::fputs(
        "usage: ferry-telemetry-cost [options]\n"
        "What telemetry::on adds to a post: two backends in this process, telemetry::off and\n"
        "telemetry::on (inline progress, host memory), each WRITEs one prepared list to itself\n"
        "(loopback) and they take turns, a round of posts each, alternating which goes first.\n"
        "  --block-size BYTES   bytes per descriptor                      [64]\n"
        "  --batch N            descriptors per transfer                  [16]\n"
        "  --posts N            posts per round (post, then check until done) [20000]\n"
        "  --rounds N           rounds per build (odd: the median is one round) [41]\n"
        "  --tls LIST           UCX_TLS of both backends                  [shm]\n"
        "  --help               this text\n",
        to);
}

std::optional<options> parse(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--help") {
            usage(stdout);
            std::exit(0);
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "ferry-telemetry-cost: %s needs a value, or is unknown (--help lists the options)\n",
                         argv[i]);
            return std::nullopt;
        }
        const std::string v = argv[++i];
        char* end = nullptr;
        const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
        const bool number = !v.empty() && *end == '\0' && v[0] != '-';
        bool good = number && n > 0;
        if (arg == "--block-size") o.block = n;
        else if (arg == "--batch") o.batch = n;
        else if (arg == "--posts") o.posts = n;
        else if (arg == "--rounds") o.rounds = n;
        else if (arg == "--tls") good = !(o.tls = v).empty();
        else {
            std::fprintf(stderr, "ferry-telemetry-cost: unknown option %s (--help lists them)\n", argv[i - 1]);
            return std::nullopt;
        }
        if (!good) {
            std::fprintf(stderr, "ferry-telemetry-cost: bad value '%s' for %s\n", v.c_str(), argv[i - 1]);
            return std::nullopt;
        }
    }
    return o;
}

template <class Telemetry>
class rig {
public:
    using backend = ferry::ucx_backend<ferry::policy<ferry::progress::inline_poll, ferry::memory::host, Telemetry>>;

    rig(const char* name, const options& o)
        : b_(config(name, o)), src_(b_.allocate(o.block * o.batch)), dst_(b_.allocate(o.block * o.batch)) {
        const ferry::peer self = b_.load_remote(b_.local_metadata());
        std::vector<ferry::desc> l, r;
        for (std::size_t i = 0; i < o.batch; ++i) {
            l.push_back({reinterpret_cast<std::uintptr_t>(src_.data()) + i * o.block, o.block, 0});
            r.push_back({reinterpret_cast<std::uintptr_t>(dst_.data()) + i * o.block, o.block, 0});
        }
        // Coalescing off: a post is `batch` operations, as the rows say.
        x_ = b_.prepare(ferry::xfer_op::write, l, r, self,
                        ferry::xfer_options{.path = ferry::xfer_path::ucx, .coalesce = false});
    }

    // ns a post over a round of `posts`, or a negative number on a failed post.
    double round(std::size_t posts) {
        const auto t0 = std::chrono::steady_clock::now();
        for (std::size_t i = 0; i < posts; ++i) {
            auto s = b_.post(x_);
            while (s == ferry::status::in_progress) s = b_.check(x_);
            if (s != ferry::status::ok) {
                std::fprintf(stderr, "ferry-telemetry-cost: a post ended %s\n", std::string(ferry::to_string(s)).c_str());
                return -1;
            }
        }
        return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
               static_cast<double>(posts);
    }

private:
    static ferry::ucx_config config(const char* name, const options& o) {
        ferry::ucx_config c;
        c.name = name;
        c.ucx_options = {{"TLS", o.tls}};
        return c;
    }

    backend b_;
    ferry::region src_, dst_;
    ferry::xfer x_;
};

}  // namespace

int main(int argc, char** argv) {
    const auto o = parse(argc, argv);
    if (!o) return 2;
    try {
        rig<ferry::telemetry::off> off("off", *o);
        rig<ferry::telemetry::on> on("on", *o);
        // Warm both: first touches, UCX's lazy set-up.
        if (off.round(o->posts) < 0 || on.round(o->posts) < 0) return 1;
        std::vector<double> a, b;
        for (std::size_t r = 0; r < o->rounds; ++r) {
            const bool off_first = r % 2 == 0;
            const double first = off_first ? off.round(o->posts) : on.round(o->posts);
            const double second = off_first ? on.round(o->posts) : off.round(o->posts);
            if (first < 0 || second < 0) return 1;
            (off_first ? a : b).push_back(first);
            (off_first ? b : a).push_back(second);
        }
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        const double off_med = a[a.size() / 2], on_med = b[b.size() / 2];
        std::printf("# ferry-telemetry-cost: %zu x %zu B WRITE, loopback, tls %s, %zu rounds of %zu posts each\n",
                    o->batch, o->block, o->tls.c_str(), o->rounds, o->posts);
        std::printf("off ns/post  median %.1f  fastest %.1f\n", off_med, a.front());
        std::printf("on  ns/post  median %.1f  fastest %.1f\n", on_med, b.front());
        std::printf("on - off     median %.1f ns  fastest %.1f ns\n", on_med - off_med, b.front() - a.front());
        std::printf("on / off     median %.3f  fastest %.3f\n", on_med / off_med, b.front() / a.front());
    } catch (const ferry::error& e) {
        std::fprintf(stderr, "ferry-telemetry-cost: %s\n", e.what());
        return 1;
    }
    return 0;
}
