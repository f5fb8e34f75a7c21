"""Video output: float video tensors -> uint8 frames -> H.264 mp4 (PyAV, fallback imageio-ffmpeg).

Frame convention everywhere in this module: **numpy uint8, ``[T, H, W, 3]`` RGB**
(channels last, as encoders and players want them).
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Any

import numpy as np
import torch

__all__ = ["Video", "Mp4Writer", "to_uint8_frames", "read_video_frames", "available_backends"]


def available_backends() -> list[str]:
    """Usable mp4 writer backends, in preference order: ``"av"`` (PyAV) then ``"imageio"`` (imageio-ffmpeg)."""
    out = []
    try:
        import av  # noqa: F401

        out.append("av")
    except ImportError:
        pass
    try:
        import imageio_ffmpeg  # noqa: F401

        imageio_ffmpeg.get_ffmpeg_exe()
        out.append("imageio")
    except Exception:  # ImportError or no ffmpeg binary
        pass
    return out


def to_uint8_frames(video: torch.Tensor, truncate: bool = False) -> np.ndarray:
    """Float video ``[B, 3, T, H, W]`` in ``[-1, 1]`` -> uint8 frames ``[B, T, H, W, 3]``
    (so ``out[b]`` is ``[T, H, W, 3]``): clamp to [-1, 1], ``(x + 1) * 127.5``, round
    (``truncate=True``: cut the fraction, as DiffSynth-based releases such as LongVie do).
    """
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if hasattr(video, "shape") else type(video).__name__
        raise ValueError(f"video must be a float tensor [B, 3, T, H, W] in [-1, 1], got {shape}")
    x = video.detach().float().clamp(-1.0, 1.0).add(1.0).mul(127.5)
    x = x.trunc() if truncate else x.round()
    return x.to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous().cpu().numpy()


def _as_frames(frames: Any, width: int | None = None, height: int | None = None) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` (a single ``[H, W, 3]`` frame is promoted) as a C-contiguous numpy array."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3] (RGB, channels last), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got dtype {frames.dtype} (use to_uint8_frames)")
    if width is not None and (frames.shape[1], frames.shape[2]) != (height, width):
        raise ValueError(
            f"frame size {frames.shape[2]}x{frames.shape[1]} (WxH) does not match the writer's {width}x{height}"
        )
    return np.ascontiguousarray(frames)


# the muxer options of a file that stays playable when the process dies: an empty moov up
# front, one fragment per frame, each packet flushed to the file
FRAGMENTED = {"movflags": "frag_every_frame+empty_moov+default_base_moof", "flush_packets": "1"}


class Mp4Writer:
    """Streaming H.264 (yuv420p) mp4 writer.

    ``Mp4Writer(path, fps, width, height)``; ``write(frames uint8 [T, H, W, 3])`` any number of
    times; ``close()`` (idempotent) flushes the encoder and writes the mp4 index, so a writer
    closed in a ``finally`` (or used as a context manager) leaves a playable file holding
    every frame written so far, even if generation failed mid-way.

    The file is a *fragmented* mp4 (``empty_moov``, one fragment per frame, x264 with
    ``tune=zerolatency`` so no frame waits in the encoder, the I/O flushed per packet): a
    process killed without warning (SIGKILL, the OOM killer) or a full disk leaves a file
    that plays every frame but the last one handed to :meth:`write`. A write that fails
    raises :class:`OSError` naming the path and the frames written.

    ``width`` and ``height`` must be even (yuv420p chroma subsampling); odd sizes raise
    ``ValueError``. ``backend``: ``"av"`` (PyAV, default when importable), ``"imageio"``
    (imageio-ffmpeg subprocess) or ``None`` = first available. ``crf``: x264 quality
    (0 lossless .. 51; 18 visually near-lossless).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        width: int,
        height: int,
        *,
        crf: int = 18,
        preset: str = "medium",
        backend: str | None = None,
    ):
        width, height = int(width), int(height)
        if width <= 0 or height <= 0:
            raise ValueError(f"width and height must be positive, got {width}x{height}")
        if width % 2 or height % 2:
            raise ValueError(
                f"H.264 yuv420p needs even width and height, got {width}x{height}; "
                "crop or pad the frames to even dimensions"
            )
        if not fps or fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        backends = available_backends()
        if backend is None:
            if not backends:
                raise RuntimeError(
                    "Cannot write mp4: neither PyAV (`pip install av`) nor imageio-ffmpeg "
                    "(`pip install imageio-ffmpeg`) is available"
                )
            backend = backends[0]
        elif backend not in ("av", "imageio"):
            raise ValueError(f"backend must be 'av', 'imageio' or None, got {backend!r}")
        elif backend not in backends:
            raise RuntimeError(f"mp4 backend {backend!r} is not available (available: {backends or 'none'})")
        self.path = os.fspath(path)
        self.fps, self.width, self.height, self.backend = fps, width, height, backend
        self.frames_written = 0
        self._closed = False
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        if backend == "av":
            import av

            try:
                self._container = av.open(self.path, mode="w", options=dict(FRAGMENTED))
            except OSError as exc:
                raise self._failed("opening", exc) from exc
            rate = Fraction(fps).limit_denominator(1001)
            self._stream = self._container.add_stream("libx264", rate=rate)
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(crf), "preset": preset, "tune": "zerolatency"}
        else:
            import imageio_ffmpeg

            self._gen = imageio_ffmpeg.write_frames(
                self.path,
                (width, height),
                fps=fps,
                codec="libx264",
                pix_fmt_in="rgb24",
                pix_fmt_out="yuv420p",
                quality=None,
                output_params=["-crf", str(crf), "-preset", preset, "-tune", "zerolatency",
                               *[a for k, v in FRAGMENTED.items() for a in (f"-{k}", v)]],
                macro_block_size=1,
            )
            self._gen.send(None)

    def write(self, frames: np.ndarray | torch.Tensor) -> None:
        """Append uint8 RGB frames ``[T, H, W, 3]`` (or one ``[H, W, 3]``) of the writer's size."""
        if self._closed:
            raise RuntimeError(f"Mp4Writer for {self.path!r} is closed")
        frames = _as_frames(frames, self.width, self.height)
        try:
            if self.backend == "av":
                import av

                for f in frames:
                    vf = av.VideoFrame.from_ndarray(f, format="rgb24")
                    for packet in self._stream.encode(vf):
                        self._container.mux(packet)
                    self.frames_written += 1
            else:
                for f in frames:
                    self._gen.send(f)
                    self.frames_written += 1
        except (OSError, RuntimeError, BrokenPipeError) as exc:
            raise self._failed("writing", exc) from exc

    def _failed(self, what: str, exc: BaseException) -> OSError:
        """An OSError naming the file, the frames handed over and the cause (a full disk, a
        removed folder, a pipe that closed)."""
        return OSError(f"{what} {self.path!r} failed after {self.frames_written} frames: {type(exc).__name__}: {exc} "
                       f"(a full disk or a path that cannot be written?); the frames before the failure stay playable")

    def close(self) -> None:
        """Flush and finalise the file (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.backend == "av":
                try:
                    for packet in self._stream.encode(None):
                        self._container.mux(packet)
                finally:
                    self._container.close()
            else:
                self._gen.close()
        except (OSError, RuntimeError, BrokenPipeError) as exc:
            raise self._failed("finishing", exc) from exc

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort; callers should close explicitly
        try:
            self.close()
        except Exception:
            pass


class Video:
    """A generated video: ``frames`` numpy uint8 ``[T, H, W, 3]`` RGB and ``fps``."""

    def __init__(self, frames: np.ndarray | torch.Tensor, fps: float = 16.0):
        self.frames = _as_frames(frames)
        self.fps = float(fps)

    @classmethod
    def from_tensor(cls, video: torch.Tensor, fps: float = 16.0) -> "Video":
        """From a float video ``[3, T, H, W]`` or ``[1, 3, T, H, W]`` in ``[-1, 1]``."""
        if isinstance(video, torch.Tensor) and video.ndim == 4:
            video = video.unsqueeze(0)
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[0] != 1:
            shape = tuple(video.shape) if hasattr(video, "shape") else type(video).__name__
            raise ValueError(f"expected one video [3, T, H, W] or [1, 3, T, H, W], got {shape}")
        return cls(to_uint8_frames(video)[0], fps)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def save(self, path: str | os.PathLike, **writer_kwargs) -> str:
        """Write an H.264 mp4 (see :class:`Mp4Writer` for options); returns the path."""
        with Mp4Writer(path, self.fps, self.width, self.height, **writer_kwargs) as w:
            w.write(self.frames)
        return os.fspath(path)

    def __repr__(self) -> str:
        return f"Video(frames={len(self)}, size={self.width}x{self.height}, fps={self.fps:g})"


def read_video_frames(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of a video file with PyAV -> uint8 ``[T, H, W, 3]`` RGB."""
    import av

    with av.open(os.fspath(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: no video frames decoded")
    return np.stack(frames)
