#pragma once

// ferry.Error and one subclass per status, raised with the C++ message and
// carrying `status` (ferry.Status) and `ucx_status` (UCX's code, 0 if none).
#include "status_enum.hpp"

#include <ferry/status.hpp>

#include <pybind11/pybind11.h>

#include <array>
#include <stdexcept>
#include <string>
#include <utility>

namespace ferry_python {

namespace py = pybind11;

struct error_classes {
    PyObject* base = nullptr;
    // Indexed by -status (1..10); [0] unused.
    std::array<PyObject*, 11> by_status{};

    [[nodiscard]] PyObject* of(ferry::status s) const noexcept {
        const int i = -static_cast<int>(s);
        return i > 0 && i < static_cast<int>(by_status.size()) && by_status[static_cast<std::size_t>(i)]
                   ? by_status[static_cast<std::size_t>(i)]
                   : base;
    }
};

inline error_classes& errors() {
    static error_classes e;
    return e;
}

/// Raises the class of `s` with `what`, `status` and `ucx_status` set.
inline void raise(ferry::status s, const std::string& what, int ucx_status) {
    PyObject* cls = errors().of(s);
    py::object instance = py::reinterpret_steal<py::object>(PyObject_CallFunction(cls, "s", what.c_str()));
    if (!instance) return;  // the call set its own exception
    instance.attr("status") = py::cast(s);
    instance.attr("ucx_status") = ucx_status;
    PyErr_SetObject(cls, instance.ptr());
}

/// The exception classes, in module `m`; C++ errors turn into them.
inline void register_errors(py::module_& m) {
    auto& e = errors();
    e.base = PyErr_NewExceptionWithDoc("ferry.Error",
                                       "A ferry call failed. `status` is a ferry.Status, `ucx_status` UCX's "
                                       "code (0 if UCX was not involved); str() is ferry's message.",
                                       PyExc_RuntimeError, nullptr);
    m.attr("Error") = py::handle(e.base);
    const std::array<std::pair<ferry::status, const char*>, 10> names{{
        {ferry::status::invalid_argument, "InvalidArgumentError"},
        {ferry::status::not_registered, "NotRegisteredError"},
        {ferry::status::no_such_peer, "NoSuchPeerError"},
        {ferry::status::busy, "BusyError"},
        {ferry::status::canceled, "CanceledError"},
        {ferry::status::peer_failed, "PeerFailedError"},
        {ferry::status::ucx_error, "UcxError"},
        {ferry::status::timed_out, "TimedOutError"},
        {ferry::status::no_memory, "NoMemoryError"},
        {ferry::status::device_error, "DeviceError"},
    }};
    for (const auto& [s, name] : names) {
        const std::string qualified = std::string("ferry.") + name;
        PyObject* cls = PyErr_NewException(qualified.c_str(), e.base, nullptr);
        e.by_status[static_cast<std::size_t>(-static_cast<int>(s))] = cls;
        m.attr(name) = py::handle(cls);
    }
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const ferry::error& err) {
            raise(err.code_status(), err.what(), err.ucx_status());
        } catch (const std::invalid_argument& err) {
            // The module's own checks of what Python handed it.
            raise(ferry::status::invalid_argument, err.what(), 0);
        }
    });
}

}  // namespace ferry_python
