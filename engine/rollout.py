"""Block-autoregressive rollout (Self-Forcing / CausVid semantics) over the KV cache.

The video's latent frames are cut into chunks of ``chunk_frames``; each chunk is denoised
by the sampler while attending to the clean frames already in the cache, then run once
more at noise level 0 so the cache holds its clean keys and values ("refresh"). Noise for
frame position p is drawn from (seed, p, step), never from a global stream, so the output
depends only on the plan, the seed and the weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .config import SamplerConfig
from .kvcache import KVCache
from .models.wan import Context, WanDiT
from .sampling import FewStepSampler, cfg, make_sampler

# Noise streams: 0 is the initial noise of a frame; 1 + i the fresh noise of few-step
# re-noising after step i.
INITIAL_NOISE_STREAM = 0
UNIFIED_STREAM = 999  # same as engine.plans.core.UNIFIED_STREAM (block 0)


@dataclass(frozen=True)
class RolloutPlan:
    """Which latent frames are generated, in which chunks, with what attention window.

    num_frames: latent frames of the whole video; first_given: frame 0 is given (clean
    first-frame latent) rather than generated; chunk_frames: frames per chunk;
    sink_frames / window_frames: the KV cache's bounded window (None: unbounded).
    """

    num_frames: int
    chunk_frames: int = 3
    sink_frames: int = 0
    window_frames: int | None = None
    first_given: bool = False

    def chunks(self) -> list[list[int]]:
        """Frame positions of each generated chunk, in order."""
        start = 1 if self.first_given else 0
        return [list(range(s, min(s + self.chunk_frames, self.num_frames))) for s in range(start, self.num_frames, self.chunk_frames)]


def frame_noise(seed: int, positions: list[int], shape_bchw: tuple[int, ...], stream: int, device, dtype) -> torch.Tensor:
    """Noise [B,C,n,h,w] for frame ``positions``, addressed by (seed, stream, position)."""
    from kernels.noise import frame_noise as _frame_noise

    return _frame_noise(seed, positions, shape_bchw, stream=stream, device=device, dtype=dtype)


def make_cache(model: WanDiT, plan: RolloutPlan, batch: int, h: int, w: int) -> KVCache:
    """A KV cache sized for ``plan`` (latent size h x w, ``batch`` rows incl. CFG)."""
    cfg_ = model.config
    cache = KVCache(
        num_layers=cfg_.num_layers,
        batch=batch,
        num_heads=cfg_.num_heads,
        head_dim=cfg_.head_dim,
        tokens_per_frame=model.tokens_per_frame(h, w),
        chunk_frames=plan.chunk_frames,
        sink_frames=plan.sink_frames,
        window_frames=plan.window_frames,
        max_frames=plan.num_frames,
        device=model.device,
        dtype=model.dtype,
    )
    if getattr(model, "static_cache", False):  # CUDA graphs (engine.compile): the buffers never move
        import torch._dynamo as dynamo

        dynamo.mark_static_address(cache.k)
        dynamo.mark_static_address(cache.v)
    return cache


def _sampler_for(sampler: SamplerConfig):
    if sampler.kind == "fewstep":
        return make_sampler("fewstep", shift=sampler.shift, timesteps=sampler.timesteps)
    return make_sampler(sampler.kind, num_steps=sampler.num_steps, shift=sampler.shift)


@torch.no_grad()
def ar_rollout(
    model: WanDiT,
    context: Context,
    plan: RolloutPlan,
    *,
    latent_hw: tuple[int, int],
    sampler: SamplerConfig,
    seed: int,
    first_latent: torch.Tensor | None = None,
    condition: torch.Tensor | None = None,
    unified_noise: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (positions, clean latents [1, C, n, h, w]) chunk by chunk, in frame order.

    context: prepared text context with batch 1, or 2 for classifier-free guidance
    (row 0 conditional, row 1 unconditional). first_latent [1,C,1,h,w]: the clean latent
    of frame 0 when ``plan.first_given`` (yielded first). condition [1,20,F,h,w]: I2V
    channels, sliced per chunk. unified_noise: every chunk starts from the same noise
    (frame k of a chunk gets noise (seed, UNIFIED_STREAM, k); LongVie 2).
    """
    h, w = latent_hw
    batch = context.batch
    guided = batch == 2
    if guided and sampler.guidance_scale == 1.0:
        raise ValueError("a 2-row context means classifier-free guidance, but guidance_scale is 1.0")
    C = model.config.out_channels
    dev, dt = model.device, model.dtype
    cache = make_cache(model, plan, batch, h, w)
    cond = None if condition is None else condition.to(dev, dt).expand(batch, -1, -1, -1, -1)

    def forward(x: torch.Tensor, t: torch.Tensor, positions: list[int], slots) -> torch.Tensor:
        xb = x.expand(batch, -1, -1, -1, -1)
        c = None if cond is None else cond[:, :, positions[0]:positions[-1] + 1]  # consecutive: a view
        tb = t.to(dev).float().reshape(1, -1).expand(batch, len(positions))
        kw = {"timeline_positions": positions} if getattr(model, "takes_timeline_positions", False) else {}
        v = model(xb, tb, context, condition=c, frame_positions=positions, kv_cache=cache, cache_slots=slots, **kw)
        if guided:
            return cfg(v[:1], v[1:], sampler.guidance_scale)
        return v

    if plan.first_given:
        if first_latent is None:
            raise ValueError("plan.first_given needs first_latent [1, C, 1, h, w]")
        slots = cache.claim([0])
        forward(first_latent.to(dev, dt), torch.zeros(1), [0], slots)
        yield [0], first_latent

    chunks = plan.chunks()
    for ci, positions in enumerate(chunks):
        n = len(positions)
        slots = cache.claim(positions)
        steps = _sampler_for(sampler)
        if unified_noise:
            x = frame_noise(seed, list(range(n)), (1, C, h, w), UNIFIED_STREAM, dev, torch.float32)
        else:
            x = frame_noise(seed, positions, (1, C, h, w), INITIAL_NOISE_STREAM, dev, torch.float32)
        for i in range(steps.num_steps):
            t = steps.timestep(i)
            t = t.expand(n) if t.dim() == 0 else t
            v = forward(x.to(dt), t, positions, slots)
            noise = None
            if isinstance(steps, FewStepSampler) and i + 1 < steps.num_steps:
                noise = frame_noise(seed, positions, (1, C, h, w), 1 + i, dev, torch.float32)
            x = steps.step(i, x, v.float(), noise=noise)
        x0 = x
        if ci + 1 < len(chunks):  # refresh the cache with the clean chunk at noise level 0
            forward(x0.to(dt), torch.zeros(n), positions, slots)
        yield positions, x0
