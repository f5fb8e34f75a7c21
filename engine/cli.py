"""Command line: ``python -m engine generate --model tiny --num-frames 33 --out video.mp4``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import PRESETS, SamplerConfig
from .plans import STRATEGIES, STRATEGY_OPTIONS

_STRATEGY_ARGS = [
    ("context", str, "ar: 'cache' (KV cache) or 'history' (history frames in the sequence)"),
    ("history_frames", int, "ar (history) / mila: clean history frames each clip reads"),
    ("unified_noise", bool, "ar: one noise tensor shared by all clips"),
    ("segment_frames", int, "mmpl: latent frames per segment (8)"),
    ("anchor_frames", int, "mmpl: latent frames per keyframe bundle (1)"),
    ("midpoint", int, "mmpl: midpoint offset in a segment (default (L+b)//2)"),
    ("schedule", str, "mmpl: max_throughput or min_memory"),
    ("noise_rho", float, "mmpl: share of fresh noise in the interpolated content noise"),
    ("segment_clips", bool, "mmpl: every segment its own VAE clip, chained by decode -> re-encode"),
    ("release", str, "mmpl: the Tele-AI/MMPL release's layout, t2v or i2v (see --recipe mmpl-t2v)"),
    ("handoff", str, "mmpl release: tail (1-GPU chaining) or stage1 (the multi-GPU scripts' chaining)"),
    ("keyframes", int, "longdwm: keyframes per coarse rollout (5)"),
    ("fps_ratio", int, "longdwm: latent frames between keyframes (3)"),
    ("coarse_rope", str, "longdwm: keyframe or absolute RoPE positions for the coarse pass"),
    ("keyframe_clips", bool, "longdwm: keyframes as image clips, every pair its own clip (parallel decode)"),
    ("fine_latents", str, "longdwm keyframe clips: video (4r+1-frame clips) or image (one latent per frame: CogVideoX)"),
    ("fine_condition", str, "longdwm image fine clips: sequence (ends as clean frames) or channels (CogVideoX-I2V style)"),
    ("anchor_stride", int, "mila: latent frames between anchors (4)"),
    ("anchors_per_rollout", int, "mila: anchors per coarse job (5)"),
    ("clip_frames", int, "mila: latent frames per fine clip (4)"),
    ("jdc_sigma", float, "mila: sigma anchors are re-noised to (0.5)"),
    ("tpd", float, "mila: TPD strength, 0 = one schedule for all frames (1.0)"),
    ("lookahead", int, "mila: anchors after a clip read as context (1)"),
    ("jdc_structure", float, "mila: share beta of structured (high-pass) noise in re-noised anchors (0.5)"),
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="Long-horizon video world-model engine")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and which optional backends are available (and why not)")
    r = sub.add_parser("recipes", help="list the recipes (a released method's whole inference setting)")
    r.add_argument("--json", action="store_true", help="print them as JSON")
    w = sub.add_parser("world", help="render a drive through the procedural world (engine.world) to an mp4")
    w.add_argument("--out", default="world.mp4", help="output mp4 path")
    w.add_argument("--seed", type=int, default=0, help="world seed (road, roadside, traffic, drive)")
    w.add_argument("--frames", type=int, default=161, help="frames at 16 fps")
    w.add_argument("--height", type=int, default=64)
    w.add_argument("--width", type=int, default=112)
    w.add_argument("--weather", choices=["day", "dusk", "night", "fog", "rain"], default=None,
                   help="default: chosen from the seed")
    g = sub.add_parser("generate", help="generate a video (strategies: ar, mmpl, longdwm, mila)")
    g.add_argument("--model", default="tiny", help=f"preset ({', '.join(sorted(PRESETS))}) or checkpoint path")
    g.add_argument("--recipe", help="a released method's setting (python -m engine recipes): strategy, options, "
                   "sampler, negative prompt, size; explicit flags override it")
    g.add_argument("--checkpoint-key", choices=["generator", "generator_ema"],
                   help="which dict of a training .pt to load (default: EMA, or the recipe's)")
    g.add_argument("--num-frames", type=int, help="video frames (required but for --recipe longvie2): ar, mila 4k+1 "
                   "(33, 81, 161); mmpl 32n+1 with its default options; longdwm 12n+1; recipes mmpl-t2v / mmpl-i2v "
                   "76n, mmpl-t2v-parallel 81+76(n-1), longvie2 81+80(n-1) from its clips")
    g.add_argument("--fit", choices=["down", "up"], help="round --num-frames to the nearest length the strategy "
                   "accepts (instead of an error naming the two nearest)")
    g.add_argument("--out", default="video.mp4", help="output mp4 path")
    g.add_argument("--prompt", default="", help="text prompt (needs a text encoder for real models)")
    g.add_argument("--prompt-embeds", help="a .safetensors or .pt file holding prompt embeddings [1, L, text_dim]")
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--negative-prompt-embeds", default=None,
                   help="the negative prompt's embeddings (.safetensors with one tensor [1, L, text_dim], or .pt) for "
                        "classifier-free guidance without a text encoder")
    g.add_argument("--first-frame", help="image to start from (required for image-to-video models)")
    g.add_argument("--image-encoder", help="image-to-video (Wan2.1 I2V, LongVie 2): the CLIP image encoder folder "
                   "(image_encoder/ + image_processor/) that encodes --first-frame (default: the model root's)")
    g.add_argument("--first-frames", help="mila: prior condition frames, comma-separated images or a uint8 .npy "
                   "[P, H, W, 3] ([V, P, H, W, 3] with --views)")
    g.add_argument("--cfg-drop", help="what the CFG unconditional row goes without: comma list of text, waypoints, "
                   "camera (default text; recipe mila: all three)")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", help="cuda:0, cpu, ... (default: cuda:0 when available)")
    g.add_argument("--dtype", help="bf16, fp16 or fp32 (default: bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--sampler", choices=["fewstep", "euler", "unipc", "dpm"], default=None,
                   help="default: the model's own (fewstep for a plain Wan checkpoint)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (euler/unipc; fewstep uses --timesteps)")
    g.add_argument("--timesteps", default=None, help="few-step timesteps, comma separated (1000,750,500,250)")
    g.add_argument("--shift", type=float, default=None, help="timestep shift (5)")
    g.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (1: off)")
    g.add_argument("--chunk-frames", type=int, default=None, help="latent frames per autoregressive chunk (ar; default 3)")
    g.add_argument("--sink-frames", type=int, default=None)
    g.add_argument("--window-frames", type=int, default=None, help="past latent frames each chunk attends to")
    g.add_argument("--strategy", choices=list(STRATEGIES), default=None, help="default ar (or the recipe's)")
    g.add_argument("--devices", help="comma-separated devices, one worker each: cuda:0,cuda:1 or cpu,cpu "
                   "(overrides --device)")
    g.add_argument("--cpu-threads", type=int, default=None,
                   help="torch threads per worker, pinned for the run (default: the cores shared among the CPU "
                   "workers, or $ENGINE_CPU_THREADS); float results on CPU depend on it")
    g.add_argument("--batch-jobs", type=int, default=None, help="run up to N ready like denoise jobs (CFG, no KV "
                   "cache) as one batched forward per worker (default 1: off)")
    g.add_argument("--coarse-model", help="longdwm/mila: coarse model (default: --model)")
    g.add_argument("--fine-model", help="longdwm/mila: fine model (default: --model)")
    g.add_argument("--stats", help="write per-run statistics (jobs, critical path, idle, memory) as JSON here")
    g.add_argument("--plan-only", action="store_true", help="print the plan (clips, denoise/decode/encode jobs) as "
                   "JSON and exit without generating")
    s_ = g.add_argument_group("strategy options (each belongs to the strategies named)")
    for name, typ, what in _STRATEGY_ARGS:
        if typ is bool:
            s_.add_argument("--" + name.replace("_", "-"), action="store_true", default=None, help=what)
        else:
            s_.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=what)
    c_ = g.add_argument_group("controls (engine.control; arrays as .npy files)")
    c_.add_argument("--trajectory", help="LongDWM trajectory: ego points 'x,z;x,z;...' or a .npy/.json file of [N, 2] "
                    "(needs --first-frame)")
    c_.add_argument("--intrinsics", help="camera intrinsics 'fx,fy,cx,cy' (default: focal = width, centred)")
    c_.add_argument("--warp-depth", type=float, help="constant depth of the depth-free warp (10)")
    c_.add_argument("--save-warped", help="write the warped, inpainted trajectory frames to this mp4")
    c_.add_argument("--waypoints", help="MiLA waypoints .npy [T, N_w, 2] per video frame")
    c_.add_argument("--cameras", help="MiLA cameras .npy [V, 16] or [T, V, 16]")
    c_.add_argument("--views", type=int, help="MiLA: camera views generated together (output: a 1 x V grid)")
    c_.add_argument("--view-outputs", help="also write one mp4 per view: a pattern with {view}, e.g. out_{view}.mp4")
    l_ = g.add_argument_group("LongVie 2 (--recipe longvie2; engine.longvie)")
    l_.add_argument("--cond", help="the release's cond.json: per clip {text, depth mp4, track mp4}")
    l_.add_argument("--depth", help="dense control for the whole video: raw depth .npy [T, H, W] (normalised as the "
                    "release) or a depth video (mp4 / .npy [T, H, W, 3] uint8), cut into 81-frame clips")
    l_.add_argument("--track", help="sparse control for the whole video: the point-track video (mp4 / .npy uint8)")
    l_.add_argument("--control-weights", help="the release's control.safetensors")
    l_.add_argument("--overlay", help="the release's dit.safetensors (loaded over the base DiT)")
    l_.add_argument("--clip-outputs", help="also write every clip's own 81 frames: a pattern with {clip}, e.g. "
                    "clip_{clip}.mp4")
    g.add_argument("--vae", help="folder of a diffusers AutoencoderKLWan (default: from the model's pipeline)")
    g.add_argument("--vae-dtype", default=None, help="VAE precision: fp32 (default), bf16 or fp16")
    g.add_argument("--decoder", default=None, help="full (the VAE, default), taehv (taew2_1.pth found at "
                   "$ENGINE_TAEHV, ./ or ~/.cache/engine) or a TAEHV .pth/.safetensors path: the light decoder "
                   "(decode only; encodes keep the VAE)")
    g.add_argument("--text-encoder", help="folder with a UMT5 encoder and tokenizer")
    g.add_argument("--no-progress", action="store_true")
    return p


def _load_embeds(path: str, flag: str = "prompt-embeds"):
    import torch

    if not os.path.isfile(path):
        raise ValueError(f"--{flag} {path}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            tensors = load_file(path)
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - safetensors' / pickle's own errors: say which file and what it wants
        raise ValueError(f"--{flag} {path} is not a readable embeddings file ({type(exc).__name__}: {exc}); give a "
                         f".safetensors holding one tensor [1, L, text_dim], or a torch.save'd tensor (.pt)") from None
    if isinstance(tensors, dict):
        if len(tensors) != 1:
            raise ValueError(f"--{flag} {path} must hold exactly one tensor (the prompt embeddings), found "
                             f"{sorted(tensors)}")
        tensors = next(iter(tensors.values()))
    if not isinstance(tensors, torch.Tensor):
        raise ValueError(f"--{flag} {path} holds a {type(tensors).__name__}, not a tensor [1, L, text_dim]")
    return tensors


def _negative_embeds(args):
    """--negative-prompt-embeds loaded (None when not given); with --negative-prompt too: an error."""
    if not args.negative_prompt_embeds:
        return None
    if args.negative_prompt:
        raise ValueError("give --negative-prompt (encoded by the text encoder) or --negative-prompt-embeds, not both")
    return _load_embeds(args.negative_prompt_embeds, "negative-prompt-embeds")


def _first_frames(text: str | None):
    """--first-frames: a uint8 .npy of frames, or comma-separated image paths."""
    if not text:
        return None
    if text.endswith(".npy"):
        import numpy as np

        return np.load(text, allow_pickle=False)
    return [p.strip() for p in text.split(",") if p.strip()]


def _load_array(text: str, flag: str = "trajectory"):
    """A control array from a .npy / .json file, or inline numbers 'a,b;c,d' (rows by ';')."""
    import json
    from pathlib import Path

    import numpy as np

    if text.endswith(".npy"):
        return np.load(text, allow_pickle=False)
    if text.endswith(".json"):
        return np.asarray(json.loads(Path(text).read_text()), dtype=np.float64)
    rows = [r for r in text.split(";") if r.strip()]
    try:
        vals = [[float(x) for x in r.split(",")] for r in rows]
    except ValueError as exc:
        raise ValueError(f"--{flag} {text!r}: {exc}; write numbers as 'x,z;x,z;...' (rows by ';') or give a "
                         f".npy / .json file") from None
    return np.asarray(vals[0] if len(vals) == 1 and ";" not in text else vals, dtype=np.float64)


def _control_args(args) -> dict:
    out = {}
    for name in ("trajectory", "intrinsics", "waypoints", "cameras"):
        if getattr(args, name):
            out[name] = _load_array(getattr(args, name), name)
    for name in ("warp_depth", "save_warped", "views"):
        if getattr(args, name) is not None:
            out[name] = getattr(args, name)
    return out


def environment_report() -> list[tuple[str, bool, str]]:
    """(component, available, detail) for every optional piece: attention backends on the
    default device, the fused kernels, TensorRT and the native host."""
    import importlib.util

    import torch

    from .attention import BACKENDS, backend_status
    from .config import default_device

    dev = default_device()
    rows = []
    for name in BACKENDS:
        if name != "auto":
            ok, why = backend_status(name, dev)
            rows.append((f"attention:{name}", ok, why))
    ok_trt, why_trt = False, "the export package is not importable"
    try:
        from engine_export.trt import status as trt_status

        ok_trt, why_trt = trt_status()
    except ImportError as exc:
        why_trt = str(exc)
    rows.append(("tensorrt", ok_trt, why_trt))
    for mod, what in (("onnx", "ONNX export"), ("onnxruntime", "running exported ONNX graphs")):
        spec = importlib.util.find_spec(mod)
        if spec is None:
            rows.append((mod, False, f"not installed ({what}): pip install -e '.[export]'"))
        else:
            import importlib.metadata as md

            rows.append((mod, True, f"{md.version(mod)} ({what})"))
    native = importlib.util.find_spec("engine_export._native") is not None
    rows.append(("native host (engine_export._native)", native,
                 "built" if native else "not built: reinstall with pip install -e . (needs a C++17 compiler)"))
    rows.append(("cuda", torch.cuda.is_available(),
                 torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device visible"))
    return rows


def _info() -> int:
    import platform

    import torch

    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "not installed"
    print(f"python {platform.python_version()}, torch {torch.__version__}, triton {tv}")
    for name, ok, detail in environment_report():
        print(f"  {'yes' if ok else 'no ':3}  {name:32} {detail}")
    return 0


def _sampler(args, recipe) -> SamplerConfig | None:
    """The sampler the flags ask for: the recipe's (or the default few-step one) with every
    flag given replacing its field; None when a recipe runs with its own unchanged."""
    given = {}
    if args.sampler is not None:
        given["kind"] = args.sampler
    if args.timesteps is not None:
        try:
            given["timesteps"] = tuple(float(t) for t in args.timesteps.split(",") if t.strip())
        except ValueError:
            raise ValueError(f"--timesteps must be comma-separated numbers such as 1000,750,500,250; got "
                             f"{args.timesteps!r}") from None
    if args.steps is not None:
        given["num_steps"] = args.steps
    if args.shift is not None:
        given["shift"] = args.shift
    if args.guidance_scale is not None:
        given["guidance_scale"] = args.guidance_scale
    if recipe is not None and not given:
        return None
    base = recipe.sampler if recipe is not None else SamplerConfig()
    if recipe is None and str(getattr(args, "model", "")).lower() == "tiny":  # the embedded model's own sampler
        from .embedded import embedded_sampler, tiny_root

        base = embedded_sampler(tiny_root()) or base
    from .inputs import is_cogvideox_source

    if recipe is None and is_cogvideox_source(getattr(args, "model", None)):  # its own DDIM / DPM, flags on top
        kind = "euler"
        root = Path(str(args.model))
        for cand in (root, root.parent):
            if (cand / "model_index.json").is_file() and (cand / "scheduler").is_dir():
                from .models.cogvideox import read_cogvideox_scheduler

                kind = "euler" if read_cogvideox_scheduler(cand)[0] == "ddim" else "dpm"
                break
        base = SamplerConfig(kind=kind, num_steps=50, schedule="cogvideox", timesteps=None, guidance_scale=6.0)
    if "num_steps" not in given:
        kind = given.get("kind", base.kind)
        if kind == "fewstep":
            given["num_steps"] = len(given.get("timesteps", base.timesteps or (1000.0, 750.0, 500.0, 250.0)))
        elif base.kind == "fewstep":
            given["num_steps"] = 30
    if given.get("kind", base.kind) != "fewstep" and "timesteps" not in given:
        given["timesteps"] = None
    return base.replace(**given)


def _world(args) -> int:
    """``python -m engine world``: one drive through the procedural world, written as an mp4."""
    from .video import Video
    from .world import render_clip

    from .generation import check_output_path

    try:
        check_output_path(args.out)
        clip = render_clip(args.seed, args.frames, args.height, args.width, weather=args.weather)
        path = Video(clip.frames, clip.fps).save(args.out)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the disk filled while writing
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}: {len(clip)} frames {args.width}x{args.height} @ {clip.fps:g} fps, seed {args.seed}, "
          f"weather {clip.weather} ({clip.prompt!r})")
    return 0


def _recipes(args) -> int:
    """``python -m engine recipes``: every recipe, as a table or JSON."""
    import json

    from .recipes import RECIPES

    if args.json:
        print(json.dumps([r.describe() for r in RECIPES.values()], indent=1, ensure_ascii=False))
        return 0
    for r in RECIPES.values():
        s = r.sampler
        print(f"{r.name}\n  {r.description}\n  strategy {r.strategy} {vars(r.options)}\n  sampler {s.kind} "
              f"{s.num_steps} steps, shift {s.shift:g}, schedule {s.schedule}, guidance {s.guidance_scale:g}; "
              f"size {r.height}x{r.width} @ {r.fps} fps; frames {r.frames_rule}; weights '{r.checkpoint_key}'"
              f"{'; needs --first-frame' if r.first_frame else ''}\n  release: {r.reference}")
    return 0


def _print_plan(args, sampler, chosen: dict) -> int:
    """``--plan-only``: the plan generate would run, as JSON on stdout."""
    import json

    from .generation import plan_for
    from .inputs import resolve_model
    from .recipes import get_recipe

    try:
        model = resolve_model(args.model, args.dtype, "cpu", checkpoint_key=args.checkpoint_key)
        recipe = get_recipe(args.recipe) if args.recipe else None
        strategy = args.strategy or (recipe.strategy if recipe else "ar")
        if recipe is not None:
            sampler = sampler or recipe.sampler
        plan = plan_for(model, num_frames=args.num_frames, height=args.height, width=args.width,
                        strategy=strategy, first_frame_given=args.first_frame is not None, sampler=sampler,
                        chunk_frames=args.chunk_frames, sink_frames=args.sink_frames,
                        window_frames=args.window_frames, **chosen)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(plan.describe(), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "world":
        return _world(args)
    from .generation import GenerationError, check_output_path, generate
    from .recipes import get_recipe

    if args.command == "recipes":
        return _recipes(args)
    try:
        recipe = get_recipe(args.recipe) if args.recipe else None
        sampler = _sampler(args, recipe)
        check_output_path(args.out)
        if args.stats:
            check_output_path(args.stats, suffix=".json")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if recipe is not None and recipe.strategy == "longvie2":
        return _longvie(args, sampler)
    if args.num_frames is None:
        print("error: --num-frames is required (e.g. 33)", file=sys.stderr)
        return 2
    strategy = args.strategy or (recipe.strategy if recipe else "ar")
    chosen = {name: getattr(args, name) for name, _, _ in _STRATEGY_ARGS if getattr(args, name) is not None}
    wrong = sorted(k for k in chosen if k not in STRATEGY_OPTIONS[strategy])
    if wrong:
        print(f"error: --{', --'.join(w.replace('_', '-') for w in wrong)} do not apply to strategy "
              f"{strategy!r} (its options: {', '.join(STRATEGY_OPTIONS[strategy])})", file=sys.stderr)
        return 2
    if recipe is not None:  # the recipe's typed options, with the flags given replacing its fields
        import dataclasses

        chosen = {"options": dataclasses.replace(recipe.options, **chosen)}
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else (
        [args.device] if args.device else None)
    extra = {}
    if args.coarse_model:
        extra["coarse_model"] = args.coarse_model
    if args.fine_model:
        extra["fine_model"] = args.fine_model
    rank = 0
    import torch

    from .distributed import init_distributed, launched_by_torchrun

    if launched_by_torchrun():  # torchrun: one process per rank; the plan's jobs are spread over the ranks
        rank, _ = init_distributed(timeout_s=float(os.environ.get("ENGINE_DIST_TIMEOUT", "1800")))
        if devices is None and torch.cuda.is_available():
            devices = [f"cuda:{os.environ.get('LOCAL_RANK', '0')}"]
    if args.plan_only:
        return _print_plan(args, sampler, chosen)
    try:
        extra.update(_control_args(args))
        video = generate(
            args.model,
            num_frames=args.num_frames,
            prompt=args.prompt,
            prompt_embeds=_load_embeds(args.prompt_embeds) if args.prompt_embeds else None,
            negative_prompt=args.negative_prompt,
            negative_prompt_embeds=_negative_embeds(args),
            first_frame=args.first_frame,
            first_frames=_first_frames(args.first_frames),
            cfg_drop=tuple(x.strip() for x in args.cfg_drop.split(",") if x.strip()) if args.cfg_drop else None,
            height=args.height,
            width=args.width,
            seed=args.seed,
            devices=devices,
            strategy=strategy,
            recipe=args.recipe,
            checkpoint_key=args.checkpoint_key,
            fit=args.fit,
            cpu_threads=args.cpu_threads,
            batch_jobs=args.batch_jobs,
            dtype=args.dtype,
            sampler=sampler,
            chunk_frames=args.chunk_frames,
            sink_frames=args.sink_frames,
            window_frames=args.window_frames,
            vae=args.vae,
            vae_dtype=args.vae_dtype,
            decoder=args.decoder,
            text_encoder=args.text_encoder,
            image_encoder=args.image_encoder,
            output=args.out,
            progress=not args.no_progress and rank == 0,
            **extra,
            **chosen,
        )
        if args.view_outputs:
            from .control import save_views

            save_views(video, args.views or 1, args.view_outputs)
    except (GenerationError, ValueError, TypeError, FileNotFoundError) as exc:
        return _failed(exc)
    s = video.stats
    if rank != 0:  # rank 0 decodes and writes the video
        return 0
    if args.stats:
        import json

        with open(args.stats, "w") as f:
            json.dump({"frames": len(video), "seconds": s.seconds, "first_frame_seconds": s.first_frame_seconds,
                       "sharpness": s.sharpness, **s.runtime.to_dict()}, f, indent=1)
    print(
        f"wrote {args.out}: {len(video)} frames {video.width}x{video.height} @ {video.fps:g} fps "
        f"in {s.seconds:.1f} s ({s.fps:.2f} frames/s, first frame after {s.first_frame_seconds:.2f} s; "
        f"strategy {strategy}, critical path {s.critical_path_passes} DiT passes)"
    )
    return 0


def _failed(exc: BaseException) -> int:
    """Print a generate failure and return its exit code: 128 + signal for a stop signal
    (frames so far saved), 1 for a failure after frames were made, 2 for bad input."""
    from .generation import GenerationError, GenerationInterrupted

    if isinstance(exc, GenerationInterrupted):
        print(f"stopped: {exc}", file=sys.stderr)
        return 128 + exc.signum
    print(f"error: {exc}", file=sys.stderr)
    return 1 if isinstance(exc, GenerationError) else 2


def _longvie(args, sampler) -> int:
    """``generate --recipe longvie2``: the LongVie 2 release chain (engine.longvie)."""
    from .generation import GenerationError, generate

    try:
        for flag in ("trajectory", "waypoints", "cameras", "views", "strategy", "coarse_model", "fine_model", "decoder"):
            if getattr(args, flag, None):
                raise ValueError(f"--{flag.replace('_', '-')} does not apply to --recipe longvie2")
        if args.devices and "," in args.devices:
            raise ValueError("--recipe longvie2 is one sequential chain: give one --device")
        clip_videos = {}
        video = generate(
            args.model, recipe="longvie2", num_frames=args.num_frames, prompt=args.prompt or None,
            prompt_embeds=_load_embeds(args.prompt_embeds) if args.prompt_embeds else None,
            negative_prompt=args.negative_prompt, negative_prompt_embeds=_negative_embeds(args),
            first_frame=args.first_frame, height=args.height, width=args.width,
            seed=args.seed, devices=[args.devices or args.device] if (args.devices or args.device) else None,
            dtype=args.dtype, sampler=sampler, vae=args.vae, vae_dtype=args.vae_dtype, text_encoder=args.text_encoder,
            image_encoder=args.image_encoder, control_weights=args.control_weights, overlay=args.overlay,
            cond=args.cond, dense=args.depth, sparse=args.track, output=args.out, progress=not args.no_progress,
            on_clip=(lambda k, f: clip_videos.__setitem__(k, f)) if args.clip_outputs else None)
    except (GenerationError, ValueError, TypeError, FileNotFoundError) as exc:
        return _failed(exc)
    if args.clip_outputs:
        from .video import Video

        for k, frames in sorted(clip_videos.items()):
            Video(frames, video.fps).save(args.clip_outputs.format(clip=k))
    s = video.stats
    print(f"wrote {args.out}: {len(video)} frames {video.width}x{video.height} @ {video.fps:g} fps in {s.seconds:.1f} s "
          f"({s.fps:.2f} frames/s; recipe longvie2, {s.critical_path_passes} DiT passes)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
