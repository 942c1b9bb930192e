#pragma once

#include <ferry/desc.hpp>
#include <ferry/detail/completion_signal.hpp>
#include <ferry/detail/slot_table.hpp>
#include <ferry/detail/telemetry_store.hpp>
#include <ferry/device/view.hpp>
#include <ferry/host/notif_mailbox.hpp>
#include <ferry/handles.hpp>
#include <ferry/notif_map.hpp>
#include <ferry/peer_event.hpp>
#include <ferry/policy.hpp>
#include <ferry/status.hpp>
#include <ferry/telemetry.hpp>
#include <ferry/ucx/command.hpp>
#include <ferry/ucx/config.hpp>
#include <ferry/ucx/context.hpp>
#include <ferry/ucx/deadlines.hpp>
#include <ferry/ucx/memory_traits.hpp>
#include <ferry/ucx/notif.hpp>
#include <ferry/ucx/peer_events.hpp>
#include <ferry/ucx/peer_table.hpp>
#include <ferry/ucx/progress_inline.hpp>
#include <ferry/ucx/progress_thread.hpp>
#include <ferry/ucx/region.hpp>
#include <ferry/ucx/registration.hpp>
#include <ferry/ucx/strided.hpp>
#include <ferry/ucx/worker.hpp>
#include <ferry/ucx/xfer_state.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_cost.hpp>
#include <ferry/xfer_options.hpp>
#include <ferry/xfer_path.hpp>

#include <ucp/api/ucp.h>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

FERRY_NAMESPACE_BEGIN

/// A transfer backend over UCX: registered memory, metadata exchange,
/// descriptor-list READ/WRITE over UCX RMA and notifications over UCX active
/// messages. Not copyable or movable: UCX callbacks hold its address.
///
/// Threads. ferry's worker is UCS_THREAD_MODE_SINGLE, and UCX's contract for
/// it is that one thread, its owner, makes every call on the worker, its
/// endpoints and their rkeys, from creation to destruction:
/// - `progress::inline_poll`: the owner is the thread that constructed the
///   backend, and every member function is called from it (the worker is
///   driven inside check/progress/take_notifs/poll_notifs/wait). The backend
///   is for that one thread; its destructor runs there too.
/// - `progress::thread`: the owner is the progress thread. It creates the
///   worker (the constructor waits for it and rethrows its errors), runs every
///   call on it — posts and notifications are handed to it through a queue,
///   set-up calls (load_remote, unload_remote, prepare, estimate) hand it
///   their work and wait — and destroys it when the backend is destroyed.
///   Any thread may call any member function; a given transfer handle must
///   not be released while another thread still uses it.
/// Registration and deregistration are calls on the UCX context, not the
/// worker: under the thread policy the context is created for several
/// threads (UCX locks it), so they may come from any thread too.
/// With FERRY_ASSERTIONS (on unless NDEBUG) every call that touches the
/// worker checks that it runs on the owner, and aborts naming the call.
template <class Policy = default_policy>
class ucx_backend {
    static_assert(is_policy<Policy>::value,
                  "ucx_backend<Policy>: Policy must be ferry::policy<Progress, Memory[, Telemetry]>");
    static_assert(detail::has_memory_traits<typename Policy::memory_kind>,
                  "ucx_backend<policy<..., memory::cuda>>: include <ferry/cuda.hpp> and link the ferry::cuda "
                  "CMake target (ferry built where the CUDA toolkit was found)");
    using traits = detail::memory_traits<typename Policy::memory_kind>;
    using paths_type = typename traits::paths;

    static constexpr bool threaded = is_threaded_v<Policy>;
    static constexpr bool traced = has_telemetry_v<Policy>;
    using telemetry_type = typename detail::telemetry_storage<threaded, typename Policy::telemetry_mode>::type;
    static constexpr auto no_deadline = detail::expiry::never;
    using mutex_type = std::conditional_t<threaded, std::mutex, detail::null_mutex>;
    using engine_type =
        std::conditional_t<threaded, detail::thread_progress<ucx_backend>, detail::inline_progress<ucx_backend>>;
    friend engine_type;
    using xfer_state = detail::xfer_state;
    using send_buffer = typename detail::notif_send_pool<mutex_type>::buffer;

public:
    using policy_type = Policy;
    using region_type = region;

    explicit ucx_backend(std::string name) : ucx_backend(ucx_config{std::move(name), {}}) {}

    explicit ucx_backend(ucx_config cfg)
        : config_(detail::validated(std::move(cfg))),
          context_(std::make_shared<detail::context>(
              config_, UCP_FEATURE_RMA | UCP_FEATURE_AM | (threaded ? UCP_FEATURE_WAKEUP : 0), threaded)),
          memory_(config_, *context_),
          registration_(context_, memory_),
          paths_(memory_),
          inbox_(config_.max_notif_size, threaded ? &signal_ : nullptr),
          mailbox_(config_.notif_mailbox, config_.max_notif_size),
          peer_events_(threaded ? &signal_ : nullptr),
          peers_(&peer_events_),
          telemetry_(config_.name) {
        engine_.start(*this);
    }

    ucx_backend(const ucx_backend&) = delete;
    ucx_backend& operator=(const ucx_backend&) = delete;

    ~ucx_backend() { engine_.stop(*this); }

    [[nodiscard]] const std::string& name() const noexcept { return config_.name; }
    [[nodiscard]] const ucx_config& config() const noexcept { return config_; }

    // ---- memory ----------------------------------------------------------

    /// Registers [ptr, ptr + len) for transfers. The memory stays the
    /// caller's; it must outlive the returned region.
    [[nodiscard]] region register_memory(void* ptr, std::size_t len, std::uint32_t dev = 0) {
        return registration_.register_memory(ptr, len, dev);
    }

    /// Allocates `len` bytes and registers them. memory::host: shared memory
    /// that a peer on this host maps, so that its transfers to it take the
    /// host_ipc path (a memcpy); memory::cuda: device memory on CUDA device `dev`.
    [[nodiscard]] region allocate(std::size_t len, std::uint32_t dev = 0) {
        return registration_.allocate(len, dev);
    }

    /// Allocates `len` bytes of host memory that a peer on this host maps,
    /// and registers them; memory::cuda page-locks them, so that the GPU
    /// copies straight into them. memory::host: the same as allocate.
    [[nodiscard]] region allocate_host(std::size_t len) { return registration_.allocate_host(len); }

    /// Deregisters a region now, or refuses with `busy` while a transfer
    /// over it is in flight (or expired and not yet let go of by UCX), so
    /// that memory the caller frees next is no longer in UCX's hands.
    /// Transfers prepared over it then fail with not_registered. Destroying
    /// the region instead never refuses: it defers the unmapping until the
    /// transfers in flight are done.
    void deregister_memory(region& r) { registration_.deregister(r); }

    // ---- metadata and peers ---------------------------------------------

    /// This agent's name, worker address and every region registered now.
    [[nodiscard]] std::vector<std::byte> local_metadata() const {
        return detail::publish_metadata(config_.name, worker_address_, registration_.regions(), mailbox_.address());
    }

    /// Validates a peer's blob completely, connects to it and unpacks its
    /// rkeys. Loading a name that is already loaded updates that peer when
    /// the blob is a later one of the same process (same worker, host and
    /// pid: more memory registered, say), keeping its handle and its prepared
    /// transfers; a restarted agent's blob replaces it, and handles to the
    /// old one become stale.
    peer load_remote(std::span<const std::byte> blob) {
        auto md = detail::decode_metadata(blob);
        const peer p = on_worker(
            "load_remote", [&] {
                return peers_.load(worker_->get(), md, config_.error_handling, worker_->owner(),
                                   config_.notif_mailbox ? std::string_view(config_.name) : std::string_view());
            });
        if constexpr (traced) telemetry_.on_load(p, md.name);
        return p;
    }

    /// Forgets a peer. Transfers prepared for it then fail with no_such_peer;
    /// its endpoint closes once transfers already in flight to it complete.
    void unload_remote(peer p) {
        on_worker("unload_remote", [&] { peers_.unload(p, worker_->owner()); });
    }

    /// The peer loaded under `name`, if any. For set-up, not the hot path.
    [[nodiscard]] std::optional<peer> find_peer(std::string_view name) const { return peers_.find(name); }

    /// Whether notifications to a loaded peer go through its shared-memory
    /// mailbox (a peer on this host, both sides with ucx_config::notif_mailbox)
    /// rather than as UCX active messages.
    [[nodiscard]] bool uses_mailbox(peer p) const noexcept {
        const auto* to = peers_.get(p.ref);
        return to && to->mailbox() != nullptr;
    }

    /// The agent name a loaded peer's metadata carries.
    [[nodiscard]] std::string peer_name(peer p) const { return peers_.name_of(p); }

    /// The regions a loaded peer published, as descriptors in its address space.
    [[nodiscard]] std::vector<desc> remote_regions(peer p) const { return peers_.published(p); }

    /// ok while the peer is loaded and healthy, peer_failed once UCX reported
    /// its endpoint failed (peer error handling) or its process on this host
    /// exited (see take_peer_events), no_such_peer for a handle that is
    /// unknown or was unloaded.
    [[nodiscard]] status peer_status(peer p) const noexcept { return peers_.status_of(p); }

    /// Finishes connecting to a loaded peer now, so that the first transfer
    /// or notification to it does not pay for it. load_remote creates the
    /// endpoint; UCX completes it on first use, and with some transports
    /// (RDMA's connected queue pairs, say) that takes a round trip to the
    /// peer, which must be progressing, and hundreds of microseconds. This
    /// sends one empty message over the endpoint, on the lane notifications
    /// take, and waits until UCX has sent it. Optional; call it once per
    /// load_remote. ok, no_such_peer, peer_failed, or timed_out (the peer
    /// did not answer in time; the message may still go later).
    status connect(peer p, std::chrono::nanoseconds timeout);

    // ---- transfers --------------------------------------------------------

    /// Checks and resolves a transfer: lists of equal length, pairs of equal
    /// length, every local block inside a registered region and every remote
    /// block inside a region the peer published. Throws, naming the first bad
    /// index, and prepares nothing if any check fails. Runs of adjacent pairs
    /// become one block (xfer_options::coalesce).
    [[nodiscard]] xfer prepare(xfer_op op, std::span<const desc> local, std::span<const desc> remote, peer p) {
        return prepare(op, local, remote, p, xfer_options{});
    }

    /// As above, on a chosen path: `automatic` takes cuda_ipc where it can
    /// serve every pair (memory::cuda), else host_ipc where it can, else ucx;
    /// `cuda_ipc` and `host_ipc` throw, naming the first pair they cannot
    /// serve and why; `ucx` always uses UCX RMA.
    [[nodiscard]] xfer prepare(xfer_op op, std::span<const desc> local, std::span<const desc> remote, peer p,
                               xfer_path path) {
        return prepare(op, local, remote, p, xfer_options{.path = path});
    }

    /// As above, with every option (xfer_options).
    [[nodiscard]] xfer prepare(xfer_op op, std::span<const desc> local, std::span<const desc> remote, peer p,
                               const xfer_options& options);

    /// As above, from strided lists (strided_desc): block k of the local
    /// list pairs with block k of the remote one, so both must hold as many
    /// blocks, and the two may cut them into different entries. Each entry is
    /// checked on its own (zero length or count, blocks running past the end
    /// of the address space, overlapping blocks on the side that is written),
    /// then each block as above; errors name the block and the entry of each
    /// side that holds it. A transfer holds at most 2^24 blocks.
    [[nodiscard]] xfer prepare(xfer_op op, std::span<const strided_desc> local, std::span<const strided_desc> remote,
                               peer p, const xfer_options& options = {});

    /// Starts a prepared transfer, with an optional notification that reaches
    /// the peer after all of the transfer's data. Returns ok when it completed
    /// inline, in_progress, or an error; busy while a previous post is in
    /// flight. The transfer's deadline is `ucx_config::xfer_timeout`.
    status post(xfer x, std::string_view notif = {}) noexcept { return post(x, notif, config_.xfer_timeout); }

    /// As above, with a deadline `timeout` after now (zero: none). A transfer
    /// still in flight at its deadline reports timed_out; its operations are
    /// abandoned, not recalled, so a WRITE may still land and a READ may still
    /// fill local memory until UCX lets go of them (unload_remote of a peer
    /// with peer error handling cancels them). Until then a repost is busy.
    status post(xfer x, std::string_view notif, std::chrono::nanoseconds timeout) noexcept;

    /// Reports a transfer. Under inline progress it drives the worker once
    /// first; under the thread policy it only reads what the thread published.
    status check(xfer x) noexcept;

    /// Blocks until the transfer is over or `timeout` passes, then reports it
    /// as check does. The thread policy polls for up to `progress_spin`, then
    /// sleeps on a condition variable; inline progress has nothing to sleep
    /// on and drives the worker.
    status wait(xfer x, std::chrono::nanoseconds timeout) noexcept;

    /// Frees a transfer without blocking. One still in flight is abandoned:
    /// data already handed to UCX may still land, and its state is reclaimed
    /// when UCX reports completion.
    status release(xfer x) noexcept;

    /// Expected duration of one post, from UCX's model of the endpoint.
    [[nodiscard]] xfer_cost estimate(xfer x);

    /// The path prepare chose for the transfer; `automatic` for an unknown handle.
    [[nodiscard]] xfer_path path_of(xfer x) const noexcept {
        const auto* st = xfers_.get(x.ref);
        return st ? st->shown_path : xfer_path::automatic;
    }

    /// Total bytes a post of this transfer moves; 0 for an unknown handle.
    [[nodiscard]] std::uint64_t size_of(xfer x) const noexcept {
        const auto* st = xfers_.get(x.ref);
        return st ? st->total_bytes : 0;
    }

    /// Blocks a post of this transfer moves once runs of adjacent pairs are
    /// merged: UCX operations on the ucx path, copies on the others. Equal
    /// to the descriptor count without coalescing; 0 for an unknown handle.
    [[nodiscard]] std::size_t blocks_of(xfer x) const noexcept {
        const auto* st = xfers_.get(x.ref);
        return st ? st->block_count : 0;
    }

    // ---- GPU-initiated transfers (memory::cuda) -----------------------------
    // What a user's own kernel needs to move a prepared transfer and signal
    // the peer (<ferry/device.cuh>; README, "GPU-initiated transfers").

    /// The transfer as a kernel moves it: its blocks in GPU memory, owned by
    /// the transfer and valid until release. Only for a transfer on the
    /// cuda_ipc path (a peer on this host; path_of cuda_ipc, or host_ipc for
    /// the peer's allocate_host memory). Throws for an unknown or released
    /// handle and for a transfer on another path. A kernel's copies and the
    /// transfer's posts go to the same memory: ordering them is the
    /// caller's, as between two posts.
    [[nodiscard]] device::view device_view(xfer x)
        requires std::same_as<typename Policy::memory_kind, memory::cuda>;

    /// The 8-byte counters that `counters` covers in the peer's GPU memory
    /// (one or more, as ferry::device::counter allocates them), mapped into
    /// this process, for a kernel to add to (ferry::device::notify). Checked
    /// as prepare checks a cuda_ipc block: a loaded, healthy peer on this
    /// host, a whole number of counters aligned to 8 inside a region of CUDA
    /// memory that it published. The mapping stays open until the backend is
    /// destroyed, even if the peer is unloaded, so that a kernel never writes
    /// through a closed mapping; the README says what a dead peer's holds.
    [[nodiscard]] device::signal device_signal(peer p, const desc& counters)
        requires std::same_as<typename Policy::memory_kind, memory::cuda>;

    // ---- telemetry (policy<..., ..., telemetry::on>) ------------------------

    /// Counters and latency histograms of this backend and of each peer it
    /// loaded; safe from any thread, while transfers run (telemetry.hpp says
    /// how consistent it is).
    [[nodiscard]] telemetry_snapshot snapshot() const
        requires traced
    {
        return telemetry_.snapshot(dropped_notifs());
    }

    /// The transfer's last post: its times, size, path, peer and status;
    /// nullopt for an unknown handle.
    [[nodiscard]] std::optional<xfer_telemetry> telemetry_of(xfer x) const
        requires traced
    {
        if (!xfers_.get(x.ref)) return std::nullopt;
        return telemetry_.read(x);
    }

    // ---- notifications ----------------------------------------------------

    /// Sends `msg` to a loaded peer; unordered with respect to transfers.
    status send_notif(peer p, std::string_view msg) noexcept;

    /// Everything that arrived, grouped by sender name, in arrival order.
    [[nodiscard]] notif_map take_notifs();

    /// Hands each notification that arrived to f(sender, message) as views,
    /// valid during the call only. Returns how many were delivered.
    template <class F>
    std::size_t poll_notifs(F&& f);

    /// Blocks until a notification or a peer event is waiting, or `timeout`
    /// passes; true if either is. A peer event wakes it because a target
    /// that waits for "layer N ready" from a peer that has just died would
    /// otherwise wait for good: after a true return, look at both
    /// take_notifs and take_peer_events (or has_peer_events). Each event
    /// wakes it once, when it arrives: one left untaken does not keep it
    /// returning at once, so a loop that only takes notifications does not
    /// spin after, say, an unload_remote of its own.
    bool wait_notifs(std::chrono::nanoseconds timeout);

    /// Notifications that arrived malformed or oversized and were dropped.
    [[nodiscard]] std::uint64_t dropped_notifs() const noexcept { return inbox_.dropped() + mailbox_.dropped(); }

    // ---- peer events -------------------------------------------------------

    /// What happened to peers since the last call, oldest first: failures
    /// (with why), unloads and replacements by a restarted process. An
    /// initiator learns of a dead peer from its transfers; a target, which
    /// has none in flight, learns of it only here. Each failure is reported
    /// once. A peer on this host is watched through its process (a pidfd),
    /// so its death is reported within milliseconds; a peer on another host
    /// fails only when UCX says so (peer error handling: the transport, or
    /// keepalive within ucx_config::keepalive_interval), and not at all
    /// under error_mode::none. Under inline progress the call drives the
    /// worker first, as take_notifs does.
    [[nodiscard]] std::vector<peer_event> take_peer_events();

    /// As take_peer_events, handing each event to f(const peer_event&), which
    /// may call back into the backend. Returns how many were delivered.
    template <class F>
    std::size_t poll_peer_events(F&& f);

    /// Whether a peer event is waiting; any thread, without driving the worker.
    [[nodiscard]] bool has_peer_events() const noexcept { return peer_events_.pending(); }

    /// Peer events lost: the oldest, once 4096 wait untaken, and any that
    /// found no memory.
    [[nodiscard]] std::uint64_t dropped_peer_events() const noexcept { return peer_events_.dropped(); }

    // ---- progress ---------------------------------------------------------

    /// Inline progress: drives the worker until it has nothing more to do
    /// right now. A target must call this (or check/take_notifs/poll_notifs)
    /// for transfers that UCX emulates with active messages to complete.
    /// Under the thread policy the progress thread does this, and the call
    /// returns 0 at once.
    unsigned progress() noexcept;

    /// The underlying UCX objects, for callers who need to go below ferry.
    /// The worker and endpoints belong to their owner thread (see the class
    /// comment): under the thread policy, that is the progress thread, and
    /// no application thread may call UCX on them. ferry's active-message
    /// handlers take ids 1 and 2 on the worker (ucx/notif.hpp).
    [[nodiscard]] ucp_context_h ucx_context() const noexcept { return context_->get(); }
    [[nodiscard]] ucp_worker_h ucx_worker() const noexcept { return worker_->get(); }
    [[nodiscard]] ucp_ep_h ucx_endpoint(peer p) const noexcept {
        const auto* to = peers_.get(p.ref);
        return to ? to->ep() : nullptr;
    }

private:
    // The worker's owner thread (see progress_inline.hpp and progress_thread.hpp).
    void open_worker();  // creates it on the calling thread, which then owns it
    std::pair<bool, std::chrono::steady_clock::time_point> serve() noexcept;
    void shut_down() noexcept;
    void close_worker() noexcept { worker_.reset(); }
    detail::worker& worker() noexcept { return *worker_; }
    void bind_thread() const noexcept { memory_.bind_thread(); }
    int watch_fd() const noexcept { return peers_.watch_fd(); }
    void on_watch_ready() noexcept { peers_.watch().poll_now(); }
    int mailbox_fd() const noexcept { return mailbox_.wake_fd(); }
    bool prepare_sleep() noexcept { return mailbox_.prepare_sleep(); }
    void after_sleep() noexcept { mailbox_.after_sleep(); }
    bool poll_mailbox() {
        return mailbox_.poll([this](std::string_view from, std::string_view msg) { inbox_.push(from, msg); });
    }

    // prepare's second half, for flat and strided lists alike: a transfer
    // state for peer p, which resolve(state, regions) sets up on the worker.
    // `descriptors`: how many the caller gave, which telemetry records.
    template <class Resolve>
    xfer prepare_with(xfer_op op, peer p, std::size_t descriptors, Resolve&& resolve);

    // Checks, with FERRY_ASSERTIONS, that the caller owns the worker.
    void touch(const char* what) const noexcept { worker_->owner().check(what); }

    // Runs f where the worker may be touched: here under inline progress, on
    // the progress thread (waiting for it) under the thread policy.
    template <class F>
    auto on_worker(const char* what, F&& f) -> std::invoke_result_t<F&> {
        return engine_.on_worker(*this, what, std::forward<F>(f));
    }

    // Commands that carry a post and a notification to the progress thread.
    static void execute_post(detail::command& c, void* self) noexcept;
    status post_traced(xfer x, std::string_view notif, std::chrono::nanoseconds timeout) noexcept;
    static void execute_send(detail::command& c, void* self) noexcept;
    status send_notif_untraced(peer p, std::string_view msg) noexcept;
    status send_now(send_buffer& buf, std::string_view msg) noexcept;

    ucx_config config_;
    std::shared_ptr<detail::context> context_;
    typename traits::backend_state memory_;  // before the worker: CUDA transports want a context
    detail::registration<traits> registration_;
    detail::completion_signal signal_;
    // Declared before the worker so that they outlive it: destroying the
    // worker completes outstanding requests, whose callbacks touch them.
    detail::slot_table<xfer_state, mutex_type> xfers_;
    detail::expiry expiry_;  // progress::thread only
    paths_type paths_;  // the paths' own transfers in flight
    detail::notif_send_pool<mutex_type> send_pool_;
    detail::notif_inbox<mutex_type> inbox_;
    detail::host::mailbox mailbox_;  // read by the worker's owner only
    detail::peer_event_queue peer_events_;  // before the peers, which push to it
    // Created and destroyed by its owner: the constructing thread under
    // inline progress, the progress thread under the thread policy.
    std::optional<detail::worker> worker_;
    std::vector<std::byte> worker_address_;
    detail::peer_table<mutex_type> peers_;
    // Empty under telemetry::off. Before the engine, whose thread updates it.
    [[no_unique_address]] telemetry_type telemetry_;
    engine_type engine_;  // last: under the thread policy, the progress thread uses all of the above
};

FERRY_NAMESPACE_END

// The longer member functions, by area.
#include <ferry/ucx/backend_notif.hpp>
#include <ferry/ucx/backend_worker.hpp>
#include <ferry/ucx/backend_xfer.hpp>
