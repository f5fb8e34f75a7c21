"""LongVie 2 controls: global depth normalisation, overlapping clips with one scale,
history context overlap in the ar plan, and validation of every control input."""

import numpy as np
import pytest
import torch

import engine
from engine.control import ControlError, clip_ranges, cut_clips, normalize_depth, percentile
from engine.control.setup import ControlSetup
from engine.plans import build_plan


@pytest.mark.parametrize("n,q", [(1, 50.0), (7, 5.0), (1000, 95.0), (4097, 5.0)])
def test_percentile_matches_numpy(n, q):
    x = torch.randn(n, dtype=torch.float64) * 3 + 1
    assert abs(float(percentile(x, q)) - np.percentile(x.numpy(), q)) < 1e-12


def test_depth_normalised_once_over_the_whole_video_and_clips_share_the_scale():
    g = torch.Generator().manual_seed(0)
    T = 21
    ramp = torch.linspace(1, 80, T)[:, None, None]  # far frames later in the video
    depth = ramp * torch.rand(T, 16, 16, generator=g) + 0.5
    norm, (lo, hi) = normalize_depth(depth)
    assert lo == pytest.approx(np.percentile(depth.numpy(), 5)) and hi == pytest.approx(np.percentile(depth.numpy(), 95))
    assert float(norm.min()) == 0.0 and float(norm.max()) == 1.0
    want = ((depth.double().clamp(lo, hi) - lo) / (hi - lo)).float()
    assert torch.equal(norm, want)
    clips = cut_clips(norm, clip_frames=8, overlap=3)
    ranges = clip_ranges(T, 8, 3)
    assert [list(r) for r in ranges] == [list(range(0, 8)), list(range(5, 13)), list(range(10, 18)), list(range(15, 21))]
    for a, b in zip(ranges, ranges[1:]):
        assert len(set(a) & set(b)) == 3  # overlap as configured
    for r, c in zip(ranges, clips):
        assert torch.equal(c, want[r.start:r.stop])  # identical scale in every clip
        per_clip, _ = normalize_depth(depth[r.start:r.stop])
        assert not torch.equal(c, per_clip)  # (per-clip normalisation would differ)
    assert [len(r) for r in clip_ranges(5, 5, 0)] == [5]
    with pytest.raises(ControlError, match="overlap"):
        clip_ranges(10, 4, 4)


def test_setup_normalises_the_whole_video_before_any_clip():
    m = engine.load_model("tiny", device="cpu")
    g = torch.Generator().manual_seed(1)
    depth = torch.rand(17, 32, 32, generator=g) * 40 + 2
    s = ControlSetup({"depth": depth.numpy()}, model=m, num_frames=17, height=32, width=32, latent_frames=5,
                     first_frame_given=False)
    assert s.depth_scale == pytest.approx((np.percentile(depth.numpy(), 5), np.percentile(depth.numpy(), 95)))
    assert s.depth.shape == (17, 1, 32, 32) and float(s.depth.min()) == 0 and float(s.depth.max()) == 1
    # ar routes through the runtime with history frames (LongVie 2) and checks N_H
    ar_cache, opts = s.route("ar", True, {})
    assert not ar_cache and opts == {"context": "history", "history_frames": 16}
    with pytest.raises(ControlError, match="0..16"):
        s.route("ar", False, {"context": "history", "history_frames": 17})


def test_history_context_clips_overlap_as_configured():
    plan = build_plan("ar", 12, chunk_frames=3, context="history", history_frames=2, unified_noise=True)
    jobs = plan.jobs
    for a, b in zip(jobs, jobs[1:]):  # a job's control slice = the control at its positions
        assert sorted(set(a.positions) & set(b.positions)) == list(b.context_positions) == list(a.positions[-2:])
    assert all(j.noise == "unified" for j in jobs)


def _setup(**opts):
    m = engine.load_model("tiny", device="cpu")
    kw = dict(model=m, num_frames=9, height=32, width=32, latent_frames=3, first_frame_given=opts.pop("ff", True))
    return ControlSetup(opts, **kw)


@pytest.mark.parametrize("opts,match", [
    (dict(depth=np.ones((5, 32, 32))), "covers 5 video frames but the video needs 9"),
    (dict(depth=-np.ones((9, 32, 32))), "depth must be >= 0"),
    (dict(depth=np.full((9, 32, 32), np.inf)), "non-finite"),
    (dict(point_map=np.full((9, 32, 32, 3), 1.5)), r"point_map must be <= 1.0"),
    (dict(point_map=np.zeros((9, 32, 32, 2))), "3 channel"),
    (dict(waypoints=np.zeros((8, 4, 2))), "covers 8 video frames"),
    (dict(waypoints=np.zeros((9, 4, 3))), r"\[T, N_w, 2\]"),
    (dict(cameras=np.ones((2, 16))), "2 view"),
    (dict(cameras=np.ones((1, 12))), "16 numbers"),
    (dict(cameras=np.zeros((1, 16))), "focal"),
    (dict(trajectory=np.zeros((3, 2)), ff=False), "pass first_frame"),
    (dict(trajectory=np.zeros((3, 2)), intrinsics=np.eye(2)), "3x3"),
    (dict(intrinsics=np.eye(3)), "pass trajectory"),
    (dict(views=0, waypoints=np.zeros((9, 2, 2))), "views must be"),
    (dict(views=2, waypoints=np.zeros((9, 2, 2))), "first_frame is not supported"),
    (dict(views=2, depth=np.ones((9, 32, 32)), ff=False), "waypoints and cameras only"),
    (dict(control_branches="x.safetensors"), "without a control video"),
    (dict(depth=np.ones((9, 32, 32)), control_blocks=5), "control_blocks"),
    (dict(waypoints="abc"), "numbers"),
])
def test_every_control_input_is_validated(opts, match):
    with pytest.raises(ControlError, match=match):
        _setup(**opts)


def test_generate_rejects_bad_controls_before_running():
    with pytest.raises(ValueError, match="covers 5 video frames"):
        engine.generate("tiny", num_frames=9, height=32, width=32, progress=False, depth=np.ones((5, 32, 32)))
    with pytest.raises(TypeError, match="unknown option"):
        engine.generate("tiny", num_frames=9, height=32, width=32, progress=False, depht=np.ones((9, 32, 32)))
