#pragma once

#include <ferry/desc.hpp>
#include <ferry/detail/describe.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/memory.hpp>
#include <ferry/ucx/path.hpp>
#include <ferry/ucx/remote_peer.hpp>
#include <ferry/ucx/xfer_state.hpp>
#include <ferry/version.hpp>
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

/// prepare's checks of its arguments alone, before anything is looked up.
template <class Paths>
void check_prepare_arguments(xfer_op op, std::span<const desc> local, std::span<const desc> remote, xfer_path path) {
    const char* needs = path_requirement(path);
    if (needs == nullptr) throw error(status::invalid_argument, "prepare: unknown xfer_path");
    if (path != xfer_path::automatic && !Paths::offers(path))
        throw error(status::invalid_argument, "prepare: path " + std::string(to_string(path)) + " needs " + needs);
    if (op != xfer_op::read && op != xfer_op::write)
        throw error(status::invalid_argument, "prepare: op is neither read nor write");
    if (local.empty() && remote.empty())
        throw error(status::invalid_argument, "prepare: the descriptor lists are empty");
    if (local.size() != remote.size())
        throw error(status::invalid_argument, "prepare: " + std::to_string(local.size()) + " local descriptors but " +
                                                  std::to_string(remote.size()) + " remote descriptors");
}

/// prepare's second half, where the worker may be touched and with the peer
/// table locked: checks every pair against the regions that hold it, then
/// sets the transfer up on the path `wanted`, or on the first of `paths`
/// that serves every pair. Everything is checked before anything is
/// resolved; a throw names the first bad pair, and prepares nothing.
template <class Paths>
void resolve(xfer_state& st, std::span<const desc> local, std::span<const desc> remote, const registry& regions,
             Paths& paths, xfer_path wanted) {
    remote_peer& target = *st.target;
    std::vector<local_region*> lrs(local.size());
    std::vector<remote_region*> rrs(local.size());
    for (std::size_t i = 0; i < local.size(); ++i) {
        const desc& l = local[i];
        const desc& r = remote[i];
        const std::string at = "prepare: descriptor " + std::to_string(i);
        if (l.len == 0) throw error(status::invalid_argument, at + ": length is 0");
        if (l.len != r.len)
            throw error(status::invalid_argument, at + ": local length " + std::to_string(l.len) +
                                                      " differs from remote length " + std::to_string(r.len));
        auto lr = regions.find(l.addr, l.len, l.dev);
        if (!lr)
            throw error(status::not_registered,
                        at + ": local block " + describe(l) + " is not inside any registered region");
        rrs[i] = target.find(r.addr, r.len, r.dev);
        if (!rrs[i])
            throw error(status::not_registered, at + ": remote block " + describe(r) +
                                                    " is not inside any region that peer '" + target.name() +
                                                    "' published");
        lrs[i] = lr.get();
        st.total_bytes += l.len;
        if (std::find(st.regions.begin(), st.regions.end(), lr) == st.regions.end())
            st.regions.push_back(std::move(lr));
    }
    paths.choose(st, resolved_pairs{local, remote, lrs, rrs, target}, wanted);
}

}  // namespace detail
FERRY_NAMESPACE_END
