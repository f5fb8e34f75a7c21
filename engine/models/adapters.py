"""Adapters that let a DiT trained with another objective act as a flow-velocity predictor.

The runtime's samplers are rectified flow (:mod:`engine.sampling`): a frame at sigma ``s``
is ``x_s = (1 - s) x0 + s eps`` and the model must return the velocity ``eps - x0``, called
with timesteps ``1000 s`` (``[B]`` or per frame ``[B, F]``).

:class:`VPredictionAdapter` wraps a *v-prediction* DiT trained on a discrete DDPM schedule
(``alphas_cumprod`` a_t, t = 0..T-1; x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps; the network
predicts v = sqrt(a_t) eps - sqrt(1 - a_t) x0), e.g. CogVideoX. For every frame:

1. the VP state with the same signal-to-noise ratio as ``x_s``: ``alpha_bar = (1-s)^2 /
   ((1-s)^2 + s^2)`` and ``x_t = x_s / sqrt((1-s)^2 + s^2)`` (= ``x_s sqrt(alpha_bar) / (1-s)``,
   written so that s = 1 needs no division by zero);
2. the fractional DDPM timestep whose a_t equals that alpha_bar: piecewise-linear
   interpolation of t in log-SNR ``log(a_t / (1 - a_t))`` between adjacent table entries
   (in sqrt(a_t) on a segment that ends at a zero-terminal-SNR entry, where log-SNR is
   -inf); clamped to [0, T-1];
3. the model on ``x_t`` at that timestep gives v; ``x0 = sqrt(ab) x_t - sqrt(1-ab) v``,
   ``eps = sqrt(1-ab) x_t + sqrt(ab) v`` and the flow velocity is ``eps - x0``
   (identical to ``(x_s - x0) / s`` for s > 0, without dividing by s);
4. frames at sigma 0 are clean context: their velocity is returned as zeros (the
   sampler never reads it; the model still sees them in the sequence at timestep 0).

CogVideoX schedule (diffusers' ``CogVideoXDDIMScheduler`` / ``CogVideoXDPMScheduler``,
the ``scheduler/scheduler_config.json`` of THUDM/CogVideoX-2b): ``beta_schedule =
"scaled_linear"``, ``beta_start = 0.00085``, ``beta_end = 0.012``, 1000 steps,
``prediction_type = "v_prediction"``, ``rescale_betas_zero_snr = True``,
``snr_shift_scale = 3.0`` (CogVideoX-5B: 1.0). :func:`cogvideox_alphas_cumprod` reproduces
the scheduler's ``alphas_cumprod`` (betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2,
cumulative product of 1 - beta, SNR shift a / (k + (1 - k) a), then zero-terminal-SNR
rescaling of sqrt(a) so that a_999 = 0); tests compare it with diffusers' own.
"""

from __future__ import annotations


import torch
import torch.nn as nn

COGVIDEOX_SCHEDULES = {
    # model-name prefix -> snr_shift_scale of its published scheduler config
    "cogvideox-5b": 1.0,
    "cogvideox-2b": 3.0,
}


def cogvideox_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                             snr_shift_scale: float = 3.0, rescale_zero_snr: bool = True) -> torch.Tensor:
    """alphas_cumprod [T] (float64) of CogVideoX's DDPM schedule (scaled-linear betas):
    :meth:`engine.sampling.CogVideoXSchedule.alphas_cumprod` with these fields."""
    from ..sampling import CogVideoXSchedule

    return CogVideoXSchedule(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                             snr_shift_scale=snr_shift_scale, rescale_betas_zero_snr=rescale_zero_snr).alphas_cumprod()


def flow_to_vp(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_bar, scale) of the VP state matching flow sigma: x_t = scale * x_s."""
    s = sigma.double()
    norm = (1 - s) ** 2 + s * s
    return (1 - s) ** 2 / norm, norm.rsqrt()


def timesteps_for_alpha_bar(alpha_bar: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Fractional DDPM timesteps (float64, same shape as ``alpha_bar``) whose schedule value
    equals ``alpha_bar``: linear in log-SNR between table entries (in sqrt(a) on a segment
    ending at a zero-SNR entry); clamped to [0, T-1]."""
    ac = alphas_cumprod.double().cpu()
    T = ac.numel()
    ab = alpha_bar.double().cpu().reshape(-1)
    # decreasing table: index k with ac[k] >= ab > ac[k+1]
    k = torch.searchsorted(-ac, -ab, right=False) - 1  # ac[k] >= ab (first entry below is k+1)
    k = k.clamp(0, T - 2)
    lo, hi = ac[k], ac[k + 1]

    def lam(x):
        return torch.log(x) - torch.log1p(-x)

    with torch.no_grad():
        finite = (hi > 0) & (lo < 1) & (ab > 0) & (ab < 1)
        f_log = (lam(lo) - lam(ab.clamp(1e-300, 1 - 1e-16))) / (lam(lo) - lam(hi.clamp_min(1e-300)))
        f_sqrt = (lo.sqrt() - ab.sqrt()) / (lo.sqrt() - hi.sqrt())
        f = torch.where(finite, f_log, f_sqrt)
    t = (k.double() + f.clamp(0.0, 1.0))
    t = torch.where(ab >= ac[0], torch.zeros_like(t), t)
    t = torch.where(ab <= ac[-1], torch.full_like(t, T - 1.0), t)
    return t.reshape(alpha_bar.shape)


class VPredictionAdapter(nn.Module):
    """A v-prediction DDPM DiT seen as a flow-velocity predictor (module docstring).

    ``model(latents, timesteps, text_embeds, **kw)`` keeps the wrapped model's call
    convention: ``timesteps`` are flow timesteps 1000 s ([B] or per frame [B, F]); every
    other argument (``frame_positions``, ``visibility``, ``condition``, a prepared
    context) is passed through. ``config``, ``device``, ``dtype``, ``prepare_context``,
    ``source`` and ``tokens_per_frame`` are the wrapped model's.
    """

    def __init__(self, model: nn.Module, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.model = model
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
        if ac.dim() != 1 or ac.numel() < 2 or bool((ac[1:] > ac[:-1]).any()) or bool((ac < 0).any() or (ac > 1).any()):
            raise ValueError("alphas_cumprod must be a non-increasing 1-D table in [0, 1] with at least 2 entries")
        self._alphas_cumprod = ac  # a plain float64 CPU tensor: .to(bf16) must not round the table
        from ..sampling import vp_flow_sigma

        # float32 flow timesteps 1000 s of every integer DDPM timestep (CogVideoX's DDIM schedule,
        # engine.sampling.cogvideox_flow_sigmas, computes s the same way): an exact match is fed
        # as that integer, as diffusers does; anything else goes through timesteps_for_alpha_bar.
        grid = (1000.0 * vp_flow_sigma(ac)).float().double()
        self._grid, order = torch.sort(grid)
        self._grid_t = order.double()

    @classmethod
    def for_cogvideox(cls, model: nn.Module, snr_shift_scale: float | None = None) -> "VPredictionAdapter":
        """Wrap a CogVideoX DiT with its own schedule: its pipeline root's scheduler config
        when it has one, else its family's published one
        (:func:`engine.models.cogvideox.cogvideox_scheduler_for`); ``snr_shift_scale`` given:
        CogVideoX's default table with that shift."""
        if snr_shift_scale is None:
            from .cogvideox import cogvideox_scheduler_for

            return cls(model, cogvideox_scheduler_for(model)[1].alphas_cumprod())
        return cls(model, cogvideox_alphas_cumprod(snr_shift_scale=snr_shift_scale))

    # -- the wrapped model's surface --------------------------------------------------
    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def source(self):
        return getattr(self.model, "source", None)

    @property
    def takes_timeline_positions(self) -> bool:
        """The wrapped model's (a controlled model reads its controls by timeline position)."""
        return bool(getattr(self.model, "takes_timeline_positions", False))

    def prepare_context(self, *args, **kwargs):
        return self.model.prepare_context(*args, **kwargs)

    def tokens_per_frame(self, height: int, width: int) -> int:
        return self.model.tokens_per_frame(height, width)

    # -- conversion -----------------------------------------------------------------
    def _per_frame_timesteps(self, timesteps, B: int, F: int) -> torch.Tensor:
        """Flow timesteps [B] or [B, F] -> [B, F] float64 (the values as given)."""
        t = torch.as_tensor(timesteps).detach().double().cpu()
        if t.dim() == 0:
            t = t.expand(B)
        if t.dim() == 1:
            if t.shape[0] != B:
                raise ValueError(f"timesteps [B] must have B={B} entries, got {t.shape[0]}")
            t = t[:, None].expand(B, F)
        if t.shape != (B, F):
            raise ValueError(f"timesteps must be [B] or [B, F] = [{B}, {F}]; got {tuple(t.shape)}")
        return t

    def _integer_timesteps(self, flow_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``t`` with every entry whose flow timestep ``flow_t`` (float64 of the float32 the
        runtime passes) is exactly an integer DDPM timestep's replaced by that integer."""
        flat = flow_t.reshape(-1)
        idx = torch.searchsorted(self._grid, flat).clamp(max=self._grid.numel() - 1)
        hit = self._grid[idx] == flat
        return torch.where(hit, self._grid_t[idx], t.reshape(-1)).reshape(t.shape)

    def _run(self, latents: torch.Tensor, timesteps, text_embeds, kw) -> tuple[torch.Tensor, ...]:
        B, _, F = latents.shape[:3]
        flow_t = self._per_frame_timesteps(timesteps, B, F)  # [B, F] float64
        s = (flow_t / 1000.0).clamp(0.0, 1.0)
        ab, scale = flow_to_vp(s)
        t = self._integer_timesteps(flow_t, timesteps_for_alpha_bar(ab, self._alphas_cumprod))
        dev = latents.device

        def bc(x):  # [B, F] -> [B, 1, F, 1, 1] float32 on the latents' device
            return x.float().to(dev)[:, None, :, None, None]

        x_t = latents.float() * bc(scale)
        v = self.model(x_t.to(self.dtype), t.float().to(dev), text_embeds, **kw).float()
        sa, sb = bc(ab.sqrt()), bc((1 - ab).sqrt())
        x0 = sa * x_t - sb * v
        eps = sb * x_t + sa * v
        return s, x0, eps

    @torch.no_grad()
    def predict_x0(self, latents: torch.Tensor, timesteps, text_embeds, **kw) -> torch.Tensor:
        """The clean-latent prediction x0 [B, C, F, H, W] (float32) for flow states ``latents``."""
        return self._run(latents, timesteps, text_embeds, kw)[1]

    def forward(self, latents: torch.Tensor, timesteps, text_embeds, **kw) -> torch.Tensor:
        """Flow velocity eps - x0 [B, C, F, H, W] in the latents' dtype (zeros at sigma 0)."""
        s, x0, eps = self._run(latents, timesteps, text_embeds, kw)
        vel = eps - x0
        clean = (s == 0).to(latents.device)[:, None, :, None, None]
        return vel.masked_fill(clean, 0.0).to(latents.dtype)


def as_flow_model(model):
    """``model`` as a flow-velocity predictor: a CogVideoX DiT is wrapped in a
    :class:`VPredictionAdapter` with its schedule; anything else is returned unchanged."""
    from .cogvideox import CogVideoXDiT

    if isinstance(model, CogVideoXDiT):
        return VPredictionAdapter.for_cogvideox(model)
    return model
