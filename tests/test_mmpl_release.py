"""The MMPL release layout (engine/plans/mmpl_release.py), the recipe mechanism and the
loader rules that came with it. Parity with the release's own code: test_mmpl_parity.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import engine
from engine.config import SamplerConfig
from engine.kvcache import KVCache
from engine.plans import PlanError, build_plan
from engine.plans.mmpl_release import I2V_SEES, I2V_STAGES, T2V_SEES, T2V_STAGES, release_segments
from engine.recipes import RECIPES, apply_recipe, get_recipe

FEW = SamplerConfig(kind="unipc", num_steps=3, shift=5.0, timesteps=None, guidance_scale=5.0, schedule="wan")


def _seen(job, p):
    """Positions the job's frame p sees."""
    i = job.positions.index(p)
    return {q for q, v in zip(job.positions, job.visibility[i]) if v}


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
def test_release_stages_visibility_and_refresh(variant):
    plan = build_plan("mmpl", 42, release=variant, first_given=variant == "i2v", sigmas=[1.0, 0.5, 0.0])
    stages, sees = (T2V_STAGES, T2V_SEES) if variant == "t2v" else (I2V_STAGES, I2V_SEES)
    for k in range(2):
        S = 21 * k
        jobs = {j.id: j for j in plan.jobs if j.id.startswith(f"mmpl/seg{k}/")}
        given = {0} if (variant == "i2v" and k == 0) else ({0, 1} if k > 0 else set())
        for g, stage in enumerate(stages):
            jid = f"mmpl/seg{k}/stage{g}"
            if set(stage) <= given:
                assert jid not in jobs
                continue
            j = jobs[jid]
            assert j.generated_positions == tuple(S + f for f in stage)
            assert j.cache == f"seg{k}" and plan.caches[j.cache].visible == "plan"
            for f in stage:  # every frame of a stage sees the listed earlier stages and its own stage
                assert _seen(j, S + f) == {S + q for q in set(sees[g]) | set(stage)}
            assert j.extra_passes == (0 if g == len(stages) - 1 else 1)  # the last stage writes nothing
            assert plan.rope_of(j) == tuple(p - S for p in j.positions)
    if variant == "t2v":  # stage 2 hides the terminal frames 19, 20; stage 3 sees them again
        assert not {19, 20} & _seen(plan.job("mmpl/seg0/stage2"), 4)
        assert {19, 20} <= _seen(plan.job("mmpl/seg0/stage3"), 13)


def test_release_chaining_and_trimming():
    tail = build_plan("mmpl", 42, release="t2v", handoff="tail", sigmas=[1.0, 0.5, 0.0])
    enc = tail.encodes[0]
    assert enc.positions == (21, 22) and [f for _, f in enc.frames] == list(range(76, 81))
    assert {src for src, _ in enc.frames} == {"seg0"}  # the whole segment's last 5 decoded frames
    assert [c.drop for c in tail.clips] == [5, 5] and tail.video_frames == 152
    par = build_plan("mmpl", 42, release="t2v", handoff="stage1", sigmas=[1.0, 0.5, 0.0])
    (handoff,) = par.decodes
    assert [p for p, _ in handoff.latents] == [0, 19, 19, 20]
    assert [f for _, f in par.encodes[0].frames] == list(range(8, 13))
    assert par.deps_of(handoff) == ("mmpl/seg0/stage0", "mmpl/seg0/stage1")  # starts after stage 1, not stage 3
    assert [c.drop for c in par.clips] == [0, 5] and par.video_frames == 157
    # chained segments: frames 0, 1 are re-encoded and written by one clean pass in stage 1's job
    s1 = par.job("mmpl/seg1/stage1")
    assert par.reads_of(s1) == ((21, "mmpl/seg1/reencode"), (22, "mmpl/seg1/reencode"))
    assert par.passes_of(s1) == s1.passes + 1
    i2v = build_plan("mmpl", 42, release="i2v", first_given=True, sigmas=[1.0, 0.5, 0.0])
    s2 = i2v.job("mmpl/seg1/stage2")  # two clean passes: frame 0 alone, then frame 1 seeing it
    assert i2v.passes_of(s2) == s2.passes + 2


def test_release_frame_rule_and_option_errors():
    assert release_segments(152, "tail") == 2 and release_segments(157, "stage1") == 2
    with pytest.raises(PlanError, match=r"76\*n frames \(76, 152, 228\)"):
        release_segments(153, "tail")
    with pytest.raises(PlanError, match=r"\+ 5"):
        release_segments(152, "stage1")
    with pytest.raises(PlanError, match="paper's variants"):
        build_plan("mmpl", 42, release="t2v", segment_clips=True)
    with pytest.raises(PlanError, match="starts from noise"):
        build_plan("mmpl", 42, release="t2v", first_given=True)
    with pytest.raises(PlanError, match="handoff"):
        build_plan("mmpl", 42, release="t2v", handoff="middle")
    m = engine.load_model("tiny-random")
    with pytest.raises(ValueError, match="76\\*n"):
        engine.plan_for(m, num_frames=81, height=64, width=64, strategy="mmpl", release="t2v")


def test_cache_claim_sees_exactly_the_listed_frames():
    c = KVCache(num_layers=1, batch=1, num_heads=1, head_dim=2, tokens_per_frame=1, chunk_frames=7, max_frames=21,
                origin=21)
    c.claim([21, 22], see=[])
    s = c.claim([23, 24, 31, 32, 33, 40, 41], see=[21, 22])
    assert s.visibility.visibility.sum(1).tolist() == [9] * 7  # 2 earlier frames + its own 7
    later = c.claim([25, 26], see=[21, 22, 23, 24, 31])
    row = later.visibility.visibility[0].tolist()
    held = c.slot_positions()
    assert {p for p, v in zip(held, row) if v} == {21, 22, 23, 24, 31, 25, 26}
    with pytest.raises(ValueError, match="not in the cache"):
        c.claim([34], see=[39])
    with pytest.raises(ValueError, match="origin"):
        c.claim([3], see=[])
    # a read-only chunk (MMPL's last stage) takes no slot: cached keys, then its own
    before = c.slot_positions()
    ro = c.claim([34, 35], see=[21, 22, 40], write=False)
    assert c.slot_positions() == before and ro.token_index is None
    k = torch.randn(1, 1, 2, 2)
    keys, _ = c.write(0, ro, k, k)
    assert keys.shape[2] == ro.key_slots + 2 and torch.equal(keys[:, :, -2:], k)
    vis = ro.attend.visibility
    assert vis.shape == (2, ro.key_slots + 2) and vis[:, -2:].all() and int(vis[0].sum()) == 5


def test_release_cache_has_the_releases_15_slots():
    plan = build_plan("mmpl", 21, release="t2v", sigmas=[1.0, 0.5, 0.0])
    assert plan.caches["seg0"].max_frames == 15
    m = engine.load_model("tiny-random")
    from engine.kvcache import cache_for

    assert cache_for(m, plan.caches["seg0"], 2, 4, 4).num_slots == 15


def test_recipes_fill_only_what_is_not_given():
    r = get_recipe("mmpl-t2v")
    out = apply_recipe("mmpl-t2v", {"num_frames": 76, "height": 64, "negative_prompt_embeds": torch.zeros(1, 2, 4)})
    assert out["strategy"] == "mmpl" and out["options"] == r.options and out["sampler"] == r.sampler
    assert out["height"] == 64 and out["width"] == 832 and out.get("negative_prompt") is None  # embeds given: no text
    assert out["checkpoint_key"] == "generator"
    assert r.sampler.num_steps == 50 and r.sampler.shift == 5.0 and r.sampler.guidance_scale == 5.0
    assert r.sampler.schedule == "wan" and r.negative_prompt.startswith("色调艳丽")
    with pytest.raises(ValueError, match="known recipes"):
        get_recipe("mmpl-xl")
    with pytest.raises(ValueError, match="runs strategy 'mmpl'"):
        apply_recipe("mmpl-t2v", {"strategy": "ar"})
    with pytest.raises(ValueError, match="first_frame"):
        apply_recipe("mmpl-i2v", {"num_frames": 76})
    assert set(RECIPES) >= {"mmpl-t2v", "mmpl-t2v-parallel", "mmpl-i2v"}


def test_cli_lists_recipes(capsys):
    from engine.cli import main

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "mmpl-t2v-parallel" in out and "schedule wan" in out


def _embeds():
    g = torch.Generator().manual_seed(5)
    return torch.randn(1, 7, 32, generator=g), torch.randn(1, 5, 32, generator=g)


def test_parallel_recipe_same_video_on_1_2_4_workers():
    m = engine.load_model("tiny-random")
    text, neg = _embeds()
    videos, passes = [], []
    for devices in (["cpu"], ["cpu"] * 2, ["cpu"] * 4):
        v = engine.generate(m, recipe="mmpl-t2v-parallel", num_frames=157, height=32, width=32, sampler=FEW,
                            prompt_embeds=text, negative_prompt_embeds=neg, devices=devices, progress=False,
                            shuffle=len(devices))
        videos.append(v.frames)
        passes.append(v.stats.critical_path_passes)
    assert videos[0].shape == (157, 32, 32, 3) and videos[0].std() > 1
    for other in videos[1:]:
        np.testing.assert_array_equal(other, videos[0])
    one = engine.generate(m, recipe="mmpl-t2v", num_frames=152, height=32, width=32, sampler=FEW, prompt_embeds=text,
                          negative_prompt_embeds=neg, progress=False)
    # 1-GPU chaining waits for the whole segment; the parallel hand-off only for stage 1
    assert passes[0] < one.stats.critical_path_passes


def test_short_prompt_embeds_are_zero_padded_as_wan_pads_them():
    m = engine.load_model("tiny-random")
    text = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(0))
    padded = torch.cat([text, torch.zeros(1, m.config.text_len - 5, 32)], 1)
    x = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0])
    with torch.no_grad():
        torch.testing.assert_close(m(x, t, text), m(x, t, padded), rtol=0, atol=0)
    with pytest.raises(ValueError, match="truncate"):
        m(x, t, torch.randn(1, m.config.text_len + 1, 32))


def test_head_count_is_never_guessed(tmp_path):
    from engine.loading import build_model
    from engine.models.weights import CheckpointError

    cfg = engine.PRESETS["tiny-random"].replace(num_layers=3)  # no preset has 3 layers: heads cannot be told
    torch.save({"generator": {f"model.{k}": v for k, v in build_model(cfg).state_dict().items()}},
               tmp_path / "custom.pt")
    with pytest.raises(CheckpointError, match="number of attention heads"):
        engine.load_model(tmp_path / "custom.pt")
    ok = engine.load_model(tmp_path / "custom.pt", config=cfg)
    assert ok.config.num_heads == cfg.num_heads
    exact = engine.PRESETS["tiny-random"]  # an exact preset match brings its head count and text length
    torch.save({"generator": build_model(exact).state_dict()}, tmp_path / "tiny.pt")
    got = engine.load_model(tmp_path / "tiny.pt").config
    assert got.replace(name=exact.name) == exact  # (a preset of the same fields may lend its name)


def test_checkpoint_key_picks_generator_or_ema(tmp_path):
    from engine.loading import build_model

    cfg = engine.PRESETS["tiny-random"]
    a, b = build_model(cfg, seed=1).state_dict(), build_model(cfg, seed=2).state_dict()
    torch.save({"generator": a, "generator_ema": b}, tmp_path / "ckpt.pt")
    from engine.inputs import resolve_model

    gen = resolve_model(str(tmp_path / "ckpt.pt"), None, "cpu", checkpoint_key="generator")
    ema = resolve_model(str(tmp_path / "ckpt.pt"), None, "cpu", checkpoint_key="generator_ema")
    key = "blocks.0.self_attn.q.weight"
    assert torch.equal(gen.state_dict()[key], a[key]) and torch.equal(ema.state_dict()[key], b[key])
    from engine.models.weights import CheckpointError

    torch.save({"generator": a}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="no 'generator_ema' dict"):
        engine.load_model(tmp_path / "plain.pt", checkpoint_key="generator_ema")


def test_cli_recipe_plan_only(capsys):
    import json

    from engine.cli import main

    assert main(["generate", "--recipe", "mmpl-t2v-parallel", "--num-frames", "157", "--height", "32", "--width",
                 "32", "--plan-only"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["summary"]["clips"] == 2 and plan["summary"]["options"]["handoff"] == "stage1"
    assert main(["generate", "--recipe", "mmpl-t2v", "--num-frames", "81", "--plan-only"]) == 2
    assert "76*n" in capsys.readouterr().err


def test_mmpl_14b_checkpoint_layout_is_recognised():
    """The release's t2v_14B_8k.pt: Wan2.1-T2V-14B weights under ``generator`` with ``model.``
    prefixes -- the architecture (40 heads included) is the 14B preset, exactly."""
    from engine.models.wan import WanDiT
    from engine.models.weights import infer_config, normalise_state_dict

    with torch.device("meta"):
        m = WanDiT(engine.PRESETS["wan2.1-t2v-14b"])
    state = normalise_state_dict({f"model.{k}": v for k, v in m.state_dict().items()})
    assert infer_config(state) == engine.PRESETS["wan2.1-t2v-14b"]
