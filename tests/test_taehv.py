"""TAEHV, the light decoder (engine/models/taehv.py, engine/decoders.py).

Parity: the release's own module (madebyollin/taehv) ran on seeded random weights in its
layout (tests/release/taehv_golden.py); its outputs are committed in tests/fixtures/taehv/
and the engine's module, given the same weights, must reproduce them.
"""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
from engine.decoders import LightDecoder, load_decoder, resolve_decoder
from engine.models.taehv import TAEHV, TAEHVStreamingDecoder, load_taehv
from engine.models.vae import num_video_frames
from engine.recipes import RECIPES, apply_recipe

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "taehv"
SMALL = dict(height=32, width=32)


def _golden_module():
    spec = importlib.util.spec_from_file_location("taehv_golden", ROOT / "tests" / "release" / "taehv_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def golden():
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / "golden.safetensors"))


@pytest.fixture(scope="module")
def release_weights():
    mod = _golden_module()
    return mod.seeded_state_dict({k: v.shape for k, v in TAEHV().state_dict().items()}, mod.SEED)


@pytest.fixture(scope="module")
def real(release_weights):
    model = TAEHV().eval()
    model.load_state_dict(release_weights)  # strict: the release's keys and shapes
    return model


def _small(seed=0, latent_channels=16):
    """A narrow TAEHV (ours; the release fixes the widths) with seeded weights."""
    model = TAEHV(latent_channels=latent_channels, widths=(32, 16, 16, 16), encoder_width=16).eval()
    model.load_state_dict(_golden_module().seeded_state_dict({k: v.shape for k, v in model.state_dict().items()}, seed))
    return model


def test_decode_matches_release(real, golden):
    ours = real.decode_video(golden["latents"])
    assert ours.shape == golden["decoded"].shape == (1, 17, 3, 32, 48)
    inside = ((golden["decoded"] > 0) & (golden["decoded"] < 1)).float().mean().item()
    assert inside > 0.5  # most pixels are not clamped: the comparison is not trivially 0 == 0
    assert _rel(ours, golden["decoded"]) <= 1e-5


def test_streaming_decode_matches_release_streaming(real, golden):
    dec = TAEHVStreamingDecoder(real)
    z = golden["latents"].transpose(1, 2)  # engine layout [B, C, F, h, w]
    parts = [dec.decode_chunk(z[:, :, t:t + 1]) for t in range(z.shape[2])]
    assert [p.shape[2] for p in parts] == [1, 4, 4, 4, 4]
    ours = (torch.cat(parts, 2).transpose(1, 2) + 1) / 2
    assert _rel(ours, golden["decoded_streaming"]) <= 1e-5
    assert _rel(ours, golden["decoded"]) <= 1e-5


def test_encode_matches_release(real, golden):
    ours = real.encode_video(golden["video"])
    assert ours.shape == golden["encoded"].shape
    assert _rel(ours, golden["encoded"]) <= 1e-5


@pytest.mark.parametrize("split", [[1, 1, 1, 1, 1], [1, 2, 2], [2, 3], [3, 2], [5]])
def test_streaming_equals_one_shot(split):
    model = _small(1)
    z = torch.randn(1, 16, 5, 4, 4, generator=torch.Generator().manual_seed(2))
    whole = model.decode(z)
    dec = TAEHVStreamingDecoder(model)
    parts, t = [], 0
    for n in split:
        parts.append(dec.decode_chunk(z[:, :, t:t + n]))
        t += n
    counts = [p.shape[2] for p in parts]
    assert counts == [4 * split[0] - 3] + [4 * n for n in split[1:]]
    out = torch.cat(parts, 2)
    assert out.shape == whole.shape == (1, 3, num_video_frames(5), 32, 32)
    torch.testing.assert_close(out, whole, rtol=0, atol=1e-5)
    assert out.min() >= -1 and out.max() <= 1
    dec.reset()  # a new clip starts over: latent 0 -> 1 frame
    torch.testing.assert_close(dec.decode_chunk(z[:, :, :2]), whole[:, :, :5], rtol=0, atol=1e-5)


def test_frame_counts_match_the_full_vae():
    from engine.models.vae import StreamingDecoder, make_tiny_vae

    z = torch.randn(1, 16, 3, 4, 4)
    full = StreamingDecoder(make_tiny_vae()).decode_all(z)
    light = TAEHVStreamingDecoder(_small()).decode_all(z)
    assert light.shape == full.shape == (1, 3, 9, 32, 32)


def test_load_pth_and_safetensors(tmp_path, real, golden):
    from safetensors.torch import save_file

    sd = {k: v.half() for k, v in real.state_dict().items()}  # released files are float16
    torch.save(sd, tmp_path / "taew2_1.pth")
    save_file(sd, str(tmp_path / "taew2_1.safetensors"))
    ref = real.decode_video(golden["latents"])
    for name in ("taew2_1.pth", "taew2_1.safetensors"):
        m = load_taehv(tmp_path / name)
        assert (m.latent_channels, m.patch_size, m.widths, m.t_upscale, m.t_downscale) == (16, 1, (256, 128, 64, 64),
                                                                                            4, 4)
        assert _rel(m.decode_video(golden["latents"]), ref) < 2e-3  # float16 weights
    # decoder-only state dict; a TGrow stored with more frames is cut to its last ones (as the release does)
    dec_only = {k: v for k, v in sd.items() if k.startswith("decoder.")}
    dec_only["decoder.7.conv.weight"] = torch.cat([torch.zeros_like(sd["decoder.7.conv.weight"]),
                                                   sd["decoder.7.conv.weight"]])
    torch.save(dec_only, tmp_path / "dec.pth")
    m = load_taehv(tmp_path / "dec.pth")
    assert m.encoder is None and _rel(m.decode_video(golden["latents"]), ref) < 2e-3
    with pytest.raises(ValueError, match="decoder-only"):
        m.encode_video(golden["video"])


def test_bad_files_and_channel_mismatch(tmp_path):
    torch.save({"decoder.0.weight": torch.zeros(4, 16, 1, 1)}, tmp_path / "super.pth")
    with pytest.raises(ValueError, match="_super"):
        load_taehv(tmp_path / "super.pth")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="not a TAEHV state dict"):
        load_taehv(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match="madebyollin/taehv"):
        load_taehv(tmp_path / "missing.pth")
    dec = TAEHVStreamingDecoder(_small())
    with pytest.raises(ValueError, match="48 channels but this TAEHV decoder takes 16.*taew2_2.*decoder='full'"):
        dec.decode_chunk(torch.zeros(1, 48, 2, 4, 4))


@pytest.fixture(scope="module")
def tiny():
    return engine.load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("taehv") / "small.pth"
    torch.save(_small(3).state_dict(), path)
    return str(path)


def test_generate_with_the_light_decoder(tiny, small_file):
    kw = dict(num_frames=17, seed=0, chunk_frames=2, progress=False, **SMALL)
    full = engine.generate(tiny, **kw)
    same = engine.generate(tiny, decoder="full", **kw)
    np.testing.assert_array_equal(np.asarray(full.frames), np.asarray(same.frames))
    light = engine.generate(tiny, decoder=small_file, **kw)
    loaded = engine.load_decoder(small_file)
    assert isinstance(loaded, LightDecoder)
    again = engine.generate(tiny, decoder=loaded, **kw)
    assert len(light) == len(full) == 17
    assert np.asarray(light.frames).shape == np.asarray(full.frames).shape
    np.testing.assert_array_equal(np.asarray(light.frames), np.asarray(again.frames))
    assert not np.array_equal(np.asarray(light.frames), np.asarray(full.frames))
    # the clip's frames, decoded chunk by chunk by the runtime, equal one decode of all its latents
    from engine.generation import prepare, run
    from engine.video import to_uint8_frames

    kept: dict = {}
    prepared = prepare(tiny, decoder=loaded, num_frames=17, seed=0, chunk_frames=2, **SMALL)
    frames = np.concatenate(list(run(prepared, keep_latents=kept)))
    last = {}
    for (job, pos), z in sorted(kept.items(), key=lambda kv: str(kv[0][0])):
        last[pos] = z
    z = torch.cat([last[p] for p in sorted(last)], 2)
    assert z.shape[2] == 5
    one = to_uint8_frames(loaded.model.decode(z.float()))[0]
    assert np.abs(one.astype(int) - frames.astype(int)).max() <= 1
    np.testing.assert_array_equal(frames, np.asarray(light.frames))


def test_generate_refuses_a_mismatched_decoder_up_front(tiny, tmp_path):
    path = tmp_path / "taew2_2ish.pth"
    torch.save(_small(latent_channels=48).state_dict(), path)
    with pytest.raises(ValueError, match="16-channel latents but the TAEHV decoder .* takes 48"):
        engine.generate(tiny, num_frames=5, decoder=str(path), progress=False, **SMALL)
    with pytest.raises(ValueError, match="neither 'full', 'taehv' nor an existing"):
        engine.generate(tiny, num_frames=5, decoder="nope.pth", progress=False, **SMALL)
    with pytest.raises(TypeError, match="decoder must be"):
        engine.generate(tiny, num_frames=5, decoder=3, progress=False, **SMALL)


def test_taehv_name_lookup(tmp_path, monkeypatch, small_file):
    monkeypatch.delenv("ENGINE_TAEHV", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="taew2_1.pth.*ENGINE_TAEHV.*decoder='full'"):
        resolve_decoder("taehv")
    monkeypatch.setenv("ENGINE_TAEHV", small_file)
    assert load_decoder("taehv").path == small_file
    os.symlink(small_file, tmp_path / "taew2_1.pth")
    monkeypatch.delenv("ENGINE_TAEHV")
    assert resolve_decoder("taew2_1").path.endswith("taew2_1.pth")
    assert resolve_decoder("full") is None and resolve_decoder(None) is None


def test_self_forcing_fast_recipe():
    r = RECIPES["self-forcing-fast"]
    assert (r.strategy, r.options.chunk_frames, r.height, r.width, r.fps, r.decoder) == ("ar", 3, 480, 832, 16,
                                                                                         "taehv")
    assert r.sampler.kind == "fewstep" and tuple(r.sampler.timesteps) == (1000, 750, 500, 250)
    assert r.sampler.shift == 5.0 and r.sampler.guidance_scale == 1.0 and r.negative_prompt is None
    assert apply_recipe(r, {"num_frames": 9})["decoder"] == "taehv"
    assert apply_recipe(r, {"num_frames": 9, "decoder": "full"})["decoder"] == "full"
    assert apply_recipe("mmpl-t2v", {"num_frames": 76})["decoder"] == "full"
    assert r.describe()["decoder"] == "taehv"


def test_cli_decoder_flag(tmp_path, small_file, capsys):
    from engine.cli import main

    out = tmp_path / "v.mp4"
    assert main(["generate", "--num-frames", "9", "--height", "32", "--width", "32", "--out", str(out),
                 "--decoder", small_file, "--no-progress"]) == 0
    assert out.is_file()
    assert main(["generate", "--num-frames", "9", "--height", "32", "--width", "32", "--out", str(out),
                 "--decoder", str(tmp_path / "missing.pth"), "--no-progress"]) == 2
    assert "neither 'full'" in capsys.readouterr().err
