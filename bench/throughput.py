"""Throughput benchmark: the engine side by side with a naive baseline, on CPU and on GPU.

    python bench/throughput.py                 # whatever is here: tiny @128x128 on CPU,
                                               # Wan-1.3B-shaped random weights @480x832 on a GPU
    python bench/throughput.py --model wan2.1-t2v-1.3b --height 480 --width 832 --frames 81 \\
        --steps 4 --dtype bf16 --strategy ar --compile --cuda-graphs      # the issue-6 bar configuration
    python bench/throughput.py --smoke --json /tmp/t.json                  # seconds; what the test runs

One run, one model, one video length, one seed; every row generates the same frames count:

- ``baseline``: the plain per-chunk Self-Forcing loop (``bench/baseline.py``): SDPA over a
  ``torch.cat``-rebuilt list cache, no fused kernels, whole-video decode at the end. Same
  weights; its latents are checked against the engine's ``ar`` rollout (and every ``ar``
  row's frames against the baseline's) -- the max differences are printed and stored.
- ``ar[<backend>]``: ``engine.stream(strategy="ar")`` (the fixed-slot KV-cache rollout,
  streaming decode) with every attention backend available here (``+fused``: the fused
  Triton AdaLN / QK-norm+RoPE kernels, CUDA only).
- ``ar[...] compile=<mode>``: with ``--compile`` / ``--cuda-graphs``, the same rollout with
  each DiT block under ``torch.compile`` (``max-autotune-no-cudagraphs``, or
  ``reduce-overhead`` = CUDA graphs); the uncompiled row is the "off" side.
- ``<strategy> x<W>``: ar / mmpl / longdwm / mila through the engine with 1..W workers
  (``--devices``; ``ar`` with the KV cache is one sequential chain, so it runs on one).

Per row: video frames per second end to end (wall time from the call to the last decoded
frame, setup and VAE decode included), time to first frame, a stage breakdown (DiT
forwards and VAE decode timed by module hooks -- CUDA events on a GPU, wall clock on the
CPU -- and "other" = wall - DiT - VAE: scheduling, noise, sampler, host copies; runtime
rows decode on their own thread, so their stages overlap), peak memory (CUDA max
allocated; on the CPU the process's resident set, sampled), model FLOP/s and MFU against
the matmul rate measured here (bfloat16 on a GPU, the run's dtype elsewhere), and ratios
to the baseline. Model FLOPs are counted analytically (linear layers + attention over the
keys each query may see; cross-attention K/V prepared once per run and not counted).

The scaling report (10 s .. 5 min of video) is plan arithmetic (DiT passes and FLOPs on
the critical path, :mod:`engine.plans`) times *measured* rates from this run (achieved
DiT FLOP/s of each strategy, VAE seconds per latent frame); nothing there is run at
those lengths.

Results: ``out/bench/throughput-<cpu|cuda>-<date>[-n].json`` (or ``--json PATH`` / ``--out
PATH``; the committed results were written with ``--json bench/results/throughput-...``;
``--smoke`` runs write ``out/bench/throughput-<cpu|cuda>-smoke.json``) and a
PNG beside it (frames per second against video length and against worker count) when
matplotlib is installed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout first (engine/), before bench/
if str(ROOT / "bench") not in sys.path:
    sys.path.append(str(ROOT / "bench"))

import engine  # noqa: E402
from engine.attention import BACKENDS, backend_status, resolve_backend  # noqa: E402
from engine.compile import compiled_blocks  # noqa: E402
from engine.config import EngineConfig, SamplerConfig, parse_dtype  # noqa: E402
from engine.generation import RunStats  # noqa: E402
from engine.inputs import resolve_components  # noqa: E402
from engine.plans.ar import DEFAULT_ATTENTION_FRAMES  # noqa: E402
from engine.plans import build_plan  # noqa: E402

from baseline import NaiveSelfForcing  # noqa: E402
from bench_io import cpu_name, out_dir, unique  # noqa: E402

STRATEGY_NAMES = ("ar", "mmpl", "longdwm", "mila")
SCALING_SECONDS = (10, 30, 60, 120, 300)
SCALING_STRATEGIES = {"ar": {}, "mmpl": dict(segment_frames=8), "longdwm": dict(keyframes=5, fps_ratio=4)}
BARS = dict(fps=35.0, speedup_vs_baseline=1.5, ttff_s=0.5)


# ----------------------------------------------------------------------------------
# timing, memory
# ----------------------------------------------------------------------------------
class StageTimer:
    """Sums the time spent inside hooked modules / wrapped functions, per stage.

    CUDA: a pair of events on the current stream per call (no host sync; read at the
    end after a synchronize). CPU: wall clock. Thread-safe enough for the runtime's
    worker threads (one open call per module per thread)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.enabled = False
        self.spans: dict[str, list] = {}
        self._open = threading.local()
        self._handles = []

    def _start(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def _begin(self, key):
        if self.enabled:
            stack = self._open.__dict__.setdefault(key, [])
            stack.append(self._start())

    def _end(self, key, stage):
        if self.enabled:
            stack = self._open.__dict__.get(key)
            if stack:
                self.spans.setdefault(stage, []).append((stack.pop(), self._start()))

    def hook(self, module: torch.nn.Module, stage: str):
        key = (id(module), stage)
        self._handles.append(module.register_forward_pre_hook(lambda m, a: self._begin(key)))
        self._handles.append(module.register_forward_hook(lambda m, a, o: self._end(key, stage)))

    def wrap(self, fn, stage: str):
        key = (id(fn), stage)

        def timed(*a, **kw):
            self._begin(key)
            try:
                return fn(*a, **kw)
            finally:
                self._end(key, stage)
        return timed

    def reset(self):
        self.spans = {}

    def seconds(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            return {s: sum(a.elapsed_time(b) for a, b in v) / 1000.0 for s, v in self.spans.items()}
        return {s: sum(b - a for a, b in v) for s, v in self.spans.items()}

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []


class PeakMemory:
    """Peak memory during a block: CUDA max allocated over ``devices``, else the process's
    resident set sampled every 5 ms (/proc/self/statm)."""

    def __init__(self, devices: list[str]):
        self.cuda = [torch.device(d) for d in dict.fromkeys(devices) if torch.device(d).type == "cuda"]
        self.peak = 0
        self.kind = "cuda_max_allocated" if self.cuda else "cpu_rss_sampled"

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def __enter__(self):
        if self.cuda:
            for d in self.cuda:
                torch.cuda.reset_peak_memory_stats(d)
            return self
        self._stop = threading.Event()
        self.peak = self._rss()

        def poll():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, self._rss())
        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = max(int(torch.cuda.max_memory_allocated(d)) for d in self.cuda)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())
        return False


def matmul_rate(device: torch.device, dtype: torch.dtype, smoke: bool = False) -> dict:
    """Measured dense matmul FLOP/s on ``device`` in ``dtype`` (the MFU denominator)."""
    if device.type == "cuda":
        n, iters = 8192, 50
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(5):
            a @ b
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            a @ b
        end.record()
        torch.cuda.synchronize(device)
        secs = start.elapsed_time(end) / 1000.0
    else:
        n, iters = (256, 5) if smoke else (1024, 10)
        a = torch.randn(n, n, dtype=dtype)
        b = torch.randn(n, n, dtype=dtype)
        a @ b
        secs = float("inf")
        for _ in range(3):  # best of 3: the CPU is shared
            t = time.perf_counter()
            for _ in range(iters):
                a @ b
            secs = min(secs, time.perf_counter() - t)
    return {"flops_per_s": 2.0 * n ** 3 * iters / secs, "n": n, "dtype": str(dtype).replace("torch.", ""),
            "threads": torch.get_num_threads() if device.type == "cpu" else None}


# ----------------------------------------------------------------------------------
# FLOPs (analytic)
# ----------------------------------------------------------------------------------
def forward_flops(cfg, query_tokens: int, visible_pairs: int, query_frames: int, text_tokens: int) -> float:
    """Matmul FLOPs of one DiT forward: ``query_tokens`` tokens through every layer
    (self q/k/v/o, cross q/o, FFN), attention over ``visible_pairs`` (query, key) token
    pairs and ``text_tokens`` text keys, patch embedding, head, per-frame time MLPs."""
    D, L = cfg.dim, cfg.num_layers
    patch = math.prod(cfg.patch_size)
    per_layer = 2.0 * query_tokens * D * (6 * D + 2 * cfg.ffn_dim) + 4.0 * D * (visible_pairs + query_tokens * text_tokens)
    embed = 2.0 * query_tokens * D * (cfg.in_channels + cfg.out_channels) * patch
    time_mlp = 2.0 * query_frames * (cfg.freq_dim * D + D * D + 6 * D * D)
    return L * per_layer + embed + time_mlp


def job_flops(job, cfg, tpf: int, text_tokens: int, cache_path: bool) -> float:
    """FLOPs of a plan job: its passes x one forward. ``cache_path``: context frames come
    from the KV cache (queries are the generated frames only), else they are in the sequence."""
    rows = [i for i, g in enumerate(job.generated) if g] if cache_path else range(len(job.positions))
    rows = list(rows)
    pairs = sum(sum(job.visibility[i]) for i in rows) * tpf * tpf
    return job.passes * forward_flops(cfg, len(rows) * tpf, pairs, len(rows), text_tokens)


def plan_flops(plan, cfg, tpf: int, text_tokens: int) -> tuple[float, float]:
    """(total FLOPs, FLOPs on the heaviest dependency chain) of a plan's DiT jobs (decode and
    encode jobs count 0 here; the VAE's work is :func:`vae_decode_flops`)."""
    cache_path = plan.strategy == "ar" and plan.options.get("context", "cache") == "cache"
    w = {j.id: 0.0 for j in plan.all_jobs()}
    w.update({j.id: job_flops(j, cfg, tpf, text_tokens, cache_path) for j in plan.jobs})
    children = plan.children()
    longest: dict[str, float] = {}
    for jid in reversed(plan.topo_order()):
        longest[jid] = w[jid] + max((longest[c] for c in children[jid]), default=0.0)
    return sum(w.values()), max(longest.values(), default=0.0)


def vae_decode_flops(vae, latent_shape: tuple[int, ...]) -> float | None:
    """Matmul/conv FLOPs of decoding latents ``[B, C, F, h, w]`` with ``vae`` (counted by
    torch's FlopCounterMode on a meta-device copy: nothing is computed, no memory used).
    Returns None when the VAE cannot be rebuilt from its config."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.device("meta"):
            meta = type(vae).from_config(vae.config)
        z = torch.empty(latent_shape, device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            meta.decode(z)
        return float(counter.get_total_flops())
    except Exception:  # a VAE class without from_config / meta support: no estimate
        return None


def light_decode_flops(decoder, latent_shape: tuple[int, ...]) -> float | None:
    """FLOPs of decoding latents ``[B, C, F, h, w]`` with a light decoder
    (:func:`engine.load_decoder`'s result, e.g. TAEHV), counted like
    :func:`vae_decode_flops` on a meta-device copy; None when it cannot be counted."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    try:
        meta = copy.deepcopy(decoder.model).to("meta")
        z = torch.empty(latent_shape, device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            meta.decode(z)
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 -- no estimate for this decoder
        return None


def work_budget(b, dit_flops: float, mm: dict) -> dict:
    """What the video costs in FLOPs and the best frames/s the device's measured matmul
    rate allows: ``ceiling_fps = video frames / ((DiT + decoder FLOPs) / matmul FLOP/s)``,
    the decoder being the one the engine rows run (``--decoder``: the full VAE or a light
    one). Also the sustained FLOP/s the frames/s bar would need."""
    lat = (1, b.vae.config.z_dim, b.F, *b.hw)
    light = b.decoder is not None and hasattr(b.decoder, "model")
    vae = light_decode_flops(b.decoder, lat) if light else vae_decode_flops(b.vae, lat)
    total = dit_flops + (vae or 0.0)
    frames = b.args.frames
    out = {"dit_flops": dit_flops, "vae_decode_flops": vae, "decoder": repr(b.decoder) if light else "full VAE",
           "total_flops": total,
           "flops_per_video_frame": total / frames, "matmul_flops_per_s": mm["flops_per_s"],
           "ceiling_fps": frames / (total / mm["flops_per_s"]),
           "flops_per_s_needed_for_fps_bar": total * BARS["fps"] / frames,
           "how": "DiT: the ar plan's analytic FLOPs (all passes, cache refresh included); VAE: FlopCounterMode "
                  "over vae.decode of all latents on the meta device; ceiling = all of it at the measured "
                  "dense matmul rate (no kernel reaches it; attention and 3-D convolutions run below it)"}
    if vae is None:
        out["note"] = "VAE FLOPs unknown (could not rebuild the VAE on the meta device)"
    return out


# ----------------------------------------------------------------------------------
# strategies: options that fit a video length
# ----------------------------------------------------------------------------------
def strategy_options(strategy: str, latent_frames: int) -> dict:
    """Options for ``strategy`` that fit ``latent_frames`` (raises PlanError if none do)."""
    candidates = {
        "ar": [{}],
        "mmpl": [dict(segment_frames=L) for L in (8, 10, 12, 16, 20, 6, 4)],
        "longdwm": [dict(keyframes=5, fps_ratio=r) for r in (3, 4, 2, 5, 6)],
        "mila": [{}, dict(anchor_stride=2, clip_frames=2)],
    }[strategy]
    err = None
    for opts in candidates:
        try:
            build_plan(strategy, latent_frames, **opts)
            return opts
        except ValueError as exc:
            err = exc
    raise err


# ----------------------------------------------------------------------------------
# torch.compile / CUDA graphs for the per-chunk DiT step
# ----------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------
# one measured run
# ----------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.devices[0])
        self.cuda = self.device.type == "cuda"
        self.dtype = parse_dtype(args.dtype, self.device)
        self.model = engine.load_model(args.model, device=self.device, dtype=self.dtype)
        self.cfg = self.model.config
        comps = resolve_components(self.model, seed=0)
        self.vae = comps.vae
        from engine.decoders import resolve_decoder

        self.decoder = resolve_decoder(args.decoder)  # None or "full": the VAE; else a light decoder
        g = torch.Generator().manual_seed(1234)
        self.text = torch.randn(1, self.cfg.text_len, self.cfg.text_dim, generator=g)
        st, sh, sw = self.cfg.vae_stride
        self.F = (args.frames - 1) // st + 1
        self.hw = (args.height // sh, args.width // sw)
        self.tpf = self.model.tokens_per_frame(*self.hw)
        self.timesteps = tuple(1000.0 * (1 - i / args.steps) for i in range(args.steps))
        self.sampler = SamplerConfig(kind="fewstep", num_steps=args.steps, timesteps=self.timesteps)
        self.timer = StageTimer(self.cuda)
        self.timer.hook(self.model, "dit")
        self.timer.hook(self.vae.decoder, "vae")
        self.timer.hook(self.vae.post_quant_conv, "vae")
        # the window the engine's ar path uses (and so the baseline)
        self.sink, self.window = 0, None
        if self.F > DEFAULT_ATTENTION_FRAMES:
            self.sink, self.window = 3, DEFAULT_ATTENTION_FRAMES - 6
        self.base_plan = build_plan("ar", self.F, sigmas=self._sigmas(), chunk_frames=3)

    def _sigmas(self):
        from baseline import few_step_sigmas

        return few_step_sigmas(self.timesteps, self.sampler.shift)

    def measure(self, name: str, fn, *, devices=None, repeats=None, warmup=None, **meta) -> dict:
        """Warm up, then the best (lowest wall) of ``repeats`` runs of ``fn`` -> (frames
        list, ttff); returns the row with stage times, memory and the frames."""
        a = self.args
        repeats = a.repeats if repeats is None else repeats
        warmup = a.warmup if warmup is None else warmup
        row = dict(name=name, **meta)
        if devices:
            row["devices"] = list(devices)
        first_call = None
        try:
            for _ in range(warmup):
                t = time.perf_counter()
                fn()
                first_call = first_call or time.perf_counter() - t
            best = None
            for _ in range(repeats):
                self.timer.reset()
                self.timer.enabled = True
                with PeakMemory(devices or [str(self.device)]) as mem:
                    t0 = time.perf_counter()
                    frames, ttff = fn(t0)
                    if self.cuda:
                        torch.cuda.synchronize()
                    wall = time.perf_counter() - t0
                self.timer.enabled = False
                stages = self.timer.seconds()
                if best is None or wall < best["wall_s"]:
                    best = dict(wall_s=wall, ttff_s=ttff, dit_s=stages.get("dit", 0.0), vae_s=stages.get("vae", 0.0),
                                peak_memory_bytes=mem.peak, peak_memory_kind=mem.kind, frames=frames)
            row.update(best)
            row["video_frames"] = int(sum(len(f) for f in best["frames"]))
            row["fps"] = row["video_frames"] / row["wall_s"]
            row["other_s"] = row["wall_s"] - row["dit_s"] - row["vae_s"]
            if first_call is not None:
                row["first_call_s"] = first_call
        except Exception as exc:  # noqa: BLE001 -- a backend/mode that cannot run here is a result too
            self.timer.enabled = False
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        print(f"  {name}: " + (row["error"] if "error" in row else
                               f"{row['fps']:.2f} frames/s, wall {row['wall_s']:.3f} s, ttff {row['ttff_s']:.3f} s"),
              flush=True)
        return row

    # -- the runs ------------------------------------------------------------------
    def baseline_fn(self):
        b = NaiveSelfForcing(self.model, self.vae, chunk_frames=3, sink_frames=self.sink, window_frames=self.window)
        b.forward = self.timer.wrap(b.forward, "dit")

        def run(t0=None):
            t0 = time.perf_counter() if t0 is None else t0
            lat = b.rollout(self.text, self.F, self.hw, timesteps=self.timesteps, shift=self.sampler.shift, seed=0)
            frames = b.decode(lat)
            self._baseline_latents = lat
            return [frames], time.perf_counter() - t0
        return run

    def engine_fn(self, strategy: str, devices: list[str], backend: str, fused: bool, opts: dict):
        ec = EngineConfig(devices=list(devices), dtype=self.args.dtype, attention_backend=backend, fused_ops=fused)
        cpu_threads = self.args.cpu_threads

        def run(t0=None):
            t0 = time.perf_counter() if t0 is None else t0
            frames, ttff = [], None
            st = RunStats()
            it = engine.stream(self.model, num_frames=self.args.frames, prompt_embeds=self.text, height=self.args.height,
                               width=self.args.width, strategy=strategy, devices=list(devices), vae=self.vae,
                               sampler=self.sampler, engine_config=ec, cpu_threads=cpu_threads, stats=st, seed=0,
                               decoder=self.decoder, **opts)
            for fr in it:
                if ttff is None:
                    ttff = time.perf_counter() - t0
                frames.append(fr)
            return frames, ttff
        return run

    def latent_check(self, backend: str, fused: bool) -> dict:
        """Engine ar_rollout latents vs the baseline's (un-timed)."""
        from engine.rollout import RolloutPlan, ar_rollout

        m = self.model
        m.attention_backend, m.fused_ops = backend, fused
        ctx = m.prepare_context(self.text.to(m.device, m.dtype))
        with torch.no_grad():
            lat = torch.cat([x for _, x in ar_rollout(m, ctx, RolloutPlan(self.F, 3, self.sink, self.window),
                                                        latent_hw=self.hw, sampler=self.sampler, seed=0)], 2)
        ref = self._baseline_latents
        d = (lat.float() - ref.float())
        return {"backend": backend + ("+fused" if fused else ""), "latent_max_abs_diff": d.abs().max().item(),
                "latent_rel_err": (d.norm() / ref.float().norm().clamp_min(1e-30)).item(),
                "latent_max_abs": ref.abs().max().item()}


def frames_diff(a: list, b: list) -> float | None:
    import numpy as np

    try:
        x, y = np.concatenate(a).astype(np.int16), np.concatenate(b).astype(np.int16)
    except ValueError:
        return None
    if x.shape != y.shape:
        return None
    return float(np.abs(x - y).max())


# ----------------------------------------------------------------------------------
# scaling report (plan arithmetic x measured rates)
# ----------------------------------------------------------------------------------
def scaling_report(b: Bench, runs: list[dict], max_workers: int) -> dict:
    cfg = b.cfg
    text = b.cfg.text_len
    fps_video = cfg.fps
    ar_rows = [r for r in runs if r.get("strategy") == "ar" and r.get("kind") == "engine" and "error" not in r]
    best_ar = min(ar_rows, key=lambda r: r["wall_s"]) if ar_rows else None
    vae_per_latent = (best_ar["vae_s"] / b.F) if best_ar else None
    out = {"measured_at": {"video_frames": b.args.frames, "latent_frames": b.F},
           "vae_seconds_per_latent_frame": vae_per_latent,
           "how": ("extrapolated: DiT passes and FLOPs (total and on the heaviest dependency chain) come from the plans "
                   "at each length; seconds = FLOPs / the DiT FLOP/s this strategy achieved in this run (measured, "
                   "1 worker), VAE = measured seconds per latent frame x latent frames. 'serial' = 1 worker, "
                   f"'workers' = max(critical path, total / {max_workers}), 'critical_path' = unlimited workers. "
                   "ar decodes inline (DiT + VAE add up); the runtime strategies decode on their own thread "
                   "(max of the two)."),
           "lengths": []}
    rates = {}
    for s in SCALING_STRATEGIES:
        rows = [r for r in runs if r.get("strategy") == s and r.get("workers", 1) == 1 and "error" not in r
                and r.get("kind") in ("engine", "strategy") and r.get("dit_s", 0) > 0]
        if rows:
            r = min(rows, key=lambda r: r["wall_s"])
            rates[s] = (r["flops"] / r["dit_s"], "measured")
        elif best_ar and best_ar.get("dit_s", 0) > 0:
            rates[s] = (best_ar["flops"] / best_ar["dit_s"], "ar's rate (strategy not measured in this run)")
    out["dit_flops_per_s_used"] = {s: {"value": v, "source": src} for s, (v, src) in rates.items()}
    for secs in SCALING_SECONDS:
        T = fps_video * secs + 1
        F = (T - 1) // cfg.vae_stride[0] + 1
        entry = {"seconds": secs, "video_frames": T, "latent_frames": F, "strategies": {}}
        for s, opts in SCALING_STRATEGIES.items():
            plan = build_plan(s, F, sigmas=b._sigmas(), **opts)
            cp_passes, _ = plan.critical_path()
            total, cp = plan_flops(plan, cfg, b.tpf, text)
            e = {"options": opts, "jobs": len(plan.jobs), "total_passes": plan.total_passes(),
                 "critical_path_passes": cp_passes, "total_flops": total, "critical_path_flops": cp}
            if s in rates:
                rate = rates[s][0]
                vae = (vae_per_latent or 0.0) * F
                dit_serial, dit_cp = total / rate, cp / rate
                dit_w = max(dit_cp, dit_serial / max_workers)
                comb = (lambda d: d + vae) if s == "ar" else (lambda d: max(d, vae))
                e.update({"est_wall_s_serial": comb(dit_serial), f"est_wall_s_{max_workers}_workers": comb(dit_w),
                          "est_wall_s_critical_path": comb(dit_cp),
                          "est_fps_serial": T / comb(dit_serial), f"est_fps_{max_workers}_workers": T / comb(dit_w)})
            entry["strategies"][s] = e
        out["lengths"].append(entry)
    return out


# ----------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------
def _fmt_bytes(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _fmt_rate(x):
    for unit, s in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= s:
            return f"{x / s:.2f} {unit}"
    return f"{x:.0f} "


def print_table(result: dict) -> None:
    hdr = (f"{'run':<34} {'frames/s':>9} {'ttff s':>8} {'wall s':>8} {'DiT s':>8} {'VAE s':>8} {'other s':>8} "
           f"{'peak mem':>10} {'FLOP/s':>10} {'MFU':>7} {'x base':>7} {'DiT x':>7} {'ttff x':>7}  check")
    print("\n" + hdr)
    print("-" * len(hdr))
    for r in result["runs"]:
        if "error" in r:
            print(f"{r['name']:<34} {r['error']}")
            continue
        chk = r.get("check", "")
        other = "overlap" if r.get("stages_overlap") else f"{r['other_s']:.3f}"
        print(f"{r['name'][:34]:<34} {r['fps']:9.2f} {r['ttff_s']:8.3f} {r['wall_s']:8.3f} {r['dit_s']:8.3f} "
              f"{r['vae_s']:8.3f} {other:>8} {_fmt_bytes(r['peak_memory_bytes']):>10} "
              f"{_fmt_rate(r['model_flops_per_s']) + 'FLOP/s':>10} {100 * r['mfu_dit']:6.2f}% "
              f"{r['speedup_vs_baseline']:7.2f} {r['dit_speedup_vs_baseline']:7.2f} "
              f"{r['ttff_speedup_vs_baseline']:7.2f}  {chk}")
    m = result["matmul"]
    print(f"\nMFU = DiT FLOP/s (DiT time only) / measured {m['dtype']} matmul rate {_fmt_rate(m['flops_per_s'])}FLOP/s "
          f"(n={m['n']}); 'x base' = baseline wall / wall; 'DiT x' = baseline DiT s / DiT s; 'ttff x' = baseline ttff / "
          f"ttff; 'overlap': the runtime decodes on its own thread, so DiT and VAE overlap (wall < DiT + VAE).")
    c = result["check"]
    print(f"same work: baseline vs engine ar latents max |diff| {c['latent_max_abs_diff']:.3g} "
          f"(rel {c['latent_rel_err']:.3g}), frames max |diff| {c['frames_max_abs_diff']} / 255 -> "
          f"{'OK' if c['match'] else 'MISMATCH'} (tolerance {c['tolerance']})")
    wb = result.get("work_budget")
    if wb:
        vae = wb["vae_decode_flops"]
        print(f"work: DiT {wb['dit_flops'] / 1e12:.3g} TFLOP + VAE decode "
              f"{'?' if vae is None else f'{vae / 1e12:.3g}'} TFLOP = {wb['flops_per_video_frame'] / 1e12:.3g} "
              f"TFLOP per video frame; at the measured matmul rate the ceiling is {wb['ceiling_fps']:.1f} frames/s; "
              f"{BARS['fps']:g} frames/s would need {_fmt_rate(wb['flops_per_s_needed_for_fps_bar'])}FLOP/s sustained.")
    sc = result.get("scaling")
    if sc:
        print("\nscaling (extrapolated from plan arithmetic x measured rates; see JSON 'scaling.how'):")
        W = result["config"]["max_workers"]
        print(f"{'length':>7} {'strategy':>8} {'cp passes':>9} {'total':>6} {'est s serial':>12} "
              f"{f'est s {W}w':>10} {'est s cp':>9} {'est fps':>8}")
        for e in sc["lengths"]:
            for s, v in e["strategies"].items():
                if "est_wall_s_serial" in v:
                    print(f"{e['seconds']:>6}s {s:>8} {v['critical_path_passes']:>9} {v['total_passes']:>6} "
                          f"{v['est_wall_s_serial']:12.1f} {v[f'est_wall_s_{W}_workers']:10.1f} "
                          f"{v['est_wall_s_critical_path']:9.1f} {v[f'est_fps_{W}_workers']:8.2f}")
    if result.get("bars"):
        print("\nbars:", json.dumps(result["bars"]))


def draw_png(result: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install matplotlib)")
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    sc = result.get("scaling") or {}
    W = result["config"]["max_workers"]
    for s in SCALING_STRATEGIES:
        xs, ys = [], []
        for e in sc.get("lengths", []):
            v = e["strategies"].get(s, {})
            if f"est_fps_{W}_workers" in v:
                xs.append(e["seconds"])
                ys.append(v[f"est_fps_{W}_workers"])
        if xs:
            ax1.plot(xs, ys, marker="o", label=f"{s} ({W} workers, est.)")
    for r in result["runs"]:
        if "error" not in r and r.get("kind") == "baseline":
            ax1.axhline(r["fps"], color="gray", ls="--", label=f"baseline, measured @ {result['config']['frames']} frames")
    ax1.set_xscale("log")
    ax1.set_xlabel("video length (s)")
    ax1.set_ylabel("video frames / s")
    ax1.set_title("frames/s against video length (extrapolated)")
    ax1.legend(fontsize=8)
    for s in STRATEGY_NAMES:
        pts = sorted((r["workers"], r["fps"]) for r in result["runs"]
                     if r.get("kind") == "strategy" and r.get("strategy") == s and "error" not in r)
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s)
    ax2.set_xlabel("workers")
    ax2.set_ylabel("video frames / s (measured)")
    ax2.set_title(f"frames/s against workers ({result['config']['frames']} frames)")
    ax2.legend(fontsize=8)
    fig.suptitle(f"{result['config']['model']} {result['config']['height']}x{result['config']['width']} on "
                 f"{result['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _default_out(kind: str) -> Path:
    return unique(out_dir() / f"throughput-{kind}-{datetime.date.today().isoformat()}.json")


def _versions() -> dict:
    v = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda}
    for mod in ("triton", "diffusers", "flash_attn", "xformers"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    try:
        v["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                         timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return v


# ----------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------
def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="preset or checkpoint (default: tiny on CPU, wan2.1-t2v-1.3b on CUDA)")
    p.add_argument("--strategy", default="all", help="comma list of ar,mmpl,longdwm,mila, or 'all'")
    p.add_argument("--frames", type=int, default=None, help="video frames, 4k+1 (default 81: Self-Forcing's 21 latent)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--devices", default=None, help="worker devices, comma list (default: every GPU, or cpu,cpu)")
    p.add_argument("--backend", default="all", help="attention backends for the ar rows: comma list or 'all' (every one available; on CUDA without the "
                        "float32 reference)")
    p.add_argument("--steps", type=int, default=4, help="few-step sampler steps (timesteps 1000*(1-i/steps))")
    p.add_argument("--dtype", default=None, help="bf16 / fp16 / fp32 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--compile", action="store_true", help="also run the ar rollout with torch.compile'd DiT blocks")
    p.add_argument("--compile-mode", default="max-autotune-no-cudagraphs", help="torch.compile mode for --compile")
    p.add_argument("--cuda-graphs", action="store_true", help="also run with CUDA graphs (compile mode reduce-overhead)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per row, best kept (default 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs per row first (default 1)")
    p.add_argument("--cpu-threads", type=int, default=1,
                   help="CPU: torch intra-op threads of every row (runtime: per worker; default 1 -- the engine's "
                        "determinism rule, and more threads than free cores stalls a shared host)")
    p.add_argument("--smoke", action="store_true", help="tiny model, few frames, one run per row (for tests)")
    p.add_argument("--decoder", default=None, help="what the engine rows decode with: full (default), taehv or a "
                   "TAEHV file; the work budget counts its FLOPs (the naive baseline keeps the full VAE)")
    p.add_argument("--no-scaling", action="store_true", help="skip the 10 s .. 5 min scaling report")
    p.add_argument("--png", default=None, help="PNG path (default: beside the JSON; 'none' to skip)")
    p.add_argument("--note", default="", help="free text stored in the JSON")
    p.add_argument("--json", "--out", dest="json", default=None,
                   help="write the result here instead of out/bench/throughput-<dev>-<date>.json")
    a = p.parse_args(argv)
    a.argv = list(sys.argv if argv is None else ["bench/throughput.py", *argv])
    if a.smoke:
        a.model = a.model or "tiny"
        a.frames = a.frames or 17
        a.height, a.width = a.height or 64, a.width or 64
        a.steps = min(a.steps, 2) if "--steps" not in a.argv else a.steps
        a.repeats = a.repeats or 1
        a.warmup = 0 if a.warmup is None else a.warmup
        a.png = a.png or "none"
    if a.devices is None:
        n = torch.cuda.device_count() if cuda else min(2, os.cpu_count() or 1)
        a.devices = ",".join(f"cuda:{i}" for i in range(n)) if cuda else ",".join(["cpu"] * n)
    a.devices = [d.strip() for d in a.devices.split(",") if d.strip()]
    on_cuda = torch.device(a.devices[0]).type == "cuda"
    a.model = a.model or ("wan2.1-t2v-1.3b" if on_cuda else "tiny")
    tiny = a.model.startswith("tiny")
    a.height = a.height or (128 if tiny else 480)
    a.width = a.width or (128 if tiny else 832)
    a.frames = a.frames or 81
    a.repeats = a.repeats or 2
    a.warmup = 1 if a.warmup is None else a.warmup
    a.strategies = list(STRATEGY_NAMES) if a.strategy == "all" else [s.strip() for s in a.strategy.split(",")]
    bad = [s for s in a.strategies if s not in STRATEGY_NAMES]
    if bad:
        p.error(f"unknown strategy {bad}; choose from {STRATEGY_NAMES}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    load_before = list(os.getloadavg())
    if torch.device(a.devices[0]).type == "cpu":
        torch.set_num_threads(a.cpu_threads)
    b = Bench(a)
    dev = b.device
    kind = "cuda" if b.cuda else "cpu"
    device_name = (torch.cuda.get_device_name(dev) if b.cuda
                   else f"{cpu_name()} CPU, {torch.get_num_threads()} torch threads, "
                        f"{os.cpu_count()} host CPUs")
    print(f"throughput: {a.model} {a.height}x{a.width}, {a.frames} frames ({b.F} latent, {b.tpf} tokens/frame), "
          f"{a.steps} steps, {b.dtype}, on {device_name}", flush=True)
    mm = matmul_rate(dev, b.dtype, smoke=a.smoke)
    runs: list[dict] = []
    text_tokens = b.cfg.text_len
    ar_total, _ = plan_flops(b.base_plan, b.cfg, b.tpf, text_tokens)

    # (a) the naive baseline
    base = b.measure("baseline (naive per-chunk loop)", b.baseline_fn(), kind="baseline", strategy="ar", workers=1,
                     backend="sdpa (torch.cat list cache)", flops=ar_total)
    runs.append(base)
    if "error" in base:
        raise SystemExit(f"the baseline failed: {base['error']}")

    # (b) the engine's ar path with each attention backend
    if a.backend == "all":  # on a GPU the float32 reference (dense scores) is ground truth, not a speed option
        backends = [x for x in BACKENDS if x != "auto" and not (b.cuda and x == "reference")]
    else:
        backends = [x.strip() for x in a.backend.split(",")]
    variants = []
    for be in backends:
        ok, why = backend_status(be, dev)
        if not ok:
            runs.append({"name": f"ar[{be}]", "kind": "engine", "strategy": "ar", "backend": be, "workers": 1,
                         "error": f"unavailable: {why}"})
            print(f"  ar[{be}]: unavailable: {why}")
            continue
        variants.append((be, False))
        if b.cuda and be == "triton":
            variants.append((be, True))
    checks = []
    ar_rows = []
    if "ar" in a.strategies:
        for be, fused in variants:
            name = f"ar[{be}{'+fused' if fused else ''}]"
            row = b.measure(name, b.engine_fn("ar", a.devices[:1], be, fused, {}), kind="engine", strategy="ar",
                            backend=be, fused=fused, workers=1, flops=ar_total)
            runs.append(row)
            ar_rows.append(row)
        default_be = resolve_backend("auto", dev)
        checks.append(b.latent_check(default_be, False))
        if b.cuda and any(f for _, f in variants):
            checks.append(b.latent_check(default_be, True))
        # torch.compile / CUDA graphs for the per-chunk DiT step, on and off
        modes = ([a.compile_mode] if a.compile else []) + (["reduce-overhead"] if a.cuda_graphs else [])
        for mode in modes:
            if mode == "reduce-overhead" and not b.cuda:
                print("  --cuda-graphs: skipped, CUDA graphs need a CUDA device")
                runs.append({"name": "ar compile=reduce-overhead", "kind": "compile", "strategy": "ar", "workers": 1,
                             "error": "skipped: CUDA graphs need a CUDA device"})
                continue
            for be in dict.fromkeys([default_be, "sdpa"]):
                b.model.attention_backend, b.model.fused_ops = be, False
                name = f"ar[{be}] compile={mode}"
                try:
                    with compiled_blocks(b.model, mode):
                        row = b.measure(name, b.engine_fn("ar", a.devices[:1], be, False, {}), kind="compile",
                                        strategy="ar", backend=be, fused=False, workers=1, flops=ar_total,
                                        compile_mode=mode, warmup=max(1, a.warmup))
                except Exception as exc:  # noqa: BLE001
                    row = {"name": name, "kind": "compile", "strategy": "ar", "backend": be, "workers": 1,
                           "error": f"{type(exc).__name__}: {exc}"[:300]}
                if "first_call_s" in row:
                    row["compile_note"] = f"first call (compiles) {row['first_call_s']:.1f} s"
                runs.append(row)
                ar_rows.append(row)

    # (c) each strategy at 1..N workers
    best_be = resolve_backend("auto", dev)
    for s in a.strategies:
        try:
            opts = strategy_options(s, b.F)
        except ValueError as exc:
            runs.append({"name": s, "kind": "strategy", "strategy": s, "error": f"does not fit: {exc}"})
            continue
        plan = build_plan(s, b.F, sigmas=b._sigmas(), **opts)
        total, cp = plan_flops(plan, b.cfg, b.tpf, text_tokens)
        worker_counts = [1] if s == "ar" else list(range(1, len(a.devices) + 1))
        first = None
        for w in worker_counts:
            devs = a.devices[:w]
            row = b.measure(f"{s} x{w}" + "".join(f" {k[0]}{v}" for k, v in opts.items()),
                            b.engine_fn(s, devs, best_be, False, opts), kind="strategy", strategy=s, backend=best_be,
                            workers=w, devices=devs, options=opts, flops=total, critical_path_flops=cp,
                            critical_path_passes=plan.critical_path()[0], total_passes=plan.total_passes())
            if "error" not in row:
                if first is None:
                    first = row
                else:
                    d = frames_diff(first["frames"], row["frames"])
                    row["same_output_as_1_worker"] = d == 0
                    row["check"] = "= x1" if d == 0 else f"differs from x1 by {d}"
            runs.append(row)

    # figures, ratios, checks
    peak = mm["flops_per_s"]
    for r in runs:
        if "error" in r:
            continue
        r["model_flops_per_s"] = r["flops"] / r["dit_s"] if r["dit_s"] > 0 else 0.0
        r["model_flops_per_s_end_to_end"] = r["flops"] / r["wall_s"]
        r["mfu_dit"] = r["model_flops_per_s"] / peak
        r["mfu_end_to_end"] = r["model_flops_per_s_end_to_end"] / peak
        r["speedup_vs_baseline"] = base["wall_s"] / r["wall_s"]
        r["fps_ratio_vs_baseline"] = r["fps"] / base["fps"]
        r["ttff_speedup_vs_baseline"] = base["ttff_s"] / r["ttff_s"]
        r["dit_speedup_vs_baseline"] = base["dit_s"] / r["dit_s"] if r["dit_s"] > 0 else float("nan")
        r["stages_overlap"] = r.get("kind") == "strategy" and r.get("strategy") != "ar"
    fdiffs = []
    for r in ar_rows:
        if "error" not in r:
            d = frames_diff(base["frames"], r["frames"])
            r["frames_max_abs_diff_vs_baseline"] = d
            fdiffs.append(d if d is not None else float("inf"))
            r["check"] = f"frames vs baseline max |diff| {d:g}" if d is not None else "frame count differs!"
            if r.get("compile_note"):
                r["check"] += "; " + r["compile_note"]
    fp32 = b.dtype == torch.float32
    tol = {"latent_max_abs_diff": 1e-3, "frames_max_abs_diff": 2} if fp32 else {"latent_rel_err": 0.1,
                                                                                 "frames_max_abs_diff": 64}
    lat_ok = all((c["latent_max_abs_diff"] <= tol["latent_max_abs_diff"]) if fp32 else
                 (c["latent_rel_err"] <= tol["latent_rel_err"]) for c in checks)
    fmax = max(fdiffs) if fdiffs else None
    check = {"latents": checks, "latent_max_abs_diff": max((c["latent_max_abs_diff"] for c in checks), default=float("nan")),
             "latent_rel_err": max((c["latent_rel_err"] for c in checks), default=float("nan")),
             "frames_max_abs_diff": fmax, "tolerance": tol,
             "match": bool(checks) and lat_ok and fmax is not None and fmax <= tol["frames_max_abs_diff"]}
    if b.decoder is not None:  # a light decoder's frames differ from the baseline's full VAE by design
        check["match"] = bool(checks) and lat_ok
        check["note"] = f"engine rows decode with {b.decoder!r}: only latents are compared with the baseline"
    if not checks:
        check["note"] = "no ar rows in this run: the baseline was not compared"

    result = {
        "bench": "throughput",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python", *a.argv]),
        "device": device_name,
        "host_cpus": os.cpu_count(),
        "versions": _versions(),
        "load_average_before": load_before,
        "note": ((a.note + " ") if a.note else "") + (
            "CPU figures: the host's cores are shared with other jobs (see load_average_*); compare ratios within "
            "this run, not absolute times." if not b.cuda else ""),
        "config": {"model": a.model, "frames": a.frames, "latent_frames": b.F, "height": a.height, "width": a.width,
                   "tokens_per_frame": b.tpf, "steps": a.steps, "timesteps": list(b.timesteps),
                   "dtype": str(b.dtype).replace("torch.", ""), "devices": a.devices, "max_workers": len(a.devices),
                   "chunk_frames": 3, "sink_frames": b.sink, "window_frames": b.window, "repeats": a.repeats,
                   "warmup": a.warmup, "smoke": a.smoke, "compile": a.compile, "compile_mode": a.compile_mode,
                   "cuda_graphs": a.cuda_graphs, "text_tokens": text_tokens,
                   "cpu_threads": a.cpu_threads if not b.cuda else None},
        "matmul": mm,
        "baseline": {"what": "bench/baseline.py: per chunk, per step a full DiT forward over torch.cat(list cache + "
                             "chunk) with SDPA, x0 + re-noise; a clean re-run appends to the list cache; RoPE in "
                             "complex float64; whole video decoded by vae.decode at the end (ttff = total)"},
        "runs": [{k: v for k, v in r.items() if k != "frames"} for r in runs],
        "check": check,
    }
    result["work_budget"] = work_budget(b, ar_total, mm)
    if not a.no_scaling:
        result["scaling"] = scaling_report(b, runs, len(a.devices))
    bar_cfg = (a.model == "wan2.1-t2v-1.3b" and (a.height, a.width) == (480, 832) and a.steps == 4
               and b.dtype == torch.bfloat16 and b.cuda)
    good = [r for r in ar_rows if "error" not in r]
    if good:
        best = max(good, key=lambda r: r["fps"])
        result["bars"] = {
            "applies": bar_cfg, "best_ar_row": best["name"], "fps": best["fps"], "fps_bar": BARS["fps"],
            "speedup_vs_baseline": best["speedup_vs_baseline"], "speedup_bar": BARS["speedup_vs_baseline"],
            "ttff_s": best["ttff_s"], "ttff_bar_s": BARS["ttff_s"],
            "pass": bool(bar_cfg and best["fps"] >= BARS["fps"] and best["speedup_vs_baseline"] >= BARS["speedup_vs_baseline"]
                         and best["ttff_s"] <= BARS["ttff_s"]) if bar_cfg else None,
        }
        if not bar_cfg:
            result["bars"]["why_not_applicable"] = "bars are for Wan-1.3B, 480x832, 4 steps, bfloat16 on a CUDA GPU"
    result["load_average_after"] = list(os.getloadavg())

    if a.json:
        out = Path(a.json)
    elif a.smoke:  # a smoke run is no result: one file, overwritten
        out = out_dir() / f"throughput-{kind}-smoke.json"
    else:
        out = _default_out(kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    if a.png != "none":
        png = Path(a.png) if a.png else out.with_suffix(".png")
        result["png"] = draw_png(result, png)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print_table(result)
    print("\nwrote", out, flush=True)
    if not check["match"] and checks:
        print("WARNING: the baseline and the engine did not produce the same video within tolerance", flush=True)
        return 1 if fp32 else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
