#pragma once

// ferry.Listener (metadata_listener: serves our blob, keeps what peers push
// or invalidate) and ferry.fetch_metadata / ferry.push_metadata /
// ferry.invalidate_metadata, its client calls. Blobs
// are bytes; every wait lets the GIL go.
#include <ferry/directory/client.hpp>
#include <ferry/directory/listener.hpp>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ferry_python {

namespace py = pybind11;

inline py::bytes bytes_of(const std::vector<std::byte>& blob) {
    return {reinterpret_cast<const char*>(blob.data()), blob.size()};
}

inline std::span<const std::byte> span_of(const std::string_view& v) {
    return std::as_bytes(std::span(v.data(), v.size()));
}

inline void bind_listener(py::module_& m) {
    py::class_<ferry::metadata_listener>(m, "Listener",
                                         "ferry's metadata listener: serves the blob it publishes to fetch_metadata "
                                         "and keeps, by agent name, the blobs push_metadata sends it.")
        .def(py::init([](const std::string& bind, std::uint16_t port) {
                 ferry::listener_config cfg;
                 cfg.bind_address = bind;
                 cfg.port = port;
                 py::gil_scoped_release unlocked;
                 return std::make_unique<ferry::metadata_listener>(cfg);
             }),
             py::arg("bind") = "127.0.0.1", py::arg("port") = 0)
        .def_property_readonly("port", &ferry::metadata_listener::port)
        .def(
            "publish",
            [](ferry::metadata_listener& l, py::bytes blob) {
                const std::string_view v = blob;
                l.publish(span_of(v));
            },
            py::arg("blob"))
        .def("unpublish", &ferry::metadata_listener::unpublish)
        .def(
            "pushed",
            [](const ferry::metadata_listener& l, const std::string& name) -> std::optional<py::bytes> {
                auto blob = l.pushed(name);
                if (!blob) return std::nullopt;
                return bytes_of(*blob);
            },
            py::arg("name"), "The blob the agent `name` pushed, or None.")
        .def(
            "forget", [](ferry::metadata_listener& l, const std::string& name) { return l.forget(name); },
            py::arg("name"))
        .def(
            "take_invalidations",
            [](ferry::metadata_listener& l) {
                py::list out;
                for (const auto& name : l.take_invalidations()) {
                    // Anyone may send any bytes: a name that is not UTF-8 names no Python agent (their
                    // names are str), and must not make this call raise.
                    PyObject* text = PyUnicode_DecodeUTF8(name.data(), static_cast<Py_ssize_t>(name.size()), nullptr);
                    if (!text) {
                        PyErr_Clear();
                        continue;
                    }
                    out.append(py::reinterpret_steal<py::str>(text));
                }
                return out;
            },
            "The agents that invalidated their metadata here since the last call, each once; their pushed "
            "blobs are already gone. Names that are not UTF-8 are left out.");
    m.def(
        "fetch_metadata",
        [](const std::string& host, std::uint16_t port, double timeout) {
            std::vector<std::byte> blob;
            {
                py::gil_scoped_release unlocked;
                blob = ferry::fetch_metadata(host, port, std::chrono::milliseconds(static_cast<long>(timeout * 1000)));
            }
            return bytes_of(blob);
        },
        py::arg("host"), py::arg("port"), py::arg("timeout") = 5.0,
        "The blob the listener at host:port publishes, validated.");
    m.def(
        "push_metadata",
        [](const std::string& host, std::uint16_t port, py::bytes blob, double timeout) {
            const std::string copy = blob;
            py::gil_scoped_release unlocked;
            ferry::push_metadata(host, port, span_of(copy), std::chrono::milliseconds(static_cast<long>(timeout * 1000)));
        },
        py::arg("host"), py::arg("port"), py::arg("blob"), py::arg("timeout") = 5.0,
        "Sends our blob to the listener at host:port, which keeps it under our agent name.");
    m.def(
        "invalidate_metadata",
        [](const std::string& host, std::uint16_t port, const std::string& name, double timeout) {
            py::gil_scoped_release unlocked;
            ferry::invalidate_metadata(host, port, name, std::chrono::milliseconds(static_cast<long>(timeout * 1000)));
        },
        py::arg("host"), py::arg("port"), py::arg("name"), py::arg("timeout") = 5.0,
        "Tells the listener at host:port that agent `name`'s metadata is no longer valid: it drops what `name` "
        "pushed, and its owner unloads `name`.");
}

}  // namespace ferry_python
