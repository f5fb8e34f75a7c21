"""The latent codecs of the model families, resolved once from a VAE (:func:`codec_for`).

A :class:`Codec` says how a family's VAE turns pixels into the latents its DiT denoises
(``encode``), which streaming decoder turns them back (``decoder``), whether a decode job
must hand a clip's latents in one call (``whole_clip``), whether Wan-latent light decoders
(TAEHV, LightTAE, LightVAE) apply, and what a plan's decodes must satisfy
(``check_decodes``). The runtime, the plan checks and the input encodes call this record
and never test a VAE for its family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Codec:
    """One family's latent codec.

    encode(vae, video [B, 3, T, H, W] in [-1, 1]) -> latents [B, C, F, h, w] float32, in the
    space the DiT denoises (Wan: per-channel normalised; CogVideoX: scaled).
    decoder(vae) -> a fresh streaming decoder (``reset()``, ``decode_chunk(latents)`` ->
    pixels [B, 3, t, H, W] in [-1, 1]).
    whole_clip: its decoder cannot continue a clip another decode job began (the plan then
    has one decode job per video clip: ``Plan.whole_clip_decodes``).
    light_decoders: Wan-latent light decoders may replace ``decoder``.
    check_decodes(plan): raises ValueError for decodes this VAE cannot do (None: any).
    """

    family: str
    encode: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
    decoder: Callable
    whole_clip: bool = False
    light_decoders: bool = True
    check_decodes: Callable | None = None


def _wan() -> Codec:
    from .vae import StreamingDecoder, encode_frames

    return Codec("wan", encode_frames, StreamingDecoder)


def _cogvideox() -> Codec:
    from .cogvideox_vae import CogVideoXClipDecoder, check_plan_decodes, encode_video

    return Codec("cogvideox", encode_video, CogVideoXClipDecoder, whole_clip=True, light_decoders=False,
                 check_decodes=check_plan_decodes)


def codec_for(vae) -> Codec:
    """The :class:`Codec` of a VAE module: CogVideoX's for an ``AutoencoderKLCogVideoX``,
    else Wan's (``AutoencoderKLWan`` and its stand-ins)."""
    from .cogvideox_vae import is_cogvideox_vae

    return _cogvideox() if is_cogvideox_vae(vae) else _wan()
