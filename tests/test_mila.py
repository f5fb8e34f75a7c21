"""MiLA as the paper states it: classifier-free guidance that drops text and waypoints /
cameras in the unconditional row, prior frames, the recipe (schedules: test_mila_schedules.py)."""

import numpy as np
import pytest
import torch

import engine
from engine.config import SamplerConfig
from engine.loading import build_model
from engine.models.wan_control import ControlledWanDiT, ControlPass

CFG = engine.PRESETS["tiny-random"].replace(num_layers=2)


def _model():
    m = ControlledWanDiT.from_base(build_model(CFG, seed=3).eval().requires_grad_(False))
    m.enable_control("waypoints", in_features=6)
    m.enable_control("camera")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.control_layers.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return m


@torch.no_grad()
@pytest.mark.parametrize("dropped", [("waypoints",), ("camera",), ("waypoints", "camera")])
def test_unconditional_row_gets_no_dropped_embedding(dropped):
    m = _model()
    g = torch.Generator().manual_seed(0)
    nf = 3
    x = torch.randn(1, 16, nf, 4, 6, generator=g).expand(2, -1, -1, -1, -1)
    t = (torch.rand(1, nf, generator=g) * 1000).expand(2, -1)
    text = torch.randn(1, 5, 32, generator=g).expand(2, -1, -1)
    wp, cam = torch.randn(1, nf, 6, generator=g), torch.randn(1, nf, 16, generator=g)
    both = ControlPass(waypoints=wp.expand(2, -1, -1), camera=cam.expand(2, -1, -1), unguided=dropped)
    out = m(x, t, text, control=both)
    kept = {k: v for k, v in (("waypoints", wp), ("camera", cam)) if k not in dropped}
    want_uncond = m(x[:1], t[:1], text[:1], control=ControlPass(**kept)) if kept else m(x[:1], t[:1], text[:1])
    want_cond = m(x[:1], t[:1], text[:1], control=ControlPass(waypoints=wp, camera=cam))
    torch.testing.assert_close(out[1:], want_uncond, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[:1], want_cond, rtol=1e-5, atol=1e-6)
    assert (out[0] - out[1]).abs().max() > 1e-4


def _mila(**kw):
    wps = np.random.default_rng(2).normal(size=(17, 3, 2))
    model = ControlledWanDiT.from_base(engine.load_model("tiny-random", device="cpu"))
    opts = dict(num_frames=17, height=32, width=32, strategy="mila", anchor_stride=2, anchors_per_rollout=3,
                clip_frames=2, waypoints=wps, guidance_scale=3.0, progress=False, prompt="a road at dusk",
                sampler=SamplerConfig(kind="euler", num_steps=2, timesteps=None))
    opts.update(kw)
    from engine.generation import prepare

    return prepare(model, **{k: v for k, v in opts.items() if k != "progress"})


def test_cfg_drop_reaches_the_controlled_models_and_the_text_rows():
    p = _mila(cfg_drop=("text", "waypoints"))
    assert all(m.unguided == ("waypoints",) for m in p.models.values())
    ctx = p.make_context("main", p.models["main"])
    assert not torch.equal(ctx.text[0], ctx.text[1])  # the negative (empty) prompt in the unconditional row
    keep = _mila(cfg_drop=("waypoints",))  # text kept: the guidance acts on the waypoints alone
    ctx = keep.make_context("main", keep.models["main"])
    assert torch.equal(ctx.text[0], ctx.text[1])
    assert all(m.unguided == () for m in _mila().models.values())  # default: controls in both rows
    with pytest.raises(ValueError, match=r"cfg_drop takes a subset of \('text', 'waypoints', 'camera'\)"):
        _mila(cfg_drop=("depth",))
    with pytest.raises(ValueError, match="keeps the prompt in the unconditional row"):
        _mila(cfg_drop=("waypoints",), negative_prompt="blurry")


# ----------------------------------------------------------------------------------
# prior frames
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("P", [1, 4])
def test_first_clip_sees_exactly_the_prior_frames(P):
    from engine.plans import INPUT, build_plan

    plan = build_plan("mila", 9, prior_frames=P, anchor_stride=2, anchors_per_rollout=3, clip_frames=2,
                      history_frames=2)
    prior, video = plan.clips
    assert (prior.kind, prior.start, prior.length, prior.output) == ("image", 0, P, False)
    assert (video.kind, video.start, video.length, video.output) == ("video", P, 9, True)
    assert plan.inputs == tuple(range(P)) and plan.video_frames == 33
    for jid in ("mila/coarse0", "mila/fine0"):
        j = plan.job(jid)
        ctx = [p for p, g in zip(j.positions, j.generated) if not g and p < P]
        assert ctx == list(range(P)) and all(j.sources[j.positions.index(p)] == INPUT for p in ctx)
        assert j.rope == j.positions  # one RoPE timeline across the prior clip and the video
        for i, g in enumerate(j.generated):
            if g:
                assert all(j.visibility[i][j.positions.index(p)] for p in range(P))
    for j in plan.jobs:  # later fine clips read their 2 history frames (and anchors), no other prior frame
        if j.id.startswith("mila/fine") and j.id != "mila/fine0":
            s0 = j.generated_positions[0]
            hist = [p for p, g, src in zip(j.positions, j.generated, j.sources)
                    if not g and (src == INPUT or src.startswith("mila/fine"))]
            assert hist == [s0 - 2, s0 - 1], (j.id, hist)
    first_video = plan.job("mila/fine0").generated_positions
    assert first_video[0] == P


FF = np.random.default_rng(4).integers(0, 255, (3, 4, 32, 32, 3), dtype=np.uint8)
FAST = SamplerConfig(kind="euler", num_steps=2, timesteps=None)


def _prior_run(P, views, devices=None, **kw):
    cams = np.abs(np.random.default_rng(3).normal(size=(views, 16))) + 0.1
    opts = dict(num_frames=9, height=32, width=32, strategy="mila", anchor_stride=2, anchors_per_rollout=3,
                clip_frames=2, sampler=FAST, first_frames=FF[:views, :P] if views > 1 else FF[0, :P],
                devices=devices)
    if views > 1:
        opts.update(views=views, cameras=cams)
    opts.update(kw)
    return opts


@pytest.mark.parametrize("P, views", [(1, 1), (4, 1), (1, 3), (4, 3)])
def test_prior_frames_are_encoded_alone_per_view(P, views):
    from engine.generation import prepare
    from engine.models.vae import encode_frames

    p = prepare("tiny-random", **_prior_run(P, views))
    assert sorted(p.inputs) == list(range(P))
    vae = p.vae
    for k in range(P):
        want = torch.cat([encode_frames(vae, torch.from_numpy(FF[v, k]).permute(2, 0, 1).float()[None, :, None]
                                        / 127.5 - 1) for v in range(views)], -1)
        torch.testing.assert_close(p.inputs[k], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("P, views", [(4, 1), (1, 3)])
def test_prior_frame_video_is_the_same_on_one_and_two_workers(P, views):
    a = engine.generate("tiny-random", progress=False, **_prior_run(P, views))
    b = engine.generate("tiny-random", progress=False, **_prior_run(P, views, devices=["cpu", "cpu"], shuffle=3))
    assert a.frames.shape == (9, 32, 32 * views, 3) and np.array_equal(a.frames, b.frames)


def test_prior_positions_get_no_control_and_bad_priors_are_refused():
    from engine.generation import prepare

    wps = np.random.default_rng(2).normal(size=(9, 3, 2))
    p = prepare("tiny-random", **_prior_run(4, 1, waypoints=wps))
    m = p.models["main"]
    ctl = m.control_pass([2, 3, 4, 5], 1)
    assert ctl.mask.tolist() == [[0.0, 0.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match="MiLA's input: run strategy='mila'"):
        prepare("tiny-random", num_frames=9, height=32, width=32, strategy="ar", first_frames=FF[0, :4], sampler=FAST)
    with pytest.raises(ValueError, match="not both"):
        prepare("tiny-random", **_prior_run(4, 1, first_frame=FF[0, 0]))
    with pytest.raises(ValueError, match="same number"):
        prepare("tiny-random", **_prior_run(4, 3, first_frames=[list(FF[0, :4]), list(FF[1, :3]), list(FF[2, :4])]))
    with pytest.raises(ValueError, match=r"first_frames=\[V, P, H, W, 3\]"):
        prepare("tiny-random", **_prior_run(1, 3, first_frames=None, first_frame=FF[0, 0]))


def test_mila_recipe_has_the_papers_values():
    from engine.generation import prepare
    from engine.recipes import get_recipe

    r = get_recipe("mila")
    assert r.sampler.num_steps == 50 and r.fps == 12 and r.prior_frames == 4 and r.options.anchor_stride == 3
    six = np.random.default_rng(8).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    p = prepare("tiny-random", recipe="mila", num_frames=9, height=32, width=32, first_frames=six,
                sampler=FAST.replace(guidance_scale=3.0), prompt="a road")
    assert sorted(p.inputs) == [0, 1, 2, 3] and p.fps == 12  # the last 4 of the 6 frames
    ctx = p.make_context("main", p.models["main"])
    assert not torch.equal(ctx.text[0], ctx.text[1])


def test_a_checkpoint_without_the_asked_control_layers_warns_naming_them(tmp_path):
    """Controls asked of a trained checkpoint that lacks their layers: the layers start at
    zero and the video ignores them -- a warning names the missing layers (a preset with
    random weights stays quiet)."""
    from engine.generation import prepare
    from engine.models.weights import save_original_layout

    folder = save_original_layout(build_model(CFG, seed=3), tmp_path / "plain")
    wps = np.random.default_rng(2).normal(size=(9, 3, 2))
    from engine.models.vae import make_tiny_vae

    text = torch.randn(1, 8, CFG.text_dim, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match=r"has no \['waypoints'\] control layer"):
        prepare(str(folder), num_frames=9, height=32, width=32, waypoints=wps, sampler=FAST, vae=make_tiny_vae(),
                prompt_embeds=text)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare("tiny-random", num_frames=9, height=32, width=32, waypoints=wps, sampler=FAST)
