"""LongVie 2 control inputs as the release (Vchitect/LongVie) prepares them
(engine.control.longvie): depth normalised ONCE over the whole video
(utils/depth_npy2mp4.py), 81-frame clips every 80 frames, inference.py's PIL resize, control
mp4s and cond.json; the old dense / sparse options of a strategy are refused with a pointer
to recipe='longvie2'. Also: validation of the remaining control inputs and the history
context overlap of the ar plan."""

import json
import zlib

import numpy as np
import pytest
from PIL import Image

import engine
from engine.control import (ControlError, load_cond_json, read_video, release_chunks, release_depth,
                            resize_frames)
from engine.control.setup import CONTROL_OPTIONS, LONGVIE_OPTIONS, ControlSetup
from engine.plans import build_plan


def release_depth_reference(depth):
    """Independent restatement of the release's utils/depth_npy2mp4.py (load_and_preprocess
    plus save_video's uint8 cast and 3 channels), for the whole video at once."""
    n_frames = len(depth)
    depth = depth[:1 + 80 * int((n_frames - 1) // 80)]
    p95, p5 = np.percentile(depth, [95, 5])
    depth = np.clip(depth, p5, p95)
    depth = (p95 - depth) / (p95 - p5)
    sub = (depth * 255).astype(np.uint8)
    return np.stack([sub] * 3, axis=-1)


def random_depth(rng, n, h=6, w=8, dtype=np.float32):
    """Positive depth with a scene that moves away over the video (later frames farther)."""
    ramp = np.linspace(1.0, 6.0, n)[:, None, None]
    return (ramp * rng.uniform(0.5, 40.0, (n, h, w)) + rng.uniform(0.1, 2.0)).astype(dtype)


# ----------------------------------------------------------------------------------
# release_depth / release_chunks
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n,kept", [(161, 161), (170, 161), (81, 81), (240, 161)])
def test_release_depth_equals_the_release_math(n, kept):
    rng = np.random.default_rng(1000 + n)
    depth = random_depth(rng, n)
    before = depth.copy()
    got = release_depth(depth)
    want = release_depth_reference(depth)
    assert np.array_equal(depth, before)  # the input is not modified
    assert got.dtype == np.uint8 and got.shape == (kept, 6, 8, 3) == want.shape
    assert np.array_equal(got, want)
    assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 0], got[..., 2])
    assert got.min() == 0 and got.max() == 255  # the 5th..95th percentile range spans 0..255
    # float64 input: the same math in float64
    d64 = depth.astype(np.float64)
    assert np.array_equal(release_depth(d64), release_depth_reference(d64))


def test_release_depth_near_is_bright_and_one_scale_for_the_whole_video():
    rng = np.random.default_rng(7)
    depth = random_depth(rng, 161, 5, 7)
    out = release_depth(depth)
    # near = bright: the value never increases with depth, nearest pixel 255, farthest 0
    flat_d, flat_v = depth.ravel(), out[..., 0].ravel().astype(int)
    order = np.argsort(flat_d, kind="stable")
    assert (np.diff(flat_v[order]) <= 0).all()
    assert flat_v[flat_d.argmin()] == 255 and flat_v[flat_d.argmax()] == 0
    p95, p5 = np.percentile(depth, [95, 5])
    assert (flat_v[flat_d <= p5] == 255).all() and (flat_v[flat_d >= p95] == 0).all()
    # the clips are cut from the once-normalised video: chunk 1 is NOT renormalised alone
    chunks = release_chunks(out)
    assert len(chunks) == 2
    assert np.array_equal(chunks[1], out[80:161])
    alone = release_depth(depth[80:161])
    assert alone.shape == chunks[1].shape and not np.array_equal(chunks[1], alone)
    assert np.array_equal(alone, release_depth_reference(depth[80:161]))
    # (the later, farther clip is darker on the shared scale than on its own)
    assert chunks[1].astype(float).mean() < alone.astype(float).mean()


def test_release_chunks_are_81_frames_every_80_with_one_frame_overlap():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (161, 4, 6, 3), dtype=np.uint8)
    chunks = release_chunks(frames)
    assert [len(c) for c in chunks] == [81, 81]
    assert np.array_equal(chunks[0], frames[0:81]) and np.array_equal(chunks[1], frames[80:161])
    assert np.array_equal(chunks[0][-1], chunks[1][0])  # the clip's first frame is the previous clip's last
    three = release_chunks(rng.normal(size=(241, 2)))
    assert len(three) == 3 and [c.shape for c in three] == [(81, 2)] * 3
    assert len(release_chunks(frames[:81])) == 1
    for n in (170, 80, 160, 1):
        with pytest.raises(ControlError, match=r"1 \+ 80 k frames.*got %d" % n):
            release_chunks(rng.normal(size=(n, 2)))


def _with_nan(rng):
    d = random_depth(rng, 161)
    d[rng.integers(0, 161), rng.integers(0, 6), rng.integers(0, 8)] = np.nan
    return d


def _with_inf(rng):
    d = random_depth(rng, 81)
    d[rng.integers(0, 81), rng.integers(0, 6), rng.integers(0, 8)] = np.inf
    return d


def _constant(rng):
    return np.full((81, 6, 8), rng.uniform(1.0, 50.0), dtype=np.float32)


def _constant_between_percentiles(rng):
    """Random outliers on < 5 % of the pixels at each end, one value everywhere else."""
    d = np.full((81, 6, 8), rng.uniform(5.0, 50.0))
    flat = d.reshape(-1)
    idx = rng.permutation(flat.size)
    k = flat.size // 40  # 2.5 % near, 2.5 % far
    flat[idx[:k]] = rng.uniform(0.1, 1.0, k)
    flat[idx[k:2 * k]] = rng.uniform(80.0, 90.0, k)
    return d


@pytest.mark.parametrize("make,match", [
    (_with_nan, "NaN or inf"),
    (_with_inf, "NaN or inf"),
    (_constant, "constant"),
    (_constant_between_percentiles, "constant between its 5th and 95th percentiles"),
    (lambda rng: random_depth(rng, 80), "80 frames; LongVie 2 clips take 81"),
    (lambda rng: random_depth(rng, 7), "7 frames; LongVie 2 clips take 81"),
    (lambda rng: random_depth(rng, 81)[..., None], r"depth must be a video \[T, H, W\]; got shape \(81, 6, 8, 1\)"),
    (lambda rng: random_depth(rng, 81)[0], r"depth must be a video \[T, H, W\]; got shape \(6, 8\)"),
])
def test_release_depth_refuses_bad_depth_with_a_clear_message(make, match):
    with pytest.raises(ControlError, match=match):
        release_depth(make(np.random.default_rng(zlib.crc32(match.encode()))))


# ----------------------------------------------------------------------------------
# resize, control videos, cond.json
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w", [(12, 16), (40, 50), (20, 30)])
def test_resize_frames_is_pil_resize_per_frame(h, w):
    rng = np.random.default_rng(h * w)
    frames = rng.integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    got = resize_frames(frames, h, w)
    want = np.stack([np.asarray(Image.fromarray(f).resize((w, h))) for f in frames])
    assert got.shape == (3, h, w, 3) and got.dtype == np.uint8
    assert np.array_equal(got, want)


def test_read_video_reads_back_a_control_mp4(tmp_path):
    from engine.video import Video

    rng = np.random.default_rng(11)
    # smooth random gray frames (upsampled coarse noise on 3 equal channels, as a release depth
    # mp4) so H.264's loss (yuv420p) stays small
    coarse = rng.integers(0, 256, (6, 4, 6), dtype=np.uint8)
    gray = np.stack([np.asarray(Image.fromarray(f).resize((48, 32), Image.BILINEAR)) for f in coarse])
    frames = np.repeat(gray[..., None], 3, axis=-1)
    path = tmp_path / "depth_00.mp4"
    Video(frames, fps=16).save(path)
    got = read_video(path)
    assert got.shape == (6, 32, 48, 3) and got.dtype == np.uint8
    err = np.abs(got.astype(float) - frames.astype(float))
    assert err.mean() < 3, err.mean()
    # not just any video: each frame is nearest to the frame written at its index
    dist = np.abs(got[:, None].astype(float) - frames[None].astype(float)).mean(axis=(2, 3, 4))
    assert (dist.argmin(axis=1) == np.arange(6)).all()
    assert np.array_equal(read_video(str(path)), got)  # str paths too
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")


def _clips(rng, n):
    return [{"text": f"prompt {rng.integers(1 << 30)}", "depth": f"clip{i}/depth_{i:02d}.mp4",
             "track": f"clip{i}/track_{i:02d}.mp4"} for i in range(n)]


def test_load_cond_json_resolves_paths_from_the_cwd_or_else_the_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    root = tmp_path / "example"
    clips = _clips(rng, 3)
    absolute = tmp_path / "elsewhere" / "track_abs.mp4"
    clips[2]["track"] = str(absolute)  # an absolute path is kept (even when missing)
    clips[1]["extra"] = float(rng.normal())  # other keys travel along
    for c in clips[:2]:
        for k in ("depth", "track"):
            (root / c[k]).parent.mkdir(parents=True, exist_ok=True)
            (root / c[k]).write_bytes(rng.bytes(8))
    f = root / "cond.json"
    f.write_text(json.dumps(clips))
    away = tmp_path / "cwd"
    away.mkdir()
    monkeypatch.chdir(away)  # not found from the cwd -> relative to the file
    got = load_cond_json(f)
    assert [c["text"] for c in got] == [c["text"] for c in clips] and got[1]["extra"] == clips[1]["extra"]
    for i in range(2):
        for k in ("depth", "track"):
            assert got[i][k] == str(root / clips[i][k])
    assert got[2]["depth"] == str(root / clips[2]["depth"])  # missing everywhere: still relative to the file
    assert got[2]["track"] == str(absolute)
    assert clips[0]["depth"] == "clip0/depth_00.mp4"  # (the loaded list is a copy)
    # found from the cwd (as the release opens them): kept as written
    monkeypatch.chdir(root)
    got = load_cond_json("cond.json")
    assert [(c["depth"], c["track"]) for c in got[:2]] == [(c["depth"], c["track"]) for c in clips[:2]]


def test_load_cond_json_errors(tmp_path):
    rng = np.random.default_rng(9)
    clips = _clips(rng, 3)
    del clips[1]["track"]
    f = tmp_path / "cond.json"
    f.write_text(json.dumps(clips))
    with pytest.raises(ControlError, match=r"clip 1 lacks \['track'\]"):
        load_cond_json(f)
    clips = _clips(rng, 2)
    del clips[0]["text"], clips[0]["depth"]
    f.write_text(json.dumps(clips))
    with pytest.raises(ControlError, match=r"clip 0 lacks \['text', 'depth'\]"):
        load_cond_json(f)
    f.write_text(json.dumps(["not a dict"]))
    with pytest.raises(ControlError, match=r"clip 0 lacks \['text', 'depth', 'track'\]"):
        load_cond_json(f)
    f.write_text(json.dumps(_clips(rng, 2))[:-7])  # cut short
    with pytest.raises(ControlError, match="not valid JSON"):
        load_cond_json(f)
    for bad in (_clips(rng, 1)[0], [], "text"):
        f.write_text(json.dumps(bad))
        with pytest.raises(ControlError, match="expected a non-empty list of clips"):
            load_cond_json(f)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cond_json(tmp_path / "missing" / "cond.json")


# ----------------------------------------------------------------------------------
# the old strategy options
# ----------------------------------------------------------------------------------
def _setup(**opts):
    m = engine.load_model("tiny-random", device="cpu")
    kw = dict(model=m, num_frames=9, height=32, width=32, latent_frames=3, first_frame_given=opts.pop("ff", True))
    return ControlSetup(opts, **kw)


def _old_option(name, rng):
    return {"depth": rng.uniform(1, 60, (9, 32, 32)), "point_map": rng.uniform(0, 1, (9, 32, 32, 3)),
            "control_branches": f"branches_{rng.integers(1 << 20)}.safetensors",
            "control_blocks": int(rng.integers(1, 3))}[name]


@pytest.mark.parametrize("name", ["depth", "point_map", "control_branches", "control_blocks"])
def test_control_setup_sends_the_old_longvie_options_to_the_recipe(name):
    assert set(LONGVIE_OPTIONS) == {"depth", "point_map", "control_branches", "control_blocks"}
    assert not set(LONGVIE_OPTIONS) & set(CONTROL_OPTIONS)
    rng = np.random.default_rng(len(name))
    with pytest.raises(ControlError, match=rf"\['{name}'\].*recipe='longvie2'"):
        _setup(**{name: _old_option(name, rng)})
    # also beside a valid control, and named all together
    with pytest.raises(ControlError, match=rf"\['{name}'\].*recipe='longvie2'"):
        _setup(waypoints=rng.normal(size=(9, 2, 2)), **{name: _old_option(name, rng)})
    with pytest.raises(ControlError, match=r"\['control_blocks', 'control_branches', 'depth', 'point_map'\].*"
                                           r"recipe='longvie2'"):
        _setup(**{k: _old_option(k, rng) for k in LONGVIE_OPTIONS})


@pytest.mark.parametrize("name", ["depth", "point_map", "control_branches", "control_blocks"])
def test_generate_sends_the_old_longvie_options_to_the_recipe(name):
    """engine.generate routes depth= & co. to ControlSetup (not to the strategy-option check,
    whose TypeError would not name the recipe)."""
    rng = np.random.default_rng(100 + len(name))
    with pytest.raises(ControlError, match=rf"\['{name}'\].*recipe='longvie2'"):
        engine.generate("tiny-random", num_frames=9, height=32, width=32, progress=False,
                        **{name: _old_option(name, rng)})


# ----------------------------------------------------------------------------------
# the remaining control inputs and the history context
# ----------------------------------------------------------------------------------
def test_history_context_clips_overlap_as_configured():
    plan = build_plan("ar", 12, chunk_frames=3, context="history", history_frames=2, unified_noise=True)
    jobs = plan.jobs
    for a, b in zip(jobs, jobs[1:]):  # a job's control slice = the control at its positions
        assert sorted(set(a.positions) & set(b.positions)) == list(b.context_positions) == list(a.positions[-2:])
    assert all(j.noise == "unified" for j in jobs)


@pytest.mark.parametrize("opts,match", [
    (dict(waypoints=np.zeros((8, 4, 2))), "covers 8 video frames"),
    (dict(waypoints=np.zeros((9, 4, 3))), r"\[T, N_w, 2\]"),
    (dict(cameras=np.ones((2, 16))), "2 view"),
    (dict(cameras=np.ones((1, 12))), "16 numbers"),
    (dict(cameras=np.zeros((1, 16))), "focal"),
    (dict(trajectory=np.zeros((3, 2)), ff=False), "pass first_frame"),
    (dict(trajectory=np.zeros((3, 2)), intrinsics=np.eye(2)), "3x3"),
    (dict(intrinsics=np.eye(3)), "pass trajectory"),
    (dict(views=0, waypoints=np.zeros((9, 2, 2))), "views must be"),
    (dict(views=2, waypoints=np.zeros((9, 2, 2))), r"first_frames=\[V, P, H, W, 3\] \(MiLA\), not first_frame"),
    (dict(views=2, trajectory=np.array([[0, 0], [0.2, 1.0], [0.5, 2.0]])), "waypoints and cameras only"),
    (dict(waypoints="abc"), "numbers"),
    (dict(views=1), "no control given"),
    (dict(wayponits=np.ones((9, 2, 2))), "unknown control option"),
])
def test_every_control_input_is_validated(opts, match):
    with pytest.raises(ControlError, match=match):
        _setup(**opts)


def test_generate_rejects_bad_controls_before_running():
    rng = np.random.default_rng(21)
    with pytest.raises(ValueError, match="covers 5 video frames"):
        engine.generate("tiny-random", num_frames=9, height=32, width=32, progress=False, waypoints=rng.normal(size=(5, 2, 2)))
    with pytest.raises(TypeError, match="unknown option"):
        engine.generate("tiny-random", num_frames=9, height=32, width=32, progress=False, wayponits=rng.normal(size=(9, 2, 2)))
