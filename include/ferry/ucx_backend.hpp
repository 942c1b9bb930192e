#pragma once

// The UCX backend, layer by layer: ucx_backend<Policy> (last) is the public
// class, and each header before it is one of its parts. docs/architecture.md
// draws the layers and the life of a transfer.

// The contract, and the policies a backend is built from.
#include <ferry/concepts.hpp>
#include <ferry/policy.hpp>
#include <ferry/ucx/config.hpp>

// UCX handles, each owned by one object.
#include <ferry/ucx/context.hpp>   // the UCX context: features, options, memory types
#include <ferry/ucx/worker.hpp>    // the worker and the thread that owns it
#include <ferry/ucx/endpoint.hpp>  // endpoints and unpacked remote keys
#include <ferry/ucx/memory.hpp>    // mapped memory, local regions and their registry

// This host: shared host memory, and a peer seen as a process here.
#include <ferry/host/shared_memory.hpp>  // memfd memory a peer maps; mapping a peer's
#include <ferry/host/peer_process.hpp>   // same host and PID namespace, process_vm access, liveness

// Memory: what each memory kind adds, and registration.
#include <ferry/ucx/memory_traits.hpp>  // memory::host; memory::cuda's is in <ferry/cuda.hpp>
#include <ferry/ucx/registration.hpp>   // register_memory, allocate, deregister_memory
#include <ferry/ucx/region.hpp>         // the region handle the application holds

// Peers: metadata published and loaded, and the peer table.
#include <ferry/ucx/remote_peer.hpp>  // a loaded peer: its endpoint and published regions
#include <ferry/ucx/peer_table.hpp>   // loading, unloading, closing; local_metadata's blob

// Transfers: state and completion, preparation and the choice of path, the
// paths themselves (cuda_ipc's is in <ferry/cuda.hpp>), deadlines.
#include <ferry/ucx/xfer_state.hpp>  // a prepared transfer, its phases and its completion
#include <ferry/ucx/path.hpp>        // the seam: what a path provides, dispatch by tag
#include <ferry/ucx/prepare.hpp>     // checks, pairs resolved to regions, the path chosen
#include <ferry/ucx/path_ucx.hpp>    // UCX RMA: puts or gets, one flush, the notification after it
#include <ferry/host/path_host_ipc.hpp>  // host memory of a peer here: memcpy or process_vm, no worker
#include <ferry/ucx/deadlines.hpp>   // transfers past their deadline, or to a failed peer

// Notifications: the inbox, and the pool standalone ones leave from.
#include <ferry/ucx/notif.hpp>

// Progress engines: who owns and drives the worker.
#include <ferry/ucx/progress_inline.hpp>  // the constructing thread
#include <ferry/ucx/progress_thread.hpp>  // a progress thread, commands through a queue

// The backend: its API and parts (backend.hpp), then its calls by area.
#include <ferry/ucx/backend.hpp>
#include <ferry/ucx/backend_notif.hpp>
#include <ferry/ucx/backend_worker.hpp>
#include <ferry/ucx/backend_xfer.hpp>
