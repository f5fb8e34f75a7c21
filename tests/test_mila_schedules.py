"""MiLA's schedules and anchor re-noising (paper Secs. 3.3, 3.4): TPD's three constraints
(engine.plans.core.tpd_table) and JDC's variance-kept structured noise with a timestep
linear in the clip's (engine.denoise.initial_latents, Job.anchor_structure)."""

import dataclasses
import math

import pytest
import torch

from engine.plans import PlanError, build_plan, default_sigmas, make_job, tpd_table, uniform_table
from engine.plans.core import TPD_FAST, TPD_SLOW, Job
from engine.denoise import initial_latents
from engine.sampling import flow_sigmas
from engine_kernels import frame_noise, highpass_reference

BASES = {
    "flow50-shift5": flow_sigmas(50, 5.0).tolist(),
    "flow50-shift3": flow_sigmas(50, 3.0).tolist(),
    "fewstep4": default_sigmas(),  # 1000/750/500/250, shift 5
}
LENGTHS = (2, 4, 7)
STRENGTHS = (0.5, 1.0, 2.0)


def _col(table, k):
    return [row[k] for row in table]


# ---------------------------------------------------------------------------- TPD
@pytest.mark.parametrize("name", list(BASES))
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("g", STRENGTHS)
def test_tpd_meets_the_papers_three_constraints(name, n, g):
    base = BASES[name]
    N = len(base) - 1
    t = tpd_table(base, n, g)
    assert len(t) == N + 1 and all(len(r) == n for r in t)
    # every frame starts at base[0]
    assert all(v == base[0] for v in t[0])
    # (a) all frames reach 0 together at the last step, none before
    assert all(v == 0.0 for v in t[-1])
    assert all(v > 0.0 for row in t[:-1] for v in row)
    # sigmas non-increasing per frame; an earlier frame is never noisier than a later one
    for k in range(n):
        col = _col(t, k)
        assert all(b <= a for a, b in zip(col, col[1:])), (k, col)
    for row in t:
        assert all(a <= b for a, b in zip(row, row[1:])), row
    first, last = _col(t, 0), _col(t, n - 1)
    # (b) the earliest frame takes larger first steps (than the last frame and the base) and
    # is almost denoised early: below 0.1 base[0] half-way for strength >= 1
    assert first[0] - first[1] > last[0] - last[1]
    assert first[0] - first[1] > base[0] - base[1]
    assert first[N // 2] < base[N // 2]
    if g >= 1:
        assert first[N // 2] < 0.1 * base[0], first[N // 2]
    # (c) the last frame is slow-fast: it drops less than the base over the first half of the
    # steps and more than the base over the last 10 % of them (at least one step)
    assert last[0] - last[N // 2] < base[0] - base[N // 2]
    tail = max(1, round(0.1 * N))
    assert last[N - tail] - last[N] > base[N - tail] - base[N]
    assert last[N - 1] > base[N - 1]  # a larger final step than the base's


@pytest.mark.parametrize("name", list(BASES))
@pytest.mark.parametrize("n", (1,) + LENGTHS)
def test_tpd_strength_zero_is_the_base_schedule_exactly(name, n):
    base = BASES[name]
    t = tpd_table(base, n, 0.0)
    assert t == uniform_table(base, n)
    for k in range(n):
        assert _col(t, k) == [float(b) for b in base]
    # a single frame keeps the base schedule at any strength
    assert _col(tpd_table(base, 1, 2.0), 0) == [float(b) for b in base]
    st = [0.4] + [1.0] * (n - 1)
    assert tpd_table(base, n, 0.0, st) == uniform_table(base, n, st)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("g", STRENGTHS)
def test_tpd_frame_k_follows_the_base_shift_times_kappa_k(n, g):
    """The docstring's closed form: on a shifted linear base (shift S), frame k's schedule is
    the shift-S*kappa_k one, kappa_k = exp(strength (TPD_SLOW w_k - TPD_FAST (1 - w_k)))."""
    S = 5.0
    t = tpd_table(flow_sigmas(50, S).tolist(), n, g)
    for k in range(n):
        w = k / (n - 1)
        kappa = math.exp(g * (TPD_SLOW * w - TPD_FAST * (1 - w)))
        want = flow_sigmas(50, S * kappa).tolist()
        assert _col(t, k) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_tpd_rejects_negative_strength():
    with pytest.raises(PlanError, match="strength"):
        tpd_table(BASES["fewstep4"], 3, -0.5)


# ---------------------------------------------------------------------------- JDC timestep
@pytest.mark.parametrize("tpd", (0.0, 1.0, 2.0))
@pytest.mark.parametrize("name", ("flow50-shift5", "fewstep4"))
def test_anchor_timestep_is_jdc_sigma_times_the_clips(tpd, name):
    """sigma_anchor(i) = jdc_sigma * sigma_clip(i) at every step: the linear map of the clip's
    timestep (slope jdc_sigma), for uniform (tpd 0) and TPD tables."""
    base, jdc = BASES[name], 0.35
    plan = build_plan("mila", 17, anchor_stride=4, clip_frames=4, tpd=tpd, jdc_sigma=jdc, jdc_structure=0.5,
                      sigmas=base)
    seen = 0
    for j in plan.jobs:
        if j.model != "fine":
            continue
        gen = j.generated_positions
        plain = tpd_table(base, len(gen), tpd) if tpd > 0 else uniform_table(base, len(gen))
        anchors = [k for k, p in enumerate(gen) if j.sources[j.positions.index(p)] is not None]
        assert j.anchor_structure == (0.5 if anchors else 0.0)
        for k in range(len(gen)):
            col, ref = _col(j.sigmas, k), _col(plain, k)
            if k in anchors:
                assert col == [jdc * s for s in ref]
                seen += 1
            else:
                assert col == ref
    assert seen >= 3


def test_other_strategies_carry_no_structured_noise():
    plans = [build_plan("ar", 9), build_plan("ar", 9, context="history", history_frames=2),
             build_plan("mmpl", 17, segment_frames=4), build_plan("longdwm", 13, keyframes=3, fps_ratio=2),
             build_plan("mila", 17, jdc_structure=0.0)]
    for plan in plans:
        assert all(j.anchor_structure == 0.0 for j in plan.jobs), plan.strategy
    mila = build_plan("mila", 17)
    assert all(j.anchor_structure == 0.0 for j in mila.jobs if j.model == "coarse")
    assert any(j.anchor_structure == 0.5 for j in mila.jobs if j.model == "fine")  # the default jdc_structure
    assert Job.__dataclass_fields__["anchor_structure"].default == 0.0
    with pytest.raises(PlanError, match="jdc_structure"):
        build_plan("mila", 17, jdc_structure=1.5)


# ---------------------------------------------------------------------------- JDC noise
SHAPE = (16, 64, 64)


def _anchor_job(beta: float, s: float = 0.5, noise: str = "fresh"):
    frames = {0: (False, "ctx"), 1: (True, None), 2: (True, "coarse"), 3: (True, None)}
    kw = dict(noise="interp", planning=(0, 3), noise_rho=0.3) if noise == "interp" else {}
    return make_job("j", "fine", frames, base=[1.0, 0.6, 0.2, 0.0], outputs=[1, 2, 3], start={2: s},
                    anchor_structure=beta, **kw)


def _x0(kind: str, shape=SHAPE, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, *shape[:1], 1, *shape[1:], generator=g)
    if kind == "structured":  # smooth field plus edges, then unit variance
        x = torch.nn.functional.avg_pool2d(x[:, :, 0], 9, 1, 4, count_include_pad=False)[:, :, None]
        x = x + (torch.arange(shape[2]) % 16 < 8).float()
        x = (x - x.mean()) / x.std()
    return x


def _added_noise(job, x0, seed=7, **kw):
    """(x_anchor - (1 - s) x0) / s: the noise the anchor was given, and the whole output."""
    out = initial_latents(job, {2: x0}, seed=seed, shape_chw=SHAPE, device="cpu", use_kernel=False, **kw)
    s = job.sigmas[0][1]
    return (out[:, :, 1] - (1 - s) * x0[:, :, 0]) / s, out


@pytest.mark.parametrize("kind", ("white", "structured"))
@pytest.mark.parametrize("beta", (0.0, 0.5, 0.9))
def test_renoised_anchor_noise_has_unit_variance(kind, beta):
    x0 = _x0(kind)
    assert abs(x0.var().item() - 1) < 0.02
    eps_total, out = _added_noise(_anchor_job(beta), x0)
    assert abs(eps_total.var().item() - 1) <= 0.02, eps_total.var().item()
    assert abs(eps_total.mean().item()) <= 0.02
    # with the anchor re-noised to s = 1 the frame itself is standard normal
    eps1, out1 = _added_noise(_anchor_job(beta, s=1.0), x0)
    assert abs(out1[:, :, 1].var().item() - 1) <= 0.02


def test_structured_noise_is_the_standardised_highpass_of_the_anchor():
    x0 = _x0("structured")
    eps_s, _ = _added_noise(_anchor_job(1.0), x0)  # beta = 1: all structured
    m = eps_s.mean(dim=(-2, -1))
    v = eps_s.var(dim=(-2, -1), correction=0)
    assert m.abs().max() < 1e-4 and (v - 1).abs().max() < 1e-4  # per channel: zero mean, unit variance
    hi = highpass_reference(x0[:, :, 0], 0.1).double()
    want = (hi - hi.mean(dim=(-2, -1), keepdim=True)) / hi.std(dim=(-2, -1), keepdim=True, correction=0)
    torch.testing.assert_close(eps_s.double(), want, rtol=1e-4, atol=1e-4)
    # it carries the anchor's structure, not fresh noise
    corr = torch.corrcoef(torch.stack([eps_s.flatten(), want.flatten().float()]))[0, 1]
    assert corr > 0.999
    # a mix: sqrt(1 - beta^2) eps + beta eps_s with eps the plain re-noising noise
    eps0, _ = _added_noise(_anchor_job(0.0), x0)
    mix, _ = _added_noise(_anchor_job(0.6), x0)
    torch.testing.assert_close(mix, 0.8 * eps0 + 0.6 * eps_s, rtol=1e-5, atol=1e-5)


def test_constant_anchor_keeps_plain_noise():
    x0 = torch.full((1, *SHAPE[:1], 1, *SHAPE[1:]), 0.7)
    plain, _ = _added_noise(_anchor_job(0.0), x0)
    mixed, _ = _added_noise(_anchor_job(0.9), x0)
    torch.testing.assert_close(mixed, plain)


@pytest.mark.parametrize("noise", ("fresh", "interp"))
def test_beta_zero_is_todays_plain_renoise_bit_for_bit(noise):
    x0 = _x0("white")
    job = _anchor_job(0.0, s=0.5, noise=noise)
    out = initial_latents(job, {2: x0}, seed=7, shape_chw=SHAPE, device="cpu", use_kernel=False)
    # today's formula: x = (1 - s) x0 + s eps on the job's noise, other frames untouched
    plain = make_job("j", "fine", {0: (False, "ctx"), 1: (True, None), 2: (True, None), 3: (True, None)},
                     base=[1.0, 0.6, 0.2, 0.0], outputs=[1, 2, 3], **(dict(noise="interp", planning=(0, 3),
                                                                              noise_rho=0.3) if noise == "interp" else {}))
    eps = initial_latents(plain, {}, seed=7, shape_chw=SHAPE, device="cpu", use_kernel=False)
    if noise == "fresh":
        assert torch.equal(eps, frame_noise(7, [1, 2, 3], (1, *SHAPE)))
    want = eps.clone()
    want[:, :, 1] = (1 - 0.5) * x0[:, :, 0] + 0.5 * eps[:, :, 1]
    assert torch.equal(out, want)


@pytest.mark.parametrize("noise", ("fresh", "interp"))
def test_structured_kernel_path_equals_reference(noise):
    """use_kernel (Triton noise_init + highpass, here under the interpreter) == the torch path."""
    shape = (4, 8, 8)
    frames = {0: (False, "ctx"), 1: (True, None), 2: (True, "coarse"), 3: (True, None)}
    kw = dict(noise="interp", planning=(0, 3), noise_rho=0.3) if noise == "interp" else {}
    job = make_job("j", "fine", frames, base=[1.0, 0.6, 0.0], outputs=[1, 2, 3], start={2: 0.4},
                   anchor_structure=0.7, **kw)
    x0 = {2: torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(5))}
    ref = initial_latents(job, x0, seed=7, shape_chw=shape, device="cpu", use_kernel=False)
    ker = initial_latents(job, x0, seed=7, shape_chw=shape, device="cpu", use_kernel=True)
    torch.testing.assert_close(ker, ref, rtol=1e-4, atol=1e-4)
    unstructured = initial_latents(dataclasses.replace(job, anchor_structure=0.0), x0, seed=7, shape_chw=shape,
                                   device="cpu", use_kernel=False)
    torch.testing.assert_close(ref[:, :, [0, 2]], unstructured[:, :, [0, 2]], rtol=0, atol=0)  # plain frames
    assert not torch.allclose(ref[:, :, 1], unstructured[:, :, 1])
