"""Runners: execute one exported graph on named torch tensors.

``OrtRunner`` (ONNX Runtime, CPU or CUDA execution provider) and, in :mod:`engine_export.trt`,
``TrtRunner`` share one call: ``runner(feeds: dict[str, Tensor]) -> dict[str, Tensor]``
with the manifest's I/O names. Shapes and dtypes are checked against the manifest before
the call, so a wrong input fails with the tensor's name instead of deep inside a runtime.
"""

from __future__ import annotations

import numpy as np
import torch

from .manifest import Manifest

_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "bool": np.bool_}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "int64": torch.int64, "bool": torch.bool}


def check_feeds(graph: dict, feeds: dict[str, torch.Tensor]) -> None:
    """Raise ValueError unless ``feeds`` holds exactly the graph's inputs with the declared
    shapes and dtypes."""
    want = {t["name"]: t for t in graph["inputs"]}
    if set(feeds) != set(want):
        raise ValueError(f"graph {graph['name']!r} takes inputs {sorted(want)}, got {sorted(feeds)}")
    for name, t in feeds.items():
        spec = want[name]
        if list(t.shape) != list(spec["shape"]) or t.dtype != TORCH_DTYPES[spec["dtype"]]:
            raise ValueError(
                f"graph {graph['name']!r} input {name!r} must be {spec['dtype']} {spec['shape']}, "
                f"got {str(t.dtype).replace('torch.', '')} {list(t.shape)}"
            )


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OrtRunner:
    """One graph in an ONNX Runtime session (CPU unless ``providers`` say otherwise)."""

    def __init__(self, manifest: Manifest, graph: dict, *, providers=None, threads: int | None = None):
        import onnxruntime as ort

        self.graph = graph
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(manifest.path(graph)), opts,
                                            providers=providers or ["CPUExecutionProvider"])
        self.output_names = [o["name"] for o in graph["outputs"]]

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_feeds(self.graph, feeds)
        np_feeds = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in feeds.items()}
        outs = self.session.run(self.output_names, np_feeds)
        return {k: torch.from_numpy(v) for k, v in zip(self.output_names, outs)}


__all__ = ["OrtRunner", "check_feeds", "ort_available", "TORCH_DTYPES"]
