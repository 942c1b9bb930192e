#pragma once

// --nixl: the same transfer timed through the NIXL facade (<ferry/nixl.hpp>:
// postXferReq, then getXferStatus until done) and through the agent's own
// ucx_backend (post, then check), on one prepared request. The agent is a
// second backend in the initiator's process, on its own worker, loaded with
// the target's metadata; its transfers carry no notification, since the
// target never loads the agent's metadata and could not tell who sent one.

#include "options.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace bench {

class nixl_runner {
public:
    /// An agent (ferry::nixl::nixlAgent, its progress thread per
    /// --progress) that registers [base, base + len), loads the target's
    /// `peer_blob` and connects.
    nixl_runner(const options& o, void* base, std::size_t len, std::span<const std::byte> peer_blob,
                std::uintptr_t remote_base);
    ~nixl_runner();
    nixl_runner(const nixl_runner&) = delete;
    nixl_runner& operator=(const nixl_runner&) = delete;

    /// The row's transfer as one request: block i between local_off[i] and
    /// remote_off[i], merged where adjacent only with --coalesce.
    void prepare(ferry::xfer_op op, std::span<const std::uint64_t> local_off, std::span<const std::uint64_t> remote_off,
                 std::size_t block);
    void release() noexcept;

    /// Seconds for `iters` back-to-back transfers, each waited for by
    /// polling: through the facade / through the backend underneath.
    double facade(std::size_t iters);
    double direct(std::size_t iters);

private:
    struct state;
    std::unique_ptr<state> s_;
};

}  // namespace bench
