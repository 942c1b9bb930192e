#pragma once

// GPU memory for ucx_backend: ferry::memory::cuda. Needs the CUDA toolkit
// (link the ferry::cuda CMake target) and a UCX built with CUDA.
#include <ferry/cuda/memory_traits.hpp>
#include <ferry/ferry.hpp>
