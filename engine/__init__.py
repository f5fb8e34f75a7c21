"""Long-horizon video world-model inference engine.

Public entry points (imported lazily so that light submodules such as
``engine.sampling`` import without pulling in the whole stack):

- :func:`engine.load_model` -- a DiT from a preset name, a checkpoint file or folder.
- :func:`engine.load_longvie` -- LongVie 2 as released: a Wan2.1-I2V base (+ the release's
  ``dit.safetensors`` overlay) with its ``control.safetensors`` (``recipe="longvie2"``).
- :func:`engine.load_decoder` -- a light decoder (TAEHV ``.pth`` / ``.safetensors``) for
  ``generate(decoder=...)``.
- :func:`engine.generate` -- a long video from a model, a prompt and options
  (:func:`engine.stream`: its frames as they come; :func:`engine.plan_for`: the plan it
  would run -- clips, denoise / decode / encode jobs).
- :class:`engine.Video` -- uint8 frames plus fps, ``.save(path)`` writes mp4.
- :class:`engine.ModelConfig`, :class:`engine.SamplerConfig`, :class:`engine.EngineConfig`.
"""

from __future__ import annotations

import importlib

from .version import __version__

_LAZY = {
    "load_model": "engine.loading",
    "load_longvie": "engine.loading",
    "load_decoder": "engine.decoders",
    "generate": "engine.generation",
    "stream": "engine.generation",
    "plan_for": "engine.generation",
    "Video": "engine.video",
    "ModelConfig": "engine.config",
    "SamplerConfig": "engine.config",
    "EngineConfig": "engine.config",
    "PRESETS": "engine.config",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
