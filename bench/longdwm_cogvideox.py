"""LongDWM on CogVideoX end to end, one worker: the paper's layout (recipe ``longdwm``: 13
keyframes, 11 image-latent fine frames per pair, ends on the fine model's channels) run
with ``batch_jobs=1`` (every fine job alone) and ``batch_jobs=12`` (the 12 fine jobs in
one batched forward per step) side by side, alternating, best of --repeats.

    python bench/longdwm_cogvideox.py                      # tiny CogVideoX models, CPU
    python bench/longdwm_cogvideox.py --smoke              # seconds: 2 DDIM steps, one repeat (for the tests)
    python bench/longdwm_cogvideox.py --device cuda:0 --size 480x720 --preset cogvideox-2b --dtype bf16

Reports the fine stage's time (the union of the fine jobs' intervals in the runtime's job
log: the worker's time on them, decodes in between excluded), the whole run's, the critical path in DiT passes against ar for the
same 145 frames, and how far the batched video is from the unbatched one (CogVideoX's
batched GEMMs round differently on CPU: not bit-identical). Writes
out/bench/longdwm-cogvideox-<device>-<date>.json (``--out PATH`` elsewhere; the committed
result was written with ``--out bench/results/longdwm-cogvideox-cpu-<date>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_io import meta, out_path  # noqa: E402
from engine.config import SamplerConfig  # noqa: E402
from engine.generation import RunStats, plan_for, prepare, run  # noqa: E402
from engine.models.cogvideox import COGVIDEOX_PRESETS, build_cogvideox, cogvideox_scheduler_for  # noqa: E402
from engine.recipes import apply_recipe  # noqa: E402


def _model(preset: str, i2v: bool, seed: int, device, dtype):
    cfg = COGVIDEOX_PRESETS[preset]
    m = build_cogvideox(cfg.replace(in_channels=2 * cfg.out_channels) if i2v else cfg, seed=seed)
    m.source = None
    return m.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _once(coarse, fine, kw, batch_jobs):
    stats = RunStats()
    t = time.perf_counter()
    pr = prepare(coarse, fine_model=fine, batch_jobs=batch_jobs, **kw)
    frames = np.concatenate(list(run(pr, stats)), 0)
    total = time.perf_counter() - t
    fine_jobs = [j for j in stats.runtime.jobs if str(j["id"]).startswith("longdwm/fine")]
    stage, reach = 0.0, -1.0  # the union of the fine jobs' intervals: time the worker spent on them
    for j in sorted(fine_jobs, key=lambda j: j["start"]):
        stage += max(0.0, j["end"] - max(j["start"], reach))
        reach = max(reach, j["end"])
    return total, stage, frames, max(j.get("batch", 1) for j in fine_jobs), pr.plan


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="tiny-cogvideox")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--size", default="32x32", help="video HxW")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps (1000 % steps == 0)")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="seconds, for the tests: 2 DDIM steps, one repeat")
    p.add_argument("--out", default=None, help="JSON path (default out/bench/longdwm-cogvideox-<device>-<date>.json)")
    a = p.parse_args()
    if a.smoke:
        a.steps, a.repeats = 2, 1
    torch.set_num_threads(a.threads)
    H, W = (int(v) for v in a.size.split("x"))
    dt = getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}.get(a.dtype, a.dtype))
    coarse, fine = _model(a.preset, False, 1, a.device, dt), _model(a.preset, True, 2, a.device, dt)
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # CogVideoX's DDIM on the models' own DDPM table: generate() would fill it in, plan_for (the ar
    # comparison below) does not -- SamplerConfig(schedule="cogvideox") needs it given there
    ddpm = cogvideox_scheduler_for(coarse)[1]
    kw = apply_recipe("longdwm", dict(first_frame=image, height=H, width=W, num_frames=145, prompt="a road",
                                      devices=[a.device], cpu_threads=a.threads,
                                      sampler=SamplerConfig(kind="euler", schedule="cogvideox", ddpm=ddpm,
                                                            num_steps=a.steps, guidance_scale=6.0)))
    if not a.smoke:
        _once(coarse, fine, kw, 1)  # warm-up
    best = {1: (1e9, 1e9), a.batch: (1e9, 1e9)}
    frames, seen = {}, 1
    for _ in range(a.repeats):
        for bj in (1, a.batch):
            total, stage, fr, biggest, plan = _once(coarse, fine, kw, bj)
            best[bj] = min(best[bj], (stage, total))
            frames[bj] = fr
            if bj == a.batch:
                seen = biggest
    diff = np.abs(frames[1].astype(int) - frames[a.batch].astype(int))
    ar = plan_for(coarse, num_frames=145, height=H, width=W, strategy="ar", chunk_frames=3, first_frame_given=True,
                  sampler=kw["sampler"])
    m = meta(a.device)
    if not a.device.startswith("cuda"):
        m["device"] += f", {a.threads} threads"
    result = {
        **m, "smoke": a.smoke,
        "preset": a.preset, "size": [H, W], "dtype": a.dtype, "ddim_steps": a.steps, "guidance_scale": 6.0,
        "frames": int(frames[1].shape[0]), "fine_jobs": sum(1 for j in plan.jobs if j.model == "fine"),
        "fine_stage_seconds": {"batch_jobs=1": round(best[1][0], 3), f"batch_jobs={a.batch}": round(best[a.batch][0], 3)},
        "run_seconds": {"batch_jobs=1": round(best[1][1], 3), f"batch_jobs={a.batch}": round(best[a.batch][1], 3)},
        "fine_stage_speedup": round(best[1][0] / best[a.batch][0], 2),
        "largest_batch_seen": seen,
        "batched_vs_alone_max_uint8_diff": int(diff.max()), "batched_vs_alone_pixels_differing": float((diff > 0).mean()),
        "critical_path_passes": {"longdwm": plan.critical_path()[0], "ar (3-latent chunks, same 145 frames)": ar.critical_path()[0]},
        "loadavg": list(os.getloadavg()),
    }
    print(json.dumps(result, indent=1))
    out = out_path(a.out, f"longdwm-cogvideox-{a.device.split(':')[0]}{'-smoke' if a.smoke else ''}-{result['date']}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
