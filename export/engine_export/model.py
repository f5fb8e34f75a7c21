"""Exported engines as a model backend: ``engine.load_model(DIR)`` on an export folder.

:class:`ExportedDiT` quacks like :class:`engine.models.wan.WanDiT` for everything the
block-autoregressive rollout uses -- ``model(x, t, ctx, condition=, frame_positions=,
kv_cache=, cache_slots=)``, ``.config``, ``.device``, ``.dtype``, ``.tokens_per_frame``,
``.prepare_context`` -- but runs the exported graphs: ONNX Runtime on the CPU, or
TensorRT engines where ``tensorrt`` imports, a CUDA device is present and the manifest
lists engines built for this GPU.

Each call feeds the whole :class:`engine.kvcache.KVCache` buffer, the chunk's write index
and its frame visibility over the cache slots to the step graph, then writes the chunk's
new keys/values (the graph's ``new_k``/``new_v``) back into the cache at the write index:
the same state the PyTorch model leaves behind. The text context (every layer's
cross-attention keys/values) comes from the exported context graph.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.config import parse_dtype
from engine.kvcache import ChunkSlots, KVCache
from engine.models.wan import Context

from . import trt
from .manifest import load_manifest
from .runtime import TORCH_DTYPES, OrtRunner

PROVIDERS = ("auto", "onnxruntime", "tensorrt")


class ExportedDiT:
    """A DiT served by exported graphs (see module docstring).

    directory: an export folder (``python -m engine_export onnx ...``); provider: ``auto``
    (TensorRT when usable, else ONNX Runtime), ``onnxruntime`` or ``tensorrt``;
    opset: pick graphs of this opset (default: the highest exported); verify: check the
    files' SHA-256 when loading.
    """

    is_exported = True

    def __init__(self, directory: str | Path, *, provider: str = "auto", opset: int | None = None, verify: bool = True,
                 threads: int | None = None):
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
        self.manifest = load_manifest(directory, verify_hashes=verify)
        self.config = self.manifest.config
        self.dtype = TORCH_DTYPES[self.manifest.precision]
        self.opset = opset
        self.threads = threads
        src = self.manifest.data["model"].get("source")
        self.source = None if src is None else Path(src)
        self.export_dir = self.manifest.directory
        self.attention_backend, self.fused_ops = "exported", False
        self.provider = self._pick_provider(provider)
        self.device = torch.device("cuda:0" if self.provider == "tensorrt" else "cpu")
        self._runners: dict[str, object] = {}

    # -- set-up ---------------------------------------------------------------------
    def _pick_provider(self, provider: str) -> str:
        has_engines = bool((self.manifest.data.get("tensorrt") or {}).get("engines"))
        if provider == "onnxruntime":
            return provider
        usable, why = trt.status()
        if provider == "tensorrt":
            if not usable:
                raise RuntimeError(f"TensorRT provider unavailable: {why}")
            if not has_engines:
                raise RuntimeError(f"{self.export_dir} has no TensorRT engines; build them with `python -m engine_export trt {self.export_dir}`")
            return provider
        if usable and has_engines:
            try:
                if trt.engines_for_this_gpu(self.manifest):
                    return "tensorrt"
            except RuntimeError:
                pass
        if self.manifest.precision == "bfloat16":
            raise RuntimeError("a bfloat16 export runs on TensorRT only (ONNX Runtime's CPU kernels lack bfloat16)")
        return "onnxruntime"

    def _runner(self, graph: dict):
        r = self._runners.get(graph["name"])
        if r is None:
            if self.provider == "tensorrt":
                r = trt.TrtRunner.from_manifest(self.manifest, graph)
            else:
                r = OrtRunner(self.manifest, graph, threads=self.threads)
            self._runners[graph["name"]] = r
        return r

    def _graph(self, kind: str, **bucket) -> dict:
        found = self.manifest.find(kind, opset=self.opset, **bucket)
        if not found:
            have = sorted({tuple(sorted(g.get("bucket", {}).items())) for g in self.manifest.graphs if g["kind"] == kind})
            raise ValueError(
                f"{self.export_dir} has no {kind} graph for {bucket}"
                + (f" at opset {self.opset}" if self.opset else "")
                + f"; exported buckets: {[dict(h) for h in have]}. Re-export with matching --frames/--size/--batch"
            )
        return found[0]

    # -- WanDiT-like surface -------------------------------------------------------
    def check_latent_size(self, height: int, width: int) -> None:
        """Raise ValueError (naming the exported buckets) unless a step graph exists for
        latents of ``height`` x ``width``; ``engine.generate`` asks before any work."""
        self._graph("step", latent_height=height, latent_width=width)

    def tokens_per_frame(self, height: int, width: int) -> int:
        _, ph, pw = self.config.patch_size
        return (height // ph) * (width // pw)

    def to(self, device=None, dtype=None, **_):
        if dtype is not None and parse_dtype(dtype, self.device) != self.dtype:
            raise ValueError(f"this export is {self.manifest.precision}; re-export with --precision to change the dtype")
        if device is not None and torch.device(device).type != self.device.type:
            raise ValueError(f"this exported model runs on {self.device} ({self.provider}); it cannot move to {device}")
        return self

    def eval(self):
        return self

    def requires_grad_(self, flag: bool = True):
        return self

    def __repr__(self) -> str:
        return f"ExportedDiT({self.export_dir}, model={self.config.name!r}, precision={self.manifest.precision}, provider={self.provider})"

    def prepare_context(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor | None = None) -> Context:
        """Run the context graph once: every layer's cross-attention keys/values."""
        cfg = self.config
        if text_embeds.dim() != 3 or text_embeds.shape[-1] != cfg.text_dim:
            raise ValueError(f"text_embeds must be [B, L, {cfg.text_dim}]; got {tuple(text_embeds.shape)}")
        B, L = text_embeds.shape[:2]
        g = self._graph("context", batch=B, text_len=L)
        feeds = {"text_embeds": text_embeds.to(self.device, self.dtype).contiguous()}
        if cfg.is_i2v:
            if image_embeds is None:
                raise ValueError(f"model {cfg.name!r} is image-to-video: pass image_embeds")
            feeds["image_embeds"] = image_embeds.to(self.device, self.dtype).contiguous()
        out = self._runner(g)(feeds)
        ck, cv = out["cross_k"], out["cross_v"]
        kv = [(ck[i], cv[i]) for i in range(cfg.num_layers)]
        if cfg.is_i2v:
            kv = [(k, v, out["cross_k_img"][i], out["cross_v_img"][i]) for i, (k, v) in enumerate(kv)]
        ctx = Context(text_embeds, image_embeds, kv)
        ctx.exported = out  # stacked tensors, fed to the step graph as they are
        return ctx

    def __call__(self, latents, timesteps, text_embeds, *, image_embeds=None, condition=None, frame_positions=None,
                 visibility=None, kv_cache: KVCache | None = None, cache_slots: ChunkSlots | None = None) -> torch.Tensor:
        return self.forward(latents, timesteps, text_embeds, image_embeds=image_embeds, condition=condition,
                            frame_positions=frame_positions, visibility=visibility, kv_cache=kv_cache,
                            cache_slots=cache_slots)

    def forward(self, latents, timesteps, text_embeds, *, image_embeds=None, condition=None, frame_positions=None,
                visibility=None, kv_cache: KVCache | None = None, cache_slots: ChunkSlots | None = None) -> torch.Tensor:
        """As :meth:`WanDiT.forward`; one step graph call per invocation."""
        from .onnx import rope_tables

        cfg = self.config
        if condition is not None:
            latents = torch.cat([latents, condition.to(latents.dtype)], dim=1)
        if latents.dim() != 5 or latents.shape[1] != cfg.in_channels:
            raise ValueError(f"latents must be [B, {cfg.in_channels}, F, H, W]; got {tuple(latents.shape)}")
        B, _, n, h, w = latents.shape
        ctx = text_embeds if isinstance(text_embeds, Context) else self.prepare_context(text_embeds, image_embeds)
        if ctx.batch != B:
            raise ValueError(f"text context has batch {ctx.batch} but latents have batch {B}")
        g = self._graph("step", frames=n, latent_height=h, latent_width=w, batch=B,
                        text_len=ctx.text.shape[1])
        S = g["bucket"]["cache_slots"]
        tpf = g["tokens_per_frame"]
        t = torch.as_tensor(timesteps, device=self.device).float()
        if t.dim() == 0:
            t = t.expand(B)
        if t.dim() == 1:
            t = t[:, None].expand(B, n)
        if t.shape != (B, n):
            raise ValueError(f"timesteps must be [B] or [B, F] = [{B}, {n}]; got {tuple(t.shape)}")

        if kv_cache is not None:
            if cache_slots is None or len(cache_slots.positions) != n:
                raise ValueError("with kv_cache, pass cache_slots=kv_cache.claim(positions) covering this chunk's frames")
            if kv_cache.tokens_per_frame != tpf:
                raise ValueError(f"cache holds {kv_cache.tokens_per_frame} tokens per frame, this chunk has {tpf}")
            if kv_cache.num_slots > S:
                raise ValueError(
                    f"the rollout's cache has {kv_cache.num_slots} frame slots but the exported graphs take {S}; "
                    f"re-export with --cache-frames {kv_cache.num_slots} or use a smaller window"
                )
            positions = list(cache_slots.positions)
            ck, cv = kv_cache.k, kv_cache.v
            vis = cache_slots.visibility.visibility
            index = cache_slots.token_index
        else:  # a plain call: a fresh cache holding only this pass's frames
            positions = list(range(n)) if frame_positions is None else [int(p) for p in torch.as_tensor(frame_positions).tolist()]
            shape = (cfg.num_layers, B, cfg.num_heads, n * tpf, cfg.head_dim)
            ck = cv = torch.zeros(shape, dtype=self.dtype, device=self.device)
            vis = torch.ones(n, n, dtype=torch.bool) if visibility is None else torch.as_tensor(visibility, dtype=torch.bool)
            if vis.shape != (n, n):
                raise ValueError(f"visibility must be bool [{n}, {n}]; got {tuple(vis.shape)}")
            index = torch.arange(n * tpf)
        if len(positions) != n:
            raise ValueError(f"frame_positions must have {n} entries, got {len(positions)}")
        slots_used = ck.shape[3] // tpf
        feeds_ck, feeds_cv = ck, cv
        if slots_used < S:  # a smaller cache than the graph's: pad with never-visible slots
            pad = (0, 0, 0, (S - slots_used) * tpf)
            feeds_ck = torch.nn.functional.pad(ck, pad)
            feeds_cv = torch.nn.functional.pad(cv, pad)
        vis_full = torch.zeros(1, 1, n, S, dtype=torch.bool, device=self.device)
        vis_full[0, 0, :, : vis.shape[1]] = vis.to(self.device)
        cos, sin = rope_tables(cfg, positions, (h, w))
        feeds = {
            "latents": latents.to(self.device, self.dtype).contiguous(),
            "timestep": t.contiguous(),
            "cross_k": ctx.exported["cross_k"] if hasattr(ctx, "exported") else torch.stack([kv[0] for kv in ctx.cross_kv]),
            "cross_v": ctx.exported["cross_v"] if hasattr(ctx, "exported") else torch.stack([kv[1] for kv in ctx.cross_kv]),
            "rope_cos": cos.to(self.device),
            "rope_sin": sin.to(self.device),
            "cache_k": feeds_ck.to(self.dtype).contiguous(),
            "cache_v": feeds_cv.to(self.dtype).contiguous(),
            "write_index": index.to(self.device, torch.int64),
            "visibility": vis_full,
        }
        if cfg.is_i2v:
            feeds["cross_k_img"] = torch.stack([kv[2] for kv in ctx.cross_kv])
            feeds["cross_v_img"] = torch.stack([kv[3] for kv in ctx.cross_kv])
        out = self._runner(g)(feeds)
        if kv_cache is not None:
            idx = index.to(kv_cache.k.device)
            kv_cache.k.index_copy_(3, idx, out["new_k"].to(kv_cache.k.device, kv_cache.k.dtype))
            kv_cache.v.index_copy_(3, idx, out["new_v"].to(kv_cache.v.device, kv_cache.v.dtype))
        return out["velocity"]


def load_exported(directory: str | Path, *, dtype=None, device=None, provider: str = "auto", **kw) -> ExportedDiT:
    """An :class:`ExportedDiT` from an export folder; ``dtype``/``device`` must agree with it."""
    return ExportedDiT(directory, provider=provider, **kw).to(device=device, dtype=dtype)


__all__ = ["ExportedDiT", "load_exported"]
