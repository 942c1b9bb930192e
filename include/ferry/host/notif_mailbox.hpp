#pragma once

#include <ferry/detail/host_id.hpp>
#include <ferry/detail/process_id.hpp>
#include <ferry/host/peer_process.hpp>
#include <ferry/version.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail::host {

// A backend's notification mailbox: shared memory that peers on this host
// write their notifications into, one ring per sender, instead of sending
// them as UCX active messages over shared memory. Why: UCX's shared-memory
// transports (posix, sysv; UCX 1.13 to 1.22 at least) give every receiver
// one queue that all its senders write into, and a sender first takes an
// element (an atomic add on the queue's head) and then fills and publishes
// it. A sender killed between the two leaves an element that is never
// published, and the receiver, which reads in order, never reads past it:
// every message any peer sends it afterwards is lost, though the send
// completed at the sender, so transfers whose notifications sat behind it
// had reported ok. In a ring of its own, a sender that dies mid-message
// loses only its own unpublished message.
//
// Layout (all in one memfd, which senders open as host_ipc opens shared
// regions: /proc/PID/fd/N, same user, same inode, sealed):
//   header (mailbox_header), then `slots` slots of `slot_stride` bytes:
//   mailbox_slot, then its ring of `ring_bytes` (a power of two).
// A record in a ring: u32 length, then the message, wrapping at the end.
// Slot life: a sender claims a free slot (pid 0 -> its pid), writes its
// identity, opens it (state open) and appends records, publishing each by
// advancing head; the receiver consumes them and advances tail. A sender
// that unloads the receiver closes its slot (state closed). The receiver
// frees a slot (tail = head = 0, state claiming, pid 0) once it is closed
// and drained, or once its sender's process is gone: only the receiver
// frees, and only a slot whose writer can no longer write.
//
// Wake-ups: the doorbell counts every publish; a receiver's progress thread
// about to sleep sets `sleeping` and looks at the doorbell once more, and a
// sender that sees `sleeping` after ringing sends one byte to the
// receiver's datagram socket (an abstract name, so no file is left behind),
// which the thread sleeps on beside the worker's fd.
//
// Nothing a sender wrote is trusted: the receiver copies head and every
// length once and checks them against the ring before it reads, and a slot
// whose numbers do not add up is discarded (counted as dropped).

inline constexpr std::uint32_t mailbox_magic = 0x584f424dU;  // "MBOX" read as little-endian
inline constexpr std::uint32_t mailbox_version = 1;
inline constexpr std::uint32_t mailbox_slot_count = 64;
inline constexpr std::size_t mailbox_min_ring = 256 * 1024;

enum mailbox_state : std::uint32_t { slot_claiming = 0, slot_open = 1, slot_closed = 2 };

struct alignas(64) mailbox_header {
    std::uint32_t magic;
    std::uint32_t version;
    std::uint32_t slots;
    std::uint32_t reserved;
    std::uint64_t ring_bytes;
    std::uint64_t slot_stride;
    alignas(64) std::atomic<std::uint64_t> doorbell;
    alignas(64) std::atomic<std::uint32_t> sleeping;
};

struct alignas(64) mailbox_slot {
    std::atomic<std::uint32_t> pid;  // 0: free
    std::atomic<std::uint32_t> state;
    std::uint64_t start_time;
    std::uint32_t name_len;
    std::array<char, 256> name;
    alignas(64) std::atomic<std::uint64_t> head;  // bytes published, written by the sender
    alignas(64) std::atomic<std::uint64_t> tail;  // bytes consumed, written by the receiver
};

static_assert(std::atomic<std::uint64_t>::is_always_lock_free && std::atomic<std::uint32_t>::is_always_lock_free,
              "the mailbox shares atomics between processes, which needs them lock-free");

/// How a peer finds a mailbox: the memfd's number in the owner and its
/// inode (as the metadata carries them), and the file's size.
struct mailbox_address {
    std::uint32_t fd = 0;
    std::uint64_t inode = 0;
    std::uint64_t size = 0;
};

// The datagram socket's abstract name, from the owner's pid and the file's inode.
inline sockaddr_un mailbox_socket_name(std::uint32_t pid, std::uint64_t inode, socklen_t& len) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    const std::string name = "ferry-mailbox-" + std::to_string(pid) + "-" + std::to_string(inode);
    std::memcpy(a.sun_path + 1, name.data(), name.size());  // sun_path[0] = 0: abstract
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
    return a;
}

inline std::uint64_t mailbox_ring_for(std::size_t max_message) {
    return std::bit_ceil(std::max<std::uint64_t>(mailbox_min_ring, 2 * (std::uint64_t{max_message} + 4)));
}

inline std::uint64_t mailbox_stride(std::uint64_t ring) { return sizeof(mailbox_slot) + ring; }

/// The receiving side, owned by the backend. poll() runs on the thread that
/// drives the worker (inline progress, or the progress thread).
class mailbox {
public:
    /// An empty mailbox (ok() false) where the kernel offers no memfd or
    /// socket: peers then notify over UCX as before.
    mailbox(bool enabled, std::size_t max_message) {
        if (!enabled) return;
        ring_ = mailbox_ring_for(max_message);
        stride_ = mailbox_stride(ring_);
        const std::uint64_t size = sizeof(mailbox_header) + mailbox_slot_count * stride_;
        fd_ = ::memfd_create("ferry-mailbox", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd_ < 0) return;
        struct stat st {};
        void* p = MAP_FAILED;
        if (::ftruncate(fd_, static_cast<off_t>(size)) == 0 &&
            ::fcntl(fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0 && ::fstat(fd_, &st) == 0)
            p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
        if (p == MAP_FAILED) {
            close_all();
            return;
        }
        base_ = static_cast<std::byte*>(p);
        size_ = size;
        inode_ = static_cast<std::uint64_t>(st.st_ino);
        auto* h = new (base_) mailbox_header{};
        h->magic = mailbox_magic;
        h->version = mailbox_version;
        h->slots = mailbox_slot_count;
        h->ring_bytes = ring_;
        h->slot_stride = stride_;
        for (std::uint32_t i = 0; i < mailbox_slot_count; ++i) new (slot_at(i)) mailbox_slot{};
        sock_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        socklen_t len = 0;
        const sockaddr_un a = mailbox_socket_name(process_id(), inode_, len);
        if (sock_ < 0 || ::bind(sock_, reinterpret_cast<const sockaddr*>(&a), len) != 0) {
            close_all();
            return;
        }
        readers_.resize(mailbox_slot_count);
    }
    ~mailbox() { close_all(); }
    mailbox(const mailbox&) = delete;
    mailbox& operator=(const mailbox&) = delete;

    [[nodiscard]] bool ok() const noexcept { return base_ != nullptr; }
    [[nodiscard]] mailbox_address address() const noexcept {
        return ok() ? mailbox_address{static_cast<std::uint32_t>(fd_), inode_, size_} : mailbox_address{};
    }
    /// Readable when a sender rang for a sleeping receiver; -1 without a mailbox.
    [[nodiscard]] int wake_fd() const noexcept { return ok() ? sock_ : -1; }
    /// Messages discarded: torn rings, lengths that do not add up, no memory.
    [[nodiscard]] std::uint64_t dropped() const noexcept { return dropped_.load(std::memory_order_relaxed); }

    /// Hands every published message to deliver(sender name, message), ring
    /// by ring, oldest first, and frees slots whose senders closed them or
    /// died. One load when nothing was published since the last call.
    template <class Deliver>
    bool poll(Deliver&& deliver) {
        if (!ok()) return false;
        const auto bell = header().doorbell.load(std::memory_order_acquire);
        if (bell == seen_) return false;
        seen_ = bell;
        // Senders ring on every claim, close and failed claim, so a look at
        // whose processes are gone, at most every sweep_interval, comes
        // when a sender needs a slot.
        const auto now = std::chrono::steady_clock::now();
        const bool sweep = now >= next_sweep_;
        if (sweep) next_sweep_ = now + sweep_interval;
        bool any = false;
        for (std::uint32_t i = 0; i < mailbox_slot_count; ++i) any = serve(i, deliver, sweep) || any;
        return any;
    }

    /// Before the progress thread sleeps: false if a sender published since
    /// the last poll (poll again instead). Pairs with the sender's ring.
    bool prepare_sleep() noexcept {
        if (!ok()) return true;
        header().sleeping.store(1, std::memory_order_seq_cst);
        if (header().doorbell.load(std::memory_order_seq_cst) != seen_) {
            header().sleeping.store(0, std::memory_order_relaxed);
            return false;
        }
        return true;
    }
    void after_sleep() noexcept {
        if (!ok()) return;
        header().sleeping.store(0, std::memory_order_relaxed);
        char buf[64];
        while (::recv(sock_, buf, sizeof buf, MSG_DONTWAIT) > 0) {
        }
    }

private:
    struct reader {
        bool adopted = false;
        std::uint32_t pid = 0;
        std::string name;
        std::unique_ptr<peer_process> process;
    };
    static constexpr std::chrono::milliseconds sweep_interval{100};

    mailbox_header& header() noexcept { return *reinterpret_cast<mailbox_header*>(base_); }
    mailbox_slot* slot_at(std::uint32_t i) noexcept {
        return reinterpret_cast<mailbox_slot*>(base_ + sizeof(mailbox_header) + i * stride_);
    }
    std::byte* ring_of(mailbox_slot* s) noexcept { return reinterpret_cast<std::byte*>(s) + sizeof(mailbox_slot); }

    template <class Deliver>
    bool serve(std::uint32_t i, Deliver& deliver, bool sweep) {
        mailbox_slot* s = slot_at(i);
        reader& r = readers_[i];
        const std::uint32_t pid = s->pid.load(std::memory_order_acquire);
        if (pid == 0) return false;
        const auto state = s->state.load(std::memory_order_acquire);
        if (state == slot_claiming) {
            // A sender that died between claiming and opening: nobody else
            // can ever free the slot.
            if (sweep && !process_exists(pid)) free_slot(s, r);
            return false;
        }
        if (!r.adopted || r.pid != pid) adopt(s, r, pid);
        const bool any = drain(s, r, deliver);
        if (state == slot_closed || (sweep && r.process && !r.process->alive())) {
            drain(s, r, deliver);  // what it published before it closed or died
            free_slot(s, r);
        }
        return any;
    }

    void adopt(mailbox_slot* s, reader& r, std::uint32_t pid) {
        r = reader{};
        r.adopted = true;
        r.pid = pid;
        const std::uint32_t n = std::min<std::uint32_t>(s->name_len, 255);
        r.name.assign(s->name.data(), n);
        if (r.name.empty()) r.name = "pid " + std::to_string(pid);
        try {
            r.process = std::make_unique<peer_process>(host_id(), pid, pid_namespace(), s->start_time);
        } catch (const std::bad_alloc&) {
        }
    }

    template <class Deliver>
    bool drain(mailbox_slot* s, reader& r, Deliver& deliver) {
        const std::uint64_t head = s->head.load(std::memory_order_acquire);
        std::uint64_t tail = s->tail.load(std::memory_order_relaxed);
        if (head == tail) return false;
        const std::byte* ring = ring_of(s);
        if (head - tail > ring_) return discard(s, head);
        bool any = false;
        while (tail != head) {
            if (head - tail < 4) return discard(s, head);
            std::uint32_t len = 0;
            copy_out(ring, tail, &len, 4);
            if (len > head - tail - 4) return discard(s, head);
            try {
                message_.resize(len);
            } catch (const std::bad_alloc&) {
                return discard(s, head);
            }
            copy_out(ring, tail + 4, message_.data(), len);
            tail += 4 + std::uint64_t{len};
            s->tail.store(tail, std::memory_order_release);
            deliver(std::string_view(r.name), std::string_view(message_.data(), message_.size()));
            any = true;
        }
        return any;
    }

    bool discard(mailbox_slot* s, std::uint64_t head) noexcept {
        dropped_.fetch_add(1, std::memory_order_relaxed);
        s->tail.store(head, std::memory_order_release);
        return false;
    }

    void copy_out(const std::byte* ring, std::uint64_t at, void* to, std::size_t n) const noexcept {
        if (n == 0) return;  // `to` may be null then
        const std::size_t off = static_cast<std::size_t>(at & (ring_ - 1));
        const std::size_t first = std::min<std::size_t>(n, ring_ - off);
        std::memcpy(to, ring + off, first);
        if (first < n) std::memcpy(static_cast<char*>(to) + first, ring, n - first);
    }

    void free_slot(mailbox_slot* s, reader& r) noexcept {
        r = reader{};
        s->head.store(0, std::memory_order_relaxed);
        s->tail.store(0, std::memory_order_relaxed);
        s->state.store(slot_claiming, std::memory_order_relaxed);
        s->pid.store(0, std::memory_order_release);
    }

    static bool process_exists(std::uint32_t pid) noexcept {
        return pid != 0 && (::kill(static_cast<::pid_t>(pid), 0) == 0 || errno == EPERM);
    }

    void close_all() noexcept {
        if (base_) ::munmap(base_, size_);
        if (fd_ >= 0) ::close(fd_);
        if (sock_ >= 0) ::close(sock_);
        base_ = nullptr;
        fd_ = sock_ = -1;
    }

    std::byte* base_ = nullptr;
    std::uint64_t size_ = 0;
    std::uint64_t ring_ = 0;
    std::uint64_t stride_ = 0;
    std::uint64_t inode_ = 0;
    int fd_ = -1;
    int sock_ = -1;
    std::uint64_t seen_ = 0;
    std::chrono::steady_clock::time_point next_sweep_{};
    std::vector<reader> readers_;
    std::vector<char> message_;
    std::atomic<std::uint64_t> dropped_{0};
};

/// The sending side: a slot in a peer's mailbox, held while the peer is
/// loaded. Used on the thread that drives the worker, like the endpoint.
class mailbox_writer {
public:
    /// Opens the mailbox of process `pid` and claims a slot, or says why not
    /// (why is then non-empty and the writer unusable).
    mailbox_writer(std::uint32_t pid, const mailbox_address& at, std::string_view sender) {
        why_ = open(pid, at, sender);
        if (!why_.empty()) release_mapping();
    }
    ~mailbox_writer() {
        if (slot_) {
            slot_->state.store(slot_closed, std::memory_order_release);
            ring_bell();
        }
        release_mapping();
    }
    mailbox_writer(const mailbox_writer&) = delete;
    mailbox_writer& operator=(const mailbox_writer&) = delete;

    [[nodiscard]] bool usable() const noexcept { return slot_ != nullptr; }
    [[nodiscard]] const std::string& why_not() const noexcept { return why_; }

    /// Appends one message; false when it does not fit in the ring now (the
    /// caller sends it another way).
    bool send(std::string_view msg) noexcept {
        const std::uint64_t need = 4 + std::uint64_t{msg.size()};
        const std::uint64_t head = slot_->head.load(std::memory_order_relaxed);
        const std::uint64_t tail = slot_->tail.load(std::memory_order_acquire);
        if (head - tail > ring_ || need > ring_ - (head - tail)) return false;
        const auto len = static_cast<std::uint32_t>(msg.size());
        copy_in(head, &len, 4);
        copy_in(head + 4, msg.data(), msg.size());
        slot_->head.store(head + need, std::memory_order_release);
        ring_bell();
        return true;
    }

private:
    std::string open(std::uint32_t pid, const mailbox_address& at, std::string_view sender) {
        const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(at.fd);
        const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
        if (fd < 0) return "opening " + path + ": " + std::strerror(errno);
        struct stat st {};
        std::string why;
        const int seals = ::fcntl(fd, F_GET_SEALS);
        if (::fstat(fd, &st) != 0 || static_cast<std::uint64_t>(st.st_ino) != at.inode || !S_ISREG(st.st_mode))
            why = path + " is not the mailbox the peer published";
        else if (seals < 0 || (seals & F_SEAL_SHRINK) == 0)
            why = path + " is not sealed against shrinking";
        else if (static_cast<std::uint64_t>(st.st_size) != at.size || at.size < sizeof(mailbox_header))
            why = path + " does not have the size the peer published";
        if (why.empty()) {
            void* p = ::mmap(nullptr, at.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (p == MAP_FAILED) why = "mapping " + path + ": " + std::strerror(errno);
            else {
                base_ = static_cast<std::byte*>(p);
                size_ = at.size;
            }
        }
        ::close(fd);
        if (!why.empty()) return why;
        auto* h = reinterpret_cast<mailbox_header*>(base_);
        header_ = h;
        ring_ = h->ring_bytes;
        const std::uint64_t stride = h->slot_stride;
        if (h->magic != mailbox_magic || h->version != mailbox_version) return "the peer's mailbox has another format";
        if (h->slots == 0 || h->slots > 4096 || !std::has_single_bit(ring_) || ring_ < 8 ||
            stride < sizeof(mailbox_slot) || stride - sizeof(mailbox_slot) < ring_ ||
            stride % alignof(mailbox_slot) != 0 || (size_ - sizeof(mailbox_header)) / stride < h->slots)
            return "the peer's mailbox header does not add up";
        const auto me = process_id();
        for (std::uint32_t i = 0; i < h->slots; ++i) {
            auto* s = reinterpret_cast<mailbox_slot*>(base_ + sizeof(mailbox_header) + i * stride);
            std::uint32_t free = 0;
            if (!s->pid.compare_exchange_strong(free, me, std::memory_order_acq_rel)) continue;
            s->start_time = process_start_time();
            s->name_len = static_cast<std::uint32_t>(std::min<std::size_t>(sender.size(), 255));
            std::memcpy(s->name.data(), sender.data(), s->name_len);
            s->state.store(slot_open, std::memory_order_release);
            slot_ = s;
            sock_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            wake_to_ = mailbox_socket_name(pid, at.inode, wake_len_);
            ring_bell();
            return {};
        }
        // Every slot taken: perhaps by senders that died; the receiver
        // looks at them on its next sweep, and a later load may find one.
        ring_bell();
        return "every slot of the peer's mailbox is taken";
    }

    void ring_bell() noexcept {
        header_->doorbell.fetch_add(1, std::memory_order_seq_cst);
        if (header_->sleeping.load(std::memory_order_seq_cst) != 0 && sock_ >= 0) {
            const char b = 1;
            [[maybe_unused]] auto n =
                ::sendto(sock_, &b, 1, MSG_DONTWAIT, reinterpret_cast<const sockaddr*>(&wake_to_), wake_len_);
        }
    }

    void copy_in(std::uint64_t at, const void* from, std::size_t n) noexcept {
        if (n == 0) return;  // an empty message's data may be null
        std::byte* ring = reinterpret_cast<std::byte*>(slot_) + sizeof(mailbox_slot);
        const std::size_t off = static_cast<std::size_t>(at & (ring_ - 1));
        const std::size_t first = std::min<std::size_t>(n, ring_ - off);
        std::memcpy(ring + off, from, first);
        if (first < n) std::memcpy(ring, static_cast<const char*>(from) + first, n - first);
    }

    void release_mapping() noexcept {
        if (sock_ >= 0) ::close(sock_);
        if (base_) ::munmap(base_, size_);
        sock_ = -1;
        base_ = nullptr;
        header_ = nullptr;
        slot_ = nullptr;
    }

    std::byte* base_ = nullptr;
    std::uint64_t size_ = 0;
    mailbox_header* header_ = nullptr;
    mailbox_slot* slot_ = nullptr;
    std::uint64_t ring_ = 0;
    int sock_ = -1;
    sockaddr_un wake_to_{};
    socklen_t wake_len_ = 0;
    std::string why_;
};

}  // namespace detail::host
FERRY_NAMESPACE_END
