"""Test-suite set-up: Triton's CPU interpreter where there is no GPU, tests/ on sys.path
(tests import `helpers`), and the `gpu` lane skipped where no CUDA device is visible."""

import os
import sys
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is defined: set it before anything (diffusers,
# transformers, the kernels package) imports triton, so CPU runs use the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The runtime's default torch threads per worker is a share of the cores (engine.runtime.
# default_cpu_threads): float results would then depend on the worker count and on the
# machine's cores. The suite compares runs across worker counts bit for bit and records
# golden videos at one thread per worker, so it fixes the count (tests/test_cpu_threads.py
# checks the default itself with the variable unset). Subprocesses inherit it.
os.environ.setdefault("ENGINE_CPU_THREADS", "1")

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (bfloat16 numerics / speed): run `pytest -m gpu` on a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
