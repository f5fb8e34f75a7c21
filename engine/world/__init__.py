"""A deterministic procedural first-person driving world: unlimited training videos with
ground-truth camera poses (the conventions of :mod:`engine.control.trajectory`) and
attributes, and ground truth for drift benchmarks.

- :mod:`.scene`: the world of a seed (road, roadside objects, traffic; :func:`box`,
  :func:`marker` for extra objects).
- :mod:`.drive`: the ego drive of a seed: poses, attributes, ``warp_video`` ego points.
- :mod:`.render`: the renderer and weathers; :func:`render_clip` (one drive ->
  :class:`WorldClip`) and :func:`world_batch` (a training batch).

``python -m engine world --out clip.mp4 --seed 0 --frames 161 --weather day`` writes one.
"""

from .drive import FPS, Drive, ego_state, poses, to_world, trajectory_points
from .render import PROMPTS, WEATHERS, Weather, WorldClip, render_clip, render_view, weather_preset, world_batch
from .scene import CAMERA_HEIGHT, Objects, Road, World, box, marker

__all__ = ["CAMERA_HEIGHT", "Drive", "FPS", "Objects", "PROMPTS", "Road", "WEATHERS", "Weather", "World", "WorldClip",
           "box", "ego_state", "marker", "poses", "render_clip", "render_view", "to_world", "trajectory_points",
           "weather_preset", "world_batch"]
