"""Builds the native host extension ``engine_export._native`` (C++17, pybind11) as part of the
normal install (``pip install -e .``); everything else is configured in pyproject.toml.

The TensorRT backend of the host is compiled in only where TensorRT's and CUDA's headers
and libraries are found (``TENSORRT_ROOT`` / ``CUDA_HOME`` or the usual system paths);
elsewhere the host builds with its callback backend only.
"""

import os
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


def _tensorrt() -> dict | None:
    roots = [os.environ.get("TENSORRT_ROOT"), "/usr", "/usr/local/tensorrt", "/opt/tensorrt"]
    cuda = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    for r in filter(None, roots):
        inc = [Path(r) / "include", Path(r) / "include" / "x86_64-linux-gnu"]
        hdr = next((i for i in inc if (i / "NvInfer.h").exists()), None)
        if hdr is None:
            continue
        for c in filter(None, cuda):
            if (Path(c) / "include" / "cuda_runtime_api.h").exists():
                libs = [str(Path(r) / "lib"), str(Path(r) / "lib" / "x86_64-linux-gnu"), str(Path(c) / "lib64")]
                return {"include_dirs": [str(hdr), str(Path(c) / "include")], "library_dirs": libs,
                        "libraries": ["nvinfer", "cudart"], "define_macros": [("WE_WITH_TENSORRT", "1")]}
    return None


trt = None if os.environ.get("WORLDENGINE_NO_TENSORRT") else _tensorrt()
sources = ["csrc/module.cpp", "csrc/host.cpp"] + (["csrc/trt_backend.cpp"] if trt else [])
ext = Pybind11Extension(
    "engine_export._native",
    sorted(sources),
    include_dirs=["csrc"] + (trt["include_dirs"] if trt else []),
    library_dirs=trt["library_dirs"] if trt else [],
    libraries=trt["libraries"] if trt else [],
    define_macros=trt["define_macros"] if trt else [],
    cxx_std=17,
    # The sampler's float32 arithmetic must round like torch's separate elementwise ops.
    extra_compile_args=["-O2", "-ffp-contract=off"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
