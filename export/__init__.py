"""Export: the DiT as ONNX graphs with an explicit KV cache, TensorRT engines, a manifest.

- :mod:`export.onnx`     -- step / block / context graphs, :func:`export_model` (a folder).
- :mod:`export.manifest` -- the versioned JSON manifest: schema, validation, loading.
- :mod:`export.runtime`  -- ONNX Runtime runner; :mod:`export.trt` -- TensorRT build + runner.
- :mod:`export.model`    -- :class:`~export.model.ExportedDiT`, the exported graphs as a model.
- :mod:`export.host`     -- the native (C++) host's Python face.

``python -m export onnx --model tiny --out DIR`` writes a folder; ``engine.load_model(DIR)``
serves it as a model backend (:class:`export.model.ExportedDiT`).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "export_model": "export.onnx",
    "Bucket": "export.onnx",
    "load_manifest": "export.manifest",
    "Manifest": "export.manifest",
    "ManifestError": "export.manifest",
    "build_engines": "export.trt",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
