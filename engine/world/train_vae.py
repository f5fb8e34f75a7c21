"""Train a small Wan VAE (diffusers ``AutoencoderKLWan``, the engine's VAE class) on the
procedural driving world, evaluate it through the engine's own encode / streaming-decode
path, and write it as a diffusers folder.

- :data:`WORLD_VAE_CONFIG`: z_dim 16, 4x temporal / 8x spatial like Wan2.1; a wider encoder
  (``base_dim``) than decoder (``decoder_base_dim``), the decoder sized so that decoding a
  64x112 frame is not slower than today's tiny VAE (:func:`engine.models.vae.make_tiny_vae`)
  decoding a 128x128 one (:func:`decode_speed` measures both in one process).
- Data: world clips rendered from seeds (:func:`training_specs`: world seeds below
  :data:`HELDOUT_SEED_BASE`, random start times, the five weathers in turn;
  :func:`heldout_specs`: world seeds from :data:`HELDOUT_SEED_BASE` up), cached as uint8
  ``.npy`` (:func:`render_clips`); training takes random causal windows of ``4k + 1``
  frames from them (Wan's VAE encodes frame 0 alone, then groups of 4).
- :func:`train`: L1 + MSE on the reconstruction of the posterior mean, a very small KL
  weight, AdamW with a linear warm-up and cosine decay, gradient clipping; every random
  draw comes from the seed, so a rerun on the same machine gives the same weights.
- :func:`set_latent_stats`: per-channel mean / std of the posterior means over training
  clips, stored as ``latents_mean`` / ``latents_std`` in the config.
- :func:`evaluate_vae`: PSNR and SSIM (:func:`psnr`, :func:`ssim`: 11x11 Gaussian window,
  on [0, 1] RGB) per weather and overall on held-out clips, encoding with
  :func:`engine.models.vae.encode_frames` and decoding with
  :class:`engine.models.vae.StreamingDecoder`, exactly as generation does.

``python -m engine.world.train_vae --out engine/assets/world_vae --steps 6000 --seed 0``
trains, evaluates and writes ``config.json`` + ``diffusion_pytorch_model.safetensors`` +
``training.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .render import WEATHERS, render_clip

__all__ = ["HELDOUT_SEED_BASE", "WORLD_VAE_CONFIG", "decode_speed", "decode_train", "evaluate_vae", "heldout_specs",
           "main", "make_world_vae", "psnr", "render_clips", "save_world_vae", "set_latent_stats", "ssim", "train",
           "training_specs", "video_metrics"]

#: World seeds from here up are held out (evaluation); training clips use seeds below it.
HELDOUT_SEED_BASE = 10 ** 6
HEIGHT, WIDTH = 64, 112

#: The world VAE: the real ``AutoencoderKLWan`` layout (z_dim 16, dim_mult [1, 2, 4, 4]:
#: 8x spatial, temporal downsampling in the last two stages: 4x temporal), an encoder of
#: base width 16 and a decoder of base width 12 (``decoder_base_dim``, which diffusers lets
#: differ): the decoder's widths are 12..48 at 64x112 (7168 px) against the tiny-random
#: VAE's 8..32 at 128x128 (16384 px); its streaming decode measures ~0.67x the tiny-random
#: VAE's time per frame on a CPU (:func:`decode_speed`). Width 16 decoded at ~0.75-0.9x and
#: reconstructed no better at the same steps (25.7 vs 26.4 dB held-out after 6000-6500).
#: ``latents_mean`` / ``latents_std`` are placeholders until :func:`set_latent_stats`.
WORLD_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 16,
    "decoder_base_dim": 12,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": [0.0] * 16,
    "latents_std": [1.0] * 16,
}


def _copy_config(config: dict | None) -> dict:
    cfg = WORLD_VAE_CONFIG if config is None else config
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.items()}


def make_world_vae(seed: int = 0, config: dict | None = None):
    """A freshly initialised ``AutoencoderKLWan`` of ``config`` (default
    :data:`WORLD_VAE_CONFIG`), float32 on the CPU, in train mode. diffusers' / torch's
    default init, drawn under ``torch.manual_seed(seed)`` inside a forked RNG (the global RNG
    state is left as it was), so the same seed gives the same weights."""
    from engine.models.vae import autoencoder_cls

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = autoencoder_cls()(**_copy_config(config))
    return vae.float().train()


# --------------------------------------------------------------------------- data


def training_specs(seed: int, count: int, max_start: float = 60.0, fps: float = 16.0) -> list[dict]:
    """``count`` training clip specs drawn from ``numpy.random.default_rng(seed)``: dicts
    with ``seed`` (a world seed in [0, HELDOUT_SEED_BASE)), ``start`` (s, uniform on a frame
    in [0, max_start]) and ``weather`` (the five WEATHERS in turn, so all appear equally)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        world_seed = int(rng.integers(0, HELDOUT_SEED_BASE))
        start = float(rng.integers(0, int(max_start * fps) + 1)) / fps
        out.append({"seed": world_seed, "start": start, "weather": WEATHERS[i % len(WEATHERS)]})
    return out


def heldout_specs(seeds: Sequence[int], weathers: Sequence[str] = WEATHERS, max_start: float = 60.0,
                  fps: float = 16.0) -> list[dict]:
    """Evaluation clip specs: every world seed in ``seeds`` (held-out ones are
    >= HELDOUT_SEED_BASE) in every weather of ``weathers``, from a start time (s, on a
    frame in [0, max_start]) drawn from ``default_rng(seed)``. Returns a list of dicts
    (``seed``, ``start``, ``weather``), seed-major."""
    out = []
    for s in seeds:
        start = float(np.random.default_rng(int(s)).integers(0, int(max_start * fps) + 1)) / fps
        out.extend({"seed": int(s), "start": start, "weather": w} for w in weathers)
    return out


def render_clips(specs: Sequence[dict], num_frames: int, height: int = HEIGHT, width: int = WIDTH,
                 cache_dir: str | None = None, log=None) -> np.ndarray:
    """Render the clips of ``specs`` (:func:`training_specs` / :func:`heldout_specs`) with
    :func:`~engine.world.render.render_clip`: uint8 ``[N, T, H, W, 3]``. With ``cache_dir``
    the array is kept there as a ``.npy`` named by a hash of the arguments (rendering is
    deterministic, so a cached file is reused as is)."""
    key = hashlib.sha1(json.dumps([list(specs), num_frames, height, width], sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"world_clips_{len(specs)}x{num_frames}_{height}x{width}_{key}.npy") \
        if cache_dir else None
    if path and os.path.isfile(path):
        arr = np.load(path)
        if arr.shape == (len(specs), num_frames, height, width, 3) and arr.dtype == np.uint8:
            return arr
    arr = np.empty((len(specs), num_frames, height, width, 3), np.uint8)
    t0 = time.time()
    for i, sp in enumerate(specs):
        arr[i] = render_clip(sp["seed"], num_frames, height, width, weather=sp["weather"], start=sp["start"]).frames
        if log and (i + 1) % 50 == 0:
            log(f"rendered {i + 1}/{len(specs)} clips ({time.time() - t0:.0f} s)")
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + f".{os.getpid()}.tmp.npy"
        np.save(tmp, arr)
        os.replace(tmp, path)
    return arr


def _to_video(u8: np.ndarray) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float32 [B, 3, T, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------- model pieces


def decode_train(vae, z: torch.Tensor) -> torch.Tensor:
    """Decode RAW latents ``[B, 16, F, h, w]`` -> ``[B, 3, 4F - 3, 8h, 8w]`` with autograd:
    the same computation as :class:`engine.models.vae.StreamingDecoder` (``post_quant_conv``,
    then the decoder one latent frame at a time with a causal feature cache, ``first_chunk``
    for frame 0) but without the final clamp, so out-of-range outputs still get gradients."""
    from engine.models.vae import count_causal_convs

    x = vae.post_quant_conv(z)
    cache: list = [None] * count_causal_convs(vae.decoder)
    outs = []
    for i in range(x.shape[2]):
        outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=cache, feat_idx=[0], first_chunk=i == 0))
    return torch.cat(outs, dim=2)


class fast_convs:
    """Within the block, every ``WanCausalConv3d`` of ``vae`` runs as
    :func:`engine.models.vae.conv3d_as_conv2d` (training speed on the CPU; the switch is
    per thread, :func:`engine.models.vae.install_fast_convs`; ``vae`` is unchanged). Weights and results are those
    of the model (up to float32 summation order)."""

    def __init__(self, vae):
        from engine.models.vae import fast_convs as switch, install_fast_convs

        install_fast_convs()
        self._switch = switch

    def __enter__(self):
        self._ctx = self._switch(True)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _losses(vae, video: torch.Tensor, kl_weight: float, l1_weight: float = 1.0,
            mse_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Reconstruction of the posterior mean: ``l1_weight`` L1 + ``mse_weight`` MSE (on
    [-1, 1]) + ``kl_weight`` KL (mean per latent element). MSE alone targets PSNR directly
    (L1's gradient dominates the sum: a decoder fine-tune for PSNR sets ``l1_weight`` 0)."""
    post = vae.encode(video).latent_dist
    rec = decode_train(vae, post.mean).float()
    l1 = (rec - video).abs().mean()
    mse = (rec - video).pow(2).mean()
    mean, logvar = post.mean.float(), post.logvar.float()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    return {"loss": l1_weight * l1 + mse_weight * mse + kl_weight * kl, "l1": l1, "mse": mse, "kl": kl}


# --------------------------------------------------------------------------- metrics


def psnr(ref: torch.Tensor, rec: torch.Tensor) -> float:
    """PSNR (dB) of ``rec`` against ``ref``, both in [0, 1] (any equal shapes):
    ``10 log10(1 / MSE)``; ``inf`` for a perfect reconstruction."""
    mse = float((ref.double() - rec.double()).pow(2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(ref: torch.Tensor, rec: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM (Wang et al. 2004) of images ``[N, C, H, W]`` in [0, 1]: per channel, a
    ``window`` x ``window`` Gaussian window (``sigma``) without padding (valid positions
    only; the window shrinks to the image for images smaller than it), C1 = 0.01^2,
    C2 = 0.03^2; the SSIM map averaged over positions and channels. Returns float64 ``[N]``."""
    x, y = ref.double(), rec.double()
    n, c, h, w = x.shape
    k = min(window, h, w)
    win = _gaussian_window(k, sigma).to(x.device).expand(c, 1, k, k).contiguous()

    def blur(t):
        return F.conv2d(t, win, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return smap.mean(dim=(1, 2, 3))


def video_metrics(ref: torch.Tensor, rec: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, over all pixels of the clip) and mean per-frame SSIM of one clip; ``ref``
    and ``rec`` are ``[3, T, H, W]`` in [-1, 1]. Returns ``{"psnr", "ssim"}``."""
    a = ((ref.float() + 1) / 2).clamp(0, 1)
    b = ((rec.float() + 1) / 2).clamp(0, 1)
    frames_a, frames_b = a.permute(1, 0, 2, 3), b.permute(1, 0, 2, 3)  # [T, 3, H, W]
    return {"psnr": psnr(a, b), "ssim": float(ssim(frames_a, frames_b).mean())}


@torch.no_grad()
def evaluate_vae(vae, seeds: Sequence[int], num_frames: int = 33, height: int = HEIGHT, width: int = WIDTH,
                 weathers: Sequence[str] = WEATHERS, cache_dir: str | None = None) -> dict:
    """Reconstruction quality of ``vae`` on the world clips of ``seeds`` (each in every
    weather, :func:`heldout_specs`), ``num_frames`` (4k + 1) frames at ``height`` x
    ``width``: encoded with :func:`engine.models.vae.encode_frames` (posterior mean,
    normalized latents) and decoded with :class:`engine.models.vae.StreamingDecoder`, the
    path generation takes. Returns ``{"psnr": {weather: dB, ..., "overall": dB}, "ssim":
    {...}, "clips", "num_frames", "height", "width", "seeds", "per_clip": [...]}``; a
    weather's number is the mean over its clips of the clip's PSNR (all its pixels) or mean
    per-frame SSIM, "overall" the mean over all clips."""
    from engine.models.vae import StreamingDecoder, encode_frames

    was_training = vae.training
    vae.eval()
    specs = heldout_specs(seeds, weathers)
    u8 = render_clips(specs, num_frames, height, width, cache_dir=cache_dir)
    dec = StreamingDecoder(vae)
    per_clip = []
    per = len(weathers)
    for i in range(0, len(specs), per):  # one seed (all its weathers) per batch
        video = _to_video(u8[i:i + per])
        rec = dec.decode_all(encode_frames(vae, video)).float()
        for j in range(video.shape[0]):
            m = video_metrics(video[j], rec[j])
            per_clip.append({**specs[i + j], **m})
    vae.train(was_training)
    out: dict[str, Any] = {"psnr": {}, "ssim": {}}
    for w in list(weathers) + ["overall"]:
        sel = [c for c in per_clip if w == "overall" or c["weather"] == w]
        if sel:
            out["psnr"][w] = float(np.mean([c["psnr"] for c in sel]))
            out["ssim"][w] = float(np.mean([c["ssim"] for c in sel]))
    out.update(clips=len(per_clip), num_frames=num_frames, height=height, width=width, seeds=[int(s) for s in seeds],
               per_clip=per_clip)
    return out


@torch.no_grad()
def decode_speed(vae, height: int = HEIGHT, width: int = WIDTH, num_frames: int = 33, reps: int = 5,
                 reference=None, reference_size: tuple[int, int] = (128, 128)) -> dict:
    """Seconds per decoded frame of ``vae`` at ``height`` x ``width`` against ``reference``
    (default: today's tiny VAE, :func:`engine.models.vae.make_tiny_vae`) at
    ``reference_size``, both through :class:`engine.models.vae.StreamingDecoder` on random
    normalized latents of ``num_frames`` frames, in this process, interleaved ``reps``
    times (after one warm-up each); min and median over the reps. Returns a dict with
    ``world_s_per_frame``, ``tiny_s_per_frame`` (min), their ``*_median``, ``ratio`` (world /
    tiny, by min), sizes, threads."""
    from engine.models.vae import StreamingDecoder, make_tiny_vae, num_latent_frames

    ref = reference if reference is not None else make_tiny_vae()
    was_training = vae.training
    vae.eval()
    f = num_latent_frames(num_frames)
    gen = torch.Generator().manual_seed(0)
    rh, rw = reference_size
    jobs = {"world": (StreamingDecoder(vae), torch.randn(1, 16, f, height // 8, width // 8, generator=gen)),
            "tiny": (StreamingDecoder(ref), torch.randn(1, 16, f, rh // 8, rw // 8, generator=gen))}
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for k, (dec, z) in jobs.items():
        dec.decode_all(z)  # warm-up
    for _ in range(reps):
        for k, (dec, z) in jobs.items():
            t0 = time.perf_counter()
            out = dec.decode_all(z)
            times[k].append((time.perf_counter() - t0) / out.shape[2])
    vae.train(was_training)
    res = {f"{k}_s_per_frame": min(v) for k, v in times.items()}
    res.update({f"{k}_s_per_frame_median": float(np.median(v)) for k, v in times.items()})
    res.update(ratio=res["world_s_per_frame"] / res["tiny_s_per_frame"], world_size=[height, width],
               tiny_size=[rh, rw], num_frames=num_frames, reps=reps, threads=torch.get_num_threads())
    return res


# --------------------------------------------------------------------------- latent statistics / saving


@torch.no_grad()
def set_latent_stats(vae, clips_u8: np.ndarray, batch: int = 8) -> tuple[list[float], list[float]]:
    """Measure the per-channel mean and std of the posterior means of ``clips_u8`` (uint8
    ``[N, T, H, W, 3]``, T = 4k + 1) over all clips, latent frames and positions, and store
    them in the VAE's config as ``latents_mean`` / ``latents_std`` (what
    :func:`engine.models.vae.normalize_latents` uses). Returns ``(mean, std)`` lists."""
    was_training = vae.training
    vae.eval()
    z_dim = vae.config.z_dim
    s1 = torch.zeros(z_dim, dtype=torch.float64)
    s2 = torch.zeros(z_dim, dtype=torch.float64)
    n = 0
    for i in range(0, len(clips_u8), batch):
        z = vae.encode(_to_video(clips_u8[i:i + batch])).latent_dist.mean.double()
        s1 += z.sum(dim=(0, 2, 3, 4))
        s2 += z.pow(2).sum(dim=(0, 2, 3, 4))
        n += z.numel() // z_dim
    mean = s1 / n
    std = (s2 / n - mean ** 2).clamp_min(1e-12).sqrt()
    vae.train(was_training)
    mean_l = [round(float(v), 6) for v in mean]
    std_l = [round(float(v), 6) for v in std]
    vae.register_to_config(latents_mean=mean_l, latents_std=std_l)
    return mean_l, std_l


def save_world_vae(vae, out: str, dtype: torch.dtype = torch.float16) -> None:
    """Write ``vae`` to the folder ``out`` with diffusers' ``save_pretrained`` (config.json +
    diffusion_pytorch_model.safetensors), its weights in ``dtype`` (float16 by default: half
    the size; :func:`engine.models.vae.load_vae` casts back to float32). The model itself
    is left in float32."""
    import copy

    os.makedirs(out, exist_ok=True)
    m = copy.deepcopy(vae).to(dtype).eval()
    m.save_pretrained(out, safe_serialization=True)


def _round_trip(vae, dtype: torch.dtype):
    """The model with its weights rounded to ``dtype`` and back to float32 (what a saved
    folder loads as)."""
    import copy

    m = copy.deepcopy(vae)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(dtype).float())
    return m


# --------------------------------------------------------------------------- training


def _lr_at(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier at (0-based) ``step``: linear warm-up over ``warmup`` steps, then a
    cosine from 1 to ``min_ratio`` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(steps - warmup - 1, 1)
    p = min((step - warmup) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def train(steps: int, seed: int = 0, clips: int = 400, clip_frames: int = 25, window: int = 9, batch: int = 2,
          crop: tuple[int, int] | None = None, long_window: int | None = None, long_from: float = 0.75,
          long_batch: int = 1, bf16: bool = False, lr: float = 2e-3, warmup: int | None = None,
          min_lr_ratio: float = 0.02, kl_weight: float = 1e-5, l1_weight: float = 1.0, mse_weight: float = 1.0,
          weight_decay: float = 1e-4, grad_clip: float = 1.0, height: int = HEIGHT, width: int = WIDTH,
          config: dict | None = None, cache_dir: str | None = None, log_every: int = 50, eval_every: int = 0,
          eval_seeds: Sequence[int] = (HELDOUT_SEED_BASE,), eval_frames: int = 33, checkpoint: str | None = None,
          checkpoint_every: int = 0, init: str | None = None, freeze_encoder: bool = False,
          log=print) -> tuple[Any, dict]:
    """Train a world VAE for ``steps`` AdamW steps. Data: ``clips`` training clips of
    ``clip_frames`` frames (:func:`training_specs` of ``seed``, rendered / cached by
    :func:`render_clips`); each step takes ``batch`` random windows of ``window`` (4k + 1)
    frames at random offsets (``crop`` = (h, w), multiples of 8: a random spatial crop of
    each window, for cheaper steps; the model is convolutional). ``long_window``: from step
    ``long_from * steps`` on, windows of that many frames (``long_batch`` per step) instead,
    so the causal caches are trained as deep into a clip as evaluation goes. ``bf16``: the
    forward pass under CPU bfloat16 autocast (float32 weights, optimiser and loss; faster
    convolutions on CPUs with AVX512-BF16). Loss:
    :func:`_losses` (``l1_weight`` L1 + ``mse_weight`` MSE + ``kl_weight`` KL); LR ``lr`` with ``warmup`` linear warm-up
    steps (default 5% of steps, at most 200) and a cosine decay to ``min_lr_ratio * lr``;
    gradients clipped to norm ``grad_clip``. Init, batches and everything random come from
    ``seed``. ``eval_every`` > 0: a held-out
    :func:`evaluate_vae` on ``eval_seeds`` every so many steps (logged in the curve).
    ``checkpoint``: a file to save (every ``checkpoint_every`` steps) and resume from
    (model, optimiser, RNG state, curve), so an interrupted run continues exactly.
    ``init``: start from a saved world-VAE folder instead of a fresh init; with
    ``freeze_encoder`` only the decoder (``post_quant_conv`` + ``decoder``) trains and the
    encoder (``encoder`` + ``quant_conv``) stays bit-identical, so the latents -- and a DiT
    trained on them -- are unchanged while the reconstruction improves.
    Returns ``(vae, info)``; ``info`` has the loss curve (every ``log_every`` steps), the
    evaluations, the number of clips / windows and the training wall time (s)."""
    if (window - 1) % 4 or window > clip_frames:
        raise ValueError(f"window must be 4k + 1 frames and <= clip_frames, got {window} / {clip_frames}")
    if long_window and ((long_window - 1) % 4 or long_window > clip_frames):
        raise ValueError(f"long_window must be 4k + 1 frames and <= clip_frames, got {long_window} / {clip_frames}")
    long_start = int(long_from * steps) if long_window else steps
    t_start = time.time()
    specs = training_specs(seed, clips)
    data = render_clips(specs, clip_frames, height, width, cache_dir=cache_dir, log=log)
    t_render = time.time() - t_start
    if freeze_encoder and init is None:
        raise ValueError("freeze_encoder needs init=<a saved world-VAE folder>: a fresh encoder must be trained")
    if init is not None:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(init).float().train()
    else:
        vae = make_world_vae(seed, config)
    if freeze_encoder:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    trainable = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    warm = warmup if warmup is not None else max(1, min(200, steps // 20))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_at(s, steps, warm, min_lr_ratio))
    rng = np.random.default_rng([seed, 1])
    curve: list[dict] = []
    evals: list[dict] = []
    start_step = 0
    acc = {"loss": 0.0, "l1": 0.0, "mse": 0.0, "kl": 0.0}
    acc_n = 0
    train_time = 0.0
    if checkpoint and os.path.isfile(checkpoint):
        ck = torch.load(checkpoint, weights_only=False)
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        curve, evals, start_step, acc, acc_n, train_time = (ck["curve"], ck["evals"], ck["step"], ck["acc"],
                                                            ck["acc_n"], ck["train_time"])
        log(f"resumed from {checkpoint} at step {start_step}")
    vae.train()
    t0 = time.time() - train_time
    for step in range(start_step, steps):
        win, nb = (long_window, long_batch) if step >= long_start else (window, batch)
        idx = rng.integers(0, len(data), nb)
        off = rng.integers(0, clip_frames - win + 1, nb)
        if crop:
            ys = rng.integers(0, height - crop[0] + 1, nb)
            xs = rng.integers(0, width - crop[1] + 1, nb)
            wins = [data[i, o:o + win, y:y + crop[0], x:x + crop[1]] for i, o, y, x in zip(idx, off, ys, xs)]
        else:
            wins = [data[i, o:o + win] for i, o in zip(idx, off)]
        video = _to_video(np.stack(wins))
        with fast_convs(vae):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                parts = _losses(vae, video, kl_weight, l1_weight, mse_weight)
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
        opt.step()
        sched.step()
        if not torch.isfinite(parts["loss"]):
            raise FloatingPointError(f"non-finite loss at step {step}: {parts}")
        for k in acc:
            acc[k] += float(parts[k].detach())
        acc_n += 1
        done = step + 1
        if done % log_every == 0 or done == steps or done == 1:
            row = {"step": done, **{k: v / acc_n for k, v in acc.items()}, "lr": opt.param_groups[0]["lr"],
                   "grad_norm": float(gnorm), "time_s": round(time.time() - t0, 1)}
            row["psnr_train"] = 10 * math.log10(4.0 / max(row["mse"], 1e-12))  # mse on [-1, 1] -> [0, 1] PSNR
            curve.append(row)
            log(f"step {done}/{steps} loss {row['loss']:.4f} l1 {row['l1']:.4f} mse {row['mse']:.5f} "
                f"kl {row['kl']:.2f} psnr~{row['psnr_train']:.2f} lr {row['lr']:.2e} |g| {row['grad_norm']:.2f} "
                f"{row['time_s']:.0f}s")
            acc = {k: 0.0 for k in acc}
            acc_n = 0
        if eval_every and done % eval_every == 0 and done != steps:
            ev = evaluate_vae(vae, eval_seeds, eval_frames, height, width, cache_dir=cache_dir)
            evals.append({"step": done, "psnr": ev["psnr"], "ssim": ev["ssim"]})
            log(f"  eval step {done}: psnr {ev['psnr']['overall']:.2f} ssim {ev['ssim']['overall']:.4f} "
                + " ".join(f"{w}={ev['psnr'][w]:.1f}" for w in WEATHERS if w in ev["psnr"]))
        if checkpoint and checkpoint_every and done % checkpoint_every == 0 and done != steps:
            tmp = checkpoint + ".tmp"
            torch.save({"model": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "curve": curve,
                        "evals": evals, "step": done, "acc": acc, "acc_n": acc_n,
                        "train_time": time.time() - t0}, tmp)
            os.replace(tmp, checkpoint)
    info = {"curve": curve, "evals": evals, "train_wall_s": round(time.time() - t0, 1),
            "render_wall_s": round(t_render, 1), "clips": clips, "clip_frames": clip_frames, "window": window,
            "long_window": long_window, "long_from_step": long_start if long_window else None,
            "long_batch": long_batch if long_window else None, "bf16_autocast": bf16,
            "batch": batch, "crop": list(crop) if crop else None, "lr": lr, "warmup": warm,
            "min_lr_ratio": min_lr_ratio, "kl_weight": kl_weight,
            "weight_decay": weight_decay, "grad_clip": grad_clip, "height": height, "width": width,
            "train_specs_seed": seed, "init": init, "freeze_encoder": freeze_encoder, "data": data}
    return vae, info


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.world.train_vae", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output diffusers folder (config.json, safetensors, training.json)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clips", type=int, default=400, help="training clips rendered (world seeds < 10**6)")
    p.add_argument("--clip-frames", type=int, default=25, help="frames per rendered training clip")
    p.add_argument("--window", type=int, default=9, help="frames per training window (4k + 1)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--long-window", type=int, default=None, help="frames per window in the last phase (e.g. 33)")
    p.add_argument("--long-from", type=float, default=0.75, help="share of the steps before the long windows")
    p.add_argument("--long-batch", type=int, default=1, help="windows per step in the long phase")
    p.add_argument("--size", default=f"{HEIGHT}x{WIDTH}", help="render / evaluation size HxW (multiples of 8)")
    p.add_argument("--crop", default=None, help="train on random HxW crops (multiples of 8), e.g. 32x56")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the training forward pass (CPU)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5%% of steps, at most 200)")
    p.add_argument("--kl-weight", type=float, default=1e-5)
    p.add_argument("--l1-weight", type=float, default=1.0, help="weight of the L1 reconstruction loss")
    p.add_argument("--mse-weight", type=float, default=1.0, help="weight of the MSE reconstruction loss")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--cache", default=None, help="folder for the rendered-clip cache (uint8 .npy), e.g. /tmp/world_vae")
    p.add_argument("--eval-seeds", type=int, default=None,
                   help="held-out world seeds 10**6 .. (each in all five weathers); default 4 (1 under 50 steps)")
    p.add_argument("--eval-frames", type=int, default=None, help="frames per held-out clip (default 33; 9 under 50)")
    p.add_argument("--eval-every", type=int, default=0, help="held-out evaluation (1 seed) every so many steps")
    p.add_argument("--stats-clips", type=int, default=None, help="clips for latents_mean / std (default 128)")
    p.add_argument("--speed-reps", type=int, default=None, help="decode-speed repetitions (default 5; 1 under 50)")
    p.add_argument("--speed-frames", type=int, default=None, help="frames per decode-speed run (33; 5 under 50)")
    p.add_argument("--checkpoint", default=None, help="resume / checkpoint file (e.g. /tmp/world_vae/ckpt.pt)")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--save-dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--init", default=None, help="start from this saved world-VAE folder (fine-tuning)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="with --init: train the decoder only; the encoder, its latents and latents_mean/std unchanged")
    return p


def _size(text: str | None, what: str = "--crop") -> tuple[int, int] | None:
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"{what} must be HxW, e.g. 32x56; got {text!r}") from None
    if h % 8 or w % 8 or h < 8 or w < 8:
        raise SystemExit(f"{what} must be HxW in multiples of 8; got {text!r}")
    return h, w


def main(argv: Sequence[str] | None = None) -> dict:
    """The CLI: train (:func:`train`), measure latent statistics, evaluate on held-out seeds
    (:func:`evaluate_vae`, on the saved-precision weights), compare decode speed
    (:func:`decode_speed`), write the folder (:func:`save_world_vae`) and ``training.json``.
    Returns the training.json dict."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)  # the caller's setting again (tests call main in-process)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run(args, argv: list[str]) -> dict:
    smoke = args.steps < 50
    eval_seeds = args.eval_seeds if args.eval_seeds is not None else (1 if smoke else 4)
    eval_frames = args.eval_frames if args.eval_frames is not None else (9 if smoke else 33)
    stats_clips = args.stats_clips if args.stats_clips is not None else 128
    speed_reps = args.speed_reps if args.speed_reps is not None else (1 if smoke else 5)
    speed_frames = args.speed_frames if args.speed_frames is not None else (5 if smoke else 33)
    height, width = _size(args.size, "--size")
    crop = _size(args.crop)
    if crop and (crop[0] > height or crop[1] > width):
        raise SystemExit(f"--crop {args.crop} is larger than --size {args.size}")

    def log(msg):
        print(msg, flush=True)

    t0 = time.time()
    heldout = [HELDOUT_SEED_BASE + i for i in range(eval_seeds)]
    vae, info = train(args.steps, seed=args.seed, clips=args.clips, clip_frames=args.clip_frames, window=args.window,
                      batch=args.batch, crop=crop, long_window=args.long_window, long_from=args.long_from,
                      long_batch=args.long_batch, bf16=args.bf16, lr=args.lr, warmup=args.warmup, kl_weight=args.kl_weight,
                      l1_weight=args.l1_weight, mse_weight=args.mse_weight,
                      height=height, width=width, cache_dir=args.cache, eval_every=args.eval_every,
                      eval_seeds=heldout[:1], eval_frames=eval_frames, checkpoint=args.checkpoint,
                      checkpoint_every=args.checkpoint_every, init=args.init, freeze_encoder=args.freeze_encoder,
                      log=log)
    data = info.pop("data")
    # latent statistics over training clips (the first 4k + 1 frames of each)
    stat_frames = 4 * ((data.shape[1] - 1) // 4) + 1
    if args.freeze_encoder:  # the encoder is the init's: keep its statistics exactly
        mean, std = list(vae.config.latents_mean), list(vae.config.latents_std)
    else:
        mean, std = set_latent_stats(vae, data[:stats_clips, :stat_frames])
    save_dtype = getattr(torch, args.save_dtype)
    saved = _round_trip(vae, save_dtype).eval()
    log("evaluating on held-out seeds ...")
    ev = evaluate_vae(saved, heldout, eval_frames, height, width, cache_dir=args.cache)
    log(f"held-out PSNR {ev['psnr']['overall']:.2f} dB, SSIM {ev['ssim']['overall']:.4f}: "
        + " ".join(f"{w} {ev['psnr'][w]:.2f}/{ev['ssim'][w]:.3f}" for w in WEATHERS if w in ev["psnr"]))
    speed = decode_speed(saved, HEIGHT, WIDTH, num_frames=speed_frames, reps=speed_reps)
    log(f"decode s/frame: world {HEIGHT}x{WIDTH} {speed['world_s_per_frame']:.4f} vs tiny 128x128 "
        f"{speed['tiny_s_per_frame']:.4f} (ratio {speed['ratio']:.2f})")
    save_world_vae(vae, args.out, save_dtype)
    import diffusers

    params = sum(p.numel() for p in vae.parameters())
    report = {
        "config": dict(vae.config),
        "seed": args.seed,
        "steps": args.steps,
        "command": "python -m engine.world.train_vae " + " ".join(shlex.quote(a) for a in argv),
        "params": {"total": params, "encoder": sum(p.numel() for p in vae.encoder.parameters()),
                   "decoder": sum(p.numel() for p in vae.decoder.parameters())},
        "weights_dtype": args.save_dtype,
        "weights_bytes": os.path.getsize(os.path.join(args.out, "diffusion_pytorch_model.safetensors")),
        "training": {k: v for k, v in info.items() if k not in ("curve", "evals")},
        "loss": (f"{args.l1_weight} * L1 + {args.mse_weight} * MSE of the posterior-mean reconstruction on [-1, 1]"
                 f" + {args.kl_weight} * mean KL"),
        "optimizer": "AdamW(betas=(0.9, 0.99)), linear warm-up then cosine decay, grad-norm clip",
        "loss_curve": info["curve"],
        "evals_during_training": info["evals"],
        "latents_mean": mean,
        "latents_std": std,
        "latent_stats_clips": int(min(stats_clips, len(data))),
        "heldout": {k: v for k, v in ev.items()},
        "decode_speed": speed,
        "wall_time_s": round(time.time() - t0, 1),
        "machine": {"platform": platform.platform(), "processor": _cpu_name(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": np.__version__,
                    "python": platform.python_version()},
    }
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(report, f, indent=1)
    log(f"wrote {args.out} in {report['wall_time_s']:.0f} s")
    return report


if __name__ == "__main__":
    main()
