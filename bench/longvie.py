"""LongVie 2 as released (``recipe="longvie2"``): what one clip costs, and batched CFG vs the
release's two passes.

    python bench/longvie.py                 # CPU: tiny random model; 14B arithmetic
    python bench/longvie.py --smoke         # seconds: 32x32, 1 step, one repeat (for the tests)
    python bench/longvie.py --device cuda:0 --height 352 --width 640 --steps 4

Two parts, written to out/bench/longvie-<device>-<date>.json (``--out PATH`` elsewhere; the
committed result was written with ``--out bench/results/longvie-cpu-<date>.json``):

1. Arithmetic for the release's setting (Wan2.1-I2V-14B + 2 x 12 half-width control
   blocks, 352x640, 81 frames = 21 latents of 880 tokens, 2 history latents, 512 + 257
   context tokens, 50 steps x 2 CFG rows): DiT FLOPs per clip, split into base and
   branches (our batched CFG does the same FLOPs as the release's two passes: it saves
   launches and weight reads, not arithmetic). Time at an assumed utilisation is an
   ESTIMATE, labelled as such; nothing here was measured on a GPU unless --device says so.
2. Measured on this machine, side by side in one run: one clip's denoising loop
   (LongVieChain.sample over conditions encoded once) with both CFG rows in one forward
   (``batch_cfg=True``, ours) and as two forwards (the release's way), alternating, best
   of --repeats; the two results are checked equal (rel <= 1e-5).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_io import meta, out_path  # noqa: E402
from bench.throughput import forward_flops  # noqa: E402
from engine.config import get_preset  # noqa: E402
from engine.longvie import LongVieChain, LongVieClip, RandomImageTokens  # noqa: E402
from engine.models.longvie import DEFAULT_CONTROL_LAYERS, half_config  # noqa: E402


def clip_flops(cfg, height: int = 352, width: int = 640, frames: int = 21, history: int = 2, text: int = 512,
               image_tokens: int = 257, steps: int = 50, rows: int = 2, layers: int = DEFAULT_CONTROL_LAYERS) -> dict:
    """DiT FLOPs of one LongVie clip: every step runs the base over history + clip tokens
    and both branches (half width, ``layers`` blocks) over the clip tokens, per CFG row."""
    tpf = (height // 16) * (width // 16)
    base_q = (history + frames) * tpf
    ctx = text + image_tokens
    base = forward_flops(cfg, base_q, base_q * base_q, history + frames, ctx)
    half = half_config(cfg).replace(num_layers=layers)
    q = frames * tpf
    branch = forward_flops(half, q, q * q, frames, ctx)
    combine = 2.0 * q * cfg.dim * half.dim * (layers + 1)  # initial combine + per-block injections
    per_pass = base + 2 * branch + 2 * combine
    return {"tokens_per_frame": tpf, "base_tokens": base_q, "branch_tokens": q, "per_pass_tflop": per_pass / 1e12,
            "base_share": base / per_pass, "branches_share": 2 * (branch + combine) / per_pass,
            "passes_per_clip": steps * rows, "per_clip_pflop": per_pass * steps * rows / 1e15}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=112)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="seconds, for the tests: 32x32, 1 step, one repeat")
    p.add_argument("--out", default=None, help="JSON path (default out/bench/longvie-<device>-<date>.json)")
    a = p.parse_args()
    if a.smoke:
        a.height, a.width, a.steps, a.repeats = 32, 32, 1, 1

    import engine

    cfg14 = get_preset("wan2.1-i2v-14b")
    arith = clip_flops(cfg14)
    rate = 989e12  # H100 SXM dense bf16 peak
    est = {f"{int(u * 100)}%_of_h100_bf16_peak_s": arith["per_clip_pflop"] * 1e15 / (u * rate) for u in (0.3, 0.5)}

    dev = torch.device(a.device)
    model = engine.load_longvie("tiny-i2v", device=dev)
    from engine.inputs import resolve_components

    comps = resolve_components(model, None, None)
    rng = np.random.default_rng(0)
    H, W = a.height, a.width
    vid = lambda: rng.integers(0, 255, (81, H, W, 3), dtype=np.uint8)  # noqa: E731
    clip = LongVieClip(dense=vid(), sparse=vid())
    g = torch.Generator().manual_seed(0)
    text = torch.randn(2, model.config.text_len, model.config.text_dim, generator=g)
    first = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    sampler = engine.recipes.RECIPES["longvie2"].sampler.replace(num_steps=a.steps)
    enc = RandomImageTokens(model.config.image_dim)
    chains = {b: LongVieChain(model, comps.vae, enc, [text], [clip], first, sampler=sampler, batch_cfg=b)
              for b in (True, False)}
    times = {True: [], False: []}
    outs = {}
    t0 = time.perf_counter()
    cond = chains[True].conditions(0, first, None)  # the VAE / CLIP work, the same for both
    cond_s = time.perf_counter() - t0
    for _ in range(a.repeats):
        for b in (True, False):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            outs[b] = chains[b].sample(cond)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times[b].append(time.perf_counter() - t0)
    err = float((outs[True] - outs[False]).norm() / outs[False].norm())
    best = {b: min(t) for b, t in times.items()}
    res = {
        "what": "LongVie 2 recipe: 14B clip arithmetic + batched vs two-pass CFG, one clip's denoising loop",
        **meta(a.device), "smoke": a.smoke,
        "arithmetic_14b_352x640": arith,
        "estimate_not_measured": {**est, "note": "FLOPs / (utilisation x 989 TFLOP/s); release and ours do the same "
                                  "FLOPs per clip"},
        "torch_threads": torch.get_num_threads(),
        "measured": {"model": "tiny-i2v (random)", "size": [H, W], "steps": a.steps, "repeats": a.repeats,
                     "conditions_s (5 VAE encodes of 81 frames + CLIP, once)": cond_s,
                     "batched_cfg_s": best[True], "two_pass_cfg_s": best[False],
                     "speedup_batched": best[False] / best[True], "rel_diff": err},
    }
    out = out_path(a.out, f"longvie-{dev.type}{'-smoke' if a.smoke else ''}-{res['date']}.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    assert err <= 1e-5, err
    return 0


if __name__ == "__main__":
    sys.exit(main())
