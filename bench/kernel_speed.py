"""Kernel benchmarks: block attention backends per pattern, spectral filter and noise init.

On a GPU (``python bench/kernel_speed.py``):

- attention, bfloat16, Wan-1.3B (12 heads x 128) and Wan-14B (40 heads x 128) shapes,
  21 latent frames of 1560 tokens, chunks of 3 frames, for each pattern and backend
  (our Triton kernel, torch FlexAttention with a BlockMask built from the same pattern,
  SDPA with a dense bool mask).  TFLOP/s count only visible work:
  ``4 * visible (query, key) pairs * D * B * H`` -- skipped tiles earn nothing, so
  backends are compared on the useful work they do.  Each backend's output is checked
  against the Triton kernel (max abs diff recorded).
- bandwidth of ``highpass`` and ``noise_init`` on a Wan latent ``[1, 16, 21, 60, 104]``,
  in GB/s and as a share of the measured device-to-device copy rate.

Results go to ``out/bench/kernels-<device>-<date>.json`` (``--out PATH`` elsewhere) with
device name, torch / triton versions, date and command.  On a CPU-only machine the script
runs a tiny correctness check in the Triton interpreter, writes it (``kernels-cpu-check-
<date>.json``) and says so; it claims no timings (``--smoke`` is accepted: on a CPU every
run is that check).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine_kernels  # noqa: E402
from bench.bench_io import cpu_name, out_path  # noqa: E402
from engine_kernels import patterns  # noqa: E402
from engine_kernels.block_attention import default_tiles, visible_flops  # noqa: E402

MODELS = {"wan-1.3b": 12, "wan-14b": 40}
HEAD_DIM = 128
TOKENS_PER_FRAME = 1560
FRAMES = 21
CHUNK = 3


def attention_patterns(frames: int = FRAMES, chunk: int = CHUNK) -> dict[str, torch.Tensor]:
    """The frame patterns benchmarked, by name (``[F, F]`` bool)."""
    return {
        "full": patterns.full(frames),
        "block_causal": patterns.block_causal(frames, chunk),
        "sliding_window_w9_sink3": patterns.sliding_window(frames, chunk, 9, sink=3),
        "mmpl_planning": patterns.mmpl_planning(frames, [5, 10, frames - 1]),
        "interpolation": patterns.interpolation(frames),
    }


# ----------------------------------------------------------------------------- backends

def _triton_backend(q, k, v, qf, kf, vis, tiles=None):
    block_m, block_n, warps, stages = tiles or default_tiles(q.shape[-1], q.dtype)
    bm = engine_kernels.build_block_mask(qf, kf, vis, block_m, block_n, device=q.device)
    return lambda: engine_kernels.block_attention(q, k, v, q_frame_ids=qf, k_frame_ids=kf, visibility=vis,
                                           block_mask=bm, num_warps=warps, num_stages=stages)


# (block_m, block_n, num_warps, num_stages) tried by --sweep; all fit an H100's shared
# memory without spills at D=128 (tests/kernels/compile_check.py reports each).
SWEEP_TILES = [(128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 3),
               (64, 64, 4, 3), (128, 32, 8, 3)]


def _flex_backend(q, k, v, qf, kf, vis):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    qf_l, kf_l, vis_d = qf.long(), kf.long(), vis.to(q.device)

    def mask_mod(b, h, q_idx, kv_idx):
        return vis_d[qf_l[q_idx], kf_l[kv_idx]]

    block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=q.shape[2], KV_LEN=k.shape[2],
                                   device=q.device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda: compiled(q, k, v, block_mask=block_mask)


def _sdpa_backend(q, k, v, qf, kf, vis):
    mask = vis.to(q.device)[qf.long()][:, kf.long()]  # dense [Sq, Sk] bool
    return lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


BACKENDS = {"triton": _triton_backend, "flex": _flex_backend, "sdpa": _sdpa_backend}


# ----------------------------------------------------------------------------- timing

def _do_bench(fn) -> float:
    """Median milliseconds of ``fn`` (triton.testing.do_bench, L2 flushed between runs)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy rate in GB/s (read + write bytes)."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = _do_bench(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def bench_attention(models, pattern_names, backends, frames, tpf, sweep=False) -> list[dict]:
    rows = []
    pats = attention_patterns(frames)
    ids = patterns.frame_ids(tpf, frames, device="cuda")
    for model in models:
        heads = MODELS[model]
        shape = (1, heads, frames * tpf, HEAD_DIM)
        q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for name in pattern_names:
            vis = pats[name]
            bm = engine_kernels.build_block_mask(ids, ids, vis, 128, 64, device="cuda")
            flops = visible_flops(bm, 1, heads, HEAD_DIM)
            ref = None
            runs = [(b, None) for b in backends]
            if sweep and "triton" in backends:
                runs += [("triton", t) for t in SWEEP_TILES if t != default_tiles(HEAD_DIM, q.dtype)]
            for backend, tiles in runs:
                row = {"model": model, "heads": heads, "head_dim": HEAD_DIM, "tokens": shape[2],
                       "pattern": name, "backend": backend, "visible_fraction":
                       bm.visible_pairs / float(shape[2]) ** 2, "tile_density": bm.tile_density()}
                if backend == "triton":
                    row["tiles"] = list(tiles or default_tiles(HEAD_DIM, q.dtype))
                    row["default_tiles"] = tiles is None
                try:
                    fn = (_triton_backend(q, k, v, ids, ids, vis, tiles) if tiles
                          else BACKENDS[backend](q, k, v, ids, ids, vis))
                    out = fn()
                    torch.cuda.synchronize()
                    if backend == "triton" and tiles is None:
                        ref = out
                    elif ref is not None:
                        row["max_abs_diff_vs_triton"] = float((out.float() - ref.float()).abs().max())
                    ms = _do_bench(fn)
                    row.update(ms=ms, tflops=flops / (ms * 1e-3) / 1e12)
                except Exception as exc:  # one failing backend must not end the run
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                rows.append(row)
                print(json.dumps(row), flush=True)
                torch.cuda.empty_cache()
    return rows


def same_size_copy_gbs(nbytes: int) -> float:
    """Copy rate (GB/s, read + write) of a device-to-device copy moving ``nbytes`` in total,
    timed like the kernels: the fair yardstick for a kernel that moves the same bytes
    (launch cost and tail effects included on both sides)."""
    src = torch.empty(max(1, nbytes // 4), dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = _do_bench(lambda: dst.copy_(src))
    return nbytes / (ms * 1e-3) / 1e9


def _bandwidth_row(name, shape, nbytes, ms, copy_gbs, same):
    gbs = nbytes / (ms * 1e-3) / 1e9
    return {"kernel": name, "shape": list(shape), "dtype": "bfloat16", "bytes": nbytes, "ms": ms,
            "gb_per_s": gbs, "pct_of_copy": 100 * gbs / copy_gbs,
            "same_size_copy_gb_per_s": same, "pct_of_same_size_copy": 100 * gbs / same}


def bench_memory_bound(copy_gbs: float) -> list[dict]:
    """Bandwidth of the memory-bound kernels on Wan latents, against the peak copy rate
    (``pct_of_copy``, 1 GiB copy) and a copy of the same bytes (``pct_of_same_size_copy``)."""
    rows = []
    x = torch.randn(1, 16, FRAMES, 60, 104, device="cuda", dtype=torch.bfloat16)
    nbytes = 2 * x.numel() * x.element_size()  # read x, write H(x)
    same = same_size_copy_gbs(nbytes)
    for name, fn in (("highpass_triton", lambda: engine_kernels.highpass(x, 0.1)),
                     ("highpass_fft_reference", lambda: engine_kernels.highpass_reference(x, 0.1))):
        rows.append(_bandwidth_row(name, x.shape, nbytes, _do_bench(fn), copy_gbs, same))
    planning = torch.randn(1, 16, 4, 60, 104, device="cuda", dtype=torch.bfloat16)
    fresh = torch.randn_like(x)
    fp, pp = list(range(FRAMES)), [0, 7, 14, 20]
    # reads: planning frames (each at least once) + fresh; writes: output
    nbytes = (planning.numel() + fresh.numel() + x.numel()) * x.element_size()
    same = same_size_copy_gbs(nbytes)
    for name, fn in (("noise_init_triton", lambda: engine_kernels.noise_init(fp, pp, planning, fresh=fresh, rho=0.2)),
                     ("noise_init_reference", lambda: engine_kernels.noise_init_reference(fp, pp, planning, fresh=fresh, rho=0.2))):
        rows.append(_bandwidth_row(name, x.shape, nbytes, _do_bench(fn), copy_gbs, same))
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def cpu_check() -> dict:
    """Tiny interpreter correctness check (no timings) for CPU-only machines."""
    vis = patterns.sliding_window(4, 2, 4, sink=1)
    ids = patterns.frame_ids(24, 4)
    q, k, v = (torch.randn(1, 2, 96, 64) for _ in range(3))
    o = engine_kernels.block_attention(q, k, v, q_frame_ids=ids, k_frame_ids=ids, visibility=vis)
    r = engine_kernels.block_attention_reference(q, k, v, q_frame_ids=ids, k_frame_ids=ids, visibility=vis)
    x = torch.randn(2, 3, 20, 26)
    checks = {
        "block_attention_max_abs_diff": float((o - r).abs().max()),
        "highpass_max_abs_diff": float((engine_kernels.highpass(x, 0.1) - engine_kernels.highpass_reference(x, 0.1)).abs().max()),
    }
    pn = torch.randn(1, 4, 2, 8, 8)
    checks["noise_init_max_abs_diff"] = float(
        (engine_kernels.noise_init([0, 1, 2, 3], [0, 3], pn) - engine_kernels.noise_init_reference([0, 1, 2, 3], [0, 3], pn)).abs().max())
    checks["ok"] = all(v < 1e-4 for k, v in checks.items() if k.endswith("diff"))
    return checks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--patterns", nargs="+", default=list(attention_patterns()))
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    ap.add_argument("--sweep", action="store_true",
                    help="also time the Triton kernel at every tile config of SWEEP_TILES")
    ap.add_argument("--frames", type=int, default=FRAMES)
    ap.add_argument("--tokens-per-frame", type=int, default=TOKENS_PER_FRAME)
    ap.add_argument("--smoke", action="store_true", help="accepted for the tests; on a CPU every run is the quick check")
    ap.add_argument("--out", default=None, help="JSON path (default out/bench/kernels-<device>-<date>.json)")
    args = ap.parse_args(argv)

    now = _dt.datetime.now(_dt.timezone.utc)
    meta = {"date": now.isoformat(timespec="seconds"), "command": " ".join([sys.executable] + sys.argv),
            "torch": torch.__version__, "python": platform.python_version(),
            "triton_available": engine_kernels.triton_available()}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None

    if not torch.cuda.is_available() or engine_kernels.interpreting():
        meta["device"] = f"cpu ({cpu_name()})"
        result = {**meta, "cpu_only": True, "note": "CPU-only run: Triton interpreter correctness check, "
                  "no timings claimed", "checks": cpu_check()}
        print(json.dumps(result, indent=2))
        out = out_path(args.out, f"kernels-cpu-check-{now.date().isoformat()}.json")
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
        return 0 if result["checks"]["ok"] else 1

    meta["device"] = torch.cuda.get_device_name()
    meta["capability"] = list(torch.cuda.get_device_capability())
    copy_gbs = copy_bandwidth()
    result = {**meta, "copy_gb_per_s": copy_gbs,
              "attention": bench_attention(args.models, args.patterns, args.backends, args.frames,
                                           args.tokens_per_frame, sweep=args.sweep),
              "memory_bound": bench_memory_bound(copy_gbs)}
    slug = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
    out = out_path(args.out, f"kernels-{slug}-{now.strftime('%Y%m%dT%H%M%S')}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
