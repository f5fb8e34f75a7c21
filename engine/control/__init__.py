"""Conditioning and control (issue 7): every control covers the whole video timeline and
each job takes its slice by position.

- LongDWM trajectory control (:mod:`.trajectory`): ego points -> B-spline -> camera poses
  -> depth-free warp of the first frame -> Navier-Stokes inpainting -> VAE latents,
  injected into every DiT block through a zero-initialised patch embedding.
- MiLA (:mod:`.multiview`, :class:`~engine.models.wan_control.VectorEmbedding`): Fourier-feature + MLP
  embeddings of waypoints and cameras added to the frame embeddings; V-view generation
  with attention over (view, frame) pairs.
- LongVie 2 (:mod:`.longvie`): its control videos prepared as the release prepares them
  (depth normalised once over the whole video, 81-frame chunks, cond.json); the model is
  :mod:`engine.models.longvie` and the clip chain :mod:`engine.longvie` (recipe
  ``longvie2``).

``engine.generate(model, ..., trajectory=..., intrinsics=..., waypoints=..., cameras=...,
views=...)`` takes them
(:data:`CONTROL_OPTIONS`). The model side -- the control layers and
:class:`~engine.models.wan_control.ControlledWanDiT`, which takes per-pass tensors as
``control=ControlPass(...)`` -- lives in :mod:`engine.models.wan_control`.
"""

from .longvie import load_cond_json, read_video, release_chunks, release_depth, resize_frames
from .multiview import (MultiViewDecoder, multiview_visibility, pack_views, save_views, split_views, unpack_views)
from .setup import CONTROL_OPTIONS, ControlSetup, TimelineControlledDiT
from .trajectory import (bspline_curve, camera_poses, forward_warp, inpaint, project, relative_poses, warp_video)
from .validate import ControlError

__all__ = [
    "CONTROL_OPTIONS", "ControlError", "ControlSetup", "MultiViewDecoder", "TimelineControlledDiT",
    "bspline_curve", "camera_poses", "forward_warp", "inpaint", "load_cond_json", "multiview_visibility",
    "pack_views", "project", "read_video", "relative_poses", "release_chunks", "release_depth", "resize_frames",
    "save_views", "split_views", "unpack_views", "warp_video",
]
