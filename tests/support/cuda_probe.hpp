#pragma once

// What this machine has for memory::cuda tests: a forked probe makes a
// memory::cuda backend and reports how it went, so that the test process
// itself never touches CUDA (its state does not survive fork) and every
// test can skip, naming what is missing.

#include <ferry/cuda.hpp>

#include <catch2/catch.hpp>

#include "support/child_output.hpp"
#include "support/ferry_catch.hpp"

#include <cuda_runtime_api.h>
#include <string>
#include <utility>

namespace ferry_test {

enum class probe_result { ready = 0, no_device = 2, ucx_without_cuda = 3, other = 4 };

struct probe_outcome {
    probe_result result = probe_result::other;
    std::string message;
};

// Forks a child that makes a memory::cuda backend, and reads back how it went.
inline const probe_outcome& probe() {
    static const probe_outcome outcome = [] {
        const child_result child = in_child([] {
            std::string msg;
            int code = 0;
            int devices = 0;
            if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
                code = static_cast<int>(probe_result::no_device);
                msg = "no CUDA device here";
            } else {
                try {
                    ferry::ucx_config cfg;
                    cfg.name = "probe";
                    ferry::ucx_backend<ferry::policy<ferry::progress::inline_poll, ferry::memory::cuda>> b(cfg);
                } catch (const ferry::error& e) {
                    msg = e.what();
                    code = static_cast<int>(msg.find("UCX") != std::string::npos ? probe_result::ucx_without_cuda
                                                                                 : probe_result::other);
                }
            }
            return std::pair{code, msg};
        });
        probe_outcome o;
        o.message = child.output;
        o.result = child.exited ? static_cast<probe_result>(child.code) : probe_result::other;
        if (!child.exited) o.message = "the probe process crashed";
        return o;
    }();
    return outcome;
}

// True when the GPU tests can run; otherwise reports the test skipped.
inline bool gpu_ready() {
    const auto& p = probe();
    if (p.result == probe_result::ready) return true;
    ferry_test::skip(p.result == probe_result::no_device ? "no CUDA device" : "memory::cuda unusable: " + p.message);
    return false;
}

}  // namespace ferry_test
