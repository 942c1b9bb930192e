#pragma once

#include <ferry/version.hpp>

#include <chrono>
#include <string>
#include <vector>

FERRY_NAMESPACE_BEGIN

/// Where etcd_directory finds etcd and how it talks to it.
struct etcd_options {
    /// Base URLs of etcd's client endpoints, tried in turn (the one that
    /// answered last first): "http://10.0.0.1:2379", or https:// with `tls`.
    std::vector<std::string> endpoints{"http://127.0.0.1:2379"};

    /// Entries live at /ferry/<name_space>/<agent>; agents see only their
    /// own namespace. No '/' in it.
    std::string name_space = "default";

    /// Lifetime of our entry without keep-alive: a process that dies
    /// disappears from the directory within about this long. etcd counts
    /// whole seconds; it is rounded up, at least 1 s.
    std::chrono::milliseconds ttl{10000};

    /// Per request: connecting to one endpoint, and the whole request.
    std::chrono::milliseconds connect_timeout{1000};
    std::chrono::milliseconds request_timeout{3000};

    /// How often poll_events reads the namespace while it waits.
    std::chrono::milliseconds poll_interval{100};

    /// TLS (https:// endpoints): the CA that signed etcd's certificate, and
    /// our client certificate and key where etcd asks for one (PEM files;
    /// empty: the system's CAs, no client certificate).
    std::string ca_file;
    std::string cert_file;
    std::string key_file;

    /// etcd authentication (empty user: none): exchanged for a token at
    /// /v3/auth/authenticate, sent with every request, renewed when etcd
    /// refuses it.
    std::string user;
    std::string password;
};

FERRY_NAMESPACE_END
