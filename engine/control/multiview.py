"""MiLA multi-view generation: V camera views of the same scene in one forward pass.

Latents of a multi-view video are ``[B, V, C, F, h, w]``. Inside the engine the views are
packed side by side along the width (``[B, C, F, h, V*w]``: :func:`pack_views`), so plans,
noise (addressed by (seed, position)), the runtime and the decoder see ordinary frames;
decoded frames are a 1 x V grid (:func:`split_views` cuts it back into one video per view).

For the DiT the packed frames are unfolded into V*F "frames" in (frame, view) order --
frame id ``f*V + v`` (:func:`views_to_frames`) -- with RoPE time position p_f for every
view, and a visibility over (view, frame) pairs (:func:`multiview_visibility`): token
(f, v) sees (f', v') when the base pattern lets frame f see frame f' and either v == v'
(temporal attention within a view) or f == f' (spatial attention across all views of the
same frame; ``cross_view="all"`` lifts the second condition). It is an ordinary frame
pattern, so every attention backend (sdpa, flex, triton block-sparse) takes it without a
dense token mask being built by the caller.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.streaming import ChunkDecoder

from .validate import ControlError

CROSS_VIEW = ("same_frame", "all")


def multiview_visibility(vis: torch.Tensor, views: int, cross_view: str = "same_frame") -> torch.Tensor:
    """bool [F*V, F*V] over (frame, view) ids f*V + v from a frame pattern vis [F, F]."""
    if cross_view not in CROSS_VIEW:
        raise ControlError(f"cross_view must be one of {CROSS_VIEW}, got {cross_view!r}")
    vis = torch.as_tensor(vis, dtype=torch.bool)
    F = vis.shape[0]
    big = vis.repeat_interleave(views, 0).repeat_interleave(views, 1)
    if cross_view == "all":
        return big
    f = torch.arange(F * views, device=vis.device) // views
    v = torch.arange(F * views, device=vis.device) % views
    return big & ((v[:, None] == v[None, :]) | (f[:, None] == f[None, :]))


def pack_views(latents: torch.Tensor) -> torch.Tensor:
    """[B, V, C, F, h, w] -> [B, C, F, h, V*w] (views side by side)."""
    if latents.dim() != 6:
        raise ControlError(f"multi-view latents must be [B, V, C, F, h, w]; got {tuple(latents.shape)}")
    B, V, C, F, h, w = latents.shape
    return latents.permute(0, 2, 3, 4, 1, 5).reshape(B, C, F, h, V * w)


def unpack_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """[B, C, F, h, V*w] -> [B, V, C, F, h, w]."""
    B, C, F, h, W = x.shape
    if W % views:
        raise ControlError(f"packed width {W} is not a multiple of {views} views")
    return x.reshape(B, C, F, h, views, W // views).permute(0, 4, 1, 2, 3, 5)


def views_to_frames(x: torch.Tensor, views: int) -> torch.Tensor:
    """Packed [B, C, F, h, V*w] -> [B, C, F*V, h, w] in (frame, view) order."""
    B, C, F, h, W = x.shape
    return x.reshape(B, C, F, h, views, W // views).permute(0, 1, 2, 4, 3, 5).reshape(B, C, F * views, h, W // views)


def frames_to_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """Inverse of :func:`views_to_frames`: [B, C, F*V, h, w] -> [B, C, F, h, V*w]."""
    B, C, FV, h, w = x.shape
    return x.reshape(B, C, FV // views, views, h, w).permute(0, 1, 2, 4, 3, 5).reshape(B, C, FV // views, h, views * w)


def split_views(frames, views: int) -> list[np.ndarray]:
    """Grid frames uint8 [T, H, V*W, 3] (a :class:`engine.video.Video` too) -> V arrays
    [T, H, W, 3], one per view."""
    arr = getattr(frames, "frames", frames)
    arr = np.asarray(arr)
    if arr.ndim != 4 or arr.shape[2] % views:
        raise ControlError(f"grid frames must be [T, H, {views}*W, 3]; got {arr.shape}")
    w = arr.shape[2] // views
    return [np.ascontiguousarray(arr[:, :, v * w:(v + 1) * w]) for v in range(views)]


def save_views(video, views: int, pattern: str) -> list[str]:
    """Write one mp4 per view: ``pattern`` with ``{view}`` (e.g. ``"out_view{view}.mp4"``)."""
    from ..video import Video

    if "{view}" not in pattern:
        raise ControlError(f"the per-view output pattern must contain '{{view}}', got {pattern!r}")
    fps = getattr(video, "fps", 16.0)
    paths = []
    for v, fr in enumerate(split_views(video, views)):
        paths.append(Video(fr, fps).save(pattern.format(view=v)))
    return paths


class MultiViewDecoder(ChunkDecoder):
    """Decodes packed multi-view latents view by view (one streaming VAE decoder per view,
    so no view's pixels depend on another's) and returns the 1 x V grid (the
    :class:`~engine.models.streaming.ChunkDecoder` contract)."""

    def __init__(self, vae, views: int):
        from ..models.vae import StreamingDecoder

        self.views = views
        self.decoders = [StreamingDecoder(vae) for _ in range(views)]

    def reset(self) -> None:
        for d in self.decoders:
            d.reset()

    def decode_chunk(self, latents: torch.Tensor, normalized: bool = True) -> torch.Tensor:
        parts = latents.chunk(self.views, dim=-1)
        return torch.cat([d.decode_chunk(p, normalized=normalized) for d, p in zip(self.decoders, parts)], dim=-1)
