import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine_kernels import frame_noise, frame_seed, interpolation_weights, noise_init, noise_init_reference
from engine_kernels.noise import _splitmix64


def test_splitmix64_known_value():
    # first output of the reference splitmix64 generator started from state 0
    assert _splitmix64(0) == 0xE220A8397B1DCDAF
    assert frame_seed(1, 0, 5) != frame_seed(1, 0, 6) != frame_seed(1, 1, 6)
    assert 0 <= frame_seed(-3, -1, -7) < 2**64


def test_frame_noise_depends_only_on_seed_stream_position():
    a = frame_noise(7, [5, 3, 9], (2, 4, 6))
    assert a.shape == (2, 3, 4, 6)
    for i, p in enumerate([5, 3, 9]):
        torch.testing.assert_close(a[:, i], frame_noise(7, torch.tensor([p]), (2, 4, 6))[:, 0], rtol=0, atol=0)
    b = frame_noise(7, [3], (1, 2, 4, 6), stream=1)
    assert b.shape == (1, 2, 1, 4, 6)
    assert not torch.equal(b[0, :, 0], a[:, 1])  # other stream, other noise
    assert not torch.equal(frame_noise(8, [5], (2, 4, 6))[:, 0], a[:, 0])  # other seed
    assert frame_noise(7, [5], (2, 4, 6), dtype=torch.float16).dtype == torch.float16
    big = frame_noise(123, [0], (64, 64, 64))
    assert abs(float(big.mean())) < 0.01 and abs(float(big.var()) - 1) < 0.01


def test_interpolation_weights():
    ia, ib, wa, wb = interpolation_weights([0, 2, 4, 6, 7, 9, 12], [2, 6, 10], "linear")
    assert ia.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert ib.tolist() == [0, 0, 1, 1, 2, 2, 2]
    # outside and exact positions copy one planning frame
    for k in (0, 1, 3, 6):
        assert wa[k] == 1 and wb[k] == 0
    assert math.isclose(wa[2], 1 / math.sqrt(2)) and math.isclose(wb[2], 1 / math.sqrt(2))
    w = 1 / 4  # position 7 between 6 and 10
    n = math.sqrt((1 - w) ** 2 + w ** 2)
    assert math.isclose(wa[4], (1 - w) / n) and math.isclose(wb[4], w / n)
    _, _, sa, sb = interpolation_weights([7], [6, 10], "slerp")
    assert math.isclose(sa[0], math.cos(w * math.pi / 2)) and math.isclose(sb[0], math.sin(w * math.pi / 2))
    with pytest.raises(ValueError, match="strictly increasing"):
        interpolation_weights([1], [3, 3])
    with pytest.raises(ValueError, match="mode"):
        interpolation_weights([1], [3], "cubic")


@settings(max_examples=30, deadline=None)
@given(data=st.data(), mode=st.sampled_from(["linear", "slerp"]), b=st.integers(1, 2), c=st.integers(1, 3),
       h=st.integers(1, 9), w=st.integers(1, 9), use_fresh=st.booleans(), use_sigma=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16]))
def test_kernel_matches_reference(data, mode, b, c, h, w, use_fresh, use_sigma, dtype):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    pp = sorted(data.draw(st.sets(st.integers(-5, 30), min_size=1, max_size=4)))
    fp = data.draw(st.lists(st.integers(-8, 35), min_size=1, max_size=6))
    F = len(fp)
    pn = torch.randn(b, c, len(pp), h, w, device=dev, dtype=dtype)
    kw = {}
    if use_fresh:
        kw.update(fresh=torch.randn(b, c, F, h, w, device=dev, dtype=dtype), rho=data.draw(st.floats(0, 1)))
    if use_sigma:
        sigma = torch.tensor(data.draw(st.lists(st.sampled_from([1.0, 0.0, 0.3, 0.75]), min_size=F, max_size=F)))
        kw.update(x0=torch.randn(b, c, F, h, w, device=dev, dtype=dtype), sigma=sigma)
    out = torch.full((b, c, F, h, w), float("nan"), device=dev, dtype=dtype)
    got = noise_init(fp, pp, pn, mode=mode, out=out, **kw)
    want = noise_init_reference(fp, pp, pn, mode=mode, **kw)
    assert got is out and not torch.isnan(got).any()
    tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(got, want, **tol)


def test_exact_copies_and_endpoints(device):
    pn = torch.randn(1, 2, 3, 4, 5, device=device)
    got = noise_init([-3, 2, 6, 10, 40], [2, 6, 10], pn)
    for i, j in ((0, 0), (1, 0), (2, 1), (3, 2), (4, 2)):
        assert torch.equal(got[:, :, i], pn[:, :, j])


@pytest.mark.parametrize("mode", ["linear", "slerp"])
def test_unit_variance_kept(mode, device):
    """Independent unit-variance planning noise -> every output frame has variance 1 +- 0.02."""
    pn = torch.randn(1, 16, 3, 128, 128, device=device)  # 262144 samples per frame: sd of var ~0.003
    fresh = torch.randn(1, 16, 9, 128, 128, device=device)
    fp = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    for kw in ({}, dict(fresh=fresh, rho=0.35)):
        x = noise_init(fp, [0, 4, 8], pn, mode=mode, **kw)
        var = x.float().var(dim=(0, 1, 3, 4))
        assert ((var - 1).abs() < 0.02).all(), var
    # a naive (unnormalised) lerp would lose variance mid-way: guard the test itself
    naive = 0.5 * pn[:, :, 0] + 0.5 * pn[:, :, 1]
    assert naive.var() < 0.6


def test_anchor_renoising_and_x0_not_read(device):
    pn = torch.randn(1, 2, 2, 8, 8, device=device)
    x0 = torch.randn(1, 2, 3, 8, 8, device=device)
    x0[:, :, 0] = float("nan")  # sigma == 1 there: must not be read
    sigma = [1.0, 0.25, 0.0]
    got = noise_init([0, 1, 2], [0, 2], pn, x0=x0, sigma=sigma)
    eps = noise_init([0, 1, 2], [0, 2], pn)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got[:, :, 0], eps[:, :, 0])
    torch.testing.assert_close(got[:, :, 1], 0.75 * x0[:, :, 1] + 0.25 * eps[:, :, 1])
    torch.testing.assert_close(got[:, :, 2], x0[:, :, 2])


def test_bad_arguments(device):
    pn = torch.randn(1, 2, 2, 4, 4, device=device)
    with pytest.raises(ValueError, match="fresh"):
        noise_init([0, 1], [0, 3], pn, rho=0.5)
    with pytest.raises(ValueError, match="x0"):
        noise_init([0, 1], [0, 3], pn, sigma=[1.0, 0.5])
    with pytest.raises(ValueError, match="planning_positions"):
        noise_init([0, 1], [0, 3, 5], pn)
    with pytest.raises(ValueError, match="rho"):
        noise_init([0, 1], [0, 3], pn, fresh=torch.randn(1, 2, 2, 4, 4, device=device), rho=1.5)
    with pytest.raises(ValueError, match=r"\[B, C, P, h, w\]"):
        noise_init([0], [0], pn[0])


@pytest.mark.gpu
def test_bfloat16_gpu():
    pn = torch.randn(1, 16, 4, 60, 104, device="cuda", dtype=torch.bfloat16)
    fresh = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16)
    fp = list(range(21))
    got = noise_init(fp, [0, 7, 14, 20], pn, fresh=fresh, rho=0.2, mode="slerp")
    want = noise_init_reference(fp, [0, 7, 14, 20], pn, fresh=fresh, rho=0.2, mode="slerp")
    torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=1e-2)
