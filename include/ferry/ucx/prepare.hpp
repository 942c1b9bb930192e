#pragma once

#include <ferry/desc.hpp>
#include <ferry/detail/describe.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/memory.hpp>
#include <ferry/ucx/path.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/ucx/strided.hpp>
#include <ferry/ucx/xfer_state.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_options.hpp>
#include <ferry/xfer_path.hpp>

#include <algorithm>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN
namespace detail {

// What a backend needs for it to offer a path; null for a value that names no path.
constexpr const char* path_requirement(xfer_path p) noexcept {
    switch (p) {
        case xfer_path::automatic:
        case xfer_path::ucx:
        case xfer_path::host_ipc: return "any backend";
        case xfer_path::cuda_ipc: return "a backend with memory::cuda";
    }
    return nullptr;
}

/// prepare's checks of the path and the op, before anything is looked up.
template <class Paths>
void check_path_and_op(xfer_op op, xfer_path path) {
    const char* needs = path_requirement(path);
    if (needs == nullptr) throw error(status::invalid_argument, "prepare: unknown xfer_path");
    if (path != xfer_path::automatic && !Paths::offers(path))
        throw error(status::invalid_argument, "prepare: path " + std::string(to_string(path)) + " needs " + needs);
    if (op != xfer_op::read && op != xfer_op::write)
        throw error(status::invalid_argument, "prepare: op is neither read nor write");
}

/// prepare's checks of its arguments alone, before anything is looked up.
template <class Paths>
void check_prepare_arguments(xfer_op op, std::span<const desc> local, std::span<const desc> remote, xfer_path path) {
    check_path_and_op<Paths>(op, path);
    if (local.empty() && remote.empty())
        throw error(status::invalid_argument, "prepare: the descriptor lists are empty");
    if (local.size() != remote.size())
        throw error(status::invalid_argument, "prepare: " + std::to_string(local.size()) + " local descriptors but " +
                                                  std::to_string(remote.size()) + " remote descriptors");
}

/// The same for strided lists: every entry of each list on its own
/// (check_strided_list), then equal block counts, which it returns.
template <class Paths>
std::size_t check_prepare_arguments(xfer_op op, std::span<const strided_desc> local,
                                    std::span<const strided_desc> remote, xfer_path path) {
    check_path_and_op<Paths>(op, path);
    if (local.empty() || remote.empty())
        throw error(status::invalid_argument, std::string("prepare: the ") + (local.empty() ? "local" : "remote") +
                                                  " list is empty");
    const std::size_t l = check_strided_list(local, "local", op == xfer_op::read);
    const std::size_t r = check_strided_list(remote, "remote", op == xfer_op::write);
    if (l != r)
        throw error(status::invalid_argument, "prepare: the local entries hold " + std::to_string(l) +
                                                  " blocks but the remote entries " + std::to_string(r));
    return l;
}

/// Whether pair b continues pair a: both blocks follow a's in the same
/// regions, so that one operation can move the two.
inline bool continues(const desc& la, const desc& ra, const desc& lb, const desc& rb, const local_region* lra,
                      const local_region* lrb, const remote_region* rra, const remote_region* rrb) noexcept {
    return lra == lrb && rra == rrb && la.addr + la.len == lb.addr && ra.addr + ra.len == rb.addr;
}

/// Which regions hold each pair (or run) of the list being prepared: kept
/// per thread at the size of the longest list it prepared, so that a list
/// prepared again (an application that prepares per request) allocates and
/// faults in nothing here. 16 bytes a pair of that longest list stay
/// allocated per thread that prepares.
struct pair_regions {
    std::vector<local_region*> local;
    std::vector<remote_region*> remote;

    static pair_regions& of_this_thread(std::size_t n) {
        thread_local pair_regions mine;
        // Every entry below n is written before it is read.
        if (mine.local.size() < n) {
            mine.local.resize(n);
            mine.remote.resize(n);
        }
        return mine;
    }
};

/// prepare's second half, where the worker may be touched and with the peer
/// table locked: checks every pair against the regions that hold it, merges
/// runs of adjacent pairs (options.coalesce), then sets the transfer up on
/// options.path, or on the first of `paths` that serves every pair.
/// Everything is checked before anything is resolved; a throw names the
/// first bad pair, and prepares nothing.
/// `origin`: where the pairs came from when the caller gave strided lists.
template <class Paths>
void resolve(xfer_state& st, std::span<const desc> local, std::span<const desc> remote, const registry& regions,
             Paths& paths, const xfer_options& options, const strided_origin* origin = nullptr) {
    remote_peer& target = *st.target;
    const std::size_t n = local.size();
    pair_regions& scratch = pair_regions::of_this_thread(n);
    const std::span<local_region*> lrs = std::span(scratch.local).first(n);
    const std::span<remote_region*> rrs = std::span(scratch.remote).first(n);
    auto at = [origin](std::size_t i) { return "prepare: " + name_block(i, origin); };
    std::size_t merges = 0;
    std::uint64_t bytes = 0;
    // The previous pair's regions, kept in locals rather than read back from
    // the tables, which the compiler must assume the stores to them change.
    local_region* lr = nullptr;
    remote_region* rr = nullptr;
    for (std::size_t i = 0; i < n; ++i) {
        const desc& l = local[i];
        const desc& r = remote[i];
        if (l.len == 0) throw error(status::invalid_argument, at(i) + ": length is 0");
        if (l.len != r.len)
            throw error(status::invalid_argument, at(i) + ": local length " + std::to_string(l.len) +
                                                      " differs from remote length " + std::to_string(r.len));
        // Lists mostly stay in one region for many blocks: the previous
        // pair's regions are asked first, which spares the registry's lock
        // and a search per block. Either region is right for a block that
        // lies inside it, even where regions overlap.
        local_region* const lr_prev = lr;
        remote_region* const rr_prev = rr;
        if (!lr || !lr->contains(l.addr, l.len, l.dev)) {
            auto found = regions.find(l.addr, l.len, l.dev);
            if (!found)
                throw error(status::not_registered,
                            at(i) + ": local block " + describe(l) + " is not inside any registered region");
            lr = found.get();
            if (std::find(st.regions.begin(), st.regions.end(), found) == st.regions.end())
                st.regions.push_back(std::move(found));
        }
        if (!rr || rr->withdrawn || !rr->contains(r.addr, r.len, r.dev)) {
            rr = target.find(r.addr, r.len, r.dev);
            if (!rr)
                throw error(status::not_registered, at(i) + ": remote block " + describe(r) +
                                                        " is not inside any region that peer '" + target.name() +
                                                        "' published");
        }
        lrs[i] = lr;
        rrs[i] = rr;
        bytes += l.len;
        if (i > 0 && continues(local[i - 1], remote[i - 1], l, r, lr_prev, lr, rr_prev, rr)) ++merges;
    }
    st.total_bytes += bytes;
    if (!options.coalesce || merges == 0) {
        st.block_count = n;
        paths.choose(st, resolved_pairs{local, remote, lrs, rrs, target, {}, origin}, options.path);
        return;
    }
    // A run ends where the next pair does not continue it; each run becomes
    // one pair that starts where its first does and is as long as all of it.
    const std::size_t m = n - merges;
    std::vector<desc> ml, mr;
    std::vector<std::size_t> first;
    ml.reserve(m);
    mr.reserve(m);
    first.reserve(m);
    // The merged pairs' regions are written over the list's in place: the
    // slot written, ml.size(), is at most i, and slots i - 1 and i, which
    // the next pairs read, still hold their own regions.
    for (std::size_t i = 0; i < n; ++i) {
        if (i > 0 && continues(local[i - 1], remote[i - 1], local[i], remote[i], lrs[i - 1], lrs[i], rrs[i - 1],
                               rrs[i])) {
            ml.back().len += local[i].len;
            mr.back().len += remote[i].len;
            continue;
        }
        lrs[ml.size()] = lrs[i];
        rrs[ml.size()] = rrs[i];
        ml.push_back(local[i]);
        mr.push_back(remote[i]);
        first.push_back(i);
    }
    st.block_count = m;
    paths.choose(st, resolved_pairs{ml, mr, lrs.first(m), rrs.first(m), target, first, origin}, options.path);
}

/// prepare's second half for strided lists, in O(runs): checks each run
/// against one region on each side, by the span from its first block's
/// start to its last block's end, merges runs into longer blocks
/// (options.coalesce: a run whose blocks follow one another on both sides
/// becomes one block, and so do consecutive single blocks that continue
/// each other; `runs` then holds the merged ones), then sets the transfer up
/// as resolve does. Returns false, having changed nothing, when a run's span
/// lies in no single region on one side; the caller then lays the blocks out
/// and resolves them one by one, which finds each block's region or names
/// the bad one.
template <class Paths>
bool resolve_runs(xfer_state& st, std::span<block_run> runs, const strided_origin& origin,
                  const registry& regions, Paths& paths, const xfer_options& options) {
    remote_peer& target = *st.target;
    const std::size_t n = runs.size();
    std::vector<std::shared_ptr<local_region>> held;
    pair_regions& scratch = pair_regions::of_this_thread(n);
    const std::span<local_region*> lrs = std::span(scratch.local).first(n);
    const std::span<remote_region*> rrs = std::span(scratch.remote).first(n);
    std::uint64_t bytes = 0;
    // The last run's regions, kept in locals rather than read back from the
    // tables, which the compiler must assume the stores to them change.
    local_region* lr = nullptr;
    remote_region* rr = nullptr;
    for (std::size_t i = 0; i < n; ++i) {
        const block_run& run = runs[i];
        const std::size_t l_span = run_span(run.local, run.local_stride, run.count);
        const std::size_t r_span = run_span(run.remote, run.remote_stride, run.count);
        if (!lr || !lr->contains(run.local.addr, l_span, run.local.dev)) {
            auto found = regions.find(run.local.addr, l_span, run.local.dev);
            if (!found) return false;
            lr = found.get();
            if (std::find(held.begin(), held.end(), found) == held.end()) held.push_back(std::move(found));
        }
        if (!rr || rr->withdrawn || !rr->contains(run.remote.addr, r_span, run.remote.dev)) {
            rr = target.find(run.remote.addr, r_span, run.remote.dev);
            if (!rr) return false;
        }
        lrs[i] = lr;
        rrs[i] = rr;
        bytes += std::uint64_t{run.local.len} * run.count;
    }
    st.regions = std::move(held);
    st.total_bytes = bytes;
    if (!options.coalesce) {
        st.block_count = origin.blocks;
        paths.choose(st, resolved_runs{runs, lrs, rrs, target, origin}, options.path);
        return true;
    }
    // Merged in place: run i is read before slot m <= i is written.
    std::size_t m = 0, blocks = 0;
    for (std::size_t i = 0; i < n; ++i) {
        block_run run = runs[i];
        if (run.count > 1 && run.local_stride == run.local.len && run.remote_stride == run.remote.len) {
            run.local.len *= run.count;
            run.remote.len *= run.count;
            run.count = 1;
        }
        if (run.count == 1 && m > 0 && runs[m - 1].count == 1 &&
            continues(runs[m - 1].local, runs[m - 1].remote, run.local, run.remote, lrs[m - 1], lrs[i], rrs[m - 1],
                      rrs[i])) {
            runs[m - 1].local.len += run.local.len;
            runs[m - 1].remote.len += run.remote.len;
            continue;
        }
        runs[m] = run;
        lrs[m] = lrs[i];
        rrs[m] = rrs[i];
        ++m;
        blocks += run.count;
    }
    st.block_count = blocks;
    paths.choose(st,
                 resolved_runs{runs.first(m), lrs.first(m), rrs.first(m), target, origin},
                 options.path);
    return true;
}

}  // namespace detail
FERRY_NAMESPACE_END
