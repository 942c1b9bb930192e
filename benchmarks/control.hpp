#pragma once

// The two-process set-up and the control connection between initiator and
// target: a fork with a socketpair on one host, or --listen / --connect over
// TCP on two. Everything that is not data (settings, metadata, the plan of
// each row, "all notifications arrived?") travels here, as framed messages.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

namespace bench {

enum class msg : std::uint32_t {
    settings = 1,  // initiator -> target: encode_target_settings()
    hello,         // both ways: ferry metadata, buffer base, raw rkey
    ready,         // both ways: peer loaded
    row,           // initiator -> target: block size, op, offsets on both sides
    row_ok,        // target -> initiator: the target's own transfers are prepared
    sync,          // initiator -> target: notifications sent so far (ferry, raw)
    sync_ok,       // target -> initiator: notifications counted so far
    row_end,       // initiator -> target: release the row's transfers
    row_end_ok,
    quit,          // initiator -> target: tear down
    bye,           // both ways: torn down
    error,         // either way: a message, then the sender exits
    step_held,     // target -> initiator: step notifications handed over, and when (steady clock, ns)
    kernel_pong,   // initiator -> target: --kernel, start the answering kernel (base count, rounds)
    kernel_pong_ok,
    kernel_end,    // initiator -> target: the ping kernel is done; wait for the answering one
    kernel_end_ok, // target -> initiator: whether every round was answered (0) or not (1)
};

/// The peer side failed or went away; the message says how.
struct peer_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// Little-endian encoding of a message body.
class wire_writer {
public:
    wire_writer& u64(std::uint64_t v);
    wire_writer& f64(double v);
    wire_writer& bytes(std::span<const std::byte> b);
    wire_writer& str(std::string_view s);
    wire_writer& u64s(std::span<const std::uint64_t> v);
    [[nodiscard]] std::span<const std::byte> data() const noexcept { return buf_; }

private:
    std::vector<std::byte> buf_;
};

/// Reads what wire_writer wrote; throws peer_error on a short or bad body.
class wire_reader {
public:
    explicit wire_reader(std::span<const std::byte> in) : in_(in) {}
    std::uint64_t u64();
    double f64();
    std::vector<std::byte> bytes();
    std::string str();
    std::vector<std::uint64_t> u64s();
    void expect_end() const;

private:
    std::span<const std::byte> take(std::size_t n);
    std::span<const std::byte> in_;
    std::size_t pos_ = 0;
};

struct message {
    msg type{};
    std::vector<std::byte> body;
    [[nodiscard]] wire_reader reader() const { return wire_reader(body); }
};

class control {
public:
    /// Takes ownership of a connected stream socket. `peer` names the other
    /// side in error messages ("target", "initiator").
    control(int fd, std::string peer);
    ~control();
    control(const control&) = delete;
    control& operator=(const control&) = delete;

    void send(msg type, std::span<const std::byte> body = {});
    void send(msg type, const wire_writer& w) { send(type, w.data()); }
    /// Best effort: tells the peer why this side is giving up.
    void send_error(std::string_view what) noexcept;

    /// True when a message (or EOF) is waiting.
    [[nodiscard]] bool readable() const;
    /// Blocks for the next message; throws peer_error on EOF or an error message.
    message recv();
    /// Calls spin() until a message arrives, which must be of type `expected`;
    /// throws peer_error after `timeout` seconds, naming `what`.
    template <class Spin>
    message await(msg expected, Spin&& spin, double timeout, std::string_view what) {
        using clock = std::chrono::steady_clock;
        const auto deadline = clock::now() + std::chrono::duration<double>(timeout);
        for (unsigned n = 0;; ++n) {
            if ((n & 63U) == 0) {
                if (readable()) return expect(recv(), expected, what);
                if (clock::now() > deadline)
                    throw peer_error("timed out after " + std::to_string(timeout) + " s waiting for the " + peer_ +
                                     " (" + std::string(what) + ")");
            }
            spin();
        }
    }
    /// Sleeps until a message arrives (at most `timeout` seconds), which
    /// must be of type `expected`; for waits that must leave the CPU to others.
    message await_asleep(msg expected, double timeout, std::string_view what);
    message expect(message m, msg expected, std::string_view what) const;

    [[nodiscard]] const std::string& peer() const noexcept { return peer_; }

private:
    int fd_;
    std::string peer_;
};

/// fork() with a socketpair between parent (the initiator) and child (the
/// target). Call it before creating any UCX object.
struct forked {
    int fd;
    pid_t child;  // 0 in the child
};
forked fork_pair();

/// Waits for one initiator on `port` (0: any free port, printed on stderr).
int listen_and_accept(std::uint16_t port);

/// Connects to a target, retrying for up to `timeout` seconds while it starts.
int connect_to(const std::string& host, std::uint16_t port, double timeout);

}  // namespace bench
