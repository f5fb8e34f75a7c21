"""Deterministic per-frame noise and the noise-interpolated initial latents of a job.

Noise addressing.  The noise of frame position ``p`` depends only on
``(seed, stream, p)``: :func:`frame_noise` seeds a fresh CPU ``torch.Generator`` per
frame with :func:`frame_seed` -- a splitmix64 chain over the three integers -- draws
``torch.randn`` there and moves the result to the device.  The output therefore never
depends on the order jobs ran in, on the number of workers or on the device.
``stream`` separates independent uses (e.g. 0 = planning/initial noise, 1 = fresh
noise share, 2 = anchor re-noising).

Unified noise (LongVie 2) is not a separate mode: draw the planning noise once and pass
the *same* tensor to :func:`noise_init` for every clip.

:func:`noise_init` writes the initial latents of a whole job in one pass:

1. interpolation between planning frames.  For a frame at position ``k`` with
   neighbouring planning positions ``p < k < q`` and ``w = (k - p) / (q - p)``:

   - ``mode="linear"``: ``eps_k = ((1-w) eps_p + w eps_q) / sqrt((1-w)^2 + w^2)``
   - ``mode="slerp"``:  ``eps_k = cos(w pi/2) eps_p + sin(w pi/2) eps_q``

   Both keep unit variance for independent unit-variance ``eps_p``, ``eps_q``.  A frame
   at a planning position copies it; frames before the first / after the last planning
   position copy the nearest one.
2. fresh share: ``eps_k <- sqrt(1 - rho) eps_k + sqrt(rho) fresh_k`` (variance kept).
3. anchor re-noising: ``x_k = (1 - s_k) x0_k + s_k eps_k`` with ``s_k = sigma[k]``;
   ``s_k = 1`` leaves pure noise and ``x0_k`` is then not read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from engine_kernels._triton import check_device, tl, triton

_MASK64 = (1 << 64) - 1
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _splitmix64(x: int) -> int:
    """One splitmix64 step (Steele, Lea & Flood 2014): advance by the golden gamma, then mix."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def frame_seed(seed: int, stream: int, position: int) -> int:
    """64-bit generator seed of one frame: ``sm(sm(sm(seed) ^ stream) ^ position)`` where
    ``sm`` is splitmix64 and every input is taken modulo 2**64 (negatives allowed)."""
    h = _splitmix64(int(seed) & _MASK64)
    h = _splitmix64(h ^ (int(stream) & _MASK64))
    return _splitmix64(h ^ (int(position) & _MASK64))


def frame_noise(seed: int, positions: Sequence[int] | torch.Tensor, shape: Sequence[int], *,
                stream: int = 0, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise addressed by frame position.

    Args:
        seed: the run's seed.
        positions: ``F`` absolute frame positions (ints or a 1-D int tensor).
        shape: per-frame shape, ``(C, h, w)`` or ``(B, C, h, w)``.
        stream: independent stream id (see module docstring).
    Returns:
        ``[C, F, h, w]`` or ``[B, C, F, h, w]`` of ``dtype`` on ``device``; frame ``i`` is
        drawn in float32 on the CPU from a generator seeded with
        ``frame_seed(seed, stream, positions[i])`` and is identical wherever it is drawn.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise ValueError(f"shape must be (C, h, w) or (B, C, h, w) with positive sizes, got {shape}")
    if isinstance(positions, torch.Tensor):
        if positions.dim() != 1 or positions.dtype.is_floating_point:
            raise ValueError("positions must be a 1-D integer tensor")
        positions = positions.tolist()
    positions = [int(p) for p in positions]
    if not positions:
        raise ValueError("positions is empty")
    frames = []
    gen = torch.Generator(device="cpu")
    for p in positions:
        gen.manual_seed(frame_seed(seed, stream, p))
        frames.append(torch.randn(shape, generator=gen, dtype=torch.float32))
    noise = torch.stack(frames, dim=-3)
    return noise.to(device=device or "cpu", dtype=dtype)


def interpolation_weights(frame_positions: Sequence[int] | torch.Tensor,
                          planning_positions: Sequence[int] | torch.Tensor,
                          mode: str = "linear"):
    """Per-frame source indices and weights of the interpolation step.

    Returns ``(ia, ib, wa, wb)``: int64 ``[F]`` indices into the planning frames and
    float64 ``[F]`` weights with ``eps_k = wa[k] * eps[ia[k]] + wb[k] * eps[ib[k]]``.
    ``planning_positions`` must be strictly increasing.
    """
    if mode not in ("linear", "slerp"):
        raise ValueError(f"mode must be 'linear' or 'slerp', got {mode!r}")
    fp = torch.as_tensor(frame_positions).to("cpu", torch.int64).flatten()
    pp = torch.as_tensor(planning_positions).to("cpu", torch.int64).flatten()
    if fp.numel() == 0 or pp.numel() == 0:
        raise ValueError("frame_positions and planning_positions must be non-empty")
    if pp.numel() > 1 and not bool((pp[1:] > pp[:-1]).all()):
        raise ValueError(f"planning_positions must be strictly increasing, got {pp.tolist()}")
    # ib: first planning position >= k (clamped); ia: last planning position <= k (clamped)
    ib = torch.searchsorted(pp, fp, right=False).clamp(max=pp.numel() - 1)
    ia = (torch.searchsorted(pp, fp, right=True) - 1).clamp(min=0)
    p, q = pp[ia].double(), pp[ib].double()
    span = q - p
    w = torch.where(span > 0, (fp.double() - p) / span.clamp(min=1), torch.zeros_like(p))
    w = w.clamp(0.0, 1.0)
    if mode == "linear":
        norm = torch.sqrt((1 - w) ** 2 + w ** 2)
        wa, wb = (1 - w) / norm, w / norm
    else:
        wa, wb = torch.cos(w * math.pi / 2), torch.sin(w * math.pi / 2)
    # exact hits and outside frames copy one planning frame with weight exactly 1
    copy = span == 0
    wa = torch.where(copy, torch.ones_like(wa), wa)
    wb = torch.where(copy, torch.zeros_like(wb), wb)
    return ia, ib, wa, wb


def _prepare(frame_positions, planning_positions, planning_noise, mode, fresh, rho, x0, sigma):
    """Validate inputs; return (ia, ib, wa, wb, c_fresh, sigma_tensor or None)."""
    if planning_noise.dim() != 5:
        raise ValueError(f"planning_noise must be [B, C, P, h, w], got {tuple(planning_noise.shape)}")
    if planning_noise.dtype not in _DTYPES:
        raise TypeError(f"planning_noise must be one of {_DTYPES}, got {planning_noise.dtype}")
    B, C, P, h, w = planning_noise.shape
    pp = torch.as_tensor(planning_positions).flatten()
    if pp.numel() != P:
        raise ValueError(f"planning_positions has {pp.numel()} entries but planning_noise has P={P}")
    ia, ib, wa, wb = interpolation_weights(frame_positions, pp, mode)
    F = ia.numel()
    want = (B, C, F, h, w)
    rho = float(rho)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [0, 1], got {rho}")
    if rho > 0 and fresh is None:
        raise ValueError("rho > 0 needs fresh noise [B, C, F, h, w]")
    for name, t in (("fresh", fresh), ("x0", x0)):
        if t is not None and (tuple(t.shape) != want or t.dtype not in _DTYPES):
            raise ValueError(f"{name} must be [B, C, F, h, w]={want} float, got "
                             f"{tuple(t.shape)} {t.dtype}")
    s = None
    if sigma is not None:
        if x0 is None:
            raise ValueError("sigma (anchor re-noising) needs x0 [B, C, F, h, w]")
        s = torch.as_tensor(sigma, dtype=torch.float64).flatten().cpu()
        if s.numel() != F:
            raise ValueError(f"sigma must have F={F} entries, got {s.numel()}")
        if not bool(((s >= 0) & (s <= 1)).all()):
            raise ValueError(f"sigma entries must lie in [0, 1], got {s.tolist()}")
    elif x0 is not None:
        raise ValueError("x0 given without sigma; pass sigma [F] (1.0 = frame not re-noised)")
    c_mix = math.sqrt(1.0 - rho) if fresh is not None else 1.0
    return ia, ib, wa * c_mix, wb * c_mix, math.sqrt(rho), s


def noise_init_reference(frame_positions: Sequence[int] | torch.Tensor,
                         planning_positions: Sequence[int] | torch.Tensor,
                         planning_noise: torch.Tensor, *, mode: str = "linear",
                         fresh: torch.Tensor | None = None, rho: float = 0.0,
                         x0: torch.Tensor | None = None,
                         sigma: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Plain-torch :func:`noise_init` (float32 math); returns ``[B, C, F, h, w]`` in
    ``planning_noise.dtype``."""
    ia, ib, wa, wb, c_fresh, s = _prepare(frame_positions, planning_positions, planning_noise,
                                          mode, fresh, rho, x0, sigma)
    dev = planning_noise.device
    pn = planning_noise.float()
    shape = (1, 1, -1, 1, 1)
    eps = (pn[:, :, ia.to(dev)] * wa.float().to(dev).view(shape)
           + pn[:, :, ib.to(dev)] * wb.float().to(dev).view(shape))
    if fresh is not None:
        eps = eps + c_fresh * fresh.float()
    if s is not None:
        sf = s.float().to(dev).view(shape)
        renoised = (1 - sf) * x0.float() + sf * eps
        eps = torch.where(sf == 1, eps, renoised)
    return eps.to(planning_noise.dtype)


@triton.jit
def _noise_init_kernel(
    PN, FRESH, X0, OUT, IA, IB, WA, WB, SIGMA,
    C, F, hw, c_fresh,
    spn_b, spn_c, spn_p, sfr_b, sfr_c, sfr_f, sx0_b, sx0_c, sx0_f, so_b, so_c, so_f,
    HAS_FRESH: tl.constexpr, HAS_SIGMA: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program (b*C*F + c*F + f, hw block): writes BLOCK elements of one frame slice."""
    pid = tl.program_id(0)
    f = pid % F
    c = (pid // F) % C
    b = pid // (F * C)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < hw
    ia = tl.load(IA + f)
    ib = tl.load(IB + f)
    wa = tl.load(WA + f)
    wb = tl.load(WB + f)
    base = PN + b * spn_b + c * spn_c + offs
    eps = wa * tl.load(base + ia * spn_p, mask=inside, other=0.0).to(tl.float32)
    eps += wb * tl.load(base + ib * spn_p, mask=inside, other=0.0).to(tl.float32)
    if HAS_FRESH:
        fr = tl.load(FRESH + b * sfr_b + c * sfr_c + f * sfr_f + offs, mask=inside, other=0.0)
        eps += c_fresh * fr.to(tl.float32)
    if HAS_SIGMA:
        s = tl.load(SIGMA + f)
        if s != 1.0:  # frames with s == 1 stay pure noise and never read x0
            x0 = tl.load(X0 + b * sx0_b + c * sx0_c + f * sx0_f + offs, mask=inside, other=0.0)
            eps = (1.0 - s) * x0.to(tl.float32) + s * eps
    tl.store(OUT + b * so_b + c * so_c + f * so_f + offs, eps.to(OUT.dtype.element_ty), mask=inside)


def _hw_flat(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its last two dims jointly contiguous (copy only if they are not)."""
    h, w = t.shape[-2:]
    if t.stride(-1) == 1 and t.stride(-2) == w:
        return t
    return t.contiguous()


def noise_init(frame_positions: Sequence[int] | torch.Tensor,
               planning_positions: Sequence[int] | torch.Tensor,
               planning_noise: torch.Tensor, *, mode: str = "linear",
               fresh: torch.Tensor | None = None, rho: float = 0.0,
               x0: torch.Tensor | None = None,
               sigma: Sequence[float] | torch.Tensor | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Initial latents of a job in one pass (see the module docstring for the maths).

    Args:
        frame_positions: ``F`` absolute positions of the job's frames (any order).
        planning_positions: ``P`` strictly increasing positions of the planning frames.
        planning_noise: ``[B, C, P, h, w]`` noise of the planning frames.
        mode: ``"linear"`` (variance-normalised lerp) or ``"slerp"``.
        fresh: ``[B, C, F, h, w]`` fresh noise, mixed with share ``rho`` in [0, 1].
        x0: ``[B, C, F, h, w]`` clean latents of anchor frames (needs ``sigma``).
        sigma: ``[F]`` re-noising levels in [0, 1]; 1.0 = pure noise (x0 not read).
        out: optional preallocated contiguous ``[B, C, F, h, w]`` of ``planning_noise.dtype``.
    Returns:
        ``[B, C, F, h, w]`` in ``planning_noise.dtype``.
    """
    ia, ib, wa, wb, c_fresh, s = _prepare(frame_positions, planning_positions, planning_noise,
                                          mode, fresh, rho, x0, sigma)
    tensors = [planning_noise] + [t for t in (fresh, x0) if t is not None]
    check_device(*tensors)
    dev = planning_noise.device
    B, C, _, h, w = planning_noise.shape
    F = ia.numel()
    want = (B, C, F, h, w)
    if out is None:
        out = torch.empty(want, device=dev, dtype=planning_noise.dtype)
    elif tuple(out.shape) != want or out.dtype != planning_noise.dtype or not out.is_contiguous():
        raise ValueError(f"out must be contiguous {want} {planning_noise.dtype}")
    pn = _hw_flat(planning_noise)
    fr = _hw_flat(fresh) if fresh is not None else out
    x0t = _hw_flat(x0) if (x0 is not None and s is not None) else out
    sig = (s if s is not None else torch.ones(F, dtype=torch.float64)).to(dev, torch.float32)
    hw = h * w
    block = min(4096, 1 << (hw - 1).bit_length())
    grid = (B * C * F, -(-hw // block))
    _noise_init_kernel[grid](
        pn, fr, x0t, out, ia.to(dev, torch.int32), ib.to(dev, torch.int32),
        wa.to(dev, torch.float32), wb.to(dev, torch.float32), sig,
        C, F, hw, c_fresh,
        pn.stride(0), pn.stride(1), pn.stride(2), fr.stride(0), fr.stride(1), fr.stride(2),
        x0t.stride(0), x0t.stride(1), x0t.stride(2), out.stride(0), out.stride(1), out.stride(2),
        HAS_FRESH=fresh is not None, HAS_SIGMA=s is not None, BLOCK=block,
        num_warps=4 if block <= 1024 else 8,
    )
    return out


__all__ = ["frame_noise", "frame_seed", "interpolation_weights", "noise_init", "noise_init_reference"]
