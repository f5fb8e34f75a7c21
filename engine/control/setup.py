"""Controls through ``engine.generate``: validated once, held for the whole timeline, sliced
per job by position.

:class:`ControlSetup` checks every control option of a run, builds the whole-video
control tensors (warped-frame latents, waypoint and camera vectors) and wraps each DiT in a :class:`TimelineControlledDiT` around a
:class:`~engine.models.wan_control.ControlledWanDiT`.

How a job finds its slice: a model that declares ``takes_timeline_positions = True`` is
called by the runtime and the KV-cache rollout with ``timeline_positions=`` (the pass's
absolute latent positions on the video timeline, which may differ from its RoPE
``frame_positions``, e.g. longdwm's coarse pass). :class:`TimelineControlledDiT` declares it,
takes the controls at those positions (kept in float32 beside the model) and calls the DiT
with ``control=ControlPass(...)``. So every strategy (ar with or without KV cache, mmpl,
longdwm, mila) and any worker count get the same control for the same frame, and the
runtime knows nothing of controls.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..models.wan import WanDiT
from ..models.wan_control import CAMERA_FEATURES, ControlledWanDiT, ControlPass
from .multiview import CROSS_VIEW, MultiViewDecoder, frames_to_views, multiview_visibility, views_to_frames
from .trajectory import DEFAULT_DEPTH, check_intrinsics, check_trajectory, warp_video
from .validate import ControlError, as_float_tensor, check_frames, check_range

CONTROL_OPTIONS = ("trajectory", "intrinsics", "warp_depth", "save_warped", "waypoints", "cameras", "views",
                   "cross_view")
CFG_DROPPABLE = ("text", "waypoints", "camera")
#: LongVie 2's options, which belong to its release recipe (engine.longvie), not to a strategy
LONGVIE_OPTIONS = ("depth", "point_map", "control_branches", "control_blocks")


def latent_frame_index(num_video_frames: int) -> list[int]:
    """The video frame that represents latent frame p (0 for p = 0, else 4p: the last of
    its 4 frames)."""
    return [0] + [4 * p for p in range(1, (num_video_frames - 1) // 4 + 1)]


def check_cfg_drop(cfg_drop) -> tuple[str, ...]:
    """``cfg_drop``: what the classifier-free guidance's unconditional row goes without, a
    subset of ("text", "waypoints", "camera"); None gives the default ("text",): the
    negative prompt replaces the text and both rows get the same controls. MiLA (its paper
    drops text and waypoints independently in training, for guidance) drops all three;
    leaving "text" out keeps the prompt in the unconditional row, so the guidance acts on
    the controls alone. Returns it as a tuple, or raises ControlError naming what is wrong."""
    drop = ("text",) if cfg_drop is None else (cfg_drop,) if isinstance(cfg_drop, str) else tuple(cfg_drop)
    bad = sorted(set(drop) - set(CFG_DROPPABLE))
    if bad:
        raise ControlError(f"cfg_drop takes a subset of {CFG_DROPPABLE}; got {bad}")
    return drop


class ControlSetup:
    """Validated control options of one run (see :data:`CONTROL_OPTIONS`).

    trajectory [N, 2] (x, z) ego points + intrinsics (3x3 K or fx, fy, cx, cy; default:
    focal = width, centred) + warp_depth (constant depth d, default 10) + save_warped (an
    mp4 path for the warped, inpainted frames): LongDWM warp control, needs first_frame.
    waypoints [T, N_w, 2] (or [T, 2 N_w]) per video frame; cameras [16], [V, 16] or
    [T, V, 16] (fx/W, fy/H, cx/W, cy/H, R row-major, t); views V (multi-view, latents packed
    side by side; output a 1 x V grid); cross_view ("same_frame" | "all"): MiLA.
    cfg_drop (:func:`check_cfg_drop`): the vector controls the classifier-free guidance's
    unconditional row goes without.
    LongVie 2's dense / sparse controls are not options of a strategy: they run as the
    release does, through ``recipe="longvie2"`` (:mod:`engine.longvie`).
    """

    def __init__(self, options: dict, *, model, num_frames: int, height: int, width: int, latent_frames: int,
                 first_frame_given: bool, cfg_drop=None, prior_frames: int = 0):
        old = sorted(set(options) & set(LONGVIE_OPTIONS))
        if old:
            raise ControlError(f"{old}: LongVie 2's dense / sparse controls run as the release does, with "
                               f"recipe='longvie2' (engine.longvie: per-clip depth and track videos, the release's "
                               f"control.safetensors); they are not options of the {list(CONTROL_OPTIONS)} kind")
        unknown = sorted(set(options) - set(CONTROL_OPTIONS))
        if unknown:
            raise ControlError(f"unknown control option(s) {unknown}; known: {list(CONTROL_OPTIONS)}")
        o = {k: v for k, v in options.items() if v is not None}
        self.num_frames, self.height, self.width, self.latent_frames = num_frames, height, width, latent_frames
        self.prior_frames = int(prior_frames)  # MiLA's condition frames: timeline positions before the video
        cfg = model.config
        from ..models.cogvideox import CogVideoXConfig

        if not isinstance(model, WanDiT) and not isinstance(cfg, CogVideoXConfig):
            raise ControlError(f"model {type(model).__name__} ({cfg.name}) takes no control inputs; controls need a Wan "
                               f"or (trajectory only) a CogVideoX DiT")
        # -- multi-view
        views = o.get("views", 1)
        if not isinstance(views, (int, np.integer)) or isinstance(views, bool) or views < 1:
            raise ControlError(f"views must be an int >= 1, got {views!r}")
        self.views = int(views)
        self.cross_view = o.get("cross_view", "same_frame")
        if self.cross_view not in CROSS_VIEW:
            raise ControlError(f"cross_view must be one of {CROSS_VIEW}, got {self.cross_view!r}")
        # -- LongDWM trajectory
        self.trajectory = self.intrinsics = None
        self.warp_depth = float(o.get("warp_depth", DEFAULT_DEPTH))
        self.save_warped = o.get("save_warped")
        if "trajectory" in o:
            self.trajectory = check_trajectory(o["trajectory"])
            self.intrinsics = check_intrinsics(o.get("intrinsics"), height, width)
            if not math.isfinite(self.warp_depth) or self.warp_depth <= 0:
                raise ControlError(f"warp_depth must be a positive finite number, got {o.get('warp_depth')!r}")
            if not first_frame_given:
                raise ControlError("trajectory control warps the first frame: pass first_frame (an image)")
            if self.prior_frames:
                raise ControlError("trajectory control warps one first frame: pass first_frame, not first_frames")
        else:
            for k in ("intrinsics", "warp_depth", "save_warped"):
                if k in o:
                    raise ControlError(f"{k} belongs to trajectory control: pass trajectory= as well")
        # -- MiLA vectors
        idx = latent_frame_index(num_frames)
        self.waypoints = self.cameras = None
        if "waypoints" in o:
            wp = as_float_tensor("waypoints", o["waypoints"], ndim=(2, 3))
            if wp.dim() == 3:
                if wp.shape[2] != 2:
                    raise ControlError(f"waypoints must be [T, N_w, 2] (x, z per waypoint); got {tuple(wp.shape)}")
                wp = wp.flatten(1)
            elif wp.shape[1] % 2:
                raise ControlError(f"waypoints [T, 2*N_w] need an even feature count; got {tuple(wp.shape)}")
            check_frames("waypoints", wp.shape[0], num_frames)
            self.waypoints = wp[idx].float()  # [F, 2 N_w]
        if "cameras" in o:
            cam = as_float_tensor("cameras", o["cameras"], ndim=(1, 2, 3))
            if cam.shape[-1] != CAMERA_FEATURES:
                raise ControlError(f"cameras need {CAMERA_FEATURES} numbers per view (fx/W, fy/H, cx/W, cy/H, R 3x3, t 3); "
                                   f"got shape {tuple(cam.shape)}")
            if cam.dim() == 1:
                cam = cam[None]
            if cam.dim() == 2:  # [V, 16]: a fixed rig
                cam = cam[None].expand(num_frames, -1, -1)
            check_frames("cameras", cam.shape[0], num_frames)
            if cam.shape[1] != self.views:
                raise ControlError(f"cameras describe {cam.shape[1]} view(s) but views={self.views}")
            check_range("cameras' focal lengths (fx/W, fy/H)", cam[..., :2], 1e-6, None)
            self.cameras = cam[idx].float()  # [F, V, 16]
        if self.views > 1 and self.trajectory is not None:
            raise ControlError("multi-view generation takes waypoints and cameras only (no trajectory control per "
                               "view yet)")
        if self.views > 1 and first_frame_given:
            raise ControlError("multi-view generation starts from noise or from prior frames of every view: pass "
                               "first_frames=[V, P, H, W, 3] (MiLA), not first_frame, with views > 1")
        if not self.kinds():
            raise ControlError("no control given: pass trajectory, waypoints or cameras")
        self.cfg_drop = check_cfg_drop(cfg_drop)
        self.warped: torch.Tensor | None = None
        self._wrapped: dict[int, TimelineControlledDiT] = {}
        self._built: dict | None = None

    # -- queries -----------------------------------------------------------------------
    def kinds(self) -> tuple[str, ...]:
        k = []
        if self.trajectory is not None:
            k.append("warp")
        if self.waypoints is not None:
            k.append("waypoints")
        if self.cameras is not None:
            k.append("camera")
        if self.views > 1 and "camera" not in k:
            k.append("multiview")
        return tuple(k)

    @property
    def supports_kv_cache(self) -> bool:
        """Warp and waypoint/camera controls run on the KV-cache rollout; multi-view (V
        frames per position) runs through the runtime with history frames in the sequence."""
        return self.views == 1

    def route(self, strategy: str, ar_cache: bool, strategy_options: dict) -> tuple[bool, dict]:
        """(ar_cache, strategy_options) after routing: ar with views > 1 runs as
        ``context="history"``."""
        opts = dict(strategy_options)
        if strategy == "ar" and ar_cache and not self.supports_kv_cache:
            ar_cache = False
            opts["context"] = "history"
        return ar_cache, opts

    def latent_width(self, w: int) -> int:
        return w * self.views

    # -- building ------------------------------------------------------------------------
    def build(self, vae, first_frame: torch.Tensor | None, condition: torch.Tensor | None, latent_hw: tuple[int, int]
              ) -> torch.Tensor:
        """Encode the control videos and keep the timeline controls; returns the run's
        condition tensor (the I2V condition, or None) unchanged."""
        from ..models.codecs import codec_for

        built: dict = {}
        if self.trajectory is not None:
            video, _ = warp_video(first_frame[0].cpu(), self.trajectory, self.num_frames, self.intrinsics, self.warp_depth)
            self.warped = video
            if self.save_warped:
                from ..video import Video

                Video.from_tensor(video).save(str(Path(self.save_warped)))
            built["warp"] = codec_for(vae).encode(vae, video.to(_vae_device(vae)))
        for k, z in built.items():
            if z.shape[2] != self.latent_frames:
                raise ControlError(f"the {k} control encodes to {z.shape[2]} latent frames, the video has {self.latent_frames}")
        if self.waypoints is not None:
            built["waypoints"] = self.waypoints
        if self.cameras is not None:
            built["camera"] = self.cameras
        if self.prior_frames:  # prior positions lead the timeline: no control there (mask 0)
            P = self.prior_frames
            built = {k: torch.cat([v.new_zeros((P, *v.shape[1:])), v]) for k, v in built.items()}
            built["mask"] = torch.cat([torch.zeros(P), torch.ones(self.latent_frames)])
        self._built = built
        return condition

    def wrap(self, model) -> "TimelineControlledDiT":
        """The model as a :class:`ControlledWanDiT` or (LongDWM's warp on CogVideoX, inside
        its VPredictionAdapter) a
        :class:`~engine.models.cogvideox_control.ControlledCogVideoXDiT` (sharing its weights) with its control
        layers enabled (zero-initialised where absent: a warning names them when the model
        came from a checkpoint, whose video then ignores those controls) and the timeline
        controls attached."""
        if self._built is None:
            raise RuntimeError("ControlSetup.build() must run before wrap()")
        key = id(model)
        if key not in self._wrapped:
            from ..models.adapters import VPredictionAdapter
            from ..models.cogvideox import CogVideoXDiT
            from ..models.cogvideox_control import ControlledCogVideoXDiT

            adapter = model if isinstance(model, VPredictionAdapter) else None
            inner = adapter.model if adapter is not None else model
            if isinstance(inner, CogVideoXDiT):  # LongDWM's warp on a CogVideoX DiT (its only control)
                other = [k for k in self._built if k not in ("mask", "warp")]
                if other or self.views > 1:
                    raise ControlError(f"CogVideoX model {inner.config.name!r} takes only the trajectory (warp) "
                                       f"control; {other or ['multi-view']} need a Wan DiT")
                model = ControlledCogVideoXDiT.from_base(inner)
            elif isinstance(model, WanDiT):
                model = ControlledWanDiT.from_base(model)
            else:
                raise ControlError(f"model {type(model).__name__} ({model.config.name}) takes no control inputs; "
                                   f"controls need a Wan or CogVideoX DiT")
            missing = [k for k in self._built if k != "mask" and k not in model.control_layers]
            if missing and getattr(model, "source", None) is not None:  # trained weights without these layers
                import warnings

                warnings.warn(f"the checkpoint {model.source} has no {missing} control layer(s) "
                              f"(control_layers.<kind>.* keys): they start at zero, so the video ignores those "
                              f"controls; load a checkpoint trained with them", stacklevel=4)
            for kind, z in self._built.items():
                if kind == "mask":
                    continue
                kw = {}
                if kind == "waypoints":
                    kw["in_features"] = z.shape[-1]
                layer = model.enable_control(kind, **kw)
                if kind == "waypoints" and layer.in_features != z.shape[-1]:
                    raise ControlError(f"the model's waypoint embedding takes {layer.in_features // 2} waypoints per "
                                       f"frame, the control has {z.shape[-1] // 2}")
            unguided = tuple(k for k in ("waypoints", "camera") if k in self.cfg_drop)
            timeline = TimelineControlledDiT(model, self._built, views=self.views, cross_view=self.cross_view,
                                             unguided=unguided)
            self._wrapped[key] = (VPredictionAdapter(timeline, adapter.alphas_cumprod) if adapter is not None
                                  else timeline)
        return self._wrapped[key]

    def decoder(self, vae):
        from ..models.vae import StreamingDecoder

        return MultiViewDecoder(vae, self.views) if self.views > 1 else StreamingDecoder(vae)


def _vae_device(vae) -> torch.device:
    return next(vae.parameters()).device


class TimelineControlledDiT(nn.Module):
    """A :class:`ControlledWanDiT` plus the whole-timeline controls of a run: the DiT's call
    convention plus ``timeline_positions=`` (see the module docstring)."""

    takes_timeline_positions = True

    def __init__(self, base: ControlledWanDiT, controls: dict[str, torch.Tensor], *, views: int = 1,
                 cross_view: str = "same_frame", unguided: tuple[str, ...] = ()):
        super().__init__()
        self.unguided = tuple(unguided)
        self.base = base
        self.views = views
        self.cross_view = cross_view
        self.kinds = tuple(k for k in controls if k != "mask")
        for k, v in controls.items():
            self.register_buffer(f"timeline_{k}", v.float().to(base.device), persistent=False)

    # delegation -------------------------------------------------------------------------
    @property
    def config(self):
        return self.base.config

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def source(self):
        return getattr(self.base, "source", None)

    def tokens_per_frame(self, height: int, width: int) -> int:
        return self.base.tokens_per_frame(height, width)

    def prepare_context(self, *a, **kw):
        return self.base.prepare_context(*a, **kw)

    def control_pass(self, positions: list[int], batch: int) -> ControlPass:
        """The controls of timeline ``positions`` (views unfolded to (frame, view) order)."""
        idx = torch.as_tensor(positions, device=self.device)
        kw = {}
        if hasattr(self, "timeline_mask"):  # positions without control (prior frames)
            kw["mask"] = self.timeline_mask.index_select(0, idx).repeat_interleave(self.views)[None].expand(batch, -1)
        for k in self.kinds:
            full = getattr(self, f"timeline_{k}")
            if k == "warp":
                kw[k] = full.index_select(2, idx).expand(batch, -1, -1, -1, -1)
            elif k == "waypoints":
                v = full.index_select(0, idx).repeat_interleave(self.views, 0)
                kw[k] = v[None].expand(batch, -1, -1)
            else:  # camera [F, V, 16] -> (frame, view) rows
                kw[k] = full.index_select(0, idx).reshape(-1, full.shape[-1])[None].expand(batch, -1, -1)
        return ControlPass(**kw, unguided=self.unguided)

    def forward(self, latents, timesteps, text_embeds, *, timeline_positions=None, condition=None,
                frame_positions=None, visibility=None, kv_cache=None, cache_slots=None, image_embeds=None):
        """As the DiT's forward; ``timeline_positions`` (list of ints, one per latent frame of
        the pass) says which frames of the video's controls apply."""
        if timeline_positions is None:
            raise ControlError("a controlled model needs timeline_positions= (the pass's latent positions on the "
                               "video timeline); engine.generate and the runtime pass them")
        positions = [int(p) for p in timeline_positions]
        cond = condition
        B, n = latents.shape[0], latents.shape[2]
        if len(positions) != n:
            raise ControlError(f"timeline_positions covers {len(positions)} frames, latents {n}")
        V = self.views
        ctl = self.control_pass(positions, B)
        if V == 1:
            return self.base(latents, timesteps, text_embeds, image_embeds=image_embeds, condition=cond,
                             frame_positions=frame_positions, visibility=visibility, kv_cache=kv_cache,
                             cache_slots=cache_slots, control=ctl)
        if kv_cache is not None:
            raise ControlError("multi-view generation runs through the runtime (ar with context='history'), "
                               "not over a KV cache")
        x = views_to_frames(latents, V)
        if cond is not None:
            cond = views_to_frames(cond, V)
        t = torch.as_tensor(timesteps, device=self.device)
        if t.dim() == 0:
            t = t.expand(B)
        if t.dim() == 1:
            t = t[:, None].expand(B, n)
        t = t.repeat_interleave(V, 1)
        fp = torch.as_tensor(frame_positions if frame_positions is not None else list(range(n)), device=self.device)
        fp = fp.repeat_interleave(V)
        vis = torch.ones(n, n, dtype=torch.bool) if visibility is None else torch.as_tensor(visibility)
        vis = multiview_visibility(vis.cpu(), V, self.cross_view).to(self.device)
        out = self.base(x, t, text_embeds, image_embeds=image_embeds, condition=cond, frame_positions=fp,
                        visibility=vis, control=ctl)
        return frames_to_views(out, V)
