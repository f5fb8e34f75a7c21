"""Kernel tests: make the Triton kernels runnable on a CPU-only machine.

TRITON_INTERPRET must be set before triton is imported (triton reads it when a kernel
is defined), so this runs at conftest import time, before any test imports ``engine_kernels``.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # `pytest tests` from the repo root without an installed package
    sys.path.insert(0, _ROOT)

import engine_kernels  # noqa: E402

CUDA = torch.cuda.is_available()
INTERPRET = engine_kernels.interpreting()
# Triton kernels run on CUDA tensors on a GPU, on CPU tensors in the interpreter.
DEVICE = "cpu" if INTERPRET else ("cuda" if CUDA else "cpu")


def pytest_collection_modifyitems(config, items):
    if CUDA and not INTERPRET:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (bfloat16 numerics / speed)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _fresh_seed():
    """Fresh random inputs on every run, but a reproducible seed printed on failure."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    print(f"torch seed {seed}")  # shown with the captured output of a failing test
    yield seed
