#pragma once

#include <ferry/version.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

FERRY_NAMESPACE_BEGIN
namespace detail {

/// Which PID namespace this process lives in: the inode of
/// /proc/self/ns/pid, 0 where /proc cannot say. Two processes on one host
/// whose namespaces are equal (and known) name each other by the same pid,
/// which is what the host_ipc path needs to reach a peer through /proc and
/// process_vm_readv; containers with private PID namespaces never match.
inline std::uint64_t pid_namespace() noexcept {
    // A process never leaves its PID namespace (unshare moves only its
    // children), so one look serves the process's whole life, forks included.
    static const std::uint64_t id = [] {
        struct stat st {};
        return ::stat("/proc/self/ns/pid", &st) == 0 ? static_cast<std::uint64_t>(st.st_ino) : std::uint64_t{0};
    }();
    return id;
}

/// This process's id. Not cached: a child forked after the first call has its own.
inline std::uint32_t process_id() noexcept { return static_cast<std::uint32_t>(::getpid()); }

/// What /proc/PID/stat says about a process: its state letter (field 3) and
/// its start time in clock ticks after boot (field 22). A pid is recycled
/// once its process is reaped, but a start time never repeats within one
/// boot, so pid, start time and the boot id (detail::host_id) together name
/// one process for good.
struct proc_stat {
    char state = 0;            // 0: no such process, or /proc cannot say
    std::uint64_t start = 0;   // 0: unknown

    /// A process that has exited, reaped or not, runs no more.
    [[nodiscard]] bool running() const noexcept { return state != 0 && state != 'Z' && state != 'X'; }
};

/// Parses the text of /proc/PID/stat. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are
/// counted from the last ')'.
inline proc_stat parse_proc_stat(std::string_view text) noexcept {
    proc_stat out;
    const auto close = text.rfind(')');
    if (close == std::string_view::npos) return out;
    std::size_t pos = close + 1;
    auto next_field = [&]() -> std::string_view {
        while (pos < text.size() && text[pos] == ' ') ++pos;
        const std::size_t begin = pos;
        while (pos < text.size() && text[pos] != ' ' && text[pos] != '\n') ++pos;
        return text.substr(begin, pos - begin);
    };
    const std::string_view state = next_field();  // field 3
    if (state.size() != 1) return out;
    std::string_view start;
    for (int field = 4; field <= 22; ++field) start = next_field();
    if (start.empty()) return out;
    std::uint64_t value = 0;
    for (char c : start) {
        if (c < '0' || c > '9' || value > (UINT64_MAX - 9) / 10) return out;
        value = value * 10 + static_cast<std::uint64_t>(c - '0');
    }
    out.state = state[0];
    out.start = value;
    return out;
}

/// /proc/PID/stat of `pid` in this process's PID namespace; state 0 when
/// there is no such process (or no /proc).
inline proc_stat read_proc_stat(std::uint32_t pid) noexcept {
    if (pid == 0) return {};
    char path[32];
    std::size_t n = 0;
    for (const char c : std::string_view("/proc/")) path[n++] = c;
    char digits[12];
    std::size_t d = 0;
    for (std::uint32_t v = pid; v != 0; v /= 10) digits[d++] = static_cast<char>('0' + v % 10);
    while (d > 0) path[n++] = digits[--d];
    for (const char c : std::string_view("/stat")) path[n++] = c;
    path[n] = '\0';
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return {};
    // The line is at most a few hundred bytes; the command name is at most 64.
    char buf[1024];
    std::size_t got = 0;
    for (;;) {
        const auto r = ::read(fd, buf + got, sizeof buf - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += static_cast<std::size_t>(r);
        if (got == sizeof buf) break;
    }
    ::close(fd);
    return parse_proc_stat(std::string_view(buf, got));
}

/// This process's start time (clock ticks after boot), 0 where /proc cannot
/// say. Not cached, as process_id: a forked child has its own.
inline std::uint64_t process_start_time() noexcept { return read_proc_stat(process_id()).start; }

}  // namespace detail
FERRY_NAMESPACE_END
