"""Frame-level visibility -> attention backend, behind one call.

A :class:`FrameVisibility` says, for one forward pass, which frame each query and key
token belongs to and which query frame may see which key frame. :func:`attention` runs
the chosen backend over it:

- ``reference`` -- explicit float32 softmax over a dense token mask (the ground truth).
- ``sdpa``      -- ``torch.nn.functional.scaled_dot_product_attention`` with a dense
  boolean mask (or none, for full visibility).
- ``triton``    -- our block-sparse kernel (``engine_kernels.block_attention``), which visits only
  visible key tiles; used when the ``engine_kernels`` package and a CUDA device are present.
- ``flex``      -- torch FlexAttention with a BlockMask built from the same pattern
  (compiled on CUDA; eager on CPU, for tests).
- ``flash-attn`` -- flash-attn's ``flash_attn_func``; full visibility only.
- ``xformers``  -- ``xformers.ops.memory_efficient_attention`` with an additive mask.

``auto`` picks the fastest available for the tensors' device. Asking for a backend that
is not available raises :class:`BackendUnavailable` saying why and how to get it.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "triton", "sdpa", "flex", "flash-attn", "xformers", "reference")


class BackendUnavailable(RuntimeError):
    """An attention backend was requested that cannot run here (names the fix)."""


class FrameVisibility:
    """Which query token may attend to which key token, described per frame.

    q_frame_ids: int [Sq] -- frame index (row of ``visibility``) of each query token.
    k_frame_ids: int [Sk] -- frame index (column of ``visibility``) of each key token.
    visibility:  bool [Fq, Fk] -- may query frame i see key frame j.

    The dense token mask is built once on first use and shared by every layer of a
    forward pass.
    """

    def __init__(self, q_frame_ids: torch.Tensor, k_frame_ids: torch.Tensor, visibility: torch.Tensor):
        if visibility.dtype != torch.bool or visibility.dim() != 2:
            raise ValueError(
                f"visibility must be a 2-D bool matrix [query frames, key frames], got "
                f"{tuple(visibility.shape)} {visibility.dtype}"
            )
        self.q_frame_ids = q_frame_ids
        self.k_frame_ids = k_frame_ids
        self.visibility = visibility
        self._dense: torch.Tensor | None = None
        self._flex = None
        self._tiles: dict = {}  # (head_dim, dtype) -> engine_kernels.BlockMask

    @classmethod
    def uniform(cls, visibility: torch.Tensor, q_tokens_per_frame: int, k_tokens_per_frame: int | None = None):
        """Visibility for frames of equal token counts: query frame i owns tokens
        [i*tq, (i+1)*tq), key frame j owns [j*tk, (j+1)*tk)."""
        tk = q_tokens_per_frame if k_tokens_per_frame is None else k_tokens_per_frame
        dev = visibility.device
        fq, fk = visibility.shape
        q_ids = torch.arange(fq, device=dev).repeat_interleave(q_tokens_per_frame)
        k_ids = torch.arange(fk, device=dev).repeat_interleave(tk)
        return cls(q_ids, k_ids, visibility)

    def is_full(self) -> bool:
        """True when every query frame sees every key frame (no mask needed). Host sync:
        call it outside hot loops."""
        return bool(self.visibility.all())

    def dense_mask(self) -> torch.Tensor:
        """bool [Sq, Sk]: token-level mask, True where attention is allowed."""
        if self._dense is None:
            rows = self.visibility.index_select(0, self.q_frame_ids)
            self._dense = rows.index_select(1, self.k_frame_ids)
        return self._dense

    def flex_block_mask(self):
        """torch FlexAttention BlockMask of this pattern (built once, then reused)."""
        if self._flex is None:
            from torch.nn.attention.flex_attention import create_block_mask

            vis, qf, kf = self.visibility, self.q_frame_ids, self.k_frame_ids

            def mask_mod(b, h, q_idx, kv_idx):
                return vis[qf[q_idx], kf[kv_idx]]

            self._flex = create_block_mask(
                mask_mod, None, None, qf.numel(), kf.numel(), device=str(vis.device)
            )
        return self._flex

    def triton_block_mask(self, head_dim: int, dtype: torch.dtype):
        """The Triton kernel's tile lists (:class:`engine_kernels.BlockMask`) for this pattern at
        the kernel's default tiles for ``head_dim`` / ``dtype``; built once (one host copy
        of the pattern), then reused by every layer and step that shares this object.
        Call it before a compiled or graph-captured region so no host work happens inside."""
        key = (head_dim, dtype)
        if key not in self._tiles:
            import engine_kernels
            from engine_kernels.block_attention import default_tiles

            bm, bn = default_tiles(head_dim, dtype)[:2]
            self._tiles[key] = engine_kernels.build_block_mask(
                self.q_frame_ids, self.k_frame_ids, self.visibility, bm, bn, device=self.visibility.device)
        return self._tiles[key]

    def to(self, device: torch.device) -> "FrameVisibility":
        """The same pattern with its tensors on ``device``."""
        return FrameVisibility(self.q_frame_ids.to(device), self.k_frame_ids.to(device), self.visibility.to(device))


def attention_reference(q, k, v, vis: FrameVisibility | None = None, scale: float | None = None) -> torch.Tensor:
    """Plain float32 softmax attention. q [B,H,Sq,D], k/v [B,H,Sk,D] -> [B,H,Sq,D] in q's dtype."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    if vis is not None:
        scores = scores.masked_fill(~vis.dense_mask(), float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v.float()).to(q.dtype)


def _sdpa(q, k, v, vis: FrameVisibility | None, scale: float | None) -> torch.Tensor:
    mask = None if vis is None else vis.dense_mask()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _triton(q, k, v, vis: FrameVisibility | None, scale: float | None) -> torch.Tensor:
    import engine_kernels

    if vis is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return engine_kernels.block_attention(
        q, k, v, q_frame_ids=vis.q_frame_ids, k_frame_ids=vis.k_frame_ids, visibility=vis.visibility, scale=scale,
        block_mask=vis.triton_block_mask(q.shape[-1], q.dtype),
    )


_FLEX_COMPILED = None


def _flex(q, k, v, vis: FrameVisibility | None, scale: float | None) -> torch.Tensor:
    global _FLEX_COMPILED
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    if vis is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    fn = flex_attention
    if q.is_cuda:  # fused kernel; eager flex materialises the scores (fine for CPU tests only)
        if _FLEX_COMPILED is None:
            _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
        fn = _FLEX_COMPILED
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return fn(q, k, v, block_mask=vis.flex_block_mask(), scale=scale)


def _flash_attn(q, k, v, vis: FrameVisibility | None, scale: float | None) -> torch.Tensor:
    if vis is not None and not vis.is_full():
        raise BackendUnavailable(
            "flash-attn takes no frame-visibility mask; use the 'triton' or 'flex' backend for masked patterns"
        )
    from flash_attn import flash_attn_func  # layout [B, S, H, D]

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale)
    return out.transpose(1, 2)


def _xformers(q, k, v, vis: FrameVisibility | None, scale: float | None) -> torch.Tensor:
    import xformers.ops as xops  # layout [B, S, H, D]; an additive float bias carries the mask

    bias = None
    if vis is not None:
        bias = torch.zeros(vis.dense_mask().shape, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(~vis.dense_mask(), float("-inf")).expand(q.shape[0], q.shape[1], -1, -1)
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, scale=scale
    )
    return out.transpose(1, 2)


def backend_status(name: str, device: torch.device | str = "cpu") -> tuple[bool, str]:
    """(available, reason) for an attention backend on a device; the reason says how to
    get it when it is missing."""
    dev = torch.device(device)
    if name in ("sdpa", "reference"):
        return True, "built into torch"
    if name == "triton":
        if dev.type != "cuda":
            return False, "the Triton kernel needs a CUDA device (on CPU it runs only under TRITON_INTERPRET=1, for tests)"
        if importlib.util.find_spec("triton") is None:
            return False, "the 'triton' package is not installed (pip install triton)"
        try:
            importlib.import_module("engine_kernels").block_attention  # noqa: B018
        except (ImportError, AttributeError) as exc:
            return False, f"the project's 'engine_kernels' package cannot provide block_attention: {exc}"
        return True, "triton block-sparse kernel"
    if name == "flex":
        try:
            from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
        except ImportError:
            return False, "torch FlexAttention needs torch >= 2.5"
        return True, "torch FlexAttention with a BlockMask (compiled on CUDA)"
    if name == "flash-attn":
        if dev.type != "cuda":
            return False, "flash-attn needs a CUDA device"
        if importlib.util.find_spec("flash_attn") is None:
            return False, "the 'flash-attn' package is not installed (pip install flash-attn --no-build-isolation)"
        return True, "flash-attn (full visibility only)"
    if name == "xformers":
        if dev.type != "cuda":
            return False, "xformers' memory-efficient attention needs a CUDA device"
        if importlib.util.find_spec("xformers") is None:
            return False, "the 'xformers' package is not installed (pip install xformers)"
        return True, "xformers memory_efficient_attention"
    return False, f"unknown backend {name!r}; choose one of {BACKENDS}"


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend for a request: ``auto`` becomes the fastest available one;
    an unavailable explicit request raises :class:`BackendUnavailable`."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    if name == "auto":
        ok, _ = backend_status("triton", device)
        return "triton" if ok else "sdpa"
    ok, why = backend_status(name, device)
    if not ok:
        raise BackendUnavailable(f"attention backend {name!r} is unavailable: {why}")
    return name


_IMPLS = {
    "reference": attention_reference,
    "sdpa": _sdpa,
    "triton": _triton,
    "flex": _flex,
    "flash-attn": _flash_attn,
    "xformers": _xformers,
}


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    vis: FrameVisibility | None = None,
    *,
    backend: str = "sdpa",
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of q [B,H,Sq,D] over k, v [B,H,Sk,D] under a frame visibility pattern
    (``None``: every query sees every key). Returns [B,H,Sq,D].

    ``backend`` must already be concrete (see :func:`resolve_backend`); k and v may be
    views into a preallocated KV cache.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention expects 4-D q, k, v [B,H,S,D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if vis is not None and (vis.q_frame_ids.numel() != q.shape[2] or vis.k_frame_ids.numel() != k.shape[2]):
        raise ValueError(
            f"visibility covers {vis.q_frame_ids.numel()} query / {vis.k_frame_ids.numel()} key tokens but "
            f"q has {q.shape[2]} and k has {k.shape[2]}"
        )
    try:
        impl = _IMPLS[backend]
    except KeyError:
        raise ValueError(f"attention backend {backend!r} must be resolved first; concrete ones: {sorted(_IMPLS)}") from None
    return impl(q, k, v, vis, scale)
