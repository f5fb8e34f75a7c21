"""TAEHV, the tiny autoencoder for Wan2.1-class video latents (madebyollin/taehv).

Our implementation of the released architecture; it loads the release's ``.pth`` /
``.safetensors`` state dicts (``taew2_1.pth`` for Wan2.1) key for key:
``encoder.{i}.*`` / ``decoder.{i}.*`` index the blocks of two flat sequences.

- Decoder: ``Clamp`` (3 tanh(x/3)), a 3x3 conv, then three stages of 3 MemBlocks,
  2x nearest upsampling, a temporal grow (TGrow: a 1x1 conv to ``s * C`` channels split
  into ``s`` frames) and a 3x3 conv; ReLU and a final 3x3 conv to RGB (pixel-shuffled
  when ``patch_size > 1``). Wan2.1: time upscale (1, 2, 2) -> 4 frames per latent.
- MemBlock: ``relu(convs(cat(x_t, x_{t-1})) + skip(x_t))`` -- the only temporal
  coupling: each MemBlock sees its own input one step back (zeros before the first).
- Encoder: 3x3 conv, then three stages of TPool (``s`` frames -> 1 by a 1x1 conv over
  their stacked channels), a stride-2 conv and 3 MemBlocks; a 3x3 conv to latents.

Conventions of the release, checked against its code and README:
- latents are used as the diffusion model produces them -- no scale, no shift (its
  Diffusers wrapper sets ``latents_mean = 0``, ``latents_std = 1``). So TAEHV takes the
  engine's *normalized* latents ``(z - mean) / std`` directly, not ``z``.
- pixels in ``[0, 1]``, tensors NTCHW (the engine: ``[-1, 1]``, NCTHW).
- the decoder emits ``4 F`` frames for ``F`` latents and drops the first 3
  (``frames_to_trim``): ``4 F - 3`` frames, the full Wan VAE's count (1 for latent 0,
  4 for every later one).
- the encoder pads the video at the end (repeating the last frame) to a multiple of the
  time downscale (4) and does not front-pad: ``T`` frames -> ``ceil(T / 4)`` latents.

Not covered: the release's ``_super`` decoder variant (ConvNeXt-style MemBlocks) and its
CogVideoX / MiniMax-H3 special cases (frame trimming and chunking of other models).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .streaming import ChunkDecoder

__all__ = ["TAEHV", "TAEHVStreamingDecoder", "load_taehv", "taehv_config_from_state_dict"]


def _conv3(c_in: int, c_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


class _Clamp(nn.Module):
    def forward(self, x):
        return 3.0 * torch.tanh(x / 3.0)


class _MemBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv3(2 * c_in, c_out), nn.ReLU(), _conv3(c_out, c_out), nn.ReLU(),
                                  _conv3(c_out, c_out))
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x, past):
        return F.relu(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class _TPool(nn.Module):
    def __init__(self, c: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(c * stride, c, 1, bias=False)

    def forward(self, x):  # [N*T, C, H, W] -> [N*T/s, C, H, W], s consecutive frames stacked
        nt, c, h, w = x.shape
        return self.conv(x.reshape(nt // self.stride, self.stride * c, h, w))


class _TGrow(nn.Module):
    def __init__(self, c: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(c, c * stride, 1, bias=False)

    def forward(self, x):  # [N*T, C, H, W] -> [N*T*s, C, H, W], channel group k -> frame t*s + k
        nt, c, h, w = x.shape
        return self.conv(x).reshape(nt * self.stride, c, h, w)


def _run_blocks(blocks: nn.Sequential, x: torch.Tensor, n: int, memory: list | None = None) -> torch.Tensor:
    """Apply ``blocks`` to ``x [n*T, C, H, W]`` (batch-major frames), all frames at once.

    ``memory[i]`` is MemBlock i's input at the previous frame ``[n, C, H, W]`` (None: the
    start of a video, zeros); it is updated to this call's last frame, so successive calls
    over consecutive frames equal one call over all of them."""
    for i, block in enumerate(blocks):
        if isinstance(block, _MemBlock):
            nt, c, h, w = x.shape
            frames = x.view(n, nt // n, c, h, w)
            prev = memory[i] if memory is not None and memory[i] is not None else x.new_zeros(n, c, h, w)
            past = torch.cat([prev.unsqueeze(1), frames[:, :-1]], 1).reshape(nt, c, h, w)
            if memory is not None:
                memory[i] = frames[:, -1].clone()
            x = block(x, past)
        else:
            x = block(x)
    return x


class TAEHV(nn.Module):
    """The TAEHV autoencoder in the release's state-dict layout.

    Args:
        latent_channels: latent channels (16 for Wan2.1).
        patch_size: pixel (un)shuffle of the RGB frames (1 for Wan2.1).
        encoder_time_downscale / decoder_time_upscale: per stage, whether it halves /
            doubles time (Wan2.1: (True, True, False) / (False, True, True)).
        decoder_space_upscale: per stage, whether it doubles height and width.
        widths: decoder stage widths (release: 256, 128, 64, 64); encoder_width (64).
    Smaller widths are ours (tests, previews); the release fixes them.
    """

    image_channels = 3

    def __init__(self, latent_channels: int = 16, patch_size: int = 1,
                 encoder_time_downscale=(True, True, False), decoder_time_upscale=(False, True, True),
                 decoder_space_upscale=(True, True, True), widths=(256, 128, 64, 64), encoder_width: int = 64,
                 with_encoder: bool = True):
        super().__init__()
        if len(decoder_time_upscale) == 2:  # the release accepts the last two stages only
            decoder_time_upscale = (False, *decoder_time_upscale)
        self.latent_channels, self.patch_size = int(latent_channels), int(patch_size)
        self.encoder_time_downscale = tuple(bool(v) for v in encoder_time_downscale)
        self.decoder_time_upscale = tuple(bool(v) for v in decoder_time_upscale)
        self.decoder_space_upscale = tuple(bool(v) for v in decoder_space_upscale)
        self.widths, self.encoder_width = tuple(int(v) for v in widths), int(encoder_width)
        rgb = self.image_channels * self.patch_size ** 2
        if with_encoder:
            e = self.encoder_width
            layers: list[nn.Module] = [_conv3(rgb, e), nn.ReLU()]
            for down in self.encoder_time_downscale:
                layers += [_TPool(e, 2 if down else 1), _conv3(e, e, stride=2, bias=False),
                           _MemBlock(e, e), _MemBlock(e, e), _MemBlock(e, e)]
            layers.append(_conv3(e, self.latent_channels))
            self.encoder = nn.Sequential(*layers)
        else:
            self.encoder = None
        n = self.widths
        layers = [_Clamp(), _conv3(self.latent_channels, n[0]), nn.ReLU()]
        for k in range(3):
            layers += [_MemBlock(n[k], n[k]), _MemBlock(n[k], n[k]), _MemBlock(n[k], n[k]),
                       nn.Upsample(scale_factor=2 if self.decoder_space_upscale[k] else 1),
                       _TGrow(n[k], 2 if self.decoder_time_upscale[k] else 1), _conv3(n[k], n[k + 1], bias=False)]
        layers += [nn.ReLU(), _conv3(n[3], rgb)]
        self.decoder = nn.Sequential(*layers)

    @property
    def t_upscale(self) -> int:
        """Video frames per latent frame of the decoder (4 for Wan2.1)."""
        return 2 ** sum(self.decoder_time_upscale)

    @property
    def t_downscale(self) -> int:
        """Video frames per latent frame of the encoder (4 for Wan2.1)."""
        return 2 ** sum(self.encoder_time_downscale)

    @property
    def frames_to_trim(self) -> int:
        """Leading decoded frames dropped at the start of a video (``t_upscale - 1``)."""
        return self.t_upscale - 1

    @property
    def space_upscale(self) -> int:
        """Pixels per latent along height and width (8 for Wan2.1)."""
        return 2 ** sum(self.decoder_space_upscale) * self.patch_size

    def check_latents(self, z: torch.Tensor, layout: str = "NCTHW") -> None:
        """Raise ValueError unless ``z`` is a 5-D latent tensor with this decoder's channel count."""
        dim = 1 if layout == "NCTHW" else 2
        if not isinstance(z, torch.Tensor) or z.ndim != 5:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"TAEHV decodes 5-D latents ({layout}), got {got}")
        if z.shape[dim] != self.latent_channels:
            raise ValueError(
                f"latents have {z.shape[dim]} channels but this TAEHV decoder takes {self.latent_channels}: "
                f"use the TAEHV weights of your model's VAE (taew2_1 for Wan2.1 / Wan2.2-14B 16-channel latents, "
                f"taew2_2 for Wan2.2-5B 48-channel ones) or decoder='full'")

    def decode_frames(self, z: torch.Tensor, memory: list | None = None) -> torch.Tensor:
        """Raw decoder: latents NTCHW ``[N, T, C, h, w]`` -> untrimmed, unclamped RGB NTCHW
        ``[N, T * t_upscale, 3, h * s, w * s]`` (``memory``: see :class:`TAEHVStreamingDecoder`)."""
        self.check_latents(z, "NTCHW")
        n, t = z.shape[:2]
        x = _run_blocks(self.decoder, z.reshape(n * t, *z.shape[2:]), n, memory)
        if self.patch_size > 1:
            x = F.pixel_shuffle(x, self.patch_size)
        return x.view(n, x.shape[0] // n, *x.shape[1:])

    @torch.no_grad()
    def decode_video(self, z: torch.Tensor) -> torch.Tensor:
        """The release's ``decode_video``: latents NTCHW ``[N, F, C, h, w]`` (as the DiT makes
        them) -> RGB NTCHW ``[N, 4F - 3, 3, 8h, 8w]`` in ``[0, 1]`` (Wan2.1 config)."""
        return self.decode_frames(z)[:, self.frames_to_trim:].clamp(0, 1)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Engine layout: latents ``[B, C, F, h, w]`` -> video ``[B, 3, 4F - 3, 8h, 8w]`` in ``[-1, 1]``."""
        self.check_latents(z)
        return self.decode_video(z.transpose(1, 2)).transpose(1, 2).mul(2).sub(1)

    @torch.no_grad()
    def encode_video(self, x: torch.Tensor) -> torch.Tensor:
        """The release's ``encode_video``: RGB NTCHW ``[N, T, 3, H, W]`` in ``[0, 1]`` -> latents
        NTCHW ``[N, ceil(T / 4), C, H / 8, W / 8]``; the end is padded with the last frame."""
        if self.encoder is None:
            raise ValueError("this TAEHV was loaded from a decoder-only state dict: load a file with encoder.* "
                             "weights (the release's full .pth) to encode")
        if x.ndim != 5 or x.shape[2] != self.image_channels:
            raise ValueError(f"TAEHV encodes RGB video NTCHW [N, T, 3, H, W] in [0, 1], got {tuple(x.shape)}")
        n = x.shape[0]
        if self.patch_size > 1:
            x = F.pixel_unshuffle(x.flatten(0, 1), self.patch_size).unflatten(0, (n, -1))
        pad = -x.shape[1] % self.t_downscale
        if pad:
            x = torch.cat([x, x[:, -1:].expand(-1, pad, -1, -1, -1)], 1)
        y = _run_blocks(self.encoder, x.reshape(-1, *x.shape[2:]), n)
        return y.view(n, y.shape[0] // n, *y.shape[1:])


class TAEHVStreamingDecoder(ChunkDecoder):
    """Chunked TAEHV decoding with the temporal state carried: the engine's streaming
    decoder contract (as :class:`engine.models.vae.StreamingDecoder`).

    Each MemBlock's last input frame is kept between :meth:`decode_chunk` calls, so the
    concatenated outputs of successive chunks equal one decode of all latents; the first
    ``frames_to_trim`` frames after :meth:`reset` are dropped (latent 0 -> 1 frame, every
    later latent -> 4). ``vae`` (optional): the full VAE whose statistics turn raw latents
    into the normalized ones TAEHV takes, for ``decode_chunk(..., normalized=False)``.
    """

    def __init__(self, taehv: TAEHV, vae=None, raw_latents: bool = False):
        self.taehv = taehv
        self.vae = vae
        # True: the weights take raw VAE latents z (LightX2V's LightTAE, lighttaew2_1: its
        # WanVAE_tiny(need_scaled=True) computes z = z_norm * std + mean first); False: the
        # DiT's normalized latents (madebyollin/taehv's taew2_1).
        self.raw_latents = bool(raw_latents)
        self.z_dim = taehv.latent_channels
        self.reset()

    def reset(self) -> None:
        """Forget the temporal state: the next chunk starts a new video."""
        self._memory: list = [None] * len(self.taehv.decoder)
        self._trim = self.taehv.frames_to_trim
        self.frames_decoded = 0  # latent frames consumed since reset()

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, normalized: bool = True) -> torch.Tensor:
        """Decode the next latent frames of the current video.

        Args:
            latents: ``[B, C, f, h, w]`` normalized (DiT space), or raw VAE latents with
                ``normalized=False`` (needs ``vae``). Cast to the decoder's device/dtype.
        Returns:
            video ``[B, 3, t, 8h, 8w]`` in ``[-1, 1]`` (decoder dtype), ``t = 4f - 3`` for the
            first chunk after :meth:`reset`, ``4f`` after.
        """
        self.taehv.check_latents(latents)
        if latents.shape[2] == 0:
            raise ValueError("decode_chunk got 0 latent frames")
        param = next(self.taehv.decoder.parameters())
        z = latents.to(device=param.device)
        if self.raw_latents and normalized:  # LightTAE: de-normalize with the Wan2.1 statistics
            from .vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, denormalize_latents

            if self.vae is not None and getattr(getattr(self.vae, "config", None), "latents_mean", None) is not None:
                z = denormalize_latents(z.float(), self.vae)
            else:
                mean = torch.tensor(WAN21_LATENTS_MEAN, device=z.device).view(1, -1, 1, 1, 1)
                std = torch.tensor(WAN21_LATENTS_STD, device=z.device).view(1, -1, 1, 1, 1)
                z = z.float() * std + mean
        elif not self.raw_latents and not normalized:
            if self.vae is None:
                raise ValueError("TAEHV takes normalized latents; pass normalized=True, or build the decoder with "
                                 "vae= so that raw latents can be normalized with its statistics")
            from .vae import normalize_latents

            z = normalize_latents(z.float(), self.vae)
        x = self.taehv.decode_frames(z.to(param.dtype).transpose(1, 2), self._memory)
        self.frames_decoded += latents.shape[2]
        if self._trim:
            drop = min(self._trim, x.shape[1])
            x, self._trim = x[:, drop:], self._trim - drop
        return x.transpose(1, 2).clamp(0, 1).mul(2).sub(1)


# --------------------------------------------------------------------------- loading

_ENC_TPOOL = (2, 7, 12)  # encoder indices of the TPool blocks
_DEC_TGROW = (7, 13, 19)  # decoder indices of the TGrow blocks
_DEC_CONVS = (1, 8, 14, 20)  # decoder 3x3 convs entering / leaving the stages


def read_taehv_state_dict(path: str) -> dict:
    """The tensors of a TAEHV-layout ``.pth`` / ``.safetensors`` file, as stored (a
    ``state_dict`` wrapper unwrapped); a missing file or a non-tensor dict is an error
    naming the fix."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TAEHV weights not found: {path!r} (get taew2_1.pth or "
                                f"safetensors/taew2_1.safetensors from github.com/madebyollin/taehv)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path!r} is not a TAEHV state dict (a dict of tensors named encoder.* / decoder.*)")
    return sd


def taehv_config_from_state_dict(sd: dict) -> dict:
    """Constructor arguments of :class:`TAEHV` for a release-layout state dict (shapes
    decide: latent channels, patch size, widths, encoder time downscale). The decoder's
    time upscale stays the release default (a TGrow stored with more frames is cut to its
    last ones on loading, as the release does)."""
    if "decoder.1.weight" not in sd:
        if "decoder.0.weight" in sd:
            raise ValueError("this is a TAEHV '_super' decoder (taehv1_5_super / taew2_2_super), which the engine does "
                             "not implement: use the base weights (taew2_1.pth for Wan2.1) or decoder='full'")
        raise ValueError("not a TAEHV state dict: no decoder.1.weight (expected the layout of "
                         "github.com/madebyollin/taehv taew2_1.pth: encoder.{i}.* / decoder.{i}.*)")
    widths = tuple(int(sd[f"decoder.{i}.weight"].shape[0]) for i in _DEC_CONVS)
    rgb = int(sd["decoder.22.weight"].shape[0])
    cfg = {"latent_channels": int(sd["decoder.1.weight"].shape[1]), "patch_size": int(round(math.sqrt(rgb / 3))),
           "widths": widths, "with_encoder": "encoder.0.weight" in sd}
    if cfg["with_encoder"]:
        e = int(sd["encoder.0.weight"].shape[0])
        cfg["encoder_width"] = e
        cfg["encoder_time_downscale"] = tuple(int(sd[f"encoder.{i}.conv.weight"].shape[1]) // e == 2
                                              for i in _ENC_TPOOL)
    return cfg


def load_taehv(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               **overrides) -> TAEHV:
    """A :class:`TAEHV` from a release ``.pth`` / ``.safetensors`` file (eval mode, no grad).

    ``overrides`` replace constructor arguments (e.g. ``decoder_time_upscale=(False, False,
    False)`` for the release's cheaper preview)."""
    path = os.fspath(path)
    sd = read_taehv_state_dict(path)
    cfg = taehv_config_from_state_dict(sd)
    cfg.update(overrides)
    model = TAEHV(**cfg)
    own = model.state_dict()
    sd = dict(sd)
    for i in _DEC_TGROW:  # the release's patch_tgrow_layers: keep the last-timestep output channels
        key = f"decoder.{i}.conv.weight"
        if key in sd and sd[key].shape[0] > own[key].shape[0]:
            sd[key] = sd[key][-own[key].shape[0]:]
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # a shape that no inferred config explains
        raise ValueError(f"{path!r} does not match the TAEHV layout ({str(exc).splitlines()[-1].strip()}): expected "
                         f"a state dict of github.com/madebyollin/taehv (taew2_1.pth for Wan2.1)") from None
    if missing or unexpected:
        raise ValueError(f"{path!r} does not match the TAEHV layout (missing {sorted(missing)[:5]}, unexpected "
                         f"{sorted(unexpected)[:5]}): expected a state dict of github.com/madebyollin/taehv "
                         f"(taew2_1.pth for Wan2.1)")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
