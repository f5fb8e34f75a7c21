"""``engine.load_model``: a DiT from a preset name, a checkpoint file or a folder."""

from __future__ import annotations

import dataclasses
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
    overlay: str | Path | dict | None = None,
) -> WanDiT:
    """Load a Wan DiT and return it in eval mode on ``device`` in ``dtype``.

    path_or_preset: ``tiny`` (the embedded model trained on the driving world,
    :mod:`engine.embedded`), a preset name (``tiny-random``, ``wan2.1-t2v-1.3b``, ... --
    random weights from ``seed``), a diffusers folder or pipeline root, an original-Wan folder or file,
    sharded safetensors with an index, or a Self-Forcing / CausVid ``.pt`` file (its EMA
    generator when ``prefer_ema``; ``checkpoint_key`` names the dict to take, e.g. the MMPL
    release's ``generator``, and must exist). ``config`` overrides the inferred architecture.
    overlay: a partial state (a file or a dict) loaded over the base weights, as releases
    ship fine-tuned layers (LongVie 2's ``dit.safetensors``): every key must exist in the
    base with the same shape (else a :class:`CheckpointError` listing the keys).
    attention_backend: see :mod:`engine.attention` (``auto`` picks the fastest available);
    fused_ops: use the fused Triton LayerNorm+AdaLN and QK-norm+RoPE kernels.
    device: default cuda:0 when available, else cpu; dtype: default bfloat16 on CUDA,
    float32 on CPU. The returned model has ``.source`` (the path, or None for presets); a
    checkpoint holding control layers gives a :class:`ControlledWanDiT`.
    An export folder (one holding ``manifest.json``, from ``python -m engine_export onnx``) gives an
    :class:`engine_export.model.ExportedDiT` that runs the exported graphs instead.
    """
    if getattr(path_or_preset, "is_exported", False):  # an ExportedDiT handed back in (e.g. by generate)
        return path_or_preset.to(device=device, dtype=dtype)
    if (Path(str(path_or_preset)).expanduser() / "manifest.json").is_file():  # an export folder
        from engine_export.model import load_exported

        return load_exported(Path(str(path_or_preset)).expanduser(), dtype=dtype, device=device)
    from .checks import check_device, check_fused_ops

    if device is not None:
        check_device(device)
    device = torch.device(device) if device is not None else torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    check_fused_ops(fused_ops, device)
    dt = parse_dtype(dtype, device)
    key = str(path_or_preset)
    name = None
    if key.lower() == "tiny" and config is None and not Path(key).exists():  # the embedded trained model
        from .embedded import tiny_root

        key, name = str(tiny_root() / "transformer"), "tiny"
    if key.lower() in PRESETS and not Path(key).exists():
        model = build_model(config or get_preset(key), seed=seed, attention_backend=attention_backend, fused_ops=fused_ops)
        if overlay is not None:
            model.load_state_dict(apply_overlay(model.state_dict(), overlay))
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
        if name is not None:
            config = dataclasses.replace(config, name=name)
    with torch.device("meta"):
        cls = ControlledWanDiT if control_state else WanDiT
        model = cls(config, attention_backend=attention_backend, fused_ops=fused_ops)
    check_state_dict(model, state, source=str(path))
    if overlay is not None:
        state = apply_overlay(state, overlay)
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


def apply_overlay(state: dict[str, torch.Tensor], overlay: str | Path | dict) -> dict[str, torch.Tensor]:
    """``state`` (our key names) with the tensors of ``overlay`` (a checkpoint file or a
    state dict in any layout the loader reads) put over it. A key of the overlay that the
    base does not have, or has with another shape, is a :class:`CheckpointError` naming
    the keys: an overlay for another model must not load half-way."""
    where = "overlay" if isinstance(overlay, dict) else str(overlay)
    if isinstance(overlay, dict):
        raw = dict(overlay)
    else:
        p = Path(overlay).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"overlay weights {where!r} do not exist")
        raw, _ = read_state_dict(p)
    if not raw:
        raise CheckpointError(f"{where}: the overlay holds no tensors")
    ov = normalise_state_dict(raw)
    unknown = sorted(k for k in ov if k not in state)
    bad = sorted(f"{k} {tuple(v.shape)} (base: {tuple(state[k].shape)})" for k, v in ov.items()
                 if k in state and tuple(v.shape) != tuple(state[k].shape))
    if unknown or bad:
        parts = ([f"{len(unknown)} key(s) the base does not have {unknown[:8]}"] if unknown else []) + (
            [f"{len(bad)} mis-shaped [{', '.join(bad[:8])}]"] if bad else [])
        raise CheckpointError(f"{where} does not fit the base model: {'; '.join(parts)}: is it the overlay of this "
                              f"base checkpoint?")
    out = dict(state)
    out.update(ov)
    return out


def load_longvie(base, control=None, *, overlay=None, seed: int = 0, **kw):
    """LongVie 2 as released: the base Wan2.1-I2V DiT (any layout :func:`load_model` reads;
    ``overlay``: the release's ``dit.safetensors``, loaded over it) and the release's
    ``control.safetensors`` (``control``: a path or state dict, ``pipe.dual_controller.``
    prefix optional). Returns a :class:`~engine.models.longvie.LongVieDiT`. Without
    ``control`` only an untrained preset base is accepted (its controller gets seeded
    random weights); a real base then raises, as its video would be uncontrolled."""
    from .models.longvie import LongVieDiT

    model = load_model(base, overlay=overlay, seed=seed, **kw)
    if control is None:
        if getattr(model, "source", None) is not None:
            raise CheckpointError(f"LongVie 2 over {model.source}: pass control=<the release's control.safetensors> "
                                  f"(without it the dense / sparse branches are missing and the video uncontrolled)")
        out = LongVieDiT.from_base(model, control_layers=max(1, round(model.config.num_layers * 12 / 40)))
        init_random_weights(out.controller, seed=seed + 7)
        return out.eval()
    if isinstance(control, dict):
        state, where = control, "control weights"
    else:
        p = Path(control).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"LongVie 2 control weights {str(p)!r} do not exist (the release's "
                                    f"control.safetensors)")
        state, _ = read_state_dict(p)
        where = str(p)
    return LongVieDiT.from_base(model, state, source=where).eval()
