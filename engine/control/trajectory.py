"""LongDWM warp-guided trajectory control: ego points -> B-spline -> camera poses ->
depth-free warping of the first frame -> Navier-Stokes inpainting.

- ``trajectory``: 2-D ego points (x, z) on the ground plane (y = 0), a few per clip, at
  uniform times; the first point is the ego position at frame 0.
- :func:`bspline_curve`: an interpolating (clamped, cubic where possible) B-spline through
  the points, sampled at one point per video frame.
- :func:`camera_poses`: per frame, the camera sits on the curve looking along its tangent:
  forward (camera z) = the curve's unit tangent, camera y = world y (0, 1, 0), camera
  x = y x z; the image plane is perpendicular to the curve.
- :func:`relative_poses`: R_t, T_t taking camera-0 coordinates to camera-t coordinates.
- :func:`project`: the depth-free warp: every pixel P_0 = (u, v, 1) of the first frame is
  placed at one constant depth d and re-projected, P_t ~ K (R_t K^-1 P_0 d + T_t).
- :func:`forward_warp`: splats the first frame's pixels to their nearest target pixel
  (z-buffer; ties go to the lower source index), leaving holes where nothing lands.
- :func:`inpaint`: fills the holes with OpenCV's Navier-Stokes inpainting (INPAINT_NS).

Everything is vectorised in torch (float64 geometry) except the inpainting.
"""

from __future__ import annotations

import numpy as np
import torch

from .validate import ControlError, as_float_tensor

DEFAULT_DEPTH = 10.0
INPAINT_RADIUS = 3


# ----------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------
def check_trajectory(points) -> torch.Tensor:
    """[N, 2] float64 (x, z) ego points, N >= 1, finite."""
    t = as_float_tensor("trajectory", points, ndim=2)
    if t.shape[1] != 2 or t.shape[0] < 1:
        raise ControlError(f"trajectory must be [N, 2] ego points (x, z) with N >= 1; got shape {tuple(t.shape)}")
    return t


def default_intrinsics(height: int, width: int) -> torch.Tensor:
    """A pinhole camera with focal length = image width (about 53 degrees horizontal field
    of view) and the principal point at the image centre (pixel centres at integers)."""
    return torch.tensor([[float(width), 0.0, (width - 1) / 2], [0.0, float(width), (height - 1) / 2], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)


def check_intrinsics(K, height: int, width: int) -> torch.Tensor:
    """K as [3, 3] float64 (also accepted: (fx, fy, cx, cy)); positive focal lengths, last
    row (0, 0, 1)."""
    if K is None:
        return default_intrinsics(height, width)
    k = as_float_tensor("intrinsics", K, ndim=(1, 2))
    if k.dim() == 1:
        if k.shape[0] != 4:
            raise ControlError(f"intrinsics must be a 3x3 matrix K or (fx, fy, cx, cy); got {k.shape[0]} numbers")
        fx, fy, cx, cy = k.tolist()
        k = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    if k.shape != (3, 3):
        raise ControlError(f"intrinsics must be a 3x3 matrix K; got shape {tuple(k.shape)}")
    if not torch.equal(k[2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)):
        raise ControlError(f"intrinsics K must have last row (0, 0, 1); got {k[2].tolist()}")
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ControlError(f"intrinsics K must have positive focal lengths; got fx={k[0, 0]:g}, fy={k[1, 1]:g}")
    return k


# ----------------------------------------------------------------------------------
# curve and poses
# ----------------------------------------------------------------------------------
def _basis(knots: np.ndarray, k: int, u: np.ndarray) -> np.ndarray:
    """B-spline basis functions of degree k at parameters u: [len(u), len(knots)-k-1]
    (Cox-de Boor; u == last knot belongs to the last non-empty interval)."""
    m = len(knots) - 1
    B = np.zeros((len(u), m))
    for i in range(m):
        B[:, i] = (knots[i] <= u) & (u < knots[i + 1])
    last = max(i for i in range(m) if knots[i] < knots[i + 1])
    B[u >= knots[-1], last] = 1.0
    for d in range(1, k + 1):
        Bn = np.zeros((len(u), m - d))
        for i in range(m - d):
            a, b = knots[i + d] - knots[i], knots[i + d + 1] - knots[i + 1]
            left = (u - knots[i]) / a * B[:, i] if a > 0 else 0.0
            right = (knots[i + d + 1] - u) / b * B[:, i + 1] if b > 0 else 0.0
            Bn[:, i] = left + right
        B = Bn
    return B


def bspline_curve(points, num: int) -> torch.Tensor:
    """Interpolating clamped B-spline (degree min(3, N-1)) through N points at uniform
    parameters, sampled at ``num`` uniform parameters: [num, D] float64. The curve passes
    through every point; its first and last samples are the first and last points."""
    P = check_trajectory(points).numpy()
    n = len(P)
    if num < 1:
        raise ControlError(f"a curve needs at least one sample, got {num}")
    if n == 1:
        return torch.as_tensor(np.repeat(P, num, 0))
    k = min(3, n - 1)
    u = np.linspace(0.0, 1.0, n)
    inner = [u[j + 1:j + k + 1].mean() for j in range(n - k - 1)]  # de Boor's knot averaging
    knots = np.concatenate([np.zeros(k + 1), inner, np.ones(k + 1)])
    ctrl = np.linalg.solve(_basis(knots, k, u), P)
    return torch.as_tensor(_basis(knots, k, np.linspace(0.0, 1.0, num)) @ ctrl)


def camera_poses(curve: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World-from-camera rotations R [T, 3, 3] (columns: camera x, y, z in world) and camera
    centres c [T, 3] (x, 0, z) for a ground curve [T, 2] of (x, z). The heading is the
    curve's tangent (central differences); where the curve does not move, the previous
    heading is kept (+z before any motion)."""
    xz = torch.as_tensor(curve, dtype=torch.float64)
    T = xz.shape[0]
    if T > 1:
        tan = torch.empty_like(xz)
        tan[1:-1] = (xz[2:] - xz[:-2]) / 2
        tan[0], tan[-1] = xz[1] - xz[0], xz[-1] - xz[-2]
    else:
        tan = torch.zeros_like(xz)
    norm = tan.norm(dim=1)
    scale = xz.abs().max().clamp_min(1.0)
    heading = torch.tensor([0.0, 1.0], dtype=torch.float64)
    fwd = torch.empty_like(xz)
    for t in range(T):  # T is small (video frames); carries the heading over standstills
        if norm[t] > 1e-9 * scale:
            heading = tan[t] / norm[t]
        fwd[t] = heading
    zero = torch.zeros(T, dtype=torch.float64)
    z_ax = torch.stack([fwd[:, 0], zero, fwd[:, 1]], 1)
    y_ax = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(T, 3)
    x_ax = torch.linalg.cross(y_ax, z_ax)
    R = torch.stack([x_ax, y_ax, z_ax], 2)
    c = torch.stack([xz[:, 0], zero, xz[:, 1]], 1)
    return R, c


def relative_poses(R: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R_t, T_t) mapping camera-0 coordinates to camera-t coordinates:
    X_t = R_t X_0 + T_t with R_t = Rw_t^T Rw_0 and T_t = Rw_t^T (c_0 - c_t)."""
    Rt = R.transpose(1, 2) @ R[0]
    Tt = (R.transpose(1, 2) @ (c[0] - c)[:, :, None])[:, :, 0]
    return Rt, Tt


def project(K: torch.Tensor, Rt: torch.Tensor, Tt: torch.Tensor, depth: float, height: int, width: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth-free re-projection of every first-frame pixel: P_t = K (R_t K^-1 P_0 d + T_t).
    Returns uv [T, H, W, 2] (column, row; pixel centres at integers) and the depth z
    [T, H, W] of each pixel in camera t."""
    K = torch.as_tensor(K, dtype=torch.float64)
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    P0 = torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3)  # [N, 3]
    rays = P0 @ torch.linalg.inv(K).T * float(depth)  # K^-1 P_0 d, [N, 3]
    X = torch.einsum("tij,nj->tni", Rt, rays) + Tt[:, None, :]  # [T, N, 3]
    P = X @ K.T
    z = P[..., 2]
    uv = P[..., :2] / z[..., None]
    return uv.reshape(-1, height, width, 2), z.reshape(-1, height, width)


def forward_warp(image: torch.Tensor, uv: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Splat image [C, H, W] to every frame: pixel (v, u) goes to the nearest target pixel
    (floor(x + 0.5)); a target hit several times takes the nearest source (smallest z), ties
    to the lowest source index; sources behind the camera (z <= 0) or off-image are
    dropped. Returns warped [T, C, H, W] (holes 0) and holes bool [T, H, W]."""
    C, H, W = image.shape
    T = uv.shape[0]
    N = H * W
    tu = torch.floor(uv[..., 0] + 0.5).reshape(T, N)
    tv = torch.floor(uv[..., 1] + 0.5).reshape(T, N)
    zz = z.reshape(T, N)
    valid = (zz > 1e-9) & torch.isfinite(tu) & torch.isfinite(tv) & (tu >= 0) & (tu < W) & (tv >= 0) & (tv < H)
    tgt = (torch.arange(T)[:, None] * N + tv.clamp(0, H - 1).long() * W + tu.clamp(0, W - 1).long())
    src = torch.arange(N).expand(T, N)
    zmin = torch.full((T * N,), float("inf"), dtype=zz.dtype).scatter_reduce(0, tgt[valid], zz[valid], "amin")
    win = valid & (zz == zmin[tgt])
    first = torch.full((T * N,), N, dtype=torch.long).scatter_reduce(0, tgt[win], src[win], "amin")
    filled = first < N
    flat = image.reshape(C, N)
    out = torch.zeros(C, T * N, dtype=image.dtype)
    out[:, filled] = flat[:, first[filled]]
    return out.reshape(C, T, H, W).transpose(0, 1).contiguous(), (~filled).reshape(T, H, W)


def inpaint(frames_u8: np.ndarray, holes: np.ndarray, radius: int = INPAINT_RADIUS) -> np.ndarray:
    """Fill holes of uint8 frames [T, H, W, 3] (bool holes [T, H, W]) with OpenCV's
    Navier-Stokes inpainting (cv2.INPAINT_NS). A frame without any visible pixel stays
    as it is (nothing to propagate)."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("trajectory warping needs OpenCV: pip install opencv-python-headless") from exc
    out = frames_u8.copy()
    for t in range(len(out)):
        m = holes[t]
        if m.any() and not m.all():
            out[t] = cv2.inpaint(np.ascontiguousarray(out[t]), m.astype(np.uint8) * 255, radius, cv2.INPAINT_NS)
    return out


def warp_video(first_frame: torch.Tensor, trajectory, num_frames: int, intrinsics=None, depth: float = DEFAULT_DEPTH
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The trajectory condition video: the first frame [3, H, W] (or [1, 3, H, W]) in
    [-1, 1] warped along the B-spline of ``trajectory`` to ``num_frames`` frames, holes
    inpainted. Returns (video [1, 3, T, H, W] float32 in [-1, 1], holes bool [T, H, W]
    before inpainting)."""
    img = torch.as_tensor(first_frame)
    if img.dim() == 4:
        img = img[0]
    if img.dim() != 3 or img.shape[0] != 3:
        raise ControlError(f"trajectory warping needs a first frame [3, H, W]; got {tuple(img.shape)}")
    H, W = img.shape[1:]
    traj = check_trajectory(trajectory)
    K = check_intrinsics(intrinsics, H, W)
    d = float(depth)
    if not np.isfinite(d) or d <= 0:
        raise ControlError(f"warp depth must be a positive finite number, got {depth!r}")
    curve = bspline_curve(traj, num_frames)
    Rt, Tt = relative_poses(*camera_poses(curve))
    uv, z = project(K, Rt, Tt, d, H, W)
    warped, holes = forward_warp(img.detach().float().cpu(), uv, z)
    u8 = ((warped.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    filled = inpaint(u8, holes.numpy())
    out = torch.from_numpy(filled).permute(3, 0, 1, 2).float() / 127.5 - 1  # [3, T, H, W]
    return out[None], holes


__all__ = ["DEFAULT_DEPTH", "bspline_curve", "camera_poses", "check_intrinsics", "check_trajectory",
           "default_intrinsics", "forward_warp", "inpaint", "project", "relative_poses", "warp_video"]
