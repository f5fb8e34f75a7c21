import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine_kernels import (circulant_filter_matrix, frequency_response, highfreq_energy,
                     highfreq_energy_reference, highpass, highpass_reference, lowpass,
                     lowpass_reference, spectral_mix, spectral_mix_reference)

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.float16: dict(atol=1e-2, rtol=1e-2),
       torch.bfloat16: dict(atol=5e-2, rtol=5e-2)}
KINDS = ["gaussian", "box"]


def test_frequency_response_definition():
    f = torch.fft.fftfreq(10, dtype=torch.float64)
    torch.testing.assert_close(frequency_response(10, 0.2, "gaussian"), torch.exp(-f**2 / (2 * 0.2**2)))
    assert frequency_response(10, 0.2, "box").tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    g = frequency_response(8, 0.25, "gaussian")
    assert math.isclose(float(g[2]), math.exp(-0.5), rel_tol=1e-12)  # g(cutoff) = e^-1/2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [7, 16])
def test_filter_matrix_is_real_circulant_fft_filter(kind, n):
    a = circulant_filter_matrix(n, 0.2, kind, torch.float64)
    assert a.dtype == torch.float64 and a.shape == (n, n)
    torch.testing.assert_close(a, torch.roll(a, (1, 1), (0, 1)))  # circulant
    x = torch.randn(n, 3, dtype=torch.float64)
    g = frequency_response(n, 0.2, kind)
    want = torch.fft.ifft(torch.fft.fft(x, dim=0) * g[:, None], dim=0).real
    torch.testing.assert_close(a @ x, want)
    torch.testing.assert_close(a.sum(1), torch.ones(n, dtype=torch.float64))  # g(0) = 1
    assert circulant_filter_matrix(n, 0.2, kind, torch.float32) is circulant_filter_matrix(n, 0.2, kind, torch.float32)


def _pair(x, y=None):
    return (x,) if y is None else (x, y)


def _check_all(x, y, cutoff, kind, dtype):
    """Every kernel vs its reference, writing into NaN-poisoned outputs."""
    for fn, ref, args in ((lowpass, lowpass_reference, (x,)), (highpass, highpass_reference, (x,)),
                          (spectral_mix, spectral_mix_reference, (x, y))):
        out = torch.full(x.shape, float("nan"), dtype=x.dtype, device=x.device)
        got = fn(*args, cutoff, kind, out=out)
        assert got is out and not torch.isnan(got).any()
        torch.testing.assert_close(got.float().cpu(), ref(*[a.cpu() for a in args], cutoff, kind).float(),
                                   **TOL[dtype])
    out = torch.full(x.shape[:-2], float("nan"), device=x.device)
    got = highfreq_energy(x, cutoff, kind, out=out)
    assert got.dtype == torch.float32 and got.shape == x.shape[:-2] and not torch.isnan(got).any()
    torch.testing.assert_close(got.cpu(), highfreq_energy_reference(x.cpu(), cutoff, kind),
                               atol=TOL[dtype]["atol"], rtol=1e-3 if dtype != torch.float32 else 1e-5)


@settings(max_examples=25, deadline=None)
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), h=st.integers(2, 40),
       w=st.integers(2, 40), cutoff=st.floats(0.01, 0.5), kind=st.sampled_from(KINDS))
def test_kernels_match_fft_reference_float32(lead, h, w, cutoff, kind):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(*lead, h, w, device=dev)
    y = torch.randn(*lead, h, w, device=dev)
    _check_all(x, y, cutoff, kind, torch.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_float16(kind, device):
    x = torch.randn(2, 3, 20, 36, device=device, dtype=torch.float16)
    y = torch.randn_like(x)
    _check_all(x, y, 0.15, kind, torch.float16)


def test_latent_shape_and_noncontiguous(device):
    """A [B, C, F, h, w] latent with a Wan-like 30x52 frame, viewed with h/w transposed."""
    x = torch.randn(1, 4, 2, 52, 30, device=device).transpose(-1, -2)
    assert not x.is_contiguous()
    torch.testing.assert_close(highpass(x, 0.1), highpass_reference(x, 0.1), **TOL[torch.float32])


def test_identities(device):
    x = torch.randn(3, 12, 20, device=device)
    torch.testing.assert_close(lowpass(x, 0.2) + highpass(x, 0.2), x, atol=1e-5, rtol=1e-5)
    # a box that passes every bin is the identity
    torch.testing.assert_close(lowpass(x, 0.5, "box"), x, atol=1e-5, rtol=1e-5)
    # constants have no high frequencies
    c = torch.randn(3, 1, 1, device=device).expand(3, 12, 20).contiguous()
    torch.testing.assert_close(lowpass(c, 0.05), c, atol=1e-5, rtol=1e-5)
    assert highfreq_energy(c, 0.05).abs().max() < 1e-9
    # mixing a with itself gives a back; high-frequency energy of noise grows with the cutoff lowering
    torch.testing.assert_close(spectral_mix(x, x, 0.2), x, atol=1e-5, rtol=1e-5)
    e_lo, e_hi = highfreq_energy(x, 0.05).mean(), highfreq_energy(x, 0.4).mean()
    assert e_lo > e_hi > 0


def test_bad_arguments(device):
    x = torch.randn(4, 4, device=device)
    for cutoff in (0.0, 0.6, -0.1):
        with pytest.raises(ValueError, match="cutoff"):
            lowpass(x, cutoff)
    with pytest.raises(ValueError, match="kind"):
        highpass(x, 0.2, "butterworth")
    with pytest.raises(ValueError, match="same shape|share shape"):
        spectral_mix(x, torch.randn(4, 5, device=device), 0.2)
    with pytest.raises(TypeError):
        lowpass(x.double(), 0.2)
    with pytest.raises(ValueError):
        lowpass(torch.randn(4, device=device), 0.2)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_gpu(kind):
    x = torch.randn(2, 16, 3, 60, 104, device="cuda", dtype=torch.bfloat16)
    y = torch.randn_like(x)
    _check_all(x, y, 0.1, kind, torch.bfloat16)
