"""The embedded default model ``tiny``: a Wan DiT and an ``AutoencoderKLWan`` trained on
the procedural driving world (:mod:`engine.world`), shipped as package data.

Layout of ``engine/assets/tiny/`` (a pipeline root the loaders read like any other):

- ``model_index.json``: what the folder is, the model's default sampler (``engine_sampler``),
  its default size (``engine_size`` = [height, width]) and the seed of its text encoder;
- ``transformer/``: ``config.json`` (original-Wan keys) + ``model.safetensors``
  (``python -m engine.world.train_dit``);
- ``vae/``: a diffusers ``AutoencoderKLWan`` folder (``python -m engine.world.train_vae``).

The text encoder is not stored: it is :func:`engine.models.text.make_tiny_text_encoder`
with the seed in ``model_index.json`` (the DiT was trained on its embeddings), rebuilt
bit-identically from that seed on every machine.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import SamplerConfig

__all__ = ["TINY_ROOT", "tiny_root", "is_embedded_root", "embedded_info", "embedded_sampler", "embedded_size"]

#: Where the embedded model lives inside the installed package.
TINY_ROOT = Path(__file__).resolve().parent / "assets" / "tiny"
_KIND = "engine-embedded-world-model"


def tiny_root() -> Path:
    """The folder of the embedded ``tiny`` model; a FileNotFoundError naming the missing
    file (and how to rebuild it) when the package data is incomplete."""
    for rel in ("model_index.json", "transformer/config.json", "transformer/model.safetensors", "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors"):
        if not (TINY_ROOT / rel).is_file():
            raise FileNotFoundError(
                f"the embedded tiny model is incomplete: {TINY_ROOT / rel} is missing (package data not installed?). "
                f"Reinstall the package (pip install -e .), or use the random-weight preset 'tiny-random'")
    return TINY_ROOT


def embedded_info(root) -> dict | None:
    """The ``model_index.json`` of an embedded-model root (or one of its component
    folders), or None when ``root`` is not one."""
    if root is None:
        return None
    for cand in (Path(root), Path(root).parent):
        try:
            info = json.loads((cand / "model_index.json").read_text())
        except (OSError, ValueError):
            continue
        return info if info.get("_class_name") == _KIND else None
    return None


def is_embedded_root(root) -> bool:
    """Whether ``root`` (a path or None) is an embedded-model folder (or inside one)."""
    return embedded_info(root) is not None


def embedded_sampler(source) -> SamplerConfig | None:
    """The default sampler of the embedded model a model was loaded from (``source``: its
    ``.source`` path, or None), as its ``model_index.json`` says (the sampler it was
    trained and evaluated with); None for any other model."""
    info = embedded_info(source)
    if info is None or "engine_sampler" not in info:
        return None
    fields = dict(info["engine_sampler"])
    if fields.get("timesteps") is not None:
        fields["timesteps"] = tuple(float(t) for t in fields["timesteps"])
    return SamplerConfig(**fields)


def embedded_size(source) -> tuple[int, int] | None:
    """(height, width) the embedded model loaded from ``source`` (a path or None) was
    trained at, or None for any other model."""
    info = embedded_info(source)
    if info is None or "engine_size" not in info:
        return None
    h, w = info["engine_size"]
    return int(h), int(w)
