"""The one denoise core: every method's sampling -- KV-cache chains, whole sequences with
frame visibility, batched jobs, LongVie 2's clips -- runs through :func:`sample`, the one
loop over sampler steps in the engine (``tests/test_structure.py`` fails on a second).

A denoise job, narrated with Self-Forcing's inference steps (``pipeline/causal_inference.py``:
KV cache, context, denoise loop, record, refresh at t = 0):

1. **initial latents** (:func:`initial_latents`): the job's generated frames start from
   noise addressed by (seed, stream, position) -- fresh, planning-interpolated (MMPL) or
   unified -- with re-noised anchors (MiLA's JDC structured noise) where a frame has a
   source;
2. **cache** (:class:`CachePass`, a job with a KV cache): the job claims fixed slots for its
   frames in its chain's cache;
3. **context**: context frames handed in and not yet cached are written by clean passes at
   t = 0 (:class:`CachePass`); a job without a cache holds its context frames clean in the
   one sequence pass (:class:`SequencePass`, B batched jobs x CFG rows, frame visibility);
4. **denoise loop** (:func:`sample`): per sampler step, the pass builder's guided flow
   (CFG in one row order: conditional, then unconditional; :func:`guided`), the sampler's
   step, and fresh noise where the sampler is stochastic (few-step re-noising, DPM's SDE
   term; :func:`renoise`);
5. **record**: the clean latents of the generated frames are the job's result;
6. **refresh at t = 0** (:meth:`CachePass.refresh`, ``job.extra_passes``): one more pass
   writes the clean result to the cache for the next job of the chain.

A pass builder is anything with ``predict(i, t, xs) -> guided flows`` (:class:`PassBuilder`);
the executor (:mod:`engine.runtime`) picks the builder per job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from . import noise_streams as ns
from .config import SamplerConfig
from .plans.core import Job
from .sampling import Sampler, cfg as apply_cfg, sampler_for


# ----------------------------------------------------------------------------------
# one denoise job
# ----------------------------------------------------------------------------------
def initial_latents(job: Job, sources: dict[int, torch.Tensor], *, seed: int, shape_chw: tuple[int, int, int],
                    device, use_kernel: bool | None = None, noise: torch.Tensor | None = None,
                    anchor_cutoff: float = 0.1) -> torch.Tensor:
    """Initial noisy latents [1, C, G, h, w] (float32) of a job's generated frames: noise
    by the job's mode (:mod:`engine.noise_streams`), re-noised anchors (MiLA's JDC,
    :class:`engine.plans.core.Job`) x = (1 - s) x0 + s eps_total with s the anchor's first
    sigma and

        eps_total = sqrt(1 - beta^2) eps + beta eps_s,   beta = ``job.anchor_structure``,
        eps_s = standardise(H(x0)),

    eps the frame's noise of the job's mode, H the Gaussian high-pass of ``engine_kernels.spectral``
    with cutoff ``anchor_cutoff`` (cycles per latent pixel), standardise = zero mean, unit
    variance per (channel, frame) over (h, w) (a frame whose high-pass is constant keeps
    plain noise). Var(eps_total) = 1 for eps independent of x0. beta = 0 is plain Gaussian
    re-noising, bit for bit the path without structured noise.
    ``use_kernel`` (default: on CUDA) computes interpolation, fresh share and anchor
    re-noising in one pass of the Triton ``noise_init`` kernel (and H with the Triton
    ``highpass``); else their torch references. With beta > 0 the job's noise eps is made
    first (same kernel / reference), mixed with eps_s, and that eps_total is passed in as the
    frames' own noise (identity interpolation) for the same re-noising pass.
    ``noise`` [1, C, F, h, w]: per-position noise replacing the seeded draws (fresh and
    interpolated modes)."""
    from engine_kernels.noise import frame_noise, noise_init, noise_init_reference
    from engine_kernels.spectral import highpass, highpass_reference

    dev = torch.device(device)
    use_kernel = dev.type == "cuda" if use_kernel is None else use_kernel
    gen = list(job.generated_positions)
    shape = (1, *shape_chw)
    block = job.noise_stream
    # a generated frame with a source is a re-noised anchor (from its x0 at its first sigma);
    # without one it starts from pure noise, whatever the schedule's first sigma (e.g. Wan's 0.9998)
    anchor = [s is not None for s, g in zip(job.sources, job.generated) if g]
    start = [float(s) if a else 1.0 for s, a in zip(job.sigmas[0], anchor)]
    anchors = any(anchor)
    planning, pn, fresh, rho, interp = gen, None, None, job.noise_rho, job.noise == "interp"

    def drawn(positions, stream):
        if noise is not None and stream == ns.stream(block, ns.INITIAL):
            return noise[:, :, list(positions)].float()
        return frame_noise(seed, positions, shape, stream=stream)

    if job.noise == "unified":
        pn = frame_noise(seed, list(range(len(gen))), shape, stream=ns.stream(block, ns.UNIFIED))
    elif interp:
        planning = sorted(job.planning)
        pn = drawn(planning, ns.stream(block, ns.INITIAL))
        if job.noise_rho > 0:
            fresh = frame_noise(seed, gen, shape, stream=ns.stream(block, ns.FRESH_SHARE))
    else:
        pn = drawn(gen, ns.stream(block, ns.INITIAL))
    x0 = None
    if anchors:
        x0 = torch.cat([sources[p].to(dev, torch.float32) if a else torch.zeros(shape, device=dev)[:, :, None]
                        for p, a in zip(gen, anchor)], 2)
    beta = float(job.anchor_structure)
    if anchors and beta > 0:  # JDC structured noise: eps_total first, then the one re-noising pass below
        if use_kernel:
            eps = noise_init(gen, planning, pn.to(dev), fresh=fresh.to(dev) if fresh is not None else None, rho=rho)
        elif interp:
            eps = noise_init_reference(gen, planning, pn, fresh=fresh, rho=rho).to(dev)
        else:
            eps = pn.to(dev)
        ks = [k for k, a in enumerate(anchor) if a]
        xa = x0[:, :, ks]
        fast = use_kernel and max(xa.shape[-2:]) <= 256  # the Triton high-pass takes h, w <= 256
        hi = (highpass(xa.contiguous(), anchor_cutoff) if fast else highpass_reference(xa, anchor_cutoff)).float()
        mean = hi.mean(dim=(-2, -1), keepdim=True)
        std = hi.std(dim=(-2, -1), keepdim=True, correction=0)
        flat = std <= 1e-6 * xa.abs().amax(dim=(-2, -1), keepdim=True)  # H(x0) constant: no structure
        eps_s = (hi - mean) / torch.where(flat, torch.ones_like(std), std)
        mixed = (1.0 - beta * beta) ** 0.5 * eps[:, :, ks] + beta * eps_s
        eps = eps.clone()
        eps[:, :, ks] = torch.where(flat, eps[:, :, ks], mixed)
        planning, pn, fresh, rho, interp = gen, eps, None, 0.0, False
    if use_kernel:
        fresh = fresh.to(dev) if fresh is not None else None
        return noise_init(gen, planning, pn.to(dev), fresh=fresh, rho=rho, x0=x0,
                          sigma=list(start) if anchors else None)
    if interp:
        eps = noise_init_reference(gen, planning, pn, fresh=fresh, rho=rho)
    else:
        eps = pn
    eps = eps.to(dev)
    if anchors:
        for k, s in enumerate(start):
            if anchor[k]:
                eps[:, :, k] = (1 - s) * x0[:, :, k] + s * eps[:, :, k]
    return eps


def _seen_context(job: Job, rows: list[int], among: list[int] | None = None) -> list[int]:
    """Context positions the job's frames ``rows`` see (they must all see the same ones:
    one cached pass attends alike for every frame); ``among``: only these context indices."""
    ctx = [c for c, g in enumerate(job.generated) if not g and (among is None or c in among)]
    seen = {tuple(c for c in ctx if job.visibility[r][c] and c not in rows) for r in rows}
    if len(seen) != 1:
        raise ValueError(f"job {job.id!r}: frames {[job.positions[r] for r in rows]} of one cached pass see different "
                         f"context; a KV-cache pass attends alike for all its frames")
    return [job.positions[c] for c in seen.pop()]


def _fill_passes(job: Job, fill: list[int]) -> list[tuple[list[int], list[int]]]:
    """Clean passes that write handed-in context ``fill`` (indices) to a plan-visibility
    cache: consecutive frames with the same visibility row go together, each pass seeing
    the context its rows list (written before it). Returns [(indices, positions seen)]."""
    groups: list[list[int]] = []
    for i in fill:
        if groups and job.visibility[i] == job.visibility[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [(g, _seen_context(job, g)) for g in groups]


class NonFiniteError(RuntimeError):
    """A job produced NaN or inf latents."""


def check_finite_latents(job, x: torch.Tensor, positions) -> None:
    """One reduction and one host sync per job (never per step): raise
    :class:`NonFiniteError` naming the job, the frame positions and the likely causes."""
    finite = torch.isfinite(x).flatten(3).all(-1).all(1)[0]  # [frames]
    if bool(finite.all()):
        return
    bad = [p for p, ok in zip(positions, finite.tolist()) if not ok]
    raise NonFiniteError(
        f"non-finite latents (NaN/inf) from job {job.id!r} at positions {bad}: likely a float16 overflow (run "
        f"dtype='bf16' or 'fp32'), NaN/inf in the weights, or bad embeddings / condition inputs")


# ----------------------------------------------------------------------------------
# the core: one loop over sampler steps
# ----------------------------------------------------------------------------------
class PassBuilder(Protocol):
    """Builds the model passes of one denoise step for B jobs: ``predict(i, t, xs)`` takes
    the step index, the sampler's timestep (0-d or [G]) and each job's current latents
    [1, C, G, h, w] (float32) and returns each job's guided flow over its generated frames
    [1, C, G, h, w] (any float dtype)."""

    def predict(self, i: int, t: torch.Tensor, xs: list[torch.Tensor]) -> list[torch.Tensor]: ...


def guided(v: torch.Tensor, rows: int, scale: float) -> torch.Tensor:
    """One job's model output over its context rows [rows, ...] -> its flow [1, ...]:
    classifier-free guidance for two rows (row 0 conditional, row 1 unconditional: the
    engine's one row order), the output itself for one."""
    return apply_cfg(v[:1], v[1:], scale) if rows == 2 else v


def check_guidance(rows: int, scale: float) -> None:
    """A two-row (CFG) context needs a guidance scale != 1 (else the second row is wasted)."""
    if rows == 2 and scale == 1.0:
        raise ValueError("a 2-row context means classifier-free guidance, but guidance_scale is 1.0")


def renoise(jobs: Sequence[Job], seed: int, shape: tuple[int, ...], device) -> Callable[[int, int], torch.Tensor]:
    """noise(k, i): the fresh noise [1, C, G, h, w] of job k's generated frames at step i for
    a stochastic sampler (few-step re-noising, DPM's SDE term), addressed by (seed, the job's
    stream, step, position): a job's draws never depend on its batch companions."""
    from engine_kernels.noise import frame_noise

    def noise(k: int, i: int) -> torch.Tensor:
        job = jobs[k]
        return frame_noise(seed, list(job.generated_positions), shape,
                           stream=ns.stream(job.noise_stream, ns.renoise(i)), device=device)

    return noise


def sample(samplers: Sequence[Sampler], xs: list[torch.Tensor], predict: Callable,
           noise: Callable[[int, int], torch.Tensor] | None = None) -> list[torch.Tensor]:
    """THE denoise loop (step 4 of the module docstring): for every step i of the samplers
    (one per job, equal tables), the pass builder's guided flows ``predict(i, t, xs)``, then
    each job's sampler step; a stochastic sampler gets ``noise(k, i)`` on every step but the
    last. xs: each job's initial latents [1, C, G, h, w]; returns their final latents."""
    n = samplers[0].num_steps
    for i in range(n):
        vs = predict(i, samplers[0].timestep(i), xs)
        xs = [s.step(i, x, v.float(), noise=noise(k, i) if noise is not None and s.stochastic and i + 1 < n else None)
              for k, (s, x, v) in enumerate(zip(samplers, xs, vs))]
    return xs


# ----------------------------------------------------------------------------------
# pass builders
# ----------------------------------------------------------------------------------
class CachePass:
    """Passes of a job with a KV cache (steps 2, 3 and 6): ``fill`` writes the handed-in
    context frames not yet cached by clean passes at t = 0 and claims the generated frames'
    slots; ``predict`` runs the generated frames alone against the cache; ``refresh`` writes
    their clean result. Guided over the context's rows (one, or CFG's two)."""

    def __init__(self, model, context, job: Job, sources: dict[int, torch.Tensor], cache, *, guidance: float,
                 rope=None, condition: torch.Tensor | None = None, cache_write: bool = True):
        self.model, self.context, self.job, self.sources, self.cache = model, context, job, sources, cache
        self.rows = getattr(context, "batch", 1)
        check_guidance(self.rows, guidance)
        self.guidance = guidance
        self.rope = list(job.positions if rope is None else rope)
        dev, dt = model.device, model.dtype
        self.cond = None if condition is None else condition.to(dev, dt).expand(self.rows, -1, -1, -1, -1)
        self.timeline = getattr(model, "takes_timeline_positions", False)
        self.gen_idx = [i for i, g in enumerate(job.generated) if g]
        self.by_plan = getattr(cache, "plan_visibility", False)
        self.cache_write = cache_write
        self.slots = None

    def forward(self, x, t, idx: list[int], slots) -> torch.Tensor:
        """The guided model output over the job's frames ``idx`` (indices into positions)."""
        m, job, dev = self.model, self.job, self.model.device
        pos = [job.positions[i] for i in idx]
        kw = {}
        if self.cond is not None:
            kw["condition"] = _positions_slice(self.cond, pos)
        if self.timeline:
            kw["timeline_positions"] = pos
        tb = t.to(dev).float().reshape(1, -1).expand(self.rows, len(idx))
        v = m(x.to(m.dtype).expand(self.rows, -1, -1, -1, -1), tb, self.context,
              frame_positions=[self.rope[i] for i in idx], kv_cache=self.cache, cache_slots=slots, **kw)
        return guided(v, self.rows, self.guidance)

    def fill(self) -> None:
        """Steps 2-3: clean passes write the context frames handed in (e.g. a given first
        frame); then the generated frames claim their slots."""
        job, dev, dt = self.job, self.model.device, self.model.dtype
        fill = [i for i, g in enumerate(job.generated) if not g and job.positions[i] in self.sources]
        for group, see in (_fill_passes(job, fill) if self.by_plan else ([(fill, None)] if fill else [])):
            clean = torch.cat([self.sources[job.positions[i]].to(dev, dt) for i in group], 2)
            self.forward(clean, torch.zeros(len(group)), group,
                         self.cache.claim([job.positions[i] for i in group], see=see))
        self.slots = self.cache.claim([job.positions[i] for i in self.gen_idx],
                                      see=_seen_context(job, self.gen_idx) if self.by_plan else None,
                                      write=self.cache_write or not self.by_plan)

    def predict(self, i: int, t: torch.Tensor, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(self.gen_idx)
        return [self.forward(xs[0], t.expand(n) if t.dim() == 0 else t, self.gen_idx, self.slots)]

    def refresh(self, x: torch.Tensor) -> None:
        """Step 6: the clean result [1, C, G, h, w] written to the cache at t = 0."""
        self.forward(x, torch.zeros(len(self.gen_idx)), self.gen_idx, self.slots)


@torch.no_grad()
def denoise_job(model, context, job: Job, sources: dict[int, torch.Tensor], *, seed: int, sampler: SamplerConfig,
                latent_hw: tuple[int, int], rope: tuple[int, ...] | None = None,
                condition: torch.Tensor | None = None, cache=None, noise: torch.Tensor | None = None,
                cache_write: bool = True) -> torch.Tensor:
    """Run one denoise job; returns the clean latents [1, C, G, h, w] (float32) of its
    generated frames, in position order.

    sources: {position: clean latent [1, C, 1, h, w]} for every frame the job is handed
    (context frames and re-noised anchors). rope: RoPE positions of the job's frames
    (default: its positions). condition: the I2V / control condition [1, c, F, h, w] over
    the whole timeline (sliced to the job's positions). cache: the job's KV cache (a
    :class:`~engine.kvcache.KVCache` of its chain): context frames handed in ``sources``
    are written to it by one pass at noise level 0, the generated frames are denoised
    against it (the pass holds only them), and ``job.extra_passes`` refreshes it with the
    clean result -- Self-Forcing's block-autoregressive step (:class:`CachePass`). noise: a
    replayed timeline noise tensor (:func:`engine.runtime.execute`). cache_write=False (a
    plan-visibility cache's last job, which nothing reads after): the generated frames
    attend to the cache and themselves without being stored. Without a cache this is
    :func:`denoise_jobs` of one job.
    """
    if cache is None:
        return denoise_jobs(model, context, [job], [sources], seed=seed, sampler=sampler, latent_hw=latent_hw,
                            ropes=[rope], condition=condition, noise=noise)[0]
    dev = model.device
    h, w = latent_hw
    C = model.config.out_channels
    passes = CachePass(model, context, job, sources, cache, guidance=sampler.guidance_scale, rope=rope,
                       condition=condition, cache_write=cache_write)
    x = initial_latents(job, sources, seed=seed, shape_chw=(C, h, w), device=dev, noise=noise)
    passes.fill()
    steps = sampler_for(sampler, torch.tensor([row[0] for row in job.sigmas], dtype=torch.float64))
    (x,) = sample([steps], [x], passes.predict, renoise([job], seed, (1, C, h, w), dev))
    if job.extra_passes:
        passes.refresh(x)
    return x


def channel_condition(job: Job, sources: dict[int, torch.Tensor], n: int, chw: tuple[int, int, int], dev, dt
                      ) -> torch.Tensor:
    """The channel condition [1, C, n, h, w] of a job with ``channel_frames``: zeros, with
    each listed source latent [1, C, 1, h, w] at its frame slot (CogVideoX-I2V's image
    latent on latent 0; LongDWM's last keyframe on the last)."""
    C, h, w = chw
    cond = torch.zeros(1, C, n, h, w, device=dev, dtype=dt)
    for slot, p, _ in job.channel_frames:
        cond[:, :, slot:slot + 1] = sources[p].to(dev, dt)
    return cond


def _positions_slice(t: torch.Tensor, pos: list[int]) -> torch.Tensor:
    """``t[:, :, pos]`` (a view where the positions are consecutive)."""
    return t[:, :, pos[0]:pos[-1] + 1] if pos == list(range(pos[0], pos[-1] + 1)) else t[:, :, pos]


def _rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """[B, ...] -> [B * rows, ...], every job's row repeated ``rows`` times in place (job
    major: CFG's (conditional, unconditional) rows of job 0, then job 1, ...); a view for
    one job (its rows are the same tensor, as one job's CFG pass always had)."""
    return x[:, None].expand(x.shape[0], rows, *x.shape[1:]).reshape(x.shape[0] * rows, *x.shape[1:])


def batch_key(job, rope: tuple[int, ...] | None = None):
    """What must be equal for denoise jobs to share one batched forward per step (None:
    the job always runs alone -- a KV-cache job, or not a denoise job): model role, frame
    layout (generated / context pattern, hence frame count), sigma table (hence sampler
    steps), visibility and RoPE positions (one pass has one of each). Noise, sources,
    anchors and condition slices are the job's own and may differ."""
    if not isinstance(job, Job) or job.cache is not None:
        return None
    return (job.model, job.generated, job.sigmas, job.visibility,
            tuple(job.positions if rope is None else rope), tuple(slot for slot, _, _ in job.channel_frames))


class _NotStackable(Exception):
    pass


def _map_rows(obj, rows: int, fn):
    """``obj`` (a context: a dataclass, tuple or list of tensors, recursively) with ``fn``
    applied to every tensor, each of which must have the context's ``rows`` first."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 0 or obj.shape[0] != rows:
            raise _NotStackable
        return fn(obj)
    if type(obj) in (list, tuple):
        return type(obj)(_map_rows(o, rows, fn) for o in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _map_rows(getattr(obj, f.name), rows, fn)
                                           for f in dataclasses.fields(obj) if f.init})
    raise _NotStackable


def stack_context(context, n: int):
    """The text context of ``n`` jobs in one batched pass: every row of ``context`` (one, or
    CFG's two) repeated for each job, job major ([cond, uncond] * n). None when the
    context is not a prepared context whose tensors all lead with its rows (a dataclass
    such as :class:`engine.models.wan.Context`): such a model's jobs run alone."""
    rows = getattr(context, "batch", None)
    if not isinstance(rows, int) or n < 1:
        return None
    try:
        out = _map_rows(context, rows, lambda t: t.repeat(n, *([1] * (t.dim() - 1))))
    except _NotStackable:
        return None
    return out if getattr(out, "batch", None) == rows * n else None


def context_prefix(stacked, rows: int, m: int):
    """The first ``m`` jobs' rows of a :func:`stack_context` result (views, no copy)."""
    return _map_rows(stacked, stacked.batch, lambda t: t[:m * rows])


def batchable(model, context) -> bool:
    """May the executor run several of this model's jobs in one batched forward, with each
    job's result bit for bit what it gets alone? Not an exported model (fixed-batch graphs),
    nor one taking per-pass timeline positions (its controls are addressed per pass); the
    context must stack (:func:`stack_context`) and have CFG's two rows: a job alone is then
    already a batch of two, and a batch of several runs the same kernels. A one-row job
    alone is a batch of ONE, which some kernels run by another algorithm (PyTorch's CPU
    Conv3d -- the patch embedding -- uses its slow path for batch 1 and oneDNN above), so
    batching it would change the last bits and make the output depend on which jobs
    happened to be ready together; such jobs run alone (:func:`denoise_jobs` still takes
    them)."""
    if getattr(model, "is_exported", False) or getattr(model, "takes_timeline_positions", False):
        return False
    rows = getattr(context, "batch", 1)
    return isinstance(rows, int) and rows >= 2 and stack_context(context, 2) is not None


@torch.no_grad()
def denoise_jobs(model, context, jobs: list[Job], sources: list[dict[int, torch.Tensor]], *, seed: int,
                 sampler: SamplerConfig, latent_hw: tuple[int, int], ropes: list | None = None,
                 condition: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                 batch_context=None) -> list[torch.Tensor]:
    """Run denoise jobs without a KV cache that share a :func:`batch_key` as ONE batched
    forward per sampler step; returns each job's clean latents [1, C, G, h, w] (float32),
    as :func:`denoise_job` would one by one (the batch of one is that path).

    Every job sits in the whole-sequence pass: its context frames clean, its generated
    frames at their per-frame timesteps, its visibility. The pass holds B jobs x the
    context's rows (CFG's conditional and unconditional rows of each job side by side).
    Each job keeps its own initial noise (:func:`initial_latents`, by (seed, position)),
    its own sources (context frames, anchors), its own condition slice (by its positions)
    and its own sampler state; the jobs share ``context`` (one model role's text context)
    and, being batch-key equal, the frame layout, sigma table, visibility and RoPE.
    sources: one {position: clean latent} per job; ropes: one RoPE tuple per job (None:
    its positions); batch_context: ``context`` already stacked for these B jobs
    (:func:`stack_context`; else it is stacked here). Raises ValueError for jobs that may
    not share a batch.
    """
    B = len(jobs)
    if B == 0:
        return []
    ropes = list(ropes) if ropes is not None else [None] * B
    if len(sources) != B or len(ropes) != B:
        raise ValueError(f"denoise_jobs: {B} jobs need {B} sources and ropes, got {len(sources)} and {len(ropes)}")
    ropes = [tuple(j.positions if r is None else r) for j, r in zip(jobs, ropes)]
    keys = [batch_key(j, r) for j, r in zip(jobs, ropes)]
    if any(k is None for k in keys):
        bad = next(j.id for j, k in zip(jobs, keys) if k is None)
        raise ValueError(f"denoise_jobs runs jobs without a KV cache; job {bad!r} has one (denoise_job runs it)")
    if any(k != keys[0] for k in keys):
        bad = next(j.id for j, k in zip(jobs, keys) if k != keys[0])
        raise ValueError(f"job {bad!r} cannot share a batched pass with {jobs[0].id!r}: model role, frame layout, "
                         f"sigma table, visibility and RoPE positions must be equal")
    dev = model.device
    h, w = latent_hw
    C = model.config.out_channels
    rows = getattr(context, "batch", 1)
    check_guidance(rows, sampler.guidance_scale)
    ctx = context
    if B > 1:
        if getattr(model, "takes_timeline_positions", False):
            raise ValueError("a model taking timeline_positions addresses its controls per pass: its jobs run alone")
        ctx = batch_context if batch_context is not None else stack_context(context, B)
        if ctx is None or getattr(ctx, "batch", None) != B * rows:
            raise ValueError(f"the text context ({type(context).__name__}) cannot be stacked for {B} jobs")
    passes = SequencePass(model, ctx, rows, jobs, sources, ropes[0], guidance=sampler.guidance_scale,
                          latent_chw=(C, h, w), condition=condition)
    table = torch.tensor(jobs[0].sigmas, dtype=torch.float64)  # [N+1, G]
    xs = [initial_latents(job, src, seed=seed, shape_chw=(C, h, w), device=dev, noise=noise)
          for job, src in zip(jobs, sources)]
    return sample([sampler_for(sampler, table) for _ in jobs], xs, passes.predict,
                  renoise(jobs, seed, (1, C, h, w), dev))


class SequencePass:
    """The whole-sequence pass of B batch-key-equal jobs without a KV cache (step 3): each
    job's context frames clean and its generated frames at their per-frame timesteps, in
    one forward of B jobs x ``rows`` context rows (job major) with the jobs' shared frame
    visibility and RoPE; each job's own channel frames or condition slice."""

    def __init__(self, model, context, rows: int, jobs: list[Job], sources: list[dict[int, torch.Tensor]], rope,
                 *, guidance: float, latent_chw: tuple[int, int, int], condition: torch.Tensor | None = None):
        dev, dt = model.device, model.dtype
        C, h, w = latent_chw
        job0 = jobs[0]
        B, n = len(jobs), len(job0.positions)
        self.model, self.context, self.rows, self.B, self.rope, self.guidance = model, context, rows, B, rope, guidance
        self.gen_idx = [i for i, g in enumerate(job0.generated) if g]
        ctx_idx = [i for i, g in enumerate(job0.generated) if not g]
        self.vis = torch.tensor(job0.visibility, dtype=torch.bool, device=dev)
        self.gen_t = torch.tensor(self.gen_idx, device=dev)
        self.kw = {}
        if job0.channel_frames:
            if condition is not None:
                raise ValueError(f"job {job0.id!r} takes clean latents on its channels; a whole-timeline condition "
                                 f"(I2V, controls) cannot be combined with it")
            parts = [channel_condition(j, src, n, (C, h, w), dev, dt) for j, src in zip(jobs, sources)]
            self.kw["condition"] = _rows(parts[0] if B == 1 else torch.cat(parts, 0), rows)
        elif condition is not None:
            cond = condition.to(dev, dt)
            parts = [_positions_slice(cond, list(j.positions)) for j in jobs]
            self.kw["condition"] = _rows(parts[0] if B == 1 else torch.cat(parts, 0), rows)
        if getattr(model, "takes_timeline_positions", False):
            self.kw["timeline_positions"] = list(job0.positions)
        self.full = torch.empty(B, C, n, h, w, device=dev, dtype=torch.float32)
        if ctx_idx:
            idx = torch.tensor(ctx_idx, device=dev)
            for k, (job, src) in enumerate(zip(jobs, sources)):
                clean = torch.cat([src[job.positions[i]].to(dev, torch.float32) for i in ctx_idx], 2)
                self.full[k:k + 1].index_copy_(2, idx, clean)
        self.n = n

    def predict(self, i: int, t: torch.Tensor, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        m, rows = self.model, self.rows
        for k in range(self.B):
            self.full[k:k + 1].index_copy_(2, self.gen_t, xs[k])
        tt = torch.zeros(self.n, dtype=torch.float32)
        tt[self.gen_idx] = t.float()  # the schedule's own timesteps (Wan's truncated ones)
        tb = tt.to(m.device).float().reshape(1, -1).expand(self.B * rows, self.n)
        v = m(_rows(self.full.to(m.dtype), rows), tb, self.context, frame_positions=list(self.rope),
              visibility=self.vis, **self.kw)
        return [guided(v[k * rows:(k + 1) * rows], rows, self.guidance).index_select(2, self.gen_t)
                for k in range(self.B)]
