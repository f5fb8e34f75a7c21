"""LongVie 2 control inputs prepared as the release prepares them (Vchitect/LongVie).

- :func:`release_depth`: ``utils/depth_npy2mp4.py``: a raw depth video [T, H, W] (any
  positive unit) cut to ``1 + 80 k`` frames, ONE scale for the whole video -- the 5th and
  95th percentiles over all its pixels (numpy's linear interpolation), values clipped to
  that range and mapped as ``(p95 - d) / (p95 - p5)`` (near = bright), times 255 cut to
  uint8, repeated on 3 channels.
- :func:`release_chunks`: the same script's 81-frame chunks starting every 80 frames (one
  frame of overlap: the clip's first frame is the previous clip's last).
- :func:`resize_frames`: ``inference.py``'s ``Image.fromarray(frame).resize((640, 352))``.
- :func:`read_video` / :func:`load_cond_json`: a control mp4 (the release reads them with
  decord) and the release's ``cond.json`` ([{"text", "depth", "track"}, ...] per clip).

The release writes the depth chunks as H.264 mp4s (``quality=10``) and reads them back,
so its control frames carry the codec's loss; handing raw depth here skips that round trip
(pass the release's own depth mp4s to match it frame for frame).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .validate import ControlError

CHUNK = 80  # frames between clip starts
PERCENTILES = (5.0, 95.0)


def release_depth(depth) -> np.ndarray:
    """Raw depth [T, H, W] (T >= 81) -> uint8 [1 + 80 k, H, W, 3] normalised once over the
    whole video as the release (module docstring)."""
    d = np.asarray(depth)
    if not np.issubdtype(d.dtype, np.floating):
        d = d.astype(np.float64)
    if d.ndim != 3:
        raise ControlError(f"depth must be a video [T, H, W]; got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ControlError("depth holds NaN or inf values: fill invalid pixels (e.g. with the far plane) first")
    n = len(d)
    if n < CHUNK + 1:
        raise ControlError(f"depth has {n} frames; LongVie 2 clips take {CHUNK + 1} (at least one clip)")
    d = d[:1 + CHUNK * ((n - 1) // CHUNK)]
    p95, p5 = np.percentile(d, [PERCENTILES[1], PERCENTILES[0]])
    if p95 <= p5:
        raise ControlError(f"depth is constant between its 5th and 95th percentiles ({p5}): nothing to normalise")
    d = (p95 - np.clip(d, p5, p95)) / (p95 - p5)
    return np.repeat((d * 255).astype(np.uint8)[..., None], 3, axis=-1)


def release_chunks(frames: np.ndarray) -> list[np.ndarray]:
    """A control video [1 + 80 k, ...] -> its k clips of 81 frames (clip i = frames 80 i ..
    80 i + 80)."""
    n = len(frames)
    if n < CHUNK + 1 or (n - 1) % CHUNK:
        raise ControlError(f"a control video cut into LongVie clips needs 1 + 80 k frames (81, 161, ...); got {n}")
    return [frames[i * CHUNK:i * CHUNK + CHUNK + 1] for i in range((n - 1) // CHUNK)]


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 frames [T, h, w, 3] -> [T, height, width, 3] with PIL's default resize filter
    (what the release's ``Image.resize`` calls use)."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((width, height))) for f in frames])


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video file as uint8 [T, H, W, 3] (RGB)."""
    import imageio.v3 as iio

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"control video {str(p)!r} does not exist")
    frames = np.asarray(iio.imread(str(p), index=None))
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    return frames[..., :3].astype(np.uint8, copy=False)


def load_cond_json(path: str | Path) -> list[dict]:
    """The release's per-clip list ``[{"text": ..., "depth": mp4, "track": mp4}, ...]``; paths
    relative to the working directory (as the release opens them) or else to the file."""
    p = Path(path).expanduser()
    try:
        samples = json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"LongVie condition file {str(p)!r} does not exist") from None
    except ValueError as exc:
        raise ControlError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(samples, list) or not samples:
        raise ControlError(f"{p}: expected a non-empty list of clips [{{'text', 'depth', 'track'}}, ...]")
    out = []
    for i, s in enumerate(samples):
        missing = [k for k in ("text", "depth", "track") if not isinstance(s, dict) or k not in s]
        if missing:
            raise ControlError(f"{p}: clip {i} lacks {missing} (each clip needs 'text', 'depth' and 'track')")
        entry = dict(s)
        for k in ("depth", "track"):
            q = Path(s[k]).expanduser()
            entry[k] = str(q if q.exists() or q.is_absolute() else p.parent / q)
        out.append(entry)
    return out
