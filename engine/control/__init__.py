"""Conditioning and control (issue 7): every control covers the whole video timeline and
each job takes its slice by position.

- LongDWM trajectory control (:mod:`.trajectory`): ego points -> B-spline -> camera poses
  -> depth-free warp of the first frame -> Navier-Stokes inpainting -> VAE latents,
  injected into every DiT block through a zero-initialised patch embedding.
- MiLA (:mod:`.multiview`, :class:`~engine.models.wan_control.VectorEmbedding`): Fourier-feature + MLP
  embeddings of waypoints and cameras added to the frame embeddings; V-view generation
  with attention over (view, frame) pairs.
- LongVie 2 (:mod:`.longvie`, :class:`~engine.models.wan_control.ControlBranch`): dense (depth) and sparse
  (point-map) half-width branch copies of the first blocks with zero-initialised
  injections; depth normalised once over the whole video; history context; own weights file.

``engine.generate(model, ..., trajectory=..., intrinsics=..., waypoints=..., cameras=...,
views=..., depth=..., point_map=..., control_branches=...)`` takes them
(:data:`CONTROL_OPTIONS`). The model side -- the control layers and
:class:`~engine.models.wan_control.ControlledWanDiT`, which takes per-pass tensors as
``control=ControlPass(...)`` -- lives in :mod:`engine.models.wan_control`.
"""

from .longvie import (BRANCH_KEY_MAP, branch_state_dict, clip_ranges, cut_clips, load_control_branches,
                      normalize_depth, percentile)
from .multiview import (MultiViewDecoder, multiview_visibility, pack_views, save_views, split_views, unpack_views)
from .setup import CONTROL_OPTIONS, ControlSetup, TimelineControlledDiT
from .trajectory import (bspline_curve, camera_poses, forward_warp, inpaint, project, relative_poses, warp_video)
from .validate import ControlError

__all__ = [
    "BRANCH_KEY_MAP", "CONTROL_OPTIONS", "ControlError", "ControlSetup", "MultiViewDecoder", "TimelineControlledDiT",
    "branch_state_dict", "bspline_curve", "camera_poses", "clip_ranges", "cut_clips", "forward_warp", "inpaint",
    "load_control_branches", "multiview_visibility", "normalize_depth", "pack_views", "percentile", "project",
    "relative_poses", "save_views", "split_views", "unpack_views", "warp_video",
]
