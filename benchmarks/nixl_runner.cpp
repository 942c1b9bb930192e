#include "nixl_runner.hpp"

#include "measure.hpp"

#include <ferry/nixl.hpp>

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace bench {

namespace fn = ferry::nixl;

namespace {

[[noreturn]] void fail(const char* call, fn::nixl_status_t s) {
    throw std::runtime_error(cat("--nixl: ", call, " returned ", std::to_string(static_cast<int>(s))));
}

void expect_success(const char* call, fn::nixl_status_t s) {
    if (s != fn::NIXL_SUCCESS) fail(call, s);
}

// The agent takes its transports from UCX_TLS, as NIXL's UCX backend does:
// set before it is made, so that it runs on the transports ferry's side runs on.
fn::nixlAgent make_agent(const options& o) {
    if (!o.tls.empty()) ::setenv("UCX_TLS", o.tls.c_str(), 1);
    return fn::nixlAgent("bench-nixl", fn::nixlAgentConfig(o.progress == progress_kind::thread));
}

}  // namespace

struct nixl_runner::state {
    explicit state(const options& o)
        : agent(make_agent(o)), timeout(o.timeout), coalesce(o.coalesce), path(to_xfer_path(o.path)) {}

    fn::nixlAgent agent;
    double timeout;
    bool coalesce;
    ferry::xfer_path path;
    std::uintptr_t local_base = 0;
    std::uintptr_t remote_base = 0;
    std::string peer;
    fn::nixl_reg_dlist_t registered{fn::DRAM_SEG};
    fn::nixlXferReqH* req = nullptr;
};

nixl_runner::nixl_runner(const options& o, void* base, std::size_t len, std::span<const std::byte> peer_blob,
                         std::uintptr_t remote_base)
    : s_(std::make_unique<state>(o)) {
    s_->local_base = reinterpret_cast<std::uintptr_t>(base);
    s_->remote_base = remote_base;
    fn::nixlBlobDesc d;
    d.addr = s_->local_base;
    d.len = len;
    s_->registered.addDesc(d);
    expect_success("registerMem", s_->agent.registerMem(s_->registered));
    const fn::nixl_blob_t blob(reinterpret_cast<const char*>(peer_blob.data()), peer_blob.size());
    expect_success("loadRemoteMD", s_->agent.loadRemoteMD(blob, s_->peer));
    expect_success("makeConnection", s_->agent.makeConnection(s_->peer));
}

nixl_runner::~nixl_runner() {
    release();
    (void)s_->agent.deregisterMem(s_->registered);
}

void nixl_runner::prepare(ferry::xfer_op op, std::span<const std::uint64_t> local_off,
                          std::span<const std::uint64_t> remote_off, std::size_t block) {
    release();
    fn::nixl_xfer_dlist_t local(fn::DRAM_SEG), remote(fn::DRAM_SEG);
    for (auto off : local_off) local.addDesc({s_->local_base + off, block, 0});
    for (auto off : remote_off) remote.addDesc({s_->remote_base + off, block, 0});
    fn::nixl_opt_args_t extra;
    extra.skipDescMerge = !s_->coalesce;
    extra.path = s_->path;  // ferry's addition to NIXL's arguments: --path
    expect_success("createXferReq",
                   s_->agent.createXferReq(op == ferry::xfer_op::read ? fn::NIXL_READ : fn::NIXL_WRITE, local, remote,
                                           s_->peer, s_->req, &extra));
}

void nixl_runner::release() noexcept {
    if (!s_->req) return;
    (void)s_->agent.releaseXferReq(s_->req);
    s_->req = nullptr;
}

double nixl_runner::facade(std::size_t iters) {
    auto& agent = s_->agent;
    fn::nixlXferReqH* const req = s_->req;
    stall_guard guard(s_->timeout, "nixl getXferStatus");
    const auto t0 = clock::now();
    for (std::size_t i = 0; i < iters; ++i) {
        auto s = agent.postXferReq(req);
        while (s == fn::NIXL_IN_PROG) {
            s = agent.getXferStatus(req);
            guard.tick();
        }
        if (s != fn::NIXL_SUCCESS) fail("postXferReq/getXferStatus", s);
    }
    return seconds_since(t0);
}

double nixl_runner::direct(std::size_t iters) {
    const ferry::xfer x = s_->req->x;
    stall_guard guard(s_->timeout, "nixl's backend check");
    return s_->agent.visit([&](auto& b) {
        const auto t0 = clock::now();
        for (std::size_t i = 0; i < iters; ++i) {
            auto s = b.post(x);
            while (s == ferry::status::in_progress) {
                s = b.check(x);
                guard.tick();
            }
            if (s != ferry::status::ok)
                throw std::runtime_error(cat("--nixl: the backend's post/check: ", ferry::to_string(s)));
        }
        return seconds_since(t0);
    });
}

}  // namespace bench
