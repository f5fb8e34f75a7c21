"""Block-autoregressive rollout (Self-Forcing / CausVid semantics) over the KV cache, as a
plan the runtime executes.

The video's latent frames are cut into chunks of ``chunk_frames``; each chunk is denoised
by the sampler while attending to the clean frames already in the cache, then run once
more at noise level 0 so the cache holds its clean keys and values ("refresh"). In the
runtime this is the ``ar`` plan with ``context="cache"``: a chain of jobs pinned to the
worker that owns the fixed-slot cache (:func:`engine.denoise.denoise_job`). Noise for
frame position p is drawn from (seed, stream, p), never from a global stream, so the
output depends only on the plan, the seed and the weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .config import SamplerConfig
from .plans import build_plan
from .runtime import execute
from .sampling import config_sigmas


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


def ar_rollout(model, context, plan: RolloutPlan, *, latent_hw: tuple[int, int], sampler: SamplerConfig, seed: int,
               first_latent: torch.Tensor | None = None, condition: torch.Tensor | None = None,
               unified_noise: bool = False, compile_mode: str | None = None) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (positions, clean latents [1, C, n, h, w]) chunk by chunk, in frame order, from
    the ``ar`` KV-cache plan run on the model's device.

    context: prepared text context with batch 1, or 2 for classifier-free guidance
    (row 0 conditional, row 1 unconditional). first_latent [1,C,1,h,w]: the clean latent
    of frame 0 when ``plan.first_given`` (yielded first). condition [1,20,F,h,w]: I2V
    channels, sliced per chunk. unified_noise: every chunk starts from the same noise
    (frame k of a chunk gets the unified stream's noise k; LongVie 2).
    compile_mode: the DiT blocks under torch.compile (:mod:`engine.compile`).
    """
    if plan.first_given and first_latent is None:
        raise ValueError("plan.first_given needs first_latent [1, C, 1, h, w]")
    p = build_plan("ar", plan.num_frames, sigmas=config_sigmas(sampler).tolist(), first_given=plan.first_given,
                   chunk_frames=plan.chunk_frames, sink_frames=plan.sink_frames, window_frames=plan.window_frames,
                   unified_noise=unified_noise)
    owner = p.output_map()
    it = execute(p, {"main": model}, devices=[str(model.device)], make_context=lambda role, m: context, seed=seed,
                 sampler=sampler, latent_hw=latent_hw, inputs={0: first_latent} if plan.first_given else {},
                 condition=condition, cpu_threads=torch.get_num_threads(), compile_mode=compile_mode)
    positions: list[int] = []
    parts: list[torch.Tensor] = []
    for (q,), x in it:
        if positions and owner[q] != owner[positions[-1]]:
            yield positions, torch.cat(parts, 2)
            positions, parts = [], []
        positions.append(q)
        parts.append(x if owner[q] != "@input" else first_latent)
    if positions:
        yield positions, torch.cat(parts, 2)
