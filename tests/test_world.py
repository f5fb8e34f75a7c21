"""The procedural driving world (engine.world): determinism, the renders against the
ground-truth poses (markers projected with K, R, c and with trajectory.py's relative_poses +
project), the poses against camera_poses(bspline_curve(trajectory points)), weathers,
attributes, long drives, the training batch and the CLI's mp4."""

import numpy as np
import pytest
import torch

from engine.control.trajectory import bspline_curve, camera_poses, project, relative_poses
from engine.world import (WEATHERS, Drive, Objects, World, ego_state, marker, poses, render_clip, to_world,
                          trajectory_points, world_batch)
from engine.world.scene import MAX_CURVATURE, WIDTH_RANGE

MAGENTA = np.array([255, 0, 255])


def _yaw(R):
    """World yaw of camera forward (columns: camera axes) [T]."""
    return np.arctan2(R[:, 0, 2], R[:, 2, 2])


def _found(frame, u, v, colour, tol=24):
    """Whether ``colour`` (RGB 0..255) is within ``tol`` (per channel) at some pixel within
    1 px of (u, v)."""
    H, W = frame.shape[:2]
    iu, iv = int(round(u)), int(round(v))
    patch = frame[max(iv - 1, 0):min(iv + 2, H), max(iu - 1, 0):min(iu + 2, W)].astype(int)
    return bool((np.abs(patch - colour).max(-1) <= tol).any())


def test_same_seed_same_clip_other_seed_differs():
    a = render_clip(3, 5, 32, 56, weather="day")
    b = render_clip(3, 5, 32, 56, weather="day")
    assert a.frames.dtype == np.uint8 and a.frames.shape == (5, 32, 56, 3)
    assert np.array_equal(a.frames, b.frames)
    for k in a.attrs:
        assert np.array_equal(a.attrs[k], b.attrs[k])
    assert np.array_equal(a.R, b.R) and np.array_equal(a.c, b.c) and np.array_equal(a.trajectory, b.trajectory)
    c = render_clip(4, 5, 32, 56, weather="day")
    assert np.abs(a.frames.astype(int) - c.frames.astype(int)).mean() > 3
    # a window of a drive is the same as the same frames of a longer clip
    late = render_clip(3, 3, 32, 56, weather="rain", start=0.25)
    full = render_clip(3, 7, 32, 56, weather="rain")
    assert np.array_equal(late.frames, full.frames[4:7]) and np.array_equal(late.c, full.c[4:7])


def test_markers_land_where_the_poses_project_them():
    """Unique-colour markers at known world points appear at K R^T (X - c) (within 1 px) in
    frames all along the drive."""
    seed, T = 2, 40
    world = World(seed)
    drive = Drive(seed, world.road)
    colours = [(1, 0, 1), (0, 1, 1), (1, 1, 0), (0, 0, 1)]
    spots = [(1.0, -1.5, 0.4), (1.6, 2.2, 0.9), (2.2, -3.0, 0.0), (2.5, 0.9, -1.0)]  # (time s, lateral m, world y)
    points = []
    for t, lat, y in spots:
        z = world.road.z_at(drive.progress(np.array([t])))[0]
        x, zz = world.road.point(z, lat)
        points.append(np.array([float(x), y, float(zz)]))
    extra = Objects.concat([marker(*p, size=0.8, colour=c) for p, c in zip(points, colours)])
    clip = render_clip(seed, T, 64, 112, weather="day", extra_objects=extra, traffic=False)
    plain = render_clip(seed, T, 64, 112, weather="day", traffic=False)
    checked = 0
    for i in range(0, T, 3):
        for X, c in zip(points, colours):
            cam = clip.R[i].T @ (X - clip.c[i])
            if cam[2] < 3:
                continue
            uvw = clip.K @ cam
            u, v = uvw[:2] / uvw[2]
            if not (2 <= u <= 109 and 2 <= v <= 61):
                continue
            rgb = np.array(c) * 255
            assert _found(clip.frames[i], u, v, rgb), (i, c, u, v)
            assert not _found(plain.frames[i], u, v, rgb), (i, c, u, v)  # the colour is the marker's own
            checked += 1
    assert checked >= 30


def test_relative_poses_and_project_apply_to_the_render():
    """A marker placed at depth d behind first-frame pixel (u0, v0) shows up where
    trajectory.py's relative_poses + project (the warp's geometry) send that pixel."""
    seed, T, H, W, d = 5, 33, 64, 112, 24.0
    base = render_clip(seed, 1, H, W, weather="day", traffic=False)
    K, R0, c0 = base.K, base.R[0], base.c[0]
    targets = [(40, 38), (72, 36), (56, 28)]
    extra = []
    for u0, v0 in targets:
        X = c0 + R0 @ (np.linalg.solve(K, [u0, v0, 1.0]) * d)
        extra.append(marker(*X, size=0.6))
    clip = render_clip(seed, T, H, W, weather="day", traffic=False, extra_objects=Objects.concat(extra))
    Rt, Tt = relative_poses(torch.from_numpy(clip.R), torch.from_numpy(clip.c))
    uv, z = project(torch.from_numpy(clip.K), Rt, Tt, d, H, W)
    checked = 0
    for t in range(0, T, 2):
        for u0, v0 in targets:
            u, v = uv[t, v0, u0].tolist()
            if z[t, v0, u0] > 3 and 2 <= u <= W - 3 and 2 <= v <= H - 3:
                assert _found(clip.frames[t], u, v, MAGENTA), (t, u0, v0, u, v)
                checked += 1
    assert checked >= 15


@pytest.mark.parametrize("seed,start,frames,spacing,pos_tol,yaw_tol", [
    (0, 0.0, 161, 0.5, 0.01, 0.5),
    (1, 31.0, 161, 0.5, 0.01, 0.5),
    (4, 80.0, 161, 0.5, 0.01, 0.5),
    (1, 0.0, 1921, 0.5, 0.01, 0.5),  # two minutes, lane changes included
    (1, 0.0, 1921, 1.0, 0.06, 2.0),  # 1 s spacing: worst at the spline's free end
])
def test_poses_follow_the_bspline_of_the_trajectory_points(seed, start, frames, spacing, pos_tol, yaw_tol):
    """camera_poses(bspline_curve(points, T)) (camera-0 frame), taken to world coordinates,
    matches the ground-truth poses: documented tolerance 1 cm / 0.5 degree at 0.5 s spacing."""
    world = World(seed)
    drive = Drive(seed, world.road)
    t = start + np.arange(frames) / 16
    e = ego_state(drive, t)
    R, c = poses(e["yaw"], e["x"], e["z"])
    pts = trajectory_points(drive, start, frames, 16.0, spacing)
    assert np.array_equal(pts[0], [0.0, 0.0]) and len(pts) == int(np.ceil((frames - 1) / 16 / spacing)) + 1
    Rb, cb = camera_poses(bspline_curve(pts, frames))
    Rw = R[0] @ Rb.numpy()
    cw = c[0] + cb.numpy() @ R[0].T
    assert np.abs(cw - c).max() < pos_tol
    assert np.abs(cw[:, 1]).max() == 0  # the camera stays at world y = 0
    dyaw = np.degrees(np.abs(np.angle(np.exp(1j * (_yaw(Rw) - e["yaw"])))))
    assert dyaw.max() < yaw_tol
    ej = ego_state(drive, start + np.linspace(0, (frames - 1) / 16, len(pts)))  # the points' times
    assert np.allclose(to_world(pts, R[0], c[0]), np.stack([ej["x"], ej["z"]], 1), atol=1e-9)
    # the camera looks along the path's tangent: camera_poses of the dense true path agrees
    Rd, cd = camera_poses(torch.from_numpy(c[:, [0, 2]]))
    assert np.degrees(np.abs(_yaw(Rd.numpy()[1:-1]) - e["yaw"][1:-1])).max() < 0.05
    assert np.allclose(cd.numpy(), c)
    # conventions: columns are camera x, y, z; y is world y (down); x = y cross z
    assert np.allclose(R[:, :, 1], [0, 1, 0])
    assert np.allclose(np.cross(R[:, :, 1], R[:, :, 2]), R[:, :, 0])


def test_clip_poses_and_intrinsics_are_the_trajectory_conventions():
    from engine.control.trajectory import default_intrinsics

    clip = render_clip(6, 4, 32, 56, weather="dusk", start=3.0)
    assert clip.R.shape == (4, 3, 3) and clip.c.shape == (4, 3) and clip.R.dtype == np.float64
    assert np.array_equal(clip.K, default_intrinsics(32, 56).numpy())
    e = ego_state(Drive(6, World(6).road), 3.0 + np.arange(4) / 16)
    R, c = poses(e["yaw"], e["x"], e["z"])
    assert np.array_equal(R, clip.R) and np.array_equal(c, clip.c)
    assert np.allclose(clip.R @ clip.R.transpose(0, 2, 1), np.eye(3)) and np.allclose(np.linalg.det(clip.R), 1)


def test_every_weather_renders_and_differs():
    clips = {w: render_clip(8, 2, 32, 56, weather=w) for w in WEATHERS}
    assert WEATHERS == ("day", "dusk", "night", "fog", "rain")
    prompts = {w: c.prompt for w, c in clips.items()}
    assert len(set(prompts.values())) == 5 and prompts["day"] == "a drive on a sunny day"
    for i, a in enumerate(WEATHERS):
        assert clips[a].weather == a and np.all(clips[a].attrs["weather"] == i)
        for b in WEATHERS[i + 1:]:
            diff = np.abs(clips[a].frames.astype(int) - clips[b].frames.astype(int)).mean()
            assert diff > 4, (a, b, diff)
    mean = {w: c.frames.mean() for w, c in clips.items()}
    assert mean["night"] < mean["dusk"] < mean["day"]
    from engine.world.render import WEATHER_PRESETS

    grey = np.array(WEATHER_PRESETS["fog"].haze) * 255
    in_fog = {w: (np.abs(c.frames[:, :16].astype(float) - grey).max(-1) < 25).mean() for w, c in clips.items()}
    assert in_fog["fog"] > 0.5 and max(v for w, v in in_fog.items() if w != "fog") < 0.1  # the far field is grey
    chosen = render_clip(8, 1, 32, 56)  # weather from the seed
    assert chosen.weather in WEATHERS


@pytest.mark.parametrize("seed", [0, 3, 9])
def test_attributes_are_plausible(seed):
    world = World(seed)
    e = ego_state(Drive(seed, world.road), np.arange(0, 120, 0.25))
    for k, v in e.items():
        assert np.isfinite(v).all(), k
    assert (e["road_width"] >= WIDTH_RANGE[0] - 1e-9).all() and (e["road_width"] <= WIDTH_RANGE[1] + 1e-9).all()
    assert (np.abs(e["lane_offset"]) < e["road_width"] / 2 - 0.5).all()
    assert (e["lane_offset"] > 0).mean() > 0.5  # mostly in the right lane
    assert (np.abs(e["heading"]) < np.radians(15)).all()
    assert (np.abs(e["curvature"]) <= MAX_CURVATURE + 1e-12).all()
    assert (e["speed"] > 7.5).all() and (e["speed"] < 14.5).all()
    clip = render_clip(seed, 3, 32, 56, weather="fog")
    assert set(clip.attrs) == {"lane_offset", "heading", "curvature", "road_width", "speed", "weather"}
    for v in clip.attrs.values():
        assert v.shape == (3,) and v.dtype == np.float64 and np.isfinite(v).all()


def test_long_drives_extend_as_far_as_needed():
    """The end of a 2-minute (1920-frame) drive and a drive ten minutes in render; the road
    and the roadside exist there."""
    end = render_clip(11, 3, 32, 56, weather="day", start=1917 / 16)
    far = render_clip(11, 2, 32, 56, weather="night", start=600.0)
    assert end.frames.shape == (3, 32, 56, 3) and far.frames.shape == (2, 32, 56, 3)
    assert end.c[0, 2] > 900 and far.c[0, 2] > 4000
    assert end.frames.std() > 10 and far.frames.std() > 3
    world = World(11)
    assert len(world.roadside(far.c[0, 2], far.c[0, 2] + 200)) > 10


def test_world_batch():
    video, clips = world_batch(1, 2, 3, 32, 56)
    assert video.shape == (2, 3, 3, 32, 56) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    again, _ = world_batch(1, 2, 3, 32, 56)
    assert torch.equal(video, again)
    first = torch.from_numpy(clips[0].frames).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert torch.allclose(video[0], first)
    assert clips[0].seed != clips[1].seed


def test_cli_writes_a_readable_mp4(tmp_path, capsys):
    from engine.cli import main
    from engine.video import available_backends

    if not available_backends():
        pytest.skip("no mp4 writer backend (PyAV or imageio-ffmpeg)")
    imageio = pytest.importorskip("imageio.v3")
    out = tmp_path / "clip.mp4"
    assert main(["world", "--out", str(out), "--seed", "2", "--frames", "9", "--height", "32", "--width", "56",
                 "--weather", "rain"]) == 0
    assert "wrote" in capsys.readouterr().out
    frames = imageio.imread(out)
    assert frames.shape == (9, 32, 56, 3)
    expected = render_clip(2, 9, 32, 56, weather="rain").frames
    assert np.abs(frames.astype(float) - expected).mean() < 8  # H.264 at crf 18


def test_trajectory_points_drive_warp_video():
    """A clip's first frame and ego points are what warp_video takes."""
    from engine.control.trajectory import warp_video

    clip = render_clip(9, 17, 32, 56, weather="day")
    first = torch.from_numpy(clip.frames[0]).permute(2, 0, 1).float() / 127.5 - 1
    video, holes = warp_video(first, clip.trajectory, len(clip))
    assert video.shape == (1, 3, 17, 32, 56) and holes.shape == (17, 32, 56)
    assert torch.allclose(video[0, :, 0], first, atol=1 / 127.5)  # frame 0 is the first frame itself
    assert holes[-1].any() and not holes[0].any()  # driving forward opens holes at the borders
