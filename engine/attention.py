"""Frame-level visibility -> attention backend, behind one call.

A :class:`FrameVisibility` says, for one forward pass, which frame each query and key
token belongs to and which query frame may see which key frame. :func:`attention` runs
the chosen backend over it:

- ``reference`` -- explicit float32 softmax over a dense token mask (the ground truth).
- ``sdpa``      -- ``torch.nn.functional.scaled_dot_product_attention`` with a dense
  boolean mask (or none, for full visibility).
- ``triton``    -- our block-sparse kernel (``kernels.block_attention``), which visits only
  visible key tiles; used when the ``kernels`` package and a CUDA device are present.

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
    import kernels

    if vis is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return kernels.block_attention(
        q, k, v, q_frame_ids=vis.q_frame_ids, k_frame_ids=vis.k_frame_ids, visibility=vis.visibility, scale=scale
    )


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
            importlib.import_module("kernels").block_attention  # noqa: B018
        except (ImportError, AttributeError) as exc:
            return False, f"the project's 'kernels' package cannot provide block_attention: {exc}"
        return True, "triton block-sparse kernel"
    if name in ("flex", "flash-attn", "xformers"):
        return False, f"backend {name!r} is not wired into this build yet; use 'sdpa', 'triton' or 'reference'"
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


_IMPLS = {"reference": attention_reference, "sdpa": _sdpa, "triton": _triton}


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
