"""Strategies benchmark: critical paths of a 5-minute video (plan arithmetic) and the
populating speed-up of 2 workers over 1 on this machine.

    python bench/strategies.py                      # CPU: tiny model, 2 CPU worker threads
    python bench/strategies.py --devices cuda:0,cuda:1 --model wan2.1-t2v-1.3b --height 480 --width 832

Writes bench/results/strategies-<device>-<date>.json. The speed-up runs the same plan on
1 and on W workers (alternating, best of --repeats), DiT only (latents out, no VAE) and
(with --with-vae) the full generate() including the VAE decode, which runs on one decode
thread in frame order; the outputs are checked to be bit-identical.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
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
    for name, opts, frames in [("mmpl", dict(segment_frames=8), args.mmpl_frames),
                               ("mmpl", dict(segment_frames=8, schedule="min_memory"), args.mmpl_frames),
                               ("longdwm", dict(keyframes=5, fps_ratio=3), args.longdwm_frames)]:
        F = (frames - 1) // 4 + 1
        plan = build_plan(name, F, **opts)
        _time_runtime(model, plan, one, hw, sampler)  # warm-up
        best = {1: float("inf"), len(workers): float("inf")}
        outs = {}
        stats = {}
        for _ in range(args.repeats):
            for devs in (one, workers):
                dt, lat, rs = _time_runtime(model, plan, devs, hw, sampler)
                if dt < best[len(devs)]:
                    best[len(devs)], stats[len(devs)] = dt, rs
                outs[len(devs)] = lat
        gen = {}
        if args.with_vae:
            for devs in (one, workers):
                t = time.perf_counter()
                v = engine.generate(model, num_frames=frames, strategy=name, devices=devs, height=args.height,
                                    width=args.width, progress=False, seed=0, **opts)
                gen[len(devs)] = (time.perf_counter() - t, v.frames)
        W = len(workers)
        key = name + "".join(f" {k}={v}" for k, v in opts.items())
        res[key] = {
            "video_frames": frames, "latent_frames": F, "options": opts, "jobs": len(plan.jobs),
            "critical_path_passes": plan.critical_path()[0], "total_passes": plan.total_passes(),
            "dit_seconds": {"1": round(best[1], 3), str(W): round(best[W], 3)},
            "dit_speedup": round(best[1] / best[W], 2),
            "idle_fraction": {str(k): {w: round(f, 3) for w, f in s.idle_fraction.items()} for k, s in stats.items()},
            "bit_identical": bool(torch.equal(outs[1], outs[W])),
        }
        if gen:
            res[key].update({
                "generate_seconds_with_vae": {"1": round(gen[1][0], 3), str(W): round(gen[W][0], 3)},
                "generate_speedup_with_vae": round(gen[1][0] / gen[W][0], 2),
                "generate_bit_identical": bool((gen[1][1] == gen[W][1]).all()),
            })
        print(key, json.dumps(res[key]), flush=True)
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--devices", default="cpu,cpu")
    p.add_argument("--model", default="tiny")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--mmpl-frames", type=int, default=4 * 48 + 1)  # 6 segments of 8 latent frames
    p.add_argument("--longdwm-frames", type=int, default=4 * 24 + 1)  # 25 latent: 2 rollouts, 8 pairs
    p.add_argument("--with-vae", action="store_true", help="also time generate() with the VAE decode")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-speed", action="store_true", help="critical paths only")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    args.devices = [d.strip() for d in args.devices.split(",")]
    result = {
        "bench": "strategies",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "torch": torch.__version__,
        "device": (torch.cuda.get_device_name(0) if args.devices[0].startswith("cuda")
                   else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"),
        "host_cpus": __import__("os").cpu_count(),
        "load_average_before": list(__import__("os").getloadavg()),
        "note": ("CPU speed-ups are DiT-only (latents out): the tiny VAE's decode is sequential in frame order and "
                 "dominates a CPU generate() at these sizes. The host's 2 cores are shared with other jobs: see "
                 "load_average_before/after."),
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
    out = Path(args.out) if args.out else (Path(__file__).parent / "results" /
                                           f"strategies-{kind}-{datetime.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
