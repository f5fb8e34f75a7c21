"""Drift telemetry: a per-frame sharpness signal of every run, computed on the device.

Long rollouts degrade by blurring and washing out ("error accumulation"); a falling
high-frequency energy is the cheapest signal of it. For every decoded chunk the runtime
emits, :func:`frame_sharpness` takes the luma (mean of R, G, B in [-1, 1]), box-averages it
down to at most 256 pixels a side (the spectral kernel's limit), and measures the mean
squared high-pass response per frame, ``mean(H(x)**2)`` with ``H = x - L(x)`` the spectral
high-pass of :mod:`engine_kernels.spectral` (Gaussian, cutoff :data:`SHARPNESS_CUTOFF` cycles per
sample): the Triton kernel :func:`engine_kernels.highfreq_energy` on CUDA, its float64 FFT
reference on the CPU. The result stays on the device (no host sync per frame or chunk);
:class:`Sharpness` gathers the pieces and copies them to the host once, when asked
(``video.stats.sharpness``, after the run or while it runs).
"""

from __future__ import annotations

import math
import threading

import torch

#: Gaussian cutoff of the high-pass (normalised frequency, cycles per sample).
SHARPNESS_CUTOFF = 0.125
#: Largest side the spectral kernel takes (``engine_kernels.spectral``).
MAX_SIDE = 256


def frame_sharpness(video: torch.Tensor, cutoff: float = SHARPNESS_CUTOFF) -> torch.Tensor:
    """Per-frame high-frequency energy of a decoded chunk.

    video: float ``[B, 3, t, H, W]`` in [-1, 1] (batch row 0 is measured). Returns float32
    ``[t]`` on the video's device: mean over pixels of ``H(luma)**2`` after box-averaging
    by ``ceil(max(H, W) / 256)``.
    """
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be [B, 3, t, H, W], got {tuple(video.shape)}")
    luma = video[0].float().mean(0)  # [t, H, W]
    k = math.ceil(max(luma.shape[-2:]) / MAX_SIDE)
    if k > 1:
        luma = torch.nn.functional.avg_pool2d(luma[:, None], k, k)[:, 0]
    if luma.is_cuda:
        from engine_kernels import highfreq_energy

        with torch.cuda.device(luma.device):  # Triton launches on the current device: make it the frames'
            return highfreq_energy(luma.contiguous(), cutoff)
    from engine_kernels import highfreq_energy_reference

    return highfreq_energy_reference(luma, cutoff)


class Sharpness:
    """The per-frame sharpness of a run, in output order: pieces stay device tensors until
    :meth:`values` copies them (one transfer per call)."""

    def __init__(self) -> None:
        self._parts: list[torch.Tensor] = []
        self._host: list[float] = []
        self._lock = threading.Lock()  # the emitter thread records while a reader may ask

    def record(self, video: torch.Tensor) -> None:
        """Measure a decoded chunk ``[B, 3, t, H, W]`` (on its device, asynchronously)."""
        e = frame_sharpness(video)
        with self._lock:
            self._parts.append(e)

    def values(self) -> list[float]:
        """One float per frame emitted so far."""
        with self._lock:
            if self._parts:
                parts, self._parts = self._parts, []
                self._host.extend(torch.cat([p.to("cpu") for p in parts]).tolist())
            return list(self._host)

    def __len__(self) -> int:
        with self._lock:
            return len(self._host) + sum(int(p.shape[0]) for p in self._parts)


__all__ = ["MAX_SIDE", "SHARPNESS_CUTOFF", "Sharpness", "frame_sharpness"]
