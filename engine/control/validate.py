"""Validation of control inputs: every check names the input and says what is wrong."""

from __future__ import annotations

import numpy as np
import torch

from ..checks import check_finite


class ControlError(ValueError):
    """A control input is malformed (shape, frame count, value range, non-finite values)."""


def as_float_tensor(name: str, x, *, ndim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """x (array-like) as a float64 CPU tensor; checks the number of dims and finiteness."""
    if isinstance(x, (str, bytes)):
        raise ControlError(f"{name} must be numbers (an array or tensor), got a string {x!r}")
    try:
        t = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise ControlError(f"{name} must be an array of numbers: {exc}") from None
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if dims is not None and t.dim() not in dims:
        raise ControlError(f"{name} must have {' or '.join(str(d) for d in dims)} dimensions, got shape {tuple(t.shape)}")
    check_finite(name, t, ControlError)
    return t




def check_range(name: str, t: torch.Tensor, lo: float | None, hi: float | None, what: str = "") -> None:
    if lo is not None and bool((t < lo).any()):
        raise ControlError(f"{name} must be >= {lo}{what}; its minimum is {float(t.min()):g}")
    if hi is not None and bool((t > hi).any()):
        raise ControlError(f"{name} must be <= {hi}{what}; its maximum is {float(t.max()):g}")


def check_frames(name: str, have: int, need: int, unit: str = "video frames") -> None:
    """A control must cover the requested length: fewer frames is an error (never repeated)."""
    if have < need:
        raise ControlError(f"{name} covers {have} {unit} but the video needs {need}: a control must cover the whole "
                           f"requested length (it is never repeated or stretched)")


def video_tensor(name: str, x, num_frames: int, height: int, width: int, *, channels: int | None,
                 value_range: tuple[float, float] | None) -> torch.Tensor:
    """A control video as float32 [T, C, H, W] (trimmed to ``num_frames``, resized to
    height x width). Accepts [T, H, W] (one channel), [T, H, W, C] (channels last) or
    [T, C, H, W]; uint8 input is read as 0..255 and mapped to [0, 1]."""
    is_u8 = (isinstance(x, np.ndarray) and x.dtype == np.uint8) or (isinstance(x, torch.Tensor) and x.dtype == torch.uint8)
    t = as_float_tensor(name, x, ndim=(3, 4))
    if is_u8:
        t = t / 255.0
    if t.dim() == 3:
        t = t[:, None]
    elif channels is not None and t.shape[1] != channels and t.shape[-1] == channels:
        t = t.permute(0, 3, 1, 2)
    if channels is not None and t.shape[1] != channels:
        raise ControlError(f"{name} must have {channels} channel(s) ([T, H, W, {channels}] or [T, {channels}, H, W]); "
                           f"got shape {tuple(np.asarray(x).shape)}")
    check_frames(name, t.shape[0], num_frames)
    t = t[:num_frames]
    if value_range is not None:
        check_range(name, t, value_range[0], value_range[1], " (uint8 input is read as 0..255)" if is_u8 else "")
    t = t.float()
    if tuple(t.shape[-2:]) != (height, width):
        t = torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
    return t
