"""LongVie 2 as released: the clip chain of Vchitect/LongVie's ``inference.py``.

What the release computes (``inference.py``, ``LongViePipeline.__call__`` and its units in
``diffsynth/pipelines/wan_video_new_longvie.py``), and what :class:`LongVieChain` computes
the same way, clip after clip:

1. Clip k is an 81-frame I2V call at 352x640 on an image: the user's first frame for k = 0
   (resized to 640x352 with PIL), else clip k-1's last decoded frame (as uint8: the release
   hands PIL images on). Its condition is the Wan I2V ``y`` (mask + latent of [image,
   80 zero frames]) and CLIP tokens of that image (Wan's own preprocessing:
   :meth:`engine.models.image.ImageEncoder.encode_pixels`).
2. Its control inputs: the clip's dense (depth) and sparse (point-track) videos, 81 RGB
   frames each, each as [VAE latents 16 | mask 4 | latent of (its first frame, zeros) 16].
3. History (k > 0): clip k-1's last 8 decoded frames, VAE-encoded: the causal VAE turns 8
   frames into 2 latents from frames 0..4 only (its ``1 + (T-1)//4`` chunks), so the last
   3 frames never matter.
4. Noise: ONE seeded draw ``torch.randn((1, 16, 21, h, w), generator=cpu(seed))`` for every
   clip; for k > 0 latent frame 0 starts as ``0.074074 * history[-1] + 0.925926 * noise[0]``.
5. 50 FlowMatch Euler steps, shift 5 (sigma = shifted ``linspace(1, 0, 51)[:-1]``, terminal
   0; the model is fed 1000 * sigma), CFG 5 with Wan's negative prompt: the two rows differ
   only in their text. Here both rows run in ONE batched forward (``batch_cfg=True``; the
   release runs two).
6. Decode all 21 latents, clamp to [-1, 1], uint8 by truncation: clip k's video. The
   stitched video keeps clip 0 whole and drops the first frame of every later clip (the
   regenerated copy of the previous clip's last frame): 81 + 80 (n - 1) frames.

The chain is strictly sequential (clip k+1 needs clip k's decoded frames), so it runs on
one device; it does not go through the plan runtime (:mod:`engine.runtime`): its DAG is a
single chain of denoise -> decode -> encode per clip with nothing to overlap but the
control encodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .config import SamplerConfig
from .models.longvie import LongVieDiT
from .recipes import RECIPES

_R = RECIPES["longvie2"]
CLIP_FRAMES = _R.options.clip_frames  # video frames per clip (21 latents)
HISTORY_FRAMES = _R.options.history_frames  # decoded frames of the previous clip fed as history
FRAME0_SIGMA = _R.options.frame0_sigma  # noise share of latent frame 0 in clips after the first
SIZE = (_R.height, _R.width)  # (height, width) of inference.py's TARGET_SIZE
SAMPLER = _R.sampler


@dataclass
class LongVieClip:
    """One clip's own inputs: its prompt (or prompt_embeds [1, L, text_dim]) and its two
    control videos, uint8 [81, H, W, 3] at the video size (dense: depth rendered as RGB;
    sparse: the point-track video)."""

    dense: np.ndarray
    sparse: np.ndarray
    prompt: str | None = None
    prompt_embeds: torch.Tensor | None = None


def to_pixels(frames: np.ndarray, device=None) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> [1, 3, T, H, W] float32 in [-1, 1] (``x * 2/255 - 1``, as
    DiffSynth's ``preprocess_image``)."""
    x = torch.from_numpy(np.array(frames, dtype=np.float32)).to(device=device)
    return (x * (2 / 255) - 1).permute(3, 0, 1, 2)[None]


def control_input(vae, frames: np.ndarray) -> torch.Tensor:
    """A clip's control video uint8 [81, H, W, 3] -> the branch input [1, 36, 21, h, w]:
    [latents of the video 16 | mask 4 | latent of (its first frame, 80 zero frames) 16]."""
    from .models.vae import encode_frames, i2v_condition

    pix = to_pixels(frames, next(vae.parameters()).device)
    _, _, T, H, W = pix.shape
    return torch.cat([encode_frames(vae, pix), i2v_condition(vae, pix[:, :, 0], T, H, W)], 1)


def history_latents(vae, frames: np.ndarray) -> torch.Tensor:
    """The previous clip's last 8 decoded frames uint8 [8, H, W, 3] -> their 2 latents
    [1, 16, 2, h, w] (the causal VAE reads frames 0..4 of the 8; see the module docstring)."""
    from .models.vae import encode_frames

    if len(frames) != HISTORY_FRAMES:
        raise ValueError(f"history takes the last {HISTORY_FRAMES} decoded frames, got {len(frames)}")
    used = 1 + 4 * ((HISTORY_FRAMES - 1) // 4)
    return encode_frames(vae, to_pixels(frames[:used], next(vae.parameters()).device))


def release_noise(seed: int, latent_frames: int, h: int, w: int, channels: int = 16) -> torch.Tensor:
    """The release's clip noise [1, C, F, h, w] (float32): ``torch.randn`` from a CPU
    generator seeded with ``seed`` (DiffSynth's ``generate_noise``)."""
    return torch.randn((1, channels, latent_frames, h, w), generator=torch.Generator("cpu").manual_seed(seed))


class LongVieChain:
    """The release's clip chain (module docstring) on one device.

    model: a :class:`LongVieDiT`; vae: the Wan VAE (diffusers ``AutoencoderKLWan``);
    image_encoder: has ``encode_pixels([1, 3, H, W] in [-1, 1]) -> [1, N, image_dim]``;
    contexts: one text tensor per clip, [2, L, text_dim] (positive, negative) or [1, ...]
    without CFG; clips: their :class:`LongVieClip` inputs; first_frame uint8 [H, W, 3].
    """

    def __init__(self, model: LongVieDiT, vae, image_encoder, texts: list[torch.Tensor], clips: list[LongVieClip],
                 first_frame: np.ndarray, *, seed: int = 0, sampler: SamplerConfig = SAMPLER,
                 batch_cfg: bool = True):
        if not isinstance(model, LongVieDiT):
            raise TypeError(f"LongVie 2 runs a LongVieDiT (engine.models.longvie), got {type(model).__name__}")
        if len(texts) != len(clips):
            raise ValueError(f"{len(clips)} clips but {len(texts)} text contexts")
        self.model, self.vae, self.image_encoder = model, vae, image_encoder
        self.texts, self.clips, self.first_frame = texts, clips, first_frame
        self.seed, self.sampler, self.batch_cfg = seed, sampler, batch_cfg
        H, W = first_frame.shape[:2]
        self.height, self.width = H, W
        self.latent_hw = (H // 8, W // 8)
        self.clip_seconds: list[float] = []

    @property
    def video_frames(self) -> int:
        """Frames of the stitched video: 81 + 80 (n - 1)."""
        return CLIP_FRAMES + (CLIP_FRAMES - 1) * (len(self.clips) - 1)

    @torch.no_grad()
    def conditions(self, k: int, image: np.ndarray, history: np.ndarray | None) -> dict:
        """Clip k's conditions from its first image uint8 [H, W, 3] and the previous clip's
        last 8 frames (None for k = 0): y [1, 20, 21, h, w], clip_tokens [1, N, image_dim],
        dense / sparse [1, 36, 21, h, w], history [1, 16, 2, h, w] or None, and the initial
        latents [1, 16, 21, h, w] (the seeded noise, frame 0 blended with the history)."""
        from .models.vae import i2v_condition

        m, vae = self.model, self.vae
        dev = m.device
        H, W = self.height, self.width
        h, w = self.latent_hw
        img = to_pixels(image[None], dev)[:, :, 0]  # [1, 3, H, W]
        clip = self.clips[k]
        hist = None if history is None else history_latents(vae, history).to(dev)
        x = release_noise(self.seed, (CLIP_FRAMES - 1) // 4 + 1, h, w, m.config.latent_channels).to(dev)
        if hist is not None:
            x[:, :, :1] = (1 - FRAME0_SIGMA) * hist[:, :, -1:] + FRAME0_SIGMA * x[:, :, :1]
        return dict(y=i2v_condition(vae, img.to(next(vae.parameters()).device), CLIP_FRAMES, H, W).to(dev),
                    clip_tokens=self.image_encoder.encode_pixels(img), dense=control_input(vae, clip.dense).to(dev),
                    sparse=control_input(vae, clip.sparse).to(dev), history=hist, initial=x, text=self.texts[k])

    @torch.no_grad()
    def sample(self, c: dict) -> torch.Tensor:
        """A clip's :meth:`conditions` through the one denoise loop
        (:func:`engine.denoise.sample`): its final latents [1, 16, 21, h, w]. The CFG rows
        run as one forward (``batch_cfg``) or one forward each (the release's order: the
        model output in float32, then guided)."""
        from .denoise import check_guidance, guided, sample
        from .sampling import sampler_for

        m = self.model
        dev = m.device
        text = c["text"].to(dev, m.dtype)
        rows = text.shape[0]
        check_guidance(rows, self.sampler.guidance_scale)
        tokens = c["clip_tokens"].to(dev, m.dtype)
        if self.batch_cfg or rows == 1:
            ctxs = [m.prepare_context(text, tokens.expand(rows, -1, -1))]
        else:
            ctxs = [m.prepare_context(text[i:i + 1], tokens) for i in range(rows)]
        kw = dict(condition=c["y"], dense=c["dense"], sparse=c["sparse"], history=c["history"])

        def predict(i, t, xs):
            t = t.float().reshape(1)
            v = torch.cat([m(xs[0], t, ctx, **kw).float() for ctx in ctxs], 0)
            return [guided(v, rows, self.sampler.guidance_scale)]

        return sample([sampler_for(self.sampler)], [c["initial"].clone()], predict)[0]

    def denoise(self, k: int, image: np.ndarray, history: np.ndarray | None,
                keep: dict | None = None) -> torch.Tensor:
        """Clip k's final latents [1, 16, 21, h, w] (float32): :meth:`sample` of its
        :meth:`conditions`; ``keep`` receives the conditions (on the CPU)."""
        c = self.conditions(k, image, history)
        if keep is not None:
            keep.update({n: None if v is None else v.cpu() for n, v in c.items() if n != "text"})
        return self.sample(c)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents [1, 16, 21, h, w] -> the clip's 81 frames uint8 [81, H, W, 3] (one full
        causal decode, clamped, truncated to uint8 as the release)."""
        from .models.vae import StreamingDecoder
        from .video import to_uint8_frames

        return to_uint8_frames(StreamingDecoder(self.vae).decode_all(latents), truncate=True)[0]

    def clip_videos(self, keep: dict | None = None) -> Iterator[np.ndarray]:
        """Each clip's 81 decoded frames uint8 [81, H, W, 3], in order, as each is done.
        ``keep``: {k: {...}} receives clip k's latents and condition tensors."""
        image, history = self.first_frame, None
        for k in range(len(self.clips)):
            t0 = time.perf_counter()
            kept = {} if keep is not None else None
            z = self.denoise(k, image, history, keep=kept)
            frames = self.decode(z)
            if keep is not None:
                kept["latents"] = z.cpu()
                keep[k] = kept
            self.clip_seconds.append(time.perf_counter() - t0)
            yield frames
            image, history = frames[-1], frames[-HISTORY_FRAMES:]

    def frames(self, keep: dict | None = None) -> Iterator[np.ndarray]:
        """The stitched video, clip by clip: clip 0's 81 frames, then frames 1..80 of every
        later clip."""
        for k, frames in enumerate(self.clip_videos(keep)):
            yield frames if k == 0 else frames[1:]


# ----------------------------------------------------------------------------------
# the recipe: inputs as the release takes them -> a LongVieChain
# ----------------------------------------------------------------------------------
def clip_inputs(n_clips: int, prompts, prompt_embeds, dense, sparse) -> list[LongVieClip]:
    """Per-clip inputs from lists (one per clip) or single values (shared by every clip).
    dense / sparse: lists of uint8 [81, H, W, 3] videos, one per clip."""
    def per_clip(name, v):
        if isinstance(v, (list, tuple)):
            if len(v) != n_clips:
                raise ValueError(f"{name}: {len(v)} entries for {n_clips} clips (give one per clip or one for all)")
            return list(v)
        return [v] * n_clips

    ps, pe = per_clip("prompt", prompts), per_clip("prompt_embeds", prompt_embeds)
    ds, ss = per_clip("dense", dense), per_clip("sparse", sparse)
    return [LongVieClip(dense=d, sparse=s, prompt=p, prompt_embeds=e) for d, s, p, e in zip(ds, ss, ps, pe)]


def check_clip_video(name: str, k: int, v, height: int, width: int) -> np.ndarray:
    """A clip's control video as uint8 [81, height, width, 3] or a ValueError naming the fix."""
    v = np.asarray(v)
    if v.dtype != np.uint8 or v.ndim != 4 or v.shape[3] != 3:
        raise ValueError(f"{name} video of clip {k} must be uint8 [81, H, W, 3] RGB frames; got {v.dtype} "
                         f"{tuple(v.shape)} (engine.control.longvie.read_video reads an mp4)")
    if len(v) != CLIP_FRAMES:
        raise ValueError(f"{name} video of clip {k} has {len(v)} frames; every LongVie clip takes {CLIP_FRAMES} "
                         f"(cut a long video with engine.control.longvie.release_chunks)")
    if v.shape[1:3] != (height, width):
        from .control.longvie import resize_frames

        v = resize_frames(v, height, width)
    return v


class RandomImageTokens:
    """CLIP-token stand-in for an untrained preset (random weights, no image encoder): a
    seeded random projection of the 16x16-pooled image to [1, 257, dim]; never used with
    real weights (a real base without an image encoder is an error)."""

    def __init__(self, dim: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed + 1)
        self.proj = torch.randn(3 * 16 * 16, 257 * dim, generator=g) / (3 * 16 * 16) ** 0.5
        self.dim = dim

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(pixels.float().cpu(), 16).reshape(pixels.shape[0], -1)
        return (x @ self.proj).view(pixels.shape[0], 257, self.dim).to(pixels.device)


def first_image(first_frame, height: int, width: int) -> np.ndarray:
    """The first frame (path, PIL image or uint8 [H, W, 3]) as uint8 [height, width, 3],
    resized as ``inference.py``'s ``load_image`` (PIL ``Image.resize``, its default filter)."""
    from pathlib import Path

    from PIL import Image

    if first_frame is None:
        raise ValueError("recipe 'longvie2' starts from an image: pass first_frame (an image path, PIL image or array)")
    if isinstance(first_frame, (str, Path)):
        if not Path(first_frame).expanduser().is_file():
            raise FileNotFoundError(f"first_frame {str(first_frame)!r} does not exist")
        first_frame = Image.open(Path(first_frame).expanduser()).convert("RGB")
    if isinstance(first_frame, np.ndarray):
        if first_frame.dtype != np.uint8 or first_frame.ndim != 3 or first_frame.shape[2] != 3:
            raise ValueError(f"first_frame as an array must be uint8 [H, W, 3]; got {first_frame.dtype} "
                             f"{first_frame.shape}")
        first_frame = Image.fromarray(first_frame)
    if not isinstance(first_frame, Image.Image):
        raise ValueError(f"first_frame must be an image path, PIL image or uint8 array, got {type(first_frame).__name__}")
    return np.asarray(first_frame.convert("RGB").resize((width, height)))


def _videos(name: str, value, n_clips: int | None, height: int, width: int) -> list[np.ndarray] | None:
    """A control given as one long video [1 + 80 k, H, W, 3] (a depth map [T, H, W] for
    dense: normalised as the release), a file, or a list of per-clip videos / files."""
    from .control.longvie import read_video, release_chunks, release_depth

    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        vids = [read_video(v) if isinstance(v, (str, bytes)) or hasattr(v, "__fspath__") else np.asarray(v)
                for v in value]
    else:
        if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
            value = np.load(value) if str(value).endswith(".npy") else read_video(value)
        v = np.asarray(value)
        want = (3, 4) if name == "dense" else (4,)
        if v.ndim not in want:
            forms = "a depth map [T, H, W] or a video [T, H, W, 3]" if name == "dense" else "a video [T, H, W, 3]"
            one = " (one frame? a control is a video)" if v.ndim == 2 else ""
            raise ValueError(f"the {name} control has shape {tuple(v.shape)}{one}: give {forms} with T = 1 + 80 k "
                             f"frames (81 per clip), or a list of per-clip videos")
        if name == "dense" and v.ndim == 3:  # raw depth: the release's normalisation, then its chunks
            v = release_depth(v)
        vids = release_chunks(v)
    if n_clips is not None and len(vids) != n_clips:
        raise ValueError(f"the {name} control makes {len(vids)} clip(s) but {n_clips} are asked for")
    return [check_clip_video(name, k, v, height, width) for k, v in enumerate(vids)]


@dataclass
class LongViePrepared:
    """A checked LongVie 2 run (``engine.generate(..., recipe="longvie2")``)."""

    chain: LongVieChain
    devices: list[str]
    fps: float = 16.0
    on_clip: Callable[[int, np.ndarray], None] | None = None

    @property
    def video_frames(self) -> int:
        return self.chain.video_frames

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.chain.latent_hw

    def plan_line(self) -> str:
        n = len(self.chain.clips)
        rows = 1 if self.chain.batch_cfg else 2
        passes = n * self.chain.sampler.num_steps * rows
        return (f"plan: longvie2 release chain, {n} clip(s) of {CLIP_FRAMES} frames, {self.chain.sampler.num_steps} "
                f"steps x {'1 batched CFG pass' if rows == 1 else '2 CFG passes'} = {passes} DiT passes in one chain, "
                f"on {self.devices[0]}")

    def frames(self, stats=None) -> Iterator[np.ndarray]:
        t0 = stats.t0 if stats is not None and stats.t0 is not None else time.perf_counter()
        if stats is not None:
            stats.video_fps = self.fps
            stats.runtime.strategy = "longvie2"
            stats.runtime.workers = list(self.devices)
            steps = self.chain.sampler.num_steps * (1 if self.chain.batch_cfg else 2)
            stats.runtime.critical_path_passes = stats.runtime.total_passes = steps * len(self.chain.clips)
        for k, frames in enumerate(self.chain.clip_videos()):
            if self.on_clip is not None:
                self.on_clip(k, frames)
            if stats is not None:
                stats.record_chunk([k], len(frames) - (k > 0), time.perf_counter() - t0)
            yield frames if k == 0 else frames[1:]


def prepare_longvie(model, *, num_frames: int | None = None, first_frame=None, prompt=None, prompt_embeds=None,
                    negative_prompt=None, negative_prompt_embeds=None, height: int | None = None,
                    width: int | None = None, seed: int = 0, devices: list[str] | None = None, dtype=None,
                    sampler: SamplerConfig | None = None, guidance_scale: float | None = None, vae=None,
                    vae_dtype=None, text_encoder=None, image_encoder=None, control_weights=None, overlay=None,
                    cond=None, dense=None, sparse=None, batch_cfg: bool | None = None, engine_config=None,
                    on_clip: Callable[[int, np.ndarray], None] | None = None, **unused) -> LongViePrepared:
    """Check every input of a LongVie 2 run and build its chain (nothing denoised yet).

    model: a :class:`LongVieDiT`, or the base Wan2.1-I2V DiT (path / preset) with
    ``control_weights`` (the release's control.safetensors) and ``overlay`` (its
    dit.safetensors). Per-clip inputs: ``cond`` (the release's cond.json: text, depth mp4,
    track mp4 per clip) or ``prompt`` (one, or a list per clip) with ``dense`` (raw depth
    [T, H, W] normalised as the release, a depth video [1 + 80 k, H, W, 3] or a list of
    81-frame clips / mp4 files) and ``sparse`` (the track video, the same forms).
    num_frames: optional, must be 81 + 80 (n - 1) for the n clips given.
    image_encoder: an :class:`~engine.models.image.ImageEncoder` or its folder (default: the
    pipeline root's ``image_encoder/``). batch_cfg: both CFG rows in one forward (default:
    the recipe's, True). on_clip(k, frames uint8 [81, H, W, 3]): every clip's own video, as
    the release saves ``gen_videos/<name>/<k>.mp4``.
    """
    from .config import parse_dtype
    from .inputs import resolve_components, resolve_image_encoder, text_rows
    from .loading import load_longvie
    from .recipes import WAN_NEGATIVE_PROMPT

    ignored = sorted(k for k, v in unused.items() if v is not None and k not in ("strategy", "options", "checkpoint_key",
                                                                                  "decoder", "cpu_threads", "fit"))
    if ignored:
        raise TypeError(f"option(s) {ignored} do not apply to recipe 'longvie2'")
    if devices is not None and len(devices) > 1:
        raise ValueError(f"recipe 'longvie2' is one sequential chain (clip k+1 starts from clip k's decoded frames): "
                         f"give one device, not {devices}")
    device = (devices[0] if devices else None) or (engine_config.devices[0] if engine_config else None)
    height, width = height or SIZE[0], width or SIZE[1]
    if height % 16 or width % 16:
        raise ValueError(f"height x width = {height}x{width} must be multiples of 16 (the release runs 352x640)")
    if not isinstance(model, LongVieDiT):
        model = load_longvie(model, control_weights, overlay=overlay, dtype=dtype, device=device, seed=seed)
    elif control_weights is not None or overlay is not None:
        raise ValueError("model is already a LongVieDiT: drop control_weights / overlay (or pass the base instead)")
    comps = resolve_components(model, vae, text_encoder, seed=seed, vae_dtype=parse_dtype(vae_dtype or "float32"))
    image_encoder = resolve_image_encoder(model, image_encoder)
    if image_encoder is None:
        if comps.random_weights:
            image_encoder = RandomImageTokens(model.config.image_dim, seed)
        else:
            raise ValueError("LongVie 2 encodes every clip's first frame with CLIP: pass image_encoder=<folder of a "
                             "CLIPVisionModel + image processor> (the Wan2.1-I2V diffusers root's image_encoder/)")
    prompts = prompt
    if cond is not None:
        from .control.longvie import load_cond_json

        if dense is not None or sparse is not None:
            raise ValueError("give the controls either in cond (the release's cond.json) or as dense= / sparse=")
        samples = load_cond_json(cond)
        prompts = [s["text"] for s in samples] if prompt in (None, "") else prompt
        dense, sparse = [s["depth"] for s in samples], [s["track"] for s in samples]
    if dense is None or sparse is None:
        raise ValueError("LongVie 2 needs both controls per clip: dense (depth) and sparse (point tracks), or cond= "
                         "(the release's cond.json)")
    d = _videos("dense", dense, None, height, width)
    s = _videos("sparse", sparse, len(d), height, width)
    n = len(d)
    if num_frames is not None and num_frames != CLIP_FRAMES + (CLIP_FRAMES - 1) * (n - 1):
        raise ValueError(f"num_frames={num_frames} does not fit the {n} LongVie clip(s) given: they make "
                         f"{CLIP_FRAMES + (CLIP_FRAMES - 1) * (n - 1)} frames (81 + 80 per further clip)")
    clips = clip_inputs(n, prompts, prompt_embeds, d, s)
    sampler = sampler or SAMPLER
    if batch_cfg is None:
        batch_cfg = getattr(unused.get("options"), "batch_cfg", _R.options.batch_cfg)
    if guidance_scale is not None:
        sampler = sampler.replace(guidance_scale=float(guidance_scale))
    if negative_prompt is None and negative_prompt_embeds is None:
        negative_prompt = WAN_NEGATIVE_PROMPT
    texts = [text_rows(model, comps, c.prompt, c.prompt_embeds, negative_prompt, negative_prompt_embeds,
                       sampler.guidance_scale, seed) for c in clips]
    img = first_image(first_frame, height, width)
    chain = LongVieChain(model, comps.vae, image_encoder, texts, clips, img, seed=seed, sampler=sampler,
                         batch_cfg=batch_cfg)
    return LongViePrepared(chain, [str(model.device)], fps=float(model.config.fps), on_clip=on_clip)
