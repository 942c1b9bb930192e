#pragma once

// ferry.Status as a Python IntEnum whose members C++ hands out as they are:
// returning a status costs a reference count, not a new object, and
// `s == ferry.Status.IN_PROGRESS` (or `is`) compares ints. post and check
// return one per call, so this is most of what a call costs beyond itself.
#include <ferry/status.hpp>

#include <pybind11/pybind11.h>

#include <array>
#include <cstddef>
#include <utility>

namespace ferry_python {

namespace py = pybind11;

inline constexpr int lowest_status = -10;  // device_error

inline std::array<PyObject*, 12>& status_members() {
    static std::array<PyObject*, 12> members{};
    return members;
}

/// Creates ferry.Status in `m`. Its members live as long as the interpreter.
inline void register_status(py::module_& m) {
    static constexpr std::array<std::pair<const char*, ferry::status>, 12> names{{
        {"OK", ferry::status::ok},
        {"IN_PROGRESS", ferry::status::in_progress},
        {"INVALID_ARGUMENT", ferry::status::invalid_argument},
        {"NOT_REGISTERED", ferry::status::not_registered},
        {"NO_SUCH_PEER", ferry::status::no_such_peer},
        {"BUSY", ferry::status::busy},
        {"CANCELED", ferry::status::canceled},
        {"PEER_FAILED", ferry::status::peer_failed},
        {"UCX_ERROR", ferry::status::ucx_error},
        {"TIMED_OUT", ferry::status::timed_out},
        {"NO_MEMORY", ferry::status::no_memory},
        {"DEVICE_ERROR", ferry::status::device_error},
    }};
    py::list members;
    for (const auto& [name, s] : names) members.append(py::make_tuple(name, static_cast<int>(s)));
    py::object cls = py::module_::import("enum").attr("IntEnum")("Status", members, py::arg("module") = "ferry");
    cls.attr("__doc__") = "What a ferry call returned: OK, IN_PROGRESS, or an error (negative).";
    for (const auto& [name, s] : names)
        status_members()[static_cast<std::size_t>(static_cast<int>(s) - lowest_status)] = py::object(cls.attr(name)).release().ptr();
    m.attr("Status") = cls;
}

}  // namespace ferry_python

namespace pybind11::detail {

template <>
struct type_caster<ferry::status> {
    PYBIND11_TYPE_CASTER(ferry::status, const_name("ferry.Status"));

    bool load(handle src, bool) {
        if (!PyLong_Check(src.ptr())) return false;
        const long v = PyLong_AsLong(src.ptr());
        if (v < ferry_python::lowest_status || v > 1) {
            PyErr_Clear();
            return false;
        }
        value = static_cast<ferry::status>(v);
        return true;
    }

    static handle cast(ferry::status s, return_value_policy, handle) {
        const int i = static_cast<int>(s) - ferry_python::lowest_status;
        PyObject* o = i >= 0 && i < 12 ? ferry_python::status_members()[static_cast<std::size_t>(i)] : nullptr;
        if (!o) return PyLong_FromLong(static_cast<long>(s));
        Py_INCREF(o);
        return o;
    }
};

}  // namespace pybind11::detail
