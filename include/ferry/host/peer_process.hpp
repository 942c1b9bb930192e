#pragma once

#include <ferry/detail/host_id.hpp>
#include <ferry/detail/process_id.hpp>
#include <ferry/version.hpp>

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

FERRY_NAMESPACE_BEGIN
namespace detail::host {

/// A peer seen as a process on this host, for the host_ipc path and for
/// the watch that notices its death (pid_watch): whether we can name it at
/// all (same host, same PID namespace), whether the kernel lets us copy its
/// memory with process_vm_writev/readv, and whether it still lives.
///
/// Constructed where the worker may be touched (load_remote), it opens a
/// pidfd on the peer and then checks that the process behind the pid is the
/// one that wrote the metadata (its start time, when the blob carries it):
/// a pidfd opened after that check could name a stranger that inherited a
/// recycled pid, while one opened before it names, once the check passes,
/// the peer itself for as long as the pidfd is open.
class peer_process {
public:
    peer_process(std::string_view host, std::uint32_t pid, std::uint64_t pid_namespace, std::uint64_t start_time = 0)
        : pid_(pid), start_time_(start_time), why_not_(refusal(host, pid, pid_namespace)) {
        if (why_not_.empty()) identify();
    }
    peer_process(const peer_process&) = delete;
    peer_process& operator=(const peer_process&) = delete;
    ~peer_process() {
        if (const int fd = pidfd_.load(std::memory_order_relaxed); fd >= 0) ::close(fd);
    }

    [[nodiscard]] ::pid_t pid() const noexcept { return static_cast<::pid_t>(pid_); }

    /// Why this process cannot reach the peer's memory at all; empty if it can.
    [[nodiscard]] const std::string& unreachable() const noexcept { return why_not_; }

    /// Why process_vm_readv/writev cannot reach the peer; empty if they can.
    /// Asks the kernel once, by reading one byte at `probe` (an address in
    /// memory the peer published), since only a real call checks the
    /// permission (same user, and what ptrace access control allows).
    const std::string& vm_refusal(std::uint64_t probe) {
        if (!why_not_.empty()) return why_not_;
        if (!gone_.empty()) return gone_;  // the pid may name a stranger: never touch it
        if (vm_checked_) return vm_why_not_;
        vm_checked_ = true;
        char byte = 0;
        iovec here{&byte, 1};
        iovec there{reinterpret_cast<void*>(probe), 1};
        if (::process_vm_readv(pid(), &here, 1, &there, 1, 0) != 1) {
            const int e = errno;
            // A block the peer no longer maps says nothing about permission: ask again next time.
            vm_checked_ = e != EFAULT;
            vm_why_not_ = std::string("process_vm_readv on pid ") + std::to_string(pid_) + " fails (" +
                          std::strerror(e) + (e == EPERM ? ": another user, or ptrace access control forbids it)" : ")");
            return vm_why_not_;
        }
        vm_why_not_.clear();
        return vm_why_not_;
    }

    /// False once the peer's process has exited. With a pidfd (Linux >= 5.3)
    /// the answer is about the very process probed, so that a process_vm
    /// call that follows cannot reach a stranger that inherited its pid.
    /// After release() it is false: the peer was unloaded, and without its
    /// pidfd the pid alone could name a stranger.
    [[nodiscard]] bool alive() const noexcept {
        if (!gone_.empty()) return false;
        const int fd = pidfd_.load(std::memory_order_acquire);
        if (released_.load(std::memory_order_acquire)) return false;
        if (fd < 0) return ::kill(pid(), 0) == 0 || errno == EPERM;
        // A release() between the two loads closes fd under us: poll then
        // reports it invalid (POLLNVAL), which reads as not alive.
        pollfd p{fd, POLLIN, 0};
        return ::poll(&p, 1, 0) == 0;
    }

    /// Closes the pidfd of a peer that was unloaded or replaced. Its entry
    /// outlives it (a thread may have just looked it up), and a process whose
    /// peers restart for weeks would otherwise keep one descriptor per
    /// restart. Called once the watch let go of it, on the worker's thread.
    void release() noexcept {
        released_.store(true, std::memory_order_release);
        if (const int fd = pidfd_.exchange(-1, std::memory_order_acq_rel); fd >= 0) ::close(fd);
    }

    /// Whether the peer's death can be watched at all: it is a process here.
    [[nodiscard]] bool watchable() const noexcept { return why_not_.empty(); }

    /// The pidfd, readable once the process has exited; -1 where the kernel
    /// has none (Linux < 5.3, or seccomp forbids it): then only probe() can tell.
    [[nodiscard]] int pidfd() const noexcept { return pidfd_.load(std::memory_order_acquire); }

    /// Why the process was already gone (or the pid named another process)
    /// when this object was made; empty if it was there.
    [[nodiscard]] const std::string& gone_at_load() const noexcept { return gone_; }

    /// Without a pidfd: reads /proc now and says why the peer is gone, or
    /// nothing while it runs. A few microseconds; for a slow periodic look.
    [[nodiscard]] std::string probe() const {
        const proc_stat now = read_proc_stat(pid_);
        if (!now.running()) return "process " + std::to_string(pid_) + " exited";
        if (start_time_ != 0 && now.start != start_time_) return stranger(now.start);
        return {};
    }

private:
    void identify() {
#ifdef SYS_pidfd_open
        pidfd_.store(static_cast<int>(::syscall(SYS_pidfd_open, pid(), 0)), std::memory_order_relaxed);
        if (pidfd_.load(std::memory_order_relaxed) < 0 && errno == ESRCH) {
            gone_ = "process " + std::to_string(pid_) + " had exited before its metadata was loaded";
            return;
        }
#endif
        const proc_stat now = read_proc_stat(pid_);
        if (!now.running()) {
            gone_ = "process " + std::to_string(pid_) + " had exited before its metadata was loaded";
        } else if (start_time_ != 0 && now.start != 0 && now.start != start_time_) {
            gone_ = stranger(now.start);
        }
        if (!gone_.empty())
            if (const int fd = pidfd_.exchange(-1, std::memory_order_relaxed); fd >= 0) ::close(fd);
    }

    std::string stranger(std::uint64_t found) const {
        return "pid " + std::to_string(pid_) + " now names another process (started at tick " + std::to_string(found) +
               ", the peer at " + std::to_string(start_time_) + "): the peer has exited";
    }

    static std::string refusal(std::string_view host, std::uint32_t pid, std::uint64_t pid_namespace) {
        if (host.empty() || host != host_id()) return "the peer runs on another host";
        if (pid == 0 || pid_namespace == 0) return "the peer did not say which process it is";
        if (pid_namespace != detail::pid_namespace()) return "the peer runs in another PID namespace";
        return {};
    }

    std::uint32_t pid_;
    std::uint64_t start_time_;
    std::string why_not_;
    std::string gone_;
    bool vm_checked_ = false;
    std::string vm_why_not_;
    std::atomic<int> pidfd_{-1};
    std::atomic<bool> released_{false};
};

}  // namespace detail::host
FERRY_NAMESPACE_END
