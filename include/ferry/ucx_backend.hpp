#pragma once

// The UCX backend and everything needed to use it.
#include <ferry/concepts.hpp>
#include <ferry/policy.hpp>
#include <ferry/ucx/backend.hpp>
