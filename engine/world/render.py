"""The renderer: one first-person view of a :class:`~engine.world.scene.World` from a camera
pose, vectorised in numpy (no loop over pixels or objects), plus the weathers.

The camera never pitches or rolls (camera y = world y, as ``camera_poses`` builds it), so a
vertical line in the world is a vertical line in the image. That makes the scene cheap:

- background: sky gradient by elevation, a sun glow and horizon hills by world azimuth
  (at infinity: they move only when the camera turns);
- ground (the plane y = CAMERA_HEIGHT): per pixel, the ray's ground point gives road
  coordinates (lateral, along); road, curb, sidewalk, grass, the edge lines and the dashed
  centre line are box-filtered analytically over the pixel's ground footprint, so they do not
  shimmer in the distance;
- objects (boxes, vertical cylinders, ellipsoids): per image column the 2-D ray-footprint
  intersection gives the span of rows an object covers; the spans are expanded to pixels
  and resolved with a z-buffer (``np.minimum.at``), then shaded (sun + ambient, windows,
  headlights at night);
- then fog / haze by distance, a fade to the background near the draw distance (nothing
  pops in), rain streaks, and the 2x supersampled image is downsampled with a (1, 3, 3, 1)
  tent filter (anti-aliasing: edges do not flicker).

The camera follows :mod:`engine.control.trajectory`: world-from-camera R (camera x right,
y down, z forward), centre c = (x, 0, z), K = ``default_intrinsics(H, W)`` (focal = width,
principal point ((W-1)/2, (H-1)/2), pixel centres at integers): a world point X lands at
K R^T (X - c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .scene import BUILDING, CAMERA_HEIGHT, CURB, ELLIPSOID, EMISSIVE, LAMP, PRISM, SIDEWALK, Objects, World, stream_rng

DRAW_DISTANCE = 350.0  # m: surfaces fade into the background towards it
NEAR = 0.05  # m: nearest forward depth drawn
_RAIN = 21


@dataclass(frozen=True)
class Weather:
    """Sky and lighting of one weather: sky colours (RGB in [0, 1]) at the zenith and horizon,
    haze colour and its 1/e distance (m), the sun (world azimuth and elevation in rad, colour,
    glow strength), ambient and sun light, a tint for lit surfaces, and flags for headlights,
    a wet road and rain streaks. ``prompt`` is the scene's text prompt."""

    name: str
    prompt: str
    sky_top: tuple
    sky_horizon: tuple
    haze: tuple
    haze_distance: float
    sun_azimuth: float
    sun_elevation: float
    sun_colour: tuple
    glow: float
    ambient: float
    sun: float
    tint: tuple
    headlights: bool = False
    wet: bool = False
    rain: bool = False


WEATHER_PRESETS = {
    "day": Weather("day", "a drive on a sunny day", (0.30, 0.52, 0.86), (0.72, 0.82, 0.93), (0.74, 0.82, 0.92),
                   900.0, 0.6, 0.9, (1.0, 0.95, 0.80), 0.18, 0.62, 0.45, (1.0, 1.0, 0.98)),
    "dusk": Weather("dusk", "a drive at dusk", (0.24, 0.18, 0.42), (0.96, 0.56, 0.30), (0.80, 0.52, 0.42),
                    500.0, -0.4, 0.06, (1.0, 0.62, 0.30), 0.35, 0.42, 0.45, (1.0, 0.78, 0.62)),
    "night": Weather("night", "a drive at night", (0.01, 0.02, 0.06), (0.06, 0.07, 0.13), (0.05, 0.06, 0.11),
                     260.0, 0.0, -0.5, (0.0, 0.0, 0.0), 0.0, 0.10, 0.0, (0.85, 0.88, 1.0), headlights=True),
    "fog": Weather("fog", "a drive in fog", (0.70, 0.72, 0.75), (0.76, 0.77, 0.79), (0.75, 0.76, 0.78),
                   30.0, 0.6, 0.9, (1.0, 1.0, 1.0), 0.04, 0.75, 0.12, (0.95, 0.96, 0.98)),
    "rain": Weather("rain", "a drive in the rain", (0.36, 0.39, 0.44), (0.54, 0.56, 0.60), (0.52, 0.54, 0.58),
                    150.0, 0.6, 0.9, (1.0, 1.0, 1.0), 0.03, 0.50, 0.10, (0.82, 0.85, 0.90), wet=True, rain=True),
}
WEATHERS = tuple(WEATHER_PRESETS)  # ("day", "dusk", "night", "fog", "rain")
PROMPTS = {name: w.prompt for name, w in WEATHER_PRESETS.items()}

_ASPHALT = np.array([0.31, 0.31, 0.33], np.float32)
_MARKING = np.array([0.90, 0.90, 0.86], np.float32)
_CURB_RED, _CURB_WHITE = np.array([0.72, 0.20, 0.16], np.float32), np.array([0.86, 0.86, 0.83], np.float32)
_CURB_GREY = np.array([0.62, 0.62, 0.60], np.float32)
_SIDEWALK = np.array([0.58, 0.57, 0.54], np.float32)
_GRASS = np.array([0.29, 0.43, 0.19], np.float32)
_GLASS = np.array([0.22, 0.27, 0.34], np.float32)
_WINDOW_LIGHT = np.array([0.95, 0.78, 0.45], np.float32)
_RAIN_COLOUR = np.array([0.80, 0.82, 0.86], np.float32)


def weather_preset(weather) -> Weather:
    """A :class:`Weather` from its name (one of WEATHERS), index into WEATHERS, or itself."""
    if isinstance(weather, Weather):
        return weather
    if isinstance(weather, (int, np.integer)):
        return WEATHER_PRESETS[WEATHERS[int(weather)]]
    if weather not in WEATHER_PRESETS:
        raise ValueError(f"unknown weather {weather!r}; choose one of {', '.join(WEATHERS)}")
    return WEATHER_PRESETS[weather]


def _dashes(s, period, on, width):
    """Box-filtered dashes: share of [s - width/2, s + width/2] inside the periodic "on"
    stretches [k period, k period + on) (s in float64)."""
    def F(x):  # measure of the on-set in [0, x)
        return np.floor(x / period) * on + np.minimum(np.mod(x, period), on)
    return ((F(s + width / 2) - F(s - width / 2)) / width).astype(np.float32)


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


class Camera:
    """The supersampled pinhole camera of an H x W view: SS = supersample factor, focal
    f = W * SS, principal point matching ``default_intrinsics(H, W)`` after the box
    downsample; ``a`` [Ws] and ``b`` [Hs] are the tangents of each column / row
    ((u - cx) / f, (v - cy) / f)."""

    def __init__(self, height: int, width: int, supersample: int = 2):
        ss = int(supersample)
        self.H, self.W, self.ss = height, width, ss
        self.Hs, self.Ws = height * ss, width * ss
        self.f = float(width * ss)
        self.cx = ss * (width - 1) / 2 + (ss - 1) / 2
        self.cy = ss * (height - 1) / 2 + (ss - 1) / 2
        self.a = ((np.arange(self.Ws) - self.cx) / self.f).astype(np.float64)
        self.b = ((np.arange(self.Hs) - self.cy) / self.f).astype(np.float64)
        self.ray_len = np.sqrt(1 + self.a[None] ** 2 + self.b[:, None] ** 2).astype(np.float32)  # [Hs, Ws]


def _lighting(weather: Weather, nx, ny, nz):
    """Sun + ambient light [n] for unit world normals (nx, ny, nz) [n] (y down)."""
    e, az = weather.sun_elevation, weather.sun_azimuth
    lam = nx * (math.cos(e) * math.sin(az)) - ny * math.sin(e) + nz * (math.cos(e) * math.cos(az))
    return (weather.ambient + weather.sun * np.maximum(lam, 0.0)).astype(np.float32)


def _headlight(depth, a):
    """Night headlight illumination at forward depth (m) and column tangent a."""
    return (1.5 * np.exp(-depth / np.float32(16.0)) * np.clip(depth / np.float32(2.5), 0, 1)
            * np.exp(-(a * a) / np.float32(0.16))).astype(np.float32)


def _rgb(v) -> np.ndarray:
    """An RGB triple as float32 [3, 1] (channel-first broadcasting over pixels)."""
    return np.asarray(v, np.float32).reshape(3, 1)


# ----------------------------------------------------------------------------------
# background
# ----------------------------------------------------------------------------------
def background(world: World, weather: Weather, cam: Camera, yaw: float) -> np.ndarray:
    """Sky, sun glow and horizon hills for a camera of world yaw ``yaw`` (rad): channel-first
    [3, Hs, Ws] float32; below the hills' silhouette it is the hills' (hazed) colour."""
    elev_row = (-cam.b).astype(np.float32)  # [Hs] elevation on the centre column
    azim = yaw + np.arctan(cam.a)  # [Ws] world azimuth of each column
    top, hor = _rgb(weather.sky_top), _rgb(weather.sky_horizon)
    g = np.clip(elev_row / 0.3, 0, 1) ** 0.6
    sky_rows = hor + (top - hor) * g[None]  # [3, Hs]
    out = np.empty((3, cam.Hs, cam.Ws), np.float32)
    out[:] = sky_rows[:, :, None]
    if weather.glow > 0:  # separable: exp(-(d_az^2 + d_el^2) / s) = exp(-d_az^2 / s) exp(-d_el^2 / s)
        gc = np.exp(-_wrap(azim - weather.sun_azimuth) ** 2 / 0.08).astype(np.float32)
        gr = (weather.glow * np.exp(-(elev_row - weather.sun_elevation) ** 2 / 0.08)).astype(np.float32)
        glow = gr[:, None] * gc[None]
        for ch in range(3):
            out[ch] += glow * np.float32(weather.sun_colour[ch])
    hill = world.hills(azim).astype(np.float32)  # [Ws] silhouette elevation
    light = weather.ambient + weather.sun * max(math.sin(weather.sun_elevation), 0.0)
    seen = 0.55 * (1 - math.exp(-weather.haze_distance / 250.0))  # hills fade into fog and rain
    hill_col = _rgb(seen * world.hill_colour * light * np.array(weather.tint) + (1 - seen) * np.array(weather.haze))
    band = np.nonzero(elev_row < float(hill.max()) + 2 / cam.f)[0]  # rows the hills can reach
    if len(band):
        r = int(band[0])
        elev = (-cam.b[r:, None] / np.sqrt(1 + cam.a[None] ** 2)).astype(np.float32)
        cover = np.clip((hill[None] - elev) * np.float32(cam.f) + np.float32(0.5), 0, 1)  # [rows, Ws]
        out[:, r:] += (hill_col[:, :, None] - out[:, r:]) * cover[None]
    return np.clip(out, 0, 1, out=out)


def _atmosphere(colour, dist, bg, weather: Weather, draw_distance: float):
    """Haze (exponential in distance, m) then a fade to the background ``bg`` near the draw
    distance; colour and bg channel-first [3, ...], dist [...]."""
    vis = np.exp(-dist / np.float32(weather.haze_distance))
    ramp = np.clip((draw_distance - dist) * np.float32(1 / (0.35 * draw_distance)), 0, 1)
    haze = np.asarray(weather.haze, np.float32).reshape((3,) + (1,) * dist.ndim)
    # bg + ramp (colour vis + haze (1 - vis) - bg)
    return bg + (ramp * vis) * (colour - haze) + ramp * (haze - bg)


# ----------------------------------------------------------------------------------
# ground
# ----------------------------------------------------------------------------------
def _below(edge, x, width):
    """Box-filtered step: share of [x - width/2, x + width/2] below ``edge``."""
    return np.clip((edge - x) / width + np.float32(0.5), 0, 1)


def ground(world: World, weather: Weather, cam: Camera, yaw: float, cx: float, cz: float, bg: np.ndarray,
           draw_distance: float) -> tuple[int, np.ndarray]:
    """The ground below the horizon: (first row r0, channel-first colours [3, Hs - r0, Ws]
    float32) of the rows r0.. whose ground lies within the draw distance (the rows above show
    ``bg`` [3, Hs, Ws]). Computed relative to the camera in float32; world-fixed patterns
    get their phase from the camera's world position in float64."""
    h = CAMERA_HEIGHT
    rows = np.nonzero(cam.b * draw_distance > h)[0]  # forward depth h / b below the draw distance
    if not len(rows):
        return cam.Hs, np.zeros((3, 0, cam.Ws), np.float32)
    r0 = int(rows[0])
    b = cam.b[r0:]
    depth = (h / b).astype(np.float32)[:, None]  # [Hg, 1] forward depth
    c, s = math.cos(yaw), math.sin(yaw)
    dirx = (c * cam.a + s).astype(np.float32)  # world (x, z) of the ray per unit forward depth, [Ws]
    dirz = (-s * cam.a + c).astype(np.float32)
    X = depth * dirx  # [Hg, Ws], relative to the camera
    Z = depth * dirz
    road = world.road
    # the road on a 0.5 m grid of z around the camera; per pixel: nearest sample + first-order step
    step = 0.5
    zr0 = math.floor(float(Z.min()) / step) * step
    zg = cz + zr0 + step * np.arange(int((float(Z.max()) - zr0) / step) + 2)
    slope = road.slope(zg)
    s_cam = float(road.arc_length(np.array([cz]))[0])
    sec = np.sqrt(1 + slope ** 2)
    tab = np.stack([road.centre(zg) - cx, slope, road.arc_length(zg) - s_cam + s_cam % 10.0, sec, 1 / sec,
                    slope / sec, road.width(zg) / 2, zg - cz]).astype(np.float32)  # dashes repeat every 10 m
    i = np.rint((Z - zr0) / step).astype(np.intp)
    xg, slope_g, sg, dsdz, cos_r, sin_r, half, zgr = (np.take(row, i) for row in tab)
    dz = Z - zgr
    dx = X - (xg + slope_g * dz)
    lat = dx * cos_r  # + = right of the centreline
    lon = sg + dsdz * dz + dx * sin_r  # along the road (+ the dash phase)
    # pixel footprint on the ground across and along the road
    px = depth / np.float32(cam.f)
    grow = px * depth / np.float32(h)  # how far one row down moves the ground point
    rc = np.abs(dirx * sin_r + dirz * cos_r) / np.sqrt(dirx * dirx + dirz * dirz)  # |cos(ray - road)|
    rs = np.sqrt(np.maximum(1 - rc * rc, 0))
    w_lat = px * rc + grow * rs + np.float32(1e-4)
    w_lon = px * rs + grow * rc + np.float32(1e-4)
    alat = np.abs(lat)
    in_road = _below(half, alat, w_lat)
    in_curb = _below(half + np.float32(CURB), alat, w_lat)
    in_walk = _below(half + np.float32(CURB + SIDEWALK), alat, w_lat)
    paint = _below(half - np.float32(0.30), alat, w_lat) - _below(half - np.float32(0.45), alat, w_lat)  # edges
    near_mid = np.nonzero((alat < 0.075 + w_lat).ravel())[0]  # the dashed centre line
    if len(near_mid):
        pm = paint.reshape(-1)
        pm[near_mid] += (_below(np.float32(0.075), alat.reshape(-1)[near_mid], w_lat.reshape(-1)[near_mid])
                         * _dashes(lon.reshape(-1)[near_mid], 10.0, 3.0, w_lon.reshape(-1)[near_mid]))
    paint = np.minimum(paint, in_road)
    # low-amplitude smooth texture, world-fixed, fading where the footprint is large
    ph1 = np.float32((0.53 * cx + 0.31 * cz) % (2 * np.pi))
    ph2 = np.float32((0.23 * cx - 0.47 * cz + 1.3) % (2 * np.pi))
    ph3 = np.float32((0.11 * cx + 0.07 * cz + 0.5) % (2 * np.pi))
    fade = np.clip(1 - w_lon * np.float32(1 / 1.5), 0, 1)
    tex = fade * np.sin(np.float32(0.53) * X + np.float32(0.31) * Z + ph1) * np.sin(
        np.float32(0.23) * X - np.float32(0.47) * Z + ph2)
    w_road = (in_road - paint) * (1 + np.float32(0.04) * tex)
    w_grass = (1 - in_walk) * (1 + np.float32(0.10) * np.sin(np.float32(0.11) * X + np.float32(0.07) * Z + ph3)
                               + np.float32(0.06) * tex)
    w_walk = in_walk - in_curb
    curb = in_curb - in_road
    asphalt = _ASPHALT * (0.62 if weather.wet else 1.0)
    albedo = np.empty((3,) + X.shape, np.float32)
    for ch in range(3):
        albedo[ch] = (w_road * asphalt[ch] + paint * _MARKING[ch] + w_walk * _SIDEWALK[ch] + w_grass * _GRASS[ch])
    on_curb = np.nonzero((curb > 0).ravel())[0]
    if len(on_curb):
        cv = curb.reshape(-1)[on_curb]
        flat_albedo = albedo.reshape(3, -1)
        if world.red_curb:
            red = _dashes(lon.reshape(-1)[on_curb], 2.0, 1.0, w_lon.reshape(-1)[on_curb])
            flat_albedo[:, on_curb] += cv * (_rgb(_CURB_RED) * red + _rgb(_CURB_WHITE) * (1 - red))
        else:
            flat_albedo[:, on_curb] += cv * _rgb(_CURB_GREY)
    light = np.float32(weather.ambient + weather.sun * max(math.sin(weather.sun_elevation), 0.0))
    tint = np.asarray(weather.tint, np.float32).reshape(3, 1, 1)
    if weather.headlights:  # headlights; the markings are retroreflective
        hl = _headlight(depth, cam.a[None].astype(np.float32))
        col = albedo * ((light + hl * (1 + 2.5 * paint * np.exp(-depth / np.float32(70.0))))[None] * tint)
    else:
        col = albedo * (light * tint)
    if weather.wet:  # a wet road mirrors the horizon, more so at grazing angles
        refl = (0.12 + 0.25 * np.exp(-(b / 0.08) ** 2)).astype(np.float32)[:, None] * in_road
        col += (np.asarray(weather.sky_horizon, np.float32).reshape(3, 1, 1) * np.float32(0.9) - col) * refl[None]
    dist = depth * cam.ray_len[r0:]
    return r0, _atmosphere(col, dist, bg[:, r0:], weather, draw_distance)


# ----------------------------------------------------------------------------------
# objects
# ----------------------------------------------------------------------------------
def _column_pairs(obj: Objects, cam: Camera, xc, zc, draw_distance):
    """(object index, column) pairs for every object that may cover a column (from its
    bounding circle in the camera's horizontal plane)."""
    rho = np.where(obj.kind == PRISM, np.hypot(obj.hx, obj.hz), obj.hx)
    dist = np.hypot(xc, zc)
    keep = (dist - rho < draw_distance) & (zc + rho > NEAR)
    alpha = np.arctan2(xc, zc)
    beta = np.arcsin(np.clip(rho / np.maximum(dist, 1e-9), 0, 1))
    full = (dist <= rho * 1.001) | (np.abs(alpha) + beta >= np.pi / 2 - 0.02)
    lo = cam.cx + cam.f * np.tan(np.clip(alpha - beta, -1.5, 1.5))
    hi = cam.cx + cam.f * np.tan(np.clip(alpha + beta, -1.5, 1.5))
    j0 = np.where(full, 0, np.clip(np.ceil(lo), 0, cam.Ws)).astype(np.int64)
    j1 = np.where(full, cam.Ws - 1, np.clip(np.floor(hi), -1, cam.Ws - 1)).astype(np.int64)
    keep &= j1 >= j0
    idx = np.nonzero(keep)[0]
    n = j1[idx] - j0[idx] + 1
    o = np.repeat(idx, n)
    first = np.cumsum(n) - n
    col = np.repeat(j0[idx] - first, n) + np.arange(int(n.sum()))
    return o, col


def _spans(obj: Objects, cam: Camera, yaw: float, cx: float, cz: float, draw_distance: float):
    """Per (object, column) pair: the rows it covers and how it is hit. Returns a dict of
    pair arrays (``o`` object, ``col``, ``r0``, ``r1`` row span, ``tn`` / ``tf`` forward
    depths where the column's ray enters / leaves the footprint, ``nx``, ``nz`` camera-frame
    normal at the entry, ``along`` the entry point along the face, ``v0``, ``v1`` the
    span's exact ends) for the pairs covering at least one row, or None."""
    c, s = math.cos(yaw), math.sin(yaw)
    dx, dz = obj.x - cx, obj.z - cz
    xc, zc = c * dx - s * dz, s * dx + c * dz  # object centres in camera (x, z)
    o, col = _column_pairs(obj, cam, xc, zc, draw_distance)
    if not len(o):
        return None
    a = cam.a[col]
    kind = obj.kind[o]
    hx, hz, yt, yb = obj.hx[o], obj.hz[o], obj.y_top[o], obj.y_bot[o]
    X, Zc = xc[o], zc[o]
    round_ = kind != PRISM
    # prisms: slab test in the box's frame (ray (a t, t): t is the forward depth)
    phi = obj.yaw[o] - yaw
    cp, sp = np.cos(phi), np.sin(phi)
    ox, oz = -X * cp + Zc * sp, -X * sp - Zc * cp
    dxl, dzl = a * cp - sp, a * sp + cp
    dxs = np.where(np.abs(dxl) < 1e-12, 1e-12, dxl)
    dzs = np.where(np.abs(dzl) < 1e-12, 1e-12, dzl)
    tx1, tx2 = (-hx - ox) / dxs, (hx - ox) / dxs
    tz1, tz2 = (-hz - oz) / dzs, (hz - oz) / dzs
    txn, tzn = np.minimum(tx1, tx2), np.minimum(tz1, tz2)
    tn = np.maximum(txn, tzn)
    tf = np.minimum(np.maximum(tx1, tx2), np.maximum(tz1, tz2))
    valid = tn < tf
    xface = txn > tzn
    nlx = np.where(xface, -np.sign(dxl), 0.0)
    nlz = np.where(xface, 0.0, -np.sign(dzl))
    nx, nz = nlx * cp + nlz * sp, -nlx * sp + nlz * cp
    along = np.where(xface, oz + tn * dzl, ox + tn * dxl)  # where on the face (windows)
    if round_.any():  # cylinders and ellipsoids: a circle of radius hx around the centre
        r = np.nonzero(round_)[0]
        ar, Xr, Zr, hr = a[r], X[r], Zc[r], hx[r]
        A = 1 + ar * ar
        B = ar * Xr + Zr
        disc = B * B - A * (Xr * Xr + Zr * Zr - hr * hr)
        sq = np.sqrt(np.maximum(disc, 0))
        tn[r], tf[r] = (B - sq) / A, (B + sq) / A
        valid[r] = disc > 0
        tnr = np.maximum(tn[r], NEAR)
        nx[r], nz[r] = (ar * tnr - Xr) / hr, (tnr - Zr) / hr
    valid &= tf > NEAR
    tnn = np.maximum(tn, NEAR)
    # rows covered: v = cy + f y / t over t in [tn, tf] and y in [yt, yb]
    with np.errstate(divide="ignore", invalid="ignore"):
        v0 = cam.cy + cam.f * np.minimum(yt / tnn, yt / tf)
        v1 = cam.cy + cam.f * np.maximum(yb / tnn, yb / tf)
        e = np.nonzero(kind == ELLIPSOID)[0]
        if len(e):  # the silhouette of the ellipsoid's cross-section in the column's vertical plane
            ra = np.sqrt(1 + a[e] ** 2)
            ry = (yb[e] - yt[e]) / 2
            k = hx[e] / ry  # scale y so the cross-section is a circle of radius rp
            lc = ra * (tn[e] + tf[e]) / 2  # the chord's middle, horizontal distance
            rp = ra * (tf[e] - tn[e]) / 2  # the cross-section's horizontal semi-axis
            q = lc * lc - rp * rp
            yk = (yb[e] + yt[e]) / 2 * k
            root = np.sqrt(np.maximum(q + yk * yk, 0))
            v0[e] = cam.cy + cam.f * ra * (yk * lc - rp * root) / (q * k)
            v1[e] = cam.cy + cam.f * ra * (yk * lc + rp * root) / (q * k)
            valid[e] &= q > 1e-6
    valid &= np.isfinite(v0) & np.isfinite(v1)
    v0 = np.where(valid, v0, 0.0)
    v1 = np.where(valid, v1, 0.0)
    r0 = np.clip(np.ceil(v0), 0, cam.Hs).astype(np.int64)
    r1 = np.clip(np.ceil(v1), 0, cam.Hs).astype(np.int64)
    keep = np.nonzero(r1 > r0)[0]
    if not len(keep):
        return None
    return {"o": o[keep], "col": col[keep], "r0": r0[keep], "r1": r1[keep], "tn": tnn[keep], "tf": tf[keep],
            "nx": nx[keep], "nz": nz[keep], "along": along[keep], "v0": v0[keep], "v1": v1[keep],
            "kind": kind[keep], "yt": yt[keep], "yb": yb[keep]}


def objects_layer(obj: Objects, weather: Weather, cam: Camera, yaw: float, cx: float, cz: float, bg: np.ndarray,
                  draw_distance: float, ground_depth: np.ndarray):
    """The visible object pixels: (flat indices into [Hs * Ws], channel-first colours [3, n]
    float32) after a z-buffer against each other and the ground (``ground_depth`` [Hs * Ws]
    float64 forward depth, inf where there is none); ``bg`` [3, Hs, Ws]."""
    none = np.zeros(0, np.int64), np.zeros((3, 0), np.float32)
    if not len(obj):
        return none
    sp = _spans(obj, cam, yaw, cx, cz, draw_distance)
    if sp is None:
        return none
    n = sp["r1"] - sp["r0"]
    p = np.repeat(np.arange(len(n)), n)  # pair of every covered pixel
    first = np.cumsum(n) - n
    rows = np.repeat(sp["r0"] - first, n) + np.arange(int(n.sum()))
    flat = rows * cam.Ws + sp["col"][p]
    # per-pixel depth: the side's entry depth, or where the ray crosses a prism's top / bottom
    bpx = cam.b[rows]
    tp, yt, yb, kp = sp["tn"][p], sp["yt"][p], sp["yb"][p], sp["kind"][p]
    y_front = bpx * tp
    above, below = y_front < yt, y_front > yb
    depth = tp.copy()
    cap = np.nonzero((above | below) & (kp != ELLIPSOID))[0]
    depth[cap] = np.where(above[cap], yt[cap], yb[cap]) / bpx[cap]  # bpx != 0 there: the cap is in view
    e = np.nonzero(kp == ELLIPSOID)[0]
    u = None
    if len(e):  # ellipsoid: row position in the silhouette, -1 top .. 1 bottom; rounder depth
        pe = p[e]
        v0e, v1e = sp["v0"][pe], sp["v1"][pe]
        u = np.clip(2 * (rows[e] - v0e) / np.maximum(v1e - v0e, 1e-6) - 1, -1, 1)
        mid = (sp["tn"][pe] + sp["tf"][pe]) / 2
        depth[e] = tp[e] + (mid - tp[e]) * (1 - np.sqrt(1 - u * u))
    # z-buffer: nearest wins (ties by pair order), and only in front of the ground
    key = depth + p * 1e-7
    zbuf = ground_depth.copy()
    np.minimum.at(zbuf, flat, key)
    win = np.nonzero(zbuf[flat] == key)[0]
    if not len(win):
        return none
    p, rows, flat, depth, bpx = p[win], rows[win], flat[win], depth[win], bpx[win]
    above, below, kp = above[win], below[win], kp[win]
    oi = sp["o"][p]
    cols = sp["col"][p]
    # normals (camera frame): side from the pair, caps up / down, ellipsoid from the row too
    cap = (above | below) & (kp != ELLIPSOID)
    nxp = np.where(cap, 0.0, sp["nx"][p])
    nzp = np.where(cap, 0.0, sp["nz"][p])
    nyp = np.where(cap, np.where(above, -1.0, 1.0), 0.0)
    ue = None
    if u is not None:
        inv = np.full(len(key), -1)
        inv[e] = np.arange(len(e))
        sel = np.nonzero(kp == ELLIPSOID)[0]
        ue = u[inv[win[sel]]]
        horiz = np.sqrt(1 - ue * ue)
        nxp[sel], nzp[sel], nyp[sel] = nxp[sel] * horiz, nzp[sel] * horiz, ue
    c, s = math.cos(yaw), math.sin(yaw)
    light = _lighting(weather, nxp * c + nzp * s, nyp, -nxp * s + nzp * c)
    if weather.headlights:
        light += _headlight(depth.astype(np.float32), cam.a[cols].astype(np.float32)) * np.float32(0.8)
    mat = obj.material[oi]
    base = np.ascontiguousarray(obj.colour.T)[:, oi]  # [3, n]
    tint = _rgb(weather.tint)
    colour = base * (light * tint)
    bld = np.nonzero((mat == BUILDING) & ~cap)[0]
    if len(bld):
        hgt = CAMERA_HEIGHT - bpx[bld] * depth[bld]
        top = CAMERA_HEIGHT - obj.y_top[oi[bld]]
        fp = depth[bld] / cam.f * 1.5 + 1e-3
        along = sp["along"][p[bld]] + 0.3
        glass = (_dashes(hgt - 0.9, 3.2, 1.5, fp) * ((hgt > 1.0) & (hgt < top - 0.5)) * _dashes(along, 2.8, 1.4, fp))
        lb = light[bld]
        if weather.headlights:  # some windows lit at night
            cell = np.floor((hgt - 0.9) / 3.2) * 7.1 + np.floor(along / 2.8) * 3.3 + oi[bld] * 1.7
            lit = ((np.sin(cell * 12.9898) * 43758.5453) % 1.0 < 0.4).astype(np.float32)
            colour[:, bld] = (colour[:, bld] * (1 - glass) + glass * (_rgb(_GLASS) * (lb * 0.6)
                                                                     + _rgb(_WINDOW_LIGHT) * (lit * 0.5)))
        else:
            colour[:, bld] = colour[:, bld] * (1 - 0.45 * glass) + (0.45 * glass * lb) * (_rgb(_GLASS) * tint)
    if ue is not None:
        colour[:, sel] *= (1.0 - 0.06 * (ue + 1)).astype(np.float32)  # foliage a little darker underneath
    glow = np.nonzero((mat == EMISSIVE) | ((mat == LAMP) & weather.headlights))[0]
    if len(glow):
        colour[:, glow] = base[:, glow]
    dist = depth.astype(np.float32) * cam.ray_len.reshape(-1)[flat]
    colour = _atmosphere(colour, dist, bg.reshape(3, -1)[:, flat], weather, draw_distance)
    return flat, colour.astype(np.float32)


# ----------------------------------------------------------------------------------
# a view
# ----------------------------------------------------------------------------------
def rain_streaks(image: np.ndarray, seed: int, key: int, count: int = 40) -> None:
    """Draw thin, faint, slanted rain streaks (deterministic in seed and frame ``key``) into
    a supersampled channel-first image [3, Hs, Ws] float32, in place."""
    Hs, Ws = image.shape[1:]
    rng = stream_rng(seed, _RAIN, key)
    x0 = rng.uniform(0, Ws, count)
    y0 = rng.uniform(-0.2 * Hs, Hs, count)
    length = rng.integers(Hs // 16 + 2, Hs // 6 + 3, count)
    first = np.cumsum(length) - length
    which = np.repeat(np.arange(count), length)
    step = np.arange(int(length.sum())) - first[which]
    rows = np.floor(y0[which] + step).astype(np.int64)
    cols = np.floor(x0[which] + 0.18 * step).astype(np.int64)
    ok = (rows >= 0) & (rows < Hs) & (cols >= 0) & (cols < Ws)
    flat = rows[ok] * Ws + cols[ok]
    im = image.reshape(3, -1)
    im[:, flat] = im[:, flat] * np.float32(0.78) + _rgb(_RAIN_COLOUR) * np.float32(0.22)


def render_view(world: World, objects: Objects, weather, yaw: float, x: float, z: float, height: int = 64,
                width: int = 112, supersample: int = 2, key: int = 0, cam: Camera | None = None) -> np.ndarray:
    """One view: the camera at world (x, 0, z) with yaw ``yaw`` (rad, 0 = looking along +z,
    + = turned right), seeing the world's ground and ``objects`` (static and moving, already
    placed) in ``weather`` (name, index or :class:`Weather`). ``key`` (the frame index in the
    drive) seeds the rain streaks. Returns uint8 [height, width, 3] RGB."""
    wx = weather_preset(weather)
    cam = cam or Camera(height, width, supersample)
    draw = min(DRAW_DISTANCE, 7.0 * wx.haze_distance)
    img = background(world, wx, cam, yaw)
    bg = img.copy()
    r0, g = ground(world, wx, cam, yaw, x, z, bg, draw)
    img[:, r0:] = g
    gdepth = np.full((cam.Hs, cam.Ws), np.inf)
    if r0 < cam.Hs:
        gdepth[r0:] = (CAMERA_HEIGHT / cam.b[r0:])[:, None]
    flat, colour = objects_layer(objects, wx, cam, yaw, x, z, bg, draw, gdepth.reshape(-1))
    img.reshape(3, -1)[:, flat] = colour
    if wx.rain:
        rain_streaks(img, world.seed, key)
    small = downsample(img, cam.ss)
    small *= np.float32(255.0)
    small += np.float32(0.5)
    return np.clip(small, 0, 255, out=small).astype(np.uint8).transpose(1, 2, 0).copy()


def downsample(img: np.ndarray, ss: int) -> np.ndarray:
    """Supersampled channel-first [3, H * ss, W * ss] -> [3, H, W]. ss = 2: the separable
    tent (1, 3, 3, 1) / 8 over the four supersamples around each pixel centre (edges
    repeated), softer than a box so thin edges neither flicker nor carry needless high
    frequencies; other ss: the box mean of each ss x ss block. Pixel centres are kept."""
    if ss == 1:
        return img.copy()
    if ss != 2:
        out = img[:, ::ss, ::ss].copy()
        for i in range(ss):
            for j in range(ss):
                if i or j:
                    out += img[:, i::ss, j::ss]
        return out * np.float32(1 / (ss * ss))
    H, W = img.shape[1] // 2, img.shape[2] // 2
    p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    rows = (p[:, 0::2][:, :H] + p[:, 3::2][:, :H]) + np.float32(3) * (p[:, 1::2][:, :H] + p[:, 2::2][:, :H])
    p = np.pad(rows, ((0, 0), (0, 0), (1, 1)), mode="edge")
    out = (p[:, :, 0::2][:, :, :W] + p[:, :, 3::2][:, :, :W]) + np.float32(3) * (p[:, :, 1::2][:, :, :W]
                                                                                 + p[:, :, 2::2][:, :, :W])
    return out * np.float32(1 / 64)


__all__ = ["Camera", "DRAW_DISTANCE", "PROMPTS", "WEATHERS", "WEATHER_PRESETS", "Weather", "background", "ground",
           "downsample", "objects_layer", "rain_streaks", "render_view", "weather_preset"]


# ----------------------------------------------------------------------------------
# clips
# ----------------------------------------------------------------------------------
@dataclass
class WorldClip:
    """A rendered drive: ``frames`` uint8 [T, H, W, 3]; ground truth ``R`` [T, 3, 3] float64
    (world-from-camera, columns = camera x, y, z) and ``c`` [T, 3] float64 (camera centres
    (x, 0, z), m); ``K`` [3, 3] float64 (``default_intrinsics(H, W)``); ``attrs``: float64
    arrays [T] ``lane_offset`` (m, + = right of the centreline), ``heading`` (rad, ego yaw
    minus road yaw), ``curvature`` (1/m, + = road bends right), ``road_width`` (m), ``speed``
    (m/s), ``weather`` (index into WEATHERS); ``weather`` name and scene ``prompt``;
    ``trajectory`` [N, 2] ego points (x, z) in the camera-0 frame for ``warp_video``; the
    world ``seed``, ``start`` time (s), ``fps`` and frame ``times`` [T] (s)."""

    frames: np.ndarray
    R: np.ndarray
    c: np.ndarray
    K: np.ndarray
    attrs: dict
    weather: str
    prompt: str
    trajectory: np.ndarray
    seed: int
    start: float
    fps: float
    times: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


def _pick_weather(seed: int, weather) -> str:
    if weather is None:
        return WEATHERS[int(stream_rng(seed, _RAIN, -7).integers(len(WEATHERS)))]
    return weather_preset(weather).name if not isinstance(weather, Weather) else weather.name


def render_clip(seed: int, num_frames: int, height: int = 64, width: int = 112, weather=None, start: float = 0.0,
                fps: float = 16.0, traffic: bool = True, extra_objects: Objects | None = None, supersample: int = 2,
                trajectory_spacing: float = 0.5, world: World | None = None) -> WorldClip:
    """Render ``num_frames`` frames of the drive of world ``seed`` from time ``start`` (s) at
    ``fps``: frame k at t = start + k / fps. ``weather``: a name in WEATHERS, an index, or
    None (chosen from the seed). ``traffic``: oncoming cars. ``extra_objects``: more fixed
    objects (:func:`~engine.world.scene.box`, :func:`~engine.world.scene.marker`).
    ``trajectory_spacing``: seconds between the returned ego points (see
    :func:`~engine.world.drive.trajectory_points` for how closely their B-spline follows the
    poses). ``world``: a :class:`World` of that seed to reuse (its roadside cache). The same
    arguments give bit-identical output; frame k of a clip from ``start`` equals frame
    k + fps * start of the clip from 0 (same seed, weather and fps; fps * start whole). Returns a :class:`WorldClip`."""
    from engine.control.trajectory import default_intrinsics

    from .drive import Drive, ego_state, poses, trajectory_points
    from .scene import car_objects, traffic as traffic_near

    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if height < 2 or width < 2:
        raise ValueError(f"height and width must be at least 2, got {height}x{width}")
    world = world or World(seed)
    drive = Drive(world.seed, world.road)
    name = _pick_weather(world.seed, weather)
    wx = weather_preset(weather) if isinstance(weather, Weather) else WEATHER_PRESETS[name]
    times = start + np.arange(num_frames) / fps
    ego = ego_state(drive, times)
    R, c = poses(ego["yaw"], ego["x"], ego["z"])
    draw = min(DRAW_DISTANCE, 7.0 * wx.haze_distance)
    static = Objects.concat([world.roadside(float(ego["z"].min()) - 40.0, float(ego["z"].max()) + draw + 40.0),
                             extra_objects])
    static = static.take(np.argsort(static.z, kind="stable"))  # sorted by z: each frame takes a slice
    cars = traffic_near(world.seed, world.road, drive, float(times[0]), float(times[-1]), draw + 30.0) if traffic \
        else None
    cam = Camera(height, width, supersample)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i, t in enumerate(times):  # one frame at a time; each frame is vectorised
        lo, hi = np.searchsorted(static.z, [ego["z"][i] - 40.0, ego["z"][i] + draw + 40.0])
        objs = static.take(slice(lo, hi))
        if cars is not None:
            objs = Objects.concat([objs, car_objects(world.road, cars, float(t))])
        frames[i] = render_view(world, objs, wx, float(ego["yaw"][i]), float(ego["x"][i]), float(ego["z"][i]),
                                cam=cam, key=int(round(t * fps)))
    attrs = {k: ego[k].copy() for k in ("lane_offset", "heading", "curvature", "road_width", "speed")}
    attrs["weather"] = np.full(num_frames, float(WEATHERS.index(name)) if name in WEATHERS else -1.0)
    return WorldClip(frames=frames, R=R, c=c, K=default_intrinsics(height, width).numpy(), attrs=attrs, weather=name,
                     prompt=wx.prompt, trajectory=trajectory_points(drive, start, num_frames, fps, trajectory_spacing),
                     seed=world.seed, start=float(start), fps=float(fps), times=times)


def world_batch(seed: int, count: int, num_frames: int, height: int = 64, width: int = 112, max_start: float = 60.0,
                **clip_kwargs):
    """``count`` clips for training: clip i is world seed, start time (uniform in
    [0, max_start] s, on a frame) and weather all drawn from ``default_rng(seed)``. Returns
    (video torch float32 [count, 3, T, H, W] in [-1, 1], list of :class:`WorldClip`)."""
    import torch

    rng = np.random.default_rng(seed)
    fps = clip_kwargs.get("fps", 16.0)
    clips = []
    for _ in range(count):
        world_seed = int(rng.integers(0, 2 ** 62))
        start = float(rng.integers(0, int(max_start * fps) + 1)) / fps
        weather = WEATHERS[int(rng.integers(len(WEATHERS)))]
        kw = {"weather": weather, **clip_kwargs}
        clips.append(render_clip(world_seed, num_frames, height, width, start=start, **kw))
    u8 = np.stack([cl.frames for cl in clips])  # [B, T, H, W, 3]
    video = torch.from_numpy(u8).permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)
    return video.contiguous(), clips


__all__ += ["WorldClip", "render_clip", "world_batch"]
