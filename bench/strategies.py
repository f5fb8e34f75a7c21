"""Strategies benchmark: critical paths of a 5-minute video (plan arithmetic) and the
populating speed-up of 2 workers over 1 on this machine.

    python bench/strategies.py                      # CPU: tiny model, 2 CPU worker threads
    python bench/strategies.py --devices cuda:0,cuda:1 --model wan2.1-t2v-1.3b --height 480 --width 832

Writes out/bench/strategies-<device>-<date>.json (``--out PATH`` elsewhere; the committed
results were written with ``--out bench/results/strategies-cpu-<...>.json``;
``--smoke``: seconds, for the tests). The speed-up runs the same plan on
1 and on W workers (alternating, best of --repeats), DiT only (latents out, no VAE) and
(with --with-vae) the full generate() including the VAE: decode and encode jobs run on the
workers like denoise jobs, so plans over several clips (``segment_clips``,
``keyframe_clips``) decode their clips in parallel, while a single-clip plan decodes its
one causal sequence in order. The outputs are checked to be bit-identical.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from bench.bench_io import cpu_name, out_path  # noqa: E402
from engine.config import SamplerConfig  # noqa: E402
from engine.plans import build_plan  # noqa: E402

FIVE_MIN_LATENT = 1201  # 5 min x 60 s x 16 fps = 4800 frames -> 4801 = 4(F-1)+1 video frames, F = 1201

CP_CONFIGS = [
    ("ar", dict()),  # KV cache, 3-frame chunks, bounded window (refresh pass counted)
    ("ar", dict(context="history")),
    ("mmpl", dict(segment_frames=20)),
    ("mmpl", dict(segment_frames=20, schedule="min_memory")),
    ("mmpl", dict(segment_frames=8)),
    ("longdwm", dict(keyframes=8, fps_ratio=3)),
    ("longdwm", dict(keyframes=5, fps_ratio=3)),
    ("mila", dict()),
]


def critical_paths() -> dict:
    out = {}
    ar = None
    for name, opts in CP_CONFIGS:
        plan = build_plan(name, FIVE_MIN_LATENT, **opts)
        cp, _ = plan.critical_path()
        if name == "ar" and ar is None:
            ar = cp
        key = name + "".join(f" {k}={v}" for k, v in opts.items())
        out[key] = {"critical_path_passes": cp, "total_passes": plan.total_passes(), "jobs": len(plan.jobs),
                    "ar_over_this": round(ar / cp, 2)}
    return out


def _time_runtime(model, plan, devices, hw, sampler, seed=0):
    from engine.inputs import prompt_context, resolve_components
    from engine.runtime import RuntimeStats, execute

    comps = resolve_components(model, seed=seed)
    st = RuntimeStats()
    t = time.perf_counter()
    lat = [x for _, x in execute(plan, {r: model for r in plan.roles}, devices=devices,
                                  make_context=lambda r, m: prompt_context(m, comps, "x", None, None, None, 1.0, None, seed),
                                  seed=seed, sampler=sampler, latent_hw=hw, stats=st)]
    return time.perf_counter() - t, torch.cat(lat, 2), st


def speedups(args) -> dict:
    model = engine.load_model(args.model, device=args.devices[0])
    st, sh, sw = model.config.vae_stride
    hw = (args.height // sh, args.width // sw)
    sampler = SamplerConfig()
    workers = args.devices
    one = workers[:1]
    res = {}
    W = len(workers)
    for name, opts, frames in SPEED_CONFIGS(args):
        if args.only and not any(o in name + "".join(f" {k}={v}" for k, v in opts.items()) for o in args.only):
            continue
        F = (frames - 1) // 4 + 1
        plan = build_plan(name, F, **opts)
        key = name + "".join(f" {k}={v}" for k, v in opts.items())
        res[key] = {"video_frames": frames, "latent_frames": F, "options": opts, "jobs": len(plan.jobs),
                    "clips": len(plan.clips), "critical_path_passes": plan.critical_path()[0],
                    "total_passes": plan.total_passes()}
        if not plan.encodes and not args.vae_only:  # DiT only: latents out (plans without pixel hand-offs)
            _time_runtime(model, plan, one, hw, sampler)  # warm-up
            best = {1: float("inf"), W: float("inf")}
            outs, stats = {}, {}
            for _ in range(args.repeats):
                for devs in (one, workers):
                    dt, lat, rs = _time_runtime(model, plan, devs, hw, sampler)
                    if dt < best[len(devs)]:
                        best[len(devs)], stats[len(devs)] = dt, rs
                    outs[len(devs)] = lat
            res[key].update({
                "dit_seconds": {"1": round(best[1], 3), str(W): round(best[W], 3)},
                "dit_speedup": round(best[1] / best[W], 2),
                "idle_fraction": {str(k): {w: round(f, 3) for w, f in s.idle_fraction.items()} for k, s in stats.items()},
                "bit_identical": bool(torch.equal(outs[1], outs[W])),
            })
        if args.with_vae:
            gen, frames_of, vstats = {1: float("inf"), W: float("inf")}, {}, {}
            for _ in range(args.repeats):
                for devs in (one, workers):
                    t = time.perf_counter()
                    v = engine.generate(model, num_frames=frames, strategy=name, devices=devs, height=args.height,
                                        width=args.width, progress=False, seed=0, **opts)
                    dt = time.perf_counter() - t
                    if dt < gen[len(devs)]:
                        gen[len(devs)], vstats[len(devs)] = dt, v.stats.runtime
                    frames_of[len(devs)] = v.frames
            vae_busy = {k: round(sum(j["end"] - j["start"] for j in s.jobs if j["kind"] in ("decode", "encode")), 3)
                        for k, s in vstats.items()}
            res[key].update({
                "generate_seconds_with_vae": {"1": round(gen[1], 3), str(W): round(gen[W], 3)},
                "generate_speedup_with_vae": round(gen[1] / gen[W], 2),
                "vae_job_seconds": {str(k): v for k, v in vae_busy.items()},
                "generate_idle_fraction": {str(k): {w: round(f, 3) for w, f in s.idle_fraction.items()}
                                           for k, s in vstats.items()},
                "generate_bit_identical": bool((frames_of[1] == frames_of[W]).all()),
            })
        print(key, json.dumps(res[key]), flush=True)
    return res


def SPEED_CONFIGS(args):  # noqa: N802 -- a table
    """(strategy, options, video frames) timed by :func:`speedups`."""
    return [("mmpl", dict(segment_frames=8), args.mmpl_frames),
            ("mmpl", dict(segment_frames=8, schedule="min_memory"), args.mmpl_frames),
            ("mmpl", dict(segment_frames=8, segment_clips=True), args.mmpl_frames),
            ("longdwm", dict(keyframes=5, fps_ratio=3), args.longdwm_frames),
            ("longdwm", dict(keyframes=5, fps_ratio=3, keyframe_clips=True), args.longdwm_frames)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--devices", default="cpu,cpu")
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--mmpl-frames", type=int, default=4 * 48 + 1)  # 6 segments of 8 latent frames
    p.add_argument("--longdwm-frames", type=int, default=4 * 24 + 1)  # 25 latent: 2 rollouts, 8 pairs
    p.add_argument("--with-vae", action="store_true", help="also time generate() with the VAE decode")
    p.add_argument("--vae-only", action="store_true", help="with --with-vae: skip the DiT-only timing")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", action="append", help="time only the configurations whose key contains this text "
                   "(repeatable), e.g. --only segment_clips")
    p.add_argument("--no-speed", action="store_true", help="critical paths only")
    p.add_argument("--smoke", action="store_true", help="seconds, for the tests: 32x32, 65 / 49 frames, one repeat")
    p.add_argument("--out", default=None, help="JSON path (default out/bench/strategies-<device>-<date>.json)")
    args = p.parse_args()
    if args.smoke:
        args.height = args.width = 32
        args.mmpl_frames, args.longdwm_frames, args.repeats = 4 * 16 + 1, 4 * 12 + 1, 1
    args.devices = [d.strip() for d in args.devices.split(",")]
    result = {
        "bench": "strategies",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "torch": torch.__version__,
        "device": (torch.cuda.get_device_name(0) if args.devices[0].startswith("cuda")
                   else f"{cpu_name()} CPU, {torch.get_num_threads()} torch threads"),
        "host_cpus": __import__("os").cpu_count(),
        "load_average_before": list(__import__("os").getloadavg()),
        "note": ("dit_* rows: latents out, no VAE. generate_* rows (--with-vae): the whole run, decode and encode "
                 "jobs on the workers; a single-clip plan decodes one causal sequence in order, clip plans decode "
                 "their clips in parallel. The host's cores may be shared with other jobs: see "
                 "load_average_before/after."),
        "smoke": args.smoke,
        "workers": args.devices,
        "model": args.model,
        "size": [args.height, args.width],
        "five_minute_video": {"latent_frames": FIVE_MIN_LATENT, "video_frames": 4 * (FIVE_MIN_LATENT - 1) + 1,
                              "critical_paths": critical_paths()},
    }
    print(json.dumps(result["five_minute_video"], indent=1), flush=True)
    if not args.no_speed:
        result["speedup"] = speedups(args)
    result["load_average_after"] = list(__import__("os").getloadavg())
    kind = "cuda" if args.devices[0].startswith("cuda") else "cpu"
    out = out_path(args.out, f"strategies-{kind}{'-smoke' if args.smoke else ''}-{datetime.date.today().isoformat()}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
