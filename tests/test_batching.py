"""Batching like denoise jobs on one worker (engine.denoise.denoise_jobs, execute(batch_jobs=)):
one batched forward per step gives every job what it gets alone; the executor batches only
jobs with equal batch keys, and the video is the same with batching on or off, on any
worker count.

CPU float32, tiny models. With CFG (a 2-row context) a job alone is already a batch of two
and the batched pass is bit for bit the same. Without CFG a job alone is a batch of ONE,
which PyTorch's CPU Conv3d (the patch embedding) runs by its slow path (a batch of several
goes through oneDNN): the last bits differ (~1e-7), so there the direct comparison uses
rtol 1e-5 and the executor does not batch such jobs (engine.denoise.batchable)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import engine
from engine.config import SamplerConfig
from engine.plans import Clip, Plan, build_plan, default_sigmas, make_job
from engine.denoise import batch_key, batchable, denoise_job, denoise_jobs, stack_context
from engine.runtime import RuntimeStats, execute
from engine.sampling import config_sigmas

H = W = 4  # latent size of a 32 x 32 video


@pytest.fixture(scope="module")
def tiny():
    return engine.load_model("tiny-random", device="cpu")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the runtime's workers pin 1 thread; results depend on it
    yield
    torch.set_num_threads(n)


def like_jobs(plan: Plan, rope: bool = False) -> list:
    """The largest group of the plan's jobs with one batch key (``rope``: judged with RoPE
    0..n-1 for every job, as a caller passing its own ropes)."""
    groups: dict = {}
    for j in plan.jobs:
        k = batch_key(j, tuple(range(len(j.positions))) if rope else plan.rope_of(j))
        if k is not None:
            groups.setdefault(k, []).append(j)
    return max(groups.values(), key=len)


def sources_for(job, seed: int, C: int = 16) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {p: torch.randn(1, C, 1, H, W, generator=g) for p, s in zip(job.positions, job.sources) if s is not None}


CASES = {
    # fresh noise, two clean keyframes per clip (LongDWM's fine pairs as clips)
    "longdwm-fresh": (lambda s: build_plan("longdwm", 17, keyframes=5, fps_ratio=4, keyframe_clips=True,
                                           sigmas=s), False),
    # noise interpolated between the planning frames' noise, a share of fresh noise
    "mmpl-interp": (lambda s: build_plan("mmpl", 33, segment_clips=True, noise_rho=0.3, sigmas=s), False),
    # re-noised anchors with structured noise (JDC) and TPD per-frame schedules (MiLA's fine clips)
    "mila-anchors": (lambda s: build_plan("mila", 25, anchor_stride=3, anchors_per_rollout=3, clip_frames=3,
                                          history_frames=2, sigmas=s), True),
}
SAMPLERS = {
    "fewstep": SamplerConfig(),
    "unipc": SamplerConfig(kind="unipc", num_steps=3, shift=3.0),
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "nocfg"])
def test_denoise_jobs_equals_one_by_one(tiny, case, sampler, cfg):
    smp = dataclasses.replace(SAMPLERS[sampler], guidance_scale=4.0 if cfg else 1.0)
    build, own_rope = CASES[case]
    plan = build(config_sigmas(smp).tolist())
    jobs = like_jobs(plan, own_rope)[:4]
    assert len(jobs) >= 2, [j.id for j in jobs]
    ropes = [tuple(range(len(j.positions))) if own_rope else plan.rope_of(j) for j in jobs]
    srcs = [sources_for(j, 10 + k) for k, j in enumerate(jobs)]
    g = torch.Generator().manual_seed(1)
    ctx = tiny.prepare_context(torch.randn(2 if cfg else 1, 7, tiny.config.text_dim, generator=g))
    kw = dict(seed=5, sampler=smp, latent_hw=(H, W))
    alone = [denoise_job(tiny, ctx, j, s, rope=r, **kw) for j, s, r in zip(jobs, srcs, ropes)]
    for m in sorted({2, len(jobs)}):
        together = denoise_jobs(tiny, ctx, jobs[:m], srcs[:m], ropes=ropes[:m], **kw)
        assert len(together) == m
        for j, a, b in zip(jobs, alone, together):
            assert a.shape == b.shape == (1, 16, len(j.generated_positions), H, W)
            if cfg:
                assert torch.equal(a, b), f"{j.id}: batched differs from alone by {(a - b).abs().max().item()}"
            else:  # batch 1 vs batch m: CPU Conv3d's slow path vs oneDNN (module docstring)
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # every job keeps its own noise and sources: the results differ between jobs
    assert not torch.equal(alone[0], alone[1])


def test_denoise_jobs_condition_slices_per_job():
    """An I2V model: every job takes its own slice of the timeline condition; image tokens
    in the context are stacked with the text."""
    model = engine.load_model("tiny-i2v", device="cpu")
    smp = SamplerConfig(guidance_scale=3.0)
    plan = build_plan("longdwm", 17, keyframes=5, fps_ratio=4, keyframe_clips=True)
    jobs = like_jobs(plan)
    assert len(jobs) == 4
    g = torch.Generator().manual_seed(2)
    cfg = model.config
    ctx = model.prepare_context(torch.randn(2, 5, cfg.text_dim, generator=g), torch.randn(2, 3, cfg.image_dim, generator=g))
    cond = torch.randn(1, cfg.in_channels - cfg.out_channels, plan.num_frames, H, W, generator=g)
    srcs = [sources_for(j, 20 + k) for k, j in enumerate(jobs)]
    ropes = [plan.rope_of(j) for j in jobs]
    kw = dict(seed=1, sampler=smp, latent_hw=(H, W), condition=cond)
    alone = [denoise_job(model, ctx, j, s, rope=r, **kw) for j, s, r in zip(jobs, srcs, ropes)]
    together = denoise_jobs(model, ctx, jobs, srcs, ropes=ropes, **kw)
    for a, b in zip(alone, together):
        assert torch.equal(a, b)
    # a stacked context is what the model takes for 4 jobs x 2 rows
    assert stack_context(ctx, 4).batch == 8


def test_denoise_jobs_refuses_jobs_that_may_not_share_a_pass(tiny):
    plan = build_plan("longdwm", 17, keyframes=5, fps_ratio=4, keyframe_clips=True)
    a, b = like_jobs(plan)[:2]
    ctx = tiny.prepare_context(torch.randn(2, 7, tiny.config.text_dim))
    kw = dict(seed=0, sampler=SamplerConfig(guidance_scale=2.0), latent_hw=(H, W))
    other = dataclasses.replace(b, sigmas=tuple(tuple(0.5 * s for s in row) for row in b.sigmas))
    with pytest.raises(ValueError, match="cannot share a batched pass"):
        denoise_jobs(tiny, ctx, [a, other], [sources_for(a, 0), sources_for(b, 1)], **kw)
    with pytest.raises(ValueError, match="cannot share a batched pass"):  # RoPE differs
        denoise_jobs(tiny, ctx, [a, b], [sources_for(a, 0), sources_for(b, 1)], ropes=[(0, 1, 2, 3, 4), (1, 2, 3, 4, 5)],
                     **kw)
    ar = build_plan("ar", 4, chunk_frames=2)
    cached = [j for j in ar.jobs if j.cache is not None]
    assert cached and all(batch_key(j) is None for j in cached)
    with pytest.raises(ValueError, match="KV cache"):
        denoise_jobs(tiny, ctx, cached[:1], [{}], **kw)


def test_batchable_models_and_contexts(tiny):
    g = torch.Generator().manual_seed(0)
    two = tiny.prepare_context(torch.randn(2, 7, tiny.config.text_dim, generator=g))
    one = tiny.prepare_context(torch.randn(1, 7, tiny.config.text_dim, generator=g))
    assert batchable(tiny, two)
    assert not batchable(tiny, one)  # a job alone is a batch of one: runs alone (module docstring)
    assert not batchable(tiny, torch.randn(2, 7, tiny.config.text_dim))  # a raw tensor: not a prepared context

    class Timeline(torch.nn.Module):
        takes_timeline_positions = True

    assert not batchable(Timeline(), two)
    s = stack_context(two, 3)
    assert s.batch == 6 and torch.equal(s.text[2:4], two.text) and torch.equal(s.cross_kv[1][0][4:6], two.cross_kv[1][0])


# ----------------------------------------------------------------------------------------
# the executor
# ----------------------------------------------------------------------------------------
def run_prepared(prepared, *, devices, batch_jobs, shuffle=None):
    """execute() of a prepared run (as engine.generation.run, plus batch_jobs): frames,
    every latent made, stats."""
    from engine.video import to_uint8_frames

    r = prepared
    stats, kept = RuntimeStats(), {}
    it = execute(r.plan, r.models, devices=devices, make_context=r.make_context, seed=r.seed, sampler=r.sampler,
                 latent_hw=r.latent_hw, inputs=r.inputs, condition=r.condition, vae=r.vae, make_decoder=r.make_decoder,
                 to_frames=lambda v: to_uint8_frames(v)[0], shuffle=shuffle, cpu_threads=r.cpu_threads, stats=stats,
                 noise=r.noise, keep_latents=kept, batch_jobs=batch_jobs, encode=r.encode)
    frames = np.concatenate([f for _, f in it])
    return frames, kept, stats


RUNS = {
    "longdwm": dict(num_frames=49, strategy="longdwm", keyframes=5, fps_ratio=4, keyframe_clips=True),
    "mmpl": dict(num_frames=65, strategy="mmpl", segment_frames=4, anchor_frames=1, midpoint=2, segment_clips=True),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_execute_same_video_with_and_without_batching(tiny, name):
    from engine.generation import prepare

    prepared = prepare(tiny, seed=3, prompt="x", height=32, width=32, guidance_scale=4.0, **RUNS[name])
    ref, ref_lat, ref_stats = run_prepared(prepared, devices=["cpu"], batch_jobs=1)
    assert ref.std() > 1.0 and all(j["batch"] == 1 for j in ref_stats.jobs)
    for devices, bj, shuffle in [(["cpu"], 4, None), (["cpu", "cpu"], 4, None), (["cpu", "cpu"], 3, 5)]:
        frames, lat, stats = run_prepared(prepared, devices=devices, batch_jobs=bj, shuffle=shuffle)
        label = f"{name}: {len(devices)} worker(s), batch_jobs={bj}, shuffle={shuffle}"
        assert np.array_equal(frames, ref), label
        assert lat.keys() == ref_lat.keys() and all(torch.equal(lat[k], ref_lat[k]) for k in ref_lat), label
        # every job recorded once, with its worker and times; batches no larger than batch_jobs
        assert sorted(j["id"] for j in stats.jobs) == sorted(j["id"] for j in ref_stats.jobs), label
        assert all(j["end"] >= j["start"] >= 0 and j["worker"] in stats.workers for j in stats.jobs)
        assert all(1 <= j["batch"] <= bj for j in stats.jobs)
        if len(devices) == 1:  # one worker: the like jobs ready together did run together
            assert max(j["batch"] for j in stats.jobs) > 1, label
        by_id = {j["id"]: j for j in stats.jobs}
        for job in prepared.plan.all_jobs():  # a job starts only after the jobs it depends on ended
            assert all(by_id[job.id]["start"] >= by_id[d]["end"] for d in prepared.plan.deps_of(job)), label


class Spy(torch.nn.Module):
    """Records (rows, frames, RoPE) of every forward of the wrapped model."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, []

    device = property(lambda self: self.inner.device)
    dtype = property(lambda self: self.inner.dtype)

    def prepare_context(self, *a):
        return self.inner.prepare_context(*a)

    def forward(self, x, t, ctx, frame_positions=None, **kw):
        self.calls.append((x.shape[0], x.shape[2], tuple(frame_positions), t[0].tolist()))
        return self.inner(x, t, ctx, frame_positions=frame_positions, **kw)


def mixed_plan() -> Plan:
    """Independent jobs, each its own clip with RoPE from 0: two like pairs of 3 frames,
    a pair of 2 frames, and a pair of 3 frames on another sigma table."""
    base, other = default_sigmas(), config_sigmas(SamplerConfig(shift=2.0)).tolist()
    spec = [("a0", 3, base), ("b0", 2, base), ("c0", 3, other), ("a1", 3, base), ("b1", 2, base), ("c1", 3, other),
            ("a2", 3, base), ("a3", 3, base)]
    jobs, clips, p = [], [], 0
    for jid, n, sig in spec:
        pos = list(range(p, p + n))
        jobs.append(make_job(jid, "main", {q: (True, None) for q in pos}, base=sig, outputs=pos))
        clips.append(Clip(f"clip-{jid}", p, n, rope_origin=p))
        p += n
    return Plan("mixed", p, jobs, clips=clips).validate()


def test_incompatible_jobs_are_never_batched(tiny):
    plan = mixed_plan()
    g = torch.Generator().manual_seed(4)
    ctx = tiny.prepare_context(torch.randn(2, 7, tiny.config.text_dim, generator=g))
    sampler = SamplerConfig(guidance_scale=3.0)
    out = {}
    for bj in (1, 8):
        spy = Spy(tiny)
        stats = RuntimeStats()
        lat = {ps[0]: t for ps, t in execute(plan, {"main": spy}, devices=["cpu"], make_context=lambda role, m: ctx,
                                             seed=1, sampler=sampler, latent_hw=(H, W), stats=stats, batch_jobs=bj)}
        out[bj] = (lat, spy.calls, stats)
    ref, calls1, _ = out[1]
    lat, calls8, stats = out[8]
    assert len(ref) == plan.num_frames and all(torch.equal(lat[k], ref[k]) for k in ref)
    assert {c[0] for c in calls1} == {2}  # alone: CFG's two rows
    # batched: 4 like jobs a0..a3 (8 rows) and the pairs b and c (4 rows each); never mixed
    assert sorted(c[0] for c in calls8) == sorted([8] * 4 + [4] * 4 + [4] * 4)
    groups: dict = {}
    for j in stats.jobs:
        groups.setdefault((j["start"], j["end"]), set()).add(j["id"])
    assert sorted(map(sorted, groups.values())) == [["a0", "a1", "a2", "a3"], ["b0", "b1"], ["c0", "c1"]]
    assert {j["id"]: j["batch"] for j in stats.jobs} == {"a0": 4, "a1": 4, "a2": 4, "a3": 4, "b0": 2, "b1": 2,
                                                          "c0": 2, "c1": 2}
    # batch_jobs caps a batch; one-row (no CFG) contexts never batch
    stats = RuntimeStats()
    list(execute(plan, {"main": tiny}, devices=["cpu"], make_context=lambda role, m: ctx, seed=1, sampler=sampler,
                 latent_hw=(H, W), stats=stats, batch_jobs=3))
    assert max(j["batch"] for j in stats.jobs) == 3
    one = tiny.prepare_context(torch.randn(1, 7, tiny.config.text_dim, generator=g))
    stats = RuntimeStats()
    list(execute(plan, {"main": tiny}, devices=["cpu"], make_context=lambda role, m: one, seed=1,
                 sampler=SamplerConfig(), latent_hw=(H, W), stats=stats, batch_jobs=8))
    assert all(j["batch"] == 1 for j in stats.jobs)


def test_batch_jobs_must_be_a_positive_int(tiny):
    plan = mixed_plan()
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_jobs"):
            execute(plan, {"main": tiny}, devices=["cpu"], make_context=lambda role, m: None, latent_hw=(H, W),
                    batch_jobs=bad)


def test_engine_config_batch_jobs():
    from engine.config import EngineConfig

    assert EngineConfig(devices=["cpu"]).batch_jobs == 1  # off by default
    assert EngineConfig(devices=["cpu"], batch_jobs=4).batch_jobs == 4
    with pytest.raises(ValueError, match="batch_jobs"):
        EngineConfig(devices=["cpu"], batch_jobs=0)


def test_generate_batch_jobs_option_batches_and_keeps_the_video(tiny):
    """engine.generate(batch_jobs=N) reaches the runtime: the same frames as one by one, with
    jobs actually batched; a bad value is refused up front."""
    import engine

    kw = dict(num_frames=49, strategy="longdwm", keyframes=5, fps_ratio=3, keyframe_clips=True, seed=2, height=32,
              width=32, guidance_scale=4.0, prompt="x", progress=False)
    a = engine.generate(tiny, **kw)
    b = engine.generate(tiny, batch_jobs=4, **kw)
    assert np.array_equal(a.frames, b.frames)
    assert max(j.get("batch", 1) for j in b.stats.runtime.jobs) > 1
    assert max(j.get("batch", 1) for j in a.stats.runtime.jobs) == 1
    with pytest.raises(ValueError, match="batch_jobs must be an int >= 1"):
        engine.generate(tiny, batch_jobs=0, **kw)
