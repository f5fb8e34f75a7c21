"""Decoders the engine can stream a clip's latents through (``generate(decoder=...)``).

- ``"full"`` (default): the model's own Wan VAE (:class:`engine.models.vae.StreamingDecoder`).
- a TAEHV file (``.pth`` / ``.safetensors`` of github.com/madebyollin/taehv, e.g.
  ``taew2_1.pth`` for Wan2.1) or the name ``"taehv"`` / ``"taew2_1"`` (found at
  ``$ENGINE_TAEHV``, else ``./taew2_1.{pth,safetensors}``, else
  ``~/.cache/engine/taew2_1.{pth,safetensors}``): the tiny decoder, decode only -- encode
  jobs (re-encoded hand-offs, first frames) keep the full VAE, whose latents the DiT
  was trained on.
- a :class:`LightDecoder` from :func:`load_decoder`, or any callable ``vae -> streaming
  decoder`` (``reset()``, ``decode_chunk(latents)``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

__all__ = ["LightDecoder", "load_decoder", "resolve_decoder", "find_taehv", "TAEHV_NAMES"]

#: Names that stand for the Wan2.1 TAEHV weights.
TAEHV_NAMES = ("taehv", "taew2_1")


def find_taehv() -> str:
    """Path of the Wan2.1 TAEHV weights for the name ``"taehv"``; raises naming where it looked."""
    env = os.environ.get("ENGINE_TAEHV")
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"ENGINE_TAEHV={env!r} is not a file: point it at taew2_1.pth")
        return env
    places = [Path.cwd(), Path.home() / ".cache" / "engine"]
    tried = [p / f"taew2_1{ext}" for p in places for ext in (".pth", ".safetensors")]
    for p in tried:
        if p.is_file():
            return str(p)
    raise FileNotFoundError(
        f"decoder 'taehv' needs the TAEHV weights for Wan2.1 (taew2_1.pth from github.com/madebyollin/taehv): "
        f"not found at {[str(p) for p in tried]}; pass decoder=<path to taew2_1.pth>, set ENGINE_TAEHV, or use "
        f"decoder='full'")


class LightDecoder:
    """A loaded TAEHV, usable as ``generate(decoder=...)``: calling it with a VAE gives a
    fresh :class:`~engine.models.taehv.TAEHVStreamingDecoder` on that VAE's device (one
    copy of the weights per device, in ``dtype`` or else the VAE's dtype).

    ``model``: the :class:`~engine.models.taehv.TAEHV`; ``latent_channels``: what it decodes.
    """

    kind = "taehv"

    def __init__(self, model, path: str | None = None, dtype: torch.dtype | None = None):
        self.model = model
        self.path = path
        self.dtype = dtype
        self.latent_channels = model.latent_channels
        self._copies: dict = {}
        self._lock = threading.Lock()

    def check_vae(self, vae) -> None:
        """Raise ValueError when the VAE's latents do not have this decoder's channel count."""
        z_dim = getattr(getattr(vae, "config", None), "z_dim", None)
        if z_dim is not None and z_dim != self.latent_channels:
            raise ValueError(
                f"the model's VAE makes {z_dim}-channel latents but the TAEHV decoder {self.path or ''} takes "
                f"{self.latent_channels}: use the TAEHV weights of that VAE (taew2_1 for Wan2.1's 16 channels, "
                f"taew2_2 for Wan2.2-5B's 48) or decoder='full'")

    def on(self, device, dtype: torch.dtype) -> torch.nn.Module:
        """The TAEHV weights on ``device`` in ``dtype`` (copied once, then reused)."""
        key = (str(device), dtype)
        with self._lock:
            if key not in self._copies:
                p = next(self.model.parameters())
                same = p.device == torch.device(device) and p.dtype == dtype
                import copy

                self._copies[key] = self.model if same else copy.deepcopy(self.model).to(device=device, dtype=dtype)
            return self._copies[key]

    def __call__(self, vae):
        """vae -> a fresh streaming decoder (``reset`` / ``decode_chunk``) on the VAE's device."""
        from .models.taehv import TAEHVStreamingDecoder

        p = next(vae.parameters())
        return TAEHVStreamingDecoder(self.on(p.device, self.dtype or p.dtype), vae=vae)

    def __repr__(self) -> str:
        return f"LightDecoder(taehv, {self.path or 'in memory'}, latent_channels={self.latent_channels})"


def load_decoder(path: str | os.PathLike, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> LightDecoder:
    """A light decoder from a TAEHV ``.pth`` / ``.safetensors`` file or the name ``"taehv"``
    (see the module docstring). ``dtype`` None: the VAE's at decode time (float32 by
    default). Pass the result as ``generate(decoder=...)``."""
    from .models.taehv import load_taehv

    path = os.fspath(path)
    if path.lower() in TAEHV_NAMES:
        path = find_taehv()
    return LightDecoder(load_taehv(path, device=device, dtype=dtype or torch.float32), path=path, dtype=dtype)


def resolve_decoder(decoder):
    """``decoder=`` of generate -> None (the full VAE), a :class:`LightDecoder`, or the callable
    given. Strings: ``"full"``, ``"taehv"`` / ``"taew2_1"``, or a path to a TAEHV file."""
    if decoder is None:
        return None
    if isinstance(decoder, (str, os.PathLike)):
        name = os.fspath(decoder)
        if name.lower() in ("full", "vae", "wan"):
            return None
        if name.lower() not in TAEHV_NAMES and not os.path.isfile(name):
            raise ValueError(f"decoder={name!r} is neither 'full', 'taehv' nor an existing TAEHV .pth/.safetensors "
                             f"file: pass one of those (or a callable vae -> streaming decoder)")
        return load_decoder(name)
    if not callable(decoder):
        raise TypeError(f"decoder must be 'full', 'taehv', a TAEHV file path, engine.load_decoder(path), or a callable "
                        f"taking the VAE and returning a streaming decoder (reset, decode_chunk), e.g. "
                        f"engine.models.vae.StreamingDecoder; got {type(decoder).__name__}")
    return decoder
