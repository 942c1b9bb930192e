// ferry-bench: ferry's descriptor-list READ/WRITE between two processes,
// against a raw UCX loop on the same buffers, in the same run. See --help.

#include "backends.hpp"
#include "control.hpp"
#include "options.hpp"
#include "output.hpp"
#include "session.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace bench;

// The target: settings from the initiator, then serve until told to quit.
int target_main(control& ctl, bool print_errors) {
    try {
        auto m = ctl.expect(ctl.recv(), msg::settings, "the settings");
        auto r = m.reader();
        const options settings = decode_target_settings(r.str());
        const std::size_t buffer = r.u64();
        r.expect_end();
        with_backend(settings, [&]<class B>() { run_target<B>(ctl, settings, buffer); });
        return 0;
    } catch (const peer_error& e) {
        // The initiator failed (and said so itself) or went away.
        if (print_errors) std::fprintf(stderr, "ferry-bench (target): %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        ctl.send_error(e.what());
        if (print_errors) std::fprintf(stderr, "ferry-bench (target): error: %s\n", e.what());
        return 1;
    }
}

std::string title(const options& o) {
    return "ferry-bench: " + std::string(ferry::to_string(o.op)) + ", mem " + std::string(to_string(o.mem)) +
           ", pattern " + pattern_name(o.pattern, o.run_length) + (o.coalesce ? ", coalesced" : "") + (o.strided ? ", strided lists" : "") + ", tls " + (o.tls.empty() ? "default" : o.tls) +
           (o.notif ? ", notif" : "");
}

int initiator_main(control& ctl, const options& o) {
    std::vector<row_result> rows;
    try {
        table_printer table(stdout);
        rows = with_backend(o, [&]<class B>() { return run_initiator<B>(ctl, o, table); });
    } catch (const peer_error& e) {
        std::fprintf(stderr, "ferry-bench: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        ctl.send_error(e.what());
        std::fprintf(stderr, "ferry-bench: error: %s\n", e.what());
        return 1;
    }
    try {
        if (!o.json_path.empty()) write_json(o.json_path, rows);
        if (!o.csv_path.empty()) write_csv(o.csv_path, rows);
        if (!o.plot_path.empty()) write_plot(o.plot_path, rows, title(o));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ferry-bench: error: %s\n", e.what());
        return 1;
    }
    return 0;
}

// Reaps the forked target; kills it if it outstays the initiator.
int reap(pid_t child, double grace) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace);
    int status = 0;
    while (true) {
        pid_t r = ::waitpid(child, &status, WNOHANG);
        if (r == child) break;
        if (r < 0 && errno != EINTR) return 1;
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(child, SIGKILL);
            ::waitpid(child, &status, 0);
            std::fprintf(stderr, "ferry-bench: the target did not exit; killed it\n");
            return 1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    std::fprintf(stderr, "ferry-bench: the target died of signal %d\n", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    return 1;
}

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
// As in tests/support/catch_main.cpp: UCX's memory hooks and the sanitizers'
// interceptors fight (under TSan, UCX's madvise hook crashes glibc's thread
// exit on UCX's async thread). UCX reads these settings when its libraries
// load, before main, so they must be in the environment the program starts
// with: set them and start again, unless the user has chosen.
void restart_without_ucx_memory_hooks(char** argv) {
    if (std::getenv("UCX_MEM_MALLOC_HOOKS") != nullptr) return;
    setenv("UCX_MEM_MALLOC_HOOKS", "no", 0);
    setenv("UCX_MEM_MMAP_HOOK_MODE", "none", 0);
    setenv("UCX_MEM_EVENTS", "no", 0);
    ::execv("/proc/self/exe", argv);
    std::perror("ferry-bench: restarting without UCX's memory hooks: execv /proc/self/exe");
}
#endif

}  // namespace

int main(int argc, char** argv) {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
    restart_without_ucx_memory_hooks(argv);
#endif
    options o;
    try {
        auto parsed = parse_options(argc, argv);
        if (parsed.help) {
            std::fputs(help_text().c_str(), stdout);
            return 0;
        }
        o = std::move(parsed.opts);
    } catch (const usage_error& e) {
        std::fprintf(stderr, "ferry-bench: %s\n", e.what());
        return 2;
    }

    try {
        if (o.listen_port) {
            control ctl(listen_and_accept(*o.listen_port), "initiator");
            return target_main(ctl, true);
        }
        if (!o.connect_host.empty()) {
            control ctl(connect_to(o.connect_host, o.connect_port, o.timeout), "target");
            return initiator_main(ctl, o);
        }
        // One host: fork before any UCX object exists.
        auto f = fork_pair();
        if (f.child == 0) {
            int rc;
            {
                control ctl(f.fd, "initiator");
                rc = target_main(ctl, false);
            }
            std::fflush(stdout);
            std::fflush(stderr);
            ::_exit(rc);
        }
        int rc;
        {
            control ctl(f.fd, "target");
            rc = initiator_main(ctl, o);
        }  // closing the connection tells a target that is still waiting to go
        int target_rc = reap(f.child, rc == 0 ? o.timeout : 5.0);
        if (rc == 0 && target_rc != 0) {
            std::fprintf(stderr, "ferry-bench: the target exited with status %d\n", target_rc);
            return 1;
        }
        return rc;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ferry-bench: error: %s\n", e.what());
        return 1;
    }
}
