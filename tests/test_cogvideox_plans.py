"""CogVideoX (v-prediction on a DDPM schedule) as a model of a two-model plan: the
VPredictionAdapter turns it into a flow-velocity predictor for the runtime's samplers."""

import math

import numpy as np
import pytest
import torch

import engine
from engine.models.adapters import (VPredictionAdapter, as_flow_model, cogvideox_alphas_cumprod,
                                    timesteps_for_alpha_bar)
from engine.models.cogvideox import COGVIDEOX_PRESETS, build_cogvideox, load_cogvideox

SMALL = dict(height=32, width=32, progress=False, prompt="x")


@pytest.mark.parametrize("shift", [3.0, 1.0])  # CogVideoX-2B, CogVideoX-5B
def test_schedule_is_diffusers_cogvideox_scheduler(shift):
    from diffusers import CogVideoXDDIMScheduler

    ref = CogVideoXDDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                 prediction_type="v_prediction", rescale_betas_zero_snr=True, snr_shift_scale=shift,
                                 clip_sample=False, timestep_spacing="trailing").alphas_cumprod
    ours = cogvideox_alphas_cumprod(snr_shift_scale=shift)
    assert torch.allclose(ours, ref.double(), rtol=1e-12, atol=1e-15) and ours[-1] == 0
    # table entries map back to their own integer timesteps; ends clamp
    idx = torch.tensor([0, 1, 17, 500, 998, 999])
    assert torch.equal(timesteps_for_alpha_bar(ours[idx], ours), idx.double())
    assert timesteps_for_alpha_bar(torch.tensor([1.0, 0.0]), ours).tolist() == [0.0, 999.0]


def _hand_timestep(ab: float, ac: np.ndarray) -> float:
    """Fractional DDPM timestep with alpha_bar ab: linear in log-SNR between table entries."""
    if ab >= ac[0]:
        return 0.0
    if ab <= ac[-1]:
        return float(len(ac) - 1)
    k = int(np.nonzero(ac > ab)[0][-1])  # ac[k] > ab >= ac[k+1]
    lo, hi = ac[k], ac[k + 1]
    if hi == 0.0:  # zero-terminal-SNR segment: linear in sqrt(alpha_bar)
        return k + (math.sqrt(lo) - math.sqrt(ab)) / (math.sqrt(lo) - math.sqrt(hi))
    lam = lambda a: math.log(a / (1 - a))  # noqa: E731
    return k + (lam(lo) - lam(ab)) / (lam(lo) - lam(hi))


def test_adapter_x0_is_the_hand_computation():
    torch.manual_seed(0)
    cog = load_cogvideox("tiny-cogvideox", device="cpu")
    ad = as_flow_model(cog)
    assert isinstance(ad, VPredictionAdapter) and ad.config is cog.config
    from diffusers import CogVideoXDDIMScheduler

    ac = CogVideoXDDIMScheduler(rescale_betas_zero_snr=True, snr_shift_scale=3.0,
                                prediction_type="v_prediction").alphas_cumprod.double().numpy()
    sig = [0.0, 0.3, 0.8, 1.0, 0.9999]  # a clean context frame, generated frames, pure noise, the zero-SNR segment
    F = len(sig)
    x_s = torch.randn(1, 16, F, 4, 4)
    text = torch.randn(1, 16, cog.config.text_dim)
    ctx = ad.prepare_context(text)
    kw = dict(frame_positions=[0, 2, 4, 6, 8], visibility=torch.ones(F, F, dtype=torch.bool))
    timesteps = torch.tensor([sig]) * 1000.0  # [B, F] (float32) as the runtime passes them
    sig = [float(t) / 1000.0 for t in timesteps[0].double()]

    # by hand, frame by frame
    abs_, t_hand, x_t = [], [], torch.empty_like(x_s)
    for f, s in enumerate(sig):
        ab = (1 - s) ** 2 / ((1 - s) ** 2 + s * s)
        abs_.append(ab)
        t_hand.append(_hand_timestep(ab, ac))
        x_t[:, :, f] = x_s[:, :, f] * (math.sqrt(ab) / (1 - s) if s < 1 else 1.0)  # s = 1: x_t = eps = x_s
    assert t_hand[0] == 0.0 and t_hand[3] == 999.0 and 998 < t_hand[4] < 999 and 0 < t_hand[1] < t_hand[2] < 999
    v = cog(x_t, torch.tensor([t_hand], dtype=torch.float32), ctx, **kw)
    x0_hand = torch.empty_like(x_s)
    for f, ab in enumerate(abs_):
        x0_hand[:, :, f] = math.sqrt(ab) * x_t[:, :, f] - math.sqrt(1 - ab) * v[:, :, f]

    x0 = ad.predict_x0(x_s, timesteps, ctx, **kw)
    assert torch.allclose(x0, x0_hand, atol=2e-5, rtol=1e-5)
    assert torch.equal(x0[:, :, 0], x_s[:, :, 0])  # sigma 0: the frame itself
    assert torch.allclose(x0[:, :, 3], -v[:, :, 3], atol=1e-6)  # sigma 1: x0 = -v
    vel = ad(x_s, timesteps, ctx, **kw)
    assert torch.equal(vel[:, :, 0], torch.zeros_like(vel[:, :, 0]))  # clean context frame
    for f in range(1, F):  # flow velocity: x_s = x0 + s * vel
        assert torch.allclose(x_s[:, :, f], x0_hand[:, :, f] + sig[f] * vel[:, :, f], atol=5e-5)
    # [B] timesteps = [B, F] with equal rows
    same = torch.full((1, F), 600.0)
    assert torch.equal(ad(x_s, torch.tensor([600.0]), ctx, **kw), ad(x_s, same, ctx, **kw))


def test_longdwm_cogvideox_coarse_wan_fine():
    tiny = engine.load_model("tiny-random", device="cpu")
    kw = dict(num_frames=25, strategy="longdwm", keyframes=3, fps_ratio=2, seed=3, **SMALL)
    runs = {}
    for label, devs in [("1", ["cpu"]), ("2", ["cpu", "cpu"])]:
        runs[label] = engine.generate(tiny, coarse_model="tiny-cogvideox", devices=devs, **kw)
    ref = runs["1"].frames
    assert ref.shape == (25, 32, 32, 3) and ref.std() > 1.0
    assert np.array_equal(runs["2"].frames, ref)
    # a CogVideoXDiT object is wrapped the same way as the preset name
    obj = engine.generate(tiny, coarse_model=load_cogvideox("tiny-cogvideox", device="cpu"), **kw)
    assert np.array_equal(obj.frames, ref)
    wan_only = engine.generate(tiny, **kw)
    assert not np.array_equal(wan_only.frames, ref)
    # the coarse jobs ran the CogVideoX model: 2 rollouts x 4 steps
    calls = []
    cog = load_cogvideox("tiny-cogvideox", device="cpu")
    cog.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[2]))
    engine.generate(tiny, coarse_model=cog, **kw)
    assert len(calls) == 2 * 4


def test_cogvideox_with_its_own_text_space_and_per_frame_schedules():
    """A CogVideoX fine model with another text width gets its own context; MiLA's TPD gives
    every generated frame its own sigma and its re-noised anchors start below 1."""
    tiny = engine.load_model("tiny-random", device="cpu")
    cog = build_cogvideox(COGVIDEOX_PRESETS["tiny-cogvideox"].replace(text_dim=48), seed=4).eval()
    kw = dict(num_frames=17, strategy="mila", clip_frames=2, seed=0, **SMALL)
    v = engine.generate(tiny, fine_model=cog, **kw)
    assert v.frames.shape == (17, 32, 32, 3) and v.frames.std() > 1.0
    again = engine.generate(tiny, fine_model=cog, devices=["cpu", "cpu"], **kw)
    assert np.array_equal(v.frames, again.frames)
