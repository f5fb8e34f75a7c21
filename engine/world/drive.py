"""The ego drive of a seed: a smooth trajectory that follows the road, and per frame its
ground truth (camera poses in the conventions of :mod:`engine.control.trajectory`, lane
offset, heading, curvature, road width, speed) and the ego points for ``warp_video``.

The ego moves along the road's arc length s at a speed that eases (smootherstep) between
random knots every SPEED_KNOT s (8..14 m/s); its lateral offset is its lane centre
(+-width/4; now and then a smooth LANE_CHANGE s change to the left lane and back) plus a
slow drift of a few tens of cm. Its position is P = C(z) + d n(z) (C the centreline point,
n the road's right normal), its velocity (Frenet) v (1 - kappa d) T + d' n, and the camera
looks along that velocity: yaw psi = road yaw + atan2(d', v (1 - kappa d)). All of it is a
closed form in absolute time t (s), so any window of a drive matches any other.
"""

from __future__ import annotations

import math

import numpy as np

from .scene import Road, stream_rng

FPS = 16.0
SPEED_RANGE = (8.0, 14.0)  # m/s
SPEED_KNOT = 5.0  # s between speed knots
LANE_SEGMENT = 10.0  # s per lane choice
LANE_CHANGE = 5.0  # s a lane change takes (the last seconds of a lane segment)
LEFT_LANE_SHARE = 0.2  # share of lane segments (after the first) spent in the left lane
_SPEED, _LANE, _DRIFT = 11, 12, 13
_BLOCK = 256  # knots per generator block


def _smooth(x):
    """Smootherstep 6x^5 - 15x^4 + 10x^3 of x clipped to [0, 1] (C2: no jumps in
    acceleration), and its derivative."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (x * (6 * x - 15) + 10), 30 * x * x * (x - 1) ** 2


class Drive:
    """The ego drive of a seed, as closed forms of absolute time t (s, arrays):
    :meth:`speed` / :meth:`progress` along the road, :meth:`lane` and :meth:`offset` across
    it (with :meth:`offset_rate`). ``road`` supplies the width."""

    def __init__(self, seed: int, road: Road):
        self.seed, self.road = int(seed), road
        rng = stream_rng(seed, _DRIFT)
        self.drift_amp = rng.uniform(0.3, 1.0, 3) * np.array([0.16, 0.10, 0.06])
        self.drift_w = 2 * np.pi / rng.uniform([18.0, 9.0, 5.0], [30.0, 16.0, 8.0])
        self.drift_phase = rng.uniform(0, 2 * np.pi, 3)
        self._blocks: dict[tuple[int, int], np.ndarray] = {}
        self._cum: np.ndarray = np.zeros(1)  # progress at speed knots 0, 1, ...

    def _knots(self, stream: int, k: np.ndarray) -> np.ndarray:
        """Random knot values (uniform in [0, 1)) of one stream at knot indices k >= 0."""
        k = np.asarray(k, np.int64)
        out = np.empty(k.shape)
        for b in np.unique(k // _BLOCK):
            if (stream, b) not in self._blocks:
                self._blocks[(stream, b)] = stream_rng(self.seed, stream, int(b)).uniform(size=_BLOCK)
            sel = k // _BLOCK == b
            out[sel] = self._blocks[(stream, b)][k[sel] % _BLOCK]
        return out

    def _speed_knots(self, k: np.ndarray) -> np.ndarray:
        lo, hi = SPEED_RANGE
        return lo + (hi - lo) * self._knots(_SPEED, np.maximum(k, 0))

    def speed(self, t) -> np.ndarray:
        """Speed along the centreline (m/s) at times t: smootherstep between the knots; constant
        (the first knot's) before t = 0."""
        t = np.asarray(t, np.float64)
        k = np.floor(np.maximum(t, 0) / SPEED_KNOT).astype(np.int64)
        x = np.maximum(t, 0) / SPEED_KNOT - k
        v0, v1 = self._speed_knots(k), self._speed_knots(k + 1)
        return v0 + (v1 - v0) * _smooth(x)[0]

    def progress(self, t) -> np.ndarray:
        """Arc length s (m) of the ego's centreline foot point at times t; s(0) = 0."""
        t = np.asarray(t, np.float64)
        kmax = int(math.floor(max(float(np.max(t, initial=0.0)), 0.0) / SPEED_KNOT)) + 1
        if len(self._cum) <= kmax:  # progress at each knot: trapezoid (exact for the symmetric easing)
            n = max(kmax + 1, 2 * len(self._cum))
            v = self._speed_knots(np.arange(n))
            self._cum = np.concatenate([[0.0], np.cumsum(SPEED_KNOT * (v[:-1] + v[1:]) / 2)])
        tp = np.maximum(t, 0)
        k = np.floor(tp / SPEED_KNOT).astype(np.int64)
        x = tp / SPEED_KNOT - k
        v0, v1 = self._speed_knots(k), self._speed_knots(k + 1)
        inside = SPEED_KNOT * (v0 * x + (v1 - v0) * (x ** 6 - 3 * x ** 5 + 2.5 * x ** 4))  # integral of _smooth
        return np.where(t < 0, self._speed_knots(np.zeros_like(k)) * t, self._cum[k] + inside)

    def _lane_knots(self, k: np.ndarray) -> np.ndarray:
        left = self._knots(_LANE, np.maximum(k, 0)) < LEFT_LANE_SHARE
        return np.where((k <= 0) | ~left, 1.0, -1.0)

    def lane(self, t) -> tuple[np.ndarray, np.ndarray]:
        """Lane position at times t: +1 = right lane centre, -1 = left, smooth in between, and
        its rate (1/s)."""
        t = np.asarray(t, np.float64)
        k = np.floor(t / LANE_SEGMENT).astype(np.int64)
        a, b = self._lane_knots(k), self._lane_knots(k + 1)
        x = (t - k * LANE_SEGMENT - (LANE_SEGMENT - LANE_CHANGE)) / LANE_CHANGE
        s, ds = _smooth(x)
        return a + (b - a) * s, (b - a) * ds / LANE_CHANGE

    def drift(self, t) -> tuple[np.ndarray, np.ndarray]:
        """Slow lateral drift (m) at times t and its rate (m/s)."""
        arg = np.asarray(t, np.float64)[..., None] * self.drift_w + self.drift_phase
        return (np.sum(self.drift_amp * np.sin(arg), -1),
                np.sum(self.drift_amp * self.drift_w * np.cos(arg), -1))

    def offset(self, t) -> np.ndarray:
        """Signed lateral offset d (m, + = right of the centreline) of the ego at times t."""
        t = np.asarray(t, np.float64)
        z = self.road.z_at(self.progress(t))
        return self.lane(t)[0] * self.road.width(z) / 4 + self.drift(t)[0]


def ego_state(drive: Drive, t) -> dict[str, np.ndarray]:
    """The ego at times t [T] (s): world position ``x``, ``z`` (m), camera ``yaw`` (rad, 0 =
    +z, + = right), ``lane_offset`` (m, + = right), ``heading`` (rad, ego yaw minus road yaw),
    ``curvature`` (1/m of the road at the ego, + = bending right), ``road_width`` (m),
    ``speed`` (m/s, the ego's own), ``road_yaw`` (rad), all [T] float64."""
    road = drive.road
    t = np.asarray(t, np.float64)
    s = drive.progress(t)
    zc = road.z_at(s)
    v = drive.speed(t)
    lane, dlane = drive.lane(t)
    drift, ddrift = drive.drift(t)
    width = road.width(zc)
    dz_ds = 1 / np.sqrt(1 + road.slope(zc) ** 2)
    d = lane * width / 4 + drift
    d_rate = dlane * width / 4 + lane * road.width_slope(zc) * dz_ds * v / 4 + ddrift
    kappa = road.curvature(zc)
    along = v * (1 - kappa * d)
    road_yaw = road.yaw(zc)
    heading = np.arctan2(d_rate, along)
    x, z = road.point(zc, d)
    return {"x": x, "z": z, "yaw": road_yaw + heading, "lane_offset": d, "heading": heading, "curvature": kappa,
            "road_width": width, "speed": np.hypot(along, d_rate), "road_yaw": road_yaw}


def poses(yaw: np.ndarray, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-from-camera rotations R [T, 3, 3] (columns: camera x, y, z in world) and centres
    c [T, 3] = (x, 0, z) for camera yaws [T] (rad) at ground positions (x, z) [T]: forward =
    (sin yaw, 0, cos yaw), y = world y (down), x = y cross forward (as ``camera_poses``)."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    zero, one = np.zeros_like(yaw), np.ones_like(yaw)
    R = np.stack([np.stack([cy, zero, -sy], -1), np.stack([zero, one, zero], -1), np.stack([sy, zero, cy], -1)], -1)
    return R, np.stack([x, zero, z], -1)


def trajectory_points(drive: Drive, start: float, num_frames: int, fps: float = FPS, spacing: float = 0.5
                      ) -> np.ndarray:
    """Ego points for ``warp_video(first_frame, points, num_frames)``: [N, 2] (x, z) in the
    camera-0 ground frame (x right, z forward of the first frame's camera; first point
    (0, 0)), at N uniform times over the clip from ``start`` (s), N - 1 =
    ceil(duration / spacing) (``spacing`` in s; at least 2 points), so point j is the ego at
    frame j (num_frames - 1) / (N - 1). ``camera_poses(bspline_curve(points, num_frames))``
    then follows the true poses (measured over 10 seeds, 10 s and 2 min drives with lane
    changes): 0.5 s spacing: positions within 0.5 cm, headings within 0.3 degrees; 1 s
    spacing: within 5 cm and 0.3 degrees except the last few frames (the spline's free end),
    up to 1.8 degrees there. tests/test_world.py checks it."""
    n = max(2, int(math.ceil((num_frames - 1) / fps / spacing - 1e-9)) + 1)
    t = start + np.linspace(0.0, (num_frames - 1) / fps, n)
    e = ego_state(drive, np.concatenate([[start], t]))
    R, c = poses(e["yaw"], e["x"], e["z"])
    local = (c[1:] - c[0]) @ R[0]  # camera-0 coordinates: R0^T (c - c0)
    return local[:, [0, 2]]


def to_world(points_xz: np.ndarray, R0: np.ndarray, c0: np.ndarray) -> np.ndarray:
    """Camera-0 ground-frame points [N, 2] (x, z) -> world (x, z) [N, 2], for the first
    frame's pose R0 [3, 3], c0 [3]."""
    p = np.stack([points_xz[:, 0], np.zeros(len(points_xz)), points_xz[:, 1]], 1)
    return (p @ R0.T + c0)[:, [0, 2]]


__all__ = ["Drive", "FPS", "ego_state", "poses", "to_world", "trajectory_points"]
