"""Controls through engine.generate: every strategy runs with every control kind on the tiny
preset, the control changes the video, and the output is identical on 1 and 2 workers."""

import numpy as np
import pytest
import torch

import engine
from engine.control import split_views
from engine.video import read_video_frames
from golden_videos import controlled_model

SMALL = dict(height=32, width=32, progress=False, seed=4, prompt="x")
N = 13  # 4 latent frames

STRATEGIES = [
    ("ar", dict(chunk_frames=2)),
    ("ar-history", dict(chunk_frames=2, context="history", history_frames=1, unified_noise=True)),
    ("mmpl", dict(segment_frames=3, anchor_frames=1, midpoint=2)),
    ("longdwm", dict(keyframes=2, fps_ratio=3)),
    ("mila", dict(anchor_stride=3, anchors_per_rollout=2, clip_frames=2, history_frames=1)),
]


def _rng(seed=0):
    return np.random.default_rng(seed)


FIRST = _rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
CONTROLS = {
    "warp": dict(first_frame=FIRST, trajectory=np.array([[0, 0], [0.1, 0.6], [0.3, 1.2], [0.6, 1.8], [1.0, 2.3]]),
                 intrinsics=(32.0, 32.0, 15.5, 15.5), warp_depth=8.0),
    "mila": dict(waypoints=_rng(2).normal(size=(N, 3, 2)), cameras=np.abs(_rng(3).normal(size=(2, 16))) + 0.1,
                 views=2),
}
# (LongVie 2's depth / track controls run through recipe="longvie2", not a strategy: tests/test_control_longvie.py)


@pytest.fixture(scope="module")
def model():
    """A tiny model whose control layers are non-zero (so the controls matter)."""
    return controlled_model()


@pytest.mark.parametrize("kind", list(CONTROLS))
@pytest.mark.parametrize("name,opts", STRATEGIES, ids=[s[0] for s in STRATEGIES])
def test_every_strategy_with_every_control_is_deterministic_across_workers(model, name, opts, kind):
    strategy = name.split("-")[0]
    ctl = CONTROLS[kind]
    width = 32 * ctl.get("views", 1)
    one = engine.generate(model, num_frames=N, strategy=strategy, devices=["cpu"], **SMALL, **opts, **ctl)
    two = engine.generate(model, num_frames=N, strategy=strategy, devices=["cpu", "cpu"], shuffle=3, **SMALL,
                          **opts, **ctl)
    assert one.frames.shape == (N, 32, width, 3)
    assert np.array_equal(one.frames, two.frames), f"{name} with {kind}: 2 workers differ from 1"
    base_ctl = {k: v for k, v in ctl.items() if k in ("first_frame", "views")}
    if "views" in base_ctl:  # same multi-view run without waypoints: cameras alone still steer the views
        base_ctl["cameras"] = ctl["cameras"]
    plain = engine.generate(model, num_frames=N, strategy=strategy, devices=["cpu"], **SMALL, **opts, **base_ctl)
    assert not np.array_equal(plain.frames, one.frames), f"{name}: the {kind} control had no effect"


def test_zero_initialised_controls_reproduce_the_plain_video():
    m = engine.load_model("tiny-random", device="cpu")
    for strategy, opts in [("ar", {}), ("longdwm", dict(keyframes=2, fps_ratio=3))]:
        plain = engine.generate(m, num_frames=N, strategy=strategy, first_frame=FIRST, **SMALL, **opts)
        warp = {k: v for k, v in CONTROLS["warp"].items() if k != "first_frame"}
        for kind, ctl in [("warp", warp), ("waypoints", dict(waypoints=CONTROLS["mila"]["waypoints"]))]:
            v = engine.generate(m, num_frames=N, strategy=strategy, first_frame=FIRST, **SMALL, **opts, **ctl)
            assert np.array_equal(v.frames, plain.frames), f"{strategy}/{kind}: zero layers changed the video"


def test_warped_frames_saved_and_multiview_split(model, tmp_path):
    path = tmp_path / "warped.mp4"
    engine.generate(model, num_frames=N, **SMALL, **CONTROLS["warp"], save_warped=str(path))
    frames = read_video_frames(str(path))
    assert frames.shape == (N, 32, 32, 3)
    mv = engine.generate(model, num_frames=N, **SMALL, **CONTROLS["mila"])  # ar routed through the runtime
    views = split_views(mv, 2)
    assert len(views) == 2 and views[0].shape == (N, 32, 32, 3) and not np.array_equal(views[0], views[1])
    assert mv.stats.runtime.strategy == "ar" and len([j for j in mv.stats.jobs if j["kind"] == "chunk"]) == 2


def test_cli_takes_trajectory_and_saves_warped_frames(tmp_path):
    from PIL import Image

    from engine.cli import main

    Image.fromarray(FIRST).save(tmp_path / "first.png")
    rc = main(["generate", "--model", "tiny-random", "--num-frames", "9", "--height", "32", "--width", "32",
               "--first-frame", str(tmp_path / "first.png"), "--trajectory", "0,0;0.2,1;0.5,2",
               "--intrinsics", "32,32,15.5,15.5", "--save-warped", str(tmp_path / "w.mp4"),
               "--out", str(tmp_path / "o.mp4"), "--no-progress"])
    assert rc == 0 and read_video_frames(str(tmp_path / "w.mp4")).shape == (9, 32, 32, 3)
    assert main(["generate", "--model", "tiny-random", "--num-frames", "9", "--height", "32", "--width", "32",
                 "--trajectory", "0,0;0,1", "--out", str(tmp_path / "x.mp4"), "--no-progress"]) == 2
