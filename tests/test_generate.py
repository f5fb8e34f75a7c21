"""engine.generate / engine.stream / the CLI on the embedded tiny default."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import engine
from engine.config import SamplerConfig
from engine.generation import GenerationError
from engine.video import read_video_frames

SMALL = dict(height=32, width=32)


@pytest.fixture(scope="module")
def tiny():
    return engine.load_model("tiny-random", device="cpu")


def test_generate_returns_requested_frames_and_is_deterministic(tiny):
    a = engine.generate(tiny, num_frames=13, prompt="a road at dusk", seed=3, progress=False, **SMALL)
    assert a.frames.shape == (13, 32, 32, 3) and a.frames.dtype == np.uint8 and a.fps == 16
    assert a.frames.std() > 1.0  # not a constant image
    b = engine.generate(tiny, num_frames=13, prompt="a road at dusk", seed=3, progress=False, **SMALL)
    assert np.array_equal(a.frames, b.frames)
    c = engine.generate(tiny, num_frames=13, prompt="a road at dusk", seed=4, progress=False, **SMALL)
    assert not np.array_equal(a.frames, c.frames)


def test_stream_yields_chunks_in_order_and_matches_generate(tiny):
    chunks = list(engine.stream(tiny, num_frames=17, seed=1, chunk_frames=2, **SMALL))
    assert [len(c) for c in chunks] == [5, 8, 4]  # latent chunks [0,1], [2,3], [4] -> 4n-3, 4n, 4n frames
    seen = []
    video = engine.generate(tiny, num_frames=17, seed=1, chunk_frames=2, progress=False,
                            on_frames=lambda f, i: seen.append((i, len(f))), **SMALL)
    assert seen == [(0, 5), (5, 8), (13, 4)]
    assert np.array_equal(np.concatenate(chunks), video.frames)


def test_streamed_chunks_equal_one_full_decode(tiny):
    """The rollout's latents decoded in one pass equal the streamed frames."""
    from engine.inputs import prompt_context, resolve_components
    from engine.models.vae import StreamingDecoder
    from engine.rollout import RolloutPlan, ar_rollout
    from engine.video import to_uint8_frames

    from engine.runtime import run_pinned

    def reference():  # on the runtime's thread count (cpu_threads=1): equal numbers on any caller's threads
        comps = resolve_components(tiny, seed=0)
        ctx = prompt_context(tiny, comps, "x", None, None, None, 1.0, None, 0)
        lat = [x0 for _, x0 in ar_rollout(tiny, ctx, RolloutPlan(5, 2), latent_hw=(4, 4), sampler=SamplerConfig(),
                                          seed=0)]
        return StreamingDecoder(comps.vae).decode_all(torch.cat(lat, 2).float())

    full = run_pinned(1, reference)
    streamed = engine.generate(tiny, num_frames=17, prompt="x", seed=0, chunk_frames=2, progress=False, **SMALL)
    assert np.array_equal(to_uint8_frames(full)[0], streamed.frames)


def test_long_video_uses_a_bounded_window(tiny, monkeypatch):
    import engine.kvcache as kvcache

    sizes = []
    real = kvcache.cache_for

    def spy(*a, **k):
        cache = real(*a, **k)
        sizes.append(cache.num_slots)
        return cache

    monkeypatch.setattr(kvcache, "cache_for", spy)
    v = engine.generate(tiny, num_frames=4 * 11 + 1, seed=0, chunk_frames=2, sink_frames=1, window_frames=2,
                        progress=False, height=16, width=16)
    assert len(v) == 45 and sizes == [1 + 2 + 2]


@pytest.mark.parametrize("sampler", [SamplerConfig(kind="euler", num_steps=2, shift=3.0),
                                     SamplerConfig(kind="unipc", num_steps=3, shift=3.0),
                                     SamplerConfig(guidance_scale=3.0)], ids=["euler", "unipc", "cfg"])
def test_samplers_and_guidance(tiny, sampler):
    v = engine.generate(tiny, num_frames=5, seed=0, sampler=sampler, progress=False, **SMALL)
    assert v.frames.shape == (5, 32, 32, 3)


def test_first_frame_t2v_and_i2v():
    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    v = engine.generate("tiny-random", num_frames=9, first_frame=img, seed=0, progress=False, **SMALL)
    assert v.frames.shape == (9, 32, 32, 3)
    i2v = engine.load_model("tiny-i2v", device="cpu")
    w = engine.generate(i2v, num_frames=9, first_frame=img, seed=0, progress=False, **SMALL)
    assert w.frames.shape == (9, 32, 32, 3)
    with pytest.raises(ValueError, match="image-to-video"):
        engine.generate(i2v, num_frames=9, progress=False, **SMALL)


def test_bad_inputs_give_clear_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"4k\+1"):
        engine.generate(tiny, num_frames=12, progress=False)
    with pytest.raises(ValueError, match="multiples of 16"):
        engine.generate(tiny, num_frames=5, height=40, width=32, progress=False)
    with pytest.raises(ValueError, match="unknown strategy"):
        engine.generate(tiny, num_frames=5, strategy="warp", progress=False)
    with pytest.raises(ValueError, match="text_dim|prompt_embeds"):
        engine.generate(tiny, num_frames=5, prompt_embeds=torch.randn(1, 4, 7), progress=False, **SMALL)
    # A model loaded from disk is a real model: it needs text conditioning.
    from engine.models.weights import save_original_layout

    save_original_layout(tiny, tmp_path / "wan")
    real = engine.load_model(tmp_path / "wan", device="cpu")
    from engine.models.vae import make_tiny_vae

    with pytest.raises(ValueError, match="prompt_embeds"):
        engine.generate(real, num_frames=5, prompt="hello", vae=make_tiny_vae(), progress=False, **SMALL)
    with pytest.raises(ValueError, match="no VAE"):
        engine.generate(real, num_frames=5, prompt_embeds=torch.randn(1, 8, 32), progress=False, **SMALL)
    v = engine.generate(real, num_frames=5, prompt_embeds=torch.randn(1, 8, 32), vae=make_tiny_vae(), progress=False,
                        **SMALL)
    assert len(v) == 5


def test_failure_mid_run_keeps_frames(tiny, tmp_path):
    out = tmp_path / "partial.mp4"
    calls = []

    def boom(frames, start):
        calls.append(len(frames))
        if len(calls) == 2:
            raise RuntimeError("simulated device failure")

    with pytest.raises(GenerationError, match="simulated device failure") as info:
        engine.generate(tiny, num_frames=17, chunk_frames=2, on_frames=boom, output=out, progress=False, **SMALL)
    err = info.value
    assert len(err.video) == 5 + 8  # both chunks were decoded before the callback raised
    assert read_video_frames(out).shape[0] == 13


def test_cli_writes_playable_mp4(tmp_path):
    out = tmp_path / "video.mp4"
    res = subprocess.run([sys.executable, "-m", "engine", "generate", "--model", "tiny-random", "--num-frames", "9",
                          "--height", "32", "--width", "48", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    frames = read_video_frames(out)
    assert frames.shape == (9, 32, 48, 3)
    bad = subprocess.run([sys.executable, "-m", "engine", "generate", "--num-frames", "10", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "4k+1" in bad.stderr


def test_vae_dtype_option(tiny):
    base = engine.generate(tiny, num_frames=5, seed=0, progress=False, **SMALL)
    half = engine.generate(tiny, num_frames=5, seed=0, progress=False, vae_dtype="bf16", **SMALL)
    diff = np.abs(base.frames.astype(int) - half.frames.astype(int))
    assert 0 < diff.mean() < 4  # same video, bf16 rounding in the decoder only


def test_engine_config_compile_matches_eager(tiny):
    from engine.config import EngineConfig

    eager = engine.generate(tiny, num_frames=9, seed=5, progress=False, **SMALL)
    compiled = engine.generate(tiny, num_frames=9, seed=5, progress=False,
                               engine_config=EngineConfig(devices=["cpu"], dtype="float32", compile=True), **SMALL)
    diff = np.abs(eager.frames.astype(int) - compiled.frames.astype(int))
    assert diff.max() <= 2  # compiled kernels may reorder float sums; same video
    assert not any(getattr(b, "_compiled_call_impl", None) for b in tiny.blocks)  # eager again afterwards


def test_cli_info_names_every_optional_backend():
    res = subprocess.run([sys.executable, "-m", "engine", "info"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    for name in ("attention:triton", "attention:flex", "attention:flash-attn", "attention:xformers", "tensorrt",
                 "native host"):
        assert name in res.stdout
