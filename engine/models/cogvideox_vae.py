"""CogVideoX's own VAE (diffusers ``AutoencoderKLCogVideoX``): loading, latent scaling,
encoding, the I2V image latents and a per-clip streaming decoder equal to a full decode.

Shapes (CogVideoX 1.0 VAE: 4x temporal, 8x spatial compression, 16 latent channels):

* video    ``[B, 3, T, H, W]`` float in ``[-1, 1]``, ``T = 1 + 4k`` frames
* latents  ``[B, 16, F, h, w]`` with ``F = 1 + k`` (encode) and ``H = 8h``, ``W = 8w``

Latent space of the DiT ("scaled" latents): diffusers' CogVideoX pipelines multiply the
VAE's posterior by ``vae.config.scaling_factor`` (1.15258426 for CogVideoX 1.0, 0.7 for
1.5) and divide by it before decoding; there is no per-channel mean/std (that is Wan's
VAE) and ``shift_factor`` is not used by the pipelines, so not here either. The I2V
pipeline's image latents honour ``invert_scale_latents`` (CogVideoX 1.5 I2V was trained on
``latent / scaling_factor``); :func:`i2v_image_latents` does the same.

Frame counts (a property of diffusers' decoder, which we run unchanged):
``AutoencoderKLCogVideoX._decode`` cuts the latents into batches of 2 frames, the first
batch taking one more when ``F`` is odd ([3, 2, 2, ...] or [2, 2, ...]), and carries a
causal-conv cache between batches. Its GroupNorms normalise over the frames *of a batch*
and its temporal up-sampling treats the first frame of an odd batch alone, so the pixels
depend on where the batches are cut: an odd ``F`` decodes to ``4F - 3`` frames (49 frames
-> 13 latents -> 49 frames), an even ``F`` to ``4F`` (13 frames -> 4 latents -> 16
frames). Encoding cuts the video into batches of 8 frames, the first taking ``T mod 8``
more (``T = 1 + 4k`` -> ``1 + k`` latents).

Streaming: :class:`CogVideoXStreamingDecoder` feeds the decoder the very same batches with
the very same cache, so concatenating its outputs equals ``vae.decode`` of the whole clip
exactly. Because the batching cannot be changed without changing the pixels, it cannot
emit frames for every single latent as Wan's :class:`~engine.models.vae.StreamingDecoder`
does: it buffers latents until a batch is complete (it needs to know whether the clip's
latent count is odd; see :meth:`CogVideoXStreamingDecoder.reset`). Spatial tiling and
slicing (``vae.enable_tiling`` / ``enable_slicing``) are not used here.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from .streaming import ChunkDecoder

__all__ = [
    "COGVIDEOX_VAE_CLASS",
    "TINY_COGVIDEOX_VAE_CONFIG",
    "cogvideox_autoencoder_cls",
    "is_cogvideox_vae",
    "is_cogvideox_vae_folder",
    "make_tiny_cogvideox_vae",
    "load_cogvideox_vae",
    "scaling_factor",
    "spatial_factor",
    "temporal_factor",
    "latent_channels",
    "num_latent_frames",
    "num_decoded_frames",
    "decode_batches",
    "encode_video",
    "decode_latents",
    "i2v_image_latents",
    "CogVideoXStreamingDecoder",
    "CogVideoXClipDecoder",
]

COGVIDEOX_VAE_CLASS = "AutoencoderKLCogVideoX"

#: A very small AutoencoderKLCogVideoX with the real CogVideoX 1.0 layout (4 blocks: 8x
#: spatial, first two compress time: 4x temporal; 16 latent channels; scaling factor
#: 1.15258426) but only ~0.2M parameters.
TINY_COGVIDEOX_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "latent_channels": 16,
    "temporal_compression_ratio": 4,
    "sample_height": 64,
    "sample_width": 64,
    "scaling_factor": 1.15258426,
}

# diffusers' fixed batch sizes (AutoencoderKLCogVideoX.num_latent_frames_batch_size /
# num_sample_frames_batch_size); read from the VAE object when it has them.
_DECODE_BATCH = 2
_ENCODE_BATCH = 8


def cogvideox_autoencoder_cls():
    """diffusers' ``AutoencoderKLCogVideoX`` class."""
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX


def _config(vae_or_config):
    return getattr(vae_or_config, "config", vae_or_config)


def is_cogvideox_vae(vae) -> bool:
    """Whether ``vae`` (a module or its config) is a CogVideoX VAE: an
    ``AutoencoderKLCogVideoX`` or a config naming that class."""
    if type(vae).__name__ == COGVIDEOX_VAE_CLASS:
        return True
    cfg = _config(vae)
    name = cfg.get("_class_name") if isinstance(cfg, dict) else getattr(cfg, "_class_name", None)
    return name == COGVIDEOX_VAE_CLASS


def _folder_class(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, "config.json")) as f:
            return json.load(f).get("_class_name")
    except (OSError, ValueError):
        return None


def is_cogvideox_vae_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` (a VAE folder or a pipeline root holding ``vae/``) holds a
    ``config.json`` whose ``_class_name`` is ``AutoencoderKLCogVideoX``."""
    path = os.fspath(path)
    return any(_folder_class(c) == COGVIDEOX_VAE_CLASS for c in (path, os.path.join(path, "vae")))


def scaling_factor(vae) -> float:
    """``vae.config.scaling_factor``: DiT latents = posterior * scaling_factor."""
    return float(_config(vae).scaling_factor)


def spatial_factor(vae) -> int:
    """Spatial compression ``2 ** (len(block_out_channels) - 1)`` (8), as the pipelines compute it."""
    return 2 ** (len(_config(vae).block_out_channels) - 1)


def temporal_factor(vae) -> int:
    """Temporal compression (``temporal_compression_ratio``, 4)."""
    return int(_config(vae).temporal_compression_ratio)


def latent_channels(vae) -> int:
    """Latent channels (``latent_channels``, 16)."""
    return int(_config(vae).latent_channels)


def num_latent_frames(num_frames: int, temporal: int = 4) -> int:
    """Latents of an encoded ``1 + 4k``-frame video: ``1 + k``."""
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % temporal:
        raise ValueError(f"num_frames must be {temporal}k + 1 (1, 5, 9, ..., 49), got {num_frames!r}")
    return (num_frames - 1) // temporal + 1


def decode_batches(num_latents: int, batch: int = _DECODE_BATCH) -> list[int]:
    """The latent batches diffusers' decoder runs, in order: ``[batch + F % batch, batch, ...]``
    (``[F]`` when ``F < batch``)."""
    if num_latents < 1:
        raise ValueError(f"num_latents must be >= 1, got {num_latents}")
    n = max(num_latents // batch, 1)
    first = num_latents - batch * (n - 1)
    return [first] + [batch] * (n - 1)


def num_decoded_frames(num_latents: int, temporal: int = 4) -> int:
    """Pixel frames of ``vae.decode`` on ``F`` latents: ``4F - 3`` for odd F, ``4F`` for even
    F (module docstring); 1 for F = 1."""
    return sum(temporal * (b - 1) + 1 if b % 2 else temporal * b for b in decode_batches(num_latents))


# --------------------------------------------------------------------------- building / loading


def make_tiny_cogvideox_vae(seed: int = 0, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                            **overrides):
    """The tiny ``AutoencoderKLCogVideoX`` of :data:`TINY_COGVIDEOX_VAE_CONFIG` (``overrides``
    change fields) with deterministic random weights from ``torch.Generator(seed)``:
    weights ~ N(0, 1/fan_in), norm gains ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.02^2).
    Returns it in eval mode on ``device`` in ``dtype``."""
    cfg = {k: (list(v) if isinstance(v, list) else v) for k, v in TINY_COGVIDEOX_VAE_CONFIG.items()}
    cfg.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = cogvideox_autoencoder_cls()(**cfg)
    from .weights import seeded_fan_in_init_

    seeded_fan_in_init_(vae, seed, gain_suffix="weight")
    torch.nn.Module.to(vae, device=device, dtype=dtype)
    return vae.eval().requires_grad_(False)


def load_cogvideox_vae(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu"):
    """Load an ``AutoencoderKLCogVideoX`` from a LOCAL diffusers folder (no downloads):
    the VAE folder itself or a pipeline root holding it in ``vae/``. Eval mode.

    Refuses a folder of another VAE class (a Wan ``AutoencoderKLWan``: its latents are
    normalised per channel, a CogVideoX DiT was trained on scaled CogVideoX latents) and
    raises ``FileNotFoundError`` naming the places looked at when there is none."""
    path = os.fspath(path)
    candidates = [path, os.path.join(path, "vae")]
    for c in candidates:
        name = _folder_class(c)
        if name == COGVIDEOX_VAE_CLASS:
            from .weights import quiet_low_cpu_mem_usage

            vae = cogvideox_autoencoder_cls().from_pretrained(c, torch_dtype=dtype, local_files_only=True,
                                                              low_cpu_mem_usage=quiet_low_cpu_mem_usage())
            return vae.to(device=device).eval().requires_grad_(False)
        if name is not None:
            raise ValueError(
                f"{c} holds a {name}, not an {COGVIDEOX_VAE_CLASS}: a CogVideoX DiT needs CogVideoX's own VAE "
                f"(its latents scaled by scaling_factor); pass the vae/ folder of a CogVideoX diffusers pipeline"
            )
    looked = ", ".join(os.path.join(c, "config.json") for c in candidates)
    raise FileNotFoundError(
        f"No CogVideoX VAE found at {path!r}: looked for an {COGVIDEOX_VAE_CLASS} diffusers folder ({looked}). "
        f"Pass a CogVideoX VAE folder or a CogVideoX diffusers pipeline root with a vae/ subfolder."
    )


# --------------------------------------------------------------------------- checks


def _check_video(video: torch.Tensor, vae, name: str = "video") -> None:
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"{name} must be [B, 3, T, H, W] in [-1, 1], got {shape}")
    s, t = spatial_factor(vae), temporal_factor(vae)
    if (video.shape[2] - 1) % t:
        raise ValueError(f"{name} must have {t}k + 1 frames (1, 5, 9, ..., 49), got T={video.shape[2]}")
    if video.shape[3] % s or video.shape[4] % s:
        raise ValueError(f"{name} height and width must be multiples of {s}, got {video.shape[3]}x{video.shape[4]}")


def _check_latents(z: torch.Tensor, vae, what: str = "latents") -> None:
    c = latent_channels(vae)
    if not isinstance(z, torch.Tensor) or z.ndim != 5 or z.shape[1] != c:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"{what} must be [B, {c}, F, h, w] (CogVideoX VAE latents), got {shape}")


def _param(vae) -> torch.Tensor:
    return next(vae.parameters())


# --------------------------------------------------------------------------- encode / decode


@torch.no_grad()
def encode_video(vae, video: torch.Tensor, *, sample: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels -> DiT (scaled) latents: ``vae.encode(video).latent_dist`` (its mode, or a
    sample drawn with ``generator`` when ``sample``) times ``scaling_factor``.

    video: ``[B, 3, 1 + 4k, H, W]`` in ``[-1, 1]`` (H, W multiples of 8). Returns float32
    ``[B, 16, 1 + k, H/8, W/8]``."""
    _check_video(video, vae)
    p = _param(vae)
    dist = vae.encode(video.to(device=p.device, dtype=p.dtype)).latent_dist
    z = dist.sample(generator=generator) if sample else dist.mode()
    return z.float() * scaling_factor(vae)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, *, scaled: bool = True, clamp: bool = True) -> torch.Tensor:
    """A whole clip in one ``vae.decode`` (what the CogVideoX pipelines do): latents
    ``[B, 16, F, h, w]`` (DiT space unless ``scaled=False``) -> video ``[B, 3, T, 8h, 8w]``
    (``T`` = :func:`num_decoded_frames`), clamped to [-1, 1] unless ``clamp=False``, VAE dtype."""
    _check_latents(latents, vae)
    p = _param(vae)
    z = latents.to(p.device)
    if scaled:
        z = z.float() / scaling_factor(vae)
    out = vae.decode(z.to(p.dtype)).sample
    return out.clamp_(-1.0, 1.0) if clamp else out


@torch.no_grad()
def i2v_image_latents(vae, image: torch.Tensor, num_latent_frames: int, *, generator: torch.Generator | None = None,
                      sample: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The image condition of CogVideoX image-to-video, as ``CogVideoXImageToVideoPipeline``
    builds it: each image ``[3, H, W]`` encoded alone as a 1-frame video, a *sample* of the
    posterior drawn with ``generator`` (the pipeline's ``retrieve_latents`` default; pass
    ``sample=False`` for the mode), times ``scaling_factor`` (divided by it when the VAE
    config sets ``invert_scale_latents``), then zeros for latent frames 1..F-1.

    image: ``[B, 3, H, W]`` in [-1, 1] at the video size (the pipeline's preprocessing maps
    [0, 1] images to 2x - 1). Returns ``[B, 16, F, H/8, W/8]`` in ``dtype``; the DiT takes it
    as ``condition=`` (appended after the noisy latents' channels: in_channels 32)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be [B, 3, H, W] in [-1, 1], got {shape}")
    if not isinstance(num_latent_frames, int) or num_latent_frames < 1:
        raise ValueError(f"num_latent_frames must be an int >= 1, got {num_latent_frames!r}")
    p = _param(vae)
    cfg = _config(vae)
    rows = []
    for img in image:  # one encode per image, in batch order (one generator stream, as the pipeline draws)
        dist = vae.encode(img[None, :, None].to(device=p.device, dtype=p.dtype)).latent_dist
        rows.append(dist.sample(generator=generator) if sample else dist.mode())
    z = torch.cat(rows, 0).to(dtype)
    sf = scaling_factor(vae)
    z = z / sf if getattr(cfg, "invert_scale_latents", False) else z * sf
    pad = z.new_zeros(z.shape[0], z.shape[1], num_latent_frames - 1, *z.shape[3:])
    return torch.cat([z, pad], dim=2)


# --------------------------------------------------------------------------- streaming decode


def check_plan_decodes(plan) -> None:
    """The decodes of ``plan`` (an :class:`engine.plans.Plan`) that a CogVideoX VAE can do
    (its :class:`~engine.models.codecs.Codec` check). It decodes what diffusers' ``vae.decode`` decodes: a whole clip of an odd
    number of latents (4F - 3 frames) or single image latents; its decoder cannot continue
    a clip another decode job began (its frame batches and GroupNorms span the clip). A
    plan decoding a video clip in pieces, or an even-latent clip (CogVideoX 1.0 decodes it
    to 4F frames, not the plan's 4F - 3), is a ValueError naming the clip and the fix."""
    for d in plan.decodes:  # hand-offs (e.g. MMPL's init + terminal frames) decode as one sequence too
        if len(d.latents) % 2 == 0:
            raise ValueError(f"hand-off decode {d.id!r} decodes {len(d.latents)} latents: CogVideoX 1.0's VAE decodes "
                             f"an even number F of latents to 4F frames, not 4F - 3; this plan's hand-offs do not fit "
                             f"CogVideoX's VAE")
    for clip in plan.clips:
        chain = plan.clip_decodes.get(clip.id, [])
        if clip.kind == "image" or not chain:
            continue
        if clip.length % 2 == 0 and clip.length > 1:
            raise ValueError(f"clip {clip.id!r} has {clip.length} latents: CogVideoX 1.0's VAE decodes an even number "
                             f"F of latents to 4F frames, not 4F - 3; use an odd latent count (e.g. 49 frames = 13 "
                             f"latents) or image-latent clips (longdwm fine_latents='image')")
        if len(chain) > 1:
            raise ValueError(f"clip {clip.id!r} ({clip.length} latents) is decoded in {len(chain)} pieces, but CogVideoX's "
                             f"VAE decodes a clip whole: build the plan with whole_clip_decodes=True (generate does)")


class CogVideoXStreamingDecoder:
    """Per-clip streaming decode with diffusers' own batches and causal-conv cache, equal to
    one ``vae.decode`` of the clip (module docstring).

    Use::

        dec = CogVideoXStreamingDecoder(vae)
        dec.reset(num_latent_frames=F)      # F: the clip's latent count (optional, see reset)
        parts = [dec.decode_chunk(z[:, :, a:b]) for a, b in pieces]   # any split of the clip
        parts.append(dec.finish())
        video = torch.cat(parts, 2)          # == decode_latents(vae, z)

    :meth:`decode_chunk` returns the pixels of every batch completed so far (maybe 0 frames:
    ``[B, 3, 0, H, W]``); :meth:`finish` decodes what is left and resets.
    """

    def __init__(self, vae, num_latent_frames: int | None = None, clamp: bool = True):
        self.vae = vae
        self.clamp = clamp
        self.batch = int(getattr(vae, "num_latent_frames_batch_size", _DECODE_BATCH))
        self.reset(num_latent_frames)

    def reset(self, num_latent_frames: int | None = None) -> None:
        """Start a new clip. ``num_latent_frames``: its latent count F, which fixes the first
        batch (``batch + F % batch``). Without it the clip is taken to be odd (CogVideoX's
        13-latent clips: first batch 3); a clip of 1 or 2 latents is then still exact, and an
        even clip of 4 or more latents is an error at :meth:`finish` (its first batch would
        have been 2)."""
        if num_latent_frames is not None and (not isinstance(num_latent_frames, int) or num_latent_frames < 1):
            raise ValueError(f"num_latent_frames must be an int >= 1 or None, got {num_latent_frames!r}")
        self.total = num_latent_frames
        self._cache = None
        self._buffer: list[torch.Tensor] = []
        self._buffered = 0
        self.frames_decoded = 0  # latent frames decoded since reset()
        self.frames_seen = 0  # latent frames received since reset()
        self._like: torch.Tensor | None = None  # the last chunk (shape of an empty result)

    @property
    def pending(self) -> int:
        """Latent frames received but not decoded yet."""
        return self._buffered

    def _next_batch(self) -> int:
        if self.frames_decoded == 0:
            if self.total is not None:
                return decode_batches(self.total, self.batch)[0]
            return self.batch + 1
        return self.batch

    def _run(self, z: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
        out, self._cache = vae.decoder(z, conv_cache=self._cache)
        self.frames_decoded += z.shape[2]
        return out.clamp_(-1.0, 1.0) if self.clamp else out

    def _empty(self, like: torch.Tensor) -> torch.Tensor:
        s = spatial_factor(self.vae)
        return like.new_zeros(like.shape[0], 3, 0, like.shape[3] * s, like.shape[4] * s)

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        """Add the next latent frames ``[B, 16, f, h, w]`` of the clip (DiT space unless
        ``scaled=False``); return the pixels ``[B, 3, t, 8h, 8w]`` of the batches now complete."""
        _check_latents(latents, self.vae)
        if latents.shape[2] == 0:
            raise ValueError("decode_chunk got 0 latent frames")
        if self.total is not None and self.frames_seen + latents.shape[2] > self.total:
            raise ValueError(f"the clip has {self.total} latent frames; got {self.frames_seen + latents.shape[2]}")
        p = _param(self.vae)
        z = latents.to(p.device)
        if scaled:
            z = z.float() / scaling_factor(self.vae)
        self._buffer.append(z.to(p.dtype))
        self._like = self._buffer[-1]
        self._buffered += z.shape[2]
        self.frames_seen += z.shape[2]
        outs = []
        while self._buffered >= self._next_batch():
            n = self._next_batch()
            buf = torch.cat(self._buffer, 2)
            outs.append(self._run(buf[:, :, :n]))
            rest = buf[:, :, n:]
            self._buffer, self._buffered = ([rest] if rest.shape[2] else []), rest.shape[2]
        if not outs:
            return self._empty(z)
        return torch.cat(outs, 2) if len(outs) > 1 else outs[0]

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """Decode the latents still buffered (the clip's last, short batch; ``[B, 3, 0, H, W]``
        when none) and reset. Raises when the clip turns out to be cut differently from
        ``vae.decode``."""
        total = self.total
        if total is not None and self.frames_seen != total:
            raise ValueError(f"finish() after {self.frames_seen} of the clip's {total} latent frames")
        left = self._buffered
        if left and self.frames_decoded > 0:
            raise ValueError(
                f"the clip has an even number of latent frames ({self.frames_seen}); vae.decode cuts it "
                f"[2, 2, ...] but it was decoded as if odd: call reset(num_latent_frames={self.frames_seen}) first"
            )
        like = self._like
        out = self._run(torch.cat(self._buffer, 2)) if left else (None if like is None else self._empty(like))
        self.reset(total)
        if out is None:
            raise ValueError("finish() before any decode_chunk: nothing to decode")
        return out

    @torch.no_grad()
    def decode_all(self, latents: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        """``reset(F)``, then the whole clip ``[B, 16, F, h, w]`` -> ``[B, 3, T, 8h, 8w]``."""
        _check_latents(latents, self.vae)
        self.reset(latents.shape[2])
        out = self.decode_chunk(latents, scaled=scaled)
        return torch.cat([out, self.finish()], 2)


class CogVideoXClipDecoder(ChunkDecoder):
    """The runtime's decoder contract (:class:`~engine.models.streaming.ChunkDecoder`) on
    CogVideoX's VAE.

    ``whole_clip = True`` tells the runtime to hand a decode job's latents in one call; each
    call after :meth:`reset` is one whole ``vae.decode`` (:func:`decode_latents`): a clip of
    an odd number of latents (4F - 3 frames) or one image latent (1 frame). A second call
    without ``reset`` -- a clip continued by another decode job -- is refused: diffusers'
    decoder batches and normalises over the clip, so a piece cannot be decoded alone
    (:func:`check_plan_decodes` refuses such plans up front)."""

    whole_clip = True

    def __init__(self, vae):
        self.vae = vae
        self.reset()

    def reset(self) -> None:
        """The next :meth:`decode_chunk` starts a new clip."""
        self._open = False

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        """A whole clip's latents ``[B, 16, F, h, w]`` (DiT space) -> ``[B, 3, T, 8h, 8w]`` in [-1, 1]."""
        if self._open:
            raise ValueError("CogVideoX's VAE decodes a clip whole: this clip was continued by a second decode job; "
                             "plan the clip as one job (engine.models.cogvideox_vae.check_plan_decodes)")
        self._open = True
        return decode_latents(self.vae, latents, scaled=scaled)
