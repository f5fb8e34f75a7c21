"""MMPL as released: the multi-GPU chaining (``mmpl-t2v-parallel``) against the 1-GPU
chaining (``mmpl-t2v``).

    python bench/mmpl_release.py                    # CPU: tiny-random model, 1 vs 2 CPU worker threads
    python bench/mmpl_release.py --smoke            # seconds: 2 segments, 2 steps, 32x32, one repeat
    python bench/mmpl_release.py --devices cuda:0,cuda:1,cuda:2,cuda:3 --model <t2v_14B_8k.pt> ...

Two parts, side by side in one run, written to out/bench/mmpl-release-<device>-<date>.json
(``--out PATH`` elsewhere; the committed result was written with
``--out bench/results/mmpl-release-cpu-<date>.json``):

1. Plan arithmetic for a 60-second video (16 fps): the critical path in DiT passes of
   both recipes and the makespan of a greedy list schedule on 1, 2 and 4 workers (every
   DiT pass one unit, a KV-cache chain pinned to one worker, VAE jobs free), i.e. what
   the paper's "2 GPUs halve the time, 4 GPUs ~1/3" is about.
2. End to end on this machine (generate(), VAE included): ``mmpl-t2v-parallel`` on 1 and
   on W workers (alternating, best of --repeats), outputs checked bit-identical.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from bench.bench_io import meta, out_path  # noqa: E402
from engine.plans import build_plan  # noqa: E402
from engine.plans.mmpl_release import SEGMENT, release_segments  # noqa: E402
from engine.recipes import get_recipe  # noqa: E402
from engine.sampling import config_sigmas  # noqa: E402

SIXTY_S = 60 * 16


def frames_for(handoff: str, at_least: int) -> int:
    """The shortest release video length of at least ``at_least`` frames."""
    n = 1
    while True:
        f = 76 * n + (0 if handoff == "tail" else 5)
        if f >= at_least:
            return f
        n += 1


def list_schedule(plan, workers: int) -> int:
    """Makespan in DiT passes of the runtime's policy, simulated: a free worker takes the
    ready job of highest critical-path priority among its own pinned jobs and the unbound
    ones; a job starting a new KV-cache chain binds it to that worker, and is left to a
    less committed worker while this one has its own work (engine.runtime.Executor._pop).
    Every DiT pass costs one unit; VAE jobs cost nothing."""
    prio = plan.priorities()
    jobs = {j.id: j for j in plan.all_jobs()}
    deps = {j: set(plan.deps_of(jobs[j])) for j in jobs}
    pin_cost: dict[str, int] = {}
    for j in jobs.values():
        if j.pin is not None:
            pin_cost[j.pin] = pin_cost.get(j.pin, 0) + plan.passes_of(j)
    end: dict[str, int] = {}
    free = [0] * workers
    bound: dict[str, int] = {}
    committed = [0] * workers
    left = set(jobs)
    while left:
        w = min(range(workers), key=lambda i: (free[i], i))
        now = free[w]
        ready = [j for j in left if all(d in end and end[d] <= now for d in deps[j])]
        mine = [j for j in ready if jobs[j].pin is None or bound.get(jobs[j].pin, w) == w]
        if not mine:
            later = [e for e in end.values() if e > now]
            free[w] = min(later) if later else now + 1
            continue
        best = max(mine, key=lambda j: (prio[j], j))
        pin = jobs[best].pin
        own = [j for j in mine if jobs[j].pin in bound]
        if pin is not None and pin not in bound and pin_cost[pin] and own and min(committed) < committed[w]:
            best = max(own, key=lambda j: (prio[j], j))
            pin = jobs[best].pin
        if pin is not None and pin not in bound:
            bound[pin] = w
            committed[w] += pin_cost[pin]
        cost = plan.passes_of(jobs[best])
        end[best] = now + cost
        free[w] = now + cost
        if pin is not None:
            committed[w] -= cost
        left.remove(best)
    return max(end.values())


def arithmetic() -> dict:
    out = {}
    for name in ("mmpl-t2v", "mmpl-t2v-parallel"):
        r = get_recipe(name)
        frames = frames_for(r.options.handoff, SIXTY_S)
        plan = build_plan("mmpl", SEGMENT * release_segments(frames, r.options.handoff),
                          sigmas=config_sigmas(r.sampler).tolist(), release=r.options.release,
                          handoff=r.options.handoff)
        cp, _ = plan.critical_path()
        out[name] = {"video_frames": frames, "segments": len(plan.clips), "total_passes": plan.total_passes(),
                     "critical_path_passes": cp,
                     "makespan_passes": {w: list_schedule(plan, w) for w in (1, 2, 4)}}
    one = out["mmpl-t2v"]["makespan_passes"][1]
    for name in out:
        out[name]["speedup_vs_mmpl_t2v_1_worker"] = {w: round(one / m, 3)
                                                     for w, m in out[name]["makespan_passes"].items()}
    return out


def end_to_end(args) -> dict:
    model = engine.load_model(args.model, device=args.devices[0])
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 7, model.config.text_dim, generator=g)
    neg = torch.randn(1, 5, model.config.text_dim, generator=g)
    r = get_recipe("mmpl-t2v-parallel")
    sampler = r.sampler.replace(num_steps=args.steps)
    frames = 81 + 76 * (args.segments - 1)
    kw = dict(recipe=r.name, num_frames=frames, height=args.height, width=args.width, sampler=sampler,
              prompt_embeds=text, negative_prompt_embeds=neg, progress=False, cpu_threads=args.cpu_threads)
    times = {1: [], len(args.devices): []}
    videos = {}
    engine.generate(model, devices=args.devices[:1], **kw)  # warm-up
    for _ in range(args.repeats):
        for w in times:
            t0 = time.perf_counter()
            v = engine.generate(model, devices=args.devices[:w], **kw)
            times[w].append(time.perf_counter() - t0)
            videos[w] = v.frames
    same = all(np.array_equal(videos[1], v) for v in videos.values())
    best = {w: min(t) for w, t in times.items()}
    W = len(args.devices)
    return {"recipe": r.name, "video_frames": frames, "segments": args.segments, "steps": args.steps,
            "size": [args.height, args.width], "seconds": {w: round(t, 3) for w, t in best.items()},
            "all_seconds": times, "speedup": round(best[1] / best[W], 3), "workers": W, "bit_identical": same}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--devices", default="cpu,cpu")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--segments", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cpu-threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true",
                    help="seconds, for the tests: 2 segments, 2 steps, 32x32, one repeat (no figure to quote)")
    ap.add_argument("--out", default=None, help="JSON path (default out/bench/mmpl-release-<device>-<date>.json)")
    args = ap.parse_args()
    if args.smoke:
        args.segments, args.steps, args.height, args.width, args.repeats = 2, 2, 32, 32, 1
    args.devices = [d.strip() for d in args.devices.split(",")]
    m = meta(args.devices[0])
    if not args.devices[0].startswith("cuda"):
        m["device"] += f", {len(args.devices)} worker threads of {args.cpu_threads} torch thread(s)"
    res = {"bench": "mmpl-release", **m, "smoke": args.smoke, "load_average_before": list(os.getloadavg()),
           "model": args.model, "sixty_seconds": arithmetic(), "end_to_end": end_to_end(args),
           "load_average_after": list(os.getloadavg())}
    print(json.dumps(res, indent=1))
    kind = "cuda" if args.devices[0].startswith("cuda") else "cpu"
    out = out_path(args.out, f"mmpl-release-{kind}{'-smoke' if args.smoke else ''}-{res['date']}.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
