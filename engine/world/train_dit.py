"""Train the tiny Wan DiT on the procedural driving world with diffusion forcing.

``python -m engine.world.train_dit --vae engine/assets/world_vae --out engine/assets/world_dit --steps N --seed 0``

One model serves every strategy of the engine (``ar``, ``mmpl``, ``longdwm``, ``mila``):
each training batch draws one *frame-role pattern* -- which latent frames of the pass are
clean context (timestep 0, as the runtime feeds context) and which are generated (noised
with their own sigma), the frame-level visibility and the RoPE positions -- exactly as
:func:`engine.denoise.denoise_jobs` / the KV-cache path call :class:`~engine.models.wan.WanDiT`.

Shapes (latent size of the 64 x 112 world video: 8 x 14, 28 tokens per latent frame):

- clip latents   ``[N, 16, L, 8, 14]`` float32, normalised (:func:`engine.models.vae.encode_frames`),
  ``L = (clip_frames - 1) // 4 + 1`` (81 frames -> 21 latents);
- text table     ``[6, text_len, 32]``: the five weather prompts (``engine.world.PROMPTS``)
  and the empty prompt, from ``make_tiny_text_encoder(seed=0, dim=32)``, zero-padded to
  ``text_len`` as :func:`engine.inputs.text_rows` does;
- one batch      ``x [B, 16, n, 8, 14]`` (n frames of one pattern), ``t [B, n]`` in 0..1000,
  ``target [B, 16, n, 8, 14]``, the pattern's ``visibility [n, n]`` and ``rope [n]``.

Objective: rectified flow per latent *frame* (diffusion forcing): a generated frame gets
``x_s = (1 - s) x0 + s eps`` with its own s (shifted, s = k u / (1 + (k - 1) u), k = 5, u
uniform; half the samples share one s over their generated frames, as a sampler step
does), timestep 1000 s; clean frames are x0 at timestep 0. The model predicts
``v = eps - x0``; the loss is the MSE over generated frames only.

Patterns (:func:`sample_pattern`):

- ``ar``: block-causal chunks of 3 latents; chunks before the current one clean (the KV
  cache's context), the current chunk generated; a chunk sees earlier chunks and itself.
- ``full``: 1..9 frames, all generated with independent s, full visibility.
- ``keyframe``: a subsequence with stride r in 2..4 (2..5 keyframes; RoPE = keyframe
  index as longdwm's coarse model, or the timeline position as mila's), the first
  keyframe clean half of the time (a later rollout).
- ``interp``: 1..3 clean head frames, 1..6 generated, 1 clean tail frame (longdwm's fine
  clips, mmpl's stages).
- ``anchors``: clean frames at arbitrary positions of a 4..13-frame window with gaps
  (mila's history + lookahead anchors, mmpl's planning frames).

Non-``ar`` patterns use :func:`engine.plans.core.conditioned_visibility` (generated frames
see everything; clean frames see the clean ones only), the plans' own default.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import PRESETS, ModelConfig
from ..models.weights import save_original_layout

__all__ = ["WORLD_DIT_CONFIG", "PATTERNS", "TrainConfig", "FramePattern", "sample_pattern", "check_pattern",
           "clip_specs", "build_dataset", "text_table", "make_batch", "pattern_loss", "train", "main"]

#: The DiT of the embedded default model (to become the ``tiny`` preset): 4 layers of
#: width 128 (2 heads of 64), FFN 384, text width 32 (the tiny UMT5), 32 text tokens.
WORLD_DIT_CONFIG = PRESETS["tiny"]

PATTERNS = ("ar", "full", "keyframe", "interp", "anchors")
HELDOUT_SEED_BASE = 10 ** 6  # world seeds: training < 10**6 <= held-out
CHUNK = 3  # latents per ar chunk (ArOptions.chunk_frames)
TEXT_ENCODER_SEED = 0
EMPTY = 5  # row of the empty prompt in text_table()


@dataclass
class TrainConfig:
    """Everything a run depends on besides the model config and the VAE.

    steps / batch_size: optimiser steps of ``batch_size`` samples (one pattern per batch);
    lr: AdamW peak, ``warmup`` linear steps then cosine to ``lr * min_lr_ratio``;
    ema_decay: EMA of the weights (ramped as min(decay, (1 + step) / (10 + step)));
    clips / heldout_clips of ``clip_frames`` frames (4k+1); cfg_drop: share of samples
    with the empty-prompt embedding; shift: sigma shift of the training noise levels;
    offset0_prob: share of windows starting at the clip's first latent (the VAE's
    first-frame latent, as position 0 of a generated video); pattern_probs: mix of
    :data:`PATTERNS`; eval_batches: fixed held-out batches per pattern (``eval_every``
    steps and at the end)."""

    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 200
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    clips: int = 160
    heldout_clips: int = 20
    clip_frames: int = 81
    max_start: float = 60.0
    cfg_drop: float = 0.1
    shift: float = 5.0
    shared_sigma_prob: float = 0.5
    offset0_prob: float = 0.5
    pattern_probs: dict = field(default_factory=lambda: {"ar": 0.35, "full": 0.2, "keyframe": 0.15, "interp": 0.15,
                                                         "anchors": 0.15})
    eval_batches: int = 4
    eval_every: int = 500
    log_every: int = 50
    checkpoint_every: int = 1000
    threads: int = 2


# ----------------------------------------------------------------------------------
# frame-role patterns
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FramePattern:
    """The frame roles of one pass over n latent frames.

    offsets: int [n], increasing: clip-latent index of each frame relative to the window
    start; generated: bool [n] (False: clean context at timestep 0); visibility: bool
    [n][n] (may frame i attend to frame j); rope: int [n] RoPE frame positions
    (``frame_positions=``); chunks: int [n] ar chunk of each frame (None for other kinds)."""

    kind: str
    offsets: tuple[int, ...]
    generated: tuple[bool, ...]
    visibility: tuple[tuple[bool, ...], ...]
    rope: tuple[int, ...]
    chunks: tuple[int, ...] | None = None

    @property
    def n(self) -> int:
        return len(self.offsets)

    @property
    def span(self) -> int:
        """Clip latents the window needs (last offset + 1)."""
        return self.offsets[-1] + 1

    @property
    def full(self) -> bool:
        return all(all(r) for r in self.visibility)

    def visibility_tensor(self) -> torch.Tensor | None:
        """bool [n, n], or None for full visibility (the model's fast path)."""
        return None if self.full else torch.tensor(self.visibility, dtype=torch.bool)

    def describe(self) -> dict:
        return {"kind": self.kind, "offsets": list(self.offsets), "generated": list(self.generated),
                "rope": list(self.rope)}


def _conditioned(generated) -> tuple[tuple[bool, ...], ...]:
    from ..plans.core import conditioned_visibility

    return conditioned_visibility(list(generated))


def sample_pattern(rng: np.random.Generator, kind: str | None = None, max_span: int = 21,
                   probs: dict | None = None) -> FramePattern:
    """Draw one frame-role pattern (module docstring) that fits ``max_span`` clip latents;
    ``kind`` None: drawn from ``probs`` (default uniform over :data:`PATTERNS`)."""
    if kind is None:
        probs = probs or {k: 1.0 for k in PATTERNS}
        names = [k for k in PATTERNS if probs.get(k, 0) > 0]
        p = np.array([probs[k] for k in names], float)
        kind = names[int(rng.choice(len(names), p=p / p.sum()))]
    if kind not in PATTERNS:
        raise ValueError(f"unknown pattern {kind!r}; choose one of {PATTERNS}")
    L = int(max_span)
    if kind == "ar":
        nchunks = max(1, min(4, L // CHUNK))
        k = int(rng.integers(0, nchunks))  # the current chunk; 0..k-1 are clean context
        n = min(CHUNK * (k + 1), L)
        chunks = tuple(i // CHUNK for i in range(n))
        gen = tuple(c == k for c in chunks)
        vis = tuple(tuple(chunks[j] <= chunks[i] for j in range(n)) for i in range(n))
        return FramePattern(kind, tuple(range(n)), gen, vis, tuple(range(n)), chunks)
    if kind == "full":
        n = int(rng.integers(1, min(L, 9) + 1))
        gen = (True,) * n
        return FramePattern(kind, tuple(range(n)), gen, tuple((True,) * n for _ in range(n)), tuple(range(n)))
    if kind == "keyframe":
        r = int(rng.integers(2, 5))
        while r > 1 and r + 1 > L:
            r -= 1
        kmax = max(2, min(5, (L - 1) // r + 1))
        K = int(rng.integers(2, kmax + 1)) if (L - 1) // r + 1 >= 2 else 1
        offsets = tuple(i * r for i in range(K))
        first_clean = K > 1 and rng.random() < 0.5
        gen = tuple(not (i == 0 and first_clean) for i in range(K))
        rope = tuple(range(K)) if rng.random() < 0.5 else offsets  # longdwm keyframe index / mila timeline
        return FramePattern(kind, offsets, gen, _conditioned(gen), rope)
    if kind == "interp":
        h = int(rng.choice([1, 2, 3], p=[0.6, 0.2, 0.2]))
        m = int(rng.integers(1, 7))
        while h + m + 1 > L and m > 1:
            m -= 1
        while h + m + 1 > L and h > 1:
            h -= 1
        if h + m + 1 > L:  # too short a clip for head + tail: a single generated frame
            return FramePattern(kind, (0,), (True,), ((True,),), (0,))
        n = h + m + 1
        gen = tuple(h <= i < h + m for i in range(n))
        return FramePattern(kind, tuple(range(n)), gen, _conditioned(gen), tuple(range(n)))
    # anchors
    span = int(rng.integers(min(4, L), min(L, 13) + 1))
    keep = [i for i in range(span) if rng.random() < 0.8]
    if len(keep) < 2:
        keep = sorted(set(keep) | {0, span - 1}) if span > 1 else [0]
    offsets = tuple(k - keep[0] for k in keep)
    gen = [bool(rng.random() >= 0.3) for _ in offsets]
    if not any(gen):
        gen[int(rng.integers(len(gen)))] = True
    gen = tuple(gen)
    return FramePattern("anchors", offsets, gen, _conditioned(gen), offsets)


def check_pattern(p: FramePattern) -> None:
    """Raise ValueError unless ``p`` is a valid pass: one entry per frame everywhere,
    increasing offsets, at least one generated frame, every frame sees itself, clean
    frames never see generated ones, and (ar) no chunk sees a later chunk."""
    n = p.n
    if not (len(p.generated) == len(p.rope) == len(p.visibility) == n and all(len(r) == n for r in p.visibility)):
        raise ValueError(f"pattern {p.kind}: lengths differ")
    if any(b <= a for a, b in zip(p.offsets, p.offsets[1:])) or p.offsets[0] != 0:
        raise ValueError(f"pattern {p.kind}: offsets {p.offsets} must start at 0 and increase")
    if not any(p.generated):
        raise ValueError(f"pattern {p.kind}: no generated frame")
    for i in range(n):
        if not p.visibility[i][i]:
            raise ValueError(f"pattern {p.kind}: frame {i} does not see itself")
        if not p.generated[i] and any(p.visibility[i][j] and p.generated[j] for j in range(n)):
            raise ValueError(f"pattern {p.kind}: clean frame {i} sees a generated frame")
        if p.chunks is not None and any(p.visibility[i][j] and p.chunks[j] > p.chunks[i] for j in range(n)):
            raise ValueError(f"pattern {p.kind}: chunk {p.chunks[i]} sees the future")


# ----------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------
def clip_specs(seed: int, count: int, heldout: bool, clip_frames: int, max_start: float = 60.0) -> list[dict]:
    """``count`` clip descriptions {world_seed, start (s), weather}: world seeds distinct,
    in [0, 10**6) for training and [10**6, 2 * 10**6) held out; start uniform on a frame in
    [0, max_start]; weathers cycle through all five (balanced). A larger ``count`` extends
    the list of a smaller one (same first clips)."""
    from .drive import FPS
    from .render import WEATHERS

    rng = np.random.default_rng([int(seed), 1 if heldout else 0, int(clip_frames)])
    first = int(rng.integers(len(WEATHERS)))
    out, used = [], set()
    while len(out) < count:
        s = int(rng.integers(HELDOUT_SEED_BASE))
        start = float(rng.integers(0, int(max_start * FPS) + 1)) / FPS
        if s in used:
            continue
        used.add(s)
        out.append({"world_seed": s + (HELDOUT_SEED_BASE if heldout else 0), "start": start,
                    "weather": WEATHERS[(first + len(out)) % len(WEATHERS)]})
    return out


def render_specs(specs: list[dict], clip_frames: int, height: int = 64, width: int = 112,
                 cache_dir: str | Path | None = None) -> torch.Tensor:
    """Render the clips of ``specs``: float32 video [N, 3, T, H, W] in [-1, 1]
    (``cache_dir``: uint8 frames kept as .npy per clip, reused when present)."""
    from .render import render_clip

    out = []
    for s in specs:
        path = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"{s['world_seed']}_{s['start']:.4f}_{s['weather']}_{clip_frames}_{height}x{width}.npy"
        if path is not None and path.exists():
            frames = np.load(path)
        else:
            frames = render_clip(s["world_seed"], clip_frames, height, width, weather=s["weather"],
                                 start=s["start"]).frames
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, frames)
        out.append(torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1.0))
    return torch.stack(out)


def vae_fingerprint(vae) -> str:
    """A short hash of the VAE's config and weights (names the latent cache)."""
    conf = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}  # "_use_default_values": set order
    h = hashlib.sha256(json.dumps(conf, sort_keys=True, default=str).encode())
    for k, v in sorted(vae.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_specs(vae, specs: list[dict], clip_frames: int, batch: int = 4, log=print,
                 frames_dir: str | Path | None = None) -> torch.Tensor:
    """Render (:func:`render_specs`) and encode the clips of ``specs``: normalised latents
    [N, 16, L, h, w] float32."""
    from ..models.vae import encode_frames

    out = []
    t0 = time.time()
    for i in range(0, len(specs), batch):
        video = render_specs(specs[i:i + batch], clip_frames, cache_dir=frames_dir)
        out.append(encode_frames(vae, video).float().cpu())
        if log and (i // batch) % 10 == 0:
            log(f"  encoded {i + len(video)}/{len(specs)} clips ({time.time() - t0:.0f} s)")
    return torch.cat(out)


def build_dataset(vae, cfg: TrainConfig, cache_dir: str | Path | None = "/tmp/world_dit_cache", log=print) -> dict:
    """Train and held-out latents (cached as one .pt per VAE + data settings).

    Returns {"train": [N, 16, L, h, w], "heldout": [M, 16, L, h, w] (float32),
    "train_weather" / "heldout_weather": int64 [N] / [M] indices into WEATHERS,
    "train_specs" / "heldout_specs", "cache": path or None, "seconds": render + encode time}."""
    from .render import WEATHERS

    train_specs = clip_specs(cfg.seed, cfg.clips, False, cfg.clip_frames, cfg.max_start)
    held_specs = clip_specs(cfg.seed, cfg.heldout_clips, True, cfg.clip_frames, cfg.max_start)
    key = hashlib.sha256(json.dumps([vae_fingerprint(vae), cfg.clip_frames, train_specs, held_specs]).encode())
    path = Path(cache_dir) / f"latents_{key.hexdigest()[:16]}.pt" if cache_dir else None
    if path is not None and path.exists():
        data = torch.load(path, weights_only=True)
        data["cache"], data["cached"] = str(path), True
        data["train_specs"], data["heldout_specs"] = train_specs, held_specs
        return data
    t0 = time.time()
    log(f"rendering + encoding {len(train_specs)} train and {len(held_specs)} held-out clips of {cfg.clip_frames} "
        f"frames")
    frames_dir = Path(cache_dir) / "frames" if cache_dir else None
    data = {"train": encode_specs(vae, train_specs, cfg.clip_frames, log=log, frames_dir=frames_dir),
            "heldout": encode_specs(vae, held_specs, cfg.clip_frames, log=log, frames_dir=frames_dir),
            "train_weather": torch.tensor([WEATHERS.index(s["weather"]) for s in train_specs]),
            "heldout_weather": torch.tensor([WEATHERS.index(s["weather"]) for s in held_specs]),
            "seconds": time.time() - t0}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v for k, v in data.items()}, path)
    data["cache"], data["cached"] = (str(path) if path else None), False
    data["train_specs"], data["heldout_specs"] = train_specs, held_specs
    return data


@torch.no_grad()
def text_table(text_len: int = 32, dim: int = 32) -> torch.Tensor:
    """[6, text_len, dim]: the embeddings of the five weather prompts (WEATHERS order) and
    of the empty prompt (row :data:`EMPTY`, CFG's unconditional row), from
    ``make_tiny_text_encoder(seed=0, dim)``, zero past each prompt's tokens, as the engine
    pads them (:func:`engine.inputs.text_rows`)."""
    from ..models.text import make_tiny_text_encoder
    from .render import PROMPTS, WEATHERS

    enc = make_tiny_text_encoder(seed=TEXT_ENCODER_SEED, dim=dim)
    return enc.encode([PROMPTS[w] for w in WEATHERS] + [""], max_length=text_len).float()


# ----------------------------------------------------------------------------------
# batches and loss
# ----------------------------------------------------------------------------------
def shifted(u: torch.Tensor, shift: float) -> torch.Tensor:
    """s = k u / (1 + (k - 1) u): the samplers' timestep shift applied to uniform u."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def make_batch(latents: torch.Tensor, weather: torch.Tensor, pattern: FramePattern, rng: np.random.Generator,
               gen: torch.Generator, batch_size: int, *, cfg_drop: float = 0.1, shift: float = 5.0,
               shared_sigma_prob: float = 0.5, offset0_prob: float = 0.5) -> dict:
    """One batch of ``pattern`` from clip latents [N, C, L, h, w].

    Returns {"x": [B, C, n, h, w] noised input, "t": [B, n] timesteps (0 for clean
    frames), "target": [B, C, n, h, w] = eps - x0, "text": int64 [B] rows of
    :func:`text_table` (the clip's weather, or :data:`EMPTY` with prob ``cfg_drop``),
    "sigma": [B, n] (0 for clean frames)}."""
    N, C, L, h, w = latents.shape
    if pattern.span > L:
        raise ValueError(f"pattern spans {pattern.span} latents, clips have {L}")
    idx = rng.integers(0, N, size=batch_size)
    starts = [0 if rng.random() < offset0_prob else int(rng.integers(0, L - pattern.span + 1)) for _ in idx]
    drop = rng.random(batch_size) < cfg_drop
    shared = torch.from_numpy(rng.random(batch_size) < shared_sigma_prob)
    offs = torch.tensor(pattern.offsets)
    x0 = torch.stack([latents[i, :, s + offs] for i, s in zip(idx, starts)])  # [B, C, n, h, w]
    B, n = batch_size, pattern.n
    u = torch.rand(B, n, generator=gen)
    u = torch.where(shared[:, None], u[:, :1].expand(B, n), u)
    genmask = torch.tensor(pattern.generated)
    sigma = torch.where(genmask[None], shifted(u, shift), torch.zeros(()))
    eps = torch.randn(x0.shape, generator=gen)
    s5 = sigma[:, None, :, None, None]
    x = (1 - s5) * x0 + s5 * eps
    text = torch.where(torch.from_numpy(drop), torch.tensor(EMPTY), weather[torch.from_numpy(idx)])
    return {"x": x, "t": 1000.0 * sigma, "target": eps - x0, "text": text, "sigma": sigma}


def pattern_loss(model, batch: dict, pattern: FramePattern, texts: torch.Tensor) -> torch.Tensor:
    """MSE between the model's velocity and ``eps - x0`` over the generated frames, the
    model called as the runtime calls it (clean frames at timestep 0, the pattern's
    visibility and RoPE ``frame_positions``)."""
    pred = model(batch["x"], batch["t"], texts[batch["text"]], frame_positions=list(pattern.rope),
                 visibility=pattern.visibility_tensor())
    gi = [i for i, g in enumerate(pattern.generated) if g]
    err = (pred.float() - batch["target"])[:, :, gi]
    return err.pow(2).mean()


def eval_batches(latents, weather, cfg: TrainConfig, seed: int, count: int) -> dict[str, list]:
    """Fixed evaluation batches per pattern: {kind: [(pattern, batch), ...]}, the same for
    every call with the same ``seed`` (comparable across checkpoints). No CFG drop."""
    out = {}
    for ki, kind in enumerate(PATTERNS):
        rng = np.random.default_rng([seed, 777, ki])
        gen = torch.Generator().manual_seed(seed * 1000 + 777 + ki)
        out[kind] = []
        for _ in range(count):
            p = sample_pattern(rng, kind, latents.shape[2])
            out[kind].append((p, make_batch(latents, weather, p, rng, gen, cfg.batch_size, cfg_drop=0.0,
                                            shift=cfg.shift, shared_sigma_prob=cfg.shared_sigma_prob,
                                            offset0_prob=cfg.offset0_prob)))
    return out


@torch.no_grad()
def evaluate(model, batches: dict, texts: torch.Tensor) -> dict[str, float]:
    """Mean loss per pattern over fixed batches (and their mean, "all")."""
    was = model.training
    model.eval()
    res = {k: float(np.mean([pattern_loss(model, b, p, texts).item() for p, b in v])) for k, v in batches.items()}
    res["all"] = float(np.mean(list(res.values())))
    model.train(was)
    return res


# ----------------------------------------------------------------------------------
# model, saving
# ----------------------------------------------------------------------------------
def build_model(config: ModelConfig, seed: int):
    """A freshly initialised WanDiT: PyTorch's default init drawn under ``seed``, the
    output projection zeroed (the first prediction is v = 0)."""
    from ..models.wan import WanDiT

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanDiT(config, attention_backend="sdpa")
    with torch.no_grad():
        model.head.head.weight.zero_()
        model.head.head.bias.zero_()
    return model


def forward_time(model, frames: int = 9, latent_hw: tuple[int, int] = (8, 14), repeats: int = 10) -> float:
    """Median seconds of one no-grad forward over ``frames`` latent frames (batch 1)."""
    x = torch.randn(1, model.config.in_channels, frames, *latent_hw)
    t = torch.full((1, frames), 500.0)
    txt = torch.zeros(1, model.config.text_len, model.config.text_dim)
    was = model.training
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            model(x, t, txt)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    model.train(was)
    return float(np.median(times))


# ----------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine from lr to lr * min_lr_ratio."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def train(vae, out: str | Path, cfg: TrainConfig, model_config: ModelConfig = WORLD_DIT_CONFIG, *,
          cache_dir: str | Path | None = "/tmp/world_dit_cache", sample: bool = True, vae_source: str | None = None,
          command: list[str] | None = None, log=print, resume: bool = False, note: str | None = None) -> dict:
    """Train, write ``out/model.safetensors`` (EMA weights) + ``config.json`` +
    ``training.json`` (+ sample strips when ``sample``) and return the training record."""
    t_start = time.time()
    log = log or (lambda *a, **k: None)
    torch.set_num_threads(cfg.threads)
    out = Path(out)
    data = build_dataset(vae, cfg, cache_dir, log=log)
    train_lat, held_lat = data["train"], data["heldout"]
    train_w, held_w = data["train_weather"].long(), data["heldout_weather"].long()
    texts = text_table(model_config.text_len, model_config.text_dim)
    log(f"data: train {tuple(train_lat.shape)}, held-out {tuple(held_lat.shape)} "
        f"({'cached ' + str(data['cache']) if data.get('cached') else 'encoded in %.0f s' % data['seconds']})")

    model = build_model(model_config, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    fwd = forward_time(model)
    log(f"model: {n_params} parameters, one forward (9 latent frames x 28 tokens, batch 1) {fwd * 1e3:.1f} ms")
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, 1])
    gen = torch.Generator().manual_seed(cfg.seed)
    held_eval = eval_batches(held_lat, held_w, cfg, cfg.seed + 1, cfg.eval_batches)
    train_eval = eval_batches(train_lat, train_w, cfg, cfg.seed + 2, cfg.eval_batches)

    ckpt = Path(cache_dir) / f"ckpt_{out.name}_seed{cfg.seed}.pt" if cache_dir else None
    step0, curve, evals, window, window_kinds = 0, [], [], [], {}
    train_seconds = 0.0
    if resume and ckpt is not None and ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"])
        ema = st["ema"]
        opt.load_state_dict(st["opt"])
        rng.bit_generator.state = st["rng"]
        gen.set_state(st["gen"])
        step0, curve, evals, train_seconds = st["step"], st["curve"], st["evals"], st["train_seconds"]
        log(f"resumed from {ckpt} at step {step0}")

    def ema_model():
        m = build_model(model_config, cfg.seed)
        m.load_state_dict(ema)
        return m

    if step0 == 0:
        evals.append({"step": 0, "heldout": evaluate(model, held_eval, texts)})
        log(f"step 0 held-out {evals[-1]['heldout']}")
    model.train()
    t_loop = time.time()
    for step in range(step0, cfg.steps):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        pattern = sample_pattern(rng, None, train_lat.shape[2], cfg.pattern_probs)
        batch = make_batch(train_lat, train_w, pattern, rng, gen, cfg.batch_size, cfg_drop=cfg.cfg_drop,
                           shift=cfg.shift, shared_sigma_prob=cfg.shared_sigma_prob, offset0_prob=cfg.offset0_prob)
        loss = pattern_loss(model, batch, pattern, texts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    ema[k].copy_(v)
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise RuntimeError(f"non-finite loss {lv} at step {step} (pattern {pattern.kind})")
        window.append((lv, gnorm))
        window_kinds.setdefault(pattern.kind, []).append(lv)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            el = train_seconds + time.time() - t_loop
            curve.append({"step": done, "loss": float(np.mean([a for a, _ in window])),
                          "grad_norm": float(np.mean([b for _, b in window])), "lr": lr, "seconds": round(el, 1),
                          "per_pattern": {k: float(np.mean(v)) for k, v in window_kinds.items()}})
            log(f"step {done}/{cfg.steps} loss {curve[-1]['loss']:.4f} gnorm {curve[-1]['grad_norm']:.2f} "
                f"lr {lr:.2e} {el:.0f} s ({el / (done - step0 if step0 else done):.2f} s/step)")
            window, window_kinds = [], {}
        if done % cfg.eval_every == 0 and done < cfg.steps:
            evals.append({"step": done, "heldout": evaluate(ema_model(), held_eval, texts)})
            log(f"step {done} held-out (EMA) {evals[-1]['heldout']}")
        if ckpt is not None and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "ema": ema, "opt": opt.state_dict(),
                        "rng": rng.bit_generator.state, "gen": gen.get_state(), "step": done, "curve": curve,
                        "evals": evals, "train_seconds": train_seconds + time.time() - t_loop}, ckpt)
    train_seconds += time.time() - t_loop

    final = ema_model().eval()
    held = evaluate(final, held_eval, texts)
    trained = evaluate(final, train_eval, texts)
    evals.append({"step": cfg.steps, "heldout": held})
    log(f"final held-out (EMA) {held}\nfinal train-set (EMA) {trained}")
    save_original_layout(final, out, filename="model.safetensors", dtype=torch.float32)
    record = {
        "model_config": model_config.to_dict(), "parameters": n_params,
        "forward_ms_9x28_tokens": round(fwd * 1e3, 2),
        "train_config": dataclasses.asdict(cfg), "seed": cfg.seed, "steps": cfg.steps,
        "wall_seconds_training": round(train_seconds, 1),
        "data": {"train_clips": int(train_lat.shape[0]), "heldout_clips": int(held_lat.shape[0]),
                 "clip_frames": cfg.clip_frames, "latent_shape": list(train_lat.shape[1:]),
                 "latent_frames_total": int(train_lat.shape[0] * train_lat.shape[2]),
                 "train_world_seeds": "distinct, in [0, 10**6)", "heldout_world_seeds": "distinct, in [10**6, 2*10**6)",
                 "weathers": "cycled (balanced)", "render_encode_seconds": round(float(data.get("seconds", 0.0)), 1),
                 "cache": data.get("cache"), "train_latent_mean": float(train_lat.mean()),
                 "train_latent_std": float(train_lat.std()),
                 "text": "make_tiny_text_encoder(seed=0, dim=32), zero-padded to text_len; empty prompt "
                         f"for {cfg.cfg_drop:.0%} of samples"},
        "vae": vae_source, "vae_fingerprint": vae_fingerprint(vae),
        "loss_curve": curve, "heldout_evals": evals,
        "heldout_loss_per_pattern": held, "train_loss_per_pattern": trained,
        "command": command, "torch": torch.__version__, "python": sys.version.split()[0],
        "threads": torch.get_num_threads(), "note": note,
    }
    if sample:
        record["samples"] = sample_report(out, vae, held_specs=data["heldout_specs"], log=log)
    record["wall_seconds_total"] = round(time.time() - t_start, 1)
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
    return record


# ----------------------------------------------------------------------------------
# sanity evaluation: the engine generates with the trained model
# ----------------------------------------------------------------------------------
def video_stats(frames: np.ndarray) -> dict:
    """Simple statistics of uint8 frames [T, H, W, 3]: mean colour (RGB in [0, 1]) over the
    video and per frame, the top / bottom thirds' colours (sky / road), the high-frequency
    energy ratio (energy of frame minus its 3x3 box blur over the frame's variance, grey
    levels), and the mean absolute frame-to-frame change."""
    x = frames.astype(np.float64) / 255.0
    grey = x.mean(-1)  # [T, H, W]
    pad = np.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="edge")
    blur = sum(pad[:, i:i + grey.shape[1], j:j + grey.shape[2]] for i in range(3) for j in range(3)) / 9.0
    hf = ((grey - blur) ** 2).mean(axis=(1, 2))
    var = grey.var(axis=(1, 2)) + 1e-12
    H = x.shape[1]
    return {"mean_rgb": x.mean(axis=(0, 1, 2)).round(4).tolist(),
            "per_frame_mean_rgb": x.mean(axis=(1, 2)).round(3).tolist(),
            "top_third_rgb": x[:, : H // 3].mean(axis=(0, 1, 2)).round(4).tolist(),
            "bottom_third_rgb": x[:, -H // 3:].mean(axis=(0, 1, 2)).round(4).tolist(),
            "grey_std": float(np.sqrt(var).mean()),
            "hf_energy_ratio": float((hf / var).mean()),
            "temporal_mad": float(np.abs(np.diff(x, axis=0)).mean()) if len(x) > 1 else 0.0}


def frame_strip(frames: np.ndarray, count: int = 8) -> np.ndarray:
    """``count`` evenly spaced frames of [T, H, W, 3] side by side: [H, count * W, 3]."""
    idx = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return np.concatenate([frames[i] for i in idx], axis=1)


def save_png(image: np.ndarray, path: str | Path) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image)).save(str(path))


def sample_report(out: str | Path, vae, held_specs: list[dict] | None = None, num_frames: int = 33, log=print,
                  real_clips: int = 8) -> dict:
    """Generate with ``engine.generate`` from the saved folder (``ar``, day prompt, 33
    frames at 64 x 112): Euler 20 steps (shift 5) -> ``sample_ar.png`` and the default
    few-step sampler -> ``sample_fewstep.png`` (8 frames side by side each), Euler with
    guidance 3 against the empty prompt -> ``sample_ar_cfg3.png``, ar Euler per
    weather -> ``sample_weathers.png`` (one row per weather); statistics of each against
    real held-out clips of the same weather (:func:`video_stats`)."""
    from .. import generate
    from ..config import SamplerConfig
    from ..models.text import make_tiny_text_encoder
    from .render import PROMPTS, WEATHERS, render_clip

    out = Path(out)
    enc = make_tiny_text_encoder(seed=TEXT_ENCODER_SEED, dim=32)
    euler = SamplerConfig(kind="euler", num_steps=20, shift=5.0, timesteps=None)
    report: dict = {"num_frames": num_frames, "strategy": "ar", "height": 64, "width": 112}

    def gen(prompt, sampler, seed=0):
        t0 = time.time()
        v = generate(str(out), vae=vae, text_encoder=enc, prompt=prompt, num_frames=num_frames, height=64,
                     width=112, sampler=sampler, strategy="ar", seed=seed, progress=False)
        return v.frames, time.time() - t0

    def real(weather):
        specs = [s for s in (held_specs or []) if s["weather"] == weather][:real_clips]
        if not specs:
            specs = [{"world_seed": HELDOUT_SEED_BASE + 7 + i, "start": 4.0 * i, "weather": weather} for i in range(4)]
        frames = [render_clip(s["world_seed"], num_frames, 64, 112, weather=weather, start=s["start"]).frames
                  for s in specs]
        stats = [video_stats(f) for f in frames]
        keys = ["mean_rgb", "top_third_rgb", "bottom_third_rgb"]
        agg = {k: np.mean([s[k] for s in stats], axis=0).round(4).tolist() for k in keys}
        for k in ("grey_std", "hf_energy_ratio", "temporal_mad"):
            agg[k] = float(np.mean([s[k] for s in stats]))
        return frames[0], agg

    day_real, day_stats = real("day")
    report["real_day"] = day_stats
    frames, sec = gen(PROMPTS["day"], euler)
    st = video_stats(frames)
    st["seconds"] = round(sec, 1)
    report["ar_euler20_day"] = st
    save_png(frame_strip(frames), out / "sample_ar.png")
    frames4, sec4 = gen(PROMPTS["day"], SamplerConfig())
    st4 = video_stats(frames4)
    st4["seconds"] = round(sec4, 1)
    report["ar_fewstep4_day"] = st4
    save_png(frame_strip(frames4), out / "sample_fewstep.png")
    framesg, secg = gen(PROMPTS["day"], euler.replace(guidance_scale=3.0))
    stg = video_stats(framesg)
    stg["seconds"] = round(secg, 1)
    report["ar_euler20_cfg3_day"] = stg
    save_png(frame_strip(framesg), out / "sample_ar_cfg3.png")
    rows, per = [], {}
    for w in WEATHERS:
        f, _ = gen(PROMPTS[w], euler, seed=1)
        _, rs = real(w)
        gs = video_stats(f)
        per[w] = {"generated": {k: gs[k] for k in ("mean_rgb", "top_third_rgb", "bottom_third_rgb", "hf_energy_ratio",
                                                    "temporal_mad")},
                  "real": {k: rs[k] for k in ("mean_rgb", "top_third_rgb", "bottom_third_rgb", "hf_energy_ratio",
                                              "temporal_mad")}}
        rows.append(frame_strip(f))
    report["ar_euler20_per_weather_seed1"] = per
    save_png(np.concatenate(rows, axis=0), out / "sample_weathers.png")
    save_png(frame_strip(day_real), out / "real_day.png")
    report["files"] = ["sample_ar.png (ar, Euler 20, day)", "sample_fewstep.png (ar, few-step 4, day)",
                       "sample_ar_cfg3.png (ar, Euler 20, day, guidance 3 against the empty prompt)",
                       "sample_weathers.png (ar, Euler 20, rows: " + ", ".join(WEATHERS) + ", seed 1)",
                       "real_day.png (a real held-out day clip)"]
    log(f"samples: day euler20 {st['mean_rgb']} hf {st['hf_energy_ratio']:.3f}; fewstep {st4['mean_rgb']} hf "
        f"{st4['hf_energy_ratio']:.3f}; real {day_stats['mean_rgb']} hf {day_stats['hf_energy_ratio']:.3f}")
    return report


# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    """``python -m engine.world.train_dit --vae FOLDER|tiny --out FOLDER --steps N --seed S``
    (``--vae tiny``: ``make_tiny_vae()``, for development). A quick check:
    ``--steps 2 --clips 4 --heldout-clips 2 --clip-frames 17 --eval-batches 1 --no-sample``."""
    ap = argparse.ArgumentParser(prog="python -m engine.world.train_dit", description=__doc__.split("\n")[0])
    ap.add_argument("--vae", required=True, help="world VAE folder (diffusers AutoencoderKLWan) or 'tiny'")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    ap.add_argument("--clips", type=int, default=TrainConfig.clips)
    ap.add_argument("--heldout-clips", type=int, default=TrainConfig.heldout_clips)
    ap.add_argument("--clip-frames", type=int, default=TrainConfig.clip_frames)
    ap.add_argument("--eval-batches", type=int, default=TrainConfig.eval_batches)
    ap.add_argument("--eval-every", type=int, default=TrainConfig.eval_every)
    ap.add_argument("--threads", type=int, default=TrainConfig.threads)
    ap.add_argument("--dim", type=int, default=None, help="override WORLD_DIT_CONFIG.dim (tests)")
    ap.add_argument("--ffn", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--cache-dir", default="/tmp/world_dit_cache")
    ap.add_argument("--no-sample", action="store_true", help="skip the engine.generate sanity samples")
    ap.add_argument("--resume", action="store_true", help="continue from the run's checkpoint in --cache-dir")
    ap.add_argument("--note", default=None, help="free text stored in training.json")
    a = ap.parse_args(argv)
    cfg = TrainConfig(steps=a.steps, seed=a.seed, batch_size=a.batch_size, lr=a.lr, warmup=min(a.warmup, a.steps),
                      clips=a.clips, heldout_clips=a.heldout_clips, clip_frames=a.clip_frames,
                      eval_batches=a.eval_batches, eval_every=a.eval_every, threads=a.threads)
    mc = WORLD_DIT_CONFIG.replace(**{k: v for k, v in (("dim", a.dim), ("ffn_dim", a.ffn), ("num_layers", a.layers))
                                     if v is not None})
    torch.set_num_threads(cfg.threads)
    if a.vae == "tiny":
        from ..models.vae import make_tiny_vae

        vae = make_tiny_vae(seed=0)
    else:
        from ..models.vae import load_vae

        vae = load_vae(a.vae)
    cmd = ["python", "-m", "engine.world.train_dit"] + list(sys.argv[1:] if argv is None else argv)
    return train(vae, a.out, cfg, mc, cache_dir=a.cache_dir, sample=not a.no_sample, vae_source=a.vae, command=cmd,
                 resume=a.resume, note=a.note)


if __name__ == "__main__":
    main()
