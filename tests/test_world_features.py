"""engine.world.features (the world's feature net, the Fréchet distance) and the helpers of
bench/quality.py on two tiny generated videos (the benchmark itself is not run here)."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.world.features import (DEFAULT_PATH, EVAL_SEED_LIMIT, FEATURE_DIM, REGRESSION, FeatureNet,
                                   check_eval_seeds, features, frechet_distance, heldout_world_seeds,
                                   load_feature_net, predict_attributes, save_feature_net,
                                   train_feature_net, train_world_seeds)

ROOT = Path(__file__).resolve().parents[1]


def _quality():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = mod
    spec.loader.exec_module(mod)
    return mod


def _white(n, d, seed=0):
    """n samples in d dims whose sample mean is exactly 0 and unbiased covariance exactly I."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    x -= x.mean(0)
    L = np.linalg.cholesky(np.cov(x, rowvar=False))
    return x @ np.linalg.inv(L).T


# ----------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_of_a_set_with_itself_is_zero():
    a = np.random.default_rng(1).normal(size=(300, 16)) @ np.random.default_rng(2).normal(size=(16, 16))
    assert abs(frechet_distance(a, a)) < 1e-6
    assert frechet_distance(a, a.copy()) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_grows_with_the_mean_shift_squared():
    a = np.random.default_rng(3).normal(size=(200, 8))
    for shift in (0.5, 1.0, 2.0):
        m = np.full(8, shift)
        assert frechet_distance(a, a + m) == pytest.approx(8 * shift ** 2, rel=1e-6, abs=1e-6)


def test_frechet_distance_hand_example_known_gaussians():
    """N(0, I) vs N(m, diag(s^2)): FD = |m|^2 + sum (1 - s)^2 (tr(I + S^2 - 2 S))."""
    x = _white(500, 3)
    assert np.allclose(np.cov(x, rowvar=False), np.eye(3)) and np.allclose(x.mean(0), 0)
    s, m = np.array([0.5, 1.0, 2.0]), np.array([1.0, -2.0, 0.0])
    y = x * s + m
    expected = float(m @ m + np.sum((1 - s) ** 2))  # 5 + 0.25 + 0 + 1 = 6.25
    assert expected == 6.25
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(y, x) == pytest.approx(expected, rel=1e-8)  # symmetric


def test_frechet_distance_guards():
    a = np.random.default_rng(4).normal(size=(10, 32))  # fewer samples than dims: singular covariances
    b = np.random.default_rng(5).normal(size=(12, 32))
    fd = frechet_distance(a, b)
    assert math.isfinite(fd) and fd >= 0
    with pytest.raises(ValueError):
        frechet_distance(a[:1], b)
    with pytest.raises(ValueError):
        frechet_distance(a, b[:, :5])
    with pytest.raises(ValueError):
        frechet_distance(np.full((4, 2), np.nan), b[:, :2])


def test_seed_ranges_are_disjoint():
    tr, ho = train_world_seeds(0, 1000), heldout_world_seeds(0, 1000)
    assert not set(tr) & set(ho) and tr.min() >= EVAL_SEED_LIMIT and ho.min() >= EVAL_SEED_LIMIT
    assert not set(train_world_seeds(1, 10)) & set(tr)
    check_eval_seeds([0, 1000, EVAL_SEED_LIMIT - 1])
    with pytest.raises(ValueError):
        check_eval_seeds([int(tr[0])])


# ----------------------------------------------------------------------------- the network
def test_feature_net_shapes():
    torch.manual_seed(0)
    net = FeatureNet().eval()
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 112, 3), dtype=np.uint8)
    emb, reg, logits = net(FeatureNet.prepare(frames))
    assert emb.shape == (3, FEATURE_DIM) and reg.shape == (3, 3) and logits.shape == (3, 5)
    f = features(net, frames, batch=2)
    assert f.shape == (3, FEATURE_DIM) and f.dtype == np.float64
    assert np.allclose(f, emb.detach().double().numpy(), atol=1e-6)
    p = predict_attributes(net, frames)
    for k in REGRESSION:
        assert p[k].shape == (3,) and p[k].dtype == np.float64
    assert p["weather"].shape == (3,) and p["weather_probs"].shape == (3, 5)
    assert np.allclose(p["weather_probs"].sum(1), 1)
    with pytest.raises(ValueError):
        features(net, frames[..., :2])


def test_two_step_training_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)

    def fake(n):  # random frames and targets: only the mechanics are under test here
        return rng.integers(0, 256, (n, 32, 56, 3), dtype=np.uint8), {
            **{k: rng.normal(size=n) for k in REGRESSION}, "weather": rng.integers(0, 5, n).astype(float)}

    train, val = fake(6), fake(4)
    net, rep = train_feature_net(7, 2, batch=4, widths=(8, 8, 16, 16, 16), feature_dim=16, data=(train, val),
                                 verbose=False)
    assert rep["steps"] == 2 and len(rep["history"]) == 2
    assert set(rep["heldout_metrics"]) >= {"weather_accuracy", "lane_offset_r2", "heading_r2", "curvature_r2"}
    assert np.allclose(net.target_mean.numpy(), [train[1][k].mean() for k in REGRESSION])
    save_feature_net(net, tmp_path / "fn", rep)
    net2 = load_feature_net(tmp_path / "fn")
    assert net2.widths == (8, 8, 16, 16, 16) and net2.feature_dim == 16
    assert np.array_equal(features(net, val[0]), features(net2, val[0]))
    assert (tmp_path / "fn" / "training.json").is_file()


@pytest.mark.skipif(not (DEFAULT_PATH / "model.safetensors").is_file(), reason="no shipped feature net")
def test_shipped_feature_net_loads_and_is_small():
    assert (DEFAULT_PATH / "model.safetensors").stat().st_size < 2_000_000
    net = load_feature_net()
    assert net.feature_dim == FEATURE_DIM and not net.training


# ----------------------------------------------------------------------------- bench helpers
@pytest.fixture(scope="module")
def tiny_videos():
    import engine

    model = engine.load_model("tiny", device="cpu")
    return model, [engine.generate(model, num_frames=9, height=64, width=112, seed=s, prompt="a drive on a sunny day",
                                   progress=False).frames for s in (0, 1)]


def test_quality_helpers_on_two_tiny_videos(tiny_videos):
    q = _quality()
    model, videos = tiny_videos
    assert all(v.shape == (9, 64, 112, 3) for v in videos)
    torch.manual_seed(0)
    net = FeatureNet().eval()
    ref = q.real_clips([1000, 1001], 8, "day", rng_seed=0)
    ref_metrics = [q.frame_metrics(net, c.frames) for c in ref]
    ref_feats = np.concatenate([m["features"] for m in ref_metrics])
    per_seed = [q.frame_metrics(net, v) for v in videos]
    for m in per_seed:
        assert m["features"].shape == (9, FEATURE_DIM) and m["mean_rgb"].shape == (9, 3)
        assert m["saturation"].shape == (9,) and m["sharpness"].shape == (9,) and (m["sharpness"] >= 0).all()
    rows = q.window_summary(per_seed, ref_feats, window=4)
    assert [(r["start_frame"], r["stop_frame"]) for r in rows] == [(0, 4), (4, 8)]
    for r in rows:
        assert r["fd"] >= 0 and r["fd_per_seed"]["n"] == 2
        assert r["fd_per_seed"]["min"] <= r["fd_per_seed"]["mean"] <= r["fd_per_seed"]["max"]
        assert r["sharpness"]["n"] == 2 and len(r["mean_rgb"]["mean"]) == 3
    fl = q.floor_fds([m["features"] for m in ref_metrics], ref_feats[:8])
    assert fl["sets"] == 2 and fl["pairs"]["n"] == 1 and fl["vs_reference"]["min"] == pytest.approx(0, abs=1e-6)
    st = q.reference_stats(ref_metrics)
    assert st["clips"] == 2
    mae = q.attribute_mae(net, videos[0], {"lane_offset": ref[0].attrs["lane_offset"].repeat(2),
                                           "heading": ref[0].attrs["heading"].repeat(2)}, window=3)
    assert len(mae["windows"]) == 3 and mae["overall"]["lane_offset_mae"] >= 0


def test_quality_statistics_and_vae_roundtrip(tiny_videos):
    q = _quality()
    model, videos = tiny_videos
    flat = np.full((2, 64, 112, 3), 128, np.uint8)
    stripes = flat.copy()
    stripes[:, :, ::2] = 0
    sh = q.sharpness(np.concatenate([flat, stripes]))
    assert sh[:2] == pytest.approx(0, abs=1e-10) and (sh[2:] > 1e-3).all()
    c = q.colour_stats(np.stack([flat[0], np.zeros_like(flat[0])]))
    assert np.allclose(c["mean_rgb"][0], 128 / 255, atol=1e-4) and c["saturation"].tolist() == [0.0, 0.0]
    v = videos[0]
    assert (q.psnr(v, v) == 100).all() and np.allclose(q.ssim(v, v), 1)
    noisy = np.clip(v.astype(int) + 10, 0, 255).astype(np.uint8)
    assert (q.psnr(v, noisy) < 40).all() and (q.ssim(v, noisy) < 1).all()
    from engine.inputs import resolve_components

    rec = q.vae_roundtrip(resolve_components(model).vae, v[:5], chunk=1)
    assert rec.shape == (5, 64, 112, 3) and rec.dtype == np.uint8
    assert q.windows(1921, 160)[-1] == (1760, 1920) and len(q.windows(1921, 160)) == 12
    tag, trained = q.model_label(model, "tiny")  # the embedded trained model
    assert tag == "tiny" and trained
    import engine

    tag, trained = q.model_label(engine.load_model("tiny-random", device="cpu"), "tiny-random")
    assert tag == "untrained-tiny-random" and not trained


def test_sharpness_fd_correlation_sign_and_guard():
    q = _quality()
    rng = np.random.default_rng(5)
    sharp = rng.uniform(1e-5, 1e-4, size=12)
    windows = [{"fd_per_seed": {"mean": float(1.0 / s)}, "sharpness": {"mean": float(s)}} for s in sharp]
    drift = {"ar": {"windows": windows[:6]}, "mila": {"windows": windows[6:]}}
    r = q.sharpness_fd_correlation(drift)
    assert r["windows"] == 12 and r["spearman"] == pytest.approx(-1.0)
    assert q.sharpness_fd_correlation({"ar": {"windows": windows[:2]}})["spearman"] is None
