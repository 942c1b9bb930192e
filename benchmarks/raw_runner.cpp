#include "raw_runner.hpp"

#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

namespace bench {

namespace {

// ferry's worker takes active-message ids 1 and 2; the baseline takes the next.
constexpr unsigned raw_am_id = 3;

void check(ucs_status_t s, const char* what) {
    if (s != UCS_OK) throw std::runtime_error(std::string("raw baseline: ") + what + ": " + ucs_status_string(s));
}

// Maps [base, base + len), or with base == nullptr allocates len bytes.
ucp_mem_h map(ucp_context_h ctx, void* base, std::size_t len, bool device = false) {
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = base;
    mp.length = len;
    if (device) {
        mp.field_mask |= UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
        mp.memory_type = UCS_MEMORY_TYPE_CUDA;
    }
    if (base == nullptr) {
        mp.field_mask |= UCP_MEM_MAP_PARAM_FIELD_FLAGS;
        mp.flags = UCP_MEM_MAP_ALLOCATE;
    }
    ucp_mem_h memh = nullptr;
    check(ucp_mem_map(ctx, &mp, &memh), base ? "ucp_mem_map" : "ucp_mem_map(ALLOCATE)");
    return memh;
}

// Where memory that UCX allocated lies; unmaps it if UCX cannot say.
void* address_of(ucp_context_h ctx, ucp_mem_h memh) {
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
    if (auto s = ucp_mem_query(memh, &attr); s != UCS_OK) {
        ucp_mem_unmap(ctx, memh);
        check(s, "ucp_mem_query");
    }
    return attr.address;
}

std::size_t packed_size(ucp_context_h ctx, ucp_mem_h memh) {
    void* buf = nullptr;
    std::size_t n = 0;
    check(ucp_rkey_pack(ctx, memh, &buf, &n), "ucp_rkey_pack");
    ucp_rkey_buffer_release(buf);
    return n;
}

// The size of the rkey of a fresh UCP_MEM_MAP_ALLOCATE page: it carries every
// key such memory gets (the shared-memory one, on one host).
std::size_t allocated_key_size(ucp_context_h ctx) {
    ucp_mem_h probe = map(ctx, nullptr, 4096);
    std::size_t n = 0;
    try {
        n = packed_size(ctx, probe);
    } catch (...) {
        ucp_mem_unmap(ctx, probe);
        throw;
    }
    ucp_mem_unmap(ctx, probe);
    return n;
}

std::string own_buffer_note(std::size_t mapped, std::size_t wanted) {
    unsigned major = 0, minor = 0, release = 0;
    ucp_get_version(&major, &minor, &release);
    return "ucp_mem_map over ferry's buffer packed an rkey of " + std::to_string(mapped) + " bytes, against " +
           std::to_string(wanted) +
           " for a fresh UCP_MEM_MAP_ALLOCATE buffer: the mapping lacks the shared-memory key (--mem alloc is "
           "ferry's own shared memory, which UCX maps as user memory; --mem ucx gets the key back only through "
           "UCX 1.13's registration cache, not with UCX_RCACHE_ENABLE=n, valgrind or UCX 1.22). So the raw loop "
           "runs on a UCP_MEM_MAP_ALLOCATE buffer of its own, of the same size, at the same offsets: UCX's "
           "mapped-memory loop where this UCX maps such memory into its peer (UCX " +
           std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(release) + ").";
}

}  // namespace

ucx_allocation::ucx_allocation(ucp_context_h ctx, std::size_t len)
    : ctx_(ctx), memh_(map(ctx, nullptr, len)), base_(address_of(ctx, memh_)) {}

ucx_allocation::~ucx_allocation() { ucp_mem_unmap(ctx_, memh_); }

raw_runner::raw_runner(ucp_context_h ctx, ucp_worker_h worker, void* base, std::size_t len, bool allocated,
                       double timeout, bool device)
    : ctx_(ctx), worker_(worker), base_(base), len_(len), timeout_(timeout) {
    memh_ = map(ctx_, base, len, device);
    if (allocated) {
        const std::size_t mapped = packed_size(ctx_, memh_), wanted = allocated_key_size(ctx_);
        if (mapped < wanted) {
            ucp_mem_unmap(ctx_, memh_);
            memh_ = map(ctx_, nullptr, len);
            base_ = address_of(ctx_, memh_);
            std::memset(base_, 0x5A, len_);
            note_ = own_buffer_note(mapped, wanted);
        }
    }

    ucp_am_handler_param_t hp{};
    hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS | UCP_AM_HANDLER_PARAM_FIELD_CB |
                    UCP_AM_HANDLER_PARAM_FIELD_ARG;
    hp.id = raw_am_id;
    hp.flags = UCP_AM_FLAG_WHOLE_MSG;
    hp.cb = &on_am;
    hp.arg = this;
    if (auto s = ucp_worker_set_am_recv_handler(worker_, &hp); s != UCS_OK) {
        ucp_mem_unmap(ctx_, memh_);
        check(s, "ucp_worker_set_am_recv_handler");
    }
}

raw_runner::~raw_runner() {
    if (answer_ != nullptr) {
        // Not reached in a clean run: the initiator waits for every answer.
        while (ucp_request_check_status(answer_) == UCS_INPROGRESS) ucp_worker_progress(worker_);
        ucp_request_free(answer_);
    }
    ucp_am_handler_param_t hp{};
    hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB;
    hp.id = raw_am_id;
    hp.cb = nullptr;
    ucp_worker_set_am_recv_handler(worker_, &hp);
    disconnect();
    ucp_mem_unmap(ctx_, memh_);
}

std::vector<std::byte> raw_runner::packed_rkey() const {
    void* buf = nullptr;
    std::size_t n = 0;
    check(ucp_rkey_pack(ctx_, memh_, &buf, &n), "ucp_rkey_pack");
    auto* p = static_cast<const std::byte*>(buf);
    std::vector<std::byte> out(p, p + n);
    ucp_rkey_buffer_release(buf);
    return out;
}

void raw_runner::connect(ucp_ep_h ep, std::span<const std::byte> remote_rkey, std::uint64_t remote_base) {
    if (ep == nullptr) throw std::runtime_error("raw baseline: the backend has no endpoint to the peer");
    ep_ = ep;
    remote_base_ = remote_base;
    check(ucp_ep_rkey_unpack(ep_, remote_rkey.data(), &rkey_), "ucp_ep_rkey_unpack");
}

void raw_runner::disconnect() noexcept {
    if (rkey_) ucp_rkey_destroy(rkey_);
    rkey_ = nullptr;
    ep_ = nullptr;
}

void raw_runner::prepare(ferry::xfer_op op, std::span<const std::uint64_t> local_off,
                         std::span<const std::uint64_t> remote_off, std::size_t block) {
    op_ = op;
    entries_.resize(local_off.size());
    for (std::size_t i = 0; i < entries_.size(); ++i) {
        if (local_off[i] + block > len_) throw std::logic_error("raw baseline: a block leaves the buffer");
        entries_[i] = {static_cast<char*>(base_) + local_off[i], block, remote_base_ + remote_off[i]};
    }
}

ucs_status_t raw_runner::on_am(void* arg, const void*, std::size_t, void* data, std::size_t len,
                               const ucp_am_recv_param_t*) noexcept {
    auto& self = *static_cast<raw_runner*>(arg);
    const char c = len == 1 ? *static_cast<const char*>(data) : '\0';
    if (c == note_step[0]) {
        self.step_held_ = clock::now();
        ++self.steps_;
    } else if (c == note_ping[0]) {
        ++self.pings_;
    } else if (c == note_pong[0]) {
        ++self.pongs_;
    } else if (c != note_bw[0]) {
        ++self.unexpected_;
    }
    if (c != note_pong[0]) ++self.received_;
    return UCS_OK;
}

ucs_status_ptr_t raw_runner::issue(const char* note) noexcept {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
    param.memh = memh_;
    if (op_ == ferry::xfer_op::write) {
        for (const auto& e : entries_) {
            auto r = ucp_put_nbx(ep_, e.local, e.len, e.remote, rkey_, &param);
            if (r != nullptr) {
                if (UCS_PTR_IS_ERR(r)) return r;
                ucp_request_free(r);  // the flush covers its completion
            }
        }
    } else {
        for (const auto& e : entries_) {
            auto r = ucp_get_nbx(ep_, e.local, e.len, e.remote, rkey_, &param);
            if (r != nullptr) {
                if (UCS_PTR_IS_ERR(r)) return r;
                ucp_request_free(r);
            }
        }
    }
    ucp_request_param_t flush{};
    if (note == nullptr) return ucp_ep_flush_nbx(ep_, &flush);
    note_to_send_ = note;
    flush.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    flush.cb.send = &on_flushed;
    flush.user_data = this;
    auto f = ucp_ep_flush_nbx(ep_, &flush);
    if (f == nullptr) send_note();  // the data was in place already
    return f;
}

void raw_runner::on_flushed(void*, ucs_status_t status, void* self) noexcept {
    // wait() frees the request; a failed flush is reported there.
    if (status == UCS_OK) static_cast<raw_runner*>(self)->send_note();
}

void raw_runner::send_note() noexcept {
    ucp_request_param_t am{};
    am.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    am.flags = UCP_AM_SEND_FLAG_EAGER;
    note_sent_ = ucp_am_send_nbx(ep_, raw_am_id, nullptr, 0, note_to_send_, 1, &am);  // `note` is static
}

void raw_runner::wait(ucs_status_ptr_t flush) {
    auto wait_one = [&](ucs_status_ptr_t r, const char* what) {
        if (r == nullptr) return;
        if (UCS_PTR_IS_ERR(r)) check(UCS_PTR_STATUS(r), what);
        const std::string label = std::string("raw ") + what;  // the guard keeps a view of it
        stall_guard guard(timeout_, label);
        ucs_status_t s;
        while ((s = ucp_request_check_status(r)) == UCS_INPROGRESS) {
            ucp_worker_progress(worker_);
            guard.tick();
        }
        ucp_request_free(r);
        check(s, what);
    };
    wait_one(flush, "put/get/flush");
    wait_one(std::exchange(note_sent_, nullptr), "notification");
}

bw_sample raw_runner::bw(std::size_t iters, bool notif) {
    const char* note = notif ? note_bw.data() : nullptr;
    double post_seconds = 0;
    std::size_t timed = 0;
    const auto t0 = clock::now();
    for (std::size_t i = 0; i < iters; ++i) {
        ucs_status_ptr_t f;
        if ((i & 15U) == 0) {
            const auto a = clock::now();
            f = issue(note);
            post_seconds += std::chrono::duration<double>(clock::now() - a).count();
            ++timed;
        } else {
            f = issue(note);
        }
        wait(f);
    }
    const double seconds = seconds_since(t0);
    if (notif) sent_ += iters;
    return {seconds, iters, timed ? post_seconds / static_cast<double>(timed) : 0};
}

post_times raw_runner::timed_post(std::string_view note) {
    const char* n = note.empty() ? nullptr : note.data();
    post_times t;
    t.start = clock::now();
    ucs_status_ptr_t f = issue(n);
    t.posted = clock::now();
    wait(f);
    t.completed = clock::now();
    if (n != nullptr) ++sent_;
    return t;
}

void raw_runner::pingpong(std::size_t iters, std::vector<double>& half_rtt) {
    half_rtt.reserve(half_rtt.size() + iters);
    stall_guard guard(timeout_, "raw ping-pong");
    for (std::size_t i = 0; i < iters; ++i) {
        const std::uint64_t want = pongs_ + 1;
        const auto t0 = clock::now();
        ucs_status_ptr_t f = issue(note_ping.data());
        if (UCS_PTR_IS_ERR(f)) check(UCS_PTR_STATUS(f), "ping-pong put/get");
        while (f != nullptr || pongs_ < want) {
            ucp_worker_progress(worker_);
            if (f != nullptr) {
                auto s = ucp_request_check_status(f);
                if (s != UCS_INPROGRESS) {
                    ucp_request_free(f);
                    f = nullptr;
                    check(s, "ping-pong flush");
                }
            }
            guard.tick();
        }
        const auto t1 = clock::now();
        half_rtt.push_back(std::chrono::duration<double>(t1 - t0).count() / 2);
    }
    sent_ += iters;
    if (unexpected_) throw std::runtime_error("raw ping-pong: unexpected active messages arrived");
}

void raw_runner::poll() {
    if (answer_ != nullptr) {
        auto s = ucp_request_check_status(answer_);
        if (s == UCS_INPROGRESS) return;
        ucp_request_free(answer_);
        answer_ = nullptr;
        check(s, "answer flush");
    }
    if (pings_ > 0) {
        --pings_;
        auto f = issue(note_pong.data());
        if (UCS_PTR_IS_ERR(f)) check(UCS_PTR_STATUS(f), "answer put/get");
        answer_ = f;
    }
}

}  // namespace bench
