"""Tile-level block mask built from a frame-level visibility pattern.

The FlexAttention BlockMask idea: for every query tile (``block_m`` query tokens) list
the key tiles (``block_n`` key tokens) it must visit, split into

- FULL tiles: every (query, key) pair in the tile is visible -- no element mask;
- PARTIAL tiles: some pairs visible -- the kernel applies the element mask
  ``visibility[q_frame_ids[i], k_frame_ids[j]]``.

Tiles with no visible pair are never visited.  A key tile that runs past the end of
the key sequence (``Sk`` not a multiple of ``block_n``) is always PARTIAL, so FULL tiles
need no bounds checks.  Tokens per frame need not be a tile multiple.

Building needs the pattern on the host (one device->host copy), so results are cached:
first by tensor identity (the same tensor objects, unmodified since -- checked via
weak references and ``Tensor._version``), then by content (bytes of the three tensors).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

_CACHE_SIZE = 64


@dataclass(frozen=True, eq=False)
class BlockMask:
    """Per-query-tile lists of key tiles for :func:`engine_kernels.block_attention`.

    Attributes (all tensors on the attention device):
        block_m, block_n: tile sizes the lists were built for.
        seq_q, seq_k: query / key sequence lengths ``Sq``, ``Sk``.
        full_counts: int32 ``[Mt]`` number of FULL key tiles of query tile m.
        full_index: int32 ``[Mt, max(1, max full count)]`` FULL key-tile indices, ascending;
            entries past ``full_counts[m]`` are padding (0).
        full_run_counts: int32 ``[Mt]`` number of runs of consecutive FULL key tiles.
        full_runs: int32 ``[Mt, max(1, max run count), 2]`` ``(first, end)`` of each run,
            ascending and disjoint; the kernel walks ``range(first, end)``, so its loads
            are affine in the loop counter with no dependent index load per tile.
        partial_counts, partial_index: the same as the FULL lists for PARTIAL tiles.
        q_frame_ids: int32 ``[Sq]``, k_frame_ids: int32 ``[Sk]`` contiguous copies.
        visibility: int8 ``[Fq, Fk]`` contiguous copy of the pattern.
        visibility_bits: int64 ``[Fq]`` with bit j of row i = ``visibility[i, j]`` when
            ``Fk <= 64`` (the kernel's cheap element mask), else ``None``.
        visible_pairs: exact number of visible (query token, key token) pairs.
    """

    block_m: int
    block_n: int
    seq_q: int
    seq_k: int
    full_counts: torch.Tensor
    full_index: torch.Tensor
    full_run_counts: torch.Tensor
    full_runs: torch.Tensor
    partial_counts: torch.Tensor
    partial_index: torch.Tensor
    q_frame_ids: torch.Tensor
    k_frame_ids: torch.Tensor
    visibility: torch.Tensor
    visible_pairs: int
    visibility_bits: torch.Tensor | None = None
    _host: dict = field(default_factory=dict, repr=False)

    @property
    def num_q_tiles(self) -> int:
        return self.full_counts.shape[0]

    @property
    def num_k_tiles(self) -> int:
        return -(-self.seq_k // self.block_n)

    def tile_density(self) -> float:
        """Fraction of (query tile, key tile) pairs visited."""
        visited = self._host["full"] + self._host["partial"]
        return visited / float(self.num_q_tiles * self.num_k_tiles)

    def partial_fraction(self) -> float:
        """Fraction of visited tiles that need the element mask."""
        visited = self._host["full"] + self._host["partial"]
        return self._host["partial"] / visited if visited else 0.0

    def to_dense_tiles(self) -> torch.Tensor:
        """int8 ``[Mt, Nt]`` on CPU: 0 = skipped, 1 = partial, 2 = full (for tests/debugging)."""
        return self._host["tiles"].clone()


def _check_inputs(q_frame_ids: torch.Tensor, k_frame_ids: torch.Tensor,
                  visibility: torch.Tensor) -> None:
    for name, ids in (("q_frame_ids", q_frame_ids), ("k_frame_ids", k_frame_ids)):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
            raise ValueError(f"{name} must be a 1-D integer tensor, got {getattr(ids, 'shape', type(ids))}")
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{name} must have an integer dtype, got {ids.dtype}")
        if ids.numel() == 0:
            raise ValueError(f"{name} is empty")
    if not isinstance(visibility, torch.Tensor) or visibility.dim() != 2:
        raise ValueError("visibility must be a 2-D bool tensor [Fq, Fk]")
    if visibility.dtype != torch.bool:
        raise TypeError(f"visibility must be bool, got {visibility.dtype}")


def _frame_counts(ids: torch.Tensor, num_frames: int, block: int, name: str) -> torch.Tensor:
    """float64 ``[num_tiles, num_frames]``: tokens of each frame inside each tile."""
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= num_frames:
        raise ValueError(f"{name} must lie in [0, {num_frames}) (visibility has {num_frames} "
                         f"frames on that axis), got range [{lo}, {hi}]")
    n = ids.numel()
    tiles = -(-n // block)
    counts = torch.zeros(tiles, num_frames, dtype=torch.float64)
    tile_of = torch.arange(n) // block
    counts.index_put_((tile_of, ids.long()), torch.ones(n, dtype=torch.float64), accumulate=True)
    return counts


def _ordered_lists(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From bool ``[Mt, Nt]`` make (counts int32 [Mt], ascending indices int32 [Mt, max(1,max)])."""
    nt = sel.shape[1]
    counts = sel.sum(1)
    col = torch.arange(nt).expand_as(sel)
    keys = torch.where(sel, col, col + nt)  # selected tiles first, ascending
    order = keys.argsort(dim=1)
    width = max(1, int(counts.max()) if counts.numel() else 1)
    index = torch.where(torch.arange(width)[None, :] < counts[:, None], order[:, :width], 0)
    return counts.to(torch.int32), index.to(torch.int32).contiguous()


def _runs(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From bool ``[Mt, Nt]`` make (run counts int32 [Mt], runs int32 [Mt, max(1,max), 2]).

    A run is a maximal stretch of consecutive selected tiles ``[first, end)``.
    """
    mt, nt = sel.shape
    pad = torch.zeros(mt, 1, dtype=torch.bool)
    edges = torch.cat([pad, sel, pad], 1).to(torch.int8).diff(dim=1)  # [Mt, Nt + 1]
    starts = edges == 1   # run begins at column j
    ends = edges == -1    # run ends before column j
    counts, first = _ordered_lists(starts)
    _, end = _ordered_lists(ends)
    runs = torch.stack([first, end], dim=-1).contiguous()
    return counts, runs


def _row_bits(vis: torch.Tensor) -> torch.Tensor:
    """int64 ``[Fq]``: bit j of word i is ``vis[i, j]`` (``Fk <= 64``; bit 63 is the sign)."""
    fq, fk = vis.shape
    weights = torch.ones(fk, dtype=torch.int64) << torch.arange(fk, dtype=torch.int64)
    return (vis.to(torch.int64) * weights).sum(1)  # wraps to the sign bit for j = 63


def _build(q_frame_ids: torch.Tensor, k_frame_ids: torch.Tensor, visibility: torch.Tensor,
           block_m: int, block_n: int, device: torch.device) -> BlockMask:
    qf = q_frame_ids.detach().to("cpu", torch.int64)
    kf = k_frame_ids.detach().to("cpu", torch.int64)
    vis = visibility.detach().to("cpu")
    fq, fk = vis.shape
    qc = _frame_counts(qf, fq, block_m, "q_frame_ids")
    kc = _frame_counts(kf, fk, block_n, "k_frame_ids")

    # Query frames present in q whose visible key frames hold no key token.
    k_present = kc.sum(0) > 0
    q_present = qc.sum(0) > 0
    blind = q_present & ~(vis & k_present[None, :]).any(1)
    if blind.any():
        frames = blind.nonzero().flatten().tolist()
        raise ValueError(
            f"query frames {frames} see no key token: their visibility rows select no key "
            f"frame present in k_frame_ids (key frames present: "
            f"{k_present.nonzero().flatten().tolist()}); attention would be undefined (NaN)")

    visd = vis.to(torch.float64)
    visible = qc @ visd @ kc.T  # [Mt, Nt] visible pairs per tile
    total = qc.sum(1)[:, None] * kc.sum(1)[None, :]
    sk = kf.numel()
    nt = kc.shape[0]
    ragged = (torch.arange(nt) + 1) * block_n > sk  # last key tile runs past Sk
    full = (visible > 0) & (visible == total) & ~ragged[None, :]
    partial = (visible > 0) & ~full
    full_counts, full_index = _ordered_lists(full)
    run_counts, runs = _runs(full)
    part_counts, part_index = _ordered_lists(partial)
    tiles = full.to(torch.int8) * 2 + partial.to(torch.int8)
    visible_pairs = int(qc.sum(0) @ visd @ kc.sum(0))
    return BlockMask(
        block_m=block_m, block_n=block_n, seq_q=qf.numel(), seq_k=sk,
        full_counts=full_counts.to(device), full_index=full_index.to(device),
        full_run_counts=run_counts.to(device), full_runs=runs.to(device),
        partial_counts=part_counts.to(device), partial_index=part_index.to(device),
        q_frame_ids=qf.to(device=device, dtype=torch.int32).contiguous(),
        k_frame_ids=kf.to(device=device, dtype=torch.int32).contiguous(),
        visibility=vis.to(device=device, dtype=torch.int8).contiguous(),
        visible_pairs=visible_pairs,
        visibility_bits=_row_bits(vis).to(device) if fk <= 64 else None,
        _host={"full": int(full.sum()), "partial": int(partial.sum()), "tiles": tiles},
    )


class _BlockMaskCache:
    """Two-level LRU cache: tensor identity (+ version) first, then tensor contents."""

    def __init__(self, size: int = _CACHE_SIZE):
        self.size = size
        self.by_identity: OrderedDict = OrderedDict()
        self.by_content: OrderedDict = OrderedDict()
        self.builds = 0  # number of real builds, for tests

    @staticmethod
    def _put(d: OrderedDict, key, value, size: int) -> None:
        d[key] = value
        d.move_to_end(key)
        while len(d) > size:
            d.popitem(last=False)

    def get(self, q_frame_ids, k_frame_ids, visibility, block_m, block_n, device) -> BlockMask:
        tensors = (q_frame_ids, k_frame_ids, visibility)
        ident = tuple((id(t), t._version) for t in tensors) + (block_m, block_n, str(device))
        hit = self.by_identity.get(ident)
        if hit is not None:
            refs, mask = hit
            if all(r() is t for r, t in zip(refs, tensors)):
                self.by_identity.move_to_end(ident)
                return mask
        host = [t.detach().cpu().contiguous() for t in tensors]
        content = tuple((str(h.dtype), tuple(h.shape), h.numpy().tobytes()) for h in host)
        content = content + (block_m, block_n, str(device))
        mask = self.by_content.get(content)
        if mask is None:
            mask = _build(*host, block_m, block_n, torch.device(device))
            self.builds += 1
            self._put(self.by_content, content, mask, self.size)
        else:
            self.by_content.move_to_end(content)
        try:
            refs = tuple(weakref.ref(t) for t in tensors)
            self._put(self.by_identity, ident, (refs, mask), self.size)
        except TypeError:  # pragma: no cover - tensors are weak-referenceable
            pass
        return mask


_CACHE = _BlockMaskCache()


def build_block_mask(q_frame_ids: torch.Tensor, k_frame_ids: torch.Tensor,
                     visibility: torch.Tensor, block_m: int, block_n: int, *,
                     device: torch.device | str | None = None, cache: bool = True) -> BlockMask:
    """Turn a frame-level pattern into per-query-tile FULL / PARTIAL key-tile lists.

    Args:
        q_frame_ids: int ``[Sq]`` frame index (row of ``visibility``) of each query token.
        k_frame_ids: int ``[Sk]`` frame index (column of ``visibility``) of each key token.
        visibility: bool ``[Fq, Fk]``, ``visibility[i, j]``: query frame i may see key frame j.
        block_m, block_n: query / key tile sizes of the kernel that will consume the mask.
        device: where the lists live (default: the device of ``q_frame_ids``).
        cache: reuse a previously built mask for the same tensors / contents.

    Raises:
        ValueError: frame ids out of range, or a query frame present in ``q_frame_ids``
            that sees no key token (naming the frames).
    """
    _check_inputs(q_frame_ids, k_frame_ids, visibility)
    if block_m < 1 or block_n < 1:
        raise ValueError(f"tile sizes must be positive, got {block_m}, {block_n}")
    device = torch.device(device) if device is not None else q_frame_ids.device
    if not cache:
        host = [t.detach().cpu() for t in (q_frame_ids, k_frame_ids, visibility)]
        return _build(*host, block_m, block_n, device)
    return _CACHE.get(q_frame_ids, k_frame_ids, visibility, block_m, block_n, device)


def clear_block_mask_cache() -> None:
    """Drop every cached :class:`BlockMask`."""
    _CACHE.by_identity.clear()
    _CACHE.by_content.clear()


def dense_mask(q_frame_ids: torch.Tensor, k_frame_ids: torch.Tensor,
               visibility: torch.Tensor) -> torch.Tensor:
    """Token-level bool mask ``[Sq, Sk]`` = ``visibility[q_frame_ids][:, k_frame_ids]``."""
    _check_inputs(q_frame_ids, k_frame_ids, visibility)
    vis = visibility.to(q_frame_ids.device)
    return vis[q_frame_ids.long()][:, k_frame_ids.long().to(q_frame_ids.device)]
