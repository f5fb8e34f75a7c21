"""``engine.generate`` / ``engine.stream``: a long video from a model, a prompt and options.

Frames stream out chunk by chunk as soon as the VAE has decoded them (``stream`` yields
them; ``generate`` also collects them into a :class:`~engine.video.Video`, writes the mp4
as it goes, calls ``on_frames`` and shows a progress bar). If anything fails mid-run, the
frames already produced are kept: the mp4 is finalised and the error
(:class:`GenerationError`) carries the partial video.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import EngineConfig, SamplerConfig
from .inputs import (Components, check_frames, first_frame_tensor, prompt_context, resolve_components, resolve_model,
                     resolve_role_model)
from .plans import STRATEGIES, STRATEGY_OPTIONS, Plan, build_plan
from .runtime import RuntimeStats, execute
from .video import Mp4Writer, Video, to_uint8_frames

TWO_MODEL_STRATEGIES = ("longdwm", "mila")
TINY_SIZE = (128, 128)
WAN_SIZE = (480, 832)


def default_size(model) -> tuple[int, int]:
    """(height, width) a model generates at when none is given: the embedded ``tiny``
    model's training size (64 x 112), 128 x 128 for the other toy presets, Wan's 480 x 832
    otherwise."""
    from .embedded import embedded_size

    size = embedded_size(getattr(model, "source", None))
    if size is not None:
        return size
    return TINY_SIZE if model.config.name.startswith("tiny") else WAN_SIZE


def default_sampler(model) -> SamplerConfig:
    """The sampler a model runs with when none is given: the embedded ``tiny`` model's own
    (:func:`engine.embedded.embedded_sampler`: the one it was trained and evaluated with),
    else the few-step default :class:`SamplerConfig`."""
    from .embedded import embedded_sampler

    return embedded_sampler(getattr(model, "source", None)) or SamplerConfig()


class GenerationError(RuntimeError):
    """Generation failed part-way; ``.video`` holds every frame produced before the failure
    (and ``.output`` the finalised mp4 path, if one was being written)."""

    def __init__(self, message: str, video: Video, output: str | None):
        super().__init__(message)
        self.video = video
        self.output = output


class GenerationInterrupted(GenerationError):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) ended the run at a chunk boundary (or, on a
    second signal, at once); ``.signum`` is the signal, ``.video`` / ``.output`` as for
    :class:`GenerationError`. The CLI exits with 128 + signum."""

    def __init__(self, message: str, video: Video, output: str | None, signum: int):
        super().__init__(message, video, output)
        self.signum = signum


def _sharpness():
    from .telemetry import Sharpness

    return Sharpness()


@dataclass
class RunStats:
    """Statistics of one generate() call: wall seconds, time to first frame, frames, the
    decoded chunks, and ``runtime`` (:class:`~engine.runtime.RuntimeStats`): per-job
    start/end and worker, critical path in DiT passes, idle fraction per worker, peak
    memory per device (also reachable as ``stats.jobs``, ``stats.critical_path_passes``,
    ``stats.idle_fraction``, ``stats.peak_memory``)."""

    frames: int = 0
    seconds: float = 0.0
    t0: float | None = None  # perf_counter() when the call began: the origin of every time here
    video_fps: float = 16.0
    first_frame_seconds: float | None = None
    chunks: list[dict] = field(default_factory=list)
    runtime: RuntimeStats = field(default_factory=RuntimeStats)
    telemetry: "Sharpness" = field(default_factory=lambda: _sharpness())

    @property
    def sharpness(self) -> list[float]:
        """Per-frame high-frequency energy of the decoded frames, in output order
        (:mod:`engine.telemetry`; a falling curve is a long run blurring out)."""
        return self.telemetry.values()

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def jobs(self) -> list[dict]:
        return self.runtime.jobs

    @property
    def critical_path_passes(self) -> int:
        return self.runtime.critical_path_passes

    @property
    def idle_fraction(self) -> dict[str, float]:
        return self.runtime.idle_fraction

    @property
    def peak_memory(self) -> dict[str, int]:
        return self.runtime.peak_memory

    def record_chunk(self, positions: list[int], frames: int, seconds: float) -> None:
        """Note a decoded chunk (and the time to first frame) ``seconds`` after the start."""
        if self.first_frame_seconds is None:
            self.first_frame_seconds = seconds
        self.chunks.append({"positions": positions, "frames": frames, "seconds": seconds})


# ----------------------------------------------------------------------------------
# prepare -> run -> finish
# ----------------------------------------------------------------------------------
@dataclass
class PreparedRun:
    """Everything a run needs, checked and built before any denoising: the plan, a model per
    role, the devices, the text-context factory, sampler, sizes, the given latents and
    condition, the VAE and its decoder factory, and the execution settings."""

    plan: Plan
    models: dict
    devices: list[str]
    make_context: Callable
    seed: int
    sampler: SamplerConfig
    latent_hw: tuple[int, int]
    inputs: dict
    condition: torch.Tensor | None
    vae: object
    make_decoder: Callable
    encode: Callable
    compile_mode: str | None
    cpu_threads: int
    shuffle: int | None
    fps: float
    noise: torch.Tensor | None = None
    batch_jobs: int = 1

    @property
    def video_frames(self) -> int:
        """Frames of the video the run makes."""
        return self.plan.video_frames

    def plan_line(self) -> str:
        """'plan: mmpl, 2 clips, 7 denoise / 12 decode / 1 encode jobs, critical path 26 DiT passes, 2 workers'."""
        s = self.plan.summary()
        return (f"plan: {s['strategy']}, {s['clips']} clip(s), {s['jobs']} denoise / {s['decode_jobs']} decode / "
                f"{s['encode_jobs']} encode jobs, critical path {s['critical_path_passes']} DiT passes, "
                f"{len(self.devices)} worker(s) on {', '.join(dict.fromkeys(self.devices))}")


def plan_for(model, *, num_frames: int, height: int | None = None, width: int | None = None, strategy: str = "ar",
             first_frame_given: bool = False, sampler: SamplerConfig | None = None, chunk_frames: int | None = None,
             sink_frames: int | None = None, window_frames: int | None = None, options=None,
             prior_frames: int = 0, **strategy_kw) -> Plan:
    """The plan ``generate`` would run for a loaded ``model`` (no VAE, text or weights
    touched): clips, denoise/decode/encode jobs. ``options``: the strategy's typed options
    (e.g. :class:`~engine.plans.MmplOptions`), ``strategy_kw`` override its fields.
    ``prior_frames``: P condition frames before the video (MiLA's ``first_frames``)."""
    cfg = model.config
    default_h, default_w = default_size(model)
    release = _release_layout(strategy, options, strategy_kw)
    F_lat, _, _ = check_frames(num_frames, height or default_h, width or default_w, model, temporal=release is None)
    variant = strategy_kw.get("release", getattr(options, "release", None))
    if variant == "i2v" and image_condition(cfg):
        raise ValueError(f"the MMPL I2V release runs a text-to-video backbone with the image as a clean latent at "
                         f"position 0; model {getattr(cfg, 'name', None) or type(model).__name__!r} is an "
                         f"image-to-video model (it takes the image as a condition): load a T2V checkpoint "
                         f"(e.g. --model tiny-random or the release's own) for mmpl-i2v")
    if release is not None:  # the MMPL release's own frame rule: whole 81-frame segments, chained
        from .plans.mmpl_release import SEGMENT, release_segments

        F_lat = SEGMENT * release_segments(num_frames, release)
    flat = {k: v for k, v in (("chunk_frames", chunk_frames), ("sink_frames", sink_frames),
                              ("window_frames", window_frames)) if v is not None}
    if "chunk_frames" in flat and chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if flat and strategy != "ar":
        raise ValueError(f"{sorted(flat)} are options of strategy 'ar', not of {strategy!r}; drop them (its options: "
                         f"see engine.plans.STRATEGY_OPTIONS[{strategy!r}])")
    if flat:
        clash = {k: (v, getattr(options, k)) for k, v in flat.items()
                 if options is not None and getattr(options, k) is not None and getattr(options, k) != v}
        if clash:
            raise ValueError("each option has one value: " + ", ".join(
                f"{k}={v!r} as a keyword but options.{k}={o!r}" for k, (v, o) in clash.items())
                + "; give it in one place")
        strategy_kw = dict(strategy_kw, **flat)
    from .sampling import config_sigmas

    if prior_frames:
        if strategy != "mila":
            raise ValueError(f"first_frames (prior condition frames) are MiLA's input: run strategy='mila', or give "
                             f"one first_frame to {strategy!r}")
        strategy_kw = dict(strategy_kw, prior_frames=int(prior_frames))
    return build_plan(strategy, F_lat, sigmas=config_sigmas(sampler or default_sampler(model)).tolist(),
                      first_given=first_frame_given and not image_condition(cfg), options=options, **strategy_kw)


def image_condition(cfg) -> bool:
    """Whether a model takes its first frame as a condition over the whole clip rather than
    as a clean context latent: Wan I2V (``y`` + image tokens) and CogVideoX-I2V (the image
    latent appended on the channels: in_channels > out_channels)."""
    from .models.cogvideox import CogVideoXConfig

    return bool(cfg.is_i2v or (isinstance(cfg, CogVideoXConfig) and cfg.in_channels > cfg.out_channels))


def fit_frames(model, num_frames: int, fit: str, **plan_kw) -> int:
    """The nearest video length at or below (``fit="down"``) or at or above (``"up"``)
    ``num_frames`` that the plan accepts (arguments of :func:`plan_for`); raises when none
    lies within 4096 frames."""
    if fit not in ("down", "up"):
        raise ValueError(f"fit must be 'down' or 'up' (round num_frames to a length the strategy accepts), got {fit!r}")
    step = -1 if fit == "down" else 1
    last = None
    for n in range(num_frames, max(0, num_frames - 4096) if step < 0 else num_frames + 4096, step):
        if n < 1:
            break
        try:
            plan_for(model, num_frames=n, **plan_kw)
            return n
        except ValueError as exc:  # PlanError too
            last = exc
    raise ValueError(f"no length {'at or below' if step < 0 else 'at or above'} {num_frames} fits: {last}")


def _release_layout(strategy: str, options, strategy_kw: dict) -> str | None:
    """The hand-off of an ``mmpl`` run in the MMPL release's layout, else None."""
    if strategy != "mmpl":
        return None
    release = strategy_kw.get("release", getattr(options, "release", None))
    return strategy_kw.get("handoff", getattr(options, "handoff", "tail")) if release is not None else None


def prepare(model, *, recipe=None, **options) -> PreparedRun:
    """Check every input and build the run (arguments as :func:`generate`); nothing is
    denoised yet. ``recipe`` (a name from :data:`engine.recipes.RECIPES` or a Recipe)
    fills in every argument not given. Raises ValueError / TypeError naming the problem."""
    if recipe is not None:
        from .recipes import apply_recipe, get_recipe

        if get_recipe(recipe).strategy == "longvie2":  # the release's clip chain (engine.longvie)
            from .longvie import prepare_longvie

            return prepare_longvie(model, **options)
        options = apply_recipe(recipe, options)
    return _prepare(model, **options)


def _image_tokens(roles: dict, comps: Components, first_frame, image_embeds, image_encoder):
    """The CLIP image tokens [1, N, image_dim] the run's image-to-video models cross-attend
    to: ``image_embeds`` as given, else the first frame through ``image_encoder`` (or the
    ``image_encoder/`` of the I2V model's diffusers root), as ``WanImageToVideoPipeline``
    does; None where no model reads them, or for an untrained preset without an encoder (its
    deterministic random tokens come from :func:`~engine.inputs.prompt_context`). Raises a
    ValueError, before any job, for an I2V model with neither, for both given, and for an
    encoder whose width is not the model's image_dim."""
    from .inputs import first_frame_image_embeds, resolve_image_encoder

    readers = [m for m in roles.values() if getattr(m.config, "image_dim", None) is not None]
    if not readers:
        if image_encoder is not None:
            raise ValueError("image_encoder is for image-to-video models that cross-attend to CLIP image tokens (Wan2.1 "
                             "I2V); no model of this run does: drop it")
        return image_embeds
    if image_embeds is not None:
        if image_encoder is not None:
            raise ValueError("give image_embeds (ready CLIP tokens) or image_encoder (to encode first_frame), not both")
        return image_embeds
    m = readers[0]
    enc = resolve_image_encoder(m, image_encoder)
    if enc is None:
        if comps.random_weights:
            return None
        from .inputs import missing_image_tokens

        raise missing_image_tokens(m.config)
    if enc.dim != m.config.image_dim:
        raise ValueError(f"the image encoder gives {enc.dim}-wide tokens but model {m.config.name!r} cross-attends to "
                         f"image_dim={m.config.image_dim}: pass the CLIP encoder the model was trained with "
                         f"(Wan2.1 I2V: CLIP ViT-H/14, 1280)")
    return first_frame_image_embeds(enc, first_frame)


def _prepare(
    model,
    *,
    num_frames: int,
    prompt: str | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt: str | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    first_frame=None,
    first_frames=None,
    image_embeds: torch.Tensor | None = None,
    image_encoder=None,
    height: int | None = None,
    width: int | None = None,
    strategy: str | None = None,
    seed: int = 0,
    devices: list[str] | None = None,
    dtype=None,
    sampler: SamplerConfig | None = None,
    guidance_scale: float | None = None,
    chunk_frames: int | None = None,
    sink_frames: int | None = None,
    window_frames: int | None = None,
    coarse_model=None,
    fine_model=None,
    vae=None,
    vae_dtype=None,
    decoder=None,
    text_encoder=None,
    engine_config: EngineConfig | None = None,
    cpu_threads: int | None = None,
    shuffle: int | None = None,
    options=None,
    checkpoint_key: str | None = None,
    noise: torch.Tensor | None = None,
    fit: str | None = None,
    cfg_drop=None,
    fps: float | None = None,
    batch_jobs: int | None = None,
    **strategy_options,
) -> PreparedRun:
    from .checks import check_finite, check_memory, check_request

    strategy = strategy or "ar"
    num_frames, height, width, seed = check_request(
        num_frames=num_frames, height=height, width=width, seed=seed, guidance_scale=guidance_scale, prompt=prompt,
        prompt_embeds=prompt_embeds, devices=devices, sink_frames=sink_frames, window_frames=window_frames,
        chunk_frames=chunk_frames)
    for name, t in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds),
                    ("image_embeds", image_embeds), ("first_frame", first_frame), ("noise", noise)):
        check_finite(name, t)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; available: {STRATEGIES}")
    if devices is not None and (isinstance(devices, str) or len(devices) == 0):
        raise ValueError(f"devices must be a non-empty list such as ['cpu', 'cpu'] or ['cuda:0', 'cuda:1'], got {devices!r}")
    from .control.setup import CONTROL_OPTIONS, LONGVIE_OPTIONS  # control inputs travel beside the strategy options

    control_opts = {k: strategy_options.pop(k) for k in CONTROL_OPTIONS + LONGVIE_OPTIONS if k in strategy_options}
    unknown = sorted(k for k in strategy_options if k not in STRATEGY_OPTIONS[strategy])
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for strategy {strategy!r}; its own options are "
                        f"{list(STRATEGY_OPTIONS[strategy])}")
    if strategy not in TWO_MODEL_STRATEGIES and (coarse_model is not None or fine_model is not None):
        raise ValueError(f"strategy {strategy!r} uses one model; coarse_model / fine_model are for {TWO_MODEL_STRATEGIES}")
    from .decoders import resolve_decoder

    decoder = resolve_decoder(decoder)  # "full" / "taehv" / a TAEHV file / a callable: loaded and checked now
    device = devices[0] if devices else None
    from .inputs import is_cogvideox
    from .models.adapters import as_flow_model

    model = as_flow_model(resolve_model(model, dtype, device, engine_config, checkpoint_key=checkpoint_key))
    cogvideox = is_cogvideox(model)  # its own VAE, T5 and DDIM schedule (_cogvideox_sampler)
    if cpu_threads is not None:
        from .checks import integral

        integral("cpu_threads", cpu_threads, minimum=1)
    else:  # a share of the cores per CPU worker (ENGINE_CPU_THREADS overrides); pinned for the run
        from .runtime import default_cpu_threads

        cpu_threads = default_cpu_threads(devices or [str(model.device)])
    from .checks import check_fused_ops

    check_fused_ops(getattr(model, "fused_ops", False), model.device)
    from .attention import BACKENDS

    if getattr(model, "attention_backend", None) in BACKENDS:  # an unavailable backend: refused before any job
        from .attention import BackendUnavailable, resolve_backend

        try:
            resolve_backend(model.attention_backend, model.device)
        except BackendUnavailable as exc:
            raise ValueError(f"{exc}; choose another (EngineConfig(attention_backend='auto') picks the fastest "
                             f"available; `python -m engine info` lists them)") from None
    cfg = model.config
    default_h, default_w = default_size(model)
    height = default_h if height is None else height
    width = default_w if width is None else width
    if fit is not None:  # round to the nearest length the strategy (or recipe) accepts
        num_frames = fit_frames(model, num_frames, fit, height=height, width=width, strategy=strategy,
                                first_frame_given=first_frame is not None, chunk_frames=chunk_frames,
                                sink_frames=sink_frames, window_frames=window_frames, options=options,
                                **strategy_options)
    F_lat, h, w = check_frames(num_frames, height, width, model,
                               temporal=_release_layout(strategy, options, strategy_options) is None)
    sampler = _cogvideox_sampler(model, sampler) if cogvideox else (sampler or default_sampler(model))
    if sampler.schedule == "cogvideox" and sampler.ddpm is None:  # the model's own scheduler config
        from .models.cogvideox import cogvideox_scheduler_for

        sampler = sampler.replace(ddpm=cogvideox_scheduler_for(model)[1])
    check_ddpm_schedule(model, sampler)
    if guidance_scale is not None:
        sampler = sampler.replace(guidance_scale=float(guidance_scale))
    priors = None
    if first_frames is not None:  # MiLA's condition frames: [V, P, 3, H, W]
        from .inputs import prior_frames_tensor

        if first_frame is not None:
            raise ValueError("give first_frame (one image) or first_frames (MiLA's prior frames), not both")
        if cfg.is_i2v:
            raise ValueError(f"model {cfg.name!r} is image-to-video (one first_frame condition); first_frames are "
                             f"MiLA's prior frames for a text-to-video backbone")
        priors = prior_frames_tensor(first_frames, height, width, int(control_opts.get("views") or 1))
        check_finite("first_frames", priors)
    P = 0 if priors is None else priors.shape[1]
    cog_i2v = cogvideox and image_condition(cfg)  # CogVideoX-I2V: the image latent on the channels
    if image_condition(cfg) and first_frame is None:
        raise ValueError(f"model {cfg.name!r} is image-to-video: pass first_frame (an image path, PIL image or array)")
    if cogvideox and strategy == "ar" and options is None and strategy_options.get("context") is None:
        strategy_options["context"] = "history"  # CogVideoX's joint attention has no KV cache: context in the sequence
    ar_cache = strategy == "ar" and strategy_options.get("context", "cache") in (None, "cache") and (
        options is None or getattr(options, "context", "cache") == "cache")
    from .control.setup import check_cfg_drop

    cfg_drop = check_cfg_drop(cfg_drop)
    if "text" not in cfg_drop and sampler.guidance_scale != 1.0:  # the unconditional row keeps the prompt
        if negative_prompt is not None or negative_prompt_embeds is not None:
            raise ValueError("cfg_drop without 'text' keeps the prompt in the unconditional row: drop "
                             "negative_prompt / negative_prompt_embeds, or add 'text' to cfg_drop")
    keep_text = "text" not in cfg_drop
    ctl = None
    if control_opts:  # validated now; control branches / multi-view run ar through the runtime (history)
        from .control.setup import ControlSetup

        ctl = ControlSetup(control_opts, model=model, num_frames=num_frames, height=height, width=width,
                           latent_frames=F_lat, first_frame_given=first_frame is not None, cfg_drop=cfg_drop,
                           prior_frames=P)
        ar_cache, strategy_options = ctl.route(strategy, ar_cache, strategy_options)
        w = ctl.latent_width(w)  # multi-view: views side by side in the latent width
    plan = plan_for(model, num_frames=num_frames, height=height, width=width, strategy=strategy,
                    first_frame_given=first_frame is not None, sampler=sampler, chunk_frames=chunk_frames,
                    sink_frames=sink_frames, window_frames=window_frames, options=options, prior_frames=P,
                    **strategy_options)
    if plan.num_frames != F_lat + P and (image_condition(cfg) or ctl is not None):
        raise ValueError(f"{strategy} with separate clips ({len(plan.clips)} clips) re-encodes frames between clips; "
                         f"whole-video conditions (an image-to-video model's first-frame condition, controls) are not "
                         f"cut per clip yet: run it without clip options")
    roles = _role_models(strategy, model, coarse_model, fine_model, dtype, device, engine_config)
    check_channel_jobs(plan, roles)
    for m in roles.values():  # every CogVideoX role stepped on its own DDPM table
        check_ddpm_schedule(m, sampler)
    from .runtime import check_noise

    check_noise(plan, noise, roles, (h, w))
    for m in roles.values():  # a model with fixed shapes (an exported one) says now if it cannot run this size
        if hasattr(m, "check_latent_size"):
            m.check_latent_size(h, w)

    from .config import parse_dtype

    comps = resolve_components(model, vae, text_encoder, seed=seed,  # the VAE of the model given first
                               vae_dtype=parse_dtype(vae_dtype or "float32"))
    from dataclasses import replace as _replace

    from .models.codecs import codec_for

    codec = codec_for(comps.vae)  # how this VAE encodes and decodes (one record per family)
    if codec.whole_clip:  # its decoder cannot continue a clip: one decode job per clip
        plan = _replace(plan, whole_clip_decodes=True)
    check_memory(model, comps.vae, plan, h, w, model.device,
                 workers=sum(1 for d in (devices or [str(model.device)]) if torch.device(d) == model.device))
    from .models.vae import i2v_condition

    make_decoder = _decoder_factory(decoder, ctl, codec, comps.vae)  # channel mismatch: an error now
    if codec.check_decodes is not None:
        codec.check_decodes(plan)

    from .runtime import run_pinned

    # the CLIP encode on the runtime's thread count, like the VAE encodes below (see run_pinned)
    image_embeds = run_pinned(cpu_threads, _image_tokens, roles, comps, first_frame, image_embeds, image_encoder)

    def make_context(role, m):
        if m.config.text_dim != cfg.text_dim:  # its own text space (e.g. a CogVideoX coarse model beside Wan)
            own = Components(comps.vae, None, getattr(m, "source", None) is None)
            return prompt_context(m, own, prompt, None, negative_prompt, None, sampler.guidance_scale, image_embeds, seed)
        return prompt_context(m, comps, prompt, prompt_embeds, negative_prompt, negative_prompt_embeds,
                               sampler.guidance_scale, image_embeds, seed, same_uncond=keep_text)

    def encode_inputs():  # the VAE encodes of the given frames, on the runtime's thread count (see run_pinned)
        first_latent = condition = img = None
        if first_frame is not None:
            img = first_frame_tensor(first_frame, height, width).to(model.device)
            check_finite("first_frame", img)
            if cfg.is_i2v:
                condition = i2v_condition(comps.vae, img, num_frames, height, width)
            elif cog_i2v:  # the pipeline draws a posterior sample; the engine takes its mode (deterministic)
                from .models.cogvideox_vae import i2v_image_latents

                condition = i2v_image_latents(comps.vae, img, F_lat, sample=False)
            else:
                first_latent = codec.encode(comps.vae, img[:, :, None])
        inputs = {0: first_latent} if first_latent is not None else {}
        if priors is not None:  # each prior frame encoded alone (an image latent), views side by side
            from .control.multiview import pack_views

            z = torch.stack([torch.cat([codec.encode(comps.vae, f[None, :, None].to(model.device)) for f in v], 2)
                             for v in priors], 1)  # [1, V, C, P, h, w]
            z = pack_views(z)
            inputs = {p: z[:, :, p:p + 1] for p in range(P)}
        if ctl is not None:  # whole-timeline controls beside each DiT; every pass takes its positions' slice
            condition = ctl.build(comps.vae, img, condition, (h, w))
        return condition, inputs

    condition, inputs = run_pinned(cpu_threads, encode_inputs)
    if ctl is not None:
        roles = {r: ctl.wrap(m) for r, m in roles.items()}
    if ar_cache and devices is not None and len(devices) > 1:
        import warnings

        warnings.warn(f"strategy 'ar' with the KV cache is one sequential chain of DiT jobs on one worker; the other "
                      f"devices of {list(devices)} only decode. Use context='history' or a planning strategy "
                      f"(mmpl, longdwm, mila) to spread the DiT work", stacklevel=3)
    compile_mode = None
    if engine_config is not None:
        from .compile import compile_mode as mode_of

        compile_mode = mode_of(engine_config.compile, engine_config.cuda_graphs)
    return PreparedRun(plan=plan, models=roles, devices=list(devices) if devices else [str(model.device)],
                       make_context=make_context, seed=seed, sampler=sampler, latent_hw=(h, w),
                       inputs=inputs, condition=condition,
                       vae=comps.vae, make_decoder=make_decoder, encode=codec.encode,
                       compile_mode=compile_mode, cpu_threads=cpu_threads, shuffle=shuffle, fps=float(fps or cfg.fps),
                       batch_jobs=_batch_jobs(batch_jobs, engine_config),
                       noise=noise)


def _cogvideox_sampler(model, sampler: SamplerConfig | None) -> SamplerConfig:
    """The sampler of a CogVideoX main model: the one given, else what its pipeline runs on
    its scheduler config's timesteps (50 steps, CFG 6, diffusers' CogVideoXPipeline
    defaults) as :data:`SamplerConfig(schedule="cogvideox")`: kind ``"euler"`` for
    CogVideoXDDIMScheduler (Euler on its flow sigmas is DDIM), ``"dpm"`` for
    CogVideoXDPMScheduler (CogVideoX-5b: :class:`~engine.sampling.DPMSolverSDESampler`)."""
    if sampler is not None:
        return sampler
    from .models.cogvideox import cogvideox_scheduler_for

    kind, schedule = cogvideox_scheduler_for(model)
    return SamplerConfig(kind="euler" if kind == "ddim" else "dpm", num_steps=50, schedule="cogvideox", ddpm=schedule,
                         guidance_scale=6.0)


def check_channel_jobs(plan, roles: dict) -> None:
    """Jobs handing clean latents on the channels (``Job.channel_frames``: LongDWM's
    ``fine_condition="channels"``) need a model with in_channels = 2 x out_channels
    (CogVideoX-I2V style); a coarse / fine CogVideoX model with such channels needs them
    filled. A ValueError naming the role and the option to change otherwise."""
    from .models.cogvideox import CogVideoXConfig

    for job in plan.jobs:
        cfg = roles[job.model].config
        if job.channel_frames and cfg.in_channels != 2 * cfg.out_channels:
            raise ValueError(f"job {job.id!r} hands its end frames on the channels (fine_condition='channels'), but the "
                             f"{job.model} model {cfg.name!r} takes {cfg.in_channels} input channels, not "
                             f"{2 * cfg.out_channels}: use fine_condition='sequence' for a text-to-video fine model")
        if not job.channel_frames and job.model != "main" and image_condition(cfg):
            fix = ("longdwm fine_latents='image', fine_condition='channels'" if job.model == "fine" else
                   "a text-to-video coarse model (its jobs have no image on the channels)")
            raise ValueError(f"the {job.model} model {cfg.name!r} is image-conditioned on its channels "
                             f"({cfg.in_channels} input channels), but job {job.id!r} gives it none: use {fix}")


def check_ddpm_schedule(model, sampler: SamplerConfig) -> None:
    """A ``schedule="cogvideox"`` sampler steps the DDPM table of ``sampler.ddpm``; the model
    must be a v-prediction model wrapped with that same table (else its timesteps would be
    read on another schedule): a ValueError naming both otherwise."""
    if sampler.schedule != "cogvideox":
        return
    table = getattr(model, "alphas_cumprod", None)
    if sampler.ddpm.prediction_type != "v_prediction":
        raise ValueError(f"sampler.ddpm.prediction_type {sampler.ddpm.prediction_type!r}: the runtime steps "
                         f"v-prediction CogVideoX models only (the published CogVideoX schedulers are v-prediction)")
    if table is None:
        raise ValueError(f"sampler schedule 'cogvideox' (CogVideoX's DDIM) needs a CogVideoX model; "
                         f"{model.config.name!r} is a flow model: use schedule 'flow' or 'wan'")
    want = sampler.ddpm.alphas_cumprod()
    if table.shape != want.shape or not torch.allclose(table, want, rtol=0, atol=1e-12):
        raise ValueError(f"sampler.ddpm {sampler.ddpm} is not the schedule model {model.config.name!r} was trained on "
                         f"(its scheduler config, engine.models.cogvideox.cogvideox_scheduler_for); pass that one")


def _batch_jobs(batch_jobs, engine_config) -> int:
    """How many like denoise jobs a worker runs as one batched forward (1: off): the
    argument, else the EngineConfig's, else 1; an int >= 1."""
    n = batch_jobs if batch_jobs is not None else getattr(engine_config, "batch_jobs", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"batch_jobs must be an int >= 1 (1: every job alone), got {n!r}")
    return n


def _decoder_factory(decoder, ctl, codec, vae=None):
    """vae -> a fresh streaming decoder: ``decoder`` (resolved by
    :func:`engine.decoders.resolve_decoder`: a light decoder or a callable) if given, the
    controls' own (multi-view) if any, else the ``codec``'s
    (:class:`~engine.models.codecs.Codec`). A light decoder for a codec that takes none, or
    whose latent channels differ from ``vae``'s, is refused here, before any work."""
    from .decoders import resolve_decoder

    decoder = resolve_decoder(decoder)
    if decoder is not None:
        if not codec.light_decoders:
            raise ValueError("light decoders (TAEHV, LightTAE, LightVAE, a custom callable) decode Wan's latent space; "
                             "a CogVideoX model decodes with its own VAE: drop decoder=")
        if vae is not None and hasattr(decoder, "check_vae"):
            decoder.check_vae(vae)
        if ctl is not None and ctl.views > 1:
            raise ValueError("a custom decoder= cannot be combined with multi-view generation (views > 1)")
        return decoder
    return ctl.decoder if ctl is not None and ctl.views > 1 else codec.decoder


def _role_models(strategy, model, coarse_model, fine_model, dtype, device, engine_config) -> dict:
    """One model per role the plan uses; a strategy wanting two gets the one given for both."""
    roles = {"main": model}
    if strategy in TWO_MODEL_STRATEGIES:
        roles["coarse"] = model if coarse_model is None else resolve_role_model(coarse_model, dtype, device, engine_config)
        roles["fine"] = model if fine_model is None else resolve_role_model(fine_model, dtype, device, engine_config)
        for role in ("coarse", "fine"):
            m = roles[role]
            if m.config.out_channels != model.config.out_channels:
                raise ValueError(f"{role} model has {m.config.out_channels} latent channels, the main model "
                                 f"{model.config.out_channels}: coarse and fine models must share the VAE's latent space")
    return roles


def run(prepared: PreparedRun, stats: RunStats | None = None, keep_latents: dict | None = None) -> Iterator[np.ndarray]:
    """Execute a prepared run (in this process, or this rank's share under torch.distributed);
    yields uint8 frames [t, H, W, 3] strictly in order. ``keep_latents``: a dict receiving
    every latent the run makes, {(job id, position): [1, C, 1, h, w] on the CPU}."""
    from .distributed import distributed_active, run_distributed

    r = prepared
    if not isinstance(r, PreparedRun):  # a release chain with its own loop (engine.longvie)
        return r.frames(stats)
    if stats is not None:
        stats.video_fps = r.fps
    execute_here = run_distributed if distributed_active() else execute
    it = execute_here(r.plan, r.models, devices=r.devices, make_context=r.make_context, seed=r.seed,
                      sampler=r.sampler, latent_hw=r.latent_hw, inputs=r.inputs, condition=r.condition, vae=r.vae,
                      make_decoder=r.make_decoder, encode=r.encode, to_frames=_frames_with_telemetry(stats), shuffle=r.shuffle,
                      cpu_threads=r.cpu_threads, stats=stats.runtime if stats is not None else None,
                      compile_mode=r.compile_mode, noise=r.noise, batch_jobs=r.batch_jobs,
                      **({} if keep_latents is None else {"keep_latents": keep_latents}))
    return _runtime_frames(it, stats)


def _frames_with_telemetry(stats: RunStats | None) -> Callable:
    """The runtime's ``to_frames``: a decoded chunk [1, 3, t, H, W] -> uint8 [t, H, W, 3],
    its per-frame sharpness recorded on the device first (:mod:`engine.telemetry`)."""

    def to_frames(video: torch.Tensor) -> np.ndarray:
        if stats is not None:
            stats.telemetry.record(video)
        return to_uint8_frames(video)[0]

    return to_frames


def stream(model, *, num_frames: int, stats: RunStats | None = None, **options) -> Iterator[np.ndarray]:
    """Generate a video and return an iterator over its frames as they are decoded: uint8
    arrays [t, H, W, 3], strictly in order. Every input is checked before this returns;
    arguments as :func:`generate`."""
    return run(prepare(model, num_frames=num_frames, **options), stats)


def check_output_path(output, suffix: str = ".mp4") -> None:
    """An output path (an mp4 video, or e.g. a .json stats file) must be writable and have
    the container's suffix, checked before any work (else a ValueError naming the path)."""
    path = Path(output).expanduser()
    if path.suffix.lower() != suffix:
        what = "the writer makes H.264 mp4 files" if suffix == ".mp4" else f"it is written as {suffix}"
        raise ValueError(f"output {str(output)!r}: {what}; use a path ending in {suffix}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"output {str(output)!r}: the folder {str(parent)!r} does not exist; create it first")
    if path.is_dir():
        raise ValueError(f"output {str(output)!r} is a folder; give a file path ending in .mp4")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"output {str(output)!r} is not writable (permissions of {str(parent)!r})")
    existed = path.exists()
    try:  # the permission bits say yes for root everywhere: open it for real (/proc, /sys, a read-only mount)
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise ValueError(f"output {str(output)!r} cannot be written: {exc.strerror or exc}; choose a path in a "
                         f"writable folder") from None
    if not existed:
        path.unlink(missing_ok=True)


def _close_writer(writer) -> str | None:
    """Close an :class:`Mp4Writer` (None: nothing to do); the failure's text, or None."""
    if writer is None:
        return None
    try:
        writer.close()
    except OSError as exc:
        return str(exc)
    return None


def _runtime_frames(it, stats: RunStats | None) -> Iterator[np.ndarray]:
    t0 = stats.t0 if stats is not None and stats.t0 is not None else time.perf_counter()
    for positions, frames in it:
        if stats is not None:
            stats.record_chunk(positions, len(frames), time.perf_counter() - t0)
        yield frames


def generate(
    model,
    *,
    num_frames: int | None = None,
    prompt: str | None = None,
    prompt_embeds: torch.Tensor | None = None,
    first_frame=None,
    height: int | None = None,
    width: int | None = None,
    strategy: str | None = None,
    seed: int = 0,
    devices: list[str] | None = None,
    output: str | Path | None = None,
    on_frames: Callable[[np.ndarray, int], None] | None = None,
    progress: bool = True,
    **options,
) -> Video:
    """Generate a video with any strategy and return it.

    model: a preset name (``tiny``: the embedded default), a checkpoint path, or a model
    from :func:`engine.load_model`. prompt / prompt_embeds [1, L, text_dim]: text
    conditioning (a real model needs embeddings or a text encoder). first_frame: an image
    to start from (image path, PIL image, uint8 [H,W,3]); required by I2V models.
    num_frames: 4k+1 video frames; height / width: multiples of 16 (default 128x128 for
    tiny, 480x832 otherwise). output: an mp4 path written while frames arrive.
    on_frames(frames uint8 [t,H,W,3], first_index): called for every decoded chunk.
    Image-to-video with CLIP tokens (Wan2.1 I2V): image_encoder (an
    :class:`~engine.models.image.ImageEncoder` or its folder; default the model root's
    ``image_encoder/``) encodes first_frame as ``WanImageToVideoPipeline`` does, or give
    image_embeds [1, N, image_dim] ready.
    Options: negative_prompt, negative_prompt_embeds, image_embeds, dtype, sampler
    (:class:`SamplerConfig`), guidance_scale, chunk_frames (ar: 3), sink_frames,
    window_frames (attention window in latent frames; default bounded at 21 in total),
    vae, text_encoder (objects or local folders), vae_dtype (float32 by default), decoder
    (``"full"``: the VAE's :class:`~engine.models.vae.StreamingDecoder`, the default;
    ``"taehv"`` or a TAEHV ``.pth``/``.safetensors`` path, or :func:`engine.load_decoder`'s
    result: the light decoder, decode only; or a callable vae -> streaming decoder),
    engine_config (:class:`EngineConfig`: device, dtype, attention backend, fused ops,
    compile / CUDA graphs). Controls (:mod:`engine.control`, any
    strategy): trajectory, intrinsics, warp_depth, save_warped (LongDWM); waypoints,
    cameras, views, cross_view (MiLA). LongVie 2 runs as released with ``recipe="longvie2"``
    (:func:`engine.longvie.prepare_longvie`: control_weights, overlay, cond or dense /
    sparse per clip, image_encoder).

    recipe: a released method's whole setting by name (``mmpl-t2v``, ``mmpl-t2v-parallel``,
    ``mmpl-i2v``; :mod:`engine.recipes`, ``python -m engine recipes``): strategy, options,
    sampler, negative prompt, size and checkpoint dict; explicit arguments override it.
    checkpoint_key: the dict of a training ``.pt`` to load (``generator``, ``generator_ema``).
    noise: [1, C, F, h, w] initial noise of every latent position of the plan's timeline,
    replacing the seeded draws (replaying another implementation's run).
    fit: ``"down"`` / ``"up"`` rounds ``num_frames`` to the nearest length the strategy
    accepts (ar, mila: 4k+1; mmpl: 32n+1 by default; longdwm: 12n+1; the MMPL recipes:
    76n or 81+76(n-1)); without it a length that does not fit is an error naming the two
    nearest.

    strategy: ``ar`` (default; ``context="cache"``: the KV-cache chain on one worker,
    ``context="history"`` feeds ``history_frames`` in the sequence; ``unified_noise``),
    ``mmpl`` (segment_frames, anchor_frames, midpoint, schedule="max_throughput"|
    "min_memory", noise_rho, segment_clips), ``longdwm`` (keyframes, fps_ratio,
    coarse_rope, keyframe_clips), ``mila`` (anchor_stride, anchors_per_rollout,
    clip_frames, history_frames, jdc_sigma, tpd, lookahead) -- see :mod:`engine.plans`;
    as keywords or typed: ``options=MmplOptions(...)``. longdwm and mila take
    ``coarse_model`` / ``fine_model`` (default: ``model`` for both).
    devices: one worker per entry (``["cuda:0", "cuda:1"]``, or CPU threads ``["cpu", "cpu"]``);
    cpu_threads: torch intra-op threads per worker while the runtime runs (pinned: float
    results on CPU depend on it; default: the cores this process may use shared among its
    CPU workers, or ``ENGINE_CPU_THREADS``; give it for the same bits on another worker
    count); shuffle: a seed to pick ready jobs at random (tests).
    batch_jobs: a worker runs up to this many ready denoise jobs of the same shape and
    schedule as one batched forward (jobs with CFG and no KV cache: longdwm's fine clips,
    mmpl's segment clips; the same video as one by one; default 1, or EngineConfig's).
    Returns a :class:`Video` (frames uint8 [T,H,W,3], fps) with ``.stats`` (:class:`RunStats`,
    whose ``.runtime`` holds per-job times and workers, the critical path in DiT passes,
    idle fraction per worker and peak memory per device).
    """
    from .signals import Interrupted, StopRequests, signal_name

    t0 = time.perf_counter()
    stats = RunStats(t0=t0)
    if output is not None:
        check_output_path(output)
    collected: list[np.ndarray] = []
    writer = None
    fps = 16
    bar = None
    stopped = None
    it = None
    with StopRequests() as stop:
        try:
            if progress:
                print("generate: checking inputs, loading the model, VAE and text encoder, building the plan ...",
                      file=sys.stderr, flush=True)
            prepared = prepare(model, num_frames=num_frames, prompt=prompt, prompt_embeds=prompt_embeds,
                               first_frame=first_frame, height=height, width=width, strategy=strategy, seed=seed,
                               devices=devices, **options)
            num_frames = prepared.video_frames
            if progress:
                print(f"generate: {prepared.plan_line()}; set-up took {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr, flush=True)
                from tqdm import tqdm

                bar = tqdm(total=num_frames, unit="frame", desc="generate", file=sys.stderr, dynamic_ncols=True,
                           bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}"
                                      "{postfix}]")
            if stop.requested:  # a stop signal during set-up: nothing to run
                raise Interrupted(stop.signum)
            from .checks import check_kept_frames

            check_kept_frames(prepared.video_frames, 8 * prepared.latent_hw[0], 8 * prepared.latent_hw[1])
            it = run(prepared, stats)
            for frames in it:
                fps = stats.video_fps
                start = stats.frames
                collected.append(frames)  # kept before it is written: a failing write loses nothing
                stats.frames += len(frames)
                if output is not None and writer is None:
                    writer = Mp4Writer(output, fps, frames.shape[2], frames.shape[1])
                if writer is not None:
                    writer.write(frames)
                stats.seconds = time.perf_counter() - t0
                if bar is not None:
                    bar.update(len(frames))
                    bar.set_postfix_str(f"{stats.fps:.2f} frames/s since the call began")
                if on_frames is not None:
                    on_frames(frames, start)
                if stop.requested:  # a stop signal: end at this chunk boundary with what we have
                    stopped = stop.signum
                    break
        except BaseException as exc:
            partial = Video(np.concatenate(collected) if collected else np.zeros((0, 2, 2, 3), np.uint8), fps)
            close_error = _close_writer(writer)
            if isinstance(exc, OSError):  # the write failed: closing fails the same way, one message is enough
                close_error = None
            if isinstance(exc, Interrupted):
                raise GenerationInterrupted(
                    f"{exc} after {len(partial)} of {num_frames} frames" + (
                        f"; {len(partial)} frames saved to {output}" if writer is not None else ""),
                    partial, str(output) if writer is not None else None, exc.signum) from None
            if isinstance(exc, (KeyboardInterrupt, ValueError, TypeError, FileNotFoundError)) and not collected:
                raise
            what = "out of memory" if isinstance(exc, torch.OutOfMemoryError) else f"{type(exc).__name__}: {exc}"
            hint = (" -- lower the resolution, chunk_frames or window_frames, or use dtype='bf16'"
                    if isinstance(exc, torch.OutOfMemoryError) else "")
            kept = f"; the {len(partial)} frames already generated are in err.video" + (
                f" and saved to {output}" if writer is not None and not isinstance(exc, OSError) and not close_error
                else "") + (f" ({close_error})" if close_error else "")
            raise GenerationError(f"generation failed after {len(partial)} of {num_frames} frames: {what}{hint}{kept}",
                                  partial, str(output) if writer is not None else None) from exc
        finally:
            if bar is not None:
                bar.close()
            if it is not None:
                it.close()  # stops the workers (after their running job) and finishes the stats
    close_error = _close_writer(writer)
    if close_error:
        video = Video(np.concatenate(collected) if collected else np.zeros((0, 2, 2, 3), np.uint8), fps)
        video.stats = stats
        raise GenerationError(f"all {len(video)} frames were generated but {close_error}; they are in err.video",
                              video, str(output))
    if stopped is not None:
        partial = Video(np.concatenate(collected) if collected else np.zeros((0, 2, 2, 3), np.uint8), fps)
        partial.stats = stats
        where = f"; {len(partial)} frames saved to {output}" if writer is not None else ""
        raise GenerationInterrupted(f"interrupted by {signal_name(stopped)} after {len(partial)} of {num_frames} "
                                    f"frames{where}", partial, str(output) if writer is not None else None, stopped)
    video = Video(np.concatenate(collected) if collected else np.zeros((0, 2, 2, 3), np.uint8), fps)  # ranks > 0: none
    video.stats = stats
    return video
