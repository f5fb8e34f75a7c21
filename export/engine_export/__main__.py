"""``python -m engine_export``: write an export folder, build TensorRT engines, check a folder.

    python -m engine_export onnx --model tiny --out DIR [--size 128x128] [--frames 3 2 1] [--batch 1]
                          [--cache-frames 21] [--opset 23 20] [--precision float32] [--block]
    python -m engine_export trt DIR [--opset 23]          # needs tensorrt + a CUDA device
    python -m engine_export check DIR                      # validate the manifest, hashes and graphs
"""

from __future__ import annotations

import argparse
import sys
import time


def _size(s: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH in video pixels, e.g. 480x832; got {s!r}") from None
    return h, w


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine_export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("onnx", help="export ONNX graphs and a manifest into a folder")
    o.add_argument("--model", default="tiny", help="preset name or checkpoint path (as engine.load_model)")
    o.add_argument("--out", required=True, help="output folder")
    o.add_argument("--size", type=_size, nargs="+", default=None,
                   help="video HEIGHTxWIDTH bucket(s) in pixels (default 128x128 for tiny, 480x832 otherwise)")
    o.add_argument("--frames", type=int, nargs="+", default=None,
                   help="latent frames per chunk of each bucket; include remainders a video needs (default: 3 2 1)")
    o.add_argument("--batch", type=int, nargs="+", default=[1], help="batch rows (2 = classifier-free guidance)")
    o.add_argument("--cache-frames", type=int, default=21, help="frame slots of the KV cache (default 21)")
    o.add_argument("--opset", type=int, nargs="+", default=[23, 20], choices=[23, 20])
    o.add_argument("--precision", default="float32", choices=["float32", "float16", "bfloat16"])
    o.add_argument("--block", action="store_true", help="also export block 0 on its own")
    o.add_argument("--seed", type=int, default=0, help="weight seed of a preset without a checkpoint")
    t = sub.add_parser("trt", help="build TensorRT engines for an export folder (CUDA + tensorrt)")
    t.add_argument("dir")
    t.add_argument("--opset", type=int, default=None)
    t.add_argument("--workspace-gib", type=float, default=8.0)
    c = sub.add_parser("check", help="validate a folder's manifest, file hashes and graph I/O")
    c.add_argument("dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "onnx":
        import engine
        from engine.generation import default_size

        from .onnx import export_model

        print(f"export: loading {args.model} ...", file=sys.stderr, flush=True)
        model = engine.load_model(args.model, device="cpu", dtype="float32", seed=args.seed)
        cfg = model.config
        sizes = args.size or [default_size(model)]
        st = cfg.vae_stride
        latent = []
        for h, w in sizes:
            m = st[1] * cfg.patch_size[1], st[2] * cfg.patch_size[2]
            if h % m[0] or w % m[1]:
                print(f"error: size {h}x{w} must be a multiple of {m[0]}x{m[1]}", file=sys.stderr)
                return 2
            latent.append((h // st[1], w // st[2]))
        frames = tuple(args.frames or (3, 2, 1))
        t0 = time.perf_counter()
        try:
            man = export_model(model, args.out, frames=frames, sizes=latent, batches=tuple(args.batch),
                               cache_slots=args.cache_frames, chunk_frames=frames[0], opsets=tuple(args.opset),
                               precision=args.precision, block=args.block, source=getattr(model, "source", None),
                               progress=lambda line: print(f"export: {line}", file=sys.stderr, flush=True))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"error: writing {args.out} failed: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {len(man.graphs)} graphs and {man.directory / 'manifest.json'} in {time.perf_counter() - t0:.1f}s")
        return 0
    if args.cmd == "trt":
        from . import trt

        ok, why = trt.status()
        if not ok:
            print(f"error: {why}", file=sys.stderr)
            return 1
        man = trt.build_engines(args.dir, opset=args.opset, workspace_gib=args.workspace_gib)
        print(f"built {len(man.data['tensorrt']['engines'])} engines in {man.directory}")
        return 0
    if args.cmd == "check":
        from .manifest import ManifestError, load_manifest

        try:
            man = load_manifest(args.dir)
        except ManifestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"ok: {man.config.name} {man.precision}, {len(man.graphs)} graphs")
        for g in man.graphs:
            print(f"  {g['name']}  opset {g['opset']}  {g['file']}")
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
