"""Flow-matching sampling: sigma schedules, velocity conversions and steppers.

Conventions (Wan2.1-class rectified-flow DiTs)
----------------------------------------------
* Noising path: ``x_s = (1 - s) * x0 + s * eps`` with sigma ``s`` in ``[0, 1]``
  (``s = 1`` is pure noise, ``s = 0`` is clean data).
* The model predicts the velocity ``v = eps - x0`` (so ``dx_s/ds = v``).
* Model timesteps are ``t = 1000 * s`` as floats (see :func:`timesteps_from_sigmas`).
* Latents are ``[B, C, F, H, W]``. Every sigma may be given **per latent frame**:
  a python float / 0-d tensor, a ``[F]`` tensor or a ``[B, F]`` tensor; it is
  broadcast against the latents by :func:`expand_sigma` to ``[B|1, 1, F|1, 1, 1]``.

Samplers
--------
All samplers take a sigma *table* of shape ``[N+1]`` (one schedule shared by all
frames), ``[N+1, F]`` (each frame its own schedule) or ``[N+1, B, F]``; row ``i``
is the noise level of the latents fed to the model at step ``i``, row ``N`` the
level after the last step. Every sampler has the same interface, so the engine's
one loop over steps (:func:`engine.denoise.sample`) is sampler-agnostic; in essence::

    sampler = make_sampler("unipc", num_steps=50, shift=5.0)
    x = noise                                     # at sigma = sampler.sigma(0)
    for i in range(sampler.num_steps):
        v = model(x, sampler.timestep(i))         # t = 1000 * sigma, [] or [F]
        x = sampler.step(i, x, v, noise=fresh_noise_fn)   # noise: few-step only
    # x is now at sigma = sampler.sigma(sampler.num_steps) (0 for usual tables)

Samplers are stateful (UniPC keeps a short history); :meth:`Sampler.reset` (or
calling ``step(0, ...)``) starts a new trajectory, e.g. for the next chunk.

CogVideoX (v-prediction on a discrete DDPM schedule) runs on these same samplers: its
:class:`CogVideoXSchedule` gives flow sigmas (:func:`cogvideox_flow_sigmas`), on which
:class:`EulerSampler` *is* its DDIM and :class:`DPMSolverSDESampler` its DPM-Solver++
SDE, with the v-prediction turned into a flow velocity by
:class:`engine.models.adapters.VPredictionAdapter`. The variance-preserving originals
are the tests' reference (``tests/cogvideox_reference.py``).

The code here is an independent implementation; diffusers' schedulers are only
used as a numerical reference in the tests.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Callable, Sequence, Union

import torch

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "SAMPLER_KINDS",
    "shift_sigmas",
    "flow_sigmas",
    "diffusers_flow_sigmas",
    "few_step_sigmas",
    "wan_unipc_schedule",
    "timesteps_from_sigmas",
    "expand_sigma",
    "x0_from_velocity",
    "velocity_to_x0",
    "eps_from_velocity",
    "velocity_from_x0",
    "renoise",
    "cfg",
    "check_sigma_table",
    "Sampler",
    "EulerSampler",
    "UniPCSampler",
    "FewStepSampler",
    "DPMSolverSDESampler",
    "make_sampler",
    "config_sigmas",
    "config_timestep_of",
    "sampler_for",
    "COGVIDEOX_SAMPLER_KINDS",
    "CogVideoXSchedule",
    "cogvideox_scheduler_kind",
    "cogvideox_flow_sigmas",
    "vp_flow_sigma",
]

NUM_TRAIN_TIMESTEPS = 1000
SAMPLER_KINDS = ("euler", "unipc", "fewstep", "dpm")

SigmaLike = Union[float, torch.Tensor]
NoiseLike = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], None]


# --------------------------------------------------------------------------- #
# Schedules
# --------------------------------------------------------------------------- #
def shift_sigmas(s: SigmaLike, shift: float) -> SigmaLike:
    """Timestep shift ``s' = k*s / (1 + (k-1)*s)`` with ``k = shift``.

    Args:
        s: float or tensor of any shape, values in ``[0, 1]``.
        shift: ``k > 0``; ``k = 1`` is the identity, ``k > 1`` spends more steps
            at high noise. Maps 0 -> 0 and 1 -> 1.
    Returns:
        Same type / shape as ``s``.
    """
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite positive number, got {shift!r}")
    k = float(shift)
    y = k * s / (1.0 + (k - 1.0) * s)
    # the map keeps [0, 1]; rounding alone can step past 1 (e.g. 1.0000000000000002)
    return y.clamp(0.0, 1.0) if isinstance(y, torch.Tensor) else min(max(y, 0.0), 1.0)


def flow_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """Shifted uniform flow-matching schedule.

    ``shift_sigmas(linspace(1, 0, num_steps + 1), shift)`` in float64, with the
    endpoints pinned to exactly 1 and 0. This equals Wan's / diffusers' flow
    schedules up to their endpoint conventions: diffusers'
    ``UniPCMultistepScheduler(use_flow_sigmas=True)`` uses
    ``linspace(1, 1/1000, N+1)[:-1]`` (then nudges 1 down by 1e-6) and
    ``FlowMatchEulerDiscreteScheduler`` uses ``linspace(1, 1/1000, N)``, both
    shifted, plus a terminal 0. Samplers here handle ``s = 1`` exactly.

    Args:
        num_steps: number of sampler steps ``N >= 1``.
        shift: timestep shift ``k > 0`` (Wan2.1 T2V uses 5.0 at 480p).
    Returns:
        float64 tensor ``[N+1]``, strictly decreasing from 1.0 to 0.0.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    s = shift_sigmas(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)
    s[0] = 1.0
    s[-1] = 0.0
    return s


def diffusers_flow_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """The flow schedule of diffusers' WanPipeline default scheduler, for parity runs.

    Reproduces ``UniPCMultistepScheduler(use_flow_sigmas=True,
    flow_shift=shift).set_timesteps(num_steps).sigmas``: shifted
    ``linspace(1, 1/1000, N+1)[:-1]``, first value nudged from 1 to ``1 - 1e-6``,
    rounded to float32, then a terminal 0. Unlike :func:`flow_sigmas` it never
    starts at exactly 1, which changes UniPC's second-order history weights
    (log-SNR of 1 - 1e-6 is finite), so use this table to reproduce diffusers.

    Args:
        num_steps: N >= 1.
        shift: timestep shift k > 0.
    Returns:
        float64 tensor ``[N+1]`` (values exactly representable in float32).
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    base = torch.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, num_steps + 1, dtype=torch.float64)[:-1]
    s = shift_sigmas(base, shift)
    if abs(s[0].item() - 1.0) < 1e-6:
        s[0] -= 1e-6
    return torch.cat([s, s.new_zeros(1)]).to(torch.float32).to(torch.float64)


def wan_unipc_schedule(num_steps: int, shift: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The schedule of Wan's own ``FlowUniPCMultistepScheduler`` (wan/utils/fm_solvers_unipc.py,
    as the Wan2.1 and MMPL releases sample): ``linspace(s_max, 0, N+1)[:-1]`` with s_max the
    float32 value of 0.999 (its 1000-step training table's first sigma), shifted in
    float64; model timesteps ``int64(1000 * sigma)`` (truncated) from the float64 values,
    while the solver steps with the float32-rounded sigmas plus a terminal 0.

    Returns (sigmas float64 [N+1] holding float32 values, ending at 0; timesteps float64
    [N] holding the integers the model is fed).
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    s_max = float(torch.tensor(0.999, dtype=torch.float32))
    s = torch.linspace(s_max, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    s = float(shift) * s / (1 + (float(shift) - 1) * s)
    timesteps = (s * NUM_TRAIN_TIMESTEPS).to(torch.int64).to(torch.float64)
    sigmas = torch.cat([s, s.new_zeros(1)]).to(torch.float32).to(torch.float64)
    return sigmas, timesteps


def few_step_sigmas(
    timesteps: Sequence[float] = (1000, 750, 500, 250), shift: float = 5.0
) -> torch.Tensor:
    """Sigma table for few-step (Self-Forcing / CausVid style) distilled models.

    ``sigma_i = shift_sigmas(t_i / 1000, shift)`` followed by a terminal 0, e.g.
    ``(1000, 750, 500, 250)``, shift 5 -> ``[1, 0.9375, 0.8333.., 0.625, 0]``.

    Args:
        timesteps: strictly decreasing model timesteps in ``(0, 1000]``.
        shift: timestep shift ``k > 0``.
    Returns:
        float64 tensor ``[len(timesteps) + 1]``; the last entry is exactly 0, so
        it can be given directly to any sampler here.
    """
    t = torch.as_tensor(list(timesteps), dtype=torch.float64)
    if t.ndim != 1 or t.numel() < 1:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all() or (t <= 0).any() or (t > NUM_TRAIN_TIMESTEPS).any():
        raise ValueError(f"timesteps must lie in (0, {NUM_TRAIN_TIMESTEPS}], got {t.tolist()}")
    if t.numel() > 1 and not (t[1:] < t[:-1]).all():
        raise ValueError(f"timesteps must be strictly decreasing, got {t.tolist()}")
    s = shift_sigmas(t / NUM_TRAIN_TIMESTEPS, shift)
    return torch.cat([s, s.new_zeros(1)])


def timesteps_from_sigmas(sigma: SigmaLike) -> torch.Tensor:
    """Model timestep ``t = 1000 * sigma`` (float, same shape as ``sigma``: [], [F] or [B, F])."""
    s = sigma if isinstance(sigma, torch.Tensor) else torch.as_tensor(sigma, dtype=torch.float64)
    return s * NUM_TRAIN_TIMESTEPS


# --------------------------------------------------------------------------- #
# Per-frame broadcasting and conversions
# --------------------------------------------------------------------------- #
def expand_sigma(sigma: SigmaLike, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a (per-frame) sigma against latents.

    Args:
        sigma: float, 0-d tensor, ``[F]`` tensor (per frame) or ``[B, F]`` tensor
            (per sample and frame); ``F`` / ``B`` may also be 1.
        like: latents ``[B, C, F, H, W]``.
    Returns:
        tensor ``[1, 1, 1, 1, 1]``, ``[1, 1, F, 1, 1]`` or ``[B, 1, F, 1, 1]`` with
        ``like``'s dtype and device.
    """
    if like.ndim != 5:
        raise ValueError(f"latents must be 5-D [B, C, F, H, W], got shape {tuple(like.shape)}")
    if isinstance(sigma, torch.Tensor):
        s = sigma.to(device=like.device, dtype=like.dtype)
    else:  # python / numpy scalars: convert straight to like's dtype (no float32 detour)
        s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    B, _, F = like.shape[:3]
    if s.ndim == 0:
        return s.reshape(1, 1, 1, 1, 1)
    if s.ndim == 1:
        if s.shape[0] not in (1, F):
            raise ValueError(
                f"per-frame sigma has {s.shape[0]} frames but latents have F={F} (shape {tuple(like.shape)})"
            )
        return s.reshape(1, 1, -1, 1, 1)
    if s.ndim == 2:
        if s.shape[0] not in (1, B) or s.shape[1] not in (1, F):
            raise ValueError(
                f"sigma shape {tuple(s.shape)} does not match [B, F] = [{B}, {F}] of latents {tuple(like.shape)}"
            )
        return s.reshape(s.shape[0], 1, s.shape[1], 1, 1)
    raise ValueError(f"sigma must be a scalar, [F] or [B, F]; got shape {tuple(s.shape)}")


def x0_from_velocity(x_s: torch.Tensor, v: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
    """Clean-data prediction ``x0 = x_s - s * v``. x_s, v: [B, C, F, H, W]; sigma: [], [F] or [B, F]."""
    return x_s - expand_sigma(sigma, x_s) * v


velocity_to_x0 = x0_from_velocity


def eps_from_velocity(x_s: torch.Tensor, v: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
    """Noise prediction ``eps = x_s + (1 - s) * v``. x_s, v: [B, C, F, H, W]; sigma: [], [F] or [B, F]."""
    return x_s + (1 - expand_sigma(sigma, x_s)) * v


def velocity_from_x0(x_s: torch.Tensor, x0: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
    """Velocity ``v = (x_s - x0) / s`` (undefined where ``s == 0``). Shapes as :func:`x0_from_velocity`."""
    return (x_s - x0) / expand_sigma(sigma, x_s)


def renoise(x0: torch.Tensor, eps: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
    """Forward noising ``x_s = (1 - s) * x0 + s * eps``. x0, eps: [B, C, F, H, W]; sigma: [], [F] or [B, F]."""
    s = expand_sigma(sigma, x0)
    return (1 - s) * x0 + s * eps


def cfg(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: SigmaLike) -> torch.Tensor:
    """Classifier-free guidance ``v_uncond + scale * (v_cond - v_uncond)``.

    Args:
        v_cond, v_uncond: model outputs of equal shape (e.g. [B, C, F, H, W]).
        scale: float or tensor broadcastable to them (1.0 returns v_cond).
    Returns:
        guided output, same shape.
    """
    if v_cond.shape != v_uncond.shape:
        raise ValueError(f"cfg: v_cond shape {tuple(v_cond.shape)} != v_uncond shape {tuple(v_uncond.shape)}")
    return v_uncond + scale * (v_cond - v_uncond)


# --------------------------------------------------------------------------- #
# Sigma tables
# --------------------------------------------------------------------------- #
def check_sigma_table(
    sigmas: Union[torch.Tensor, Sequence[float]],
    *,
    strict: bool = False,
    terminal_zero: bool = False,
) -> torch.Tensor:
    """Validate a sampler sigma table and return it as float64 (CPU).

    Args:
        sigmas: ``[N+1]``, ``[N+1, F]`` or ``[N+1, B, F]``, N >= 1; values in
            [0, 1], non-increasing along the step axis (dim 0) for every frame.
        strict: require strictly decreasing (needed by UniPC, whose step size is
            a log-SNR difference).
        terminal_zero: require the last row to be exactly 0.
    Returns:
        float64 tensor of the same shape.
    Raises:
        ValueError naming the problem.
    """
    s = torch.as_tensor(sigmas).detach()
    if not (s.is_floating_point() or s.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"sigma table must be numeric, got dtype {s.dtype}")
    s = s.to(device="cpu", dtype=torch.float64)
    if s.ndim not in (1, 2, 3):
        raise ValueError(f"sigma table must have shape [N+1], [N+1, F] or [N+1, B, F]; got {tuple(s.shape)}")
    if s.shape[0] < 2:
        raise ValueError(f"sigma table needs at least 2 rows (one step), got shape {tuple(s.shape)}")
    if s.numel() == 0:
        raise ValueError(f"sigma table is empty (shape {tuple(s.shape)})")
    if not torch.isfinite(s).all():
        raise ValueError("sigma table contains non-finite values")
    if (s < 0).any() or (s > 1).any():
        raise ValueError(f"sigma values must lie in [0, 1]; got min {s.min().item()}, max {s.max().item()}")
    diff = s[1:] - s[:-1]
    if not (diff <= 0).all():
        raise ValueError("sigma table is not monotone: sigmas must be non-increasing along the step axis (dim 0)")
    if strict and not (diff < 0).all():
        raise ValueError("sigma table must be strictly decreasing along the step axis (dim 0) for every frame")
    if terminal_zero and not (s[-1] == 0).all():
        raise ValueError(f"sigma table must end at exactly 0; last row is {s[-1].tolist()}")
    return s


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- #
# Samplers
# --------------------------------------------------------------------------- #
class Sampler(abc.ABC):
    """Common stepper interface.

    Attributes:
        sigmas: float64 table ``[N+1]``, ``[N+1, F]`` or ``[N+1, B, F]``.
        num_steps: ``N``.
        last_x0: the clean-data prediction of the most recent step
            (``[B, C, F, H, W]``, latents' dtype) or None.
    """

    strict_sigmas = False
    terminal_zero = False
    #: whether :meth:`step` takes fresh noise on every step but the last (the runtime then
    #: draws it from the job's noise stream, addressed by step and position)
    stochastic = False

    def __init__(self, sigmas: Union[torch.Tensor, Sequence[float]], timestep_of: dict[float, float] | None = None):
        self.sigmas = check_sigma_table(sigmas, strict=self.strict_sigmas, terminal_zero=self.terminal_zero)
        self.num_steps = self.sigmas.shape[0] - 1
        self.last_x0: torch.Tensor | None = None
        self.timestep_of = dict(timestep_of or {})

    def sigma(self, i: int) -> torch.Tensor:
        """Sigma of the latents fed to the model at step ``i`` (0..N): float64 [], [F] or [B, F]."""
        if not 0 <= i <= self.num_steps:
            raise ValueError(f"step index {i} out of range [0, {self.num_steps}]")
        return self.sigmas[i]

    def timestep(self, i: int) -> torch.Tensor:
        """Model timestep of step ``i``: float64 [], [F] or [B, F]; ``1000 * sigma(i)``, or
        the schedule's own value for sigmas listed in ``timestep_of`` (Wan's truncated
        integer timesteps, :func:`wan_unipc_schedule`)."""
        s = self.sigma(i)
        if not self.timestep_of:
            return timesteps_from_sigmas(s)
        flat = [self.timestep_of.get(v, v * NUM_TRAIN_TIMESTEPS) for v in s.reshape(-1).tolist()]
        return torch.tensor(flat, dtype=torch.float64).reshape(s.shape)

    def reset(self) -> None:
        """Forget any multistep history (start a new trajectory)."""
        self.last_x0 = None

    def _check_step(self, i: int, x: torch.Tensor, v: torch.Tensor) -> None:
        if isinstance(i, bool) or not hasattr(i, "__index__") or not 0 <= int(i) < self.num_steps:
            raise ValueError(f"step index must be an int in [0, {self.num_steps - 1}], got {i!r}")
        if x.shape != v.shape:
            raise ValueError(f"latents shape {tuple(x.shape)} != model output shape {tuple(v.shape)}")
        expand_sigma(self.sigmas[i], x)  # validates latent rank and per-frame shape

    @abc.abstractmethod
    def step(self, i: int, x: torch.Tensor, v: torch.Tensor, noise: NoiseLike = None) -> torch.Tensor:
        """Advance from sigma(i) to sigma(i+1).

        Args:
            i: step index in ``[0, N)``.
            x: latents ``[B, C, F, H, W]`` at sigma(i) (what the model saw).
            v: model velocity prediction, same shape.
            noise: fresh noise for stochastic samplers (ignored by deterministic
                ones): a tensor like ``x`` or a callable ``noise(like) -> tensor``.
        Returns:
            latents at sigma(i+1), same shape and dtype as ``x``.
        """


class EulerSampler(Sampler):
    """First-order Euler ODE step ``x_{i+1} = x_i + (s_{i+1} - s_i) * v`` (per-frame sigmas).

    Args:
        sigmas: non-increasing table ``[N+1]``, ``[N+1, F]`` or ``[N+1, B, F]``.
    """

    def step(self, i: int, x: torch.Tensor, v: torch.Tensor, noise: NoiseLike = None) -> torch.Tensor:
        """See :meth:`Sampler.step`. x, v: [B, C, F, H, W] -> [B, C, F, H, W]."""
        self._check_step(i, x, v)
        cd = _compute_dtype(x)
        xc, vc = x.to(cd), v.to(cd)
        s0, s1 = self.sigmas[i], self.sigmas[i + 1]
        self.last_x0 = x0_from_velocity(xc, vc, s0).to(x.dtype)
        return (xc + expand_sigma(s1 - s0, xc) * vc).to(x.dtype)


def _draw_noise(noise: NoiseLike, like: torch.Tensor) -> torch.Tensor:
    if noise is None:
        raise ValueError("FewStepSampler needs fresh noise for every non-final step: pass noise= (tensor or callable)")
    eps = noise(like) if callable(noise) else noise
    if not isinstance(eps, torch.Tensor) or eps.shape != like.shape:
        shape = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
        raise ValueError(f"noise must be a tensor of shape {tuple(like.shape)}, got {shape}")
    return eps


class FewStepSampler(Sampler):
    """Self-Forcing / CausVid few-step loop (stochastic, x0-renoise).

    Step ``i``: ``x0 = x - s_i * v``; if ``i < N-1`` return
    ``(1 - s_{i+1}) * x0 + s_{i+1} * eps`` with FRESH noise ``eps``, else
    return ``x0``.

    Args:
        sigmas: non-increasing table ``[N+1]``, ``[N+1, F]`` or ``[N+1, B, F]``
            whose last row is 0 (e.g. :func:`few_step_sigmas`).
        noise: default noise source used when ``step`` gets none: a callable
            ``noise(like) -> tensor shaped like like``; ``like`` is the x0
            prediction in the compute dtype (float32, or float64 for float64
            latents), the result is cast to it (e.g. ``lambda t:
            torch.randn(t.shape, generator=g, dtype=t.dtype, device=t.device)``).
    """

    terminal_zero = True
    stochastic = True

    def __init__(self, sigmas, noise: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__(sigmas)
        if noise is not None and not callable(noise):
            raise ValueError("FewStepSampler(noise=...) must be a callable; pass tensors to step()")
        self.noise = noise

    def step(self, i: int, x: torch.Tensor, v: torch.Tensor, noise: NoiseLike = None) -> torch.Tensor:
        """See :meth:`Sampler.step`. ``noise`` overrides the constructor's callable. [B,C,F,H,W] -> same."""
        self._check_step(i, x, v)
        cd = _compute_dtype(x)
        x0 = x0_from_velocity(x.to(cd), v.to(cd), self.sigmas[i])
        self.last_x0 = x0.to(x.dtype)
        if i == self.num_steps - 1:
            return x0.to(x.dtype)
        eps = _draw_noise(noise if noise is not None else self.noise, x0)
        return renoise(x0, eps.to(cd), self.sigmas[i + 1]).to(x.dtype)


def _lam(s: torch.Tensor) -> torch.Tensor:
    """Half log-SNR of the flow path, ``log((1 - s) / s)``: -inf at s=1, +inf at s=0."""
    return torch.log1p(-s) - torch.log(s)


class DPMSolverSDESampler(Sampler):
    """DPM-Solver++(2M), SDE variant, on the flow path (CogVideoX-5b's CogVideoXDPMScheduler
    rewritten in flow variables; any flow schedule works).

    A VP state x = sqrt(a) x0 + sqrt(1 - a) eps is the flow state y = (1 - s) x0 + s eps
    times 1 / sqrt((1 - s)^2 + s^2), with the same half log-SNR lam = log sqrt(a / (1 - a))
    = log((1 - s) / s). The VP step x' = m1 x - m2 D + mn eps then reads, with h = lam' - lam:

        y' = (s' / s) e^-h y - expm1(-2h) (1 - s') D + s' sqrt(1 - e^-2h) eps

    D = x0 = y - s v on the first step, on the last (s' = 0: y' = x0) and after a zero-SNR
    step, else (1 + 1/(2r)) x0 - 1/(2r) x0_prev with r = (lam - lam_prev) / h (lam_prev: the
    step before). The coefficients are float64 with IEEE infinities as the VP form has them
    (s = 1: lam = -inf, the first step gives (1 - s') x0 + s' eps). Frames already at s = 0
    (per-frame tables) stay put. ``noise``: fresh Gaussian noise like x on every step but the
    last (a tensor or a callable); diffusers draws a second, unused tensor on second-order
    steps -- a replay must skip those (tests/test_cogvideox_pipeline.py does).
    """

    terminal_zero = True
    stochastic = True

    def reset(self) -> None:
        """Forget the previous step's x0."""
        super().reset()
        self._prev_x0: torch.Tensor | None = None

    def __init__(self, sigmas, timestep_of: dict[float, float] | None = None):
        super().__init__(sigmas, timestep_of)
        self._prev_x0 = None

    def step(self, i: int, x: torch.Tensor, v: torch.Tensor, noise: NoiseLike = None) -> torch.Tensor:
        """See :meth:`Sampler.step`. [B, C, F, H, W] -> same; steps run in order (0 restarts)."""
        self._check_step(i, x, v)
        if i == 0:
            self.reset()
        cd = _compute_dtype(x)
        xc, vc = x.to(cd), v.to(cd)
        s0, s1 = self.sigmas[i].double(), self.sigmas[i + 1].double()
        x0 = x0_from_velocity(xc, vc, s0)
        lam0, lam1 = _lam(s0), _lam(s1)
        h = lam1 - lam0
        done = s0 == 0  # a frame already clean: y' = y
        with torch.no_grad():
            e = torch.exp(-h)
            a = torch.where(done, torch.ones_like(s0), torch.nan_to_num(s1 / s0, nan=0.0) * e)
            b = torch.where(done, torch.zeros_like(s0), -torch.expm1(-2 * h) * (1 - s1))
            c = torch.where(done | (s1 == 0), torch.zeros_like(s0), s1 * torch.sqrt(-torch.expm1(-2 * h)))
        d = x0
        if self._prev_x0 is not None and bool((s1 > 0).all()):
            lam_back = _lam(self.sigmas[i - 1].double())
            r = (lam0 - lam_back) / h
            k = torch.where(torch.isfinite(r) & (r != 0) & ~done, 1 / (2 * r), torch.zeros_like(r))
            d = x0 + expand_sigma(k, xc) * (x0 - self._prev_x0)
        y = expand_sigma(a, xc) * xc + expand_sigma(b, xc) * d
        if bool((c != 0).any()):
            if noise is None:
                raise ValueError("DPMSolverSDESampler is stochastic: pass noise= (a tensor like x, or a callable) "
                                 "for every step but the last")
            eps = noise(xc) if callable(noise) else noise
            if not isinstance(eps, torch.Tensor) or eps.shape != xc.shape:
                raise ValueError(f"noise must be a tensor of shape {tuple(xc.shape)}")
            y = y + expand_sigma(c, xc) * eps.to(cd)
        self._prev_x0 = x0
        self.last_x0 = x0.to(x.dtype)
        return y.to(x.dtype)


class UniPCSampler(Sampler):
    """UniPC multistep solver (Zhao et al. 2023) for flow matching.

    Data-prediction (x0) form, ``B(h) = expm1(h)`` ("bh2"), predictor UniP of
    order ``min(solver_order, i + 1, N - i)`` (warm-up and lower-order final
    steps) and the UniC corrector applied to ``x_i`` once the model output at
    ``x_i`` is known. Numerically this is the algorithm of diffusers'
    ``UniPCMultistepScheduler(prediction_type="flow_prediction",
    use_flow_sigmas=True, predict_x0=True, solver_type="bh2",
    lower_order_final=True)``.

    All coefficients are elementwise functions of the sigmas, so per-frame
    tables ``[N+1, F]`` (or ``[N+1, B, F]``) are supported; sigma = 1 and
    sigma = 0 endpoints are handled exactly (their log-SNR is +-inf).

    Args:
        sigmas: STRICTLY decreasing table ``[N+1]``, ``[N+1, F]`` or ``[N+1, B, F]``.
        solver_order: 1 or 2 (Wan uses 2).
        use_corrector: apply UniC (default True).
    """

    strict_sigmas = True

    def __init__(self, sigmas, solver_order: int = 2, use_corrector: bool = True):
        super().__init__(sigmas)
        if solver_order not in (1, 2):
            raise ValueError(f"UniPCSampler supports solver_order 1 or 2, got {solver_order!r}")
        self.solver_order = solver_order
        self.use_corrector = bool(use_corrector)
        self._lams = _lam(self.sigmas)
        self.reset()

    def reset(self) -> None:
        """Forget the multistep history; the next call must be ``step(0, ...)``."""
        super().reset()
        self._next = 0
        self._m: list[torch.Tensor] = []  # x0 predictions, most recent last (<= 2)
        self._last_sample: torch.Tensor | None = None
        self._last_order = 0

    # Coefficients: all float64 tensors shaped like one table row ([], [F], [B, F]).
    def _h_terms(self, j0: int, j1: int):
        """hh = lam(s_j0) - lam(s_j1) (<= 0, maybe -inf), phi1 = expm1(hh) = B(h)."""
        hh = self._lams[j0] - self._lams[j1]
        return hh, torch.expm1(hh)

    def _inv_rk(self, jp: int, j0: int, j1: int) -> torch.Tensor:
        """1 / r_k = h / (lam_prev - lam_0), in (-inf, 0]; 0 when lam_prev = -inf."""
        return (self._lams[j1] - self._lams[j0]) / (self._lams[jp] - self._lams[j0])

    def _predict(self, x: torch.Tensor, i: int, order: int) -> torch.Tensor:
        """UniP from s_i to s_{i+1} using x0 history self._m (last = m_i)."""
        s0, st = self.sigmas[i], self.sigmas[i + 1]
        _, phi1 = self._h_terms(i, i + 1)
        a_t = 1 - st
        m0 = self._m[-1]
        out = expand_sigma(st / s0, x) * x - expand_sigma(a_t * phi1, x) * m0
        if order == 2:
            # rho_p = 1/2 for order 2;  D1 = (m_prev - m0) / r_k
            c1 = a_t * phi1 * 0.5 * self._inv_rk(i - 1, i, i + 1)
            out = out - expand_sigma(c1, x) * (self._m[-2] - m0)
        return out

    def _correct(self, x_prev: torch.Tensor, m_t: torch.Tensor, i: int, order: int) -> torch.Tensor:
        """UniC: recompute the step s_{i-1} -> s_i using the new x0 prediction m_t."""
        s0, st = self.sigmas[i - 1], self.sigmas[i]
        hh, phi1 = self._h_terms(i - 1, i)
        a_t = 1 - st
        m0 = self._m[-1]
        b1 = (phi1 / hh - 1) / phi1
        out = expand_sigma(st / s0, x_prev) * x_prev - expand_sigma(a_t * phi1, x_prev) * m0
        if order == 1:
            rho_t = torch.full_like(b1, 0.5)
        else:
            # Solve [[1, 1], [r_k, 1]] @ [rho_0, rho_t] = [b1, b2] in terms of u = 1/r_k.
            b2 = ((phi1 / hh - 1) / hh - 0.5) * 2 / phi1
            u = self._inv_rk(i - 2, i - 1, i)
            rho0_over_rk = (b1 - b2) * u * u / (u - 1)
            rho_t = b1 - (b1 - b2) * u / (u - 1)
            out = out - expand_sigma(a_t * phi1 * rho0_over_rk, x_prev) * (self._m[-2] - m0)
        return out - expand_sigma(a_t * phi1 * rho_t, x_prev) * (m_t - m0)

    def step(self, i: int, x: torch.Tensor, v: torch.Tensor, noise: NoiseLike = None) -> torch.Tensor:
        """See :meth:`Sampler.step`. Steps must be called in order 0, 1, ..., N-1
        (``step(0, ...)`` restarts). [B, C, F, H, W] -> [B, C, F, H, W]."""
        self._check_step(i, x, v)
        i = int(i)
        if i == 0:
            self.reset()
        elif i != self._next:
            raise ValueError(f"UniPCSampler steps must be called in order: expected step {self._next}, got {i}")
        if self._last_sample is not None and self._last_sample.shape != x.shape:
            raise ValueError(f"latents shape changed mid-trajectory: {tuple(self._last_sample.shape)} -> {tuple(x.shape)}")
        cd = _compute_dtype(x)
        xc = x.to(cd)
        m_t = x0_from_velocity(xc, v.to(cd), self.sigmas[i])
        self.last_x0 = m_t.to(x.dtype)
        if i > 0 and self.use_corrector:
            xc = self._correct(self._last_sample, m_t, i, self._last_order)
        self._m = (self._m + [m_t])[-2:]
        order = min(self.solver_order, i + 1, self.num_steps - i)
        self._last_sample = xc
        self._last_order = order
        self._next = i + 1
        return self._predict(xc, i, order).to(x.dtype)


# --------------------------------------------------------------------------- #
# Factory
# --------------------------------------------------------------------------- #
def make_sampler(
    kind: str,
    num_steps: int | None = None,
    shift: float = 1.0,
    timesteps: Sequence[float] | None = None,
    *,
    sigmas: torch.Tensor | None = None,
    **kwargs,
) -> Sampler:
    """Build a sampler from plain schedule arguments.

    Schedule precedence: explicit ``sigmas`` table (``[N+1]``/``[N+1, F]``/
    ``[N+1, B, F]``, used as is; ``shift`` ignored) > ``timesteps`` (->
    :func:`few_step_sigmas`\\ (timesteps, shift)) > ``num_steps`` (->
    :func:`flow_sigmas`\\ (num_steps, shift)). For ``kind="fewstep"`` with none of
    them, the default timesteps ``(1000, 750, 500, 250)`` are used. Note
    ``flow_sigmas(4, k) == few_step_sigmas((1000, 750, 500, 250), k)``.

    Args:
        kind: "euler", "unipc" or "fewstep".
        num_steps: N; must agree with ``timesteps`` / ``sigmas`` when both given.
        shift: timestep shift ``k > 0``.
        timesteps: explicit model timesteps in (0, 1000], strictly decreasing.
        sigmas: explicit sigma table (keyword only).
        **kwargs: passed to the sampler (``solver_order``, ``use_corrector`` for
            UniPC; ``noise`` for few-step).
    Returns:
        a :class:`Sampler`.
    """
    classes = {"euler": EulerSampler, "unipc": UniPCSampler, "fewstep": FewStepSampler, "dpm": DPMSolverSDESampler}
    if kind not in classes:
        raise ValueError(f"unknown sampler kind {kind!r}; expected one of {SAMPLER_KINDS}")
    if sigmas is not None and timesteps is not None:
        raise ValueError("give either sigmas= or timesteps=, not both")
    if sigmas is not None:
        table = torch.as_tensor(sigmas)
    elif timesteps is not None:
        table = few_step_sigmas(timesteps, shift)
    elif num_steps is not None:
        table = flow_sigmas(num_steps, shift)
    elif kind == "fewstep":
        table = few_step_sigmas((1000, 750, 500, 250), shift)
    else:
        raise ValueError(f"sampler {kind!r} needs num_steps, timesteps or sigmas")
    if num_steps is not None and table.ndim >= 1 and table.shape[0] - 1 != num_steps:
        raise ValueError(f"num_steps={num_steps} disagrees with the schedule's {table.shape[0] - 1} steps")
    return classes[kind](table, **kwargs)


# --------------------------------------------------------------------------- #
# SamplerConfig -> schedule / sampler (the one place plans, runtime, export and bench use)
# --------------------------------------------------------------------------- #
def config_sigmas(config) -> torch.Tensor:
    """The shared sigma schedule ``[N+1]`` (float64) of an :class:`engine.config.SamplerConfig`:
    few-step timesteps (default 1000/750/500/250) shifted, ``num_steps`` flow sigmas, with
    ``schedule="wan"`` Wan's own UniPC table (:func:`wan_unipc_schedule`), or with
    ``schedule="cogvideox"`` CogVideoX's DDIM as flow sigmas (:func:`cogvideox_flow_sigmas`)."""
    if getattr(config, "schedule", "flow") == "cogvideox":
        if config.ddpm is None:
            raise ValueError("SamplerConfig(schedule='cogvideox') without ddpm: engine.generate fills in the model's "
                             "own schedule; elsewhere pass ddpm=engine.models.cogvideox.cogvideox_scheduler_for(m)[1]")
        return cogvideox_flow_sigmas(config.ddpm, config.num_steps)
    if config.kind == "fewstep":
        return few_step_sigmas(config.timesteps or (1000.0, 750.0, 500.0, 250.0), config.shift)
    if getattr(config, "schedule", "flow") == "wan":
        return wan_unipc_schedule(config.num_steps, config.shift)[0]
    return flow_sigmas(config.num_steps, config.shift)


def config_timestep_of(config) -> dict[float, float]:
    """{sigma: model timestep} where a SamplerConfig's schedule feeds the model something
    other than ``1000 * sigma`` (Wan's truncated integers); empty otherwise."""
    if config.kind != "fewstep" and getattr(config, "schedule", "flow") == "wan":
        sig, ts = wan_unipc_schedule(config.num_steps, config.shift)
        return dict(zip(sig[:-1].tolist(), ts.tolist()))
    return {}


def sampler_for(config, sigmas: torch.Tensor | None = None) -> Sampler:
    """The sampler of a SamplerConfig over ``sigmas`` (``[N+1]`` or per-frame ``[N+1, F]``;
    default :func:`config_sigmas`), feeding the model the schedule's own timesteps."""
    smp = make_sampler(config.kind, sigmas=config_sigmas(config) if sigmas is None else sigmas)
    smp.timestep_of = config_timestep_of(config)
    return smp


# --------------------------------------------------------------------------- #
# CogVideoX: v-prediction on a discrete DDPM schedule (its own samplers)
# --------------------------------------------------------------------------- #
# Everything above is rectified flow. CogVideoX is sampled in its own (variance-preserving)
# space with the raw v-prediction of the DiT and integer DDPM timesteps, exactly as
# diffusers' CogVideoXDDIMScheduler / CogVideoXDPMScheduler step it (those classes are the
# numerical reference in tests/test_cogvideox_pipeline.py; the code here is our own).
COGVIDEOX_SAMPLER_KINDS = ("ddim", "dpm")
_COGVIDEOX_BETA_SCHEDULES = ("linear", "scaled_linear")
_COGVIDEOX_SPACINGS = ("trailing", "leading", "linspace")
_COGVIDEOX_PREDICTIONS = ("v_prediction", "epsilon", "sample")
_COGVIDEOX_SCHEDULERS = {"CogVideoXDDIMScheduler": "ddim", "CogVideoXDPMScheduler": "dpm"}


@dataclasses.dataclass(frozen=True)
class CogVideoXSchedule:
    """The discrete schedule of a CogVideoX ``scheduler/scheduler_config.json`` (field names
    and defaults of the published CogVideoX-2b config; CogVideoX-5b: ``snr_shift_scale=1``).

    * ``alphas_cumprod``: betas ``linspace(beta_start, beta_end, T)`` ("linear", float32 as
      diffusers computes it) or ``linspace(sqrt(beta_start), sqrt(beta_end), T)^2``
      ("scaled_linear", float64); a = cumprod(1 - beta); SNR shift ``a / (k + (1 - k) a)``
      with k = ``snr_shift_scale``; with ``rescale_betas_zero_snr`` sqrt(a) is shifted and
      scaled so that a_0 keeps its value and a_{T-1} = 0 (zero terminal SNR).
    * timesteps of N steps (``timestep_spacing``): "trailing" ``round(arange(T, 0, -T/N)) - 1``
      (999, 979, ..., 19 for N = 50), "leading" ``arange(N) * (T // N)`` reversed plus
      ``steps_offset``, "linspace" ``round(linspace(0, T-1, N))`` reversed. numpy's float
      arange yields N + 1 trailing values for some N (61, 103, ...); diffusers then runs an
      extra step at timestep -1 (which indexes the table's last entry); we keep the first N.
    * the step goes from t to ``t - T // N`` (diffusers' rule, even where the next timestep
      of the list differs by rounding), to a "final" a = 1 (``set_alpha_to_one``) or a_0
      past the start of the table.

    ``clip_sample`` / ``thresholding`` are not part of it: CogVideoX's schedulers ignore them.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    snr_shift_scale: float = 3.0
    rescale_betas_zero_snr: bool = True
    timestep_spacing: str = "trailing"
    steps_offset: int = 0
    set_alpha_to_one: bool = True
    prediction_type: str = "v_prediction"

    def __post_init__(self) -> None:
        if self.beta_schedule not in _COGVIDEOX_BETA_SCHEDULES:
            raise ValueError(f"beta_schedule {self.beta_schedule!r} is not supported; expected one of "
                             f"{_COGVIDEOX_BETA_SCHEDULES}")
        if self.timestep_spacing not in _COGVIDEOX_SPACINGS:
            raise ValueError(f"timestep_spacing {self.timestep_spacing!r} is not supported; expected one of "
                             f"{_COGVIDEOX_SPACINGS}")
        if self.prediction_type not in _COGVIDEOX_PREDICTIONS:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not supported; expected one of "
                             f"{_COGVIDEOX_PREDICTIONS}")
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {self.num_train_timesteps!r}")

    @classmethod
    def from_config(cls, config: dict) -> "CogVideoXSchedule":
        """From a diffusers scheduler config dict (``scheduler_config.json``); unknown keys
        are ignored, ``trained_betas`` (explicit betas) is refused."""
        if config.get("trained_betas") is not None:
            raise ValueError("scheduler config with trained_betas is not supported (give beta_start/beta_end)")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in fields})

    def alphas_cumprod(self) -> torch.Tensor:
        """a_t, t = 0..T-1 (float64 tensor [T]; module notes above for the recipe)."""
        T = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float32)
        else:
            betas = torch.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, T, dtype=torch.float64) ** 2
        a = torch.cumprod(1.0 - betas, dim=0)
        k = self.snr_shift_scale
        a = a / (k + (1 - k) * a)
        if self.rescale_betas_zero_snr:
            r = a.sqrt()
            r0, rT = r[0].clone(), r[-1].clone()
            a = ((r - rT) * (r0 / (r0 - rT))) ** 2
        return a.double()

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """The N integer timesteps (int64 [N], decreasing) of ``timestep_spacing``."""
        import numpy as np

        T = self.num_train_timesteps
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be an int in [1, {T}], got {num_steps!r}")
        if self.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, num_steps).round()[::-1].astype(np.int64)
        elif self.timestep_spacing == "leading":
            ts = (np.arange(0, num_steps) * (T // num_steps)).round()[::-1].astype(np.int64) + self.steps_offset
        else:
            ts = np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64)[:num_steps] - 1
        return torch.from_numpy(ts.copy())


def cogvideox_scheduler_kind(config: dict) -> str:
    """"ddim" or "dpm" from a scheduler config's ``_class_name`` (CogVideoXDDIMScheduler /
    CogVideoXDPMScheduler); another class is refused."""
    name = config.get("_class_name", "CogVideoXDDIMScheduler")
    if name not in _COGVIDEOX_SCHEDULERS:
        raise ValueError(f"scheduler {name!r} is not a CogVideoX scheduler ({', '.join(_COGVIDEOX_SCHEDULERS)})")
    return _COGVIDEOX_SCHEDULERS[name]


def cogvideox_flow_sigmas(schedule: "CogVideoXSchedule", num_steps: int) -> torch.Tensor:
    """CogVideoX's DDIM as a flow schedule: ``[N+1]`` float64 sigmas, N = ``num_steps``.

    A VP state x_t = sqrt(a) x0 + sqrt(1 - a) eps divided by sqrt(a) + sqrt(1 - a) is the
    flow state (1 - s) x0 + s eps with s = sqrt(1 - a) / (sqrt(a) + sqrt(1 - a)); in that
    variable a deterministic DDIM step from a to a' is exactly the Euler step from s to s'
    with the velocity eps - x0 of the same prediction. Row i is s at the step's timestep
    ``schedule.timesteps(N)[i]`` (so :class:`~engine.models.adapters.VPredictionAdapter`
    feeds the model that integer timestep); the last row is s of the final alpha (0 with
    ``set_alpha_to_one``). DDIM steps from t to t - T // N; a step count whose timestep list
    does not follow that rule (diffusers then feeds the model a timestep the latents are
    not at) is refused, naming counts that work (e.g. 50)."""
    if not schedule.set_alpha_to_one:
        raise ValueError("CogVideoX DDIM with set_alpha_to_one=False ends at alpha_0 < 1, where DDIM returns the VP "
                         "state, not the flow state the runtime keeps: not supported (the published CogVideoX "
                         "scheduler configs set it to true)")
    if schedule.prediction_type != "v_prediction":
        raise ValueError(f"the runtime's CogVideoX DDIM steps v-prediction models (VPredictionAdapter); "
                         f"prediction_type {schedule.prediction_type!r} is not supported")
    ts = schedule.timesteps(num_steps)
    T = schedule.num_train_timesteps
    nxt = ts - T // num_steps
    if not bool((nxt[:-1] == ts[1:]).all()):
        ok = [n for n in (10, 20, 25, 40, 50, 100) if n <= T and T % n == 0]
        raise ValueError(f"{num_steps} CogVideoX DDIM steps: diffusers steps each timestep t to t - {T // num_steps}, "
                         f"which is not the next of its {schedule.timestep_spacing} timesteps {ts[:4].tolist()}...; "
                         f"the runtime's DDIM needs the two to agree: use e.g. {ok} steps")
    ac = schedule.alphas_cumprod()
    a = torch.cat([ac[ts], torch.ones(1, dtype=torch.float64) if int(nxt[-1]) < 0 else ac[nxt[-1:]]])
    return vp_flow_sigma(a)


def vp_flow_sigma(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Flow sigma s = sqrt(1 - a) / (sqrt(a) + sqrt(1 - a)) of VP states with alpha_bar ``a``
    (float64, same shape): the one formula the CogVideoX schedule and the adapter share."""
    a = alpha_bar.double()
    sa, sb = a.sqrt(), (1 - a).clamp_min(0).sqrt()
    return sb / (sa + sb)


