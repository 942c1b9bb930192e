#pragma once

// Everything public in one include.
#include <ferry/concepts.hpp>
#include <ferry/desc.hpp>
#include <ferry/handles.hpp>
#include <ferry/notif_map.hpp>
#include <ferry/policy.hpp>
#include <ferry/status.hpp>
#include <ferry/ucx/backend.hpp>
#include <ferry/ucx/config.hpp>
#include <ferry/ucx/region.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_cost.hpp>
#include <ferry/xfer_path.hpp>
