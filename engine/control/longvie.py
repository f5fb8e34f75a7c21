"""LongVie 2 controls: global depth normalisation, overlapping clips, control-branch weights.

- :func:`normalize_depth`: ONE scale for the whole video -- the 5th and 95th percentiles
  over all pixels of all frames, values clipped to that range and mapped to [0, 1] --
  computed before the video is cut into clips, so every clip sees the same scale.
- :func:`clip_ranges`: overlapping clips (each clip repeats the last ``overlap`` frames of
  the previous one: its history context). In the engine the clips are the ar plan's jobs
  (``context="history"``, ``history_frames`` = N_H in 0..16): a job's control slice is the
  control at its positions, history included, so consecutive slices overlap by N_H.
- :func:`load_control_branches`: dense / sparse branch weights from their own safetensors
  file through :data:`BRANCH_KEY_MAP`.

Key layout of a branch file (ours; ``<path>`` is ``dense`` or ``sparse``)::

    <path>.patch_embedding.{weight,bias}      Conv3d(16 -> D/2), patch (1, 2, 2)
    <path>.blocks.<i>.<Wan block names>       half-width Wan block i (self_attn.q, ffn.0, modulation, ...)
    <path>.inject.<i>.{weight,bias}           zero-initialised Linear(D/2 -> D) into base block i

:data:`BRANCH_KEY_MAP` also reads the common alternatives: wrapper prefixes
(``controlnet.``, ``control_branch.``, ``model.``), ``dense_branch.`` / ``sparse_branch.``,
``dense_blocks.<i>`` / ``sparse_blocks.<i>``, ``<path>.zero_linears.<i>`` /
``<path>.proj_out.<i>`` for the injections and ``<path>.control_patch_embedding`` /
``<path>.patch_embed``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..models.wan import WanDiT
from ..models.wan_control import ControlledWanDiT
from .validate import ControlError

PERCENTILES = (5.0, 95.0)
MAX_HISTORY_FRAMES = 16

BRANCH_KEY_MAP: list[tuple[str, str]] = [
    (r"^(?:controlnet|control_branch|control_branches|model)\.", ""),
    (r"^(dense|sparse)_branch\.", r"\1."),
    (r"^(dense|sparse)_blocks\.(\d+)\.", r"\1.blocks.\2."),
    (r"^(dense|sparse)\.(?:zero_linears|proj_out|zero_proj|out_proj)\.(\d+)\.", r"\1.inject.\2."),
    (r"^(dense|sparse)\.(?:control_patch_embedding|patch_embed|control_embedding)\.", r"\1.patch_embedding."),
]
_COMPILED = [(re.compile(p), r) for p, r in BRANCH_KEY_MAP]


def percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The q-th percentile (0..100) of all elements, linear interpolation between order
    statistics (numpy's default); works on tensors of any size (torch.quantile does not)."""
    flat = x.reshape(-1).double()
    n = flat.numel()
    if n == 0:
        raise ControlError("cannot take a percentile of an empty tensor")
    pos = q / 100.0 * (n - 1)
    lo = int(pos // 1)
    hi = min(lo + 1, n - 1)
    a = flat.kthvalue(lo + 1).values
    b = flat.kthvalue(hi + 1).values if hi != lo else a
    return a + (b - a) * (pos - lo)


def normalize_depth(depth: torch.Tensor, percentiles: tuple[float, float] = PERCENTILES
                    ) -> tuple[torch.Tensor, tuple[float, float]]:
    """Depth video (any shape, all frames of the whole video) -> values in [0, 1]: clipped
    to the [p5, p95] range over ALL pixels of ALL frames and scaled linearly. Returns the
    normalised video (float32) and the (lo, hi) scale used."""
    lo = float(percentile(depth, percentiles[0]))
    hi = float(percentile(depth, percentiles[1]))
    if hi <= lo:
        return torch.zeros_like(depth, dtype=torch.float32), (lo, hi)
    return ((depth.double().clamp(lo, hi) - lo) / (hi - lo)).float(), (lo, hi)


def clip_ranges(num_frames: int, clip_frames: int, overlap: int) -> list[range]:
    """Overlapping clips over ``num_frames`` frames: clip k starts where clip k-1 ends minus
    ``overlap`` frames (its history), every clip has ``clip_frames`` frames (the last may be
    shorter) and together they cover every frame."""
    if clip_frames < 1 or not 0 <= overlap < clip_frames:
        raise ControlError(f"clips need clip_frames >= 1 and 0 <= overlap < clip_frames; got {clip_frames}, {overlap}")
    out, s = [], 0
    while True:
        e = min(s + clip_frames, num_frames)
        out.append(range(s, e))
        if e >= num_frames:
            return out
        s = e - overlap


def cut_clips(video: torch.Tensor, clip_frames: int, overlap: int, dim: int = 0) -> list[torch.Tensor]:
    """Views of ``video`` along ``dim`` for :func:`clip_ranges` (normalise first)."""
    return [video.narrow(dim, r.start, len(r)) for r in clip_ranges(video.shape[dim], clip_frames, overlap)]


def map_branch_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a branch file's keys to ours (:data:`BRANCH_KEY_MAP`, applied repeatedly)."""
    out = {}
    for k, v in state.items():
        new = k
        for _ in range(4):
            prev = new
            for pat, rep in _COMPILED:
                new = pat.sub(rep, new)
            if new == prev:
                break
        if new in out:
            raise ControlError(f"control branch keys {k!r} and another key both map to {new!r}")
        out[new] = v
    return out


def load_control_branches(model, path_or_state, source: str | None = None) -> ControlledWanDiT:
    """Load dense and/or sparse control branches from their own safetensors file (or a
    state dict) into ``model`` (a WanDiT). Returns the controlled model: ``model`` itself
    when it is a :class:`ControlledWanDiT`, else one sharing its weights
    (:meth:`ControlledWanDiT.from_base`). Missing, unexpected or mis-shaped keys are
    reported together in one error."""
    if isinstance(path_or_state, (str, Path)):
        p = Path(path_or_state).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"control branch weights {str(p)!r} do not exist (a .safetensors file)")
        if p.suffix != ".safetensors":
            raise ControlError(f"control branch weights must be a .safetensors file, got {p.name}")
        from safetensors.torch import load_file

        state, source = load_file(str(p)), source or str(p)
    else:
        state, source = dict(path_or_state), source or "control branch state"
    state = map_branch_keys(state)
    kinds = sorted({k.split(".")[0] for k in state})
    bad = [k for k in kinds if k not in ("dense", "sparse")]
    if bad:
        raise ControlError(f"{source}: keys must start with 'dense.' or 'sparse.' (after the key map); found {bad}")
    if not isinstance(model, WanDiT):
        raise ControlError(f"model {type(model).__name__} takes no control branches")
    model = ControlledWanDiT.from_base(model)
    model.load_control_state(state, source=source)
    return model


def branch_state_dict(model) -> dict[str, torch.Tensor]:
    """The dense/sparse branch weights of ``model`` in the file layout (to save with
    ``safetensors.torch.save_file``); empty for a model without control layers."""
    out = {}
    layers = getattr(model, "control_layers", {})
    for kind in ("dense", "sparse"):
        if kind in layers:
            for k, v in layers[kind].state_dict().items():
                out[f"{kind}.{k}"] = v.detach().contiguous().cpu()
    return out
