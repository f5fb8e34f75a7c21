"""Checkpoint formats for Wan DiTs: read, normalise to our (original-Wan) key layout,
infer the architecture, and load with one clear error for every mismatch.

Formats read:

- diffusers folders: ``config.json`` + ``diffusion_pytorch_model.safetensors``, or shards
  with a ``*.safetensors.index.json``; a pipeline root (``model_index.json``) is followed
  into its ``transformer/`` folder.
- the original Wan layout (``blocks.N.self_attn.q``, ``ffn.0``, ``modulation``,
  ``head.head``, ...) as one safetensors file, shards with an index, or a folder with
  Wan's own ``config.json`` (``dim``, ``num_heads``, ``in_dim``, ...).
- Self-Forcing / CausVid training checkpoints: ``.pt`` files holding ``generator`` /
  ``generator_ema`` dicts whose keys start with ``model.``.

``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` files are read only through
``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import torch

from ..config import PRESETS, ModelConfig

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Wrapper prefixes stripped from keys (training frameworks, DDP, torch.compile, ComfyUI).
KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "_orig_mod.", "module.", "model.")
# Sub-dicts of a training checkpoint that may hold the generator's weights, best first.
CHECKPOINT_DICT_KEYS = ("generator_ema", "generator", "ema", "state_dict", "model", "module")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says why."""


# ----------------------------------------------------------------------------------
# diffusers <-> original key map
# ----------------------------------------------------------------------------------
# (diffusers regex, our name) -- applied to full keys, first match wins.
_DIFFUSERS_TO_OURS: list[tuple[str, str]] = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),  # diffusers' affine cross-attn norm is Wan's norm3
    (r"^(blocks\.\d+)\.ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (r"^(blocks\.\d+)\.ffn\.net\.2\.", r"\1.ffn.2."),
    (r"^(blocks\.\d+)\.attn1\.to_out\.0\.", r"\1.self_attn.o."),
    (r"^(blocks\.\d+)\.attn2\.to_out\.0\.", r"\1.cross_attn.o."),
    (r"^(blocks\.\d+)\.attn1\.to_([qkv])\.", r"\1.self_attn.\2."),
    (r"^(blocks\.\d+)\.attn2\.to_([qkv])\.", r"\1.cross_attn.\2."),
    (r"^(blocks\.\d+)\.attn1\.norm_([qk])\.", r"\1.self_attn.norm_\2."),
    (r"^(blocks\.\d+)\.attn2\.norm_([qk])\.", r"\1.cross_attn.norm_\2."),
    (r"^(blocks\.\d+)\.attn2\.add_k_proj\.", r"\1.cross_attn.k_img."),
    (r"^(blocks\.\d+)\.attn2\.add_v_proj\.", r"\1.cross_attn.v_img."),
    (r"^(blocks\.\d+)\.attn2\.norm_added_k\.", r"\1.cross_attn.norm_k_img."),
]
_COMPILED = [(re.compile(p), r) for p, r in _DIFFUSERS_TO_OURS]
# Keys diffusers itself ignores on load (present in some converted checkpoints).
_IGNORED_DIFFUSERS = re.compile(r"\.norm_added_q\.")


def is_diffusers_layout(keys) -> bool:
    """True when the keys use diffusers' WanTransformer3DModel names."""
    return any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys)


def diffusers_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers WanTransformer3DModel state dict to our (original Wan) names.
    Keys with no mapping are kept as they are (and reported later as unexpected)."""
    out = {}
    for key, value in state.items():
        if _IGNORED_DIFFUSERS.search(key):
            continue
        new = key
        for pat, rep in _COMPILED:
            new, n = pat.subn(rep, key)
            if n:
                break
        out[new] = value
    return out


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``model.``, ``module.``, ``_orig_mod.``, ...) shared by
    all keys, repeatedly."""
    changed = True
    while changed and state:
        changed = False
        for prefix in KEY_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
                break
    return state


# ----------------------------------------------------------------------------------
# reading files
# ----------------------------------------------------------------------------------
def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(
            f"cannot read {path}: {exc}. The file is corrupt or not a safetensors file; re-download or re-export it."
        ) from exc


def _read_torch(path: Path, prefer_ema: bool, checkpoint_key: str | None = None) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch colours its message for terminals
        found = [ln.strip() for ln in text.splitlines() if "Unsupported global" in ln or "GLOBAL" in ln]
        detail = found[0] if found else text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} contains pickled Python objects beyond tensors ({detail}); we only load it with "
            f"torch.load(weights_only=True), which refused it without running it. Convert it to safetensors in a "
            f"trusted environment (safetensors.torch.save_file(state_dict, 'model.safetensors'))."
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} as a torch checkpoint: {exc}. The file may be corrupt.") from exc
    if checkpoint_key is not None:
        if not isinstance(obj, dict) or not isinstance(obj.get(checkpoint_key), dict):
            keys = sorted(obj)[:20] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{path} has no {checkpoint_key!r} dict (asked for by checkpoint_key); its top-level "
                                  f"keys are {keys}")
        obj = obj[checkpoint_key]
    return _find_state_dict(obj, path, prefer_ema)


def _find_state_dict(obj, path: Path, prefer_ema: bool) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of tensors")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    order = CHECKPOINT_DICT_KEYS if prefer_ema else tuple(k for k in CHECKPOINT_DICT_KEYS if "ema" not in k) + ("generator_ema", "ema")
    for key in order:
        sub = obj.get(key)
        if isinstance(sub, dict) and sub:
            return _find_state_dict(sub, path, prefer_ema)
    raise CheckpointError(
        f"{path} has no tensor dict; top-level keys are {sorted(obj)[:20]}; expected tensors or one of {CHECKPOINT_DICT_KEYS}"
    )


def _read_index(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except Exception as exc:
        raise CheckpointError(f"cannot read shard index {index}: {exc}") from exc
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if not shard_path.exists():
            raise CheckpointError(f"shard {shard_path} listed in {index.name} is missing")
        state.update(_read_safetensors(shard_path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{index.name} lists keys that no shard holds: {missing[:10]}")
    return state


def find_transformer_dir(path: Path) -> Path:
    """The folder holding the DiT weights: ``path`` itself, or ``path/transformer`` for a
    diffusers pipeline root."""
    if (path / "model_index.json").exists() and (path / "transformer").is_dir():
        return path / "transformer"
    return path


def read_state_dict(path: str | Path, prefer_ema: bool = True,
                    checkpoint_key: str | None = None) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read raw weights and the config.json beside them (if any) from a file or folder.
    ``checkpoint_key``: the dict of a training ``.pt`` to take (e.g. ``generator``); it must
    be there (else the EMA / plain generator by ``prefer_ema``).

    Returns (state dict with the file's own key names, config dict or None).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    config = None
    if path.is_dir():
        path = find_transformer_dir(path)
        cfg_file = path / "config.json"
        if cfg_file.exists():
            config = json.loads(cfg_file.read_text())
        indexes = sorted(path.glob("*.safetensors.index.json"))
        singles = sorted(path.glob("*.safetensors"))
        torch_files = sorted(p for s in TORCH_SUFFIXES for p in path.glob(f"*{s}"))
        if indexes:
            return _read_index(indexes[0]), config
        if len(singles) == 1:
            return _read_safetensors(singles[0]), config
        if len(singles) > 1:
            raise CheckpointError(
                f"{path} holds several safetensors files {[p.name for p in singles]} but no *.safetensors.index.json; "
                f"pass the file to load or add the index"
            )
        if len(torch_files) == 1:
            return _read_torch(torch_files[0], prefer_ema, checkpoint_key), config
        raise CheckpointError(
            f"no weights found in {path}: expected *.safetensors (with an index when sharded) or one of {TORCH_SUFFIXES}"
        )
    if path.name.endswith(".safetensors.index.json"):
        return _read_index(path), _sibling_config(path)
    if path.suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path), _sibling_config(path)
    if path.suffix in TORCH_SUFFIXES:
        return _read_torch(path, prefer_ema, checkpoint_key), _sibling_config(path)
    raise CheckpointError(f"unknown checkpoint type {path.name!r}; expected .safetensors, {TORCH_SUFFIXES} or a folder")


def _sibling_config(path: Path) -> dict | None:
    cfg = path.parent / "config.json"
    return json.loads(cfg.read_text()) if cfg.exists() else None


def normalise_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported layout -> our key names (prefixes stripped, diffusers renamed)."""
    state = strip_prefixes(dict(state))
    if is_diffusers_layout(state):
        state = diffusers_to_ours(state)
    return state


# ----------------------------------------------------------------------------------
# architecture
# ----------------------------------------------------------------------------------
def config_from_json(cfg: dict) -> dict:
    """ModelConfig fields from a diffusers or original-Wan config.json (only what it says)."""
    out: dict = {}
    if "num_attention_heads" in cfg:  # diffusers
        out["num_heads"] = cfg["num_attention_heads"]
        if "attention_head_dim" in cfg:
            out["dim"] = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        for ours, theirs in [("in_channels", "in_channels"), ("out_channels", "out_channels"), ("text_dim", "text_dim"),
                             ("freq_dim", "freq_dim"), ("ffn_dim", "ffn_dim"), ("num_layers", "num_layers"),
                             ("cross_attn_norm", "cross_attn_norm"), ("eps", "eps"), ("image_dim", "image_dim")]:
            if theirs in cfg:
                out[ours] = cfg[theirs]
        if "patch_size" in cfg:
            out["patch_size"] = tuple(cfg["patch_size"])
    elif "num_heads" in cfg or "dim" in cfg:  # original Wan
        for ours, theirs in [("dim", "dim"), ("num_heads", "num_heads"), ("ffn_dim", "ffn_dim"), ("freq_dim", "freq_dim"),
                             ("in_channels", "in_dim"), ("out_channels", "out_dim"), ("num_layers", "num_layers"),
                             ("text_dim", "text_dim"), ("eps", "eps"), ("text_len", "text_len"),
                             ("cross_attn_norm", "cross_attn_norm")]:
            if theirs in cfg:
                out[ours] = cfg[theirs]
        if "patch_size" in cfg:
            out["patch_size"] = tuple(cfg["patch_size"])
    return out


def infer_config(state: dict[str, torch.Tensor], hints: dict | None = None) -> ModelConfig:
    """The architecture of a state dict in our key layout. ``hints`` (fields from a
    config.json) win where given; head count, which no weight shape shows, comes from the
    hints or a preset whose every other field matches exactly (else an error asking for a
    config: a guessed head count changes every attention)."""
    hints = dict(hints or {})
    need = ["patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight", "head.head.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(
            f"cannot infer the architecture: missing {missing}. Is this a Wan DiT checkpoint? "
            f"First keys: {sorted(state)[:8]}"
        )
    pe = state["patch_embedding.weight"]
    dim, in_ch = pe.shape[0], pe.shape[1]
    patch = tuple(pe.shape[2:])
    layers = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    fields = dict(
        dim=dim,
        in_channels=in_ch,
        patch_size=patch,
        num_layers=layers,
        ffn_dim=state["blocks.0.ffn.0.weight"].shape[0] if "blocks.0.ffn.0.weight" in state else 4 * dim,
        text_dim=state["text_embedding.0.weight"].shape[1],
        freq_dim=state["time_embedding.0.weight"].shape[1],
        out_channels=state["head.head.weight"].shape[0] // math.prod(patch),
        cross_attn_norm="blocks.0.norm3.weight" in state,
        image_dim=state["img_emb.proj.1.weight"].shape[1] if "img_emb.proj.1.weight" in state else None,
    )
    fields.update(hints)
    if "num_heads" not in fields:  # no weight shape shows it: only an exact preset match may say it
        exact = [p for p in PRESETS.values()
                 if all(getattr(p, k) == v for k, v in fields.items() if k not in ("name", "num_heads"))]
        if not exact:
            raise CheckpointError(
                f"cannot tell the number of attention heads of this checkpoint (dim={fields['dim']}, "
                f"{fields['num_layers']} layers; no preset has this architecture): put a config.json beside the "
                f"weights or pass config=ModelConfig(..., num_heads=N)"
            )
        heads = sorted({p.num_heads for p in exact})
        if len(heads) > 1:
            raise CheckpointError(
                f"cannot tell the number of attention heads of this checkpoint: presets "
                f"{[p.name for p in exact]} share its shapes with {heads} heads; put a config.json beside the "
                f"weights or pass config=ModelConfig(..., num_heads=N)")
        fields["num_heads"] = heads[0]
        import warnings

        warnings.warn(
            f"this checkpoint does not say its number of attention heads (no weight shape shows it): assumed "
            f"num_heads={heads[0]} and the text length / RoPE settings of preset {exact[0].name!r}, whose every other "
            f"field it matches; if that is wrong every attention is wrong: put a config.json beside the weights or pass "
            f"config=ModelConfig(..., num_heads=N)", UserWarning, stacklevel=2)
    match = next(
        (n for n, p in PRESETS.items() if all(getattr(p, k) == v for k, v in fields.items() if k != "name")), None
    )
    if match is not None:  # the preset's fields no weight shows (text_len, rope_theta, fps, ...) come with it
        fields = dict(PRESETS[match].to_dict(), **fields)
        fields["patch_size"], fields["vae_stride"] = tuple(fields["patch_size"]), tuple(fields["vae_stride"])
    fields.setdefault("name", match or "custom")
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"inferred an invalid architecture {fields}: {exc}") from exc


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise one :class:`CheckpointError` listing every missing, unexpected, mis-shaped
    or non-floating key of ``state`` against ``model``; return None when all fit."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    floating = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    mistyped = sorted(f"{k}: {state[k].dtype}" for k in floating & set(state)
                      if isinstance(state[k], torch.Tensor) and not state[k].is_floating_point())
    if missing or unexpected or misshaped or mistyped:
        name = getattr(getattr(model, "config", None), "name", None) or type(model).__name__
        parts = [f"{source} does not fit the model ({name}):"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped),
                             ("keys that are not floating point (weights must be float; is this a quantised or "
                              "index file?)", mistyped)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                parts.append(f"  {len(items)} {title}: {shown}")
        parts.append("  Check that the checkpoint and the config (preset) describe the same architecture.")
        raise CheckpointError("\n".join(parts))


def wan_config_json(cfg: ModelConfig) -> dict:
    """The original-Wan ``config.json`` of ``cfg`` (the keys :func:`config_from_json` reads
    back), plus the full ModelConfig under ``_engine_model_config`` for reference."""
    return {"_class_name": "WanModel", "model_type": "i2v" if cfg.is_i2v else "t2v", "dim": cfg.dim,
            "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": cfg.in_channels,
            "out_dim": cfg.out_channels, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers,
            "text_dim": cfg.text_dim, "text_len": cfg.text_len, "eps": cfg.eps,
            "cross_attn_norm": cfg.cross_attn_norm, "patch_size": list(cfg.patch_size),
            "_engine_model_config": cfg.to_dict()}


def save_original_layout(model: torch.nn.Module, folder: str | Path,
                         filename: str = "diffusion_pytorch_model.safetensors",
                         dtype: torch.dtype | None = None) -> Path:
    """Write a model as an original-Wan-layout folder: ``config.json``
    (:func:`wan_config_json`) and ``filename`` (its state dict, cast to ``dtype`` when
    given). Returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(wan_config_json(model.config), indent=2) + "\n")
    state = {k: (v.detach() if dtype is None else v.detach().to(dtype)).contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(folder / filename))
    return folder


def quiet_low_cpu_mem_usage() -> bool:
    """diffusers' ``low_cpu_mem_usage`` for ``from_pretrained``: True only where
    ``accelerate`` is installed (asking for it without accelerate prints a notice on every
    load; the result is the same)."""
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


def seeded_fan_in_init_(module: torch.nn.Module, seed: int, gain_suffix: str = "weight") -> torch.nn.Module:
    """Re-draw every parameter of ``module`` in ``named_parameters`` order from
    ``torch.Generator(seed)`` (independent of the global RNG and of the library's init):
    tensors of 2+ dims ~ N(0, 1/fan_in), 1-D parameters named ``*<gain_suffix>`` (norm gains)
    ~ 1 + N(0, 0.1^2), other 1-D ones (biases) ~ N(0, 0.02^2). No parameter is zero.
    Returns ``module`` (changed in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            elif name.endswith(gain_suffix):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    return module
