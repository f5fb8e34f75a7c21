"""Decoders the engine can stream a clip's latents through (``generate(decoder=...)``).

- ``"full"`` (default): the model's own Wan VAE (:class:`engine.models.vae.StreamingDecoder`).
- a TAEHV file (``.pth`` / ``.safetensors`` of github.com/madebyollin/taehv, e.g.
  ``taew2_1.pth`` for Wan2.1) or the name ``"taehv"`` / ``"taew2_1"`` (found at
  ``$ENGINE_TAEHV``, else ``./taew2_1.{pth,safetensors}``, else
  ``~/.cache/engine/taew2_1.{pth,safetensors}``): the tiny decoder, decode only -- encode
  jobs (re-encoded hand-offs, first frames) keep the full VAE, whose latents the DiT
  was trained on.
- LightX2V's (github.com/ModelTC/LightX2V) light decoders for Wan2.1, in their released
  layouts: ``"lighttae"`` / ``"lighttaew2_1"`` (``lighttaew2_1.{safetensors,pth}``; the
  TAEHV architecture and keys, but it takes *raw* VAE latents ``z = z_norm * std + mean``,
  as LightX2V's ``WanVAE_tiny(need_scaled=True)`` does for any ``tae_path`` containing
  "lighttae"; a file whose name contains "lighttae" is read that way too) and
  ``"lightvae"`` / ``"lightvaew2_1"`` (``lightvaew2_1.{safetensors,pth}``: the Wan2.1 VAE
  with 75 % of its channels pruned, i.e. base width 24 instead of 96, in the original Wan
  key layout ``encoder.conv1`` / ``decoder.upsamples.*`` / ``conv2``; converted to a
  diffusers ``AutoencoderKLWan(base_dim=24)`` and streamed like the full VAE). Looked up at
  ``$ENGINE_LIGHTTAE`` / ``$ENGINE_LIGHTVAE``, ``./``, ``~/.cache/engine/``.
- a :class:`LightDecoder` from :func:`load_decoder`, or any callable ``vae -> streaming
  decoder`` (``reset()``, ``decode_chunk(latents)``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

__all__ = ["LightDecoder", "LightVAEDecoder", "load_decoder", "resolve_decoder", "find_taehv", "find_light_weights",
           "load_lightvae", "TAEHV_NAMES", "LIGHTTAE_NAMES", "LIGHTVAE_NAMES"]

#: Names that stand for the Wan2.1 TAEHV weights.
TAEHV_NAMES = ("taehv", "taew2_1")
#: Names that stand for LightX2V's LightTAE / LightVAE for Wan2.1.
LIGHTTAE_NAMES = ("lighttae", "lighttaew2_1")
LIGHTVAE_NAMES = ("lightvae", "lightvaew2_1")
_NAMED = {**{n: ("taew2_1", "ENGINE_TAEHV") for n in TAEHV_NAMES},
          **{n: ("lighttaew2_1", "ENGINE_LIGHTTAE") for n in LIGHTTAE_NAMES},
          **{n: ("lightvaew2_1", "ENGINE_LIGHTVAE") for n in LIGHTVAE_NAMES}}


_SOURCES = {  # stem -> (what to get and where, file suffixes in lookup order)
    "taew2_1": ("the TAEHV weights for Wan2.1 (taew2_1.pth from github.com/madebyollin/taehv)", (".pth", ".safetensors")),
    "lighttaew2_1": ("LightX2V's lighttaew2_1.safetensors (huggingface.co/lightx2v/Autoencoders)",
                     (".safetensors", ".pth")),
    "lightvaew2_1": ("LightX2V's lightvaew2_1.safetensors (huggingface.co/lightx2v/Autoencoders)",
                     (".safetensors", ".pth")),
}


def find_light_weights(name: str) -> str:
    """Path of the weights a decoder name stands for (``"taehv"``, ``"lighttae"``,
    ``"lightvae"`` and their file stems): ``$ENGINE_<KIND>``, else ``./<stem>.<suffix>``,
    else ``~/.cache/engine/<stem>.<suffix>``; raises naming where it looked."""
    stem, var = _NAMED[name.lower()]
    what, suffixes = _SOURCES[stem]
    env = os.environ.get(var)
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"{var}={env!r} is not a file: point it at {stem}{suffixes[0]}")
        return env
    places = [Path.cwd(), Path.home() / ".cache" / "engine"]
    tried = [p / f"{stem}{ext}" for p in places for ext in suffixes]
    for p in tried:
        if p.is_file():
            return str(p)
    raise FileNotFoundError(f"decoder {name!r} needs {what}: not found at {[str(p) for p in tried]}; pass "
                            f"decoder=<path>, set {var}, or use decoder='full'")


def is_lighttae_path(path: str) -> bool:
    """LightX2V's rule (lightx2v/pipeline.py enable_lightvae): a Wan TAE file whose name
    contains "lighttae" takes raw latents (``need_scaled``)."""
    return "lighttae" in os.path.basename(os.fspath(path)).lower()


def find_taehv() -> str:
    """Path of the Wan2.1 TAEHV weights for the name ``"taehv"`` (:func:`find_light_weights`)."""
    return find_light_weights("taehv")


class LightDecoder:
    """A loaded TAEHV, usable as ``generate(decoder=...)``: calling it with a VAE gives a
    fresh :class:`~engine.models.taehv.TAEHVStreamingDecoder` on that VAE's device (one
    copy of the weights per device, in ``dtype`` or else the VAE's dtype).

    ``model``: the :class:`~engine.models.taehv.TAEHV`; ``latent_channels``: what it decodes.
    """

    kind = "taehv"

    def __init__(self, model, path: str | None = None, dtype: torch.dtype | None = None, raw_latents: bool = False):
        self.model = model
        self.path = path
        self.dtype = dtype
        self.raw_latents = bool(raw_latents)  # LightTAE: takes z = z_norm * std + mean
        if self.raw_latents:
            self.kind = "lighttae"
        self.latent_channels = self._latent_channels(model)
        self._copies: dict = {}
        self._lock = threading.Lock()

    @staticmethod
    def _latent_channels(model) -> int:
        return model.latent_channels

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
        return TAEHVStreamingDecoder(self.on(p.device, self.dtype or p.dtype), vae=vae, raw_latents=self.raw_latents)

    def __repr__(self) -> str:
        return f"LightDecoder({self.kind}, {self.path or 'in memory'}, latent_channels={self.latent_channels})"


class LightVAEDecoder(LightDecoder):
    """LightX2V's LightVAE (a channel-pruned Wan VAE, converted to a diffusers
    ``AutoencoderKLWan``) as ``generate(decoder=...)``: calling it with the model's VAE
    gives a fresh :class:`engine.models.vae.StreamingDecoder` over the light VAE on that
    VAE's device (its own latent statistics: Wan2.1's, as the release hardcodes)."""

    kind = "lightvae"

    @staticmethod
    def _latent_channels(model) -> int:
        return model.config.z_dim

    def __call__(self, vae):
        from .models.vae import StreamingDecoder

        p = next(vae.parameters())
        return StreamingDecoder(self.on(p.device, self.dtype or p.dtype))


def load_lightvae(path_or_sd, device="cpu", dtype: torch.dtype = torch.float32):
    """LightX2V's LightVAE (``lightvaew2_1``) as a diffusers ``AutoencoderKLWan``.

    The release (lightx2v/models/video_encoders/hf/wan/vae.py) builds its ``WanVAE_`` with
    ``dim=96, pruning_rate=0.75``: every width ``int(96 * m * 0.25) = 24 * m``, which is the
    Wan2.1 VAE with ``base_dim=24`` in the original Wan key layout
    (:func:`engine.models.vae.load_original_vae` reads the width from the file)."""
    from .models.vae import load_original_vae

    return load_original_vae(path_or_sd, device=device, dtype=dtype)


def load_decoder(path: str | os.PathLike, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, raw_latents: bool | None = None) -> LightDecoder:
    """A light decoder from a TAEHV / LightTAE / LightVAE ``.pth`` / ``.safetensors`` file or a
    name (``"taehv"``, ``"lighttae"``, ``"lightvae"``; see the module docstring). ``dtype``
    None: the VAE's at decode time (float32 by default). ``raw_latents`` (TAE files): None
    decides by the file name ("lighttae" in it: raw latents). Pass the result as
    ``generate(decoder=...)``."""
    from .models.taehv import load_taehv, read_taehv_state_dict
    from .models.vae import is_wan_vae_layout

    path = os.fspath(path)
    if path.lower() in _NAMED:
        path = find_light_weights(path)
    if os.path.isfile(path) and is_wan_vae_layout(read_taehv_state_dict(path)):  # LightX2V's LightVAE
        return LightVAEDecoder(load_lightvae(path, device=device, dtype=dtype or torch.float32), path=path, dtype=dtype)
    return LightDecoder(load_taehv(path, device=device, dtype=dtype or torch.float32), path=path, dtype=dtype,
                        raw_latents=is_lighttae_path(path) if raw_latents is None else raw_latents)


def resolve_decoder(decoder):
    """``decoder=`` of generate -> None (the full VAE), a :class:`LightDecoder`, or the callable
    given. Strings: ``"full"``, ``"taehv"`` / ``"lighttae"`` / ``"lightvae"`` (and their file stems), or a path."""
    if decoder is None:
        return None
    if isinstance(decoder, (str, os.PathLike)):
        name = os.fspath(decoder)
        if name.lower() in ("full", "vae", "wan"):
            return None
        if name.lower() not in _NAMED and not os.path.isfile(name):
            raise ValueError(f"decoder={name!r} is neither 'full', 'taehv' nor an existing TAEHV .pth/.safetensors "
                             f"file (nor LightX2V's 'lighttae' / 'lightvae' or one of their files): pass one of those "
                             f"(or a callable vae -> streaming decoder)")
        return load_decoder(name)
    if not callable(decoder):
        raise TypeError(f"decoder must be 'full', 'taehv', a TAEHV file path, engine.load_decoder(path), or a callable "
                        f"taking the VAE and returning a streaming decoder (reset, decode_chunk), e.g. "
                        f"engine.models.vae.StreamingDecoder; got {type(decoder).__name__}")
    return decoder
