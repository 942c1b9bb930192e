#pragma once

// What a Python object's memory is, without copying it: the buffer protocol
// (numpy, bytearray, mmap), __cuda_array_interface__ (CuPy, torch on CUDA,
// numba) or DLPack (torch, JAX, numpy). A `held_memory` keeps the exporter's
// promise that the memory stays put until it is destroyed.
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ferry_python {

namespace py = pybind11;

struct held_memory {
    void* ptr = nullptr;
    std::size_t len = 0;
    bool device = false;  // CUDA device memory: no host view
    int device_id = 0;    // the CUDA device, for device memory
    std::function<void()> release;  // runs under the GIL

    held_memory() = default;
    held_memory(const held_memory&) = delete;
    held_memory& operator=(const held_memory&) = delete;
    ~held_memory() {
        if (release) release();
    }
};

namespace detail {

// DLPack's ABI (dlpack.h, version 0.x "dltensor" capsules), as the exporter lays it out.
struct dl_device {
    std::int32_t device_type;
    std::int32_t device_id;
};
struct dl_data_type {
    std::uint8_t code;
    std::uint8_t bits;
    std::uint16_t lanes;
};
struct dl_tensor {
    void* data;
    dl_device device;
    std::int32_t ndim;
    dl_data_type dtype;
    std::int64_t* shape;
    std::int64_t* strides;
    std::uint64_t byte_offset;
};
struct dl_managed_tensor {
    dl_tensor dl_tensor_;
    void* manager_ctx;
    void (*deleter)(dl_managed_tensor*);
};
constexpr std::int32_t dl_cpu = 1, dl_cuda = 2, dl_cuda_host = 3;

inline std::size_t checked_product(const std::int64_t* shape, std::int32_t ndim, std::size_t item,
                                   const std::string& what) {
    std::size_t n = item;
    for (std::int32_t i = 0; i < ndim; ++i) {
        if (shape[i] < 0) throw std::invalid_argument(what + ": a negative dimension");
        const auto d = static_cast<std::size_t>(shape[i]);
        if (d != 0 && n > SIZE_MAX / d) throw std::invalid_argument(what + ": the size overflows");
        n *= d;
    }
    return n;
}

// Whether `strides` (in elements) describe a C-contiguous layout of `shape`.
inline bool c_contiguous(const std::int64_t* shape, const std::int64_t* strides, std::int32_t ndim) {
    std::int64_t want = 1;
    for (std::int32_t i = ndim - 1; i >= 0; --i) {
        if (shape[i] != 1 && strides[i] != want) return false;
        want *= shape[i];
    }
    return true;
}

inline bool from_buffer(py::handle obj, held_memory& out) {
    if (!PyObject_CheckBuffer(obj.ptr())) return false;
    auto* view = new Py_buffer{};
    if (PyObject_GetBuffer(obj.ptr(), view, PyBUF_CONTIG) != 0) {
        PyErr_Clear();
        const bool read_only = PyObject_GetBuffer(obj.ptr(), view, PyBUF_CONTIG_RO) == 0;
        if (read_only) PyBuffer_Release(view);
        else PyErr_Clear();
        delete view;
        throw std::invalid_argument(read_only ? "the buffer is read-only (a peer may write into registered memory): "
                                                "pass a writable one, such as a bytearray or a numpy array"
                                              : "the buffer is not C-contiguous");
    }
    out.ptr = view->buf;
    out.len = static_cast<std::size_t>(view->len);
    out.release = [view] {
        PyBuffer_Release(view);
        delete view;
    };
    return true;
}

inline bool from_cuda_array_interface(py::handle obj, held_memory& out) {
    if (!py::hasattr(obj, "__cuda_array_interface__")) return false;
    const std::string what = "__cuda_array_interface__";
    py::dict cai = obj.attr("__cuda_array_interface__");
    py::tuple data = cai["data"];
    if (data[1].cast<bool>()) throw std::invalid_argument(what + ": the array is read-only");
    const auto typestr = cai["typestr"].cast<std::string>();
    if (typestr.size() < 3) throw std::invalid_argument(what + ": typestr '" + typestr + "'");
    const std::size_t item = std::stoul(typestr.substr(2));
    py::tuple shape_t = cai["shape"];
    std::vector<std::int64_t> shape;
    for (auto d : shape_t) shape.push_back(d.cast<std::int64_t>());
    const auto ndim = static_cast<std::int32_t>(shape.size());
    if (cai.contains("strides") && !cai["strides"].is_none()) {
        std::vector<std::int64_t> strides;
        for (auto s : cai["strides"].cast<py::tuple>()) {
            const auto bytes = s.cast<std::int64_t>();
            if (bytes % static_cast<std::int64_t>(item) != 0) throw std::invalid_argument(what + ": odd strides");
            strides.push_back(bytes / static_cast<std::int64_t>(item));
        }
        if (!c_contiguous(shape.data(), strides.data(), ndim))
            throw std::invalid_argument(what + ": the array is not C-contiguous");
    }
    out.ptr = reinterpret_cast<void*>(data[0].cast<std::uintptr_t>());
    out.len = checked_product(shape.data(), ndim, item, what);
    out.device = true;
    out.device_id = -1;  // found from the pointer by the caller
    auto keep = new py::object(py::reinterpret_borrow<py::object>(obj));
    out.release = [keep] { delete keep; };
    return true;
}

inline bool from_dlpack(py::handle obj, held_memory& out) {
    if (!py::hasattr(obj, "__dlpack__")) return false;
    const std::string what = "__dlpack__";
    py::object capsule = obj.attr("__dlpack__")();
    if (!PyCapsule_IsValid(capsule.ptr(), "dltensor"))
        throw std::invalid_argument(what + ": not an unused 'dltensor' capsule");
    auto* m = static_cast<dl_managed_tensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
    const dl_tensor& t = m->dl_tensor_;
    auto drop = [m] {
        if (m->deleter) m->deleter(m);
    };
    // Taken: the capsule must not free it too.
    PyCapsule_SetName(capsule.ptr(), "used_dltensor");
    try {
        if (t.device.device_type != dl_cpu && t.device.device_type != dl_cuda &&
            t.device.device_type != dl_cuda_host)
            throw std::invalid_argument(what + ": device type " + std::to_string(t.device.device_type) +
                                        " is neither CPU nor CUDA");
        if (t.dtype.bits % 8 != 0) throw std::invalid_argument(what + ": elements of less than a byte");
        const std::size_t item = static_cast<std::size_t>(t.dtype.bits / 8) * (t.dtype.lanes ? t.dtype.lanes : 1);
        if (t.strides && !c_contiguous(t.shape, t.strides, t.ndim))
            throw std::invalid_argument(what + ": the tensor is not C-contiguous");
        out.ptr = static_cast<char*>(t.data) + t.byte_offset;
        out.len = checked_product(t.shape, t.ndim, item, what);
        out.device = t.device.device_type == dl_cuda;
        out.device_id = t.device.device_id;
    } catch (...) {
        drop();
        throw;
    }
    out.release = drop;
    return true;
}

}  // namespace detail

/// The memory of `obj`, held until the result is destroyed. Throws
/// std::invalid_argument, naming what is wrong, for anything else.
inline std::unique_ptr<held_memory> hold(py::handle obj) {
    auto out = std::make_unique<held_memory>();
    if (detail::from_buffer(obj, *out) || detail::from_cuda_array_interface(obj, *out) ||
        detail::from_dlpack(obj, *out)) {
        if (out->len == 0) throw std::invalid_argument("the buffer is empty");
        return out;
    }
    throw std::invalid_argument("expected an object with the buffer protocol, __cuda_array_interface__ or "
                                "__dlpack__ (a numpy array, bytearray, mmap, torch or CuPy tensor), got " +
                                py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>());
}

}  // namespace ferry_python
