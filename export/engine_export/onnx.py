"""Export our Wan DiT to ONNX: one denoising step with an explicit KV cache, the text
context, and a single DiT block on its own.

Graphs (all static-shape; one step graph per shape bucket):

``context``  text_embeds [B, L, text_dim] (+ image_embeds [B, N, image_dim] for I2V)
             -> cross_k, cross_v [layers, B, H, L, Dh] (+ cross_k_img, cross_v_img):
             the text embedding and every layer's cross-attention keys/values, computed
             once per prompt and fed to every step.

``step``     one DiT forward over a chunk of ``n`` latent frames against the fixed-slot
             cache (see :mod:`engine.kvcache`):

             ============ ================================ =================================
             input        shape                            meaning
             ============ ================================ =================================
             latents      [B, C_in, n, h, w]   precision   the chunk's (noisy) latents
             timestep     [B, n]               float32    per-frame model timestep 1000*sigma
             cross_k/v    [layers, B, H, L, Dh] precision  from the context graph
             rope_cos/sin [n*tpf, Dh/2]        float32    real RoPE tables of the chunk
             cache_k/v    [layers, B, H, S*tpf, Dh]       the whole cache (S slots)
             write_index  [n*tpf]              int64      cache token rows the chunk writes
             visibility   [1, 1, n, S]         bool       may chunk frame i see slot j
             ============ ================================ =================================

             -> velocity [B, C_out, n, h, w], new_k / new_v [layers, B, H, n*tpf, Dh]: the
             chunk's keys/values, which the host writes into its cache at ``write_index``.
             Inside the graph every layer scatters its new entries into a copy of its cache
             (ScatterND), then attends over all S slots under the visibility mask (expanded
             to a [n*tpf, S*tpf] token mask) -- exactly what ``KVCache.write`` + attention do.

``block``    one WanBlock: hidden [B, n, tpf, D], modulation [B, n, 6, D] float32 (the
             time projection), cross_k/v [B, H, L, Dh], rope, cache_k/v [B, H, S*tpf, Dh],
             write_index, visibility -> hidden_out, new_k, new_v [B, H, n*tpf, Dh].

The wrappers reuse the WanDiT modules (its blocks run unmodified through a duck-typed
cache), so the maths is the model's, not a re-implementation. RoPE is real cos/sin: no
complex-number ops anywhere. ``torch.onnx.export(dynamo=True)``; opset 23 emits ONNX's
native ``Attention`` and ``RMSNormalization``, opset 20 the decomposed form (MatMul /
Softmax / ReduceMean) for older TensorRT.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from engine.attention import FrameVisibility
from engine.models.wan import SelfAttnContext, WanDiT, timestep_embedding

OPSETS = (23, 20)
PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# _FP16_NOTE: reduced-precision graphs are exported with optimize=False: with torch 2.13 /
# onnxscript 0.7 the optimizer fuses our float32-internal RMSNorm into an RMSNormalization
# node whose output type disagrees with its consumers (onnx.checker: "Y has inconsistent
# type tensor(float16)"). Unoptimised, the graph keeps Attention (opset 23) and a
# decomposed RMSNorm, and passes the checker.
# Models whose weights exceed this are written with ONNX external data (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1 << 31


@dataclass(frozen=True)
class Bucket:
    """One static shape of the step graph: ``frames`` latent frames per chunk of latent
    size ``height`` x ``width``, ``batch`` rows (2 for classifier-free guidance), a cache of
    ``cache_slots`` frame slots and ``text_len`` text tokens."""

    frames: int
    height: int
    width: int
    batch: int = 1
    cache_slots: int = 21
    text_len: int = 512

    @property
    def key(self) -> str:
        return f"n{self.frames}_h{self.height}_w{self.width}_b{self.batch}_s{self.cache_slots}"

    def to_dict(self) -> dict:
        return dict(frames=self.frames, latent_height=self.height, latent_width=self.width, batch=self.batch,
                    cache_slots=self.cache_slots, text_len=self.text_len)

    @classmethod
    def from_dict(cls, d: dict) -> "Bucket":
        return cls(int(d["frames"]), int(d["latent_height"]), int(d["latent_width"]), int(d["batch"]),
                   int(d["cache_slots"]), int(d["text_len"]))


# ----------------------------------------------------------------------------------
# wrappers around the WanDiT modules
# ----------------------------------------------------------------------------------
class _FunctionalCache:
    """Duck-types :class:`engine.kvcache.KVCache` for WanBlock.forward inside a graph:
    ``write`` scatters the chunk's keys/values into a *copy* of the layer's cache (so the
    graph stays functional) and records them as the graph's new entries."""

    def __init__(self, cache_k, cache_v, write_index: torch.Tensor):
        self.k, self.v, self.index = cache_k, cache_v, write_index
        self.new_k: list[torch.Tensor] = []
        self.new_v: list[torch.Tensor] = []

    def write(self, layer: int, slots, k: torch.Tensor, v: torch.Tensor):
        kl, vl = self.k[layer], self.v[layer]
        k, v = k.to(kl.dtype), v.to(vl.dtype)
        self.new_k.append(k)
        self.new_v.append(v)
        return kl.index_copy(2, self.index, k), vl.index_copy(2, self.index, v)


def _frame_ids(frames: int, tokens_per_frame: int) -> torch.Tensor:
    return torch.arange(frames).repeat_interleave(tokens_per_frame)


class DiTStep(nn.Module):
    """One denoising step of a chunk against the explicit cache (see module docstring)."""

    def __init__(self, model: WanDiT, bucket: Bucket):
        super().__init__()
        cfg = model.config
        pt, ph, pw = cfg.patch_size
        if bucket.frames % pt or bucket.height % ph or bucket.width % pw:
            raise ValueError(f"bucket {bucket} is not divisible by the patch size {cfg.patch_size}")
        self.model = model
        self.bucket = bucket
        self.grid = (bucket.frames // pt, bucket.height // ph, bucket.width // pw)
        self.tpf = self.grid[1] * self.grid[2]
        self.register_buffer("q_ids", _frame_ids(self.grid[0], self.tpf), persistent=False)
        self.register_buffer("k_ids", _frame_ids(bucket.cache_slots, self.tpf), persistent=False)

    def forward(self, latents, timestep, cross_k, cross_v, rope_cos, rope_sin, cache_k, cache_v, write_index,
                visibility, cross_k_img=None, cross_v_img=None):
        m, cfg = self.model, self.model.config
        B = latents.shape[0]
        gf, gh, gw = self.grid
        pt, ph, pw = cfg.patch_size
        t = timestep[:, ::pt]
        e = m.time_embedding(timestep_embedding(t.reshape(-1), cfg.freq_dim).to(m.dtype))
        e0 = m.time_projection(e).float().view(B, gf, 6, cfg.dim)
        e = e.view(B, gf, cfg.dim)
        tokens = m.patch_embedding(latents.to(m.dtype)).flatten(3).permute(0, 2, 3, 1).contiguous()
        vis = FrameVisibility(self.q_ids, self.k_ids, visibility[0, 0])
        cache = _FunctionalCache(cache_k, cache_v, write_index)
        actx = SelfAttnContext(rope_cos, rope_sin, vis, "sdpa", cache, None, fused=False)
        for i, block in enumerate(m.blocks):
            kv = (cross_k[i], cross_v[i]) if cross_k_img is None else (cross_k[i], cross_v[i], cross_k_img[i], cross_v_img[i])
            tokens = block(tokens, e0, kv, actx, i)
        out = m.head(tokens, e).view(B, gf, gh, gw, pt, ph, pw, cfg.out_channels)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, cfg.out_channels, gf * pt, gh * ph, gw * pw)
        return out, torch.stack(cache.new_k), torch.stack(cache.new_v)


class DiTBlockStep(nn.Module):
    """One WanBlock of the model on its own, with its layer's explicit cache."""

    def __init__(self, model: WanDiT, bucket: Bucket, layer: int = 0):
        super().__init__()
        step = DiTStep(model, bucket)
        self.block = model.blocks[layer]
        self.grid, self.tpf = step.grid, step.tpf
        self.register_buffer("q_ids", step.q_ids, persistent=False)
        self.register_buffer("k_ids", step.k_ids, persistent=False)

    def forward(self, hidden, modulation, cross_k, cross_v, rope_cos, rope_sin, cache_k, cache_v, write_index, visibility,
                cross_k_img=None, cross_v_img=None):
        vis = FrameVisibility(self.q_ids, self.k_ids, visibility[0, 0])
        cache = _FunctionalCache(cache_k[None], cache_v[None], write_index)
        actx = SelfAttnContext(rope_cos, rope_sin, vis, "sdpa", cache, None, fused=False)
        kv = (cross_k, cross_v) if cross_k_img is None else (cross_k, cross_v, cross_k_img, cross_v_img)
        out = self.block(hidden, modulation, kv, actx, 0)
        return out, cache.new_k[0], cache.new_v[0]


class TextContext(nn.Module):
    """Text (and CLIP image) embedding and every layer's cross-attention keys/values."""

    def __init__(self, model: WanDiT):
        super().__init__()
        self.model = model

    def forward(self, text_embeds, image_embeds=None):
        m = self.model
        text = m.text_embedding(text_embeds.to(m.dtype))
        image = m.img_emb(image_embeds.to(m.dtype)) if image_embeds is not None else None
        kvs = [blk.cross_attn.context_kv(text, image) for blk in m.blocks]
        return tuple(torch.stack([kv[j] for kv in kvs]) for j in range(len(kvs[0])))


# ----------------------------------------------------------------------------------
# I/O specs and example inputs
# ----------------------------------------------------------------------------------
def _spec(name: str, dtype: torch.dtype, shape) -> dict:
    return {"name": name, "dtype": str(dtype).replace("torch.", ""), "shape": [int(s) for s in shape]}


def context_io(cfg, bucket: Bucket, precision: torch.dtype) -> tuple[list[dict], list[dict]]:
    B, L = bucket.batch, bucket.text_len
    kv = (cfg.num_layers, B, cfg.num_heads, L, cfg.head_dim)
    ins = [_spec("text_embeds", precision, (B, L, cfg.text_dim))]
    outs = [_spec("cross_k", precision, kv), _spec("cross_v", precision, kv)]
    if cfg.is_i2v:
        ins.append(_spec("image_embeds", precision, (B, 257, cfg.image_dim)))
        kvi = (cfg.num_layers, B, cfg.num_heads, 257, cfg.head_dim)
        outs += [_spec("cross_k_img", precision, kvi), _spec("cross_v_img", precision, kvi)]
    return ins, outs


def step_io(cfg, bucket: Bucket, precision: torch.dtype, *, block: bool = False) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) specs of the step graph (or of the block graph with ``block``)."""
    pt, ph, pw = cfg.patch_size
    B, n, h, w, S = bucket.batch, bucket.frames, bucket.height, bucket.width, bucket.cache_slots
    gf, tpf = n // pt, (h // ph) * (w // pw)
    H, Dh, L = cfg.num_heads, cfg.head_dim, bucket.text_len
    lead = () if block else (cfg.num_layers,)
    rope = (gf * tpf, Dh // 2)
    if block:
        ins = [_spec("hidden", precision, (B, gf, tpf, cfg.dim)), _spec("modulation", torch.float32, (B, gf, 6, cfg.dim))]
    else:
        ins = [_spec("latents", precision, (B, cfg.in_channels, n, h, w)), _spec("timestep", torch.float32, (B, n))]
    ins += [
        _spec("cross_k", precision, (*lead, B, H, L, Dh)),
        _spec("cross_v", precision, (*lead, B, H, L, Dh)),
        _spec("rope_cos", torch.float32, rope),
        _spec("rope_sin", torch.float32, rope),
        _spec("cache_k", precision, (*lead, B, H, S * tpf, Dh)),
        _spec("cache_v", precision, (*lead, B, H, S * tpf, Dh)),
        _spec("write_index", torch.int64, (gf * tpf,)),
        _spec("visibility", torch.bool, (1, 1, gf, S)),
    ]
    if cfg.is_i2v:
        ins += [_spec("cross_k_img", precision, (*lead, B, H, 257, Dh)), _spec("cross_v_img", precision, (*lead, B, H, 257, Dh))]
    new = (*lead, B, H, gf * tpf, Dh)
    first = _spec("hidden_out", precision, (B, gf, tpf, cfg.dim)) if block else _spec(
        "velocity", precision, (B, cfg.out_channels, n, h, w))
    return ins, [first, _spec("new_k", precision, new), _spec("new_v", precision, new)]


_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "int64": torch.int64, "bool": torch.bool}


def example_inputs(specs: list[dict], seed: int = 0, cache_slots: int | None = None) -> dict[str, torch.Tensor]:
    """Fresh random inputs for a list of I/O specs (never zeros): a valid write index and a
    visibility with every chunk frame seeing itself and some earlier slots."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in specs:
        dt, shape = _TORCH_DTYPES[s["dtype"]], tuple(s["shape"])
        if s["name"] == "timestep":
            out[s["name"]] = torch.rand(shape, generator=g) * 1000
        elif s["name"] == "write_index":
            out[s["name"]] = torch.arange(shape[0])  # replaced by the caller when it matters
        elif s["name"] == "visibility":
            out[s["name"]] = torch.rand(shape, generator=g) < 0.7
        elif dt.is_floating_point:
            out[s["name"]] = torch.randn(shape, generator=g).to(dt)
        else:
            raise ValueError(f"no example for {s}")
    if "visibility" in out and "write_index" in out:
        vis = out["visibility"]
        n, S = vis.shape[2], vis.shape[3]
        tpf = out["write_index"].numel() // n
        first = torch.randint(0, S - n + 1, (1,), generator=g).item()
        slots = torch.arange(first, first + n)
        out["write_index"] = (slots[:, None] * tpf + torch.arange(tpf)[None]).reshape(-1)
        vis[0, 0, :, slots] = True
    return out


# ----------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------
def model_for_precision(model: WanDiT, precision: str) -> WanDiT:
    """The model itself (float32) or a copy cast to the export precision, CPU, eval."""
    dt = PRECISIONS[precision]
    if model.dtype == dt and model.device.type == "cpu":
        return model.eval()
    return copy.deepcopy(model).to(device="cpu", dtype=dt).eval()


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress chatter (torchvision, onnxscript, deprecation)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_graph(module: nn.Module, inputs: dict[str, torch.Tensor], output_names: list[str], path: str | Path, *,
                 opset: int, external_data: bool | None = None, check: bool = True, optimize: bool = True) -> dict:
    """Export ``module(**inputs)`` to ``path`` with torch.onnx.export(dynamo=True) and
    run onnx.checker on the file path. Returns {"exporter", "external_data"}."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = _param_bytes(module) >= EXTERNAL_DATA_BYTES * 0.9
    names = list(inputs)
    with torch.no_grad(), _quiet():
        prog = torch.onnx.export(module.eval(), tuple(inputs.values()), None, dynamo=True, opset_version=opset,
                                 input_names=names, output_names=output_names, optimize=optimize)
        prog.save(str(path), external_data=bool(external_data))
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    extra = sorted(p.name for p in path.parent.glob(path.name + "*") if p.name != path.name) if external_data else []
    return {"exporter": f"torch.onnx.export(dynamo=True) torch {torch.__version__}", "external_data": extra}


def export_step(model: WanDiT, bucket: Bucket, path, *, opset: int = 23, precision: str = "float32", **kw) -> dict:
    """Export the step graph of one bucket; returns its manifest entry (without hashes)."""
    m = model_for_precision(model, precision)
    ins, outs = step_io(m.config, bucket, PRECISIONS[precision])
    kw.setdefault("optimize", precision == "float32")  # see _FP16_NOTE
    info = export_graph(DiTStep(m, bucket), example_inputs(ins), [o["name"] for o in outs], path, opset=opset, **kw)
    return {"kind": "step", "opset": opset, "precision": precision, "bucket": bucket.to_dict(),
            "tokens_per_frame": DiTStep(m, bucket).tpf, "inputs": ins, "outputs": outs, **info}


def export_block(model: WanDiT, bucket: Bucket, path, *, layer: int = 0, opset: int = 23, precision: str = "float32",
                 **kw) -> dict:
    """Export block ``layer`` alone; returns its manifest entry (without hashes)."""
    m = model_for_precision(model, precision)
    ins, outs = step_io(m.config, bucket, PRECISIONS[precision], block=True)
    mod = DiTBlockStep(m, bucket, layer)
    kw.setdefault("optimize", precision == "float32")  # see _FP16_NOTE
    info = export_graph(mod, example_inputs(ins), [o["name"] for o in outs], path, opset=opset, **kw)
    return {"kind": "block", "layer": layer, "opset": opset, "precision": precision, "bucket": bucket.to_dict(),
            "tokens_per_frame": mod.tpf, "inputs": ins, "outputs": outs, **info}


def export_context(model: WanDiT, bucket: Bucket, path, *, opset: int = 23, precision: str = "float32", **kw) -> dict:
    """Export the text-context graph (batch and text length of ``bucket``)."""
    m = model_for_precision(model, precision)
    ins, outs = context_io(m.config, bucket, PRECISIONS[precision])
    kw.setdefault("optimize", precision == "float32")  # see _FP16_NOTE
    info = export_graph(TextContext(m), example_inputs(ins), [o["name"] for o in outs], path, opset=opset, **kw)
    return {"kind": "context", "opset": opset, "precision": precision,
            "bucket": {"batch": bucket.batch, "text_len": bucket.text_len}, "inputs": ins, "outputs": outs, **info}


def op_types(path) -> set[str]:
    """The operator types used by an ONNX file (to check e.g. Attention / no complex ops)."""
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def rope_tables(cfg, positions, latent_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The step graph's ``rope_cos`` / ``rope_sin`` for a chunk at frame ``positions``
    (float64 angles, float32 tables: engine.models.wan.rope_cos_sin)."""
    from engine.models.wan import rope_cos_sin

    _, ph, pw = cfg.patch_size
    pos = torch.as_tensor(list(positions), dtype=torch.long)
    return rope_cos_sin(pos, latent_hw[0] // ph, latent_hw[1] // pw, cfg.rope_split, cfg.rope_theta)


__all__ = ["Bucket", "DiTStep", "DiTBlockStep", "TextContext", "OPSETS", "PRECISIONS", "export_step", "export_block",
           "export_context", "export_graph", "step_io", "context_io", "example_inputs", "op_types", "rope_tables",
           "model_for_precision", "export_model"]


# ----------------------------------------------------------------------------------
# a whole export folder
# ----------------------------------------------------------------------------------
def export_model(model: WanDiT, out_dir: str | Path, *, frames=(3,), sizes=((4, 4),), batches=(1,),
                 cache_slots: int = 21, chunk_frames: int | None = None, opsets=OPSETS, precision: str = "float32",
                 block: bool = False, sampler=None, text_len: int | None = None, source=None, check: bool = True,
                 progress=None):
    """Export ``model`` into ``out_dir``: per opset a context graph per batch, a step graph
    per bucket (frames x latent sizes x batches), optionally block 0, and the manifest.

    frames: latent frames per chunk of each bucket (include the chunk size and any
    remainder a video needs, e.g. (3, 2, 1)); sizes: latent (height, width) pairs;
    cache_slots: frame slots of the cache every step graph takes; progress(str): called
    before each graph ("graph 2/7: step_... ") and after it with its time. Returns the
    :class:`engine_export.manifest.Manifest`.
    """
    from engine.config import SamplerConfig

    from .manifest import Manifest, base_manifest, graph_entry, write_manifest

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    for op in opsets:
        if op not in OPSETS:
            raise ValueError(f"opset {op} is not supported; choose from {OPSETS}")
    for what, values in (("frames", frames), ("batches", batches), ("sizes", [v for hw in sizes for v in hw]),
                         ("cache_slots", [cache_slots])):
        bad = [v for v in values if not isinstance(v, numbers.Integral) or v < 1]
        if bad or not list(values):
            raise ValueError(f"{what} must be integers >= 1, got {list(values)}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"output folder {str(out)!r} cannot be written: {exc.strerror or exc}; choose a writable "
                         f"folder") from None
    cfg = model.config
    text_len = text_len or cfg.text_len
    chunk_frames = chunk_frames or max(frames)
    if max(frames) > cache_slots:
        raise ValueError(f"a chunk of {max(frames)} frames does not fit a cache of {cache_slots} slots")
    data = base_manifest(model, precision=precision, sampler=sampler or SamplerConfig(), chunk_frames=chunk_frames,
                         cache_slots=cache_slots, source=source)
    m = model_for_precision(model, precision)
    tag = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[precision]
    todo = []  # (name, exporter, bucket)
    for op in opsets:
        for b in batches:
            todo.append((f"context_b{b}.opset{op}.{tag}", export_context, Bucket(1, 1, 1, b, cache_slots, text_len), op))
        for n in frames:
            for (h, w) in sizes:
                for b in batches:
                    bk = Bucket(n, h, w, b, cache_slots, text_len)
                    todo.append((f"step_{bk.key}.opset{op}.{tag}", export_step, bk, op))
        if block:
            bk = Bucket(frames[0], sizes[0][0], sizes[0][1], batches[0], cache_slots, text_len)
            todo.append((f"block0_{bk.key}.opset{op}.{tag}", export_block, bk, op))
    import time

    for i, (name, exporter, bk, op) in enumerate(todo):
        t0 = time.perf_counter()
        if progress is not None:
            progress(f"graph {i + 1}/{len(todo)}: {name} ...")
        info = exporter(m, bk, out / f"{name}.onnx", opset=op, precision=precision, check=check)
        data["graphs"].append(graph_entry(out, name, f"{name}.onnx", info))
        if progress is not None:
            progress(f"graph {i + 1}/{len(todo)}: {name} done in {time.perf_counter() - t0:.1f} s")
    write_manifest(out, data)
    return Manifest(data, out)
