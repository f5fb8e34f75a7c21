"""Frame-level visibility patterns (pure torch, CPU bool matrices).

A pattern is a bool tensor ``vis`` of shape ``[Fq, Fk]``: ``vis[i, j]`` is True when
query frame ``i`` may attend to key frame ``j``.  The constructors below return square
``[F, F]`` patterns over the frames of one forward pass; the engine may slice columns
(e.g. context frames served from the KV cache) or rows (the frames being denoised).
Every constructor guarantees that each row has at least one True (frames always see
themselves), which :func:`engine_kernels.block_attention` requires.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check_positive(name: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def full(num_frames: int) -> torch.Tensor:
    """Every frame sees every frame.  Returns bool ``[F, F]``."""
    _check_positive("num_frames", num_frames)
    return torch.ones(num_frames, num_frames, dtype=torch.bool)


def block_causal(num_frames: int, chunk: int) -> torch.Tensor:
    """Chunks of ``chunk`` frames; a frame sees all frames of its own and earlier chunks.

    ``vis[i, j] = (j // chunk) <= (i // chunk)``.  ``chunk=1`` is frame-causal.
    Returns bool ``[F, F]``.
    """
    _check_positive("num_frames", num_frames)
    _check_positive("chunk", chunk)
    c = torch.arange(num_frames) // chunk
    return c[None, :] <= c[:, None]


def sliding_window(num_frames: int, chunk: int, window: int, sink: int = 0) -> torch.Tensor:
    """Block-causal attention restricted to a window of recent frames plus sink frames.

    Frame ``i`` lies in chunk ``c = i // chunk`` whose last frame is
    ``e = (c + 1) * chunk - 1``.  It sees frame ``j`` iff ``j // chunk <= c`` and
    (``j > e - window`` or ``j < sink``): the last ``window`` frames up to the end of its
    own chunk (what a KV cache holding ``window`` frames keeps), plus the first ``sink``
    frames (attention sinks, never evicted).  ``window`` must be >= ``chunk`` so a frame
    always sees its whole chunk.  Returns bool ``[F, F]``.
    """
    _check_positive("num_frames", num_frames)
    _check_positive("chunk", chunk)
    _check_positive("window", window)
    if window < chunk:
        raise ValueError(f"window ({window}) must be >= chunk ({chunk})")
    if sink < 0:
        raise ValueError(f"sink must be >= 0, got {sink}")
    idx = torch.arange(num_frames)
    c = idx // chunk
    end = (c + 1) * chunk - 1
    causal = c[None, :] <= c[:, None]
    recent = idx[None, :] > (end[:, None] - window)
    sinks = idx[None, :] < sink
    return causal & (recent | sinks)


def mmpl_planning(
    num_frames: int, keyframes: Sequence[int], causal_within_stage: bool = True
) -> torch.Tensor:
    """MMPL visibility over a segment timeline of ``num_frames`` frames.

    Frame 0 is the segment's initial (given) frame; ``keyframes`` are the positions of
    the planning keyframes (e.g. early / midpoint / terminal), all in ``1..F-1``.
    Anchors are frame 0 plus the keyframes.

    - the initial frame sees only itself;
    - a keyframe sees the initial frame and every keyframe (joint planning);
    - an in-between frame ``k`` belongs to the *stage* between its head anchor
      (largest anchor < k) and its tail anchor (smallest anchor > k, absent after the
      last keyframe).  It sees the head and tail anchors and the in-between frames of
      its stage that are ``<= k`` (all frames of its stage when
      ``causal_within_stage=False``).

    Returns bool ``[F, F]``.
    """
    _check_positive("num_frames", num_frames)
    kf = sorted(set(int(k) for k in keyframes))
    if any(k < 1 or k >= num_frames for k in kf):
        raise ValueError(f"keyframes must lie in 1..{num_frames - 1}, got {list(keyframes)}")
    anchors = [0] + kf
    vis = torch.zeros(num_frames, num_frames, dtype=torch.bool)
    vis[0, 0] = True
    for k in kf:
        vis[k, anchors] = True
    # stage id of each in-between frame: index of its head anchor
    for s, head in enumerate(anchors):
        tail = anchors[s + 1] if s + 1 < len(anchors) else None
        stop = tail if tail is not None else num_frames
        members = list(range(head + 1, stop))
        for pos, k in enumerate(members):
            vis[k, head] = True
            if tail is not None:
                vis[k, tail] = True
            seen = members[: pos + 1] if causal_within_stage else members
            vis[k, seen] = True
    return vis


def interpolation(num_frames: int) -> torch.Tensor:
    """LongDWM interpolation: first and last frames are given, the rest are filled in.

    The two given frames (0 and F-1) see only each other (they are clean context and
    must not depend on noisy frames); every in-between frame sees all frames.
    ``num_frames`` must be >= 2.  Returns bool ``[F, F]``.
    """
    if num_frames < 2:
        raise ValueError(f"interpolation needs at least 2 frames, got {num_frames}")
    vis = torch.ones(num_frames, num_frames, dtype=torch.bool)
    anchors = torch.zeros(num_frames, dtype=torch.bool)
    anchors[0] = anchors[-1] = True
    vis[anchors] = anchors  # anchor rows: only anchor columns
    return vis


def frame_ids(tokens_per_frame: int, num_frames: int, first_frame: int = 0,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Frame index of each token for ``num_frames`` consecutive frames of
    ``tokens_per_frame`` tokens, counting from ``first_frame``.  Returns int32 ``[F*T]``."""
    _check_positive("tokens_per_frame", tokens_per_frame)
    _check_positive("num_frames", num_frames)
    ids = torch.arange(first_frame, first_frame + num_frames, dtype=torch.int32, device=device)
    return ids.repeat_interleave(tokens_per_frame)
