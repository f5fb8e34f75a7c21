"""Batching benchmark: a LongDWM-style fine stage -- many independent fine clips, each
generating the r - 1 latents between two clean keyframes (its own clip, RoPE from 0) --
on ONE worker, with ``batch_jobs=1`` (every job alone) and ``batch_jobs=N`` (up to N like
jobs per batched forward) side by side in one run: alternating, best of --repeats.

    python bench/batching.py                                  # tiny model, CPU
    python bench/batching.py --dims 256,1024,4,4 --size 128   # a larger DiT (dim, ffn, heads, layers)
    python bench/batching.py --device cuda:0 --model wan2.1-t2v-1.3b --size 480x832 --dtype bf16

DiT only (latents out, no VAE). CFG is on (a 2-row context): the executor batches only
jobs whose pass alone already has two rows (engine.denoise.batchable), so batched and
alone are bit for bit the same; the outputs are checked. Writes
out/bench/batching-<device>-<date>.json (several configurations append to one file;
``--out PATH`` elsewhere: the committed result was written with
``--out bench/results/batching-cpu-<date>.json``). ``--smoke``: seconds, for the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from bench.bench_io import cpu_name, out_path  # noqa: E402
from engine.config import SamplerConfig, get_preset  # noqa: E402
from engine.plans import INPUT, Clip, Plan, make_job  # noqa: E402
from engine.runtime import RuntimeStats, execute  # noqa: E402
from engine.sampling import config_sigmas  # noqa: E402


def fine_stage(pairs: int, r: int, sigmas: list[float]) -> Plan:
    """``pairs`` independent fine clips of r + 1 latents: keyframes at both ends given
    (plan inputs), latents 1 .. r-1 generated (LongDWM's fine jobs with keyframe clips)."""
    jobs, clips, inputs = [], [], []
    for a in range(pairs):
        s = a * (r + 1)
        frames = {s: (False, INPUT), s + r: (False, INPUT)}
        gen = list(range(s + 1, s + r))
        frames.update({p: (True, None) for p in gen})
        jobs.append(make_job(f"fine{a}", "fine", frames, base=sigmas, outputs=gen))
        clips.append(Clip(f"pair{a}", s, r + 1, rope_origin=s))
        inputs += [s, s + r]
    return Plan("fine-stage", pairs * (r + 1), jobs, inputs=tuple(inputs), clips=clips).validate()


def run_once(model, ctx, plan, device, hw, sampler, inputs, batch_jobs, threads):
    st = RuntimeStats()
    t = time.perf_counter()
    lat = {ps[0]: x for ps, x in execute(plan, {"fine": model}, devices=[device], make_context=lambda r, m: ctx,
                                         seed=0, sampler=sampler, latent_hw=hw, inputs=inputs, stats=st,
                                         cpu_threads=threads, batch_jobs=batch_jobs)}
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t, lat, st


def bench(args) -> dict:
    dev = torch.device(args.device)
    if args.dims:
        d, f, h, n = (int(v) for v in args.dims.split(","))
        cfg = dataclasses.replace(get_preset(args.model), name=f"{args.model}-d{d}-f{f}-h{h}-l{n}", dim=d, ffn_dim=f,
                                  num_heads=h, num_layers=n)
        model = engine.load_model(args.model, device=dev, config=cfg, dtype=args.dtype)
    else:
        model = engine.load_model(args.model, device=dev, dtype=args.dtype)
    cfg = model.config
    H, W = args.size
    _, sh, sw = cfg.vae_stride
    hw = (H // sh, W // sw)
    sampler = SamplerConfig(kind=args.sampler, num_steps=args.steps, guidance_scale=args.cfg,
                            timesteps=None if args.sampler != "fewstep" else SamplerConfig().timesteps)
    plan = fine_stage(args.pairs, args.fps_ratio, config_sigmas(sampler).tolist())
    g = torch.Generator().manual_seed(0)
    ctx = model.prepare_context(torch.randn(2, 16, cfg.text_dim, generator=g).to(dev))
    inputs = {p: torch.randn(1, cfg.out_channels, 1, *hw, generator=g).to(dev) for p in plan.inputs}
    threads = args.threads
    run_once(model, ctx, plan, args.device, hw, sampler, inputs, 1, threads)  # warm-up (both paths)
    run_once(model, ctx, plan, args.device, hw, sampler, inputs, args.batch, threads)
    best = {1: float("inf"), args.batch: float("inf")}
    outs, stats, times = {}, {}, {1: [], args.batch: []}
    for _ in range(args.repeats):
        for bj in (1, args.batch):
            dt, lat, st = run_once(model, ctx, plan, args.device, hw, sampler, inputs, bj, threads)
            times[bj].append(round(dt, 3))
            if dt < best[bj]:
                best[bj], stats[bj] = dt, st
            outs[bj] = lat
    identical = all(torch.equal(outs[1][p], outs[args.batch][p]) for p in outs[1])
    sizes = sorted({j["batch"] for j in stats[args.batch].jobs})
    tokens = (len(plan.jobs[0].positions) // cfg.patch_size[0]) * model.tokens_per_frame(*hw)
    return {
        "model": cfg.name, "dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "heads": cfg.num_heads, "layers": cfg.num_layers,
        "dtype": str(model.dtype).replace("torch.", ""),
        "size": [H, W], "latent_hw": list(hw), "pairs": args.pairs, "fps_ratio": args.fps_ratio,
        "frames_per_job": len(plan.jobs[0].positions), "tokens_per_job_row": tokens,
        "sampler": args.sampler, "steps": sampler.num_steps if args.sampler != "fewstep" else len(sampler.timesteps),
        "guidance_scale": args.cfg, "rows_per_job": 2, "batch_jobs": args.batch, "cpu_threads": threads,
        "seconds": {"batch_jobs=1": round(best[1], 3), f"batch_jobs={args.batch}": round(best[args.batch], 3)},
        "all_seconds": {f"batch_jobs={k}": v for k, v in times.items()},
        "speedup": round(best[1] / best[args.batch], 2),
        "batch_sizes_seen": sizes,
        "bit_identical": bool(identical),
    }


def parse_size(s: str) -> tuple[int, int]:
    if "x" in s:
        h, w = s.split("x")
        return int(h), int(w)
    return int(s), int(s)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--dims", default=None, help="DIM,FFN,HEADS,LAYERS: the --model preset resized (random weights)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--size", type=parse_size, default=(128, 128), help="video H[xW] (latent = / 8)")
    p.add_argument("--pairs", type=int, default=12, help="independent fine clips")
    p.add_argument("--fps-ratio", type=int, default=4, help="latents per pair step: r - 1 generated per clip")
    p.add_argument("--sampler", default="fewstep", choices=["fewstep", "euler", "unipc"])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--batch", type=int, default=4, help="batch_jobs of the batched run")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the worker (CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="seconds, for the tests: 32x32, 4 pairs, 2 steps, one repeat")
    p.add_argument("--out", default=None, help="JSON path (default out/bench/batching-<device>-<date>.json)")
    args = p.parse_args()
    if args.smoke:
        args.size, args.pairs, args.steps, args.repeats = (32, 32), 4, 2, 1
    if args.cfg == 1.0:
        p.error("--cfg 1.0: the executor batches only CFG (2-row) jobs (engine.denoise.batchable)")
    load = list(os.getloadavg())
    row = bench(args)
    row.update({
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average_before": load, "load_average_after": list(os.getloadavg()),
    })
    print(json.dumps(row), flush=True)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    out = out_path(args.out, f"batching-{kind}{'-smoke' if args.smoke else ''}-{datetime.date.today().isoformat()}.json")
    doc = json.loads(out.read_text()) if out.exists() else {
        "bench": "batching",
        "torch": torch.__version__,
        "device": (torch.cuda.get_device_name(torch.device(args.device)) if kind == "cuda"
                   else f"{cpu_name()} CPU, one worker"),
        "host_cpus": os.cpu_count(),
        "note": ("LongDWM-style fine stage: independent fine clips (keyframes given at both ends) on one worker, "
                 "DiT only; batch_jobs=1 vs batch_jobs=N alternating, best of --repeats, after one warm-up of each. "
                 "speedup = seconds(batch_jobs=1) / seconds(batch_jobs=N). The host's cores may be shared with other "
                 "jobs: see load averages."),
        "runs": [],
    }
    doc["runs"].append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
