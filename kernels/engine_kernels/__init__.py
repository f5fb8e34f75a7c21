"""Triton kernels for the video world-model engine, each beside a plain-torch reference.

Every public kernel ``foo`` has a reference ``foo_reference`` with the same signature
that the tests compare against on fresh random inputs.

Importing this package never needs a GPU.  When no CUDA device is visible we set
``TRITON_INTERPRET=1`` (unless the caller already chose a value) *before* triton is
imported, so the Triton kernels run -- slowly -- in triton's CPU interpreter.  Triton
reads that variable when a ``@triton.jit`` function is defined, which is why this
happens here, before any kernel module is imported.

Public API
----------
- attention: :func:`block_attention`, :func:`block_attention_reference`,
  :func:`build_block_mask`, :class:`BlockMask`, and the frame-visibility pattern
  constructors in :mod:`engine_kernels.patterns`.
- spectral filters: :func:`lowpass`, :func:`highpass`, :func:`spectral_mix`,
  :func:`highfreq_energy` (+ ``*_reference``), :func:`frequency_response`,
  :func:`circulant_filter_matrix`.
- noise: :func:`frame_noise`, :func:`noise_init`, :func:`noise_init_reference`,
  :func:`interpolation_weights`.
- DiT fusions: :func:`layernorm_modulate`, :func:`qk_rmsnorm_rope` (+ ``*_reference``).
"""

from __future__ import annotations

import os


def _cuda_visible() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        return False


if not _cuda_visible():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from engine_kernels._triton import interpreting, triton_available  # noqa: E402
from engine_kernels import patterns  # noqa: E402
from engine_kernels.block_mask import BlockMask, build_block_mask, clear_block_mask_cache  # noqa: E402
from engine_kernels.block_attention import block_attention, block_attention_reference  # noqa: E402
from engine_kernels.spectral import (  # noqa: E402
    circulant_filter_matrix,
    frequency_response,
    highfreq_energy,
    highfreq_energy_reference,
    highpass,
    highpass_reference,
    lowpass,
    lowpass_reference,
    spectral_mix,
    spectral_mix_reference,
)
from engine_kernels.noise import (  # noqa: E402
    frame_noise,
    frame_seed,
    interpolation_weights,
    noise_init,
    noise_init_reference,
)
from engine_kernels.fused import (  # noqa: E402
    layernorm_modulate,
    layernorm_modulate_reference,
    qk_rmsnorm_rope,
    qk_rmsnorm_rope_reference,
)

__all__ = [
    "BlockMask",
    "block_attention",
    "block_attention_reference",
    "build_block_mask",
    "circulant_filter_matrix",
    "clear_block_mask_cache",
    "frame_noise",
    "frame_seed",
    "frequency_response",
    "highfreq_energy",
    "highfreq_energy_reference",
    "highpass",
    "highpass_reference",
    "interpolation_weights",
    "interpreting",
    "layernorm_modulate",
    "layernorm_modulate_reference",
    "lowpass",
    "lowpass_reference",
    "noise_init",
    "noise_init_reference",
    "patterns",
    "qk_rmsnorm_rope",
    "qk_rmsnorm_rope_reference",
    "spectral_mix",
    "spectral_mix_reference",
    "triton_available",
]
