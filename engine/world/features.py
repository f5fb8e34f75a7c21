"""A small feature network for the driving world, and the Fréchet distance on its features.

The network is this project's stand-in for the Inception network of FID / FVD: a few
convolutions and a global pooling trained on rendered world frames (64 x 112) to predict
the ground truth of each frame -- ``lane_offset``, ``heading``, ``curvature`` (regression on
standardised targets) and the ``weather`` (5-way classification). Its pooled embedding
(:data:`FEATURE_DIM` = 64 numbers per frame) is what :func:`features` returns and
:func:`frechet_distance` compares; :func:`predict_attributes` reads the heads (used to check
that a generated video follows a commanded trajectory).

- :func:`train_feature_net` renders its own data from *training* world seeds
  (:func:`train_world_seeds`), disjoint from the held-out validation seeds
  (:func:`heldout_world_seeds`) and from the *evaluation* seeds that benchmarks use
  (``0 <= seed < EVAL_SEED_LIMIT``, :func:`check_eval_seeds`).
- :func:`load_feature_net` / :func:`save_feature_net`: ``model.safetensors`` (weights, the
  target standardisation as buffers, the architecture in the metadata) + ``training.json``.
- The trained weights ship in ``engine/assets/world_features/`` (:data:`DEFAULT_PATH`).

``python -m engine.world.features --out engine/assets/world_features --steps 3000 --seed 0``
trains and writes both files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .render import WEATHERS, render_clip

REGRESSION = ("lane_offset", "heading", "curvature")
FEATURE_DIM = 64
DEFAULT_WIDTHS = (16, 32, 64, 96, 128)
FRAME_HW = (64, 112)
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "assets" / "world_features"

# world-seed ranges: evaluation (benchmarks) < EVAL_SEED_LIMIT <= training / held-out seeds
EVAL_SEED_LIMIT = 1_000_000
_TRAIN_BASE = 10_000_000
_HELDOUT_BASE = 20_000_000
_PER_SEED = 1_000_000  # world seeds per training seed
MAX_START = 150.0  # s: frames are drawn from the first 2.5 minutes of each drive


def train_world_seeds(seed: int, count: int) -> np.ndarray:
    """The world seeds the net of training seed ``seed`` trains on (count <= 1e6)."""
    if count > _PER_SEED:
        raise ValueError(f"at most {_PER_SEED} training worlds per seed, asked for {count}")
    return _TRAIN_BASE + int(seed) * _PER_SEED + np.arange(int(count))


def heldout_world_seeds(seed: int, count: int) -> np.ndarray:
    """The held-out world seeds the net of training seed ``seed`` is validated on."""
    if count > _PER_SEED:
        raise ValueError(f"at most {_PER_SEED} held-out worlds per seed, asked for {count}")
    return _HELDOUT_BASE + int(seed) * _PER_SEED + np.arange(int(count))


def check_eval_seeds(seeds) -> None:
    """Raise unless every world seed is an evaluation seed (0 <= s < EVAL_SEED_LIMIT): those
    are never among any training or held-out world of this module."""
    bad = [int(s) for s in np.atleast_1d(seeds) if not 0 <= int(s) < EVAL_SEED_LIMIT]
    if bad:
        raise ValueError(f"evaluation world seeds must lie in [0, {EVAL_SEED_LIMIT}) (disjoint from the feature "
                         f"net's training seeds); got {bad[:5]}")


# ----------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------
class FeatureNet(nn.Module):
    """Frames uint8 or float -> (embedding [N, feature_dim], regression [N, 3] (standardised),
    weather logits [N, 5]).

    Input: [N, 3, H, W] float in [-1, 1] plus two coordinate channels (x, y in [-1, 1], so
    the pooled features can tell where the road lies in the frame); 5 stages of 3x3 conv
    (stride 2; a second stride-1 conv in the last-but-one two) + GroupNorm + SiLU
    (64 x 112 -> 2 x 4), global average pooling, a linear embedding + SiLU (the features),
    then two linear heads. ``target_mean`` / ``target_std`` (buffers) undo the regression
    targets' standardisation."""

    def __init__(self, widths=DEFAULT_WIDTHS, feature_dim: int = FEATURE_DIM, num_weathers: int = len(WEATHERS)):
        super().__init__()
        self.widths, self.feature_dim, self.num_weathers = tuple(int(w) for w in widths), int(feature_dim), int(num_weathers)
        layers: list[nn.Module] = []
        c_in = 5
        for i, c in enumerate(self.widths):
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c // 4), c), nn.SiLU()]
            if i in (len(self.widths) - 3, len(self.widths) - 2):
                layers += [nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(min(8, c // 4), c), nn.SiLU()]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.embed = nn.Linear(c_in, self.feature_dim)
        self.regress = nn.Linear(self.feature_dim, len(REGRESSION))
        self.classify = nn.Linear(self.feature_dim, self.num_weathers)
        self.register_buffer("target_mean", torch.zeros(len(REGRESSION), dtype=torch.float64))
        self.register_buffer("target_std", torch.ones(len(REGRESSION), dtype=torch.float64))

    @staticmethod
    def prepare(frames) -> torch.Tensor:
        """uint8 [N, H, W, 3] (numpy or torch) -> float32 [N, 3, H, W] in [-1, 1]; a float
        tensor [N, 3, H, W] is passed through."""
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        if frames.dtype == torch.uint8:
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(f"frames must be uint8 [N, H, W, 3], got {tuple(frames.shape)}")
            return frames.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"float frames must be [N, 3, H, W] in [-1, 1], got {tuple(frames.shape)}")
        return frames.float()

    def forward(self, x: torch.Tensor):
        n, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
        y = self.body(torch.cat([x, xs, ys], 1))
        emb = F.silu(self.embed(y.mean(dim=(2, 3))))
        return emb, self.regress(emb), self.classify(emb)


def _device_of(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


@torch.no_grad()
def _run(net: FeatureNet, frames, batch: int = 256):
    if len(frames) == 0:
        raise ValueError("no frames given")
    was = net.training
    net.eval()
    dev = _device_of(net)
    outs = []
    try:
        for i in range(0, len(frames), batch):
            outs.append([t.double().cpu() for t in net(FeatureNet.prepare(frames[i:i + batch]).to(dev))])
    finally:
        net.train(was)
    return [torch.cat(parts).numpy() for parts in zip(*outs)]


def features(net: FeatureNet, frames, batch: int = 256) -> np.ndarray:
    """The embedding of every frame: uint8 [N, H, W, 3] -> float64 [N, feature_dim]."""
    return _run(net, frames, batch)[0]


def predict_attributes(net: FeatureNet, frames, batch: int = 256) -> dict:
    """The heads' read-out for uint8 frames [N, H, W, 3]: ``lane_offset`` (m), ``heading``
    (rad), ``curvature`` (1/m) as float64 [N] (de-standardised), ``weather`` (int [N], index
    into WEATHERS) and ``weather_probs`` [N, 5]."""
    _, reg, logits = _run(net, frames, batch)
    reg = reg * net.target_std.cpu().numpy() + net.target_mean.cpu().numpy()
    out = {k: reg[:, i] for i, k in enumerate(REGRESSION)}
    p = np.exp(logits - logits.max(1, keepdims=True))
    out["weather_probs"] = p / p.sum(1, keepdims=True)
    out["weather"] = logits.argmax(1)
    return out


# ----------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------
def frechet_distance(feats_a, feats_b, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [Na, D], [Nb, D]:

        FD = |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))

    (means and unbiased covariances, ``np.cov``, in float64; the matrix square root by
    ``scipy.linalg.sqrtm``). Numerical guards, as in the reference FID code:

    - each set needs >= 2 samples; with fewer than D + 1 the covariance is singular, which
      is allowed (the FD is then biased high; compare sets of equal sizes);
    - if sqrtm returns non-finite values (a singular product), ``eps * I`` is added to both
      covariances and the root recomputed;
    - the root's imaginary part (round-off of a real PSD product) is dropped; if it is
      larger than 1e-3 relative to the largest real entry, a RuntimeWarning says so;
    - tiny negative results (round-off; the exact value is >= 0) are clipped to 0.
    """
    from scipy import linalg

    a = np.asarray(feats_a, np.float64)
    b = np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with one D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"each set needs at least 2 samples, got {len(a)} and {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("feature sets contain NaN or inf")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    diff = mu_a - mu_b
    covmean = linalg.sqrtm(ca @ cb)
    if isinstance(covmean, tuple):  # old scipy: (root, error estimate)
        covmean = covmean[0]
    if not np.isfinite(covmean).all():
        offset = eps * np.eye(len(ca))
        covmean = linalg.sqrtm((ca + offset) @ (cb + offset))
        if isinstance(covmean, tuple):
            covmean = covmean[0]
    if np.iscomplexobj(covmean):
        imag = float(np.max(np.abs(covmean.imag)))
        scale = max(float(np.max(np.abs(covmean.real))), 1e-12)
        if imag > 1e-3 * scale:
            warnings.warn(f"frechet_distance: sqrtm has an imaginary part {imag:.3g} (relative "
                          f"{imag / scale:.3g}); dropped", RuntimeWarning, stacklevel=2)
        covmean = covmean.real
    fd = float(diff @ diff + np.trace(ca) + np.trace(cb) - 2.0 * np.trace(covmean))
    return max(fd, 0.0)


# ----------------------------------------------------------------------------------
# data and training
# ----------------------------------------------------------------------------------
def render_frames(world_seeds, seed: int, height: int = 64, width: int = 112, max_start: float = MAX_START):
    """One frame per world seed at a random time in [0, max_start] s (on the 16 fps grid)
    in a random weather (both from ``default_rng(seed)``): (frames uint8 [N, H, W, 3],
    attrs dict of float64 [N] incl. ``weather``)."""
    rng = np.random.default_rng(seed)
    frames, attrs = [], {k: [] for k in REGRESSION + ("weather",)}
    for ws in world_seeds:
        start = float(rng.integers(0, int(max_start * 16) + 1)) / 16.0
        weather = WEATHERS[int(rng.integers(len(WEATHERS)))]
        clip = render_clip(int(ws), 1, height, width, weather=weather, start=start)
        frames.append(clip.frames[0])
        for k in attrs:
            attrs[k].append(float(clip.attrs[k][0]))
    return np.stack(frames), {k: np.asarray(v) for k, v in attrs.items()}


def _cached(folder, name: str, make):
    """``make()`` -> (frames, attrs), kept in ``folder/name.npz`` when a folder is given."""
    if folder is None:
        return make()
    path = Path(folder) / f"{name}.npz"
    if path.is_file():
        z = np.load(path)
        return z["frames"], {k[2:]: z[k] for k in z.files if k.startswith("a_")}
    frames, attrs = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, frames=frames, **{f"a_{k}": v for k, v in attrs.items()})
    return frames, attrs


def evaluate(net: FeatureNet, frames, attrs) -> dict:
    """Held-out quality: weather accuracy, per regression target R^2 (1 - SSE / SST) and MAE
    (in the target's units)."""
    pred = predict_attributes(net, frames)
    out = {"frames": int(len(frames)), "weather_accuracy": float(np.mean(pred["weather"] == attrs["weather"]))}
    for k in REGRESSION:
        y, p = attrs[k], pred[k]
        sst = float(np.sum((y - y.mean()) ** 2))
        out[f"{k}_r2"] = float(1.0 - np.sum((y - p) ** 2) / sst) if sst > 0 else float("nan")
        out[f"{k}_mae"] = float(np.mean(np.abs(y - p)))
        out[f"{k}_std"] = float(y.std())
    return out


def train_feature_net(seed: int = 0, steps: int = 3000, *, train_frames: int = 4000, val_frames: int = 600,
                      batch: int = 64, lr: float = 2e-3, weight_decay: float = 1e-4, widths=DEFAULT_WIDTHS,
                      feature_dim: int = FEATURE_DIM, device: str = "cpu", threads: int | None = None,
                      data=None, cache: str | os.PathLike | None = None, log_every: int = 100,
                      verbose: bool = True):
    """Train a :class:`FeatureNet` for ``steps`` AdamW steps (cosine-decayed ``lr``, batches of
    ``batch`` frames drawn from ``train_frames`` rendered frames of the training worlds of
    ``seed``, with a little pixel noise and brightness jitter as augmentation); validate on
    ``val_frames`` frames of held-out worlds. ``data``: ((train frames, attrs), (val frames,
    attrs)) to skip rendering (tests); ``cache``: a folder keeping the rendered frames
    (``.npz`` per seed and count) for the next run. Returns (net in eval mode, report dict)."""
    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    if data is None:
        train = _cached(cache, f"train-{seed}-{train_frames}",
                        lambda: render_frames(train_world_seeds(seed, train_frames), seed=seed * 2 + 1))
        val = _cached(cache, f"heldout-{seed}-{val_frames}",
                      lambda: render_frames(heldout_world_seeds(seed, val_frames), seed=seed * 2 + 2))
    else:
        train, val = data
    t_data = time.perf_counter() - t0
    frames, attrs = train
    torch.manual_seed(seed)
    net = FeatureNet(widths, feature_dim).to(device)
    y = np.stack([attrs[k] for k in REGRESSION], 1)
    mean, std = y.mean(0), np.maximum(y.std(0), 1e-12)
    net.target_mean.copy_(torch.from_numpy(mean))
    net.target_std.copy_(torch.from_numpy(std))
    x_all = torch.from_numpy(frames)  # uint8, prepared per batch
    y_all = torch.from_numpy((y - mean) / std).float()
    w_all = torch.from_numpy(attrs["weather"].astype(np.int64))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0))))
    gen = torch.Generator().manual_seed(seed)
    net.train()
    history = []
    t1 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (min(batch, len(x_all)),), generator=gen)
        x = FeatureNet.prepare(x_all[idx])
        gain = 1 + 0.05 * torch.randn(len(idx), 1, 1, 1, generator=gen)
        x = (x * gain + 0.02 * torch.randn(x.shape, generator=gen)).clamp_(-1, 1).to(device)
        _, reg, logits = net(x)
        loss_r = F.mse_loss(reg, y_all[idx].to(device))
        loss_c = F.cross_entropy(logits, w_all[idx].to(device))
        loss = loss_r + loss_c
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            history.append({"step": step, "loss_regression": loss_r.item(), "loss_weather": loss_c.item()})
            if verbose:
                print(f"step {step:5d}  regression {loss_r.item():.4f}  weather {loss_c.item():.4f}  "
                      f"{time.perf_counter() - t1:.0f} s", file=sys.stderr, flush=True)
    t_train = time.perf_counter() - t1
    net.eval()
    report = {
        "seed": int(seed), "steps": int(steps), "batch": int(batch), "lr": lr, "weight_decay": weight_decay,
        "widths": list(net.widths), "feature_dim": net.feature_dim,
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "train_frames": int(len(frames)), "val_frames": int(len(val[0])),
        "train_world_seeds": [int(train_world_seeds(seed, 1)[0]), int(train_world_seeds(seed, 1)[0]) + len(frames) - 1]
        if data is None else "given",
        "heldout_world_seeds": [int(heldout_world_seeds(seed, 1)[0]), int(heldout_world_seeds(seed, 1)[0])
                                + len(val[0]) - 1] if data is None else "given",
        "eval_seed_limit": EVAL_SEED_LIMIT,
        "frame_size": list(frames.shape[1:3]), "max_start_s": MAX_START,
        "render_seconds": round(t_data, 1), "train_seconds": round(t_train, 1),
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "target_mean": dict(zip(REGRESSION, mean.tolist())), "target_std": dict(zip(REGRESSION, std.tolist())),
        "train_metrics": evaluate(net, frames[:len(val[0])], {k: v[:len(val[0])] for k, v in attrs.items()}),
        "heldout_metrics": evaluate(net, *val),
        "history": history,
    }
    return net, report


# ----------------------------------------------------------------------------------
# saving / loading
# ----------------------------------------------------------------------------------
def save_feature_net(net: FeatureNet, out, report: dict | None = None) -> Path:
    """Write ``out/model.safetensors`` (weights + buffers; architecture in the metadata) and,
    with ``report``, ``out/training.json``. Returns the folder."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {"format": "engine.world.features.FeatureNet", "widths": json.dumps(list(net.widths)),
            "feature_dim": str(net.feature_dim), "num_weathers": str(net.num_weathers),
            "regression": json.dumps(list(REGRESSION)), "weathers": json.dumps(list(WEATHERS))}
    save_file(sd, str(out / "model.safetensors"), metadata=meta)
    if report is not None:
        (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return out


def load_feature_net(path=DEFAULT_PATH, device: str | torch.device = "cpu") -> FeatureNet:
    """A :class:`FeatureNet` from a folder holding ``model.safetensors`` (or the file
    itself), in eval mode on ``device``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no feature net at {file}: train one with `python -m engine.world.features --out "
                                f"{path}`")
    with safe_open(str(file), "pt") as f:
        meta = f.metadata() or {}
    net = FeatureNet(json.loads(meta.get("widths", json.dumps(list(DEFAULT_WIDTHS)))),
                     int(meta.get("feature_dim", FEATURE_DIM)), int(meta.get("num_weathers", len(WEATHERS))))
    net.load_state_dict(load_file(str(file)))
    return net.to(device).eval().requires_grad_(False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.world.features", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_PATH), help="folder for model.safetensors + training.json")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-frames", type=int, default=4000)
    p.add_argument("--val-frames", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cache", default=None, help="folder keeping the rendered training frames between runs")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    net, report = train_feature_net(a.seed, a.steps, train_frames=a.train_frames, val_frames=a.val_frames,
                                    batch=a.batch, lr=a.lr, device=a.device, threads=a.threads,
                                    cache=a.cache)
    report["command"] = " ".join(["python -m engine.world.features"] + list(sys.argv[1:] if argv is None else argv))
    report["date"] = time.strftime("%Y-%m-%d")
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    out = save_feature_net(net, a.out, report)
    size = os.path.getsize(out / "model.safetensors")
    h = report["heldout_metrics"]
    print(f"wrote {out}/model.safetensors ({size / 1e6:.2f} MB) and training.json; held-out: weather accuracy "
          f"{h['weather_accuracy']:.3f}, R^2 " + ", ".join(f"{k} {h[k + '_r2']:.3f}" for k in REGRESSION)
          + f"; render {report['render_seconds']} s, train {report['train_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
