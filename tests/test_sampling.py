"""Tests for engine.sampling (CPU, fast). diffusers is used only as a numerical reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sampling import (
    EulerSampler,
    FewStepSampler,
    UniPCSampler,
    cfg,
    check_sigma_table,
    diffusers_flow_sigmas,
    eps_from_velocity,
    expand_sigma,
    few_step_sigmas,
    flow_sigmas,
    make_sampler,
    renoise,
    shift_sigmas,
    timesteps_from_sigmas,
    velocity_from_x0,
    velocity_to_x0,
    x0_from_velocity,
)

B, C, F, H, W = 2, 4, 3, 4, 5


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


class FakeModel:
    """Deterministic, nonlinear, frame-local 'velocity model' v = f(x, sigma)."""

    def __init__(self, seed: int = 1, channels: int = C):
        g = _gen(seed)
        self.A = torch.randn(channels, channels, generator=g, dtype=torch.float64) / channels**0.5
        self.b = torch.randn(channels, generator=g, dtype=torch.float64)
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self.calls += 1
        s = expand_sigma(sigma, x)
        A, b = self.A.to(x.dtype), self.b.to(x.dtype).view(1, -1, 1, 1, 1)
        return torch.tanh(torch.einsum("oc,bcfhw->bofhw", A, x)) + b * (1 + s) - 0.5 * x


def _run(sampler, x, model, noise=None):
    traj = []
    for i in range(sampler.num_steps):
        x = sampler.step(i, x, model(x, sampler.sigma(i)), noise=noise)
        traj.append(x)
    return traj


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# --------------------------------------------------------------------------- schedules
def test_shift_sigmas_formula():
    assert shift_sigmas(0.5, 3.0) == pytest.approx(0.75)
    assert shift_sigmas(0.0, 5.0) == 0.0 and shift_sigmas(1.0, 5.0) == 1.0
    s = torch.rand(17, generator=_gen(3), dtype=torch.float64)
    for k in (0.5, 1.0, 3.0, 5.0):
        torch.testing.assert_close(shift_sigmas(s, k), k * s / (1 + (k - 1) * s), rtol=0, atol=0)
    torch.testing.assert_close(shift_sigmas(s, 1.0), s, rtol=0, atol=0)
    # monotone increasing in s, and in k
    assert (shift_sigmas(s.sort().values, 5.0).diff() > 0).all()
    assert (shift_sigmas(s, 5.0) >= shift_sigmas(s, 3.0)).all()
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="shift"):
            shift_sigmas(0.5, bad)


@settings(max_examples=60, deadline=None)
@given(s=st.floats(0.0, 1.0), k=st.floats(0.05, 20.0))
def test_shift_sigmas_inverse_and_range(s, k):
    y = shift_sigmas(s, k)
    assert 0.0 <= y <= 1.0
    assert shift_sigmas(y, 1.0 / k) == pytest.approx(s, abs=1e-12)


def test_few_step_example_values_exact():
    s = few_step_sigmas((1000, 750, 500, 250), shift=5.0)
    assert s.dtype == torch.float64
    assert s.tolist() == [1.0, 0.9375, 5.0 / 6.0, 0.625, 0.0]
    assert few_step_sigmas().tolist() == s.tolist()  # defaults
    # the uniform 4-step flow schedule is the same table
    assert flow_sigmas(4, 5.0).tolist() == s.tolist()
    for bad in ((1000, 1000, 500), (250, 500), (1001, 500), (500, 0), ()):
        with pytest.raises(ValueError, match="timesteps"):
            few_step_sigmas(bad)


@pytest.mark.parametrize("n", [1, 2, 4, 10, 25, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 0.7])
def test_flow_sigmas_endpoints_monotone(n, shift):
    s = flow_sigmas(n, shift)
    assert s.dtype == torch.float64 and s.shape == (n + 1,)
    assert s[0].item() == 1.0 and s[-1].item() == 0.0
    assert (s.diff() < 0).all()
    ref = shift_sigmas(torch.linspace(1, 0, n + 1, dtype=torch.float64), shift)
    torch.testing.assert_close(s, ref, rtol=0, atol=1e-15)
    assert timesteps_from_sigmas(s)[0].item() == 1000.0


def test_flow_sigmas_bad_num_steps():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_steps"):
            flow_sigmas(bad)


@pytest.mark.parametrize("n", [4, 10, 25])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_diffusers_flow_sigmas_and_relation(n, shift):
    from diffusers import UniPCMultistepScheduler

    sch = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    sch.set_timesteps(n)
    torch.testing.assert_close(diffusers_flow_sigmas(n, shift), sch.sigmas.double(), rtol=0, atol=0)
    # ours differs only by the linspace endpoint (0 vs 1/1000) and the 1e-6 nudge
    assert (flow_sigmas(n, shift) - sch.sigmas.double()).abs().max() <= 1e-3 * max(shift, 1.0) + 1e-6


# --------------------------------------------------------------------------- conversions
def test_expand_sigma_shapes():
    x = _randn(B, C, F, H, W)
    assert expand_sigma(0.3, x).shape == (1, 1, 1, 1, 1)
    assert expand_sigma(torch.tensor(0.3), x).shape == (1, 1, 1, 1, 1)
    e = expand_sigma(torch.rand(F, dtype=torch.float64), x)
    assert e.shape == (1, 1, F, 1, 1) and e.dtype == x.dtype
    assert expand_sigma(torch.rand(B, F), x).shape == (B, 1, F, 1, 1)
    assert expand_sigma(torch.rand(1, F), x).shape == (1, 1, F, 1, 1)
    assert expand_sigma(torch.rand(F, dtype=torch.float64), x.float()).dtype == torch.float32
    # python floats go straight to the latents' dtype (no float32 rounding)
    assert expand_sigma(0.1, x).item() == 0.1
    assert timesteps_from_sigmas(0.1).dtype == torch.float64
    with pytest.raises(ValueError, match="frames"):
        expand_sigma(torch.rand(F + 1), x)
    with pytest.raises(ValueError, match=r"\[B, F\]"):
        expand_sigma(torch.rand(B + 1, F), x)
    with pytest.raises(ValueError, match="scalar"):
        expand_sigma(torch.rand(B, 1, F), x)
    with pytest.raises(ValueError, match="5-D"):
        expand_sigma(0.5, x[0])


def test_velocity_conversions_per_frame():
    x0, eps = _randn(B, C, F, H, W, seed=1), _randn(B, C, F, H, W, seed=2)
    sig = torch.rand(B, F, generator=_gen(4), dtype=torch.float64) * 0.9 + 0.05
    x_s = renoise(x0, eps, sig)
    s5 = sig.view(B, 1, F, 1, 1)
    torch.testing.assert_close(x_s, (1 - s5) * x0 + s5 * eps, rtol=0, atol=0)
    v = eps - x0
    torch.testing.assert_close(x0_from_velocity(x_s, v, sig), x0)
    torch.testing.assert_close(velocity_to_x0(x_s, v, sig), x0)
    torch.testing.assert_close(eps_from_velocity(x_s, v, sig), eps)
    torch.testing.assert_close(velocity_from_x0(x_s, x0, sig), v)
    # per-frame [F] and scalar forms
    torch.testing.assert_close(renoise(x0, eps, sig[0]), (1 - s5[:1]) * x0 + s5[:1] * eps, rtol=0, atol=0)
    torch.testing.assert_close(renoise(x0, eps, 0.25), 0.75 * x0 + 0.25 * eps, rtol=0, atol=0)


def test_cfg_formula():
    vc, vu = _randn(B, C, F, H, W, seed=5), _randn(B, C, F, H, W, seed=6)
    for scale in (0.0, 1.0, 5.0, 7.5):
        torch.testing.assert_close(cfg(vc, vu, scale), vu + scale * (vc - vu), rtol=0, atol=0)
    torch.testing.assert_close(cfg(vc, vu, 1.0), vc)
    torch.testing.assert_close(cfg(vc, vu, 0.0), vu)
    with pytest.raises(ValueError, match="shape"):
        cfg(vc, vu[:, :, :1], 5.0)


# --------------------------------------------------------------------------- Euler
@pytest.mark.parametrize("n", [4, 10, 25])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_euler_matches_diffusers(n, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sig = flow_sigmas(n, shift)
    sch = FlowMatchEulerDiscreteScheduler(shift=1.0)  # our sigmas are already shifted
    sch.set_timesteps(sigmas=sig[:-1].numpy())
    sch.set_begin_index(0)
    table = sch.sigmas.double()  # float32-rounded copy of ours, terminal 0 appended
    torch.testing.assert_close(table, sig, rtol=0, atol=1e-7)
    model = FakeModel()
    x_ref = x_ours = _randn(B, C, F, H, W, seed=7, dtype=torch.float32)
    ours = EulerSampler(table)
    for i in range(n):
        x_ref = sch.step(model(x_ref, table[i]), sch.timesteps[i], x_ref).prev_sample
        x_ours = ours.step(i, x_ours, model(x_ours, table[i]))
        assert _rel(x_ours, x_ref) < 1e-5, (i, _rel(x_ours, x_ref))


def test_euler_formula_and_last_x0():
    sig = flow_sigmas(6, 3.0)
    model = FakeModel(seed=2)
    x = _randn(B, C, F, H, W, seed=8)
    s = EulerSampler(sig)
    for i in range(6):
        v = model(x, sig[i])
        x_next = s.step(i, x, v)
        torch.testing.assert_close(x_next, x + (sig[i + 1] - sig[i]) * v, rtol=0, atol=1e-15)
        torch.testing.assert_close(s.last_x0, x - sig[i] * v, rtol=0, atol=1e-15)
        x = x_next
    torch.testing.assert_close(x, s.last_x0)  # final step lands on the x0 prediction


# --------------------------------------------------------------------------- UniPC
def _diffusers_unipc(n_or_sigmas, order=2, disable_corrector=()):
    from diffusers import UniPCMultistepScheduler

    sch = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=1.0,
        solver_order=order,
        predict_x0=True,
        solver_type="bh2",
        lower_order_final=True,
        disable_corrector=list(disable_corrector),
    )
    sch.set_timesteps(sigmas=np.asarray(n_or_sigmas[:-1], dtype=np.float64))
    sch.set_begin_index(0)
    return sch


def _compare_unipc(sig, dtype, order=2, use_corrector=True, tol=1e-5):
    n = sig.shape[0] - 1
    sch = _diffusers_unipc(sig.numpy(), order, () if use_corrector else range(n))
    table = sch.sigmas.double()  # identical sigmas for both
    torch.testing.assert_close(table, sig, rtol=0, atol=2e-6)
    ours = UniPCSampler(table, solver_order=order, use_corrector=use_corrector)
    model = FakeModel(seed=3)
    x_ref = x_ours = _randn(B, C, F, H, W, seed=9, dtype=dtype)
    for i in range(n):
        x_ref = sch.step(model(x_ref, table[i]), sch.timesteps[i], x_ref).prev_sample
        x_ours = ours.step(i, x_ours, model(x_ours, table[i]))
        assert x_ours.dtype == dtype
        assert _rel(x_ours, x_ref) < tol, (i, _rel(x_ours, x_ref))
    return x_ours


@pytest.mark.parametrize("n", [4, 10, 25])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_unipc_matches_diffusers_float64(n, shift):
    _compare_unipc(diffusers_flow_sigmas(n, shift), torch.float64)


@pytest.mark.parametrize("n", [4, 10, 25])
@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_unipc_matches_diffusers_from_flow_sigmas(n, shift):
    # our own schedule (1 nudged to 1 - 1e-6 by diffusers, which we then also use)
    _compare_unipc(flow_sigmas(n, shift), torch.float64)


def test_unipc_matches_diffusers_float32_order1_no_corrector():
    _compare_unipc(diffusers_flow_sigmas(12, 5.0), torch.float32, tol=2e-5)
    _compare_unipc(diffusers_flow_sigmas(8, 3.0), torch.float64, order=1)
    _compare_unipc(diffusers_flow_sigmas(8, 3.0), torch.float64, use_corrector=False)
    _compare_unipc(diffusers_flow_sigmas(2, 3.0), torch.float64)
    _compare_unipc(diffusers_flow_sigmas(1, 3.0), torch.float64)


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_unipc_exact_endpoints(n):
    """Sigma = 1 and 0 are handled exactly: first step is DDIM-like, last returns x0."""
    sig = flow_sigmas(n, 5.0)
    model = FakeModel(seed=4)
    s = UniPCSampler(sig)
    x = _randn(B, C, F, H, W, seed=10)
    for i in range(n):
        v = model(x, sig[i])
        x_next = s.step(i, x, v)
        assert torch.isfinite(x_next).all()
        if i == 0:
            m = x - v
            torch.testing.assert_close(x_next, sig[1] * x + (1 - sig[1]) * m, rtol=1e-13, atol=1e-13)
        x = x_next
    torch.testing.assert_close(x, s.last_x0, rtol=0, atol=0)


def test_unipc_restart_and_order_errors():
    sig = flow_sigmas(5, 3.0)
    model = FakeModel(seed=5)
    x = _randn(B, C, F, H, W, seed=11)
    s = UniPCSampler(sig)
    a = _run(s, x, model)[-1]
    b = _run(s, x, model)[-1]  # step(0) restarts the history
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    s.reset()
    s.step(0, x, model(x, sig[0]))
    with pytest.raises(ValueError, match="in order"):
        s.step(2, x, model(x, sig[2]))
    with pytest.raises(ValueError, match="solver_order"):
        UniPCSampler(sig, solver_order=3)


# --------------------------------------------------------------------------- per-frame tables
def _all_kinds(table, noise_fn=None):
    return {
        "euler": EulerSampler(table),
        "unipc": UniPCSampler(table),
        "fewstep": FewStepSampler(table, noise=noise_fn),
    }


def _noise_tensor(seed):
    # deterministic "fresh" noise per call, independent of call order per shape
    state = {"k": 0}

    def fn(like):
        state["k"] += 1
        eps = torch.randn(like.shape, generator=_gen(seed + state["k"]), dtype=torch.float64)
        return eps.to(like.dtype)

    return fn


@pytest.mark.parametrize("kind", ["euler", "unipc", "fewstep"])
def test_per_frame_equal_rows_equal_scalar(kind):
    sig = flow_sigmas(7, 5.0)
    model = FakeModel(seed=6)
    x = _randn(B, C, F, H, W, seed=12)
    scalar = _all_kinds(sig, _noise_tensor(100))[kind]
    per_frame = _all_kinds(sig[:, None].expand(-1, F).contiguous(), _noise_tensor(100))[kind]
    per_bf = _all_kinds(sig[:, None, None].expand(-1, B, F).contiguous(), _noise_tensor(100))[kind]
    ta, tb, tc = _run(scalar, x, model), _run(per_frame, x, model), _run(per_bf, x, model)
    for a, b, c in zip(ta, tb, tc):
        torch.testing.assert_close(b, a, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(c, a, rtol=1e-14, atol=1e-14)


def _distinct_frame_table(n):
    """[n+1, F] table: each frame its own strictly decreasing schedule ending at 0 (TPD-like)."""
    cols = [flow_sigmas(n, 5.0), flow_sigmas(n, 1.0) * 0.8, flow_sigmas(n, 2.5) * 0.5]
    return torch.stack(cols[:F], dim=1)


@pytest.mark.parametrize("kind", ["euler", "unipc", "fewstep"])
def test_per_frame_distinct_rows_equal_separate_runs(kind):
    n = 6
    table = _distinct_frame_table(n)
    model = FakeModel(seed=7)
    x = _randn(B, C, F, H, W, seed=13)
    noises = [_randn(B, C, F, H, W, seed=200 + i) for i in range(n)]

    def run(sampler, x, sl):
        for i in range(n):
            x = sampler.step(i, x, model(x, sampler.sigma(i)), noise=noises[i][:, :, sl])
        return x

    make = {"euler": EulerSampler, "unipc": UniPCSampler, "fewstep": FewStepSampler}[kind]
    joint = run(make(table), x, slice(None))
    for f in range(F):
        alone = run(make(table[:, f]), x[:, :, f : f + 1], slice(f, f + 1))
        torch.testing.assert_close(joint[:, :, f : f + 1], alone, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- few-step
def test_fewstep_matches_hand_loop():
    sig = few_step_sigmas((1000, 750, 500, 250), 5.0)
    model = FakeModel(seed=8)
    x_init = _randn(B, C, F, H, W, seed=14)

    # hand-written Self-Forcing loop
    g = _gen(42)
    x = x_init
    for i in range(4):
        s = sig[i].item()
        x0 = x - s * model(x, s)
        if i < 3:
            eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
            x = (1 - sig[i + 1].item()) * x0 + sig[i + 1].item() * eps
        else:
            x = x0
    ref = x

    g2 = _gen(42)
    sampler = FewStepSampler(sig, noise=lambda like: torch.randn(like.shape, generator=g2, dtype=like.dtype))
    out = _run(sampler, x_init, model)[-1]
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(out, sampler.last_x0, rtol=0, atol=0)

    # noise supplied as tensors at step time gives the same result
    g3 = _gen(42)
    s2 = FewStepSampler(sig)
    x = x_init
    for i in range(4):
        eps = torch.randn(x.shape, generator=g3, dtype=x.dtype) if i < 3 else None
        x = s2.step(i, x, model(x, s2.sigma(i)), noise=eps)
    torch.testing.assert_close(x, ref, rtol=1e-14, atol=1e-14)


def test_fewstep_noise_errors():
    sig = few_step_sigmas()
    x = _randn(B, C, F, H, W, seed=15)
    v = _randn(B, C, F, H, W, seed=16)
    s = FewStepSampler(sig)
    with pytest.raises(ValueError, match="noise"):
        s.step(0, x, v)
    with pytest.raises(ValueError, match="noise must be a tensor of shape"):
        s.step(0, x, v, noise=x[:, :1])
    s.step(3, x, v)  # last step needs no noise
    with pytest.raises(ValueError, match="end at exactly 0"):
        FewStepSampler(torch.tensor([1.0, 0.5, 0.1]))


# --------------------------------------------------------------------------- factory / dtype
def test_make_sampler():
    s = make_sampler("unipc", 10, 5.0)
    assert isinstance(s, UniPCSampler) and s.num_steps == 10
    torch.testing.assert_close(s.sigmas, flow_sigmas(10, 5.0), rtol=0, atol=0)
    e = make_sampler("euler", num_steps=3, shift=1.0)
    assert isinstance(e, EulerSampler) and e.sigmas.tolist() == flow_sigmas(3).tolist()
    f = make_sampler("fewstep", shift=5.0)
    assert isinstance(f, FewStepSampler) and f.sigmas.tolist() == [1.0, 0.9375, 5 / 6, 0.625, 0.0]
    f2 = make_sampler("fewstep", 3, shift=5.0, timesteps=(1000, 500, 250))
    assert f2.sigmas.tolist() == few_step_sigmas((1000, 500, 250), 5.0).tolist()
    t = make_sampler("euler", sigmas=_distinct_frame_table(4))
    assert t.sigmas.shape == (5, F) and t.sigma(1).shape == (F,) and t.timestep(0).shape == (F,)
    assert make_sampler("unipc", 4, solver_order=1).solver_order == 1
    with pytest.raises(ValueError, match="unknown sampler kind"):
        make_sampler("ddim", 10)
    with pytest.raises(ValueError, match="num_steps"):
        make_sampler("fewstep", 5, timesteps=(1000, 500))
    with pytest.raises(ValueError, match="needs num_steps"):
        make_sampler("unipc")
    with pytest.raises(ValueError, match="not both"):
        make_sampler("euler", sigmas=flow_sigmas(3), timesteps=(1000, 500))


@pytest.mark.parametrize("kind", ["euler", "unipc", "fewstep"])
def test_low_precision_dtype_preserved(kind):
    sig = flow_sigmas(4, 5.0)
    model = FakeModel(seed=9)
    x64 = _randn(B, C, F, H, W, seed=17)
    ref = _run(_all_kinds(sig, _noise_tensor(7))[kind], x64, model)[-1]
    xb = x64.to(torch.bfloat16)
    out = _run(_all_kinds(sig, _noise_tensor(7))[kind], xb, model)[-1]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert _rel(out.double(), ref) < 0.03  # bf16 storage error only (observed ~0.007)


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "table, match",
    [
        (torch.tensor([1.0, 0.5, 0.7, 0.0]), "not monotone"),
        (torch.tensor([0.0, 0.5, 1.0]), "not monotone"),
        (torch.tensor([1.2, 0.5, 0.0]), r"\[0, 1\]"),
        (torch.tensor([1.0, -0.1]), r"\[0, 1\]"),
        (torch.tensor([1.0, float("nan"), 0.0]), "non-finite"),
        (torch.tensor([1.0]), "at least 2 rows"),
        (torch.tensor(0.5), r"shape \[N\+1\]"),
        (torch.rand(3, 2, 2, 2), r"shape \[N\+1\]"),
        (torch.tensor([[1.0, 1.0], [0.5, 0.9], [0.0, 0.95]]), "not monotone"),
    ],
)
def test_bad_sigma_tables(table, match):
    for cls in (EulerSampler, UniPCSampler, FewStepSampler):
        with pytest.raises(ValueError, match=match):
            cls(table)


def test_unipc_requires_strictly_decreasing():
    table = torch.tensor([1.0, 0.5, 0.5, 0.0])
    EulerSampler(table)  # plateaus are fine for Euler / few-step
    FewStepSampler(table)
    with pytest.raises(ValueError, match="strictly decreasing"):
        UniPCSampler(table)
    assert check_sigma_table([1, 0]).dtype == torch.float64


@pytest.mark.parametrize("kind", ["euler", "unipc", "fewstep"])
def test_bad_step_inputs(kind):
    s = make_sampler(kind, sigmas=_distinct_frame_table(4))
    x = _randn(B, C, F, H, W, seed=18)
    v = _randn(B, C, F, H, W, seed=19)
    with pytest.raises(ValueError, match="model output shape"):
        s.step(0, x, v[:, :2])
    with pytest.raises(ValueError, match="frames"):
        s.step(0, x[:, :, :2], v[:, :, :2])
    with pytest.raises(ValueError, match="5-D"):
        s.step(0, x[0], v[0])
    with pytest.raises(ValueError, match="step index"):
        s.step(4, x, v)
    with pytest.raises(ValueError, match="step index"):
        s.sigma(5)
