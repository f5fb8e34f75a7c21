"""Separable spectral low-/high-pass filters on latent frames.

All functions act on the last two dims of ``x`` ``[..., h, w]`` (e.g. a latent
``[B, C, F, h, w]``): every (batch, channel, frame) slice is filtered on its own.

Frequency response.  With ``f`` the signed normalised frequency of an FFT bin
(``torch.fft.fftfreq(n)``, cycles per sample, in ``[-0.5, 0.5)``) and ``c`` the cutoff
in ``(0, 0.5]``:

- ``kind="gaussian"``: ``g(f) = exp(-f**2 / (2 * c**2))`` (so ``g(c) = exp(-1/2)``);
- ``kind="box"``: ``g(f) = 1 if |f| <= c else 0`` (``|f| <= c + 1e-12``, so bins that
  land exactly on the cutoff are kept).

The 2-D response is separable, ``G(fy, fx) = g(fy) * g(fx)``, hence

    L(x) = A_h @ X @ A_w^T,   A_n = Re(F_n^-1 diag(g) F_n)   (real, circulant, n x n)
    H(x) = x - L(x)

with periodic boundary handling (the filter wraps around the frame edges, exactly like
the FFT references).  Because ``g`` is real and even, ``A`` is also symmetric.  The Triton kernel computes both matmuls (and the subtraction,
mix or energy reduction) in one pass per slice; ``A`` is built in float64, cast to the
compute dtype and cached per ``(n, cutoff, kind, dtype, device)``.
"""

from __future__ import annotations

import functools

import torch

from engine_kernels._triton import check_device, next_pow2, tl, triton

_KINDS = ("gaussian", "box")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_SIDE = 256
_MODE_LOW, _MODE_HIGH, _MODE_MIX, _MODE_ENERGY = 0, 1, 2, 3


def _check_filter(cutoff: float, kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if not (0.0 < float(cutoff) <= 0.5):
        raise ValueError(f"cutoff must be a normalised frequency in (0, 0.5], got {cutoff}")


def frequency_response(n: int, cutoff: float, kind: str = "gaussian",
                       dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``g`` at the ``n`` FFT bins (``torch.fft.fftfreq(n)`` order), shape ``[n]``."""
    _check_filter(cutoff, kind)
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    if kind == "gaussian":
        g = torch.exp(-(f * f) / (2.0 * float(cutoff) ** 2))
    else:
        g = (f.abs() <= float(cutoff) + 1e-12).to(torch.float64)
    return g.to(dtype)


@functools.lru_cache(maxsize=128)
def _filter_matrix_cached(n: int, cutoff: float, kind: str, dtype: torch.dtype,
                          device: str) -> torch.Tensor:
    g = frequency_response(n, cutoff, kind)
    fourier = torch.fft.fft(torch.eye(n, dtype=torch.float64), dim=0)  # column j = fft(e_j)
    a = torch.fft.ifft(g[:, None].to(fourier.dtype) * fourier, dim=0).real
    return a.to(device=device, dtype=dtype).contiguous()


def circulant_filter_matrix(n: int, cutoff: float, kind: str = "gaussian",
                            dtype: torch.dtype = torch.float32,
                            device: torch.device | str = "cpu") -> torch.Tensor:
    """Real circulant ``A = Re(F^-1 diag(g) F)`` ``[n, n]``: ``A @ x`` low-passes ``x`` along
    its first dim.  Built in float64, cast to ``dtype``; cached (do not modify in place)."""
    _check_filter(cutoff, kind)
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    return _filter_matrix_cached(int(n), float(cutoff), kind, dtype, str(torch.device(device)))


# ----------------------------------------------------------------------------- references

def _fft_lowpass(x: torch.Tensor, cutoff: float, kind: str) -> torch.Tensor:
    """Low-pass in float64 via fft2, ``[..., h, w]`` -> float64."""
    h, w = x.shape[-2:]
    gh = frequency_response(h, cutoff, kind).to(x.device)
    gw = frequency_response(w, cutoff, kind).to(x.device)
    spec = torch.fft.fft2(x.to(torch.float64))
    return torch.fft.ifft2(spec * (gh[:, None] * gw[None, :])).real


def _check_x(x: torch.Tensor, name: str = "x") -> None:
    if x.dim() < 2:
        raise ValueError(f"{name} must be [..., h, w], got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{name} must be one of {_DTYPES}, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty")


def lowpass_reference(x: torch.Tensor, cutoff: float, kind: str = "gaussian") -> torch.Tensor:
    """FFT low-pass of ``x`` ``[..., h, w]`` (computed in float64), returned in ``x.dtype``."""
    _check_x(x)
    _check_filter(cutoff, kind)
    return _fft_lowpass(x, cutoff, kind).to(x.dtype)


def highpass_reference(x: torch.Tensor, cutoff: float, kind: str = "gaussian") -> torch.Tensor:
    """FFT high-pass ``x - L(x)`` of ``x`` ``[..., h, w]``, returned in ``x.dtype``."""
    _check_x(x)
    _check_filter(cutoff, kind)
    return (x.to(torch.float64) - _fft_lowpass(x, cutoff, kind)).to(x.dtype)


def spectral_mix_reference(a: torch.Tensor, b: torch.Tensor, cutoff: float,
                           kind: str = "gaussian") -> torch.Tensor:
    """``L(a) + H(b)`` for ``a``, ``b`` ``[..., h, w]`` of one shape and dtype."""
    _check_pair(a, b)
    _check_filter(cutoff, kind)
    mixed = _fft_lowpass(a, cutoff, kind) + b.to(torch.float64) - _fft_lowpass(b, cutoff, kind)
    return mixed.to(a.dtype)


def highfreq_energy_reference(x: torch.Tensor, cutoff: float, kind: str = "gaussian") -> torch.Tensor:
    """Mean of ``H(x)**2`` over ``(h, w)``: float32 ``x.shape[:-2]``."""
    _check_x(x)
    _check_filter(cutoff, kind)
    hx = x.to(torch.float64) - _fft_lowpass(x, cutoff, kind)
    return hx.pow(2).mean(dim=(-2, -1)).to(torch.float32)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    _check_x(a, "a")
    _check_x(b, "b")
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"a and b must share shape and dtype, got {tuple(a.shape)} {a.dtype} "
                         f"and {tuple(b.shape)} {b.dtype}")


# ----------------------------------------------------------------------------- kernel

@triton.jit
def _spectral_kernel(
    X, Y, AH, AW, OUT,
    sxs, sxh, sxw, sys_, syh, syw, sos, soh, sow,
    h: tl.constexpr, w: tl.constexpr, ROWS_CONTIGUOUS: tl.constexpr,
    BH: tl.constexpr, BW: tl.constexpr, MODE: tl.constexpr, PRECISION: tl.constexpr,
):
    """One (frame, channel) slice per program.

    MODE 0: OUT = L(X); 1: OUT = X - L(X); 2: OUT = Y + L(X - Y) = L(X) + H(Y);
    3: OUT[slice] = mean((X - L(X))**2) in float32.
    """
    s = tl.program_id(0)
    if ROWS_CONTIGUOUS:  # rows w apart: the compiler sees w's divisibility -> vector access
        sxh, syh, soh, sxw, syw, sow = w, w, w, 1, 1, 1
    rh = tl.arange(0, BH)
    rw = tl.arange(0, BW)
    inside = (rh[:, None] < h) & (rw[None, :] < w)
    x = tl.load(X + s * sxs + rh[:, None] * sxh + rw[None, :] * sxw, mask=inside, other=0.0)
    src = x
    if MODE == 2:
        y = tl.load(Y + s * sys_ + rh[:, None] * syh + rw[None, :] * syw, mask=inside, other=0.0)
        src = (x.to(tl.float32) - y.to(tl.float32)).to(x.dtype)
    # A_h [BH, BH] and A_w^T [BW, BW] (zero-padded), in the compute dtype
    ah = tl.load(AH + rh[:, None] * h + rh[None, :], mask=(rh[:, None] < h) & (rh[None, :] < h), other=0.0)
    awt = tl.load(AW + rw[None, :] * w + rw[:, None], mask=(rw[:, None] < w) & (rw[None, :] < w), other=0.0)
    t = tl.dot(ah, src, input_precision=PRECISION)  # A_h @ X, fp32 accumulate
    low = tl.dot(t.to(x.dtype), awt, input_precision=PRECISION)  # (A_h @ X) @ A_w^T
    if MODE == 0:
        res = low
    elif MODE == 1:
        res = x.to(tl.float32) - low
    elif MODE == 2:
        res = y.to(tl.float32) + low
    else:
        hi = tl.where(inside, x.to(tl.float32) - low, 0.0)
        tl.store(OUT + s, tl.sum(tl.sum(hi * hi, 1), 0) / (h * w))
    if MODE != 3:
        tl.store(OUT + s * sos + rh[:, None] * soh + rw[None, :] * sow,
                 res.to(OUT.dtype.element_ty), mask=inside)


def _launch(mode: int, x: torch.Tensor, y: torch.Tensor | None, cutoff: float, kind: str,
            out: torch.Tensor | None) -> torch.Tensor:
    _check_filter(cutoff, kind)
    h, w = x.shape[-2:]
    if h > _MAX_SIDE or w > _MAX_SIDE:
        raise ValueError(f"spectral kernel supports h, w <= {_MAX_SIDE}, got {h}x{w}; "
                         f"use the *_reference function")
    check_device(x) if y is None else check_device(x, y)
    lead = x.shape[:-2]
    x3 = x.reshape(-1, h, w)
    y3 = y.reshape(-1, h, w) if y is not None else x3
    n = x3.shape[0]
    ah = circulant_filter_matrix(h, cutoff, kind, x.dtype, x.device)
    aw = circulant_filter_matrix(w, cutoff, kind, x.dtype, x.device)
    if mode == _MODE_ENERGY:
        want_shape, want_dtype = lead, torch.float32
    else:
        want_shape, want_dtype = x.shape, x.dtype
    if out is None:
        out = torch.empty(want_shape, device=x.device, dtype=want_dtype)
    elif out.shape != want_shape or out.dtype != want_dtype or out.device != x.device:
        raise ValueError(f"out must be {tuple(want_shape)} {want_dtype} on {x.device}, got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}")
    if mode == _MODE_ENERGY:
        if not out.is_contiguous():
            raise ValueError("out must be contiguous for highfreq_energy")
        o3, ostr = out, (1, 0, 0)
    else:
        o3 = out.view(-1, h, w) if out.is_contiguous() else None
        if o3 is None:
            raise ValueError("out must be contiguous")
        ostr = o3.stride()
    bh, bw = next_pow2(h, 16), next_pow2(w, 16)
    # h and w are compile-time constants (a few latent sizes per process): masks and row
    # offsets then have known divisibility, so rows are loaded and stored as 16-byte vectors.
    rows_contiguous = all(st[1:] == (w, 1) for st in (x3.stride(), y3.stride())) and (
        mode == _MODE_ENERGY or ostr[1:] == (w, 1))
    _spectral_kernel[(n,)](
        x3, y3, ah, aw, o3, *x3.stride(), *y3.stride(), *ostr,
        h=h, w=w, ROWS_CONTIGUOUS=rows_contiguous, BH=bh, BW=bw, MODE=mode, PRECISION="tf32x3" if x.dtype == torch.float32 else "tf32",
        num_warps=4 if bh * bw <= 4096 else 8,
    )
    return out


def lowpass(x: torch.Tensor, cutoff: float, kind: str = "gaussian", *,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Low-pass ``L(x) = A_h @ X @ A_w^T`` of ``x`` ``[..., h, w]`` (h, w <= 256), in ``x.dtype``.

    ``x`` may have any strides (it is reshaped to ``[N, h, w]``, copying only when a view is
    impossible); ``out``: optional contiguous ``[..., h, w]`` buffer of ``x.dtype``.
    float32 runs both matmuls in IEEE float32; float16 / bfloat16 use tensor-core dots with
    float32 accumulation (``A`` cast to ``x.dtype``).
    """
    _check_x(x)
    return _launch(_MODE_LOW, x, None, cutoff, kind, out)


def highpass(x: torch.Tensor, cutoff: float, kind: str = "gaussian", *,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """High-pass ``H(x) = x - L(x)`` of ``x`` ``[..., h, w]``, in ``x.dtype`` (``out`` as in :func:`lowpass`)."""
    _check_x(x)
    return _launch(_MODE_HIGH, x, None, cutoff, kind, out)


def spectral_mix(a: torch.Tensor, b: torch.Tensor, cutoff: float, kind: str = "gaussian", *,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """``L(a) + H(b)`` (low frequencies of ``a``, high of ``b``), computed as ``b + L(a - b)``.

    ``a``, ``b``: ``[..., h, w]`` of one shape and dtype; returns that shape and dtype.
    Used for spectral noise re-initialisation (``a`` a reference latent, ``b`` fresh noise).
    """
    _check_pair(a, b)
    return _launch(_MODE_MIX, a, b, cutoff, kind, out)


def highfreq_energy(x: torch.Tensor, cutoff: float, kind: str = "gaussian", *,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Per-slice mean of ``H(x)**2`` over ``(h, w)``: float32 of shape ``x.shape[:-2]``
    (sharpness-drift telemetry); ``out``: optional contiguous float32 buffer of that shape."""
    _check_x(x)
    return _launch(_MODE_ENERGY, x, None, cutoff, kind, out)


__all__ = [
    "circulant_filter_matrix", "frequency_response", "highfreq_energy",
    "highfreq_energy_reference", "highpass", "highpass_reference", "lowpass",
    "lowpass_reference", "spectral_mix", "spectral_mix_reference",
]
