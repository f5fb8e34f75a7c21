"""Recipes: a released method's whole inference setting under one name.

A :class:`Recipe` bundles what a release fixes besides its weights: strategy and its
options, sampler (steps, shift, schedule, guidance), negative prompt, video size, frame
rate and which weights of its checkpoint to load. ``generate(model, recipe="mmpl-t2v",
...)``, ``python -m engine generate --recipe mmpl-t2v`` and ``python -m engine recipes``
use them; every argument given explicitly overrides the recipe's value.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import SamplerConfig
from .plans import ArOptions, LongdwmOptions, MilaOptions, MmplOptions

#: Wan2.1's default negative prompt (as the Wan2.1 and MMPL releases' configs give it).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)

@dataclass(frozen=True)
class LongVieOptions:
    """The LongVie 2 release's fixed chain settings (Vchitect/LongVie ``inference.py`` and
    ``LongViePipeline.__call__``): 81-frame clips, the previous clip's last 8 decoded
    frames as history, latent frame 0 of later clips started at ``frame0_sigma`` noise
    share over the last history latent; ``batch_cfg``: both CFG rows in one forward (ours;
    the release runs two)."""

    clip_frames: int = 81
    history_frames: int = 8
    frame0_sigma: float = 0.925926
    batch_cfg: bool = True


_MMPL_SAMPLER = SamplerConfig(kind="unipc", num_steps=50, shift=5.0, timesteps=None, guidance_scale=5.0,
                              schedule="wan")
_MMPL_REF = "Tele-AI/MMPL (MMPL_t2v/pipeline/casual_fps_inference.py, configs/self_forcing_df.yaml)"


@dataclass(frozen=True)
class Recipe:
    """One release's inference setting (see the module docstring).

    checkpoint_key: which dict of a training checkpoint ``.pt`` holds the weights
    (``"generator"`` as the MMPL release loads it; ``"generator_ema"`` on request).
    first_frame: whether the recipe starts from an image (``first_frame=`` required).
    decoder: the decoder it decodes with (``generate(decoder=)``): ``"full"`` (the VAE) or
    ``"taehv"`` (the tiny TAEHV decoder, :mod:`engine.decoders`).
    prior_frames: the most condition frames it reads (``first_frames=``: the last ones are
    kept when more are given). cfg_drop: what its unconditional CFG row goes without.
    """

    name: str
    description: str
    strategy: str
    options: object
    sampler: SamplerConfig
    negative_prompt: str | None
    height: int
    width: int
    fps: int
    checkpoint_key: str = "generator"
    first_frame: bool = False
    reference: str = ""
    frames_rule: str = ""
    decoder: str = "full"
    prior_frames: int = 0
    cfg_drop: tuple[str, ...] | None = None

    def describe(self) -> dict:
        """A JSON-friendly summary (``python -m engine recipes``)."""
        return {"name": self.name, "description": self.description, "strategy": self.strategy,
                "options": {k: v for k, v in vars(self.options).items()},
                "sampler": vars(self.sampler), "negative_prompt": self.negative_prompt is not None,
                "size": [self.height, self.width], "fps": self.fps, "checkpoint_key": self.checkpoint_key,
                "first_frame": self.first_frame, "frames": self.frames_rule, "reference": self.reference,
                "decoder": self.decoder, "prior_frames": self.prior_frames,
                "cfg_drop": list(self.cfg_drop) if self.cfg_drop is not None else None}


RECIPES: dict[str, Recipe] = {
    "self-forcing": Recipe(
        "self-forcing", "Self-Forcing as released: autoregressive 3-latent chunks over the KV cache, 4 few-step "
        "denoising steps (1000, 750, 500, 250; shift 5), no CFG, full Wan VAE decode", "ar",
        ArOptions(chunk_frames=3), SamplerConfig(kind="fewstep", timesteps=(1000, 750, 500, 250), shift=5.0,
                                                 guidance_scale=1.0), None, 480, 832, 16,
        checkpoint_key="generator_ema",
        reference="guandeh17/Self-Forcing (configs/self_forcing_dmd.yaml, inference.py --use_ema)", frames_rule="4k+1"),
    "mmpl-t2v": Recipe(
        "mmpl-t2v", "MMPL T2V as released, 1-GPU chaining: 21-latent segments in stages 2/7/6/6, UniPC-50 "
        "(shift 5, Wan's int64 timesteps), CFG 5 with Wan's negative prompt; each segment's last 5 frames are "
        "re-encoded as the next one's first latents", "mmpl", MmplOptions(release="t2v", handoff="tail"),
        _MMPL_SAMPLER, WAN_NEGATIVE_PROMPT, 480, 832, 16, reference=_MMPL_REF + ", Wan_fps_inference_1gpu.py",
        frames_rule="76*n (every segment drops its first 5 frames)"),
    "mmpl-t2v-parallel": Recipe(
        "mmpl-t2v-parallel", "MMPL T2V as released by its multi-GPU scripts: segment k+1 starts from the "
        "re-encoded [f0, f19, f19, f20] of segment k as soon as k's stage 1 is done, so segments overlap on "
        "any number of devices", "mmpl", MmplOptions(release="t2v", handoff="stage1"), _MMPL_SAMPLER,
        WAN_NEGATIVE_PROMPT, 480, 832, 16, reference=_MMPL_REF + ", Wan_fps_inference_parallel_4gpu_20s.py",
        frames_rule="81 + 76*(n-1) (later segments drop the 5 frames they repeat)"),
    "mmpl-i2v": Recipe(
        "mmpl-i2v", "MMPL I2V as released (MMPL_i2v): the image's latent is frame 0, stages 1/1/7/6/6 on the "
        "T2V-14B backbone, 1-GPU chaining", "mmpl", MmplOptions(release="i2v", handoff="tail"), _MMPL_SAMPLER,
        WAN_NEGATIVE_PROMPT, 480, 832, 16, first_frame=True,
        reference="Tele-AI/MMPL (MMPL_i2v/pipeline/casual_fps_inference.py, Wan_fps_inference_1gpu.py)",
        frames_rule="76*n"),
    "self-forcing-fast": Recipe(
        "self-forcing-fast", "Self-Forcing for real time: autoregressive 3-latent chunks over the KV cache, 4 "
        "few-step denoising steps (1000, 750, 500, 250; shift 5), no CFG, decoded by TAEHV (taew2_1.pth: "
        "decoder='taehv' looks in $ENGINE_TAEHV, ./, ~/.cache/engine)", "ar", ArOptions(chunk_frames=3),
        SamplerConfig(kind="fewstep", timesteps=(1000, 750, 500, 250), shift=5.0, guidance_scale=1.0), None,
        480, 832, 16, checkpoint_key="generator_ema",
        reference="guandeh17/Self-Forcing (configs/self_forcing_dmd.yaml, inference.py --use_ema) + madebyollin/taehv",
        frames_rule="4k+1", decoder="taehv"),
    "mila": Recipe(
        "mila", "MiLA as its paper states it (no code released): 4 prior frames at 12 fps condition the first "
        "clip; coarse anchors at 1 fps (every 3rd latent), recurrent (re)fine clips with JDC (anchors re-noised at "
        "half the clip's sigma with variance-kept structured noise) and TPD; rectified-flow Euler 50 steps; CFG whose "
        "unconditional row drops text, waypoints and cameras (the guidance scale is lost from the paper's text: 5 "
        "here). Evaluation protocol: 28 frames at 12 fps, the first 25 scored (29 = 4k+1 here)", "mila",
        MilaOptions(anchor_stride=3), SamplerConfig(kind="euler", num_steps=50, shift=5.0, timesteps=None,
                                                    guidance_scale=5.0), None, 480, 832, 12,
        reference="arXiv 2503.15875 (MiLA), secs. 3.2-3.4, 4.1, App. B",
        frames_rule="4k+1", prior_frames=4, cfg_drop=("text", "waypoints", "camera")),
    "longdwm": Recipe(
        "longdwm", "LongDWM as its paper states it (no code released): on CogVideoX-2B at 480x720, a coarse model "
        "predicts 13 keyframes 1 s apart in one joint pass from the first frame (each keyframe its own image "
        "latent; the next rollout starts from the last keyframe); a fine model fills the 11 frames between every "
        "pair at 12 fps (nuScenes' camera rate), all pairs at once, each fine clip's two keyframes on its channels "
        "(CogVideoX-I2V style: fine model in_channels 32; fine_condition='sequence' for a text-to-video fine "
        "model); CogVideoX's DDIM, 50 steps, CFG 6 (the CogVideoX pipeline's; the paper gives none). Pass the "
        "coarse model as the model and the fine one as fine_model", "longdwm",
        LongdwmOptions(keyframes=13, fps_ratio=3, keyframe_clips=True, fine_latents="image",
                       fine_condition="channels"),
        SamplerConfig(kind="euler", num_steps=50, schedule="cogvideox", timesteps=None, guidance_scale=6.0), None,
        480, 720, 12, first_frame=True,
        reference="arXiv 2506.01546 (LongDWM), secs. 3.1-3.2, App. A and D",
        frames_rule="12*(n-1)+1 for n keyframes (13 keyframes: 145 frames)"),
    "longvie2": Recipe(
        "longvie2", "LongVie 2 as released: 81-frame I2V clips at 352x640 on Wan2.1-I2V-14B with the dense (depth) "
        "and sparse (point-track) control branches, each clip starting from the last decoded frame, the last 8 "
        "frames re-encoded as history, one seeded noise for every clip (frame 0 blended with the history), "
        "FlowMatch Euler 50 steps (shift 5), CFG 5 with Wan's negative prompt", "longvie2", LongVieOptions(),
        SamplerConfig(kind="euler", num_steps=50, shift=5.0, timesteps=None, guidance_scale=5.0), WAN_NEGATIVE_PROMPT,
        352, 640, 16, first_frame=True,
        reference="Vchitect/LongVie (inference.py, diffsynth/pipelines/wan_video_new_longvie.py, "
                  "diffsynth/models/wan_video_dit_dual_control.py, utils/depth_npy2mp4.py)",
        frames_rule="81 + 80*(n-1) for n clips"),
}


def get_recipe(name: str | Recipe) -> Recipe:
    """The recipe called ``name`` (a Recipe passes through); unknown names raise listing the known ones."""
    if isinstance(name, Recipe):
        return name
    try:
        return RECIPES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {sorted(RECIPES)} (python -m engine recipes)") from None


def apply_recipe(recipe: str | Recipe, given: dict) -> dict:
    """Keyword arguments of :func:`engine.generation.prepare` with the recipe's values
    filled in where ``given`` has none (None counts as not given; explicit values win).
    Strategy options given as keywords replace the recipe's typed options field by field."""
    r = get_recipe(recipe)
    out = dict(given)
    if out.get("strategy") not in (None, r.strategy):
        raise ValueError(f"recipe {r.name!r} runs strategy {r.strategy!r}; drop strategy={out['strategy']!r} "
                         f"or the recipe")
    out["strategy"] = r.strategy
    if out.get("options") is None:
        out["options"] = r.options
    if out.get("sampler") is None:
        out["sampler"] = r.sampler
    if out.get("negative_prompt") is None and out.get("negative_prompt_embeds") is None:
        out["negative_prompt"] = r.negative_prompt
    for key, value in (("height", r.height), ("width", r.width)):
        if out.get(key) is None:
            out[key] = value
    if r.first_frame and out.get("first_frame") is None:
        raise ValueError(f"recipe {r.name!r} starts from an image: pass first_frame (an image path, PIL image or "
                         f"array)")
    if out.get("checkpoint_key") is None:  # None (a CLI flag not given) means "the recipe's"
        out["checkpoint_key"] = r.checkpoint_key
    if out.get("fps") is None:
        out["fps"] = r.fps
    if r.cfg_drop is not None and out.get("cfg_drop") is None:
        out["cfg_drop"] = r.cfg_drop
    if r.prior_frames and out.get("first_frames") is not None:  # the last prior_frames of what is given
        ff = out["first_frames"]
        views = out.get("views") or 1
        out["first_frames"] = ff[..., -r.prior_frames:, :, :, :] if hasattr(ff, "ndim") else (
            [list(v)[-r.prior_frames:] for v in ff] if views > 1 else list(ff)[-r.prior_frames:])
    if out.get("decoder") is None:
        out["decoder"] = r.decoder
    return out
