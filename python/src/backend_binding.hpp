#pragma once

// One Python class per ucx_backend instantiation. Every call is one C++
// call: a descriptor list crosses in one piece, post and check take the GIL
// for their few hundred nanoseconds, and whatever waits (wait, wait_notifs,
// connect, load, construction and close under the thread policy) lets it go.
#include "buffers.hpp"
#include "descs.hpp"
#include "region.hpp"
#include "status_enum.hpp"

#include <ferry/ferry.hpp>
#ifdef FERRY_PYTHON_CUDA
#include <ferry/cuda.hpp>

#include <cuda_runtime_api.h>
#endif

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace ferry_python {

namespace py = pybind11;

/// Seconds as Python gives them (None: no limit) to a C++ duration.
inline std::chrono::nanoseconds seconds_arg(const std::optional<double>& s, const char* what) {
    if (!s) return std::chrono::nanoseconds::max();
    if (std::isnan(*s) || *s < 0) throw std::invalid_argument(std::string(what) + ": must be a number of seconds >= 0");
    if (*s >= 1e9) return std::chrono::nanoseconds::max();
    return std::chrono::nanoseconds(static_cast<std::int64_t>(*s * 1e9));
}

inline ferry::xfer_op op_arg(py::handle op) {
    if (py::isinstance<ferry::xfer_op>(op)) return op.cast<ferry::xfer_op>();
    if (py::isinstance<py::str>(op)) {
        auto s = op.cast<std::string>();
        for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (s == "read") return ferry::xfer_op::read;
        if (s == "write") return ferry::xfer_op::write;
        throw std::invalid_argument("prepare: op must be 'read' or 'write' (or ferry.Op), got '" + s + "'");
    }
    throw std::invalid_argument("prepare: op must be 'read' or 'write' (or ferry.Op)");
}

inline ferry::xfer_path path_arg(const std::string& p) {
    if (p == "auto") return ferry::xfer_path::automatic;
    if (p == "ucx") return ferry::xfer_path::ucx;
    if (p == "host_ipc") return ferry::xfer_path::host_ipc;
    if (p == "cuda_ipc") return ferry::xfer_path::cuda_ipc;
    throw std::invalid_argument("prepare: path must be 'auto', 'ucx', 'host_ipc' or 'cuda_ipc', got '" + p + "'");
}

/// A notification's bytes: str is sent as UTF-8.
inline std::string message_arg(py::handle msg) {
    if (py::isinstance<py::bytes>(msg)) return msg.cast<std::string>();
    if (py::isinstance<py::str>(msg)) return msg.cast<std::string>();
    if (PyByteArray_Check(msg.ptr()))
        return {PyByteArray_AsString(msg.ptr()), static_cast<std::size_t>(PyByteArray_Size(msg.ptr()))};
    throw std::invalid_argument("a notification must be bytes, bytearray or str");
}

// Agent names are bytes on the wire; Python sees them as str, undecodable bytes escaped.
inline py::str name_of(std::string_view s) {
    return py::reinterpret_steal<py::str>(
        PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "surrogateescape"));
}

template <class B>
class py_backend final : public backend_core {
public:
    static constexpr bool threaded = ferry::is_threaded_v<typename B::policy_type>;

    explicit py_backend(ferry::ucx_config cfg) : owner_(std::this_thread::get_id()) {
        py::gil_scoped_release unlocked;
        b_ = std::make_unique<B>(std::move(cfg));
    }
    ~py_backend() override { close(); }

    void close() {
        if (!b_) return;
        {
            py::gil_scoped_release unlocked;
            b_.reset();
        }
        release_parked();
    }

    [[nodiscard]] bool open() const noexcept override { return b_ != nullptr; }

    void deregister(ferry::region& r) override { get("deregister").deregister_memory(r); }

    // The backend, on a thread that may call it: under inline progress only
    // the thread that created it drives its worker (ferry aborts otherwise).
    B& get(const char* what) {
        if (!b_) throw ferry::error(ferry::status::invalid_argument, std::string(what) + ": the backend is closed");
        if constexpr (!threaded) {
            if (std::this_thread::get_id() != owner_)
                throw ferry::error(ferry::status::invalid_argument,
                                   std::string(what) +
                                       ": this backend (progress='inline') belongs to the thread that created it; "
                                       "use progress='thread' to call it from several threads");
        }
        return *b_;
    }

private:
    std::unique_ptr<B> b_;
    std::thread::id owner_;
};

template <class B>
using backend_ptr = std::shared_ptr<py_backend<B>>;

template <class B>
std::unique_ptr<py_region> make_region(const backend_ptr<B>& self, ferry::region r, bool host,
                                       std::unique_ptr<held_memory> held = nullptr) {
    auto out = std::make_unique<py_region>();
    out->r = std::move(r);
    out->host = host;
    out->held = std::move(held);
    out->owner = self;
    return out;
}

template <class B>
void bind_backend(py::module_& m, const char* class_name, const char* memory_name) {
    using self_t = py_backend<B>;
    constexpr bool cuda = !std::is_same_v<typename B::policy_type::memory_kind, ferry::memory::host>;
    py::class_<self_t, backend_ptr<B>> c(m, class_name);
    c.attr("memory_kind") = memory_name;
    c.attr("progress_mode") = self_t::threaded ? "thread" : "inline";

    c.def_property_readonly("name", [](self_t& s) { return name_of(s.get("name").name()); });
    c.def("close", &self_t::close, "Destroys the backend (ends what is in flight); later calls raise.");
    c.def("__enter__", [](backend_ptr<B> s) { return s; });
    c.def("__exit__", [](self_t& s, py::args) { s.close(); });

    // ---- memory -------------------------------------------------------------
    c.def(
        "register",
        [](const backend_ptr<B>& s, py::handle obj, std::optional<std::uint32_t> dev) {
            std::unique_ptr<held_memory> held;
            try {
                held = hold(obj);
            } catch (const std::invalid_argument& e) {
                throw std::invalid_argument(std::string("register: ") + e.what());
            }
            std::uint32_t device = dev.value_or(0);
            if (held->device) {
                if constexpr (!cuda) {
                    throw std::invalid_argument("register: this is CUDA device memory; create the backend with "
                                                "memory='cuda'");
                } else {
#ifdef FERRY_PYTHON_CUDA
                    if (!dev) {
                        cudaPointerAttributes a{};
                        if (cudaPointerGetAttributes(&a, held->ptr) != cudaSuccess || a.type != cudaMemoryTypeDevice)
                            throw std::invalid_argument("register: the array's pointer is not CUDA device memory");
                        device = static_cast<std::uint32_t>(a.device);
                    }
#endif
                }
            }
            auto r = s->get("register").register_memory(held->ptr, held->len, device);
            const bool host = !held->device;
            return make_region(s, std::move(r), host, std::move(held));
        },
        py::arg("obj"), py::arg("dev") = py::none(),
        "Registers the memory of `obj` (buffer protocol, __cuda_array_interface__ or __dlpack__) without copying; "
        "`obj` stays referenced until the region is closed.");
    c.def(
        "register_address",
        [](const backend_ptr<B>& s, std::uintptr_t addr, std::size_t length, std::uint32_t dev) {
            auto r = s->get("register_address").register_memory(reinterpret_cast<void*>(addr), length, dev);
            // ferry found the memory's kind; the caller vouches that it stays put.
            return make_region(s, std::move(r), false);
        },
        py::arg("addr"), py::arg("length"), py::arg("dev") = 0,
        "Registers `length` bytes at a raw address (host memory, or CUDA memory of device `dev`), as NIXL's "
        "(addr, len, dev) tuples do: nothing keeps that memory alive, the caller must. The region has no buffer "
        "view.");
    c.def(
        "allocate",
        [](const backend_ptr<B>& s, std::size_t n, std::uint32_t dev) {
            return make_region(s, s->get("allocate").allocate(n, dev), !cuda);
        },
        py::arg("size"), py::arg("dev") = 0,
        "Allocates and registers `size` bytes: host memory a peer on this host maps (memory='host'), device memory "
        "(memory='cuda').");
    if constexpr (cuda) {
        c.def(
            "allocate_host",
            [](const backend_ptr<B>& s, std::size_t n) {
                return make_region(s, s->get("allocate_host").allocate_host(n), true);
            },
            py::arg("size"), "Page-locked host memory that a GPU peer on this host copies into.");
    }

    // ---- peers ----------------------------------------------------------------
    c.def("metadata", [](self_t& s) {
        const auto blob = s.get("metadata").local_metadata();
        return py::bytes(reinterpret_cast<const char*>(blob.data()), blob.size());
    });
    c.def(
        "load",
        [](self_t& s, py::bytes blob) {
            const std::string_view v = blob;
            auto& b = s.get("load");
            py::gil_scoped_release unlocked;
            return b.load_remote(std::as_bytes(std::span(v.data(), v.size())));
        },
        py::arg("blob"), "Loads a peer's metadata (from its metadata()); returns its Peer.");
    c.def(
        "unload", [](self_t& s, ferry::peer p) { s.get("unload").unload_remote(p); }, py::arg("peer"));
    c.def(
        "connect",
        [](self_t& s, ferry::peer p, std::optional<double> timeout) {
            auto& b = s.get("connect");
            const auto t = seconds_arg(timeout, "connect: timeout");
            py::gil_scoped_release unlocked;
            return b.connect(p, t);
        },
        py::arg("peer"), py::arg("timeout") = 5.0,
        "Finishes connecting to a loaded peer now (see the C++ connect); returns a Status.");
    c.def(
        "peer_name", [](self_t& s, ferry::peer p) { return name_of(s.get("peer_name").peer_name(p)); },
        py::arg("peer"), "The agent name in the peer's metadata.");
    c.def(
        "peer_status", [](self_t& s, ferry::peer p) { return s.get("peer_status").peer_status(p); },
        py::arg("peer"));
    c.def(
        "find_peer", [](self_t& s, const std::string& name) { return s.get("find_peer").find_peer(name); },
        py::arg("name"));
    c.def(
        "remote_regions",
        [](self_t& s, ferry::peer p) {
            py::list out;
            for (const auto& d : s.get("remote_regions").remote_regions(p)) out.append(py::make_tuple(d.addr, d.len, d.dev));
            return out;
        },
        py::arg("peer"), "The regions the peer published, as (addr, len, dev) tuples.");

    // ---- transfers --------------------------------------------------------------
    c.def(
        "prepare",
        [](self_t& s, py::handle op, py::handle local, py::handle remote, ferry::peer p, const std::string& path,
           bool coalesce) {
            auto& b = s.get("prepare");
            const ferry::xfer_op o = op_arg(op);
            std::vector<ferry::desc> l, r;
            try {
                l = descs_from(local, "local");
                r = descs_from(remote, "remote");
            } catch (const std::invalid_argument& e) {
                throw std::invalid_argument(std::string("prepare: ") + e.what());
            }
            ferry::xfer_options options;
            options.path = path_arg(path);
            options.coalesce = coalesce;
            return b.prepare(o, l, r, p, options);
        },
        py::arg("op"), py::arg("local"), py::arg("remote"), py::arg("peer"), py::arg("path") = "auto",
        py::arg("coalesce") = true,
        "Validates and prepares a transfer: `local` and `remote` are lists of (addr, len, dev) or numpy arrays of "
        "shape (N, 3). Raises ferry.Error naming the first bad descriptor.");
    c.def(
        "post",
        [](self_t& s, ferry::xfer x, py::handle notif, std::optional<double> timeout) {
            auto& b = s.get("post");
            if (notif.is_none() && !timeout) return b.post(x);
            const std::string msg = notif.is_none() ? std::string() : message_arg(notif);
            return timeout ? b.post(x, msg, seconds_arg(timeout, "post: timeout")) : b.post(x, msg);
        },
        py::arg("xfer"), py::arg("notif") = py::none(), py::arg("timeout") = py::none(),
        "Starts the transfer, with a notification the peer gets after the data; returns a Status.");
    c.def(
        "check", [](self_t& s, ferry::xfer x) { return s.get("check").check(x); }, py::arg("xfer"));
    c.def(
        "wait",
        [](self_t& s, ferry::xfer x, std::optional<double> timeout) {
            auto& b = s.get("wait");
            const auto t = seconds_arg(timeout, "wait: timeout");
            py::gil_scoped_release unlocked;
            return b.wait(x, t);
        },
        py::arg("xfer"), py::arg("timeout") = py::none(),
        "Waits, without the GIL, until the transfer is no longer in progress or `timeout` seconds pass.");
    c.def(
        "release", [](self_t& s, ferry::xfer x) { return s.get("release").release(x); }, py::arg("xfer"));
    c.def(
        "path_of", [](self_t& s, ferry::xfer x) { return std::string(ferry::to_string(s.get("path_of").path_of(x))); },
        py::arg("xfer"));
    c.def(
        "blocks_of", [](self_t& s, ferry::xfer x) { return s.get("blocks_of").blocks_of(x); }, py::arg("xfer"));
    c.def("progress", [](self_t& s) { return s.get("progress").progress(); });

    // ---- notifications --------------------------------------------------------
    c.def(
        "send_notif",
        [](self_t& s, ferry::peer p, py::handle msg) { return s.get("send_notif").send_notif(p, message_arg(msg)); },
        py::arg("peer"), py::arg("msg"));
    c.def(
        "poll_notifs",
        [](self_t& s) {
            py::list out;
            s.get("poll_notifs").poll_notifs([&](std::string_view from, std::string_view msg) {
                out.append(py::make_tuple(name_of(from), py::bytes(msg.data(), msg.size())));
            });
            return out;
        },
        "The notifications that arrived, oldest first, as (sender, bytes) pairs.");
    c.def(
        "take_notifs",
        [](self_t& s) {
            py::dict out;
            s.get("take_notifs").poll_notifs([&](std::string_view from, std::string_view msg) {
                py::str key = name_of(from);
                if (!out.contains(key)) out[key] = py::list();
                out[key].cast<py::list>().append(py::bytes(msg.data(), msg.size()));
            });
            return out;
        },
        "The notifications that arrived, as {sender: [bytes, ...]}.");
    c.def(
        "wait_notifs",
        [](self_t& s, std::optional<double> timeout) {
            auto& b = s.get("wait_notifs");
            const auto t = seconds_arg(timeout, "wait_notifs: timeout");
            py::gil_scoped_release unlocked;
            return b.wait_notifs(t);
        },
        py::arg("timeout") = py::none(),
        "Waits, without the GIL, until a notification (or a peer event) is there; False after `timeout` seconds.");
    c.def_property_readonly("dropped_notifs", [](self_t& s) { return s.get("dropped_notifs").dropped_notifs(); });

    // ---- for the overhead benchmark: the same loops in C++ ---------------------
    c.def(
        "_post_check_loop",
        [](self_t& s, ferry::xfer x, std::size_t n) {
            auto& b = s.get("_post_check_loop");
            py::gil_scoped_release unlocked;
            const auto t0 = std::chrono::steady_clock::now();
            for (std::size_t i = 0; i < n; ++i) {
                auto st = b.post(x);
                while (st == ferry::status::in_progress) st = b.check(x);
                if (st != ferry::status::ok) throw ferry::error(st, "_post_check_loop: a transfer failed");
            }
            return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        },
        py::arg("xfer"), py::arg("n"));
    c.def(
        "_prepare_timed",
        [](self_t& s, py::handle op, py::handle local, py::handle remote, ferry::peer p) {
            auto& b = s.get("_prepare_timed");
            const ferry::xfer_op o = op_arg(op);
            const auto l = descs_from(local, "local");
            const auto r = descs_from(remote, "remote");
            const auto t0 = std::chrono::steady_clock::now();
            const ferry::xfer x = b.prepare(o, l, r, p);
            return py::make_tuple(x, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        },
        py::arg("op"), py::arg("local"), py::arg("remote"), py::arg("peer"));
}

}  // namespace ferry_python
