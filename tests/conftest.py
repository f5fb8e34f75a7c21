"""Test-suite set-up: the repo root on sys.path (tests import `helpers`), and the `gpu`
lane skipped where no CUDA device is visible."""

import sys
from pathlib import Path

import pytest
import torch

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
