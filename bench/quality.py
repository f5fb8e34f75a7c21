"""Long-horizon quality and drift benchmark on the driving world (:mod:`engine.world`).

    python bench/quality.py --quick                  # small run of the embedded trained tiny (minutes on a CPU)
    python bench/quality.py --smoke                  # seconds: every section on a few frames (for the tests)
    python bench/quality.py --seeds 2                # 2-minute videos per strategy (the committed results)
    python bench/quality.py --model tiny-random      # the random-weight preset: an untrained model's numbers

Sections (all run with any model; with a random preset such as ``tiny-random`` the
numbers are those of an *untrained* model, and the JSON says so):

- ``floor``: real-vs-real Fréchet distance (FD, on :mod:`engine.world.features`) between
  independent sets of real world frames (different world seeds), built like the generated
  sets they are compared with: one clip of ``--window`` consecutive frames per seed
  ("per_seed" size) or ``--seeds`` of them pooled ("pooled" size), each against the same
  real reference set, plus pairs of pooled sets against each other. The spread is over
  several such sets. A generated window whose FD lies in the floor's range is as close to
  the world as a second real sample is.
- ``drift``: for each strategy (``ar``, ``mmpl``, ``longdwm``, ``mila`` at their engine
  defaults; a 2-minute video = 1921 frames at 16 fps, or the nearest length each accepts
  with ``fit="down"``), ``--seeds`` videos (prompt ``PROMPTS[--weather]``, optionally the
  first frame of a real clip) at 64 x 112, cut into windows of ``--window`` frames (160 =
  10 s): per window the FD against the real reference (pooled over the seeds, and per seed:
  min / max / mean), colour statistics (mean RGB, HSV saturation) and sharpness (high-
  frequency energy of the luminance through :func:`engine_kernels.highpass`), with their spread
  over the seeds, beside the same statistics of the real reference clips.
- ``control``: videos generated with a commanded trajectory (the ground-truth ego points of
  a real clip, ``trajectory=`` + ``first_frame=`` its first frame: the warp control); the
  feature net's predicted lane offset / heading per frame against the ground truth, mean
  absolute error per window -- beside the same error on the real clip itself (the read-out's
  own floor) and on the warped control video (what the control signal alone gives).
- ``vae``: reconstruction PSNR / SSIM of held-out world clips (``--vae-seeds`` worlds at or
  above 10**6 + 1000, never trained on, each in all five weathers) through the engine's VAE path
  (:func:`engine.models.vae.encode_frames` + :class:`~engine.models.vae.StreamingDecoder`,
  decoded chunk by chunk) with ``--vae`` (a VAE folder), else the generating model's own
  VAE (the embedded ``tiny``'s trained one; a random preset's is random: "untrained").

World seeds: every real clip of the other sections comes from evaluation seeds (<
``EVAL_SEED_LIMIT``), disjoint from the feature net's training and held-out worlds (checked). Writes
bench/results/quality[-quick]-<model>-<device>-<date>.json and a .png of the curves
(matplotlib; without it the JSON says the plot was skipped).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_io import cpu_name, out_path  # noqa: E402
from engine.world import PROMPTS, WEATHERS, render_clip  # noqa: E402
from engine.world.features import (DEFAULT_PATH, FeatureNet, check_eval_seeds, features,  # noqa: E402
                                   frechet_distance, load_feature_net, predict_attributes)

FPS = 16
TWO_MINUTES = 2 * 60 * FPS + 1  # 1921 frames
STRATEGIES = ("ar", "mmpl", "longdwm", "mila")
SHARPNESS_CUTOFF = 0.2  # gaussian high-pass cutoff (cycles / pixel) of the sharpness statistic
# evaluation world seeds per use (all < EVAL_SEED_LIMIT)
REF_SEEDS, FLOOR_SEEDS, CONTROL_SEEDS, FIRST_FRAME_SEEDS = 1000, 2000, 3000, 5000
VAE_SEEDS = 10 ** 6 + 1000  # the VAE section's held-out worlds (no feature net involved)
MAX_START_S = 120.0  # real clips start anywhere in the first two minutes of a drive


# ----------------------------------------------------------------------------------
# real frames
# ----------------------------------------------------------------------------------
def real_clips(world_seeds, num_frames: int, weather: str | None, rng_seed: int = 0, height: int = 64,
               width: int = 112, max_start: float = MAX_START_S):
    """One clip of ``num_frames`` consecutive frames per evaluation world seed, starting at a
    random frame in [0, max_start] s (``default_rng(rng_seed)``); weather fixed, or (None)
    the seed's own. Returns the list of :class:`~engine.world.WorldClip`."""
    check_eval_seeds(world_seeds)
    rng = np.random.default_rng(rng_seed)
    out = []
    for s in world_seeds:
        start = int(rng.integers(0, int(max_start * FPS) + 1)) / FPS
        out.append(render_clip(int(s), num_frames, height, width, weather=weather, start=start))
    return out


# ----------------------------------------------------------------------------------
# per-frame statistics
# ----------------------------------------------------------------------------------
def colour_stats(frames: np.ndarray) -> dict:
    """Per frame of uint8 [T, H, W, 3]: ``mean_rgb`` [T, 3] (in [0, 1]) and ``saturation`` [T]
    (mean HSV saturation (max - min) / max, 0 where max = 0)."""
    x = frames.astype(np.float32) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-8), 0.0)
    return {"mean_rgb": x.mean(axis=(1, 2)).astype(np.float64), "saturation": sat.mean(axis=(1, 2)).astype(np.float64)}


def sharpness(frames: np.ndarray, cutoff: float = SHARPNESS_CUTOFF, device: str | torch.device = "cpu",
              batch: int = 256) -> np.ndarray:
    """High-frequency energy per frame of uint8 [T, H, W, 3]: the luminance (Rec. 601, in
    [0, 1], float32) mirrored to [2H, 2W] (so the filter's periodic wrap meets no artificial
    edge between the top and bottom rows), high-passed by :func:`engine_kernels.highpass` (the
    Triton kernel on CUDA; on the CPU its torch reference :func:`engine_kernels.highpass_reference`,
    which the kernel matches, instead of Triton's slow interpreter), then the mean square
    over the original H x W quadrant. Returns float64 [T]."""
    import engine_kernels

    dev = torch.device(device)
    hp = engine_kernels.highpass if dev.type == "cuda" else engine_kernels.highpass_reference
    out = []
    w = torch.tensor([0.299, 0.587, 0.114])
    for i in range(0, len(frames), batch):
        x = torch.from_numpy(np.ascontiguousarray(frames[i:i + batch])).to(dev).float().div_(255.0)
        y = (x * w.to(dev)).sum(-1)  # [n, H, W]
        h, wd = y.shape[1:]
        y = torch.cat([y, y.flip(1)], 1)
        y = torch.cat([y, y.flip(2)], 2).contiguous()
        e = hp(y, cutoff)[:, :h, :wd]
        out.append(e.double().pow(2).mean(dim=(1, 2)).cpu())
    return torch.cat(out).numpy()


def frame_metrics(net: FeatureNet, frames: np.ndarray, device: str | torch.device = "cpu") -> dict:
    """Everything the drift section needs per frame of one video, uint8 [T, H, W, 3]:
    ``features`` [T, D], ``mean_rgb`` [T, 3], ``saturation`` [T], ``sharpness`` [T]."""
    return {"features": features(net, frames), **colour_stats(frames), "sharpness": sharpness(frames, device=device)}


def windows(num_frames: int, window: int) -> list[tuple[int, int]]:
    """Whole windows [start, stop) of ``window`` frames over a video (a tail shorter than a
    window is left out)."""
    if window < 2:
        raise ValueError(f"window must be >= 2 frames, got {window}")
    return [(a, a + window) for a in range(0, num_frames - window + 1, window)]


def _spread(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def window_summary(per_seed: list[dict], ref_features: np.ndarray, window: int) -> list[dict]:
    """Per window of the videos' :func:`frame_metrics` (one dict per seed): FD against
    ``ref_features`` of the seeds' frames pooled (``fd``) and per seed (``fd_per_seed``:
    spread), and the per-seed spread of mean RGB, saturation and sharpness."""
    length = min(len(m["features"]) for m in per_seed)
    out = []
    for a, b in windows(length, window):
        pooled = np.concatenate([m["features"][a:b] for m in per_seed])
        row = {"start_frame": a, "stop_frame": b, "start_s": a / FPS, "stop_s": b / FPS,
               "fd": frechet_distance(pooled, ref_features),
               "fd_per_seed": _spread([frechet_distance(m["features"][a:b], ref_features) for m in per_seed])}
        for k in ("saturation", "sharpness"):
            row[k] = _spread([m[k][a:b].mean() for m in per_seed])
        rgb = np.stack([m["mean_rgb"][a:b].mean(0) for m in per_seed])  # [seeds, 3]
        row["mean_rgb"] = {"mean": rgb.mean(0).tolist(), "min": rgb.min(0).tolist(), "max": rgb.max(0).tolist()}
        out.append(row)
    return out


def reference_stats(metrics: list[dict]) -> dict:
    """Colour / sharpness of real clips (spread over the clips), for the drift curves."""
    rgb = np.stack([m["mean_rgb"].mean(0) for m in metrics])
    return {"clips": len(metrics),
            "saturation": _spread([m["saturation"].mean() for m in metrics]),
            "sharpness": _spread([m["sharpness"].mean() for m in metrics]),
            "mean_rgb": {"mean": rgb.mean(0).tolist(), "min": rgb.min(0).tolist(), "max": rgb.max(0).tolist()}}


def floor_fds(set_features: list[np.ndarray], ref_features: np.ndarray) -> dict:
    """Real-vs-real FD: each independent real set against the reference (``vs_reference``)
    and every pair of sets against each other (``pairs``), with their spread."""
    vs = [frechet_distance(f, ref_features) for f in set_features]
    pairs = [frechet_distance(set_features[i], set_features[j])
             for i in range(len(set_features)) for j in range(i + 1, len(set_features))]
    out = {"sets": len(set_features), "frames_per_set": int(len(set_features[0])),
           "vs_reference": {**_spread(vs), "values": vs}}
    if pairs:
        out["pairs"] = {**_spread(pairs), "values": pairs}
    return out


# ----------------------------------------------------------------------------------
# control read-out
# ----------------------------------------------------------------------------------
def attribute_mae(net: FeatureNet, frames: np.ndarray, attrs: dict, window: int,
                  keys=("lane_offset", "heading")) -> dict:
    """The feature net's predicted ``keys`` on frames [T, H, W, 3] against the ground-truth
    attrs (arrays [>= T]): per window {start_frame, <key>_mae}, plus the whole-video MAE."""
    pred = predict_attributes(net, frames)
    T = len(frames)
    rows = []
    for a, b in windows(T, window):
        rows.append({"start_frame": a, "stop_frame": b,
                     **{f"{k}_mae": float(np.mean(np.abs(pred[k][a:b] - attrs[k][a:b]))) for k in keys}})
    total = {f"{k}_mae": float(np.mean(np.abs(pred[k] - attrs[k][:T]))) for k in keys}
    return {"frames": T, "windows": rows, "overall": total,
            "predicted": {k: pred[k].tolist() for k in keys}}


def _spread_rows(runs: list[dict], keys=("lane_offset", "heading")) -> list[dict]:
    """Per window of several attribute_mae results: the spread of each MAE over them."""
    n = min(len(r["windows"]) for r in runs)
    out = []
    for i in range(n):
        row = {"start_frame": runs[0]["windows"][i]["start_frame"], "stop_frame": runs[0]["windows"][i]["stop_frame"]}
        for k in keys:
            row[f"{k}_mae"] = _spread([r["windows"][i][f"{k}_mae"] for r in runs])
        out.append(row)
    return out


def sharpness_fd_correlation(drift: dict) -> dict:
    """How the sharpness telemetry tracks the FD drift: Spearman rank correlation between
    the per-seed mean FD and the mean sharpness of every window of every strategy in
    ``drift`` (:func:`section_drift`'s result). Returns ``{"spearman", "p_value", "windows"}``
    (negative: sharper windows are closer to the world)."""
    from scipy.stats import spearmanr

    fd, sharp = [], []
    for row in drift.values():
        for w in row.get("windows", []):
            fd.append(w["fd_per_seed"]["mean"])
            sharp.append(w["sharpness"]["mean"])
    if len(fd) < 3:
        return {"spearman": None, "p_value": None, "windows": len(fd)}
    r = spearmanr(fd, sharp)
    return {"spearman": float(r.statistic), "p_value": float(r.pvalue), "windows": len(fd)}


# ----------------------------------------------------------------------------------
# VAE reconstruction
# ----------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR (dB, peak 255) per frame of two uint8 [T, H, W, 3] videos (inf -> 100 dB cap)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return np.where(mse > 0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12)), 100.0)


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """SSIM per frame of two uint8 [T, H, W, 3] videos (Wang et al. 2004: gaussian window
    sigma 1.5 (truncated at 3.5 sigma, 11 x 11), K1 = 0.01, K2 = 0.03, L = 255, per channel,
    mean over the map and the channels; borders reflected)."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = a.astype(np.float64), b.astype(np.float64)

    def blur(v):
        return gaussian_filter(v, sigma=(0, sigma, sigma, 0), truncate=3.5, mode="reflect")

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return m.mean(axis=(1, 2, 3))


def vae_roundtrip(vae, frames: np.ndarray, chunk: int = 3) -> np.ndarray:
    """uint8 [T, H, W, 3] (T = 4k + 1) -> encode_frames -> StreamingDecoder chunk by chunk
    (``chunk`` latent frames at a time) -> uint8 [T, H, W, 3]."""
    from engine.models.vae import StreamingDecoder, encode_frames
    from engine.video import to_uint8_frames

    param = next(vae.parameters())
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float().div(127.5).sub(1.0)
    z = encode_frames(vae, video.to(param.device, param.dtype))
    dec = StreamingDecoder(vae)
    dec.reset()
    parts = [dec.decode_chunk(z[:, :, i:i + chunk]) for i in range(0, z.shape[2], chunk)]
    return to_uint8_frames(torch.cat(parts, 2).float().cpu())[0]


# ----------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------
def generate_frames(model, strategy: str, num_frames: int, seed: int, prompt: str, height: int = 64,
                    width: int = 112, first_frame=None, device: str | None = None, **options):
    """One video with ``engine.generate`` at the strategy's defaults (``fit="down"``):
    (frames uint8 [T, H, W, 3], wall seconds)."""
    import engine

    t = time.perf_counter()
    kw = dict(num_frames=num_frames, height=height, width=width, strategy=strategy, seed=seed, prompt=prompt,
              fit="down", progress=False, **options)
    if first_frame is not None:
        kw["first_frame"] = first_frame
    if device is not None:
        kw["devices"] = [device]
    video = engine.generate(model, **kw)
    return video.frames, time.perf_counter() - t


def model_label(model, model_arg: str) -> tuple[str, bool]:
    """(a file-name tag, trained?) for a loaded model: presets with random weights are
    'untrained-<preset>'."""
    trained = getattr(model, "source", None) is not None
    if not trained:
        return f"untrained-{re.sub(r'[^A-Za-z0-9.]+', '-', model.config.name)}", False
    return re.sub(r"[^A-Za-z0-9.]+", "-", Path(str(model_arg).rstrip("/")).name) or "model", True


def _log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------
def section_floor_and_reference(net, args, device):
    t = time.perf_counter()
    ref = real_clips(REF_SEEDS + np.arange(args.ref_clips), args.window, args.weather, rng_seed=1)
    ref_metrics = [frame_metrics(net, c.frames, device) for c in ref]
    ref_feats = np.concatenate([m["features"] for m in ref_metrics])
    single, pooled = [], []
    for j in range(args.floor_sets):
        clips = real_clips(FLOOR_SEEDS + 100 * j + np.arange(args.seeds), args.window, args.weather, rng_seed=10 + j)
        f = [features(net, c.frames) for c in clips]
        single += f
        pooled.append(np.concatenate(f))
    floor = {"reference": {"clips": args.ref_clips, "frames": int(len(ref_feats)),
                           "world_seeds": [REF_SEEDS, REF_SEEDS + args.ref_clips - 1]},
             "per_seed": floor_fds(single, ref_feats), "pooled": floor_fds(pooled, ref_feats),
             "seconds": round(time.perf_counter() - t, 1)}
    return ref_feats, reference_stats(ref_metrics), floor


def section_drift(model, net, ref_feats, args, device):
    out = {}
    prompt = PROMPTS[args.weather]
    firsts = None
    if args.first_frame:
        firsts = [c.frames[0] for c in real_clips(FIRST_FRAME_SEEDS + np.arange(args.seeds), 1, args.weather,
                                                   rng_seed=3)]
    for strategy in args.strategies:
        per_seed, secs, lengths, errors = [], [], [], []
        for s in range(args.seeds):
            try:
                frames, sec = generate_frames(model, strategy, args.frames, s, prompt, first_frame=None if firsts is None
                                              else firsts[s], device=device)
            except Exception as exc:  # one strategy failing must not lose the others
                errors.append(f"seed {s}: {type(exc).__name__}: {exc}")
                _log(f"drift {strategy} seed {s} failed: {exc}")
                continue
            per_seed.append(frame_metrics(net, frames, device))
            secs.append(round(sec, 1))
            lengths.append(int(len(frames)))
            _log(f"drift {strategy} seed {s}: {len(frames)} frames in {sec:.0f} s")
        row = {"seeds": len(per_seed), "video_frames": lengths, "generate_seconds": secs}
        if errors:
            row["errors"] = errors
        if per_seed:
            row["windows"] = window_summary(per_seed, ref_feats, args.window)
            row["fd_first_window"] = row["windows"][0]["fd"] if row["windows"] else None
            row["fd_last_window"] = row["windows"][-1]["fd"] if row["windows"] else None
        out[strategy] = row
    return out


def section_control(model, net, args, device):
    out = {"strategies": {}, "frames": args.control_frames, "window": args.control_window,
           "world_seeds": [CONTROL_SEEDS, CONTROL_SEEDS + args.control_seeds - 1]}
    from engine.control.trajectory import warp_video
    from engine.video import to_uint8_frames

    clips = real_clips(CONTROL_SEEDS + np.arange(args.control_seeds), args.control_frames, args.weather, rng_seed=2)
    real_runs, warp_runs = [], []
    for c in clips:
        real_runs.append(attribute_mae(net, c.frames, c.attrs, args.control_window))
        first = torch.from_numpy(c.frames[0]).permute(2, 0, 1).float() / 127.5 - 1
        warped, _ = warp_video(first, c.trajectory, len(c))
        warp_runs.append(attribute_mae(net, to_uint8_frames(warped)[0], c.attrs, args.control_window))
    out["real_clip"] = {"windows": _spread_rows(real_runs),
                        "overall": {k: _spread([r["overall"][k] for r in real_runs]) for k in real_runs[0]["overall"]}}
    out["warped_first_frame"] = {"windows": _spread_rows(warp_runs), "overall": {
        k: _spread([r["overall"][k] for r in warp_runs]) for k in warp_runs[0]["overall"]}}
    out["ground_truth"] = [{k: c.attrs[k].tolist() for k in ("lane_offset", "heading")} for c in clips]
    for strategy in args.control_strategies:
        runs, secs, errors, preds = [], [], [], []
        for i, c in enumerate(clips):
            try:
                frames, sec = generate_frames(model, strategy, len(c), i, c.prompt, first_frame=c.frames[0],
                                              device=device, trajectory=c.trajectory)
            except Exception as exc:
                errors.append(f"clip {i}: {type(exc).__name__}: {exc}")
                _log(f"control {strategy} clip {i} failed: {exc}")
                continue
            r = attribute_mae(net, frames, c.attrs, args.control_window)
            preds.append(r.pop("predicted"))
            runs.append(r)
            secs.append(round(sec, 1))
            _log(f"control {strategy} clip {i}: {len(frames)} frames in {sec:.0f} s, lane MAE "
                 f"{r['overall']['lane_offset_mae']:.3f} m")
        row = {"seeds": len(runs), "generate_seconds": secs}
        if errors:
            row["errors"] = errors
        if runs:
            row["windows"] = _spread_rows(runs)
            row["overall"] = {k: _spread([r["overall"][k] for r in runs]) for k in runs[0]["overall"]}
            row["predicted"] = preds
        out["strategies"][strategy] = row
    return out


def section_vae(model, args, device):
    from engine.inputs import resolve_components
    from engine.models.vae import load_vae

    if args.vae:
        vae = load_vae(args.vae, device=device)
        source, trained = str(args.vae), True
    else:
        vae = resolve_components(model).vae
        source = f"the model's own VAE ({'random, untrained' if getattr(model, 'source', None) is None else 'trained'})"
        trained = getattr(model, "source", None) is not None
    from engine.world.train_vae import heldout_specs, render_clips

    # held-out worlds (>= 10**6: never in a VAE / DiT training set, and not train_vae's own
    # evaluation seeds 10**6 + 0..), each in all five weathers: a weather-balanced set
    world_seeds = [VAE_SEEDS + i for i in range(args.vae_seeds)]
    specs = heldout_specs(world_seeds, WEATHERS)
    clips = render_clips(specs, args.vae_frames)
    ps, ss, per_clip = [], [], []
    t = time.perf_counter()
    for spec, frames in zip(specs, clips):
        rec = vae_roundtrip(vae, frames)
        p, s = psnr(frames, rec), ssim(frames, rec)
        ps.append(p)
        ss.append(s)
        per_clip.append({"world_seed": spec["seed"], "weather": spec["weather"], "start_s": spec["start"],
                         "psnr": float(p.mean()), "ssim": float(s.mean())})
    per_weather = {w: {"psnr": float(np.mean([c["psnr"] for c in per_clip if c["weather"] == w])),
                       "ssim": float(np.mean([c["ssim"] for c in per_clip if c["weather"] == w]))} for w in WEATHERS}
    ps, ss = np.concatenate(ps), np.concatenate(ss)
    return {"source": source, "trained": trained, "clips": len(specs), "world_seeds": world_seeds,
            "frames_per_clip": args.vae_frames,
            "psnr_db": _spread(ps), "ssim": _spread(ss), "per_weather": per_weather, "per_clip": per_clip,
            "seconds": round(time.perf_counter() - t, 1)}


# ----------------------------------------------------------------------------------
# plot
# ----------------------------------------------------------------------------------
def plot(res: dict, path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib is not installed"
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    drift, floor, ref = res.get("drift", {}), res.get("floor"), res.get("real_reference")
    colours = dict(zip(STRATEGIES, ("C0", "C1", "C2", "C3")))

    def band(ax, lo, hi, label):
        ax.axhspan(lo, hi, color="0.6", alpha=0.3, label=label)

    ax = axes[0, 0]
    for s, row in drift.items():
        w = row.get("windows") or []
        if not w:
            continue
        t = [r["start_s"] + (r["stop_s"] - r["start_s"]) / 2 for r in w]
        ax.plot(t, [r["fd"] for r in w], "o-", color=colours.get(s), label=f"{s} (pooled, {row['seeds']} seeds)")
        ax.fill_between(t, [r["fd_per_seed"]["min"] for r in w], [r["fd_per_seed"]["max"] for r in w],
                        color=colours.get(s), alpha=0.15)
    if floor:
        p = floor["pooled"]["vs_reference"]
        band(ax, p["min"], p["max"], "real floor (pooled size)")
        q = floor["per_seed"]["vs_reference"]
        ax.axhline(q["max"], color="0.3", ls=":", lw=1, label="real floor max (one clip)")
    ax.set_title("FD vs real frames per window (band: per-seed min..max)")
    ax.set_xlabel("time (s)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    for ax, key, title in ((axes[0, 1], "sharpness", f"sharpness (high-pass energy, cutoff {SHARPNESS_CUTOFF})"),
                           (axes[0, 2], "saturation", "mean HSV saturation")):
        for s, row in drift.items():
            w = row.get("windows") or []
            if not w:
                continue
            t = [(r["start_s"] + r["stop_s"]) / 2 for r in w]
            ax.plot(t, [r[key]["mean"] for r in w], "o-", color=colours.get(s), label=s)
            ax.fill_between(t, [r[key]["min"] for r in w], [r[key]["max"] for r in w], color=colours.get(s), alpha=0.15)
        if ref:
            band(ax, ref[key]["min"], ref[key]["max"], "real clips")
        ax.set_title(title + " (band: seeds min..max)")
        ax.set_xlabel("time (s)")
        ax.legend(fontsize=7)
    ax = axes[1, 0]
    for s, row in drift.items():
        w = row.get("windows") or []
        if not w:
            continue
        t = [(r["start_s"] + r["stop_s"]) / 2 for r in w]
        for ch, ls in zip(range(3), ("-", "--", ":")):
            ax.plot(t, [r["mean_rgb"]["mean"][ch] for r in w], ls, color=colours.get(s),
                    label=s if ch == 0 else None)
    if ref:
        for ch, ls in zip(range(3), ("-", "--", ":")):
            ax.axhline(ref["mean_rgb"]["mean"][ch], ls=ls, color="0.4", lw=1, label="real" if ch == 0 else None)
    ax.set_title("mean R (-), G (--), B (:) per window")
    ax.set_xlabel("time (s)")
    ax.legend(fontsize=7)
    ctl = res.get("control")
    for ax, key, unit in ((axes[1, 1], "lane_offset", "m"), (axes[1, 2], "heading", "rad")):
        if ctl:
            for name, rows, style in ([("real clip (read-out floor)", ctl["real_clip"]["windows"], "k--"),
                                       ("warped first frame", ctl["warped_first_frame"]["windows"], "k:")]
                                      + [(f"{s} + trajectory", r.get("windows") or [], "o-")
                                         for s, r in ctl["strategies"].items()]):
                if not rows:
                    continue
                t = [(r["start_frame"] + r["stop_frame"]) / 2 / FPS for r in rows]
                ax.plot(t, [r[f"{key}_mae"]["mean"] for r in rows], style, label=name)
            ax.legend(fontsize=7)
        ax.set_title(f"control: {key} MAE ({unit}) of the feature net's read-out")
        ax.set_xlabel("time (s)")
    m = res["model"]
    fig.suptitle(f"bench/quality.py: model {m['name']} ({'trained' if m['trained'] else 'UNTRAINED, random weights'}),"
                 f" {res['config']['seeds']} seeds, {res['config']['frames']} frames, weather {res['config']['weather']},"
                 f" feature net {res['feature_net']['path']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# ----------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="preset or checkpoint / folder (default: the embedded trained tiny)")
    p.add_argument("--vae", default=None, help="a VAE folder for the reconstruction section (default: the model's own)")
    p.add_argument("--features", default=str(DEFAULT_PATH), help="feature net folder")
    p.add_argument("--device", default=None, help="default: cuda:0 when available, else cpu")
    p.add_argument("--quick", action="store_true", help="a small run: 481 frames, 2 seeds, fewer real sets")
    p.add_argument("--smoke", action="store_true", help="seconds, for the tests: 33 frames, 1 seed, tiny real sets "
                   "(no figure to quote)")
    p.add_argument("--seeds", type=int, default=None, help="videos per strategy (default 3; quick 2)")
    p.add_argument("--frames", type=int, default=None, help=f"video frames (default {TWO_MINUTES} = 2 min; quick 481)")
    p.add_argument("--window", type=int, default=160, help="frames per window (160 = 10 s)")
    p.add_argument("--weather", default="day", choices=WEATHERS)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--first-frame", action="store_true", help="drift videos start from a real clip's first frame")
    p.add_argument("--ref-clips", type=int, default=None, help="real reference clips (default 8; quick 4)")
    p.add_argument("--floor-sets", type=int, default=None, help="independent real sets for the floor (default 4; quick 3)")
    p.add_argument("--control-strategies", default="ar,longdwm")
    p.add_argument("--control-seeds", type=int, default=None, help="trajectory clips (default 3; quick 2)")
    p.add_argument("--control-frames", type=int, default=None, help="frames per control clip (default 481; quick 161)")
    p.add_argument("--control-window", type=int, default=None, help="control MAE window (default 80; quick 40)")
    p.add_argument("--vae-seeds", type=int, default=None,
                   help="held-out worlds for the VAE, each in all five weathers (default 4 = 20 clips; quick 1)")
    p.add_argument("--vae-frames", type=int, default=33)
    p.add_argument("--sections", default="floor,drift,control,vae")
    p.add_argument("--out", default=None, help="JSON path (default out/bench/quality[-quick]-<model>-<device>-<date>.json)")
    a = p.parse_args(argv)
    if a.smoke:  # every section runs, on the least data that still gives each statistic
        for k, v in (("seeds", 1), ("frames", 33), ("ref_clips", 2), ("floor_sets", 2), ("control_seeds", 1),
                     ("control_frames", 33), ("control_window", 16), ("vae_seeds", 1)):
            if getattr(a, k) is None:
                setattr(a, k, v)
        if "--window" not in (argv if argv is not None else sys.argv[1:]):
            a.window = 16
        a.vae_frames = min(a.vae_frames, 9)
    q = a.quick
    for k, full, quick in (("seeds", 3, 2), ("frames", TWO_MINUTES, 481), ("ref_clips", 8, 4), ("floor_sets", 4, 3),
                           ("control_seeds", 3, 2), ("control_frames", 481, 161), ("control_window", 80, 40),
                           ("vae_seeds", 4, 1)):
        if getattr(a, k) is None:
            setattr(a, k, quick if q else full)
    a.strategies = [s for s in a.strategies.split(",") if s]
    a.control_strategies = [s for s in a.control_strategies.split(",") if s]
    a.sections = [s for s in a.sections.split(",") if s]
    return a


def main(argv=None) -> int:
    import engine

    args = parse_args(argv)
    t0 = time.perf_counter()
    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    model = engine.load_model(args.model, device=device)
    tag, trained = model_label(model, args.model)
    net = load_feature_net(args.features, device=device)
    fn_report = {}
    tj = Path(args.features) / "training.json"
    if tj.is_file():
        tr = json.loads(tj.read_text())
        fn_report = {"heldout_metrics": tr.get("heldout_metrics"), "steps": tr.get("steps")}
    date = datetime.date.today().isoformat()
    dev_kind = "cpu" if device == "cpu" else re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(device)).lower()
    mode = "-smoke" if args.smoke else "-quick" if args.quick else ""
    out = out_path(args.out, f"quality{mode}-{tag}-{dev_kind}-{date}.json")
    res = {
        "bench": "quality", "date": date, "command": " ".join(["python", "bench/quality.py"] + (
            sys.argv[1:] if argv is None else list(argv))),
        "device": device if device == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "cpu": cpu_name(), "torch": torch.__version__,
        "model": {"arg": args.model, "name": model.config.name, "trained": trained,
                  "note": None if trained else "random weights: every number here is an UNTRAINED model's"},
        "feature_net": {"path": os.path.relpath(args.features, ROOT) if Path(args.features).is_relative_to(ROOT)
                        else args.features, **fn_report},
        "config": {"quick": args.quick, "smoke": args.smoke, "seeds": args.seeds, "frames": args.frames, "window": args.window,
                   "window_s": args.window / FPS, "height": 64, "width": 112, "weather": args.weather,
                   "prompt": PROMPTS[args.weather], "first_frame": args.first_frame, "strategies": args.strategies,
                   "strategy_options": "engine defaults, fit='down'", "sharpness_cutoff": SHARPNESS_CUTOFF,
                   "ref_clips": args.ref_clips, "floor_sets": args.floor_sets},
        "notes": ("FD on the world feature net's 64-d features (engine.world.features); a window's FD pools the seeds' "
                  "frames of that window (fd) and is also taken per seed (fd_per_seed: spread over seeds); compare "
                  "with floor.pooled / floor.per_seed (real clips of the same sizes against the same reference). "
                  "FD of sets this small (hundreds of correlated frames, D = 64) is biased upwards: only compare "
                  "numbers of equal set sizes."),
    }
    timings = {}
    ref_feats = None
    if "floor" in args.sections or "drift" in args.sections:
        ts = time.perf_counter()
        ref_feats, res["real_reference"], res["floor"] = section_floor_and_reference(net, args, device)
        timings["floor_and_reference"] = round(time.perf_counter() - ts, 1)
        f = res["floor"]["pooled"]["vs_reference"]
        _log(f"floor (pooled {args.seeds} clips x {args.window} frames vs reference): FD {f['mean']:.3g} "
             f"[{f['min']:.3g}, {f['max']:.3g}]")
    if "drift" in args.sections:
        ts = time.perf_counter()
        res["drift"] = section_drift(model, net, ref_feats, args, device)
        res["sharpness_vs_fd"] = sharpness_fd_correlation(res["drift"])
        timings["drift"] = round(time.perf_counter() - ts, 1)
    if "control" in args.sections:
        ts = time.perf_counter()
        res["control"] = section_control(model, net, args, device)
        timings["control"] = round(time.perf_counter() - ts, 1)
    if "vae" in args.sections:
        ts = time.perf_counter()
        res["vae"] = section_vae(model, args, device)
        timings["vae"] = round(time.perf_counter() - ts, 1)
        _log(f"vae: PSNR {res['vae']['psnr_db']['mean']:.2f} dB, SSIM {res['vae']['ssim']['mean']:.3f}")
    res["seconds"] = timings
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    res["plot"] = plot(res, out.with_suffix(".png"))
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out} ({res['wall_seconds']} s); plot: {res['plot']}")
    for s, row in res.get("drift", {}).items():
        if row.get("windows"):
            print(f"  {s:8s} FD first window {row['fd_first_window']:.3g}, last {row['fd_last_window']:.3g} "
                  f"({row['seeds']} seeds, {row['video_frames']} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
