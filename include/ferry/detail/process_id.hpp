#pragma once

#include <ferry/version.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>

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

}  // namespace detail
FERRY_NAMESPACE_END
