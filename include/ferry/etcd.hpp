#pragma once

// ferry::etcd_directory (link ferry::etcd, which brings libcurl).

#include <ferry/directory/peer_sync.hpp>
#include <ferry/etcd/directory.hpp>
