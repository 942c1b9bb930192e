#pragma once

// GPU memory for ucx_backend: ferry::memory::cuda. Needs the CUDA toolkit
// (link the ferry::cuda CMake target) and a UCX built with CUDA.

// CUDA reached through the runtime and the driver's entry points.
#include <ferry/cuda/cuda_status.hpp>
#include <ferry/cuda/driver_api.hpp>

// The memory kind: its per-backend state, CUDA IPC export and mapping, and
// how registration tells CUDA memory from host memory.
#include <ferry/cuda/backend_state.hpp>
#include <ferry/cuda/ipc.hpp>
#include <ferry/cuda/memory_traits.hpp>

// The cuda_ipc path: the copy kernel, its launch and completion.
#include <ferry/cuda/copy_kernel.hpp>
#include <ferry/cuda/copy_pool.hpp>
#include <ferry/cuda/device_copy.hpp>
#include <ferry/cuda/path_cuda_ipc.hpp>

// GPU-initiated transfers: the backend's device_view and device_signal, and
// the counter that peers' kernels signal (kernels include <ferry/device.cuh>).
#include <ferry/cuda/backend_device.hpp>
#include <ferry/cuda/counter.hpp>

#include <ferry/ferry.hpp>
