"""engine.world.train_vae: the PSNR / SSIM formulas on hand examples, the 2-D-convolution
training path against diffusers' 3-D one, a one-step training run through the CLI that
writes a folder engine.models.vae.load_vae loads, and evaluate_vae through the engine's
own encode / streaming-decode path. Everything at toy sizes (seconds on a CPU)."""

import json
import math

import pytest
import torch

from engine.models.vae import load_vae
from engine.world import WEATHERS
from engine.world.train_vae import (HELDOUT_SEED_BASE, WORLD_VAE_CONFIG, _losses, evaluate_vae, fast_convs,
                                    heldout_specs, main, make_world_vae, psnr, ssim, training_specs, video_metrics)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread (these toy sizes gain nothing from more; on a shared CPU two
    threads can be many times slower), the caller's setting restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_psnr_hand_examples():
    a = torch.full((3, 4, 4), 0.5, dtype=torch.float64)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-6)  # MSE 0.01
    b = a.clone()
    b[0, 0, 0] += 0.4  # MSE 0.16 / 48
    assert psnr(a, b) == pytest.approx(10 * math.log10(48 / 0.16), abs=1e-6)


def test_ssim_hand_examples():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    # constant images: no variance, SSIM = luminance term (2 mx my + C1) / (mx^2 + my^2 + C1)
    c1 = 0.01 ** 2
    s = ssim(torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.25))
    assert float(s) == pytest.approx((2 * 0.5 * 0.25 + c1) / (0.25 + 0.0625 + c1), rel=1e-9)
    # a constant image against a textured one of the same mean: luminance 1, structure C2 / (var + C2)
    y = torch.full((1, 1, 11, 11), 0.5)
    z = y.clone()
    z[..., ::2, :] += 0.1
    z[..., 1::2, :] -= 0.1
    from engine.world.train_vae import _gaussian_window

    w = _gaussian_window(11, 1.5)
    mz = float((w * z[0, 0].double()).sum())
    vz = float((w * z[0, 0].double() ** 2).sum()) - mz ** 2
    lum = (2 * 0.5 * mz + c1) / (0.25 + mz ** 2 + c1)
    assert float(ssim(y, z)) == pytest.approx(lum * (0.03 ** 2) / (vz + 0.03 ** 2), rel=1e-9)
    assert float(ssim(x, 1 - x).mean()) < 0.2
    m = video_metrics(x.permute(1, 0, 2, 3) * 2 - 1, x.permute(1, 0, 2, 3) * 2 - 1)
    assert m["psnr"] == math.inf and m["ssim"] == pytest.approx(1.0)


def test_specs_disjoint_and_all_weathers():
    tr = training_specs(0, 10)
    assert all(0 <= s["seed"] < HELDOUT_SEED_BASE for s in tr)
    assert {s["weather"] for s in tr} == set(WEATHERS)
    assert tr == training_specs(0, 10)
    ho = heldout_specs([HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + 1])
    assert len(ho) == 2 * len(WEATHERS) and all(s["seed"] >= HELDOUT_SEED_BASE for s in ho)


def test_fast_convs_match_diffusers():
    vae = make_world_vae(0)
    video = torch.rand(1, 3, 5, 16, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ref = _losses(vae, video, 1e-5)
    ref["loss"].backward()
    g_ref = [p.grad.clone() for p in vae.parameters()]
    vae.zero_grad(set_to_none=True)
    with fast_convs(vae):
        got = _losses(vae, video, 1e-5)
        got["loss"].backward()
    assert float(got["loss"].detach()) == pytest.approx(float(ref["loss"].detach()), rel=1e-5)
    for a, p in zip(g_ref, vae.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-6)
    assert "forward" not in vars(next(m for m in vae.modules() if type(m).__name__ == "WanCausalConv3d"))


def test_one_step_cli_writes_loadable_folder(tmp_path):
    out = tmp_path / "vae"
    report = main(["--out", str(out), "--steps", "1", "--clips", "2", "--clip-frames", "5", "--window", "5",
                   "--batch", "1", "--size", "16x24", "--eval-frames", "5", "--stats-clips", "2",
                   "--speed-reps", "1", "--speed-frames", "1", "--threads", "1", "--bf16"])
    assert math.isfinite(report["loss_curve"][-1]["loss"])
    saved = json.loads((out / "training.json").read_text())
    assert saved["steps"] == 1 and saved["seed"] == 0 and "--steps 1" in saved["command"]
    assert set(saved["heldout"]["psnr"]) == set(WEATHERS) | {"overall"}
    vae = load_vae(str(out))
    assert vae.config.decoder_base_dim == WORLD_VAE_CONFIG["decoder_base_dim"]
    assert vae.config.latents_std == pytest.approx(saved["latents_std"])
    assert all(s > 0 for s in vae.config.latents_std)
    ev = evaluate_vae(vae, [HELDOUT_SEED_BASE], num_frames=5, height=16, width=24, weathers=("day", "night"))
    for w in ("day", "night", "overall"):
        assert 0 < ev["psnr"][w] < 60 and -1 <= ev["ssim"][w] <= 1
    assert ev["clips"] == 2
    for w in ("day", "night"):  # the saved folder is exactly the model training.json evaluated
        assert ev["psnr"][w] == pytest.approx(saved["heldout"]["psnr"][w], abs=1e-4)


def test_freeze_encoder_fine_tune_keeps_the_encoder_and_its_stats(tmp_path):
    """--init + --freeze-encoder: the decoder changes, the encoder weights and
    latents_mean / std stay bit-identical (a DiT trained on the latents stays valid)."""
    from safetensors.torch import load_file

    common = ["--clips", "2", "--clip-frames", "5", "--window", "5", "--batch", "1", "--size", "16x24",
              "--eval-frames", "5", "--stats-clips", "2", "--speed-reps", "1", "--speed-frames", "1", "--threads", "1"]
    main(["--out", str(tmp_path / "a"), "--steps", "1"] + common)
    main(["--out", str(tmp_path / "b"), "--steps", "2", "--init", str(tmp_path / "a"), "--freeze-encoder"] + common)
    a = load_file(str(tmp_path / "a" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "diffusion_pytorch_model.safetensors"))
    enc = [k for k in a if k.startswith(("encoder.", "quant_conv."))]
    dec = [k for k in a if k not in enc]
    assert enc and dec
    assert all(torch.equal(a[k], b[k]) for k in enc)
    assert any(not torch.equal(a[k], b[k]) for k in dec)
    ca, cb = (json.loads((tmp_path / d / "config.json").read_text()) for d in "ab")
    assert ca["latents_mean"] == cb["latents_mean"] and ca["latents_std"] == cb["latents_std"]
    from engine.world.train_vae import train

    with pytest.raises(ValueError, match="freeze_encoder needs init"):
        train(1, clips=2, clip_frames=5, window=5, batch=1, height=16, width=24, freeze_encoder=True)
