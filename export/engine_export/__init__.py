"""Export: the DiT as ONNX graphs with an explicit KV cache, TensorRT engines, a manifest.

- :mod:`engine_export.onnx`     -- step / block / context graphs, :func:`export_model` (a folder).
- :mod:`engine_export.manifest` -- the versioned JSON manifest: schema, validation, loading.
- :mod:`engine_export.runtime`  -- ONNX Runtime runner; :mod:`engine_export.trt` -- TensorRT build + runner.
- :mod:`engine_export.model`    -- :class:`~engine_export.model.ExportedDiT`, the exported graphs as a model.
- :mod:`engine_export.host`     -- the native (C++) host's Python face.

``python -m engine_export onnx --model tiny --out DIR`` writes a folder; ``engine.load_model(DIR)``
serves it as a model backend (:class:`engine_export.model.ExportedDiT`).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "export_model": "engine_export.onnx",
    "Bucket": "engine_export.onnx",
    "load_manifest": "engine_export.manifest",
    "Manifest": "engine_export.manifest",
    "ManifestError": "engine_export.manifest",
    "build_engines": "engine_export.trt",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine_export' has no attribute {name!r}")
