// telemetry::nvtx: every post opens an NVTX range in the domain "ferry",
// named for its transfer, and the range ends when ferry records the post's
// end, under both progress policies; telemetry::on's records are kept as
// well. A recorder stands in for the profiler: linked into this program as
// NVTX's static injection, it receives exactly the calls a profiler would.
// Needs the CUDA toolkit's NVTX headers, not a GPU (host memory only).

#include <cstdint>

// This file provides NVTX's injection (defined below), so NVTX's own empty
// one is left out; NVTX's loader reads it, so it is declared first, with
// the type NVTX gives it (NvtxInitializeInjectionNvtxFunc_t).
#define NVTX_STATIC_INJECTION_IMPL
extern "C" int (*InitializeInjectionNvtx2_fnptr)(const void* (*)(std::uint32_t));

#include <ferry/cuda/nvtx.hpp>
#include <ferry/ferry.hpp>

#include <catch2/catch.hpp>

#include "support/two_process.hpp"

#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

using ferry::status;
using ferry::xfer_op;
using ferry::xfer_path;
using ferry_test::expect;
using ferry_test::expect_status;
using ferry_test::side;

namespace recorder {

struct range {
    std::string name;
    bool ended = false;
};

std::mutex mutex;
std::vector<std::string> domains;
std::vector<std::string> strings;  // a registered string's handle is its index + 1
std::vector<range> ranges;         // a range's id is its index + 1
int bad_calls = 0;                 // unknown domain, string or range id, or a range ended twice

nvtxDomainHandle_t create_domain(const char* name) {
    std::lock_guard lock(mutex);
    domains.emplace_back(name);
    return reinterpret_cast<nvtxDomainHandle_t>(domains.size());
}

bool known_domain(nvtxDomainHandle_t d) { return d && reinterpret_cast<std::uintptr_t>(d) <= domains.size(); }

nvtxStringHandle_t register_string(nvtxDomainHandle_t d, const char* text) {
    std::lock_guard lock(mutex);
    if (!known_domain(d)) ++bad_calls;
    strings.emplace_back(text);
    return reinterpret_cast<nvtxStringHandle_t>(strings.size());
}

nvtxRangeId_t range_start(nvtxDomainHandle_t d, const nvtxEventAttributes_t* a) {
    std::lock_guard lock(mutex);
    const auto s = reinterpret_cast<std::uintptr_t>(a->message.registered);
    if (!known_domain(d) || a->messageType != NVTX_MESSAGE_TYPE_REGISTERED || s == 0 || s > strings.size()) {
        ++bad_calls;
        ranges.push_back({"?", false});
    } else {
        ranges.push_back({strings[s - 1], false});
    }
    return ranges.size();
}

void range_end(nvtxDomainHandle_t d, nvtxRangeId_t id) {
    std::lock_guard lock(mutex);
    if (!known_domain(d) || id == 0 || id > ranges.size() || ranges[id - 1].ended) ++bad_calls;
    else ranges[id - 1].ended = true;
}

int initialize(NvtxGetExportTableFunc_t get_table) {
    const auto* callbacks = static_cast<const NvtxExportTableCallbacks*>(get_table(NVTX_ETID_CALLBACKS));
    NvtxFunctionTable table = nullptr;
    unsigned int size = 0;
    if (!callbacks || !callbacks->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &table, &size)) return 0;
    *table[NVTX_CBID_CORE2_DomainCreateA] = reinterpret_cast<NvtxFunctionPointer>(&create_domain);
    *table[NVTX_CBID_CORE2_DomainRegisterStringA] = reinterpret_cast<NvtxFunctionPointer>(&register_string);
    *table[NVTX_CBID_CORE2_DomainRangeStartEx] = reinterpret_cast<NvtxFunctionPointer>(&range_start);
    *table[NVTX_CBID_CORE2_DomainRangeEnd] = reinterpret_cast<NvtxFunctionPointer>(&range_end);
    return 1;
}

}  // namespace recorder

NvtxInitializeInjectionNvtxFunc_t InitializeInjectionNvtx2_fnptr = &recorder::initialize;

namespace {

template <class Progress>
using nvtx_backend = ferry::ucx_backend<ferry::policy<Progress, ferry::memory::host, ferry::telemetry::nvtx>>;

static_assert(ferry::has_telemetry_v<ferry::policy<ferry::progress::inline_poll, ferry::memory::host,
                                                   ferry::telemetry::nvtx>>);

constexpr std::size_t region_len = 1 << 16;

void target(side& s) {
    ferry::ucx_backend<> b(s.config("target"));
    std::vector<std::byte> mem(region_len);
    auto r = b.register_memory(mem.data(), mem.size());
    s.ch.send(b.local_metadata());
    s.ch.send(std::to_string(reinterpret_cast<std::uintptr_t>(mem.data())));
    ferry_test::progress_until_message(b, s.ch);
    s.ch.expect_message("bye");
}

template <class Progress>
void initiator(side& s) {
    nvtx_backend<Progress> b(s.config("init"));
    std::vector<std::byte> mem(region_len);
    auto r = b.register_memory(mem.data(), mem.size());
    auto blob = s.ch.recv();
    const auto p = b.load_remote(std::as_bytes(std::span(blob.data(), blob.size())));
    const std::uint64_t remote = std::stoull(s.ch.recv());
    const auto here = reinterpret_cast<std::uint64_t>(mem.data());

    const std::vector<ferry::desc> l{{here, 4096, 0}}, rm{{remote, 4096, 0}};
    auto w = b.prepare(xfer_op::write, l, rm, p, ferry::xfer_options{.path = xfer_path::ucx});
    auto rd = b.prepare(xfer_op::read, l, rm, p, ferry::xfer_options{.path = xfer_path::ucx});
    constexpr int writes = 10, reads = 5;
    for (int i = 0; i < writes; ++i) ferry_test::post_and_wait(b, w, i == 0 ? "first" : "", "WRITE");
    for (int i = 0; i < reads; ++i) ferry_test::post_and_wait(b, rd, {}, "READ");
    // A refused post opens no range.
    expect_status(b.post(w, std::string(b.config().max_notif_size + 1, 'n')), status::invalid_argument,
                  "oversized notification");

    {
        std::lock_guard lock(recorder::mutex);
        expect(recorder::domains == std::vector<std::string>{"ferry"}, "one domain, \"ferry\"");
        expect(recorder::bad_calls == 0, "calls with unknown handles: " + std::to_string(recorder::bad_calls));
        expect(recorder::ranges.size() == writes + reads, "ranges: " + std::to_string(recorder::ranges.size()));
        for (std::size_t i = 0; i < recorder::ranges.size(); ++i) {
            const auto& g = recorder::ranges[i];
            const std::string want = i < writes ? "write init -> target (ucx)" : "read init -> target (ucx)";
            expect(g.name == want, "range " + std::to_string(i) + " is named \"" + g.name + "\"");
            expect(g.ended, "range " + std::to_string(i) + " ended");
        }
    }
    // telemetry::on's records are there too.
    const auto c = b.snapshot().peers.at(0).counters;
    expect(c.posts == writes + reads && c.completions == writes + reads, "posts and completions counted");
    s.ch.send("bye");
}

}  // namespace

TEST_CASE("telemetry::nvtx marks every post with a named NVTX range that ends with it (inline progress)") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    ferry_test::run_two_process(tls, initiator<ferry::progress::inline_poll>, target);
}

TEST_CASE("telemetry::nvtx marks every post with a named NVTX range that ends with it (progress thread)") {
    const std::string tls = GENERATE(as<std::string>{}, "shm", "tcp");
    ferry_test::run_two_process(tls, initiator<ferry::progress::thread>, target);
}
