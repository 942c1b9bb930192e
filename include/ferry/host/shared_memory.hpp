#pragma once

#include <ferry/detail/byte_io.hpp>
#include <ferry/detail/metadata.hpp>
#include <ferry/ucx/allocation.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/version.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail::host {

/// Host memory that another process on this host can map: an anonymous
/// memory file (memfd) sealed against shrinking and growing before anyone
/// else sees it, so that no process, its creator included, can ever cut it
/// short under a mapping (which would make the mapping's users die of
/// SIGBUS). A peer opens it through /proc/<pid>/fd/<fd>, which the kernel
/// allows to processes that may read ours (same user, ptrace read access):
/// no socket, no name in /dev/shm that a crash would leave behind.
/// Returns empty memory where the kernel offers no memfd (seccomp, say).
inline allocation allocate_shared(std::size_t len) {
    const int fd = ::memfd_create("ferry", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return {};
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t size = (len + page - 1) / page * page;
    struct stat st {};
    void* p = MAP_FAILED;
    if (size >= len && ::ftruncate(fd, static_cast<off_t>(size)) == 0 &&
        ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0 && ::fstat(fd, &st) == 0)
        p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        ::close(fd);
        if (errno == ENOMEM) throw std::bad_alloc();
        return {};
    }
    allocation a;
    a.memory = std::shared_ptr<void>(p, [fd, size](void* q) {
        ::munmap(q, size);
        ::close(fd);
    });
    byte_writer w(a.share_handle);
    w.put<std::uint32_t>(static_cast<std::uint32_t>(fd));
    w.put<std::uint64_t>(static_cast<std::uint64_t>(st.st_ino));
    a.share_size = size;
    return a;
}

/// Maps a peer's shared host region into this process, once: afterwards
/// r.ipc_base is where the peer's whole file starts here, or r.ipc_error
/// says why there is none. Nothing the peer claimed is trusted: the file
/// must be the one it named (same inode), sealed against shrinking, and at
/// least as large as the allocation it published, which decode_metadata
/// checked holds the region.
inline void open_shared(remote_region& r, std::uint32_t pid) noexcept {
    if (r.ipc_mapping || !r.ipc_error.empty()) return;
    if (r.ipc_handle.size() != host_share_handle_size) {
        r.ipc_error = "the peer published no shared-memory file for it";
        return;
    }
    byte_reader in(r.ipc_handle, "shared-memory handle");
    const auto peer_fd = in.get<std::uint32_t>("descriptor");
    const auto inode = in.get<std::uint64_t>("inode");
    const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(peer_fd);
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        r.ipc_error = "opening " + path + ": " + std::strerror(errno);
        return;
    }
    struct stat st {};
    const int seals = ::fcntl(fd, F_GET_SEALS);
    if (::fstat(fd, &st) != 0 || static_cast<std::uint64_t>(st.st_ino) != inode || !S_ISREG(st.st_mode)) {
        r.ipc_error = path + " is not the file the peer published (another inode: a restarted peer?)";
    } else if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
        r.ipc_error = path + " is not sealed against shrinking, so a mapping of it could fault";
    } else if (static_cast<std::uint64_t>(st.st_size) < r.ipc_alloc_size || r.ipc_alloc_size == 0) {
        r.ipc_error = path + " holds " + std::to_string(st.st_size) + " bytes, not the " +
                      std::to_string(r.ipc_alloc_size) + " the peer published";
    } else {
        const auto size = static_cast<std::size_t>(r.ipc_alloc_size);
        void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            r.ipc_error = "mapping " + path + ": " + std::strerror(errno);
        } else {
            r.ipc_base = reinterpret_cast<std::uintptr_t>(p);
            r.ipc_mapping = std::shared_ptr<void>(p, [size](void* q) { ::munmap(q, size); });
        }
    }
    ::close(fd);  // the mapping keeps the file
}

}  // namespace detail::host
FERRY_NAMESPACE_END
