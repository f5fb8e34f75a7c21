"""The export manifest: one JSON file (``manifest.json``) that tells a host everything it
needs to run the exported graphs without Python -- I/O names, dtypes and shapes of every
graph, the sampler constants, tokens per frame, the KV-cache layout and slot rule, the
RoPE / frame-position convention, the noise addressing, the precision, TensorRT version
and GPU SM of any engines, and the SHA-256 of every file.

The schema is versioned (``schema`` + ``schema_version``); :data:`SCHEMA` is a JSON-Schema
(draft 2020-12 subset) description of it and :func:`validate` checks a manifest against
it with a small built-in validator (no extra dependency). :func:`load_manifest` validates,
then checks the files: present, hashes equal, and each ONNX graph's declared I/O equal to
the graph's own. Every problem is a :class:`ManifestError` that names the file and field.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_ID = "worldengine.export.manifest"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
DTYPES = ("float32", "float16", "bfloat16", "int64", "bool")


class ManifestError(ValueError):
    """A manifest (or the files it names) is missing, corrupt, or does not match."""


# ----------------------------------------------------------------------------------
# schema
# ----------------------------------------------------------------------------------
_TENSOR = {
    "type": "object",
    "required": ["name", "dtype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "dtype": {"enum": list(DTYPES)},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
    },
}
_GRAPH = {
    "type": "object",
    "required": ["name", "kind", "file", "sha256", "opset", "precision", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"enum": ["context", "step", "block"]},
        "file": {"type": "string"},
        "sha256": {"type": "string", "pattern_len": 64},
        "opset": {"type": "integer", "minimum": 7},
        "precision": {"enum": ["float32", "float16", "bfloat16"]},
        "bucket": {"type": "object"},
        "tokens_per_frame": {"type": "integer", "minimum": 1},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": _TENSOR},
        "external_data": {"type": "array", "items": {"type": "object", "required": ["file", "sha256"]}},
    },
}
_ENGINE = {
    "type": "object",
    "required": ["graph", "file", "sha256", "tensorrt_version", "sm"],
    "properties": {"graph": {"type": "string"}, "file": {"type": "string"}, "sha256": {"type": "string"},
                   "tensorrt_version": {"type": "string"}, "sm": {"type": "string"}},
}
SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "type": "object",
    "required": ["schema", "schema_version", "model", "precision", "sampler", "rope", "cache", "noise", "rollout", "graphs"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "schema_version": {"type": "integer", "minimum": 1},
        "created_by": {"type": "object"},
        "model": {
            "type": "object",
            "required": ["name", "config"],
            "properties": {"name": {"type": "string"}, "config": {"type": "object"}, "source": {"type": ["string", "null"]}},
        },
        "precision": {"enum": ["float32", "float16", "bfloat16"]},
        "sampler": {
            "type": "object",
            "required": ["kind", "shift", "num_steps", "sigmas", "num_train_timesteps"],
            "properties": {
                "kind": {"enum": ["fewstep", "euler", "unipc"]},
                "shift": {"type": "number"},
                "num_steps": {"type": "integer", "minimum": 1},
                "timesteps": {"type": ["array", "null"], "items": {"type": "number"}},
                "sigmas": {"type": "array", "items": {"type": "number"}},
                "num_train_timesteps": {"type": "integer"},
                "guidance_scale": {"type": "number"},
            },
        },
        "rope": {"type": "object", "required": ["theta", "split"]},
        "cache": {"type": "object", "required": ["layout", "slot_rule", "visibility_rule", "write"]},
        "noise": {"type": "object", "required": ["addressing"]},
        "rollout": {"type": "object", "required": ["chunk_frames"]},
        "graphs": {"type": "array", "items": _GRAPH},
        "tensorrt": {"type": ["object", "null"],
                     "properties": {"engines": {"type": "array", "items": _ENGINE}}},
    },
}

_JSON_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
               "boolean": bool, "null": type(None)}


def _check(value: Any, schema: dict, where: str) -> None:
    if "const" in schema and value != schema["const"]:
        raise ManifestError(f"{where}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise ManifestError(f"{where}: {value!r} is not one of {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(value, _JSON_TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                 for t in types)
        if not ok:
            raise ManifestError(f"{where}: expected {' or '.join(types)}, got {type(value).__name__} {value!r:.60}")
    if isinstance(value, (int, float)) and "minimum" in schema and value < schema["minimum"]:
        raise ManifestError(f"{where}: {value} is below the minimum {schema['minimum']}")
    if isinstance(value, str) and "pattern_len" in schema and len(value) != schema["pattern_len"]:
        raise ManifestError(f"{where}: expected a {schema['pattern_len']}-character hex digest, got {value!r}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise ManifestError(f"{where}: missing required field {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _check(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]")


def validate(data: Any) -> None:
    """Check a manifest dict against :data:`SCHEMA` and its cross-field rules; raises
    :class:`ManifestError` naming the first problem. A newer ``schema_version`` than this
    code supports is refused with an upgrade hint."""
    if not isinstance(data, dict):
        raise ManifestError(f"manifest must be a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA_ID:
        raise ManifestError(f"not a worldengine export manifest: 'schema' is {data.get('schema')!r}, expected {SCHEMA_ID!r}")
    ver = data.get("schema_version")
    if isinstance(ver, int) and not isinstance(ver, bool) and ver > SCHEMA_VERSION:
        raise ManifestError(
            f"manifest schema_version {ver} is newer than this worldengine supports ({SCHEMA_VERSION}); "
            f"upgrade worldengine or re-export with this version"
        )
    _check(data, SCHEMA, "manifest")
    names = [g["name"] for g in data["graphs"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ManifestError(f"manifest.graphs: duplicate graph names {dupes}")
    if not any(g["kind"] == "step" for g in data["graphs"]):
        raise ManifestError("manifest.graphs: no 'step' graph")
    s = data["sampler"]
    if len(s["sigmas"]) != s["num_steps"] + 1:
        raise ManifestError(f"manifest.sampler: {len(s['sigmas'])} sigmas for num_steps={s['num_steps']} (need num_steps + 1)")
    for g in data["graphs"]:
        if g["kind"] in ("step", "block") and ("bucket" not in g or "tokens_per_frame" not in g):
            raise ManifestError(f"manifest.graphs[{g['name']}]: a {g['kind']} graph needs 'bucket' and 'tokens_per_frame'")
    for e in (data.get("tensorrt") or {}).get("engines", []):
        if e["graph"] not in names:
            raise ManifestError(f"manifest.tensorrt.engines: engine {e['file']} names unknown graph {e['graph']!r}")


# ----------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 9: "bool"}


def graph_io(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an ONNX file as manifest tensor specs (weights not loaded)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def specs(vals):
        out = []
        for v in vals:
            tt = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
            out.append({"name": v.name, "dtype": _ONNX_DTYPES.get(tt.elem_type, f"onnx:{tt.elem_type}"), "shape": dims})
        return out

    return specs(m.graph.input), specs(m.graph.output)


def _check_file(directory: Path, rel: str, sha: str | None, what: str, verify_hashes: bool) -> Path:
    p = directory / rel
    if not p.is_file():
        raise ManifestError(f"{what}: file {rel!r} named by the manifest is missing from {directory}")
    if verify_hashes and sha is not None:
        got = sha256_file(p)
        if got != sha:
            raise ManifestError(
                f"{what}: SHA-256 of {rel} is {got[:16]}..., the manifest says {sha[:16]}...: the file is corrupt "
                f"or was replaced; re-export"
            )
    return p


def _compare_io(declared: list[dict], actual: list[dict], what: str) -> None:
    d = {t["name"]: t for t in declared}
    a = {t["name"]: t for t in actual}
    if set(d) != set(a):
        raise ManifestError(f"{what}: the manifest declares {sorted(d)} but the graph has {sorted(a)}")
    for name, t in d.items():
        if t["dtype"] != a[name]["dtype"] or list(t["shape"]) != list(a[name]["shape"]):
            raise ManifestError(
                f"{what}: tensor {name!r} is {a[name]['dtype']} {a[name]['shape']} in the graph but "
                f"{t['dtype']} {t['shape']} in the manifest"
            )


# ----------------------------------------------------------------------------------
# the Manifest object
# ----------------------------------------------------------------------------------
@dataclass
class Manifest:
    """A validated manifest and the folder it lives in."""

    data: dict
    directory: Path
    _config: Any = field(default=None, repr=False)

    @property
    def config(self):
        """The :class:`engine.config.ModelConfig` of the exported model."""
        if self._config is None:
            from engine.config import ModelConfig

            self._config = ModelConfig.from_dict(self.data["model"]["config"])
        return self._config

    @property
    def precision(self) -> str:
        return self.data["precision"]

    @property
    def graphs(self) -> list[dict]:
        return self.data["graphs"]

    def path(self, graph: dict) -> Path:
        return self.directory / graph["file"]

    def find(self, kind: str, *, opset: int | None = None, **bucket) -> list[dict]:
        """Graphs of ``kind`` whose bucket has the given fields (e.g. frames=3, batch=1),
        preferring higher opsets (or only ``opset``)."""
        out = []
        for g in self.graphs:
            if g["kind"] != kind or (opset is not None and g["opset"] != opset):
                continue
            b = g.get("bucket", {})
            if all(b.get(k) == v for k, v in bucket.items()):
                out.append(g)
        return sorted(out, key=lambda g: -g["opset"])

    def engine_for(self, graph: dict) -> dict | None:
        for e in (self.data.get("tensorrt") or {}).get("engines", []):
            if e["graph"] == graph["name"]:
                return e
        return None

    def save(self) -> Path:
        return write_manifest(self.directory, self.data)


def write_manifest(directory: str | Path, data: dict) -> Path:
    """Validate ``data`` and write it as ``directory/manifest.json``."""
    validate(data)
    p = Path(directory) / MANIFEST_NAME
    p.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return p


def is_export_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a manifest."""
    p = Path(path)
    return p.is_dir() and (p / MANIFEST_NAME).is_file()


def load_manifest(directory: str | Path, *, verify_hashes: bool = True, check_graphs: bool = True) -> Manifest:
    """Read, validate and check a manifest folder.

    verify_hashes: recompute every file's SHA-256 (graphs, external data, engines);
    check_graphs: compare each ONNX graph's own I/O with the manifest (needs ``onnx``).
    Raises :class:`ManifestError` naming the problem.
    """
    d = Path(directory)
    mp = d / MANIFEST_NAME if d.is_dir() else d
    d = mp.parent
    if not mp.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {directory}: not an export folder (run `python -m engine_export onnx ...`)")
    try:
        data = json.loads(mp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{mp} is not valid JSON: {exc}") from None
    validate(data)
    for g in data["graphs"]:
        what = f"graph {g['name']!r}"
        p = _check_file(d, g["file"], g["sha256"], what, verify_hashes)
        for ext in g.get("external_data", []):
            _check_file(d, ext["file"], ext["sha256"], f"{what} external data", verify_hashes)
        if check_graphs:
            try:
                ins, outs = graph_io(p)
            except Exception as exc:  # noqa: BLE001 - a corrupt protobuf raises various errors
                raise ManifestError(f"{what}: {g['file']} is not a readable ONNX model: {exc}") from None
            _compare_io(g["inputs"], ins, f"{what} inputs")
            _compare_io(g["outputs"], outs, f"{what} outputs")
    for e in (data.get("tensorrt") or {}).get("engines", []):
        if (d / e["file"]).exists():  # engines are optional artefacts of a GPU machine
            _check_file(d, e["file"], e["sha256"], f"TensorRT engine for {e['graph']!r}", verify_hashes)
    m = Manifest(data, d)
    try:
        m.config  # noqa: B018 - validates the model config
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"manifest.model.config: {exc}") from None
    return m


# ----------------------------------------------------------------------------------
# building one
# ----------------------------------------------------------------------------------
def sampler_section(sampler) -> dict:
    """Sampler constants of a :class:`engine.config.SamplerConfig` (sigmas precomputed)."""
    from engine.sampling import sampler_for

    s = sampler_for(sampler)
    return {
        "kind": sampler.kind,
        "shift": float(sampler.shift),
        "num_steps": int(s.num_steps),
        "timesteps": None if sampler.timesteps is None or sampler.kind != "fewstep" else [float(t) for t in sampler.timesteps],
        "sigmas": [float(x) for x in s.sigmas.tolist()],
        "num_train_timesteps": 1000,
        "guidance_scale": float(sampler.guidance_scale),
        "schedule": ("fewstep: sigma_i = k*s/(1+(k-1)*s), s = t_i/1000 (float64), then 0; "
                     "euler: the same shift of linspace(1, 0, N+1) with endpoints pinned"),
        "timestep_input": "timestep = float32(1000 * sigma) per frame (sigma float64)",
        "prediction": "flow velocity v = eps - x0; x_s = (1 - s) x0 + s eps",
        "step": ("fewstep: x0 = x - float32(s_i) * v; i < N-1: x = (1 - float32(s_{i+1})) * x0 + float32(s_{i+1}) * eps "
                 "with fresh noise of stream 1 + i; euler: x = x + float32(s_{i+1} - s_i) * v; all float32"),
        "guidance": "v = v_uncond + g * (v_cond - v_uncond); batch row 0 conditional, row 1 unconditional",
    }


def base_manifest(model, *, precision: str, sampler, chunk_frames: int, cache_slots: int, source=None) -> dict:
    """Everything but the graphs: model, sampler, RoPE, cache, noise and rollout sections."""
    import onnx
    import torch

    from engine.version import __version__

    cfg = model.config
    return {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "created_by": {"worldengine": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                       "python": platform.python_version(), "exporter": "torch.onnx.export(dynamo=True)"},
        "model": {"name": cfg.name, "config": cfg.to_dict(), "source": None if source is None else str(source)},
        "precision": precision,
        "sampler": sampler_section(sampler),
        "rope": {
            "theta": cfg.rope_theta,
            "split": list(cfg.rope_split),
            "inputs": ["rope_cos", "rope_sin"],
            "shape": "[frames_in_chunk * tokens_per_frame, head_dim / 2] float32, token order (frame, row, col)",
            "angle": ("head channels split over (time, height, width) as 'split'; pair (2i, 2i+1) of axis a with "
                      "d_a channels rotates by pos_a * theta^(-2i/d_a); pos_time = absolute latent frame position, "
                      "pos_row/pos_col = patch row/column; angles in float64, cos/sin rounded to float32"),
            "rotation": "out[2i] = x[2i] cos - x[2i+1] sin; out[2i+1] = x[2i] sin + x[2i+1] cos (real ops only)",
        },
        "cache": {
            "layout": "cache_k, cache_v: [layers, batch, heads, slots * tokens_per_frame, head_dim] in the graph precision, zero-initialised",
            "slot_rule": "slot(p) = p if p < sink_frames else sink_frames + (p - sink_frames) mod ring_frames",
            "ring_frames": "window_frames + chunk_frames (bounded) or max(num_frames - sink_frames, chunk_frames) (unbounded)",
            "write_index": "token rows slot(p) * tokens_per_frame + [0, tokens_per_frame) for each chunk frame p, in order",
            "visibility_rule": ("chunk [s, e) sees slot holding position q iff 0 <= q < e and (q < sink_frames or q >= s "
                                "or window unbounded or q >= s - window_frames); empty slots are never visible; "
                                "slots beyond the plan's are never visible"),
            "write": ("the step graph returns the chunk's entries new_k/new_v [layers, batch, heads, n*tpf, head_dim]; "
                      "the host writes them into its cache at write_index after every call (denoising steps overwrite "
                      "the chunk's slots; the final pass at timestep 0 leaves the clean entries)"),
            "cross_attention": "context graph output cross_k/cross_v, computed once per prompt, fed to every step",
        },
        "noise": {
            "addressing": "noise of latent frame position p depends only on (seed, stream, p); stream 0 = initial noise, 1 + i = few-step re-noise after step i",
            "frame_seed": "sm(sm(sm(seed) ^ stream) ^ p), sm = splitmix64 (engine_kernels.noise.frame_seed)",
            "python": "engine_kernels.noise.frame_noise: torch.randn [1, C, h, w] float32 from a CPU torch.Generator seeded with frame_seed",
            "host_builtin": ("counter-based-v1: element i of frame p: u = splitmix64 stream from frame_seed; "
                             "Box-Muller in float64 (see csrc/host.cpp counter_normal); differs from torch.randn"),
        },
        "rollout": {
            "chunk_frames": chunk_frames,
            "cache_slots": cache_slots,
            "default_window": (f"videos up to {cache_slots} latent frames: unbounded window; longer: sink_frames = "
                               f"chunk_frames (+1 with a given first frame), window_frames = slots - sink - chunk"),
            "refresh": "after the last denoising step of every chunk but the last, one pass of the clean chunk at timestep 0",
        },
        "graphs": [],
        "tensorrt": None,
    }


def graph_entry(directory: str | Path, name: str, file: str, info: dict) -> dict:
    """A graph's manifest entry with the file's (and its external data's) SHA-256."""
    d = Path(directory)
    ext = [{"file": f, "sha256": sha256_file(d / f)} for f in info.get("external_data", [])]
    entry = {"name": name, "file": file, "sha256": sha256_file(d / file)}
    entry.update({k: v for k, v in info.items() if k != "external_data"})
    entry["external_data"] = ext
    return entry


__all__ = ["SCHEMA", "SCHEMA_ID", "SCHEMA_VERSION", "MANIFEST_NAME", "Manifest", "ManifestError", "validate",
           "load_manifest", "write_manifest", "is_export_dir", "sha256_file", "graph_io", "base_manifest",
           "graph_entry", "sampler_section"]
