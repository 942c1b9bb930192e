#pragma once

#include <ferry/version.hpp>

#include <map>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN

/// Notifications grouped by the sender's agent name, in arrival order.
using notif_map = std::map<std::string, std::vector<std::string>>;

FERRY_NAMESPACE_END
