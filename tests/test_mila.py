"""MiLA as the paper states it: classifier-free guidance that drops text and waypoints /
cameras in the unconditional row, prior frames, the recipe (schedules: test_mila_schedules.py)."""

import numpy as np
import pytest
import torch

import engine
from engine.config import SamplerConfig
from engine.loading import build_model
from engine.models.wan_control import ControlledWanDiT, ControlPass

CFG = engine.PRESETS["tiny"].replace(num_layers=2)


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
    model = ControlledWanDiT.from_base(engine.load_model("tiny", device="cpu"))
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
