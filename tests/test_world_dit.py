"""engine.world.train_dit: frame-role patterns and a 2-step training run that engine.load_model reads back."""

import json
import math

import numpy as np
import pytest
import torch

from engine.world.train_dit import (CHUNK, PATTERNS, TrainConfig, WORLD_DIT_CONFIG, check_pattern, make_batch,
                                    sample_pattern, train)


def _draws(count=60):
    rng = np.random.default_rng(0)
    for kind in PATTERNS:
        for span in (2, 3, 5, 9, 13, 21):
            for _ in range(count // 6):
                yield kind, span, sample_pattern(rng, kind, span)


def test_patterns_are_valid_passes():
    seen = set()
    for kind, span, p in _draws():
        check_pattern(p)  # the module's own check; the properties again, independently:
        n = p.n
        vis = np.array(p.visibility, bool)
        gen = np.array(p.generated, bool)
        assert p.kind == kind and p.span <= span and len(p.rope) == n and vis.shape == (n, n)
        assert vis.diagonal().all(), "every frame sees itself"
        assert gen.any()
        assert not (vis[~gen][:, gen]).any(), "clean frames never see noisy ones"
        if kind == "ar":
            chunk = np.arange(n) // CHUNK
            assert not (vis & (chunk[None, :] > chunk[:, None])).any(), "a chunk never sees the future"
            assert (vis == (chunk[None, :] <= chunk[:, None])).all(), "block-causal"
            assert (gen == (chunk == chunk.max())).all(), "earlier chunks clean, the current one generated"
        if kind == "full":
            assert vis.all() and gen.all()
        if kind == "interp" and n > 1:
            assert not gen[0] and not gen[-1] and gen[1:-1].any()
        if kind == "keyframe" and n > 1:
            steps = set(np.diff(p.offsets).tolist())
            assert len(steps) == 1
        seen.add((kind, n > 1 and not gen.all()))
    assert {("ar", True), ("keyframe", True), ("interp", True), ("anchors", True)} <= seen


def test_make_batch_noises_generated_frames_only():
    lat = torch.randn(1, 16, 9, 8, 14)
    p = sample_pattern(np.random.default_rng(3), "interp", 9)
    b = make_batch(lat, torch.tensor([2]), p, np.random.default_rng(1), torch.Generator().manual_seed(1), 4,
                   cfg_drop=0.0, offset0_prob=1.0)
    g = torch.tensor(p.generated)
    x0 = lat[0][:, torch.tensor(p.offsets)]  # [C, n, h, w]: offset 0 of the only clip
    assert b["x"].shape == (4, 16, p.n, 8, 14) and b["t"].shape == (4, p.n)
    assert (b["t"][:, ~g] == 0).all() and (b["t"][:, g] > 0).all() and (b["t"] <= 1000).all()
    assert (b["text"] == 2).all()
    for k in range(4):
        assert torch.equal(b["x"][k][:, ~g], x0[:, ~g])  # clean frames: x0 itself
        s = b["sigma"][k][g]
        eps = b["target"][k] + x0
        assert torch.allclose(b["x"][k][:, g], (1 - s)[None, :, None, None] * x0[:, g]
                              + s[None, :, None, None] * eps[:, g], atol=1e-5)


def test_two_step_training_run_loads_back(tmp_path):
    from engine import load_model
    from engine.models.vae import make_tiny_vae

    mc = WORLD_DIT_CONFIG.replace(dim=32, ffn_dim=64, num_layers=1, freq_dim=32)
    cfg = TrainConfig(steps=2, batch_size=2, warmup=1, clips=2, heldout_clips=1, clip_frames=9, eval_batches=1,
                      log_every=1, threads=1)
    out = tmp_path / "dit"
    rec = train(make_tiny_vae(seed=0), out, cfg, mc, cache_dir=tmp_path / "cache", sample=False, log=None)
    assert [c["step"] for c in rec["loss_curve"]] == [1, 2]
    assert all(math.isfinite(c["loss"]) for c in rec["loss_curve"])
    assert all(math.isfinite(v) for v in rec["heldout_loss_per_pattern"].values())
    assert set(rec["heldout_loss_per_pattern"]) == set(PATTERNS) | {"all"}
    saved = json.loads((out / "training.json").read_text())
    assert saved["steps"] == 2 and saved["data"]["latent_shape"] == [16, 3, 8, 14]
    model = load_model(out, device="cpu")
    assert model.config.replace(name=mc.name) == mc  # the name reads back as the matching preset's, or "custom"
    from safetensors.torch import load_file

    state = load_file(str(out / "model.safetensors"))
    assert set(state) == set(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", PATTERNS)
def test_model_runs_every_pattern(kind):
    from engine.world.train_dit import build_model, pattern_loss

    mc = WORLD_DIT_CONFIG.replace(dim=32, ffn_dim=64, num_layers=1, freq_dim=32)
    model = build_model(mc, 0)
    rng = np.random.default_rng(5)
    p = sample_pattern(rng, kind, 13)
    b = make_batch(torch.randn(2, 16, 13, 8, 14), torch.tensor([0, 1]), p, rng, torch.Generator().manual_seed(0), 2)
    loss = pattern_loss(model, b, p, torch.randn(6, 32, 32))
    loss.backward()
    assert math.isfinite(float(loss.detach())) and model.head.head.weight.grad is not None
