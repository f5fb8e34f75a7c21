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
