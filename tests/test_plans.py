"""Plans are valid DAGs that cover the timeline exactly once, with each method's visibility
and schedules (pure Python: no model runs here)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.plans import INPUT, Job, Plan, PlanError, build_plan, default_sigmas
from engine_kernels import patterns


def _check_dag_and_coverage(plan: Plan):
    order = plan.topo_order()
    seen = set()
    for jid in order:
        job = plan.job(jid)
        assert set(plan.deps_of(job)) <= seen, f"{jid} runs before its dependencies"
        seen.add(jid)
        if job.kind == "decode":  # decodes read final latents of their clip, in order
            assert all(plan.output_map()[p] == s for p, s in job.latents)
            continue
        for p, src in job.reads:
            assert src == INPUT or p in plan.job(src).generated_positions
        # context rows never see noisy frames; every frame sees itself
        for i, g in enumerate(job.generated):
            assert job.visibility[i][i]
            if not g:
                assert not any(job.visibility[i][k] for k, gk in enumerate(job.generated) if gk)
    owners = plan.output_map()
    assert sorted(owners) == list(range(plan.num_frames))
    outs = [p for j in plan.jobs for p in j.outputs] + list(plan.inputs)
    assert sorted(outs) == list(range(plan.num_frames))  # exactly once


@settings(max_examples=40, deadline=None)
@given(F=st.integers(1, 80), chunk=st.integers(1, 5), hist=st.one_of(st.none(), st.integers(0, 6)),
       sink=st.integers(0, 3), ctx=st.sampled_from(["cache", "history"]), first=st.booleans())
def test_ar_plans(F, chunk, hist, sink, ctx, first):
    kw = dict(history_frames=hist) if ctx == "history" else dict(window_frames=hist)
    plan = build_plan("ar", F, first_given=first, chunk_frames=chunk, context=ctx, sink_frames=sink, **kw)
    _check_dag_and_coverage(plan)
    for job in plan.jobs:
        assert len(job.generated_positions) <= chunk
        # bounded window: context = sink frames + the most recent `hist` frames
        s = job.generated_positions[0]
        if hist is not None:
            assert all(p < sink or p >= s - hist for p in job.context_positions)


@settings(max_examples=40, deadline=None)
@given(nseg=st.integers(1, 6), L=st.integers(2, 16), b=st.integers(1, 3), first=st.booleans(),
       mode=st.sampled_from(["max_throughput", "min_memory"]), extra=st.integers(0, 3))
def test_mmpl_plans(nseg, L, b, first, mode, extra):
    F = nseg * L + b + extra
    try:
        plan = build_plan("mmpl", F, first_given=first, segment_frames=L, anchor_frames=b, schedule=mode)
    except PlanError as e:
        assert extra % L or not (2 * b <= (L + b) // 2 and (L + b) // 2 + b <= L), e
        assert "latent frame" in str(e) or "cannot hold" in str(e)
        return
    assert extra % L == 0
    nseg += extra // L
    _check_dag_and_coverage(plan)
    plans = [j for j in plan.jobs if j.kind == "plan"]
    assert len(plans) == nseg
    for k, pj in enumerate(plans):  # macro planning: segment k+1 starts from k's terminal bundle
        term = list(range(k * L + L, k * L + L + b))
        assert set(term) <= set(pj.generated_positions)
        if k + 1 < nseg:
            assert set(term) <= set(plans[k + 1].context_positions)
            assert all(plan.job(plans[k + 1].id).sources[plans[k + 1].positions.index(p)] == pj.id for p in term)
    for j in plan.jobs:
        if j.kind != "plan":
            assert j.noise == "interp" and j.planning


@settings(max_examples=40, deadline=None)
@given(F=st.integers(1, 90), K=st.integers(2, 9), r=st.integers(1, 6), first=st.booleans())
def test_longdwm_plans(F, K, r, first):
    try:
        plan = build_plan("longdwm", F, first_given=first, keyframes=K, fps_ratio=r)
    except PlanError as e:
        assert (F - 1) % r and "fps_ratio" in str(e)
        return
    _check_dag_and_coverage(plan)
    coarse = [j for j in plan.jobs if j.model == "coarse"]
    fine = [j for j in plan.jobs if j.model == "fine"]
    assert all(len(j.generated_positions) <= K for j in coarse)
    assert all(p % r == 0 for j in coarse for p in j.generated_positions)
    for j in fine:  # both ends clean, everything between generated, interpolation visibility
        assert j.context_positions == (j.positions[0], j.positions[-1])
        assert j.positions[-1] - j.positions[0] == r
        assert torch.equal(torch.tensor(j.visibility), patterns.interpolation(r + 1))
        assert all(plan.job(d).model == "coarse" for d in j.deps)  # pairs are independent
    for a, b in zip(coarse, coarse[1:]):  # the next rollout starts from the last keyframe
        assert b.context_positions == (a.generated_positions[-1],)


@settings(max_examples=30, deadline=None)
@given(F=st.integers(1, 60), r=st.integers(1, 6), K=st.integers(2, 6), n=st.integers(1, 6), h=st.integers(0, 4),
       first=st.booleans())
def test_mila_plans(F, r, K, n, h, first):
    plan = build_plan("mila", F, first_given=first, anchor_stride=r, anchors_per_rollout=K, clip_frames=n,
                      history_frames=h, jdc_sigma=0.4)
    _check_dag_and_coverage(plan)
    for j in plan.jobs:
        if j.model != "fine":
            continue
        gen = j.generated_positions
        for k, p in enumerate(gen):
            col = [row[k] for row in j.sigmas]
            src = j.sources[j.positions.index(p)]
            if src is not None:  # an anchor inside the clip: JDC re-noise from its coarse latent
                assert p % r == 0 and plan.job(src).model == "coarse"
                assert col[0] == pytest.approx(0.4)
            else:
                assert col[0] == 1.0
            assert col[-1] == 0.0


def test_visibility_matches_each_method():
    L, m = 8, 4
    plan = build_plan("mmpl", 2 * L + 1, segment_frames=L)
    p0 = plan.job("mmpl/seg0/plan")
    full = patterns.mmpl_planning(L + 1, [1, m, L])
    idx = list(p0.positions)
    assert idx == [0, 1, m, L]
    assert torch.equal(torch.tensor(p0.visibility), full[idx][:, idx])
    s1 = plan.job("mmpl/seg1/stage1")  # head = initial + early, tail = midpoint
    assert s1.context_positions == (8, 9, 12) and s1.generated_positions == (10, 11)
    s2 = plan.job("mmpl/seg1/stage2")  # head = everything up to the midpoint, tail = terminal
    assert s2.context_positions == (8, 9, 10, 11, 12, 16) and s2.generated_positions == (13, 14, 15)
    ar = build_plan("ar", 9, chunk_frames=3, context="history", history_frames=3)
    c2 = ar.job("ar/chunk2")
    assert c2.context_positions == (3, 4, 5)
    vis = torch.tensor(c2.visibility)
    assert vis[3:].all() and not vis[:3, 3:].any()  # chunk sees history + itself, history sees history only


def test_default_sigmas_are_the_samplers_default_table():
    """A plan built without a table uses the sampler's default one (no formula written twice)."""
    from engine.config import SamplerConfig
    from engine.sampling import config_sigmas

    assert default_sigmas() == config_sigmas(SamplerConfig()).tolist()


def test_mila_tpd_earlier_frames_finish_sooner():
    from engine.config import SamplerConfig
    from engine.sampling import config_sigmas

    euler = config_sigmas(SamplerConfig(kind="euler", num_steps=8, shift=3.0)).tolist()
    plan = build_plan("mila", 9, anchor_stride=4, clip_frames=4, tpd=1.0, sigmas=euler)
    j = plan.job("mila/fine1")  # positions 4..7, anchor 4 re-noised
    sig = torch.tensor(j.sigmas)
    assert (sig[-1] == 0).all()
    mid = sig[1:-1, 1:]  # non-anchor frames 5, 6, 7: earlier frame, lower sigma
    assert (mid[:, :-1] < mid[:, 1:]).all()
    assert (sig[1:] <= sig[:-1]).all()
    flat = build_plan("mila", 9, anchor_stride=4, clip_frames=4, tpd=0.0).job("mila/fine1")
    assert len(set(flat.sigmas[1][1:])) == 1


def test_frames_that_do_not_fit_give_clear_errors():
    with pytest.raises(PlanError, match=r"n\*8\+1.*num_frames 33"):
        build_plan("mmpl", 12)
    with pytest.raises(PlanError, match="fps_ratio=3"):
        build_plan("longdwm", 12, fps_ratio=3)
    with pytest.raises(PlanError, match="cannot hold"):
        build_plan("mmpl", 9, segment_frames=3, anchor_frames=2)
    with pytest.raises(PlanError, match="unknown strategy"):
        build_plan("warp", 9)
    with pytest.raises(PlanError, match="takes no option"):
        build_plan("ar", 9, keyframes=3)


def test_validate_rejects_broken_plans():
    base = default_sigmas()
    good = build_plan("longdwm", 7, keyframes=3, fps_ratio=3)
    jobs = list(good.jobs)
    with pytest.raises(PlanError, match="exactly once|output by both"):
        Plan("x", 7, jobs + [jobs[-1].__class__(**{**jobs[-1].__dict__, "id": "dup"})]).validate()
    a = Job("a", "main", (0, 1), (True, False), (None, "b"), tuple((s, ) for s in base), ((True, True), (False, True)), (0,))
    b = Job("b", "main", (0, 1), (False, True), ("a", None), tuple((s, ) for s in base), ((True, False), (True, True)), (1,))
    with pytest.raises(PlanError, match="cycle"):
        Plan("x", 2, [a, b]).validate()
    peek = Job("c", "main", (0, 1), (False, True), (INPUT, None), tuple((s, ) for s in base),
               ((True, True), (True, True)), (1,))
    with pytest.raises(PlanError, match="must not see generated"):
        Plan("x", 2, [peek], inputs=(0,)).validate()


def test_five_minute_critical_path_ratios():
    """5 minutes at 16 fps = 4801 frames = 1201 latent frames."""
    F = 1201
    ar = build_plan("ar", F).critical_path()[0]
    mmpl = build_plan("mmpl", F, segment_frames=20).critical_path()[0]
    longdwm = build_plan("longdwm", F, keyframes=8, fps_ratio=3).critical_path()[0]
    assert ar >= 3 * mmpl and ar >= 3 * longdwm
