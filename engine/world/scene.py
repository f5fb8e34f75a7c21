"""The world layout, a pure function of a seed: the road, what stands beside it, the traffic.

Coordinates are the camera conventions of :mod:`engine.control.trajectory` (OpenCV style):
world x right, world y DOWN, world z forward; the ego camera rides at y = 0, so the ground
is the plane y = +CAMERA_HEIGHT. Units: metres, seconds, radians.

- :class:`Road`: the centreline x_c(z) is a sum of four random sinusoids (curvature bounded by
  MAX_CURVATURE, slope by MAX_SLOPE, so it is drivable and never turns back), the width a sum
  of two (6..10 m, two lanes). The road exists for every z; its arc length s(z) (from z = 0)
  is tabulated in fixed chunks of TABLE_CHUNK m, so any stretch is the same whoever asks.
- :class:`Objects`: struct-of-arrays of vertical prisms (boxes, cylinders) and ellipsoids,
  at fixed world positions. :func:`box` and :func:`marker` make extra ones.
- roadside objects (poles, trees = trunk + crown, buildings) are drawn per SEGMENT m of road
  from their own generator ``default_rng([seed, stream, segment])``: a stretch of road looks
  the same whichever clip renders it.
- traffic: oncoming cars in the left lane at constant speed, dropped where they would meet
  the ego while it is out of its right lane (the ego drive is known in advance).

Every random number comes from ``np.random.default_rng`` seeded with the seed (and a stream
and a block index): nothing global.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

CAMERA_HEIGHT = 1.5  # m: the ground is the plane y = +CAMERA_HEIGHT
MAX_CURVATURE = 1 / 80  # 1/m: at 14 m/s at most 2.5 m/s^2 of lateral acceleration
MAX_SLOPE = 0.45  # dx_c/dz: the road heading stays within +-24 degrees of world +z
WIDTH_RANGE = (6.0, 10.0)  # m, both lanes together
SEGMENT = 40.0  # m of road (in z) per roadside-object generator
TABLE_CHUNK = 512.0  # m of road (in z) per arc-length table chunk
TABLE_STEP = 0.25  # m between arc-length table samples
CURB = 0.3  # m: the curb strip beyond the road edge
SIDEWALK = 2.0  # m: the sidewalk beyond the curb

# object kinds (geometry) and materials (shading)
PRISM, CYLINDER, ELLIPSOID = 0, 1, 2
PLAIN, BUILDING, FOLIAGE, EMISSIVE, LAMP = 0, 1, 2, 3, 4

# generator streams
_ROAD, _OBJECTS, _TRAFFIC, _HILLS = 1, 2, 3, 4
_BLOCK_OFFSET = 1 << 40  # keeps negative segment indices non-negative for SeedSequence


def stream_rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """The generator of one stream (and block ``index``, any integer) of a world seed."""
    return np.random.default_rng([int(seed) % (1 << 63), int(stream), int(index) + _BLOCK_OFFSET])


# ----------------------------------------------------------------------------------
# objects
# ----------------------------------------------------------------------------------
@dataclass
class Objects:
    """N objects as arrays [N] (float64 unless said): ``kind`` int8 (PRISM: box of half sizes
    hx across, hz along its yaw; CYLINDER / ELLIPSOID: horizontal radius hx), centre ``x``,
    ``z`` (world), ``yaw`` (rad: local x axis = (cos yaw, -sin yaw), local z axis = (sin yaw,
    cos yaw) in world (x, z)), ``hx``, ``hz`` (m), vertical extent ``y_top`` < ``y_bot``
    (world y, down; the ground is y = CAMERA_HEIGHT), ``colour`` float32 [N, 3] in [0, 1],
    ``material`` int8 (PLAIN and FOLIAGE: lit; BUILDING: lit, with windows on the sides;
    EMISSIVE: its own colour whatever the light; LAMP: lit by day, glowing at night).
    Ellipsoids are shaded round and a little darker underneath."""

    kind: np.ndarray
    x: np.ndarray
    z: np.ndarray
    yaw: np.ndarray
    hx: np.ndarray
    hz: np.ndarray
    y_top: np.ndarray
    y_bot: np.ndarray
    colour: np.ndarray
    material: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    @staticmethod
    def empty() -> "Objects":
        """No objects."""
        f = np.zeros(0)
        return Objects(np.zeros(0, np.int8), f, f, f, f, f, f, f, np.zeros((0, 3), np.float32), np.zeros(0, np.int8))

    @staticmethod
    def concat(parts) -> "Objects":
        """One Objects holding every object of ``parts`` (an iterable of Objects), in order."""
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            return Objects.empty()
        return Objects(*[np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Objects)])

    def take(self, idx) -> "Objects":
        """The objects at indices (or boolean mask) ``idx``."""
        return Objects(*[getattr(self, f.name)[idx] for f in fields(Objects)])


def _objects(kind, x, z, yaw, hx, hz, y_top, y_bot, colour, material) -> Objects:
    n = len(np.atleast_1d(x))
    f = lambda v: np.broadcast_to(np.asarray(v, np.float64), (n,)).copy()  # noqa: E731
    return Objects(np.broadcast_to(np.asarray(kind, np.int8), (n,)).copy(), f(x), f(z), f(yaw), f(hx), f(hz),
                   f(y_top), f(y_bot), np.broadcast_to(np.asarray(colour, np.float32), (n, 3)).copy(),
                   np.broadcast_to(np.asarray(material, np.int8), (n,)).copy())


def box(x: float, z: float, width: float, length: float, y_top: float, y_bot: float = CAMERA_HEIGHT,
        colour=(0.6, 0.6, 0.6), yaw: float = 0.0, material: int = PLAIN) -> Objects:
    """One box: centre (x, z) on the ground plane (m, world), ``width`` across and ``length``
    along its ``yaw`` (m), from world y ``y_top`` down to ``y_bot`` (default: standing on the
    ground), RGB ``colour`` in [0, 1]."""
    return _objects(PRISM, x, z, yaw, width / 2, length / 2, y_top, y_bot, colour, material)


def marker(x: float, y: float, z: float, size: float = 0.8, colour=(1.0, 0.0, 1.0)) -> Objects:
    """An unlit (EMISSIVE) cube of edge ``size`` m centred at world point (x, y, z) with a
    unique RGB ``colour`` in [0, 1], for checking the render against the poses."""
    return _objects(PRISM, x, z, 0.0, size / 2, size / 2, y - size / 2, y + size / 2, colour, EMISSIVE)


# ----------------------------------------------------------------------------------
# road
# ----------------------------------------------------------------------------------
class Road:
    """The road of a seed: centreline x_c(z), its slope, curvature and width (all vectorised
    over z in m), and the arc length s(z) along the centreline (0 at z = 0) and its inverse."""

    def __init__(self, seed: int):
        rng = stream_rng(seed, _ROAD)
        lam = rng.uniform(90.0, 600.0, 4)
        self.k = 2 * np.pi / lam
        amp = rng.uniform(0.3, 1.0, 4) * rng.choice([-1.0, 1.0], 4) / self.k ** 2  # equal share of curvature
        amp *= MAX_CURVATURE * rng.uniform(0.5, 1.0) / np.sum(np.abs(amp) * self.k ** 2)
        slope = np.sum(np.abs(amp) * self.k)
        if slope > MAX_SLOPE:
            amp *= MAX_SLOPE / slope
        self.amp, self.phase = amp, rng.uniform(0, 2 * np.pi, 4)
        self.centre0 = float(np.sum(amp * np.sin(self.phase)))  # x_c(0) = 0: the road starts at the origin
        lo, hi = WIDTH_RANGE
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        self.width_mid = mid + rng.uniform(-0.4, 0.4) * half
        span = half - abs(self.width_mid - mid)
        self.width_amp = np.array([0.65, 0.35]) * span * rng.uniform(0.6, 1.0)
        self.width_k = 2 * np.pi / rng.uniform(250.0, 900.0, 2)
        self.width_phase = rng.uniform(0, 2 * np.pi, 2)
        self._chunks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._chunk_start: dict[int, float] = {0: 0.0}

    # analytic shape -------------------------------------------------------------
    def _arg(self, z):
        return np.asarray(z, np.float64)[..., None] * self.k + self.phase

    def centre(self, z) -> np.ndarray:
        """x_c(z) (m), same shape as z."""
        return np.sum(self.amp * np.sin(self._arg(z)), -1) - self.centre0

    def slope(self, z) -> np.ndarray:
        """dx_c/dz (dimensionless); the road's yaw is atan(slope)."""
        return np.sum(self.amp * self.k * np.cos(self._arg(z)), -1)

    def bend(self, z) -> np.ndarray:
        """d^2 x_c / dz^2 (1/m)."""
        return -np.sum(self.amp * self.k ** 2 * np.sin(self._arg(z)), -1)

    def yaw(self, z) -> np.ndarray:
        """The road tangent's yaw (rad; 0 = world +z, + = towards +x, to the right)."""
        return np.arctan(self.slope(z))

    def curvature(self, z) -> np.ndarray:
        """Signed curvature (1/m) of the centreline at z; + = bending right (towards +x)."""
        return self.bend(z) / (1 + self.slope(z) ** 2) ** 1.5

    def width(self, z) -> np.ndarray:
        """Road width (m, both lanes) at z, within WIDTH_RANGE."""
        zz = np.asarray(z, np.float64)[..., None]
        return self.width_mid + np.sum(self.width_amp * np.sin(zz * self.width_k + self.width_phase), -1)

    def width_slope(self, z) -> np.ndarray:
        """d(width)/dz (dimensionless)."""
        zz = np.asarray(z, np.float64)[..., None]
        return np.sum(self.width_amp * self.width_k * np.cos(zz * self.width_k + self.width_phase), -1)

    def point(self, z, lateral) -> tuple[np.ndarray, np.ndarray]:
        """World (x, z) of the point ``lateral`` m to the right of the centreline point at z
        (along the road's right normal (cos yaw, -sin yaw))."""
        yaw = self.yaw(z)
        return self.centre(z) + lateral * np.cos(yaw), np.asarray(z, np.float64) - lateral * np.sin(yaw)

    # arc length ----------------------------------------------------------------
    def _chunk(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk n: z samples over [n, n+1] * TABLE_CHUNK and the arc length s at them."""
        if n not in self._chunks:
            steps = int(round(TABLE_CHUNK / TABLE_STEP))
            z = n * TABLE_CHUNK + TABLE_STEP * np.arange(steps + 1)
            g = 0.5 / math.sqrt(3)  # two-point Gauss-Legendre per step: exact enough for a smooth curve
            zm = (z[:-1] + z[1:]) / 2
            ds = TABLE_STEP / 2 * (np.sqrt(1 + self.slope(zm - g * TABLE_STEP) ** 2)
                                   + np.sqrt(1 + self.slope(zm + g * TABLE_STEP) ** 2))
            s = np.concatenate([[0.0], np.cumsum(ds)])
            self._chunks[n] = (z, s)
        return self._chunks[n]

    def _start(self, n: int) -> float:
        """Arc length at the start of chunk n (chunks added outward from chunk 0)."""
        if n not in self._chunk_start:
            step = 1 if n > 0 else -1
            m = n - step
            while m not in self._chunk_start:
                m -= step
            while m != n:
                nxt = m + step
                if step > 0:
                    self._chunk_start[nxt] = self._chunk_start[m] + self._chunk(m)[1][-1]
                else:
                    self._chunk_start[nxt] = self._chunk_start[m] - self._chunk(nxt)[1][-1]
                m = nxt
        return self._chunk_start[n]

    def table(self, z_lo: float, z_hi: float) -> tuple[np.ndarray, np.ndarray]:
        """Arc-length table covering [z_lo, z_hi]: (z samples, s at them), both increasing."""
        n0, n1 = int(math.floor(z_lo / TABLE_CHUNK)), int(math.floor(z_hi / TABLE_CHUNK))
        zs, ss = [], []
        for n in range(n0, n1 + 1):
            z, s = self._chunk(n)
            zs.append(z[:-1] if n < n1 else z)
            ss.append((s[:-1] if n < n1 else s) + self._start(n))
        return np.concatenate(zs), np.concatenate(ss)

    def arc_length(self, z) -> np.ndarray:
        """s(z) (m along the centreline from z = 0; negative before it)."""
        z = np.asarray(z, np.float64)
        zt, st = self.table(float(z.min()), float(z.max()))
        return np.interp(z, zt, st)

    def z_at(self, s) -> np.ndarray:
        """The z whose arc length is s (inverse of :meth:`arc_length`)."""
        s = np.asarray(s, np.float64)
        lo, hi = float(s.min()), float(s.max())  # |dz/ds| is between 1/sqrt(1 + MAX_SLOPE^2) and 1
        shrink = 1 / math.sqrt(1 + MAX_SLOPE ** 2)
        zt, st = self.table(min(lo, lo * shrink) - 1, max(hi, hi * shrink) + 1)
        return np.interp(s, st, zt)


# ----------------------------------------------------------------------------------
# roadside objects
# ----------------------------------------------------------------------------------
_BUILDING_COLOURS = np.array([
    [0.72, 0.66, 0.58], [0.62, 0.40, 0.32], [0.80, 0.78, 0.72], [0.55, 0.58, 0.62], [0.78, 0.70, 0.50],
    [0.50, 0.52, 0.48], [0.68, 0.55, 0.50], [0.85, 0.82, 0.78], [0.45, 0.48, 0.56], [0.70, 0.62, 0.66]])
_CROWN_COLOURS = np.array([[0.20, 0.42, 0.16], [0.28, 0.48, 0.18], [0.16, 0.34, 0.18], [0.34, 0.46, 0.20],
                           [0.22, 0.38, 0.24]])
POLE_SPACING = 32.0  # m between the poles of one side


def _urbanity(seed_phase: float, z: np.ndarray) -> np.ndarray:
    """How built-up the roadside is at z, in [0, 1] (slowly varying)."""
    return np.clip(0.5 + 0.75 * np.sin(2 * np.pi * z / 1100.0 + seed_phase), 0.0, 1.0)


def roadside_segment(seed: int, road: Road, k: int) -> Objects:
    """The poles, trees and buildings of road segment k (z in [k, k+1) * SEGMENT), both sides."""
    rng = stream_rng(seed, _OBJECTS, k)
    phase = stream_rng(seed, _OBJECTS, -1).uniform(0, 2 * np.pi)
    z0 = k * SEGMENT
    h = CAMERA_HEIGHT
    parts = []
    half_max = WIDTH_RANGE[1] / 2
    for side in (-1.0, 1.0):
        # poles: every POLE_SPACING m, on the sidewalk
        offset = (0.25 if side > 0 else 0.75) * POLE_SPACING
        first = math.ceil((z0 - offset) / POLE_SPACING) * POLE_SPACING + offset
        zp = np.arange(first, z0 + SEGMENT, POLE_SPACING)
        zp = zp[zp >= z0]
        if len(zp):
            lat = side * (road.width(zp) / 2 + CURB + 0.6)
            px, pz = road.point(zp, lat)
            parts.append(_objects(CYLINDER, px, pz, 0.0, 0.09, 0.09, h - 7.0, h, (0.30, 0.31, 0.33), PLAIN))
            lx, lz = road.point(zp, lat - side * 0.9)  # the lamp head, over the road
            yaw = road.yaw(zp)
            parts.append(_objects(PRISM, lx, lz, yaw, 0.9, 0.18, h - 7.05, h - 6.85, (0.30, 0.31, 0.33), PLAIN))
            parts.append(_objects(PRISM, lx - side * 0.35 * np.cos(yaw), lz + side * 0.35 * np.sin(yaw), yaw, 0.25,
                                  0.14, h - 6.85, h - 6.78, (0.95, 0.88, 0.65), LAMP))
        urban = float(_urbanity(phase, np.array(z0 + SEGMENT / 2)))
        # buildings: set back from the widest road, along the segment with gaps
        zb = z0 + rng.uniform(0.0, 4.0)
        while True:
            length = rng.uniform(8.0, 22.0)
            gap = rng.uniform(1.0, 8.0)
            present = rng.uniform() < urban
            depth, height = rng.uniform(8.0, 16.0), rng.uniform(4.0, 8.0) + urban * rng.uniform(0.0, 18.0)
            setback, colour = rng.uniform(9.0, 13.0), _BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))]
            jitter = rng.uniform(0.92, 1.05, 3)
            if zb + length > z0 + SEGMENT:
                break
            if present:
                zc = zb + length / 2
                bx, bz = road.point(zc, side * (half_max + setback + depth / 2))
                parts.append(_objects(PRISM, bx, bz, road.yaw(zc), depth / 2, length / 2, h - height, h,
                                      np.clip(colour * jitter, 0, 1), BUILDING))
            zb += length + gap
        # trees: on the verge between the sidewalk and the buildings
        n = rng.poisson(1.0 + 2.5 * (1 - urban))
        zt = z0 + rng.uniform(0.0, SEGMENT, n)
        lat = side * (road.width(zt) / 2 + CURB + SIDEWALK + rng.uniform(1.2, 4.5, n))
        trunk_h, crown_r = rng.uniform(1.6, 3.0, n), rng.uniform(1.2, 2.4, n)
        crown_ry = crown_r * rng.uniform(0.9, 1.7, n)
        crown_c = _CROWN_COLOURS[rng.integers(len(_CROWN_COLOURS), size=n)] * rng.uniform(0.9, 1.1, (n, 1))
        if n:
            tx, tz = road.point(zt, lat)
            parts.append(_objects(CYLINDER, tx, tz, 0.0, rng.uniform(0.12, 0.22, n), 0.0, h - trunk_h - crown_ry * 0.5,
                                  h, (0.36, 0.26, 0.18), PLAIN))
            centre = h - trunk_h - crown_ry * 0.85
            parts.append(_objects(ELLIPSOID, tx, tz, 0.0, crown_r, crown_r, centre - crown_ry, centre + crown_ry,
                                  np.clip(crown_c, 0, 1), FOLIAGE))
    return Objects.concat(parts)


# ----------------------------------------------------------------------------------
# traffic
# ----------------------------------------------------------------------------------
TRAFFIC_SEGMENT = 60.0  # m of road (arc length at t = 0) per traffic generator
CAR_LENGTH, CAR_WIDTH = 4.4, 1.8


def _cars_in(seed: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oncoming cars of traffic segment k: arc length at t = 0 [n], speed [n] (m/s, towards
    -s), colour [n, 3]."""
    rng = stream_rng(seed, _TRAFFIC, k)
    n = int(rng.uniform() < 0.45)
    s0 = k * TRAFFIC_SEGMENT + rng.uniform(0, TRAFFIC_SEGMENT, n)
    speed = rng.uniform(8.0, 14.0, n)
    colour = rng.uniform(0.1, 0.9, (n, 3)) * rng.uniform(0.5, 1.0, (n, 1))
    return s0, speed, colour


def traffic(seed: int, road: Road, drive, t0: float, t1: float, reach: float) -> tuple[np.ndarray, ...]:
    """The oncoming cars that come within ``reach`` m (along the road) of the ego during
    [t0, t1] s: (s0 [n], speed [n], colour [n, 3]); a car at arc length s0 - speed * t at
    time t. ``drive`` gives the ego's ``progress(t)`` (arc length) and ``offset(t)`` (lateral
    m); cars whose meeting with the ego falls within 2 s of the ego being out of its right
    lane (offset < 0.6 m) are left out, so no car ever drives through the ego."""
    sa, sb = float(drive.progress(np.array([t0]))[0]), float(drive.progress(np.array([t1]))[0])
    lo, hi = sa - reach + 8.0 * t0, sb + reach + 14.0 * t1  # s0 = s + speed * t, speed in [8, 14]
    ks = range(int(math.floor(lo / TRAFFIC_SEGMENT)), int(math.floor(hi / TRAFFIC_SEGMENT)) + 1)
    got = [_cars_in(seed, k) for k in ks]
    s0 = np.concatenate([g[0] for g in got])
    speed = np.concatenate([g[1] for g in got])
    colour = np.concatenate([g[2] for g in got]).reshape(-1, 3)
    if not len(s0):
        return s0, speed, colour
    # the meeting time: progress(t) + speed t = s0 (increasing in t): bisection
    a = np.full(len(s0), -1000.0)
    b = np.full(len(s0), 1000.0 + 2 * t1)
    for _ in range(50):
        m = (a + b) / 2
        ahead = drive.progress(m) + speed * m < s0
        a, b = np.where(ahead, m, a), np.where(ahead, b, m)
    meet = (a + b) / 2
    probe = meet[:, None] + np.linspace(-2.0, 2.0, 17)
    clear = (drive.offset(probe.ravel()).reshape(probe.shape) > 0.6).all(1)
    # near the ego within the window at all?
    ts = np.linspace(t0, t1, max(2, int((t1 - t0) * 4) + 2))
    gap = (s0[:, None] - speed[:, None] * ts) - drive.progress(ts)[None]
    near = (np.abs(gap) < reach).any(1)
    keep = clear & near
    return s0[keep], speed[keep], colour[keep]


def car_objects(road: Road, cars: tuple[np.ndarray, ...], t: float) -> Objects:
    """The boxes of the oncoming ``cars`` (from :func:`traffic`) at time t (s): body, wheel
    skirt, cabin and two headlights each, in the left lane, facing -z."""
    s0, speed, colour = cars
    if not len(s0):
        return Objects.empty()
    z = road.z_at(s0 - speed * t)
    yaw = road.yaw(z)
    lat = -road.width(z) / 4
    cx, cz = road.point(z, lat)
    ex, ez = (np.cos(yaw), -np.sin(yaw)), (np.sin(yaw), np.cos(yaw))
    h = CAMERA_HEIGHT

    def at(dx, dz):  # a point dx across, dz along the car
        return cx + dx * ex[0] + dz * ez[0], cz + dx * ex[1] + dz * ez[1]

    hl, hw = CAR_LENGTH / 2, CAR_WIDTH / 2
    glass = colour * 0.35 + 0.08
    parts = [
        _objects(PRISM, cx, cz, yaw, hw, hl, h - 1.0, h - 0.3, colour, PLAIN),
        _objects(PRISM, cx, cz, yaw, hw - 0.1, hl - 0.5, h - 0.3, h, (0.05, 0.05, 0.05), PLAIN),
        _objects(PRISM, *at(0.0, 0.3), yaw, hw - 0.12, 1.15, h - 1.45, h - 1.0, glass, PLAIN),
    ]
    for side in (-1, 1):  # headlights on the front (the -z end: the car drives towards -z)
        parts.append(_objects(PRISM, *at(side * 0.6, -hl - 0.03), yaw, 0.18, 0.04, h - 0.85, h - 0.7,
                              (1.0, 0.95, 0.8), LAMP))
    return Objects.concat(parts)


# ----------------------------------------------------------------------------------
# the world
# ----------------------------------------------------------------------------------
class World:
    """Everything fixed by a seed: ``road`` (:class:`Road`), the roadside objects (generated
    per segment on demand, cached), the horizon hills, the curb style and traffic."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.road = Road(self.seed)
        rng = stream_rng(self.seed, _HILLS)
        self.hill_freq = np.array([2.0, 3.0, 5.0, 8.0, 13.0])
        self.hill_amp = rng.uniform(0.4, 1.0, 5) / self.hill_freq ** 0.7
        self.hill_amp *= 0.045 / self.hill_amp.sum()
        self.hill_phase = rng.uniform(0, 2 * np.pi, 5)
        self.hill_colour = np.array([0.30, 0.40, 0.32]) * rng.uniform(0.85, 1.15, 3)
        self.red_curb = bool(rng.uniform() < 0.5)
        self._segments: dict[int, Objects] = {}

    def hills(self, azimuth) -> np.ndarray:
        """Elevation (rad) of the horizon hills' silhouette at world azimuth (rad, 0 = +z)."""
        az = np.asarray(azimuth, np.float64)[..., None]
        return 0.008 + np.sum(self.hill_amp * (1 + np.sin(az * self.hill_freq + self.hill_phase)), -1)

    def roadside(self, z_lo: float, z_hi: float) -> Objects:
        """All roadside objects of the segments overlapping [z_lo, z_hi] (m)."""
        ks = range(int(math.floor(z_lo / SEGMENT)), int(math.floor(z_hi / SEGMENT)) + 1)
        for k in ks:
            if k not in self._segments:
                self._segments[k] = roadside_segment(self.seed, self.road, k)
        return Objects.concat(self._segments[k] for k in ks)


__all__ = ["CAMERA_HEIGHT", "CYLINDER", "ELLIPSOID", "EMISSIVE", "FOLIAGE", "BUILDING", "LAMP", "PLAIN", "PRISM",
           "Objects", "Road", "World", "box", "car_objects", "marker", "roadside_segment", "stream_rng", "traffic"]
