#pragma once

// Everything public in one include.

// Vocabulary: descriptors, handles, statuses, paths, costs.
#include <ferry/desc.hpp>
#include <ferry/handles.hpp>
#include <ferry/notif_map.hpp>
#include <ferry/peer_event.hpp>
#include <ferry/prometheus.hpp>
#include <ferry/status.hpp>
#include <ferry/telemetry.hpp>
#include <ferry/version.hpp>
#include <ferry/xfer_cost.hpp>
#include <ferry/xfer_options.hpp>
#include <ferry/xfer_path.hpp>

// The UCX backend, part by part.
#include <ferry/ucx_backend.hpp>

// Finding peers: the directory concept, and a listener that serves our blob
// over TCP and takes the blobs peers push.
#include <ferry/directory/client.hpp>
#include <ferry/directory/concepts.hpp>
#include <ferry/directory/listener.hpp>
#include <ferry/directory/tcp_directory.hpp>
