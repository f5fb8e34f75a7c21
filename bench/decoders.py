"""Decode time per video frame: the full Wan VAE vs TAEHV and LightX2V's light TAE / light
VAE, same run.

    python bench/decoders.py [--device cpu] [--latents 2] [--out PATH]   # default out/bench/decoders-cpu.json
    python bench/decoders.py --smoke     # seconds: 64x64 only, 1 latent, one repeat (for the tests)

The committed result was written with ``--out bench/results/decoders-cpu.json``.

Full VAE: diffusers ``AutoencoderKLWan()`` (default config = the Wan2.1 VAE layout), and
TAEHV: the released Wan2.1 architecture (engine/models/taehv.py); both random weights,
float32, each through the engine's streaming decoder (``StreamingDecoder`` /
``TAEHVStreamingDecoder``) on ``--latents`` latent frames (``4F - 3`` video frames).
``full_wan_vae_conv3d``: the same VAE with diffusers' own 3-D causal convolutions (the
engine's decoder runs them as 2-D convolutions on the CPU; the default ``full_wan_vae``
is that). Sizes: 480x832 (Wan) and 128x128 (tiny). Per frame = best of ``--repeats`` wall times /
frames. Also optional: ``--e2e``, the end-to-end ``python -m engine generate --model tiny``
time with the full decoder and with TAEHV (a random-weight TAEHV file in the release layout).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_io import cpu_name, out_path  # noqa: E402
sys.path.insert(0, str(ROOT))


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_name()} ({os.cpu_count()} CPUs, {torch.get_num_threads()} threads)"


def decode_times(device: str, latents: int, repeats: int, sizes) -> list[dict]:
    """Seconds per decoded frame, full VAE vs TAEHV, per size."""
    from diffusers import AutoencoderKLWan

    from engine.models.taehv import TAEHV, TAEHVStreamingDecoder
    from engine.models.vae import StreamingDecoder

    torch.manual_seed(0)
    vae = AutoencoderKLWan().to(device).eval().requires_grad_(False)
    taehv = TAEHV().to(device).eval().requires_grad_(False)
    # LightX2V's Wan2.1 light VAE: the Wan VAE pruned 75 % (base width 24), same layout
    lightvae = AutoencoderKLWan(base_dim=24).to(device).eval().requires_grad_(False)
    decoders = (("full_wan_vae", StreamingDecoder(vae)), ("taehv", TAEHVStreamingDecoder(taehv)),
                # diffusers' own 3-D causal convolutions (the engine's decoder runs them as 2-D ones on the CPU)
                ("full_wan_vae_conv3d", StreamingDecoder(vae, conv2d=False)),
                ("lighttae", TAEHVStreamingDecoder(taehv, vae=vae, raw_latents=True)),  # TAEHV layout, raw latents
                ("lightvae", StreamingDecoder(lightvae)))
    rows = []
    for h, w in sizes:
        z = torch.randn(1, 16, latents, h // 8, w // 8, device=device)
        frames = 4 * latents - 3
        row = {"height": h, "width": w, "latent_frames": latents, "video_frames": frames}
        for name, dec in decoders:
            out = dec.decode_all(z)  # warm-up (and shape check)
            assert out.shape[2] == frames, (name, out.shape)
            s = _time(lambda: dec.decode_all(z), repeats)
            row[name] = {"seconds": round(s, 4), "seconds_per_frame": round(s / frames, 5)}
            print(f"{h}x{w} {name}: {s:.3f} s for {frames} frames = {s / frames * 1000:.1f} ms/frame", flush=True)
        row["speedup_per_frame"] = round(row["full_wan_vae"]["seconds"] / row["taehv"]["seconds"], 2)
        row["speedup_per_frame_vs_full"] = {name: round(row["full_wan_vae"]["seconds"] / row[name]["seconds"], 2)
                                            for name, _ in decoders[1:]}
        rows.append(row)
    return rows


def end_to_end(num_frames: int, repeats: int) -> dict:
    """``python -m engine generate --model tiny`` wall time, full decoder vs a TAEHV file."""
    from engine.models.taehv import TAEHV

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "taew2_1_random.pth")
        torch.manual_seed(0)
        torch.save({k: v.half() for k, v in TAEHV().state_dict().items()}, path)
        out = {}
        for name, extra in (("full", []), ("taehv", ["--decoder", path])):
            cmd = [sys.executable, "-m", "engine", "generate", "--model", "tiny", "--num-frames", str(num_frames),
                   "--out", os.path.join(tmp, f"{name}.mp4"), "--no-progress", *extra]
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
                best = min(best, time.perf_counter() - t0)
            out[name] = {"seconds": round(best, 3), "command": " ".join(cmd[1:]).replace(path, "<taehv.pth>")}
            print(f"e2e {name}: {best:.2f} s", flush=True)
        out["speedup"] = round(out["full"]["seconds"] / out["taehv"]["seconds"], 3)
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--latents", type=int, default=2, help="latent frames decoded per measurement (4F-3 frames)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--e2e", type=int, default=0, help="also time generate --model tiny with this many frames")
    ap.add_argument("--sizes", default="480x832,128x128", help="HxW sizes, comma-separated")
    ap.add_argument("--smoke", action="store_true", help="seconds, for the tests: 64x64 only, 1 latent, one repeat")
    ap.add_argument("--out", default=None, help="JSON path (default out/bench/decoders-<device>.json)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.latents, args.repeats, args.e2e = 1, 1, 0
    sizes = [(64, 64)] if args.smoke else [tuple(int(v) for v in hw.split("x")) for hw in args.sizes.split(",")]
    rows = decode_times(args.device, args.latents, args.repeats, sizes)
    result = {"benchmark": "decode time per video frame, full Wan VAE (diffusers AutoencoderKLWan() default "
                           "config) vs TAEHV (Wan2.1 release architecture), random weights, float32",
              "device": _device_name(args.device), "torch": torch.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python bench/decoders.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "smoke": args.smoke, "results": rows}
    if args.e2e:
        result["end_to_end_tiny"] = end_to_end(args.e2e, args.repeats)
    out = out_path(args.out, f"decoders-{args.device.split(':')[0]}{'-smoke' if args.smoke else ''}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
