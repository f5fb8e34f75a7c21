"""Wan2.1 VAE (diffusers ``AutoencoderKLWan``): loading, latent normalisation,
streaming (chunked, causal) decoding, encoding and the I2V condition tensor.

Shapes used throughout (Wan2.1 VAE: 4x temporal, 8x spatial compression, z_dim 16):

* video       ``[B, 3, T, H, W]``  float in ``[-1, 1]``
* latents     ``[B, 16, F, h, w]`` with ``T = 4 * (F - 1) + 1``, ``H = 8 * h``, ``W = 8 * w``

"Normalized" latents are what the DiT consumes / produces:
``z_norm = (z - latents_mean) / latents_std`` (per channel, from the VAE config);
decoding takes ``z = z_norm * latents_std + latents_mean``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Any

import torch

from .streaming import ChunkDecoder

__all__ = [
    "TINY_VAE_CONFIG",
    "WAN21_LATENTS_MEAN",
    "WAN21_LATENTS_STD",
    "autoencoder_cls",
    "make_tiny_vae",
    "load_vae",
    "latent_stats",
    "normalize_latents",
    "denormalize_latents",
    "StreamingDecoder",
    "encode_frames",
    "i2v_condition",
    "num_latent_frames",
    "num_video_frames",
]

# Real Wan2.1 VAE latent statistics (diffusers' AutoencoderKLWan defaults).
WAN21_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]
WAN21_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]

#: A very small AutoencoderKLWan with the real Wan2.1 layout (4x temporal / 8x spatial
#: compression, 16 latent channels, real latent statistics) but only ~0.7M parameters.
TINY_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": list(WAN21_LATENTS_MEAN),
    "latents_std": list(WAN21_LATENTS_STD),
}

TEMPORAL_FACTOR = 4
SPATIAL_FACTOR = 8


def autoencoder_cls():
    """diffusers' ``AutoencoderKLWan`` class (an ImportError naming the fix without diffusers)."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError as e:  # pragma: no cover - diffusers is a hard dependency
        raise ImportError("engine.models.vae needs diffusers>=0.33 (AutoencoderKLWan)") from e
    return AutoencoderKLWan


def num_latent_frames(num_frames: int) -> int:
    """Latent frame count ``F`` for ``num_frames`` pixel frames (``T = 4 * (F - 1) + 1``)."""
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_FACTOR != 0:
        raise ValueError(
            f"num_frames must be 4*k + 1 (1, 5, 9, ..., 81), got {num_frames}"
        )
    return (num_frames - 1) // TEMPORAL_FACTOR + 1


def num_video_frames(latent_frames: int) -> int:
    """Pixel frame count ``T = 4 * (F - 1) + 1`` decoded from ``F`` latent frames."""
    if latent_frames < 1:
        raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
    return TEMPORAL_FACTOR * (latent_frames - 1) + 1


# --------------------------------------------------------------------------- building / loading


def make_tiny_vae(seed: int = 0, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Build the tiny ``AutoencoderKLWan`` of :data:`TINY_VAE_CONFIG` with deterministic random weights.

    Every parameter is re-drawn from a ``torch.Generator`` seeded with ``seed`` (so the
    weights do not depend on diffusers' init order nor on the global RNG state):
    weights ~ N(0, 1/fan_in), biases ~ N(0, 0.02^2), norm gains ~ 1 + N(0, 0.1^2).
    No parameter is zero, so decoding random latents is never constant.

    Returns the model in eval mode, on ``device``, in ``dtype``.
    """
    cls = autoencoder_cls()
    cfg = {k: (list(v) if isinstance(v, list) else v) for k, v in TINY_VAE_CONFIG.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = cls(**cfg)
    from .weights import seeded_fan_in_init_

    seeded_fan_in_init_(vae, seed, gain_suffix="gamma")
    # plain nn.Module.to: ModelMixin.to warns about fp32-kept modules (there are none here)
    torch.nn.Module.to(vae, device=device, dtype=dtype)
    return vae.eval().requires_grad_(False)


def _is_vae_folder(path: str) -> bool:
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        with open(cfg) as f:
            name = json.load(f).get("_class_name")
    except (OSError, ValueError):
        return False
    return name in (None, "AutoencoderKLWan")


def is_wan_vae_layout(sd: dict) -> bool:
    """Whether a state dict is a Wan VAE in the original key layout."""
    return "decoder.conv1.weight" in sd and "conv2.weight" in sd


def load_original_vae(path_or_sd, device="cpu", dtype: torch.dtype = torch.float32):
    """A Wan2.1 VAE in the ORIGINAL layout (``Wan2.1_VAE.pth`` as Wan, DiffSynth-based
    releases such as LongVie, and LightX2V ship it; also pruned widths) as a diffusers
    ``AutoencoderKLWan``: the width is read from the file (``decoder.conv1`` out channels
    / 4), keys are converted with diffusers' ``convert_wan_vae_to_diffusers`` and loaded
    strictly; latent statistics: Wan2.1's. ``path_or_sd``: a .pth / .safetensors file or
    a state dict."""
    from .weights import read_state_dict

    where = os.fspath(path_or_sd) if isinstance(path_or_sd, (str, os.PathLike)) else "state dict"
    sd = read_state_dict(where)[0] if isinstance(path_or_sd, (str, os.PathLike)) else dict(path_or_sd)
    if not is_wan_vae_layout(sd):
        raise ValueError(f"{where!r} is not a Wan VAE in the original layout (decoder.conv1.*, conv2.*)")
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    dec_width = int(sd["decoder.conv1.weight"].shape[0])  # dims[0] = base_dim * dim_mult[-1] (4)
    z_dim = int(sd["conv2.weight"].shape[0])
    if dec_width % 4 or z_dim != len(WAN21_LATENTS_MEAN):
        raise ValueError(f"{where!r}: decoder width {dec_width} / z_dim {z_dim} is not a (pruned) Wan2.1 VAE")
    cfg = dict(base_dim=dec_width // 4, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True], dropout=0.0,
               latents_mean=list(WAN21_LATENTS_MEAN), latents_std=list(WAN21_LATENTS_STD))
    model = autoencoder_cls()(**cfg)
    conv = convert_wan_vae_to_diffusers({k: v for k, v in sd.items()})
    try:
        missing, unexpected = model.load_state_dict(conv, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"{where!r} does not match a Wan VAE of base width {cfg['base_dim']} "
                         f"({str(exc).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise ValueError(f"{where!r} does not match a Wan VAE of base width {cfg['base_dim']} (missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_vae(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load a Wan ``AutoencoderKLWan`` from a LOCAL folder (no downloads).

    ``path`` may be a diffusers model folder (``config.json`` + ``*.safetensors``), a
    diffusers pipeline root holding it in ``path/vae``, or an original-layout file
    (``Wan2.1_VAE.pth``, :func:`load_original_vae`). Returns the model in eval mode.
    The Wan VAE is usually run in float32 (bf16 decode is noticeably worse); pass
    ``dtype`` explicitly.

    Raises ``FileNotFoundError`` naming the locations that were looked at.
    """
    path = os.fspath(path)
    if os.path.isfile(path):  # an original-layout file (Wan2.1_VAE.pth)
        return load_original_vae(path, device=device, dtype=dtype)
    candidates = [path, os.path.join(path, "vae")]
    folder = next((c for c in candidates if os.path.isdir(c) and _is_vae_folder(c)), None)
    if folder is None:
        looked = ", ".join(os.path.join(c, "config.json") for c in candidates)
        raise FileNotFoundError(
            f"No Wan VAE found at {path!r}: looked for an AutoencoderKLWan diffusers folder "
            f"({looked}) with its *.safetensors weights. Pass a diffusers VAE folder or a "
            "diffusers pipeline root with a vae/ subfolder."
        )
    from .weights import quiet_low_cpu_mem_usage

    cls = autoencoder_cls()
    vae = cls.from_pretrained(folder, torch_dtype=dtype, local_files_only=True,
                              low_cpu_mem_usage=quiet_low_cpu_mem_usage())
    return vae.to(device=device).eval().requires_grad_(False)


# --------------------------------------------------------------------------- normalisation


def _config(vae_or_config):
    return getattr(vae_or_config, "config", vae_or_config)


def latent_stats(vae, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` of the latent channels, each shaped ``[1, z_dim, 1, 1, 1]``."""
    cfg = _config(vae)
    z_dim = cfg.z_dim
    mean = torch.tensor(cfg.latents_mean, dtype=dtype, device=device).view(1, z_dim, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, dtype=dtype, device=device).view(1, z_dim, 1, 1, 1)
    return mean, std


def _check_latents(z: torch.Tensor, vae, what: str = "latents") -> None:
    z_dim = _config(vae).z_dim
    if not isinstance(z, torch.Tensor) or z.ndim != 5:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"{what} must be a 5-D tensor [B, {z_dim}, F, h, w], got {shape}")
    if z.shape[1] != z_dim:
        raise ValueError(f"{what} must have {z_dim} channels (dim 1) [B, {z_dim}, F, h, w], got {tuple(z.shape)}")


def normalize_latents(z: torch.Tensor, vae) -> torch.Tensor:
    """Raw VAE latents ``[B, 16, F, h, w]`` -> normalized ``(z - mean) / std`` (same shape/dtype).

    ``vae`` is the model or its config (uses ``latents_mean`` / ``latents_std``).
    Arithmetic in float32, result cast back to ``z.dtype``.
    """
    _check_latents(z, vae)
    mean, std = latent_stats(vae, device=z.device)
    return ((z.float() - mean) / std).to(z.dtype)


def denormalize_latents(z: torch.Tensor, vae) -> torch.Tensor:
    """Normalized latents ``[B, 16, F, h, w]`` -> raw VAE latents ``z * std + mean`` (same shape/dtype)."""
    _check_latents(z, vae)
    mean, std = latent_stats(vae, device=z.device)
    return (z.float() * std + mean).to(z.dtype)


# --------------------------------------------------------------------------- streaming decode


def count_causal_convs(module: torch.nn.Module) -> int:
    """Number of ``WanCausalConv3d`` layers in ``module`` (the size of its feature cache)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


@contextlib.contextmanager
def conv_autotune(device: torch.device):
    """Within the block, cuDNN times its convolution algorithms per input shape and keeps
    the fastest (``torch.backends.cudnn.benchmark``) when ``device`` is CUDA; the previous
    setting comes back afterwards.  The Wan decoder's 3-D convolutions see only a couple of
    shapes per video (first chunk, then steady chunks), so the search is paid once each."""
    if torch.device(device).type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


_FAST_CONVS = threading.local()  # per thread: workers sharing one VAE module decide for themselves


def conv3d_as_conv2d(conv, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers' ``WanCausalConv3d.forward(x, cache_x)`` computed with ONE 2-D convolution:
    the causal padding (with the cached frames) as there, then the kt temporal taps of every
    output frame stacked on the channel axis ([B * T_out, kt * C, H, W]) against the weights
    reshaped to [O, kt * C, kh, kw]. The same sums as the 3-D convolution in another order
    (float32 rounding aside: 1e-6 on the embedded VAE's frames); on the CPU faster for
    narrow convolutions on small frames (:func:`conv2d_pays`). x: [B, C, T, H, W]; returns
    [B, O, T_out, H', W']."""
    import torch.nn.functional as F

    padding = list(conv._padding)
    if cache_x is not None and conv._padding[4] > 0:
        x = torch.cat([cache_x.to(x.device), x], dim=2)
        padding[4] -= cache_x.shape[2]
    x = F.pad(x, padding)
    b, c, t, h, w = x.shape
    kt, st = conv.kernel_size[0], conv.stride[0]
    t_out = (t - kt) // st + 1
    taps = [x[:, :, k:k + st * (t_out - 1) + 1:st] for k in range(kt)]  # kt x [B, C, T_out, H, W]
    xs = torch.cat(taps, dim=1) if kt > 1 else taps[0]
    xs = xs.permute(0, 2, 1, 3, 4).reshape(b * t_out, kt * c, h, w)
    o = conv.out_channels
    wt = conv.weight.permute(0, 2, 1, 3, 4).reshape(o, kt * c, *conv.weight.shape[3:])
    y = F.conv2d(xs, wt, conv.bias, stride=tuple(conv.stride[1:]), dilation=tuple(conv.dilation[1:]))
    return y.reshape(b, t_out, o, *y.shape[2:]).permute(0, 2, 1, 3, 4)


def conv2d_pays(in_channels: int, height: int, width: int) -> bool:
    """Whether :func:`conv3d_as_conv2d` beats PyTorch's CPU Conv3d for a causal conv of this
    width on frames of this size: narrow convolutions on small frames (<= 64 channels, <=
    64 x 112 pixels: 1.5-5x per convolution on a 2-core EPYC); wide or large ones are as fast
    or slower as 2-D (0.7-1.0x), so they keep the 3-D path. Whole decodes: the embedded
    VAE 1.9x at 64x112 and 1.2x at 128x128, the full Wan2.1 VAE 1.0-1.1x. A fixed rule of
    the shapes (never a timing), so a run's numbers do not depend on the machine's load."""
    return in_channels <= 64 and height * width <= 64 * 112


def install_fast_convs() -> None:
    """Make diffusers' ``WanCausalConv3d.forward`` run :func:`conv3d_as_conv2d` while the
    calling thread is inside :func:`fast_convs`, and its own code otherwise (so encodes,
    other threads and code outside the block see diffusers' numbers). One class-level
    switch, installed once: no module instance is changed (copies, pickles and ``vars``
    of the user's VAE stay as they were)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    if getattr(WanCausalConv3d.forward, "_engine_switch", False):
        return
    own = WanCausalConv3d.forward

    def forward(self, x, cache_x=None):
        if getattr(_FAST_CONVS, "on", False) and conv2d_pays(self.in_channels, x.shape[-2], x.shape[-1]):
            return conv3d_as_conv2d(self, x, cache_x)
        return own(self, x, cache_x)

    forward._engine_switch = True
    forward.__doc__ = own.__doc__
    WanCausalConv3d.forward = forward


@contextlib.contextmanager
def fast_convs(on: bool = True):
    """Within the block, this thread's Wan causal convolutions run as 2-D convolutions
    (``on=False``: as 3-D ones); :func:`install_fast_convs` must have run."""
    before = getattr(_FAST_CONVS, "on", False)
    _FAST_CONVS.on = on
    try:
        yield
    finally:
        _FAST_CONVS.on = before


class StreamingDecoder(ChunkDecoder):
    """Chunked causal decoding with the Wan VAE, carrying the temporal feature cache.

    Diffusers' ``AutoencoderKLWan._decode`` runs ``post_quant_conv`` on all latents, then the
    decoder one latent frame at a time with a per-conv feature cache (``_feat_map``) and
    ``first_chunk=True`` for frame 0. This class does exactly the same but keeps its own
    cache between :meth:`decode_chunk` calls, so concatenating the outputs of successive
    chunks equals one ``vae.decode`` of all latents (``post_quant_conv`` is a 1x1x1 conv,
    pointwise in time, so applying it per chunk is exact). The VAE's own ``_feat_map`` is
    not touched. Spatial tiling (``vae.enable_tiling``) is not used here.

    Frame counts: the very first latent frame of a video gives 1 pixel frame, every later
    one gives 4, i.e. ``T = 4 * (F - 1) + 1`` over the whole video.

    conv2d (default: on for a VAE on the CPU): the narrow causal 3-D convolutions run as 2-D
    ones (:func:`conv3d_as_conv2d` where :func:`conv2d_pays`; the embedded VAE decodes 1.9x
    faster at 64x112, within 1e-6 of the 3-D path in float32); False keeps diffusers' own
    convolutions everywhere.
    """

    def __init__(self, vae, autotune_convs: bool = True, conv2d: bool | None = None):
        self.vae = vae
        self.autotune_convs = autotune_convs  # cuDNN algorithm search on CUDA (conv_autotune)
        self.conv2d = next(vae.parameters()).device.type == "cpu" if conv2d is None else bool(conv2d)
        if self.conv2d:
            install_fast_convs()
        self.z_dim = vae.config.z_dim
        self._num_convs = count_causal_convs(vae.decoder)
        self.reset()

    def reset(self) -> None:
        """Forget the temporal cache: the next chunk starts a new video."""
        self._feat_map: list = [None] * self._num_convs
        self.frames_decoded = 0  # latent frames consumed since reset()

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, normalized: bool = True) -> torch.Tensor:
        """Decode the next latent frames of the current video.

        Args:
            latents: ``[B, 16, f, h, w]``; normalized (DiT space) unless ``normalized=False``.
                Cast to the VAE's dtype/device.
        Returns:
            video ``[B, 3, t, 8h, 8w]`` float in ``[-1, 1]`` (VAE dtype) with
            ``t = 4 * f - 3`` for the first chunk after :meth:`reset`, ``t = 4 * f`` after.
        """
        vae = self.vae
        _check_latents(latents, vae)
        if latents.shape[2] == 0:
            raise ValueError("decode_chunk got 0 latent frames")
        param = next(vae.parameters())
        z = latents.to(device=param.device)
        if normalized:
            z = denormalize_latents(z.float(), vae)
        z = z.to(dtype=param.dtype)
        outs = []
        with conv_autotune(z.device) if self.autotune_convs else contextlib.nullcontext(), fast_convs(self.conv2d):
            x = vae.post_quant_conv(z)
            for i in range(x.shape[2]):
                conv_idx = [0]
                outs.append(
                    vae.decoder(
                        x[:, :, i : i + 1],
                        feat_cache=self._feat_map,
                        feat_idx=conv_idx,
                        first_chunk=self.frames_decoded == 0,
                    )
                )
                self.frames_decoded += 1
        out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        patch = getattr(vae.config, "patch_size", None)
        if patch is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            out = unpatchify(out, patch_size=patch)
        return out.clamp_(-1.0, 1.0)



# --------------------------------------------------------------------------- encoding / I2V


def _check_video(video: torch.Tensor, vae, name: str = "video") -> None:
    in_ch = getattr(vae.config, "in_channels", 3)
    if not isinstance(video, torch.Tensor) or video.ndim != 5:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"{name} must be a 5-D tensor [B, {in_ch}, T, H, W] in [-1, 1], got {shape}")
    if video.shape[1] != in_ch:
        raise ValueError(f"{name} must have {in_ch} channels (dim 1) [B, {in_ch}, T, H, W], got {tuple(video.shape)}")
    t, h, w = video.shape[2:]
    if (t - 1) % TEMPORAL_FACTOR != 0:
        raise ValueError(f"{name} must have 4*k + 1 frames (1, 5, 9, ...), got T={t}")
    if h % SPATIAL_FACTOR or w % SPATIAL_FACTOR:
        raise ValueError(f"{name} height and width must be multiples of {SPATIAL_FACTOR}, got {h}x{w}")


@torch.no_grad()
def encode_frames(vae, video: torch.Tensor) -> torch.Tensor:
    """Encode pixels to NORMALIZED latents with a Wan VAE, deterministically (posterior
    mean): Wan's codec encode (:mod:`engine.models.codecs`; another family's VAE encodes
    through its own codec).

    Args:
        video: ``[B, 3, T, H, W]`` in ``[-1, 1]`` with ``T = 4k + 1`` and ``H, W`` multiples of 8.
    Returns:
        ``[B, 16, (T - 1) // 4 + 1, H // 8, W // 8]`` normalized latents, float32.
    """
    _check_video(video, vae)
    param = next(vae.parameters())
    x = video.to(device=param.device, dtype=param.dtype)
    z = vae.encode(x).latent_dist.mode()
    return normalize_latents(z.float(), vae)


@torch.no_grad()
def i2v_condition(
    vae,
    first_frame: torch.Tensor,
    num_frames: int,
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Wan2.1 image-to-video condition tensor (``y`` of the I2V DiT), as diffusers'
    ``WanImageToVideoPipeline.prepare_latents`` builds it (without ``last_image``).

    Args:
        first_frame: ``[B, 3, H, W]`` in ``[-1, 1]`` with ``H == height``, ``W == width`` (resize first).
        num_frames: pixel frames ``T = 4k + 1``; ``F = (T - 1) // 4 + 1`` latent frames.
    Returns:
        ``[B, 20, F, height // 8, width // 8]`` in ``dtype`` = concat on channels of
        ``mask [B, 4, F, h, w]`` (latent frame 0: all 4 channels 1; frames 1.. : 0) then
        ``latent [B, 16, F, h, w]`` = normalized posterior mean of the VAE encoding of the
        video ``[first_frame, 0, 0, ..., 0]`` (``num_frames`` frames).

    The mask is the pixel-frame mask (1 for frame 0, 0 after) with frame 0 repeated 4
    times (4 + T - 1 = 4F entries), viewed as ``[F, 4]`` and transposed to ``[4, F]``.
    """
    if not isinstance(first_frame, torch.Tensor) or first_frame.ndim != 4:
        shape = tuple(first_frame.shape) if isinstance(first_frame, torch.Tensor) else type(first_frame).__name__
        raise ValueError(f"first_frame must be a 4-D tensor [B, 3, H, W] in [-1, 1], got {shape}")
    if first_frame.shape[1] != 3:
        raise ValueError(f"first_frame must have 3 channels (dim 1) [B, 3, H, W], got {tuple(first_frame.shape)}")
    if tuple(first_frame.shape[2:]) != (height, width):
        raise ValueError(
            f"first_frame is {first_frame.shape[2]}x{first_frame.shape[3]} but height x width is "
            f"{height}x{width}; resize the image to the video size first"
        )
    if height % SPATIAL_FACTOR or width % SPATIAL_FACTOR:
        raise ValueError(f"height and width must be multiples of {SPATIAL_FACTOR}, got {height}x{width}")
    f = num_latent_frames(num_frames)
    b = first_frame.shape[0]
    h, w = height // SPATIAL_FACTOR, width // SPATIAL_FACTOR

    img = first_frame.unsqueeze(2)
    video = torch.cat([img, img.new_zeros(b, 3, num_frames - 1, height, width)], dim=2)
    latent = encode_frames(vae, video)  # [B, 16, F, h, w] normalized

    # pixel-frame mask, first frame repeated 4x -> 4F entries -> [F, 4] -> [4, F]
    frame_mask = torch.zeros(4 * f, device=latent.device)
    frame_mask[:TEMPORAL_FACTOR] = 1.0
    mask = frame_mask.view(f, TEMPORAL_FACTOR).transpose(0, 1)  # [4, F]
    mask = mask.view(1, TEMPORAL_FACTOR, f, 1, 1).expand(b, TEMPORAL_FACTOR, f, h, w)
    return torch.cat([mask.to(latent.dtype), latent], dim=1).to(dtype)
