"""Fixed-capacity, frame-addressed KV cache for block-autoregressive rollout.

One buffer per key and value holds every layer: [L, B, H, slots * tokens_per_frame, D],
allocated once, so the addresses never change (CUDA-graph safe). The slots form two
named regions:

- *sink*: the first ``sink_frames`` frame positions, kept for the whole video;
- *ring*: a circular region of ``window_frames + chunk_frames`` slots holding the most
  recent frames. A chunk at positions [s, s+n) sees the sink frames, the ``window_frames``
  frames before s, and itself.

Frame position p lives in slot p (p < sink) or sink + (p - sink) mod ring, counted from
the cache's ``origin`` (a cache of one clip starts at the clip's first position).

A chunk may instead be told exactly which cached frames it sees (``claim(positions,
see=...)``): any frames of the cache, in any order, e.g. MMPL's stages, whose keyframes
and populating frames see chosen earlier stages (the plan's visibility decides, not a
window). A forward pass
over a chunk first writes the chunk's keys and values into its slots, then attends over
the whole buffer with a frame-level visibility row per slot; denoising steps overwrite
the chunk's slots, and a last pass over the clean chunk at noise level 0 leaves the clean
entries (the "refresh"). Slot bookkeeping is host-side Python integers; the device only
sees small index tensors built once per chunk, so the hot loop never waits on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import FrameVisibility


@dataclass
class ChunkSlots:
    """Where one chunk lives in the cache and what it may see.

    positions: frame positions of the chunk, [n] Python ints.
    token_index: long [n * tokens_per_frame] -- cache token rows the chunk writes (None when
      ``write`` is False: a read-only chunk, whose own keys follow the cached ones).
    visibility: the chunk's FrameVisibility over all cache slots ([n, slots]).
    key_slots: attention reads only slots [0, key_slots) -- every visible slot lies there
      (early in a rollout, and for unbounded windows, most of the cache is still empty).
    attend: ``visibility`` cut to those slots (what attention uses).
    """

    positions: list[int]
    token_index: torch.Tensor | None
    visibility: FrameVisibility
    key_slots: int
    attend: FrameVisibility
    write: bool = True


class KVCache:
    """Per-layer key/value buffers addressed by frame position (see module docstring).

    ``window_frames=None`` means an unbounded window: the ring holds ``max_frames`` (which
    must then be given) and nothing is ever evicted.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        batch: int,
        num_heads: int,
        head_dim: int,
        tokens_per_frame: int,
        chunk_frames: int,
        sink_frames: int = 0,
        window_frames: int | None = None,
        max_frames: int | None = None,
        origin: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        if sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {sink_frames}")
        if window_frames is None:
            if max_frames is None:
                raise ValueError("an unbounded window (window_frames=None) needs max_frames, the video's latent frame count")
            ring = max(max_frames - sink_frames, chunk_frames)
        else:
            if window_frames < 0:
                raise ValueError(f"window_frames must be >= 0, got {window_frames}")
            ring = window_frames + chunk_frames
        self.num_layers = num_layers
        self.origin = int(origin)
        self.plan_visibility = False  # set by cache_for for CacheSpec(visible="plan")
        self.tokens_per_frame = tokens_per_frame
        self.chunk_frames = chunk_frames
        self.sink_frames = sink_frames
        self.window_frames = window_frames
        self.ring_frames = ring
        self.num_slots = sink_frames + ring
        self.device = torch.device(device)
        shape = (num_layers, batch, num_heads, self.num_slots * tokens_per_frame, head_dim)
        # Zero-filled, not empty: attention backends with a dense mask multiply masked
        # (never-written) slots by zero weights, and garbage NaNs there would poison rows.
        self.k = torch.zeros(shape, device=self.device, dtype=dtype)
        self.v = torch.zeros(shape, device=self.device, dtype=dtype)
        self._slot_pos: list[int] = [-1] * self.num_slots
        self._k_frame_ids = torch.arange(self.num_slots, device=self.device).repeat_interleave(tokens_per_frame)
        self._tok = torch.arange(tokens_per_frame, device=self.device)

    # -- addressing ---------------------------------------------------------------
    def slot_of(self, position: int) -> int:
        """The slot that frame ``position`` occupies."""
        p = position - self.origin
        if p < 0:
            raise ValueError(f"frame position must be >= the cache's origin {self.origin}, got {position}")
        if p < self.sink_frames:
            return p
        return self.sink_frames + (p - self.sink_frames) % self.ring_frames

    def slot_positions(self) -> list[int]:
        """Frame position held by each slot (-1: empty)."""
        return list(self._slot_pos)

    def reset(self) -> None:
        """Forget every frame (buffers are kept; contents become unreachable)."""
        self._slot_pos = [-1] * self.num_slots

    def visible(self, query_start: int, query_end: int, key_position: int) -> bool:
        """May a chunk covering positions [query_start, query_end) see frame ``key_position``?"""
        if key_position < self.origin or key_position >= query_end:
            return False
        if key_position - self.origin < self.sink_frames or key_position >= query_start:
            return True
        return self.window_frames is None or key_position >= query_start - self.window_frames

    def claim(self, positions: list[int], see: list[int] | None = None, write: bool = True) -> ChunkSlots:
        """Reserve slots for a chunk and return where it writes and what it sees; evicts
        the frames those slots held. ``see`` None: consecutive positions, seeing the sink,
        the window before them and themselves. ``see`` given: any positions, each taking
        the slot it held or the first free one, seeing exactly the cached frames ``see``
        plus themselves; with ``write=False`` the chunk takes no slot: its own keys and
        values are attended after the cached ones and never stored (a last stage nothing
        reads, as MMPL's)."""
        positions = [int(p) for p in positions]
        n = len(positions)
        if n == 0 or n > self.chunk_frames:
            raise ValueError(f"a chunk has 1..{self.chunk_frames} frames (chunk_frames), got {n}")
        if len(set(positions)) != n:
            raise ValueError(f"chunk positions must be distinct, got {positions}")
        if see is None:
            if not write:
                raise ValueError("a read-only chunk (write=False) needs the frames it sees (see=...)")
            if positions != list(range(positions[0], positions[0] + n)):
                raise ValueError(f"chunk positions must be consecutive, got {positions}")
            top = max(positions) - self.origin
            if self.window_frames is None and top >= self.sink_frames + self.ring_frames:
                raise ValueError(
                    f"frame position {max(positions)} exceeds the unbounded cache's capacity of "
                    f"{self.sink_frames + self.ring_frames} frames from position {self.origin}; pass a larger "
                    f"max_frames or set window_frames"
                )
            slots = [self.slot_of(p) for p in positions]
            for s, p in zip(slots, positions):
                self._slot_pos[s] = p
            start, end = positions[0], positions[-1] + 1
            row = [self.visible(start, end, sp) for sp in self._slot_pos]
        else:
            if min(positions) < self.origin:
                raise ValueError(f"frame positions {positions} lie before the cache's origin {self.origin}")
            seen = {int(p) for p in see}
            held = set(self._slot_pos)
            missing = sorted(p for p in seen if p not in held or p in positions)
            if missing:
                raise ValueError(f"frames {missing} are to be seen by chunk {positions} but are not in the cache "
                                 f"(held: {sorted(p for p in held if p >= 0)})")
            slots = []
            if write:
                free = [i for i, sp in enumerate(self._slot_pos) if sp < 0]
                for p in positions:
                    if p in held:
                        slots.append(self._slot_pos.index(p))
                    elif free:
                        slots.append(free.pop(0))
                    else:
                        raise ValueError(f"the cache's {self.num_slots} slots are full (holding "
                                         f"{sorted(q for q in held if q >= 0)}); frame {p} has no slot")
                for sl, p in zip(slots, positions):
                    self._slot_pos[sl] = p
                seen |= set(positions)
            row = [sp in seen for sp in self._slot_pos]
        # Within the chunk every frame sees every other frame of the chunk (bidirectional).
        visibility = torch.tensor([row] * n, dtype=torch.bool).to(self.device, non_blocking=True)
        key_slots = 1 + max((i for i, v in enumerate(row) if v), default=-1)
        tpf = self.tokens_per_frame
        q_ids = torch.arange(n, device=self.device).repeat_interleave(tpf)
        if not write:  # keys: the cached slots read, then the chunk's own
            own = torch.arange(key_slots, key_slots + n, device=self.device).repeat_interleave(tpf)
            k_ids = torch.cat([self._k_frame_ids[: key_slots * tpf], own])
            vis = torch.cat([visibility[:, :key_slots], torch.ones(n, n, dtype=torch.bool, device=self.device)], 1)
            attend = FrameVisibility(q_ids, k_ids, vis)
            return ChunkSlots(positions, None, attend, key_slots, attend, write=False)
        slot_t = torch.tensor(slots, dtype=torch.long).to(self.device, non_blocking=True)
        token_index = (slot_t[:, None] * tpf + self._tok[None, :]).reshape(-1)
        full = FrameVisibility(q_ids, self._k_frame_ids, visibility)
        if key_slots == self.num_slots:
            attend = full
        else:
            attend = FrameVisibility(q_ids, self._k_frame_ids[: key_slots * tpf], visibility[:, :key_slots])
        return ChunkSlots(positions, token_index, full, key_slots, attend)

    # -- data ---------------------------------------------------------------------
    def write(self, layer: int, slots: ChunkSlots, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store a chunk's k, v [B,H,n*tpf,D] for one layer; return that layer's key and
        value buffers over the slots attention reads, [B,H,key_slots*tpf,D] (views, no copy);
        for a read-only chunk those slots followed by its own k, v (a copy)."""
        kl, vl = self.k[layer], self.v[layer]
        if k.shape[0] != kl.shape[0] or k.shape[1] != kl.shape[1] or k.shape[3] != kl.shape[3]:
            raise ValueError(
                f"cache holds [B={kl.shape[0]}, H={kl.shape[1]}, D={kl.shape[3]}] but got keys of shape {tuple(k.shape)}"
            )
        used = slots.key_slots * self.tokens_per_frame
        if not slots.write:  # a read-only chunk: the cached keys, then its own (not stored)
            return (torch.cat([kl[:, :, :used], k.to(kl.dtype)], 2), torch.cat([vl[:, :, :used], v.to(vl.dtype)], 2))
        kl.index_copy_(2, slots.token_index, k.to(kl.dtype))
        vl.index_copy_(2, slots.token_index, v.to(vl.dtype))
        return kl[:, :, :used], vl[:, :, :used]


def cache_for(model, spec, batch: int, h: int, w: int) -> KVCache:
    """A KV cache for ``model`` laid out as ``spec`` (:class:`engine.plans.core.CacheSpec`:
    chunk, sink and window frames, max frames, origin; ``plan_visibility`` set when the
    plan's visibility, not the window, says what each chunk sees) for latents of h x w and ``batch`` rows
    (2 with classifier-free guidance). Under CUDA graphs (``model.static_cache``, set by
    :mod:`engine.compile`) the buffers are marked static: they never move."""
    cfg = model.config
    cache = KVCache(num_layers=cfg.num_layers, batch=batch, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                    tokens_per_frame=model.tokens_per_frame(h, w), chunk_frames=spec.chunk_frames,
                    sink_frames=spec.sink_frames, window_frames=spec.window_frames, max_frames=spec.max_frames,
                    origin=spec.origin, device=model.device, dtype=model.dtype)
    cache.plan_visibility = spec.visible == "plan"
    if getattr(model, "static_cache", False):
        import torch._dynamo as dynamo

        dynamo.mark_static_address(cache.k)
        dynamo.mark_static_address(cache.v)
    return cache
