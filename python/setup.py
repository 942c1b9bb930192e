"""Builds ferry._ferry for pip: the same sources and flags as python/CMakeLists.txt.

UCX comes from pkg-config (`ucx`); CUDA memory is compiled in where the CUDA
toolkit is found (CUDA_HOME, else /usr/local/cuda) unless FERRY_CUDA=0.
"""
import os
import shlex
import subprocess
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

here = Path(__file__).resolve().parent
root = here.parent


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args, "ucx"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"ferry: pkg-config cannot find UCX ({e}); install libucx-dev or set PKG_CONFIG_PATH")
    return shlex.split(out)


cflags, libs = pkg_config("--cflags"), pkg_config("--libs")
macros, extra_link = [], []
cuda_home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
if os.environ.get("FERRY_CUDA", "1") != "0" and (cuda_home / "include" / "cuda_runtime_api.h").exists():
    macros.append(("FERRY_PYTHON_CUDA", None))
    cflags.append(f"-I{cuda_home / 'include'}")
    libdir = cuda_home / "lib64"
    extra_link += [f"-L{libdir}", "-lcudart_static", str(libdir / "libnvrtc.so"), "-ldl", "-lrt", "-lpthread"]

setup(
    packages=["ferry"],
    ext_modules=[
        Pybind11Extension(
            "ferry._ferry",
            [str(Path("src") / "module.cpp")],
            include_dirs=[str(root / "include")],
            define_macros=macros,
            cxx_std=20,
            extra_compile_args=[f for f in cflags if f.startswith(("-I", "-D"))],
            extra_link_args=[f for f in libs if f.startswith(("-L", "-l", "-Wl"))] + extra_link,
        )
    ],
)
