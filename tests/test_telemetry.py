"""Drift telemetry (issue 16, part 5): every run's stats carry one sharpness value per
output frame, the high-pass energy of the decoded luma (engine_kernels.spectral)."""

import numpy as np
import pytest
import torch

import engine
from engine.telemetry import SHARPNESS_CUTOFF, Sharpness, frame_sharpness
from engine_kernels import highfreq_energy_reference


def _hand_energy(luma: np.ndarray, c: float) -> np.ndarray:
    """mean |H(x)|^2 per frame by hand: FFT, multiply by 1 - g(fy) g(fx), inverse FFT."""
    t, h, w = luma.shape
    g = lambda n: np.exp(-np.fft.fftfreq(n) ** 2 / (2 * c * c))  # noqa: E731
    hp = np.fft.ifft2(np.fft.fft2(luma) * (1 - g(h)[:, None] * g(w)[None, :])).real
    return (hp ** 2).mean((1, 2))


def test_frame_sharpness_is_the_high_pass_energy_of_the_luma():
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, 4, 24, 40, generator=g) * 2 - 1
    want = _hand_energy(video[0].mean(0).double().numpy(), SHARPNESS_CUTOFF)
    assert np.allclose(frame_sharpness(video).numpy(), want, rtol=1e-5)
    blurred = torch.nn.functional.avg_pool3d(video, (1, 3, 3), 1, (0, 1, 1), count_include_pad=False)
    assert (frame_sharpness(blurred) < 0.5 * frame_sharpness(video)).all()  # blur kills high frequencies
    big = torch.rand(1, 3, 2, 300, 40, generator=g) * 2 - 1  # > 256 rows: box-averaged by 2 first
    luma = torch.nn.functional.avg_pool2d(big[0].mean(0)[:, None], 2, 2)[:, 0]
    assert torch.allclose(frame_sharpness(big), highfreq_energy_reference(luma, SHARPNESS_CUTOFF))
    with pytest.raises(ValueError, match=r"\[B, 3, t, H, W\]"):
        frame_sharpness(video[:, :2])


def test_sharpness_gathers_pieces_in_order():
    s = Sharpness()
    a, b = torch.rand(1, 3, 2, 16, 16) * 2 - 1, torch.rand(1, 3, 3, 16, 16) * 2 - 1
    s.record(a)
    s.record(b)
    assert len(s) == 5
    assert s.values() == torch.cat([frame_sharpness(a), frame_sharpness(b)]).tolist()
    assert len(s.values()) == 5  # a second call keeps them


@pytest.mark.parametrize("kw", [dict(strategy="ar", num_frames=13),
                                dict(strategy="longdwm", num_frames=49, keyframes=5, fps_ratio=3, keyframe_clips=True)])
def test_every_run_reports_one_value_per_frame(kw):
    v = engine.generate("tiny-random", height=32, width=32, progress=False, prompt="x", **kw)
    sh = np.asarray(v.stats.sharpness)
    assert sh.shape == (len(v.frames),) and np.isfinite(sh).all() and (sh > 0).all()
    # it is the decoded frames' own signal: recompute from the uint8 output
    frames = torch.from_numpy(v.frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    assert np.allclose(sh, frame_sharpness(frames).numpy(), rtol=0.05, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton path runs on CUDA (gpu lane)")
def test_cuda_sharpness_uses_the_kernel_and_equals_the_reference():
    video = torch.rand(1, 3, 5, 64, 112, device="cuda") * 2 - 1
    assert torch.allclose(frame_sharpness(video).cpu(), frame_sharpness(video.cpu()), rtol=1e-4, atol=1e-6)
