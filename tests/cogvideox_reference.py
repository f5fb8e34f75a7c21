"""CogVideoX sampling as diffusers' pipelines do it, in variance-preserving variables: the
tests' reference for the engine's CogVideoX path (which runs CogVideoX's DDIM / DPM as flow
Euler / DPM-Solver++ SDE steps through the one runtime, ``engine.denoise``).

:func:`cogvideox_sample` is CogVideoXPipeline / CogVideoXImageToVideoPipeline's loop (CFG
rows ``[negative, positive]``, optional dynamic CFG); :class:`CogVideoXDDIMSampler` and
:class:`CogVideoXDPMSampler` step CogVideoXDDIMScheduler / CogVideoXDPMScheduler's
formulas with the DiT's raw output and integer timesteps. Each is checked against
diffusers itself in ``tests/test_cogvideox_pipeline.py``; the engine's path is then
checked against both.
"""

from __future__ import annotations

import math

import torch

from engine.models.cogvideox import CogVideoXDiT, cogvideox_scheduler_for
from engine.sampling import COGVIDEOX_SAMPLER_KINDS, CogVideoXSchedule


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 latents, else float32 (the samplers' arithmetic)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def cogvideox_dynamic_guidance(guidance_scale: float, timestep: float, num_steps: int) -> float:
    """The guidance of CogVideoX's ``use_dynamic_cfg``, as the diffusers pipelines compute it:
    ``1 + g (1 - cos(pi ((N - t) / N) ** 5)) / 2`` with ``t`` the *DDPM timestep* of the step
    (0..999, not the step index) and N the number of steps -- so for t > N the base is
    negative and the cosine's argument large; reproduced as is."""
    return 1 + guidance_scale * ((1 - math.cos(math.pi * ((num_steps - float(timestep)) / num_steps) ** 5.0)) / 2)


class CogVideoXDDIMSampler:
    """Deterministic DDIM (eta 0) on a :class:`CogVideoXSchedule`, as CogVideoXDDIMScheduler.

    Step ``i`` at timestep t = ``timestep(i)`` with a = a_t, a' = a at ``t - T // N`` (or the
    final value): x0 = sqrt(a) x - sqrt(1 - a) v (v-prediction; epsilon / sample also),
    x' = c x + (sqrt(a') - sqrt(a) c) x0 with c = sqrt((1 - a') / (1 - a)). At t = 999 on
    a zero-terminal-SNR table (a = 0) this is x0 = -v, x' = sqrt(1 - a') x + sqrt(a') x0.

    ``step(i, x, model_output)`` takes the DiT's *raw* output (v), not a flow velocity; x
    and the output are ``[B, C, F, H, W]`` (any shape works: the coefficients are scalars);
    arithmetic in float32 (float64 for float64 latents), the result in x's dtype.
    Attributes ``num_steps``, ``timesteps`` (int64 [N]), ``alphas_cumprod`` (float64 [T]),
    ``last_x0`` (x0 of the last step), ``order`` (1), ``init_noise_sigma`` (1.0).
    """

    order = 1
    init_noise_sigma = 1.0
    stochastic = False

    def __init__(self, num_steps: int, schedule: CogVideoXSchedule | None = None):
        self.schedule = schedule or CogVideoXSchedule()
        self.timesteps = self.schedule.timesteps(num_steps)
        self.num_steps = int(self.timesteps.numel())
        self.alphas_cumprod = self.schedule.alphas_cumprod()
        self._final = 1.0 if self.schedule.set_alpha_to_one else float(self.alphas_cumprod[0])
        self.reset()

    def reset(self) -> None:
        """Forget the trajectory (DPM's previous x0)."""
        self.last_x0: torch.Tensor | None = None
        self._old_x0: torch.Tensor | None = None

    def timestep(self, i: int) -> int:
        """The integer DDPM timestep the model is fed at step i."""
        if isinstance(i, bool) or not 0 <= int(i) < self.num_steps:
            raise ValueError(f"step index must be in [0, {self.num_steps - 1}], got {i!r}")
        return int(self.timesteps[int(i)])

    def _alpha(self, t: int) -> float:
        return float(self.alphas_cumprod[t]) if t >= 0 else self._final

    def _prev(self, i: int) -> int:
        return self.timestep(i) - self.schedule.num_train_timesteps // self.num_steps

    def _x0(self, x: torch.Tensor, out: torch.Tensor, a: float) -> torch.Tensor:
        kind = self.schedule.prediction_type
        if kind == "v_prediction":
            return a ** 0.5 * x - (1 - a) ** 0.5 * out
        if kind == "epsilon":
            return (x - (1 - a) ** 0.5 * out) / a ** 0.5
        return out

    def _check(self, x: torch.Tensor, out: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) or x.shape != out.shape:
            shapes = [tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for v in (x, out)]
            raise ValueError(f"latents {shapes[0]} and model output {shapes[1]} must be tensors of one shape")

    def step(self, i: int, x: torch.Tensor, model_output: torch.Tensor, noise=None) -> torch.Tensor:
        """Advance the latents ``x`` (at ``timestep(i)``) by one step; ``noise`` is ignored."""
        self._check(x, model_output)
        t = self.timestep(i)
        a, a_prev = self._alpha(t), self._alpha(self._prev(i))
        cd = _compute_dtype(x)
        xc, out = x.to(cd), model_output.to(cd)
        x0 = self._x0(xc, out, a)
        c = ((1 - a_prev) / (1 - a)) ** 0.5
        self.last_x0 = x0.to(x.dtype)
        return (c * xc + (a_prev ** 0.5 - a ** 0.5 * c) * x0).to(x.dtype)


def _draw(noise, like: torch.Tensor) -> torch.Tensor:
    """Fresh noise like ``like``: from a callable, or a torch.Generator drawn on its own
    device (diffusers' randn_tensor) and moved to ``like``'s."""
    if isinstance(noise, torch.Generator):
        eps = torch.randn(like.shape, generator=noise, device=noise.device, dtype=like.dtype).to(like.device)
    elif callable(noise):
        eps = noise(like)
    else:
        raise ValueError("CogVideoXDPMSampler is stochastic: pass noise= (a torch.Generator or a callable like -> tensor)")
    if not isinstance(eps, torch.Tensor) or eps.shape != like.shape:
        raise ValueError(f"noise must give a tensor of shape {tuple(like.shape)}")
    return eps.to(like.dtype)


class CogVideoXDPMSampler(CogVideoXDDIMSampler):
    """CogVideoX's DPM-Solver++(2M) SDE variant, as CogVideoXDPMScheduler steps it.

    With half-log-SNRs lam = log sqrt(a / (1 - a)) of t, of t' = ``t - T // N`` and of the
    previous step's timestep, h = lam' - lam and r = (lam - lam_back) / h:
    x' = m1 x - m2 D + sqrt(1 - a') sqrt(1 - exp(-2h)) eps, m1 = sqrt((1 - a') / (1 - a))
    exp(-h), m2 = expm1(-2h) sqrt(a'); D = x0 on the first and the last step, else
    (1 + 1/(2r)) x0 - 1/(2r) x0_prev. Fresh noise eps is drawn on every step -- twice on the
    second-order ones, the first draw then unused -- because diffusers draws so: with the
    same torch.Generator the draws are the same (a Generator draws in the latents' own
    layout; :func:`cogvideox_sample` draws in the pipelines'
    ``[B, F, C, h, w]``). Zero-SNR entries give infinite log-SNRs;
    the coefficients are computed in float64 with IEEE infinities exactly as there
    (first step: x' = sqrt(a') x0 + sqrt(1 - a') eps; last: x' = x0).

    ``step(i, x, model_output, noise)``: ``noise`` a torch.Generator or a callable
    ``noise(like) -> tensor``. Steps run in order (0 restarts).
    """

    stochastic = True

    def step(self, i: int, x: torch.Tensor, model_output: torch.Tensor, noise=None) -> torch.Tensor:
        """Advance ``x`` from ``timestep(i)``; see the class docstring."""
        self._check(x, model_output)
        i = int(i)
        if i == 0:
            self.reset()
        t, t_prev = self.timestep(i), self._prev(i)
        f64 = torch.float64

        def lam(alpha: float) -> torch.Tensor:
            a_ = torch.tensor(alpha, dtype=f64)
            return (a_ / (1 - a_)).sqrt().log()

        a, a_prev = self._alpha(t), self._alpha(t_prev)
        h = lam(a_prev) - lam(a)
        m1 = float(((1 - a_prev) / (1 - a)) ** 0.5 * (-h).exp())
        m2 = float((-2 * h).expm1() * a_prev ** 0.5)
        mn = float((1 - a_prev) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5)
        cd = _compute_dtype(x)
        xc, out = x.to(cd), model_output.to(cd)
        x0 = self._x0(xc, out, a)
        eps = _draw(noise, xc)
        x_next = m1 * xc - m2 * x0 + mn * eps
        if self._old_x0 is not None and t_prev >= 0:
            r = (lam(a) - lam(self._alpha(self.timestep(i - 1)))) / h
            m3, m4 = float(1 + 1 / (2 * r)), float(1 / (2 * r))
            d = m3 * x0 - m4 * self._old_x0
            eps = _draw(noise, xc)
            x_next = m1 * xc - m2 * d + mn * eps
        self._old_x0 = x0
        self.last_x0 = x0.to(x.dtype)
        return x_next.to(x.dtype)


def make_cogvideox_sampler(kind: str, num_steps: int, schedule: CogVideoXSchedule | None = None):
    """A CogVideoX sampler: ``kind`` "ddim" (:class:`CogVideoXDDIMSampler`) or "dpm"
    (:class:`CogVideoXDPMSampler`) over ``schedule`` (default: the CogVideoX-2b config)."""
    classes = {"ddim": CogVideoXDDIMSampler, "dpm": CogVideoXDPMSampler}
    if kind not in classes:
        raise ValueError(f"unknown CogVideoX sampler {kind!r}; expected one of {COGVIDEOX_SAMPLER_KINDS}")
    return classes[kind](num_steps, schedule)


def _rows(x: torch.Tensor | None, batch: int, name: str, last: int | None = None) -> torch.Tensor | None:
    if x is None:
        return None
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or (last is not None and x.shape[-1] != last):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be [B, L, {last or 'D'}], got {shape}")
    if x.shape[0] == 1 and batch > 1:
        x = x.expand(batch, -1, -1)
    if x.shape[0] != batch:
        raise ValueError(f"{name} has batch {x.shape[0]} but the latents have batch {batch}")
    return x


@torch.no_grad()
def cogvideox_sample(
    model,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    *,
    num_steps: int = 50,
    guidance_scale: float = 6.0,
    use_dynamic_cfg: bool = False,
    image_latents: torch.Tensor | None = None,
    sampler: str | object | None = None,
    schedule: CogVideoXSchedule | None = None,
    noise=None,
    callback=None,
    **model_kwargs,
) -> torch.Tensor:
    """Denoise ``latents`` as diffusers' CogVideoX pipelines do; returns the final latents
    (what ``pipe(..., output_type="latent")`` returns, in our ``[B, C, F, H, W]`` layout).

    model: a :class:`CogVideoXDiT` (raw v-prediction; a VPredictionAdapter is unwrapped).
    latents: the initial noise ``[B, 16, F, h, w]`` (the pipeline's ``latents=``, transposed;
    ``init_noise_sigma`` is 1). prompt_embeds / negative_prompt_embeds: ``[B or 1, L,
    text_dim]`` (:meth:`engine.models.cogvideox_text.CogVideoXTextEncoder.encode`; the
    pipelines encode ``""`` as the negative when none is given -- pass that here).
    guidance_scale: CFG runs when > 1, as one batched forward of [negative, positive]
    (the pipelines' order): ``u + g (c - u)``; ``use_dynamic_cfg`` replaces g at every step
    by :func:`cogvideox_dynamic_guidance`.
    image_latents: the I2V condition ``[B, 16, F, h, w]``
    (:func:`engine.models.cogvideox_vae.i2v_image_latents`), appended to the model input's
    channels at every step (required when the model's in_channels exceed the latents').
    sampler: "ddim" | "dpm" | a sampler object of :mod:`engine.sampling` (default: the
    model's pipeline scheduler, :func:`cogvideox_scheduler_for`); schedule overrides its
    :class:`~engine.sampling.CogVideoXSchedule`. noise: the DPM sampler's fresh noise: a
    torch.Generator -- the pipelines' ``generator``; drawn in their ``[B, F, C, h, w]``
    layout, then transposed, so the same generator gives the same noise -- or a callable
    ``noise(like) -> tensor``. callback(i, t, x)
    after every step. model_kwargs (``frame_positions``, ``visibility``) go to the model.

    The model runs on every step in its own dtype; the model output is taken in float32,
    the step is float32, and the latents are kept in the prompt embeddings' dtype between
    steps (the pipelines' casts).
    """
    if hasattr(model, "alphas_cumprod") and hasattr(model, "model"):  # a VPredictionAdapter: the raw DiT
        model = model.model
    if not isinstance(model, CogVideoXDiT):
        raise ValueError(f"cogvideox_sample needs a CogVideoXDiT, got {type(model).__name__}")
    cfg = model.config
    if not isinstance(latents, torch.Tensor) or latents.dim() != 5 or latents.shape[1] != cfg.out_channels:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"latents must be [B, {cfg.out_channels}, F, h, w] (the initial noise), got {shape}")
    B = latents.shape[0]
    extra = cfg.in_channels - cfg.out_channels
    if extra and image_latents is None:
        raise ValueError(f"model {cfg.name!r} takes {cfg.in_channels} input channels: it is image-to-video, "
                         f"pass image_latents=[B, {extra}, F, h, w] (engine.models.cogvideox_vae.i2v_image_latents)")
    if image_latents is not None:
        if not extra:
            raise ValueError(f"model {cfg.name!r} is text-to-video (in_channels {cfg.in_channels}); it takes no "
                             f"image_latents")
        if image_latents.dim() != 5 or image_latents.shape[1] != extra or image_latents.shape[2:] != latents.shape[2:]:
            raise ValueError(f"image_latents must be [B, {extra}, {', '.join(map(str, latents.shape[2:]))}], "
                             f"got {tuple(image_latents.shape)}")
        if image_latents.shape[0] == 1 and B > 1:
            image_latents = image_latents.expand(B, -1, -1, -1, -1)
    pos = _rows(prompt_embeds, B, "prompt_embeds", cfg.text_dim)
    do_cfg = guidance_scale > 1.0
    neg = _rows(negative_prompt_embeds, B, "negative_prompt_embeds", cfg.text_dim)
    if do_cfg and neg is None:
        raise ValueError("guidance_scale > 1 needs negative_prompt_embeds (the pipelines encode the negative "
                         "prompt, '' by default: CogVideoXTextEncoder.encode(''))")
    if do_cfg and neg.shape != pos.shape:
        raise ValueError(f"prompt_embeds {tuple(pos.shape)} and negative_prompt_embeds {tuple(neg.shape)} must "
                         f"have one shape")

    if sampler is None or isinstance(sampler, str):
        kind, sched = cogvideox_scheduler_for(model)
        smp = make_cogvideox_sampler(sampler or kind, num_steps, schedule or sched)
    else:
        smp = sampler
        smp.reset()
    if isinstance(noise, torch.Generator):  # draw as the pipelines do: in their [B, F, C, h, w] layout
        gen = noise

        def noise(like: torch.Tensor) -> torch.Tensor:
            shape = (like.shape[0], like.shape[2], like.shape[1], *like.shape[3:])
            eps = torch.randn(shape, generator=gen, device=gen.device, dtype=like.dtype)
            return eps.transpose(1, 2).to(like.device)
    dt = pos.dtype
    dev = model.device
    ctx = model.prepare_context(torch.cat([neg, pos]) if do_cfg else pos)
    cond = None
    if image_latents is not None:
        cond = image_latents.to(dev, dt)
        cond = torch.cat([cond, cond]) if do_cfg else cond
    x = latents.to(dev) * smp.init_noise_sigma
    for i in range(smp.num_steps):
        t = smp.timestep(i)
        inp = torch.cat([x, x]) if do_cfg else x
        tt = torch.full((inp.shape[0],), float(t), device=dev)
        out = model(inp, tt, ctx, condition=cond, **model_kwargs).float()
        if do_cfg:
            g = cogvideox_dynamic_guidance(guidance_scale, t, smp.num_steps) if use_dynamic_cfg else guidance_scale
            u, c = out.chunk(2)
            out = u + g * (c - u)
        x = smp.step(i, x.float(), out, noise=noise).to(dt)
        if callback is not None:
            callback(i, t, x)
    return x
