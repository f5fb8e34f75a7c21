"""The embedded default model ``tiny`` (engine/assets/tiny): its weights load through the
real loaders, its parts resolve, it has its own size and sampler, and a short generation
looks like the world it was trained on (feature-network read-outs in the training range)."""

import json

import numpy as np
import pytest
import torch

import engine
from engine.config import PRESETS, SamplerConfig
from engine.embedded import TINY_ROOT, embedded_sampler, embedded_size, is_embedded_root, tiny_root
from engine.generation import default_sampler, default_size
from engine.inputs import resolve_components
from engine.models.text import make_tiny_text_encoder


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return engine.load_model("tiny", device="cpu")


def test_shipped_weights_are_small_and_complete():
    root = tiny_root()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total <= 30 * 2 ** 20, f"embedded model is {total / 2 ** 20:.1f} MiB (> 30)"
    records = [root / "transformer" / "training.json", root / "vae" / "training.json",
               *sorted((root / "vae").glob("training-stage*.json"))]
    for path in records:  # every stage has its seeded training command
        rec = json.loads(path.read_text())
        cmd = rec["command"] if isinstance(rec["command"], str) else " ".join(rec["command"])
        trainer = "dit" if path.parent.name == "transformer" else "vae"
        assert f"engine.world.train_{trainer}" in cmd and "--seed " in cmd, path
    # the shipped VAE is a decoder fine-tune: its encoder (and so the DiT's latents) is stage 1's
    final = json.loads((root / "vae" / "training.json").read_text())["command"]
    assert "--init" in final and "--freeze-encoder" in final


def test_tiny_loads_the_trained_weights(tiny):
    assert tiny.config.name == "tiny"
    assert is_embedded_root(tiny.source)
    arch = PRESETS["tiny"]
    for f in ("dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "freq_dim", "in_channels", "out_channels"):
        assert getattr(tiny.config, f) == getattr(arch, f), f
    # trained, not the preset's random init: the output head is not the zero init of the trainer
    assert tiny.head.head.weight.abs().sum() > 0
    random_model = engine.load_model("tiny-random", device="cpu")
    assert random_model.source is None and random_model.config.dim != tiny.config.dim


def test_tiny_components_size_and_sampler(tiny):
    comp = resolve_components(tiny, seed=123)  # the text encoder does not follow the run's seed
    assert type(comp.vae).__name__ == "AutoencoderKLWan" and not comp.random_weights
    vcfg = json.loads((TINY_ROOT / "vae" / "config.json").read_text())
    assert list(comp.vae.config.latents_std) == pytest.approx(vcfg["latents_std"])
    ref = make_tiny_text_encoder(seed=0, dim=tiny.config.text_dim)
    torch.testing.assert_close(comp.text_encoder.encode(["a drive on a sunny day"]),
                               ref.encode(["a drive on a sunny day"]), rtol=0, atol=0)
    assert default_size(tiny) == embedded_size(tiny.source) == (64, 112)
    s = default_sampler(tiny)
    assert s == embedded_sampler(tiny.source) and s.kind == "euler" and s.num_steps >= 8
    assert default_sampler(engine.load_model("tiny-random", device="cpu")) == SamplerConfig()


def test_missing_package_data_is_a_clear_error(monkeypatch, tmp_path):
    import engine.embedded as emb

    monkeypatch.setattr(emb, "TINY_ROOT", tmp_path / "tiny")
    with pytest.raises(FileNotFoundError, match="embedded tiny model is incomplete.*tiny-random"):
        engine.load_model("tiny", device="cpu")


def test_short_generation_reads_as_the_world(tiny):
    """17 frames, day prompt, the model's own sampler: the feature net reads a road: lane
    offset / heading / curvature inside its training range, and the weather asked for."""
    from engine.world import PROMPTS, WEATHERS
    from engine.world.features import load_feature_net, predict_attributes

    video = engine.generate(tiny, num_frames=17, prompt=PROMPTS["day"], seed=0, progress=False)
    frames = video.frames
    assert frames.shape == (17, 64, 112, 3) and frames.dtype == np.uint8
    net = load_feature_net()
    gen = predict_attributes(net, frames)
    # the training range of each read-out: the feature net's targets (world ground truth), mean +- 4 std
    mean, std = net.target_mean.cpu().numpy(), net.target_std.cpu().numpy()
    for i, k in enumerate(("lane_offset", "heading", "curvature")):
        g = np.asarray(gen[k])
        assert np.isfinite(g).all() and (np.abs(g - mean[i]) <= 4 * std[i]).all(), (k, g.min(), g.max(), mean[i], std[i])
    weather = np.asarray(gen["weather"])
    assert (weather == WEATHERS.index("day")).mean() >= 0.8, weather
