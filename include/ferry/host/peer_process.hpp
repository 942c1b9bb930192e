#pragma once

#include <ferry/detail/host_id.hpp>
#include <ferry/detail/process_id.hpp>
#include <ferry/version.hpp>

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

FERRY_NAMESPACE_BEGIN
namespace detail::host {

/// A peer seen as a process on this host, for the host_ipc path: whether we
/// can name it at all (same host, same PID namespace), whether the kernel
/// lets us copy its memory with process_vm_writev/readv, and whether it
/// still lives. Used where the worker may be touched (prepare) and by posts.
class peer_process {
public:
    peer_process(std::string_view host, std::uint32_t pid, std::uint64_t pid_namespace)
        : pid_(pid), why_not_(refusal(host, pid, pid_namespace)) {}
    peer_process(const peer_process&) = delete;
    peer_process& operator=(const peer_process&) = delete;
    ~peer_process() {
        if (pidfd_ >= 0) ::close(pidfd_);
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
#ifdef SYS_pidfd_open
        pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid(), 0));
#endif
        return vm_why_not_;
    }

    /// False once the peer's process has exited. With a pidfd (Linux >= 5.3)
    /// the answer is about the very process probed, so that a process_vm
    /// call that follows cannot reach a stranger that inherited its pid.
    [[nodiscard]] bool alive() const noexcept {
        if (pidfd_ < 0) return ::kill(pid(), 0) == 0 || errno == EPERM;
        pollfd p{pidfd_, POLLIN, 0};
        return ::poll(&p, 1, 0) == 0;
    }

private:
    static std::string refusal(std::string_view host, std::uint32_t pid, std::uint64_t pid_namespace) {
        if (host.empty() || host != host_id()) return "the peer runs on another host";
        if (pid == 0 || pid_namespace == 0) return "the peer did not say which process it is";
        if (pid_namespace != detail::pid_namespace()) return "the peer runs in another PID namespace";
        return {};
    }

    std::uint32_t pid_;
    std::string why_not_;
    bool vm_checked_ = false;
    std::string vm_why_not_;
    int pidfd_ = -1;
};

}  // namespace detail::host
FERRY_NAMESPACE_END
