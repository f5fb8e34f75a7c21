"""The engine against diffusers' WanPipeline on this CPU, side by side, same weights.

    python bench/cpu_vs_references.py                 # dim 512, 6 layers, 33 frames 128x128
    python bench/cpu_vs_references.py --smoke         # seconds (tests)

One random diffusers ``WanTransformer3DModel`` (saved, then loaded by both), the tiny Wan
VAE, the same 512-token text embeddings (no text encoder on either side), 10 flow-UniPC
steps with CFG 5, the whole video as one sequence: diffusers' ``WanPipeline`` (its
``UniPCMultistepScheduler`` with flow sigmas, shift 5) against ``engine.generate`` with
its defaults (one chunk of all latent frames, the UniPC sampler of the same step count
and shift; threads: the runtime's default), and the engine pinned to one thread
(``cpu_threads=1``, the default before issue 30). Runs alternate, best and median of
``--repeats``; the ratio is diffusers' median over the engine's. Both sides run in this
process with torch's thread count for this machine. The frames are not compared (the
samplers' timestep tables differ in their last digits); the work per step is the same: two
CFG rows through the same DiT and one VAE decode.

Writes out/bench/cpu-vs-references-<date>.json (``--out PATH`` elsewhere; ``-smoke-`` in the
name for a smoke run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from bench.bench_io import cpu_name, out_path  # noqa: E402


def build(folder: Path, dim: int, layers: int, text_dim: int, seed: int = 0):
    """A random diffusers Wan DiT saved to ``folder``; returns (diffusers model, engine model)."""
    from diffusers import WanTransformer3DModel

    heads = dim // 64
    torch.manual_seed(seed)
    ref = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=64,
                                in_channels=16, out_channels=16, text_dim=text_dim, freq_dim=256, ffn_dim=3 * dim,
                                num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
    with torch.no_grad():
        for p in ref.parameters():  # zero-initialised output layers would make the work trivial
            p.copy_(torch.randn_like(p) * 0.02)
    ref = ref.eval().requires_grad_(False)
    ref.save_pretrained(folder)
    return ref, engine.load_model(folder, dtype="float32", device="cpu")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="a tiny model, 2 steps, 1 repeat (seconds)")
    p.add_argument("--out")
    a = p.parse_args(argv)
    if a.smoke:
        a.dim, a.layers, a.frames, a.size, a.steps, a.repeats = 128, 1, 5, 32, 2, 1
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from engine.models.vae import make_tiny_vae

    text_dim, guidance, shift = 64, 5.0, 5.0
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(1, 512, text_dim, generator=g), torch.randn(1, 512, text_dim, generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        ref, ours = build(Path(tmp) / "transformer", a.dim, a.layers, text_dim)
    vae = make_tiny_vae(seed=2)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                    num_train_timesteps=1000)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=ref, vae=vae, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    lat = (a.frames - 1) // 4 + 1
    sampler = engine.SamplerConfig(kind="unipc", num_steps=a.steps, shift=shift, timesteps=None,
                                   guidance_scale=guidance)

    def run_diffusers():
        pipe(prompt_embeds=pos, negative_prompt_embeds=neg, height=a.size, width=a.size, num_frames=a.frames,
             num_inference_steps=a.steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(0),
             output_type="pt")

    def run_engine(threads):
        def go():
            return engine.generate(ours, prompt_embeds=pos, negative_prompt_embeds=neg, num_frames=a.frames,
                                   height=a.size, width=a.size, sampler=sampler, chunk_frames=lat, vae=vae,
                                   progress=False, seed=0, cpu_threads=threads)
        return go

    sides = {"diffusers_wan_pipeline": run_diffusers, "engine_default": run_engine(None),
             "engine_cpu_threads_1": run_engine(1)}
    times = {k: [] for k in sides}
    for k, f in sides.items():  # warm-up (allocator, oneDNN primitives)
        f()
    for _ in range(a.repeats):
        for k, f in sides.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    threads = engine.generate(ours, prompt_embeds=pos, negative_prompt_embeds=neg, num_frames=5, height=32, width=32,
                              sampler=sampler.replace(num_steps=1), vae=vae, progress=False).stats.runtime.cpu_threads
    res = {
        "bench": "cpu_vs_references", "date": datetime.date.today().isoformat(), "device": cpu_name(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "engine_default_cpu_threads": threads,
        "command": "python bench/cpu_vs_references.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "setting": dict(dim=a.dim, layers=a.layers, frames=a.frames, size=a.size, steps=a.steps, cfg=guidance,
                        shift=shift, dtype="float32", text_tokens=512),
        "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "engine_default_vs_diffusers": round(med["diffusers_wan_pipeline"] / med["engine_default"], 3),
        "engine_1_thread_vs_diffusers": round(med["diffusers_wan_pipeline"] / med["engine_cpu_threads_1"], 3),
    }
    path = out_path(a.out, f"cpu-vs-references{'-smoke' if a.smoke else ''}-{res['date']}.json")
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("median_seconds", "engine_default_vs_diffusers",
                                          "engine_1_thread_vs_diffusers", "engine_default_cpu_threads")}))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
