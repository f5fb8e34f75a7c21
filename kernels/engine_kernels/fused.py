"""Fused elementwise/reduction kernels on the DiT hot path.

- :func:`layernorm_modulate`: adaLN-style ``LayerNorm(x) * (1 + scale[frame]) + shift[frame]``
  with per-frame modulation (needed once every frame has its own timestep, e.g. TPD /
  diffusion forcing), one read and one write of ``x``.
- :func:`qk_rmsnorm_rope`: Wan's q/k RMSNorm over the full hidden dim followed by
  rotary embedding on adjacent pairs, one read and one write.

Both compute in float32 and return ``x.dtype``; each has a ``*_reference`` twin.
"""

from __future__ import annotations

import torch

from engine_kernels._triton import check_device, next_pow2, tl, triton

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} must be one of {_DTYPES}, got {t.dtype}")


# ----------------------------------------------------------------------------- layernorm

def _check_ln(x, shift, scale, tokens_per_frame):
    if x.dim() != 3:
        raise ValueError(f"x must be [B, S, D], got {tuple(x.shape)}")
    B, S, D = x.shape
    for name, t in (("shift", shift), ("scale", scale)):
        if t.dim() != 3 or t.shape[0] != B or t.shape[2] != D:
            raise ValueError(f"{name} must be [B={B}, F, D={D}], got {tuple(t.shape)}")
        _check_float(name, t)
    _check_float("x", x)
    if shift.shape != scale.shape:
        raise ValueError(f"shift and scale differ: {tuple(shift.shape)} vs {tuple(scale.shape)}")
    if int(tokens_per_frame) < 1:
        raise ValueError(f"tokens_per_frame must be positive, got {tokens_per_frame}")
    frames_needed = -(-S // int(tokens_per_frame))
    if frames_needed > shift.shape[1]:
        raise ValueError(f"S={S} tokens at {tokens_per_frame} per frame need {frames_needed} "
                         f"frames of modulation, got F={shift.shape[1]}")


def layernorm_modulate_reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                                 tokens_per_frame: int, eps: float = 1e-6) -> torch.Tensor:
    """``LayerNorm(x) * (1 + scale[:, frame]) + shift[:, frame]``, ``frame = token // tokens_per_frame``.

    x ``[B, S, D]``; shift, scale ``[B, F, D]``; LayerNorm without affine, float32
    statistics (biased variance); returns ``[B, S, D]`` in ``x.dtype``.
    """
    _check_ln(x, shift, scale, tokens_per_frame)
    S = x.shape[1]
    frame = torch.arange(S, device=x.device) // int(tokens_per_frame)
    xf = x.float()
    normed = torch.nn.functional.layer_norm(xf, (x.shape[-1],), eps=eps)
    return (normed * (1 + scale.float()[:, frame]) + shift.float()[:, frame]).to(x.dtype)


@triton.jit
def _layernorm_modulate_kernel(
    X, SHIFT, SCALE, OUT, S, D, tpf, eps,
    sx_b, sx_s, sx_d, ssh_b, ssh_f, ssh_d, ssc_b, ssc_f, ssc_d, so_b, so_s, so_d,
    BLOCK_D: tl.constexpr,
):
    """One token row per program."""
    row = tl.program_id(0)
    b = row // S
    s = row % S
    f = s // tpf
    d = tl.arange(0, BLOCK_D)
    inside = d < D
    x = tl.load(X + b * sx_b + s * sx_s + d * sx_d, mask=inside, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / D
    xc = tl.where(inside, x - mean, 0.0)
    var = tl.sum(xc * xc, 0) / D
    y = xc * tl.math.rsqrt(var + eps)
    sc = tl.load(SCALE + b * ssc_b + f * ssc_f + d * ssc_d, mask=inside, other=0.0).to(tl.float32)
    sh = tl.load(SHIFT + b * ssh_b + f * ssh_f + d * ssh_d, mask=inside, other=0.0).to(tl.float32)
    y = y * (1.0 + sc) + sh
    tl.store(OUT + b * so_b + s * so_s + d * so_d, y.to(OUT.dtype.element_ty), mask=inside)


def layernorm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                       tokens_per_frame: int, eps: float = 1e-6, *,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """Fused per-frame adaLN: see :func:`layernorm_modulate_reference` (same maths).

    x ``[B, S, D]``; shift, scale ``[B, F, D]`` (any strides); optional ``out`` ``[B, S, D]``
    of ``x.dtype``.  Returns ``[B, S, D]`` in ``x.dtype``.
    """
    _check_ln(x, shift, scale, tokens_per_frame)
    check_device(x, shift, scale)
    B, S, D = x.shape
    if out is None:
        out = torch.empty((B, S, D), device=x.device, dtype=x.dtype)
    elif out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(f"out must be {tuple(x.shape)} {x.dtype}")
    block = next_pow2(D, 16)
    _layernorm_modulate_kernel[(B * S,)](
        x, shift, scale, out, S, D, int(tokens_per_frame), float(eps),
        *x.stride(), *shift.stride(), *scale.stride(), *out.stride(),
        BLOCK_D=block, num_warps=min(16, max(1, block // 256)),
    )
    return out


# ----------------------------------------------------------------------------- rmsnorm + rope

def _check_rope(x, weight, cos, sin, num_heads):
    if x.dim() != 3:
        raise ValueError(f"x must be [B, S, H*Dh], got {tuple(x.shape)}")
    _check_float("x", x)
    B, S, HD = x.shape
    if num_heads < 1 or HD % num_heads:
        raise ValueError(f"hidden size {HD} is not divisible by num_heads={num_heads}")
    dh = HD // num_heads
    if dh % 2:
        raise ValueError(f"head dim {dh} must be even for RoPE")
    if weight.shape != (HD,):
        raise ValueError(f"weight must be [H*Dh={HD}], got {tuple(weight.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.shape != (S, dh // 2):
            raise ValueError(f"{name} must be [S={S}, Dh/2={dh // 2}], got {tuple(t.shape)}")
        _check_float(name, t)
    _check_float("weight", weight)
    return dh


def qk_rmsnorm_rope_reference(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor,
                              sin: torch.Tensor, num_heads: int, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the full hidden dim, then RoPE on adjacent pairs, per head.

    x ``[B, S, H*Dh]``; weight ``[H*Dh]``; cos, sin ``[S, Dh/2]``.  In float32:
    ``y = x * rsqrt(mean(x**2) + eps) * weight``, then for pair ``i`` of each head
    ``out[2i] = y[2i] cos[i] - y[2i+1] sin[i]``, ``out[2i+1] = y[2i] sin[i] + y[2i+1] cos[i]``.
    Returns ``[B, S, H, Dh]`` in ``x.dtype``.
    """
    dh = _check_rope(x, weight, cos, sin, num_heads)
    B, S, HD = x.shape
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    y = y.view(B, S, num_heads, dh // 2, 2)
    c = cos.float()[None, :, None, :]
    s = sin.float()[None, :, None, :]
    ye, yo = y[..., 0], y[..., 1]
    out = torch.stack((ye * c - yo * s, ye * s + yo * c), dim=-1)
    return out.reshape(B, S, num_heads, dh).to(x.dtype)


@triton.jit
def _qk_rmsnorm_rope_kernel(
    X, W, COS, SIN, OUT, S, HD, half, eps,
    sx_b, sx_s, sx_d, sw, sc_s, sc_i, ss_s, ss_i,
    BLOCK_P: tl.constexpr,
):
    """One token row per program; works on the HD/2 (even, odd) pairs of the row."""
    row = tl.program_id(0)
    b = row // S
    s = row % S
    p = tl.arange(0, BLOCK_P)
    inside = p < HD // 2
    xrow = X + b * sx_b + s * sx_s
    xe = tl.load(xrow + (2 * p) * sx_d, mask=inside, other=0.0).to(tl.float32)
    xo = tl.load(xrow + (2 * p + 1) * sx_d, mask=inside, other=0.0).to(tl.float32)
    ms = (tl.sum(xe * xe, 0) + tl.sum(xo * xo, 0)) / HD
    r = tl.math.rsqrt(ms + eps)
    ye = xe * r * tl.load(W + (2 * p) * sw, mask=inside, other=0.0).to(tl.float32)
    yo = xo * r * tl.load(W + (2 * p + 1) * sw, mask=inside, other=0.0).to(tl.float32)
    i = p % half  # pair index inside its head
    c = tl.load(COS + s * sc_s + i * sc_i, mask=inside, other=0.0).to(tl.float32)
    sn = tl.load(SIN + s * ss_s + i * ss_i, mask=inside, other=0.0).to(tl.float32)
    orow = OUT + row * HD
    tl.store(orow + 2 * p, (ye * c - yo * sn).to(OUT.dtype.element_ty), mask=inside)
    tl.store(orow + 2 * p + 1, (ye * sn + yo * c).to(OUT.dtype.element_ty), mask=inside)


def qk_rmsnorm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor, num_heads: int, eps: float = 1e-6, *,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Fused :func:`qk_rmsnorm_rope_reference` (same maths, one pass).

    x ``[B, S, H*Dh]`` (any strides); weight ``[H*Dh]``; cos, sin ``[S, Dh/2]``; optional
    contiguous ``out`` ``[B, S, H, Dh]`` of ``x.dtype``.  Returns ``[B, S, H, Dh]``.
    """
    dh = _check_rope(x, weight, cos, sin, num_heads)
    check_device(x, weight, cos, sin)
    B, S, HD = x.shape
    want = (B, S, num_heads, dh)
    if out is None:
        out = torch.empty(want, device=x.device, dtype=x.dtype)
    elif tuple(out.shape) != want or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be contiguous {want} {x.dtype}")
    block = next_pow2(HD // 2, 16)
    _qk_rmsnorm_rope_kernel[(B * S,)](
        x, weight, cos, sin, out, S, HD, dh // 2, float(eps),
        *x.stride(), weight.stride(0), *cos.stride(), *sin.stride(),
        BLOCK_P=block, num_warps=min(16, max(1, block // 256)),
    )
    return out


__all__ = ["layernorm_modulate", "layernorm_modulate_reference", "qk_rmsnorm_rope",
           "qk_rmsnorm_rope_reference"]
