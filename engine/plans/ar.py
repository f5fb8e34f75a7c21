"""``ar``: block-autoregressive rollout (Self-Forcing / CausVid / LongVie 2).

Chunks of ``chunk_frames`` latent frames, each one job that depends on the chunk before.
Context is either the KV cache (``context="cache"``: the chunks form a chain pinned to
the worker owning the plan's cache ``"ar"``; the plan lists the frames the cache lets a
chunk see, and one extra refresh pass per chunk but the last) or ``history_frames`` clean history frames fed in the sequence
(``context="history"``, LongVie 2). A bounded window keeps ``sink_frames`` first frames
plus the most recent ``window_frames`` (cache) / ``history_frames`` (history).
``unified_noise``: every clip starts from the same noise tensor (frame k of a chunk gets
noise k), LongVie 2's unified noise initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .core import INPUT, CacheSpec, Plan, PlanError, make_job

# Total latent frames one chunk may attend to (Self-Forcing trains on 21): when neither a
# window nor sink frames are given, longer videos get the first chunk as sink frames plus
# a window of the most recent frames.
DEFAULT_ATTENTION_FRAMES = 21

@dataclass(frozen=True)
class ArOptions:
    """Options of ``ar`` (see the module docstring); None: derived (bounded window)."""

    chunk_frames: int = 3
    context: str = "cache"
    history_frames: int | None = None
    sink_frames: int | None = None
    window_frames: int | None = None
    unified_noise: bool = False


OPTIONS = tuple(f.name for f in fields(ArOptions))


def build_ar(num_frames: int, *, base: list[float], first_given: bool = False, chunk_frames: int,
             context: str, history_frames: int | None, sink_frames: int | None, window_frames: int | None,
             unified_noise: bool) -> Plan:
    if chunk_frames < 1:
        raise PlanError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if context not in ("cache", "history"):
        raise PlanError(f"ar context must be 'cache' (KV cache) or 'history' (history frames in the sequence), got {context!r}")
    if context == "cache":
        window_frames_given = window_frames
    else:
        window_frames_given = history_frames
    if window_frames_given is None and sink_frames is None and num_frames > DEFAULT_ATTENTION_FRAMES:
        sink_frames = chunk_frames + (1 if first_given else 0)
        bound = DEFAULT_ATTENTION_FRAMES - sink_frames - chunk_frames
        if context == "cache":
            window_frames = bound
        else:
            history_frames = bound
    sink = sink_frames or 0
    if sink < 0:
        raise PlanError(f"sink_frames must be >= 0, got {sink_frames}")
    window = window_frames if context == "cache" else history_frames
    if window is not None and window < 0:
        raise PlanError(f"window/history frames must be >= 0, got {window}")
    start = 1 if first_given else 0
    producer: dict[int, str] = {0: INPUT} if first_given else {}
    jobs = []
    prev = None
    chunks = [list(range(s, min(s + chunk_frames, num_frames))) for s in range(start, num_frames, chunk_frames)]
    for ci, pos in enumerate(chunks):
        s = pos[0]
        past = list(range(s))
        ctx = [p for p in past if p < sink or window is None or p >= s - window]
        frames = {p: (False, producer[p]) for p in ctx}
        frames.update({p: (True, None) for p in pos})
        jid = f"ar/chunk{ci}"
        cache = context == "cache"
        jobs.append(make_job(jid, "main", frames, base=base, outputs=pos, kind="chunk",
                             noise="unified" if unified_noise else "fresh",
                             after=(prev,) if (cache and prev) else (), cache="ar" if cache else None,
                             extra_passes=1 if (cache and ci + 1 < len(chunks)) else 0))
        for p in pos:
            producer[p] = jid
        prev = jid
    opts = dict(chunk_frames=chunk_frames, context=context, history_frames=history_frames, sink_frames=sink,
                window_frames=window_frames, unified_noise=unified_noise)
    caches = {"ar": CacheSpec(chunk_frames, num_frames, sink, window_frames)} if context == "cache" else {}
    return Plan("ar", num_frames, jobs, inputs=(0,) if first_given else (), options=opts, caches=caches)
