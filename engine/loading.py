"""``engine.load_model``: a DiT from a preset name, a checkpoint file or a folder."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import PRESETS, ModelConfig, get_preset, parse_dtype
from .models.wan import WanDiT, init_random_weights
from .models.wan_control import ControlledWanDiT, split_control_state
from .models.weights import (
    CheckpointError,
    check_state_dict,
    config_from_json,
    infer_config,
    normalise_state_dict,
    read_state_dict,
)


def build_model(config: ModelConfig, *, seed: int = 0, attention_backend: str = "auto", fused_ops: bool = False) -> WanDiT:
    """A DiT with seeded random weights (float32, CPU)."""
    return init_random_weights(WanDiT(config, attention_backend=attention_backend, fused_ops=fused_ops), seed=seed)


def load_model(
    path_or_preset: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    config: ModelConfig | None = None,
    attention_backend: str = "auto",
    fused_ops: bool = False,
    seed: int = 0,
    prefer_ema: bool = True,
    checkpoint_key: str | None = None,
) -> WanDiT:
    """Load a Wan DiT and return it in eval mode on ``device`` in ``dtype``.

    path_or_preset: a preset name (``tiny``, ``wan2.1-t2v-1.3b``, ... -- random weights
    from ``seed``), a diffusers folder or pipeline root, an original-Wan folder or file,
    sharded safetensors with an index, or a Self-Forcing / CausVid ``.pt`` file (its EMA
    generator when ``prefer_ema``; ``checkpoint_key`` names the dict to take, e.g. the MMPL
    release's ``generator``, and must exist). ``config`` overrides the inferred architecture.
    attention_backend: see :mod:`engine.attention` (``auto`` picks the fastest available);
    fused_ops: use the fused Triton LayerNorm+AdaLN and QK-norm+RoPE kernels.
    device: default cuda:0 when available, else cpu; dtype: default bfloat16 on CUDA,
    float32 on CPU. The returned model has ``.source`` (the path, or None for presets); a
    checkpoint holding control layers gives a :class:`ControlledWanDiT`.
    An export folder (one holding ``manifest.json``, from ``python -m export onnx``) gives an
    :class:`export.model.ExportedDiT` that runs the exported graphs instead.
    """
    if getattr(path_or_preset, "is_exported", False):  # an ExportedDiT handed back in (e.g. by generate)
        return path_or_preset.to(device=device, dtype=dtype)
    if (Path(str(path_or_preset)).expanduser() / "manifest.json").is_file():  # an export folder
        from export.model import load_exported

        return load_exported(Path(str(path_or_preset)).expanduser(), dtype=dtype, device=device)
    from .checks import check_device, check_fused_ops

    if device is not None:
        check_device(device)
    device = torch.device(device) if device is not None else torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    check_fused_ops(fused_ops, device)
    dt = parse_dtype(dtype, device)
    key = str(path_or_preset)
    if key.lower() in PRESETS and not Path(key).exists():
        model = build_model(config or get_preset(key), seed=seed, attention_backend=attention_backend, fused_ops=fused_ops)
        model.source = None
        return model.to(device=device, dtype=dt).eval().requires_grad_(False)

    path = Path(key).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{key!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor an existing checkpoint path"
        )
    raw, cfg_json = read_state_dict(path, prefer_ema=prefer_ema, checkpoint_key=checkpoint_key)
    state = normalise_state_dict(raw)
    state, control_state = split_control_state(state)  # control layers (issue 7), when the checkpoint has them
    if config is None:
        config = infer_config(state, config_from_json(cfg_json) if cfg_json else None)
    with torch.device("meta"):
        cls = ControlledWanDiT if control_state else WanDiT
        model = cls(config, attention_backend=attention_backend, fused_ops=fused_ops)
    check_state_dict(model, state, source=str(path))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # dtype or storage problems not caught by the shape check
        raise CheckpointError(f"cannot load {path}: {exc}") from exc
    model = model.to(device=device, dtype=dt)
    if control_state:
        try:
            model.load_control_state(control_state, source=str(path))
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
    model.source = path
    return model.to(device=device, dtype=dt).eval().requires_grad_(False)
