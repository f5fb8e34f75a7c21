"""The populating runtime on CPU worker threads: bit-identical videos for any worker count
and queue order, in-order streaming, failures that name the job, per-run statistics."""

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import engine
from engine.generation import GenerationError
from engine.plans import build_plan
from engine.video import read_video_frames
from helpers import Flaky

SMALL = dict(height=32, width=32, progress=False)

# (strategy, options, video frames): small enough for two CPU cores
CASES = [
    ("ar", dict(), 13),
    ("ar", dict(context="history", history_frames=3, sink_frames=1, unified_noise=True), 21),
    ("mmpl", dict(segment_frames=4, anchor_frames=1, midpoint=2), 33),
    ("mmpl", dict(segment_frames=6, anchor_frames=2, schedule="min_memory", noise_rho=0.3), 53),
    ("longdwm", dict(keyframes=3, fps_ratio=2), 25),
    ("mila", dict(anchor_stride=3, anchors_per_rollout=3, clip_frames=3, history_frames=2), 25),
]


@pytest.fixture(scope="module")
def tiny():
    return engine.load_model("tiny-random", device="cpu")


@pytest.mark.parametrize("strategy,opts,n", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bit_identical_for_any_worker_count_and_queue_order(tiny, strategy, opts, n):
    runs = {}
    for label, devs, shuffle in [("1", ["cpu"], None), ("2", ["cpu"] * 2, None), ("3", ["cpu"] * 3, None),
                                 ("2-shuffled", ["cpu"] * 2, 7), ("3-shuffled", ["cpu"] * 3, 11)]:
        v = engine.generate(tiny, num_frames=n, strategy=strategy, devices=devs, shuffle=shuffle, seed=2,
                            prompt="x", **SMALL, **opts)
        assert v.frames.shape == (n, 32, 32, 3)
        runs[label] = v
    ref = runs["1"].frames
    assert ref.std() > 1.0
    for label, v in runs.items():
        assert np.array_equal(v.frames, ref), f"{strategy}: {label} workers differ from 1 worker"
    other = engine.generate(tiny, num_frames=n, strategy=strategy, devices=["cpu"], seed=3, prompt="x", **SMALL, **opts)
    assert not np.array_equal(other.frames, ref)
    # the video covers every latent frame once, in order
    chunks = runs["3-shuffled"].stats.chunks
    pos = [p for c in chunks for p in c["positions"]]
    assert pos == list(range((n - 1) // 4 + 1))


def test_runtime_stats(tiny):
    v = engine.generate(tiny, num_frames=25, strategy="longdwm", keyframes=3, fps_ratio=2, devices=["cpu", "cpu"],
                        seed=0, **SMALL)
    st = v.stats
    plan = build_plan("longdwm", 7, keyframes=3, fps_ratio=2)
    assert sorted(j["id"] for j in st.jobs) == sorted(j.id for j in plan.all_jobs())  # decode jobs too
    assert {j["kind"] for j in st.jobs} == {"plan", "populate", "decode"}
    assert all(j["end"] >= j["start"] >= 0 and j["worker"] in ("w0:cpu", "w1:cpu") for j in st.jobs)
    by_id = {j["id"]: j for j in st.jobs}
    for job in plan.all_jobs():  # a job starts only after the jobs it depends on ended
        assert all(by_id[job.id]["start"] >= by_id[d]["end"] for d in plan.deps_of(job))
    assert st.critical_path_passes == plan.critical_path()[0] == 12  # coarse rollout 0 -> 1 -> one fine job
    assert set(st.idle_fraction) == {"w0:cpu", "w1:cpu"} and all(0 <= f <= 1 for f in st.idle_fraction.values())
    assert st.peak_memory["cpu"] > 0 and st.runtime.latent_peak_bytes["cpu"] > 0
    ar = engine.generate(tiny, num_frames=13, seed=0, **SMALL).stats  # the KV-cache fast path reports too
    assert [j["id"] for j in ar.jobs if j["kind"] == "chunk"] == ["ar/chunk0", "ar/chunk1"]
    assert ar.critical_path_passes == 4 + 1 + 4


def test_two_models_coarse_and_fine(tiny):
    other = engine.load_model("tiny-random", device="cpu", seed=5)
    calls = {"coarse": 0, "fine": 0}

    class Spy(torch.nn.Module):
        def __init__(self, inner, role):
            super().__init__()
            self.inner, self.role = inner, role
            self.config = inner.config

        device = property(lambda self: self.inner.device)
        dtype = property(lambda self: self.inner.dtype)

        def prepare_context(self, *a):
            return self.inner.prepare_context(*a)

        def forward(self, *a, **k):
            calls[self.role] += 1
            return self.inner(*a, **k)

    kw = dict(num_frames=25, strategy="longdwm", keyframes=3, fps_ratio=2, seed=0, **SMALL)
    v = engine.generate(tiny, coarse_model=Spy(other, "coarse"), fine_model=Spy(tiny, "fine"), **kw)
    assert calls == {"coarse": 2 * 4, "fine": 3 * 4}  # 2 coarse rollouts, 3 keyframe pairs, 4 steps each
    same = engine.generate(tiny, **kw)  # one model given: used for both
    assert not np.array_equal(v.frames, same.frames)
    with pytest.raises(ValueError, match="coarse_model"):
        engine.generate(tiny, num_frames=13, strategy="mmpl", coarse_model=other, **SMALL)


def test_streaming_in_order_first_frames_early(tiny):
    arrivals = []
    t0 = time.perf_counter()
    v = engine.generate(tiny, num_frames=49, strategy="ar", context="history", history_frames=4, chunk_frames=1,
                        devices=["cpu", "cpu"], seed=0,
                        on_frames=lambda f, i: arrivals.append((i, len(f), time.perf_counter() - t0)), **SMALL)
    starts = [a[0] for a in arrivals]
    assert starts == sorted(starts) and starts[0] == 0
    assert sum(a[1] for a in arrivals) == len(v) == 49
    assert all(a[0] + a[1] == b[0] for a, b in zip(arrivals, arrivals[1:]))  # contiguous
    rs = v.stats.runtime  # times from the start of the run (model set-up and imports excluded)
    assert len(arrivals) > 3 and rs.first_output_seconds < 0.5 * rs.wall_seconds


def test_frames_that_do_not_fit_the_plan(tiny):
    with pytest.raises(ValueError, match=r"do not fit mmpl.*num_frames 33"):
        engine.generate(tiny, num_frames=29, strategy="mmpl", **SMALL)
    with pytest.raises(ValueError, match="fps_ratio"):
        engine.generate(tiny, num_frames=17, strategy="longdwm", fps_ratio=3, **SMALL)
    with pytest.raises(TypeError, match="segment_frames"):
        engine.generate(tiny, num_frames=17, strategy="mmpl", fps_ratio=3, **SMALL)


@pytest.mark.parametrize("devices", [["cpu"], ["cpu", "cpu"]])
def test_failing_worker_names_the_job_and_keeps_emitted_frames(tiny, tmp_path, devices):
    out = tmp_path / "partial.mp4"
    model = Flaky(tiny, [6, 7, 8])  # longdwm fine job between keyframes 6 and 8
    seen = []
    with pytest.raises(GenerationError, match=r"job 'longdwm/fine3' failed on worker w\d:cpu.*simulated") as info:
        engine.generate(model, num_frames=41, strategy="longdwm", keyframes=3, fps_ratio=2, devices=devices, seed=0,
                        output=out, on_frames=lambda f, i: seen.append((i, len(f))), **SMALL)
    err = info.value
    emitted = sum(n for _, n in seen)
    assert len(err.video) == emitted and emitted < 41
    if devices == ["cpu"]:  # one worker: every job before the failing one finished, frames 0..6 decoded
        assert emitted == 4 * 6 + 1
    assert err.output == str(out) and read_video_frames(out).shape[0] == emitted


def test_cli_strategies(tmp_path):
    out = tmp_path / "v.mp4"
    res = subprocess.run([sys.executable, "-m", "engine", "generate", "--strategy", "mila", "--devices", "cpu,cpu",
                          "--num-frames", "17", "--height", "32", "--width", "32", "--clip-frames", "2",
                          "--out", str(out), "--no-progress", "--stats", str(tmp_path / "s.json")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert read_video_frames(out).shape == (17, 32, 32, 3)
    import json

    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["strategy"] == "mila" and stats["critical_path_passes"] > 0 and stats["jobs"]
    bad = subprocess.run([sys.executable, "-m", "engine", "generate", "--strategy", "mmpl", "--keyframes", "3",
                          "--num-frames", "33", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "do not apply" in bad.stderr


def test_initial_latents_kernel_path_equals_reference():
    """The runtime's CUDA path (Triton noise_init: interpolation, fresh share and anchor
    re-noising in one pass) equals its torch reference path -- here under the interpreter."""
    from engine.plans import make_job
    from engine.denoise import initial_latents

    base = [1.0, 0.6, 0.0]
    frames = {0: (False, "a"), 1: (True, None), 2: (True, "c"), 3: (True, None), 5: (False, "b")}
    job = make_job("j", "main", frames, base=base, outputs=[1, 3], start={2: 0.4}, noise="interp",
                   planning=(0, 5), noise_rho=0.3, noise_stream=1)
    x0 = {2: torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(3))}
    ref = initial_latents(job, x0, seed=7, shape_chw=(4, 8, 8), device="cpu", use_kernel=False)
    ker = initial_latents(job, x0, seed=7, shape_chw=(4, 8, 8), device="cpu", use_kernel=True)
    assert ref.shape == (1, 4, 3, 8, 8) and ref.std() > 0.3
    torch.testing.assert_close(ker, ref, rtol=1e-5, atol=1e-5)
    plain = make_job("j", "main", {**frames, 2: (True, None)}, base=base, outputs=[1, 3], noise="interp",
                     planning=(0, 5), noise_rho=0.3, noise_stream=1)
    eps = initial_latents(plain, {}, seed=7, shape_chw=(4, 8, 8), device="cpu", use_kernel=False)
    torch.testing.assert_close(ref[:, :, 1], 0.6 * x0[2][:, :, 0] + 0.4 * eps[:, :, 1])  # x = (1 - s) x0 + s eps
    torch.testing.assert_close(ref[:, :, [0, 2]], eps[:, :, [0, 2]])
