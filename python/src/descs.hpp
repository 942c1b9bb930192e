#pragma once

// Descriptor lists from Python in one call: a numpy array of shape (N, 3)
// (addr, len, dev) or (N, 2) (addr, len; device 0), read without a Python
// call per row, or any sequence of (addr, len[, dev]) tuples.
#include <ferry/desc.hpp>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace ferry_python {

namespace py = pybind11;

inline std::vector<ferry::desc> descs_from(py::handle list, const char* which) {
    const std::string name = which;
    std::vector<ferry::desc> out;
    if (py::isinstance<py::array>(list)) {
        auto a = py::reinterpret_borrow<py::array>(list);
        if (a.dtype().kind() != 'u' && a.dtype().kind() != 'i')
            throw std::invalid_argument(name + ": a descriptor array must hold integers, not dtype " +
                                        py::str(a.dtype()).cast<std::string>());
        if (a.ndim() != 2 || (a.shape(1) != 3 && a.shape(1) != 2))
            throw std::invalid_argument(name + ": a descriptor array must have shape (N, 3) (addr, len, dev) or "
                                               "(N, 2) (addr, len)");
        auto rows = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>::ensure(a);
        if (!rows) throw py::error_already_set();
        const auto n = static_cast<std::size_t>(rows.shape(0));
        const auto width = static_cast<std::size_t>(rows.shape(1));
        const std::uint64_t* p = rows.data();
        // One pass: reserve, not resize, so the list is written once.
        out.reserve(n);
        for (std::size_t i = 0; i < n; ++i, p += width) {
            if (width == 3 && p[2] > UINT32_MAX)
                throw std::invalid_argument(name + "[" + std::to_string(i) + "]: device " + std::to_string(p[2]) +
                                            " is out of range");
            out.push_back({static_cast<std::uintptr_t>(p[0]), static_cast<std::size_t>(p[1]),
                           width == 3 ? static_cast<std::uint32_t>(p[2]) : 0U});
        }
        return out;
    }
    if (!py::isinstance<py::sequence>(list) || py::isinstance<py::str>(list) || py::isinstance<py::bytes>(list))
        throw std::invalid_argument(name + ": expected a list of (addr, len, dev) tuples or an (N, 3) numpy array");
    auto seq = py::reinterpret_borrow<py::sequence>(list);
    out.reserve(seq.size());
    std::size_t i = 0;
    for (auto item : seq) {
        const std::string at = name + "[" + std::to_string(i) + "]";
        if (!py::isinstance<py::sequence>(item) || py::isinstance<py::str>(item))
            throw std::invalid_argument(at + ": expected a tuple (addr, len, dev)");
        auto t = py::reinterpret_borrow<py::sequence>(item);
        if (t.size() != 2 && t.size() != 3)
            throw std::invalid_argument(at + ": expected (addr, len, dev) or (addr, len), got " +
                                        std::to_string(t.size()) + " items");
        try {
            ferry::desc d;
            d.addr = t[0].cast<std::uintptr_t>();
            d.len = t[1].cast<std::size_t>();
            d.dev = t.size() == 3 ? t[2].cast<std::uint32_t>() : 0;
            out.push_back(d);
        } catch (const py::cast_error&) {
            throw std::invalid_argument(at + ": addr, len and dev must be non-negative integers");
        }
        ++i;
    }
    return out;
}

}  // namespace ferry_python
