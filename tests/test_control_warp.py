"""LongDWM warp-guided trajectory control: B-spline, poses, depth-free warp (against an
independent numpy projection), Navier-Stokes inpainting, validation."""

import numpy as np
import pytest
import torch

from engine.control import ControlError, bspline_curve, camera_poses, forward_warp, inpaint, project, relative_poses
from engine.control.trajectory import check_intrinsics, warp_video


def checkerboard(h, w, cell=4, seed=0):
    """[3, h, w] in [-1, 1]: a two-colour checkerboard with a little per-pixel colour, no
    pixel equal to the hole value 0."""
    yy, xx = np.mgrid[0:h, 0:w]
    board = ((yy // cell + xx // cell) % 2).astype(np.float64)
    rng = np.random.default_rng(seed)
    img = np.stack([0.8 * board - 0.4, 0.5 - 0.6 * board, 0.3 * board + 0.2]) + rng.uniform(0.02, 0.05, (3, h, w))
    return torch.from_numpy(img).float()


def numpy_warp(image, K, Rts, Tts, d):
    """Independent statement of the depth-free forward warp: loop over source pixels,
    P_t = K (R_t K^-1 [u, v, 1] d + T_t), nearest target pixel, z-buffer (strictly nearer
    wins, so ties keep the earliest source in row-major order)."""
    C, H, W = image.shape
    Kinv = np.linalg.inv(K)
    outs, holes = [], []
    for R, T in zip(Rts, Tts):
        out = np.zeros((C, H, W))
        zbuf = np.full((H, W), np.inf)
        for v in range(H):
            for u in range(W):
                X = R @ (Kinv @ np.array([u, v, 1.0]) * d) + T
                p = K @ X
                if p[2] <= 1e-9:
                    continue
                tu, tv = int(np.floor(p[0] / p[2] + 0.5)), int(np.floor(p[1] / p[2] + 0.5))
                if 0 <= tu < W and 0 <= tv < H and p[2] < zbuf[tv, tu]:
                    zbuf[tv, tu] = p[2]
                    out[:, tv, tu] = image[:, v, u]
        outs.append(out)
        holes.append(np.isinf(zbuf))
    return np.stack(outs), np.stack(holes)


def test_bspline_interpolates_and_is_linear_on_a_line():
    pts = np.array([[0.0, 0.0], [0.3, 1.0], [1.0, 2.2], [1.2, 2.9], [2.0, 4.0]])
    n = 5
    curve = bspline_curve(pts, 4 * (n - 1) + 1).numpy()  # uniform parameters: sample 4i is point i
    np.testing.assert_allclose(curve[::4], pts, atol=1e-12)
    line = np.stack([np.zeros(5), np.arange(5.0)], 1)
    np.testing.assert_allclose(bspline_curve(line, 17).numpy()[:, 1], np.linspace(0, 4, 17), atol=1e-12)
    assert bspline_curve(pts[:1], 6).shape == (6, 2) and bspline_curve(pts[:2], 3).numpy()[1].tolist() == [0.15, 0.5]


def test_camera_poses_follow_the_tangent():
    curve = bspline_curve(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), 9)  # heading 45 degrees
    R, c = camera_poses(curve)
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3, dtype=R.dtype).expand(9, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(9, dtype=R.dtype))
    s = 2 ** -0.5
    assert torch.allclose(R[:, :, 2], torch.tensor([s, 0.0, s], dtype=R.dtype).expand(9, 3), atol=1e-12)  # forward
    assert torch.allclose(R[:, :, 1], torch.tensor([0.0, 1.0, 0.0], dtype=R.dtype).expand(9, 3))  # camera y = world y
    assert torch.all(c[:, 1] == 0)


@pytest.mark.parametrize("traj", [np.zeros((5, 2)), np.zeros((1, 2)), np.array([[3.0, -2.0]] * 4)])
def test_zero_trajectory_is_the_identity_warp(traj):
    img = checkerboard(24, 32)
    video, holes = warp_video(img, traj, 9)
    assert video.shape == (1, 3, 9, 24, 32) and not holes.any()
    q = ((img.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1  # the uint8 round trip of the first frame
    for t in range(9):
        assert torch.allclose(video[0, :, t], q, atol=1e-6)


@pytest.mark.parametrize("d,dist", [(10.0, 2.0), (6.0, 1.5)])
def test_forward_translation_matches_numpy_projection(d, dist):
    H, W = 24, 32
    img = checkerboard(H, W, cell=3, seed=1)
    K = np.array([[30.0, 0, 15.25], [0, 28.0, 11.75], [0, 0, 1]])
    traj = np.stack([np.zeros(5), np.linspace(0, dist, 5)], 1)  # straight ahead along +z
    T = 5
    curve = bspline_curve(traj, T)
    Rt, Tt = relative_poses(*camera_poses(curve))
    z_t = np.linspace(0, dist, T)
    np.testing.assert_allclose(Rt.numpy(), np.broadcast_to(np.eye(3), (T, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(Tt.numpy(), np.stack([np.zeros(T), np.zeros(T), -z_t], 1), atol=1e-12)
    uv, z = project(torch.from_numpy(K), Rt, Tt, d, H, W)
    # the projection, point by point, against numpy
    Kinv = np.linalg.inv(K)
    for t in (1, T - 1):
        for (v, u) in [(0, 0), (5, 17), (23, 31), (12, 3)]:
            p = K @ (Kinv @ np.array([u, v, 1.0]) * d + np.array([0, 0, -z_t[t]]))
            np.testing.assert_allclose(uv[t, v, u].numpy(), p[:2] / p[2], rtol=0, atol=1e-9)
            assert abs(z[t, v, u].item() - p[2]) < 1e-9
    # a forward move scales the image about the principal point by d / (d - z)
    s = d / (d - z_t[-1])
    np.testing.assert_allclose(uv[-1, 7, 9].numpy(), [K[0, 2] + (9 - K[0, 2]) * s, K[1, 2] + (7 - K[1, 2]) * s],
                               atol=1e-9)
    warped, holes = forward_warp(img.double(), uv, z)
    want, want_holes = numpy_warp(img.double().numpy(), K, np.broadcast_to(np.eye(3), (T, 3, 3)),
                                  np.stack([np.zeros(T), np.zeros(T), -z_t], 1), d)
    assert np.array_equal(holes.numpy(), want_holes)
    np.testing.assert_array_equal(warped.numpy(), want)
    assert holes[-1].any()  # zooming in opens holes
    assert not holes[0].any() and torch.equal(warped[0], img.double())


def test_turning_trajectory_matches_numpy_warp():
    H, W = 16, 20
    img = checkerboard(H, W, cell=3, seed=2)
    K = check_intrinsics((22.0, 22.0, 9.5, 7.5), H, W)
    traj = np.array([[0.0, 0.0], [0.1, 0.8], [0.5, 1.5], [1.1, 2.0]])
    Rt, Tt = relative_poses(*camera_poses(bspline_curve(traj, 5)))
    uv, z = project(K, Rt, Tt, 8.0, H, W)
    warped, holes = forward_warp(img.double(), uv, z)
    want, want_holes = numpy_warp(img.double().numpy(), K.numpy(), Rt.numpy(), Tt.numpy(), 8.0)
    assert np.array_equal(holes.numpy(), want_holes) and holes[-1].any()
    np.testing.assert_array_equal(warped.numpy(), want)


def test_inpainting_leaves_no_holes():
    H, W = 24, 32
    img = checkerboard(H, W, cell=4)
    traj = np.stack([np.linspace(0, 0.8, 5), np.linspace(0, 2.5, 5)], 1)
    video, holes = warp_video(img, traj, 9, depth=6.0)
    assert holes.any()
    u8 = ((video[0].permute(1, 2, 3, 0) + 1) * 127.5).round().numpy().astype(np.uint8)  # [T, H, W, 3]
    lo = ((img.min() + 1) * 127.5).floor().item()
    for t in range(1, 9):
        filled = u8[t][holes[t].numpy()]
        if not len(filled):
            continue
        assert (filled.max(1) > 0).all(), "a hole kept the value 0"
        assert filled.min() >= lo - 2 and filled.max() <= 255
    # inpainting touches holes only
    frames = np.full((2, H, W, 3), 120, np.uint8)
    frames[:, 5:9, 6:12] = 0
    m = np.zeros((2, H, W), bool)
    m[:, 5:9, 6:12] = True
    out = inpaint(frames, m)
    assert (out[m] > 100).all() and np.array_equal(out[~m], frames[~m])


def test_trajectory_validation():
    img = checkerboard(16, 16)
    with pytest.raises(ControlError, match="non-finite"):
        warp_video(img, np.array([[0.0, 0.0], [np.nan, 1.0]]), 5)
    with pytest.raises(ControlError, match=r"\[N, 2\]"):
        warp_video(img, np.zeros((4, 3)), 5)
    with pytest.raises(ControlError, match="positive focal"):
        warp_video(img, np.zeros((4, 2)), 5, intrinsics=[[-1, 0, 8], [0, 10, 8], [0, 0, 1]])
    with pytest.raises(ControlError, match="last row"):
        warp_video(img, np.zeros((4, 2)), 5, intrinsics=np.eye(3) * 2)
    with pytest.raises(ControlError, match="depth"):
        warp_video(img, np.zeros((4, 2)), 5, depth=0)
