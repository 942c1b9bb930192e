// The `ferry._ferry` extension: ucx_backend instantiations (host memory
// with inline progress and with the progress thread; CUDA memory likewise
// where ferry::cuda is built), ferry.Region, Peer, Xfer, Status, Op and the
// ferry.Error hierarchy. python/ferry/__init__.py is the public face.
#include "backend_binding.hpp"
#include "errors.hpp"
#include "listener_binding.hpp"
#include "region.hpp"
#include "status_enum.hpp"

#include <ferry/ferry.hpp>
#include <ferry/version.hpp>

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>

namespace py = pybind11;
using namespace ferry_python;

namespace {

// ucx_config from Backend(...)'s keyword arguments; unknown ones are refused.
ferry::ucx_config config_from(const std::string& name, const py::kwargs& kw) {
    ferry::ucx_config cfg;
    cfg.name = name;
    auto ms = [](py::handle v, const char* what) {
        return std::chrono::duration_cast<std::chrono::milliseconds>(seconds_arg(v.cast<double>(), what));
    };
    for (auto [k, v] : kw) {
        const auto key = k.cast<std::string>();
        if (key == "tls") {
            cfg.ucx_options.emplace_back("TLS", v.cast<std::string>());
        } else if (key == "ucx_options") {
            for (auto [ok, ov] : v.cast<py::dict>())
                cfg.ucx_options.emplace_back(ok.cast<std::string>(), py::str(ov).cast<std::string>());
        } else if (key == "error_handling") {
            const auto mode = v.cast<std::string>();
            if (mode != "peer" && mode != "none")
                throw std::invalid_argument("Backend: error_handling must be 'peer' or 'none', got '" + mode + "'");
            cfg.error_handling = mode == "peer" ? ferry::error_mode::peer : ferry::error_mode::none;
        } else if (key == "keepalive_interval") {
            cfg.keepalive_interval = ms(v, "Backend: keepalive_interval");
        } else if (key == "xfer_timeout") {
            cfg.xfer_timeout = seconds_arg(v.cast<double>(), "Backend: xfer_timeout");
        } else if (key == "close_timeout") {
            cfg.close_timeout = ms(v, "Backend: close_timeout");
        } else if (key == "max_notif_size") {
            cfg.max_notif_size = v.cast<std::size_t>();
        } else if (key == "notif_mailbox") {
            cfg.notif_mailbox = v.cast<bool>();
        } else if (key == "cuda_device") {
            cfg.cuda_device = v.cast<int>();
        } else if (key == "progress_spin") {
            cfg.progress_spin =
                std::chrono::duration_cast<std::chrono::microseconds>(seconds_arg(v.cast<double>(), "progress_spin"));
        } else {
            throw std::invalid_argument("Backend: unknown setting '" + key +
                                        "' (tls, ucx_options, error_handling, keepalive_interval, xfer_timeout, "
                                        "close_timeout, max_notif_size, notif_mailbox, cuda_device, progress_spin)");
        }
    }
    return cfg;
}

// Region's buffer protocol: host memory, writable, one dimension of bytes.
extern "C" int region_getbuffer(PyObject* obj, Py_buffer* view, int flags) {
    view->obj = nullptr;
    const char* why = "the object is not a ferry.Region";
    try {
        auto& r = py::handle(obj).cast<py_region&>();
        if (!r.r) {
            why = "the region is closed";
        } else if (!r.host) {
            why = "the region is CUDA device memory, which has no host view";
        } else {
            const int rc = PyBuffer_FillInfo(view, obj, r.r.data(), static_cast<Py_ssize_t>(r.r.size()), 0, flags);
            if (rc == 0) ++r.exports;
            return rc;
        }
        raise(ferry::status::invalid_argument, why, 0);
    } catch (py::error_already_set& e) {
        e.restore();
    } catch (...) {
        PyErr_SetString(PyExc_BufferError, why);
    }
    return -1;
}

extern "C" void region_releasebuffer(PyObject* obj, Py_buffer*) {
    try {
        auto& r = py::handle(obj).cast<py_region&>();
        if (r.exports > 0) --r.exports;
    } catch (...) {
        PyErr_Clear();
    }
}

template <class B>
void bind_constructor(py::module_& m, const char* factory) {
    m.def(
        factory,
        [](const std::string& name, const py::kwargs& kw) {
            return std::make_shared<py_backend<B>>(config_from(name, kw));
        },
        py::arg("name"));
}

using host_inline = ferry::ucx_backend<ferry::policy<ferry::progress::inline_poll, ferry::memory::host>>;
using host_thread = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::host>>;
#ifdef FERRY_PYTHON_CUDA
using cuda_inline = ferry::ucx_backend<ferry::policy<ferry::progress::inline_poll, ferry::memory::cuda>>;
using cuda_thread = ferry::ucx_backend<ferry::policy<ferry::progress::thread, ferry::memory::cuda>>;
#endif

}  // namespace

PYBIND11_MODULE(_ferry, m) {
    m.doc() = "ferry: descriptor-list READ/WRITE and notifications over UCX";
    m.attr("__version__") = std::to_string(FERRY_VERSION_MAJOR) + "." + std::to_string(FERRY_VERSION_MINOR) + "." +
                            std::to_string(FERRY_VERSION_PATCH);
#ifdef FERRY_PYTHON_CUDA
    m.attr("has_cuda") = true;
#else
    m.attr("has_cuda") = false;
#endif

    register_status(m);
    py::enum_<ferry::xfer_op>(m, "Op").value("READ", ferry::xfer_op::read).value("WRITE", ferry::xfer_op::write);
    register_errors(m);

    py::class_<ferry::peer>(m, "Peer", "A loaded peer (Backend.load).")
        .def("__eq__", [](const ferry::peer& a, const ferry::peer& b) { return a == b; })
        .def("__hash__", [](const ferry::peer& p) { return (std::uint64_t{p.ref.generation} << 32) | p.ref.index; })
        .def("__repr__", [](const ferry::peer& p) {
            return "<ferry.Peer " + std::to_string(p.ref.index) + "." + std::to_string(p.ref.generation) + ">";
        });
    py::class_<ferry::xfer>(m, "Xfer", "A prepared transfer (Backend.prepare), valid until released.")
        .def("__eq__", [](const ferry::xfer& a, const ferry::xfer& b) { return a == b; })
        .def("__hash__", [](const ferry::xfer& x) { return (std::uint64_t{x.ref.generation} << 32) | x.ref.index; })
        .def("__repr__", [](const ferry::xfer& x) {
            return "<ferry.Xfer " + std::to_string(x.ref.index) + "." + std::to_string(x.ref.generation) + ">";
        });

    py::class_<py_region> region_class(m, "Region", py::buffer_protocol(),
                          "Registered memory. Host memory reads and writes through the buffer protocol "
                          "(memoryview(region), numpy.asarray(region)).");
    region_class
        .def_property_readonly("addr", [](const py_region& r) { return reinterpret_cast<std::uintptr_t>(r.r.data()); })
        .def_property_readonly("size", [](const py_region& r) { return r.r.size(); })
        .def_property_readonly("dev", [](const py_region& r) { return r.r.dev(); })
        .def_property_readonly("closed", [](const py_region& r) { return !r.r; })
        .def(
            "slice",
            [](const py_region& r, std::size_t offset, std::size_t len) {
                const auto d = r.r.slice(offset, len);
                return py::make_tuple(d.addr, d.len, d.dev);
            },
            py::arg("offset"), py::arg("length"), "`length` bytes at `offset` as (addr, len, dev).")
        .def("whole", [](const py_region& r) { return py::make_tuple(reinterpret_cast<std::uintptr_t>(r.r.data()), r.r.size(), r.r.dev()); })
        .def("close", &py_region::close,
             "Deregisters the region and lets go of the object's memory; BusyError while transfers use it.")
        .def("__enter__", [](py_region& r) -> py_region& { return r; }, py::return_value_policy::reference)
        .def("__exit__", [](py_region& r, py::args) { r.close(); })
        ;
    // A Python error instead of std::terminate: pybind11 2.10 lets an exception
    // from a def_buffer function escape its C callback, so np.asarray() of a
    // closed or device region would end the process.
    auto* region_type = reinterpret_cast<PyTypeObject*>(region_class.ptr());
    region_type->tp_as_buffer->bf_getbuffer = region_getbuffer;
    region_type->tp_as_buffer->bf_releasebuffer = region_releasebuffer;

    bind_listener(m);

    bind_backend<host_inline>(m, "_HostInline", "host");
    bind_backend<host_thread>(m, "_HostThread", "host");
    bind_constructor<host_inline>(m, "_host_inline");
    bind_constructor<host_thread>(m, "_host_thread");
#ifdef FERRY_PYTHON_CUDA
    bind_backend<cuda_inline>(m, "_CudaInline", "cuda");
    bind_backend<cuda_thread>(m, "_CudaThread", "cuda");
    bind_constructor<cuda_inline>(m, "_cuda_inline");
    bind_constructor<cuda_thread>(m, "_cuda_thread");
#endif
}
