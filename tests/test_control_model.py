"""Control injection in the controlled Wan DiT: zero-initialised layers change nothing, non-zero ones
change only the frames that can see a controlled frame; multi-view attention over
(view, frame) equals an explicit dense mask; control weights load from checkpoints.
(LongVie 2's dense / sparse branches are the release's own model: engine.models.longvie.)"""

import pytest
import torch

import engine
from engine.attention import FrameVisibility, attention, attention_reference
from engine.control import ControlError, multiview_visibility
from engine.control.multiview import frames_to_views, views_to_frames
from engine.control.setup import TimelineControlledDiT
from engine.kvcache import KVCache
from engine.loading import build_model
from engine.models.wan import WanDiT
from engine.models.wan_control import CONTROL_KINDS, ControlledWanDiT, ControlPass
from engine.models.weights import CheckpointError, save_original_layout
from engine_kernels import patterns

CFG = engine.PRESETS["tiny-random"].replace(num_layers=3)


def fresh(seed=3):
    return ControlledWanDiT.from_base(build_model(CFG, seed=seed).eval().requires_grad_(False))


def inputs(nf=4, h=4, w=6, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 16, nf, h, w, generator=g), t=torch.rand(batch, nf, generator=g) * 1000,
        text=torch.randn(batch, 5, 32, generator=g), lat=torch.randn(batch, 16, nf, h, w, generator=g),
        wp=torch.randn(batch, nf, 6, generator=g), cam=torch.randn(batch, nf, 16, generator=g))


def enable_all(m):
    m.enable_control("warp")
    m.enable_control("waypoints", in_features=6)
    m.enable_control("camera")
    return m


def randomize_controls(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.control_layers.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def full_control(d, mask=None):
    return ControlPass(warp=d["lat"], waypoints=d["wp"], camera=d["cam"], mask=mask)


@torch.no_grad()
def test_default_model_has_no_control_parameters():
    base = build_model(CFG, seed=3).eval().requires_grad_(False)
    assert not hasattr(base, "control_layers") and not hasattr(base, "enable_control")
    m = ControlledWanDiT.from_base(base)
    assert m.state_dict().keys() == base.state_dict().keys()
    assert all(a is b for a, b in zip(m.parameters(), base.parameters()))  # shared, not copied
    assert not any(p.requires_grad for p in base.parameters()) and not m.training
    assert ControlledWanDiT.from_base(m) is m
    d = inputs()
    assert torch.equal(m(d["x"], d["t"], d["text"]), base(d["x"], d["t"], d["text"]))
    enable_all(m)
    assert not hasattr(base, "control_layers")
    assert {k.split(".")[1] for k in m.state_dict() if k.startswith("control_layers.")} == {
        "warp", "waypoints", "camera"} == set(CONTROL_KINDS)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["warp", "waypoints", "camera", "all"])
def test_zero_initialised_injection_leaves_output_unchanged(kind):
    m = fresh()
    d = inputs()
    want = m(d["x"], d["t"], d["text"])
    enable_all(m)
    assert torch.equal(m(d["x"], d["t"], d["text"]), want)  # no control given
    full = full_control(d)
    ctl = full if kind == "all" else ControlPass(**{kind: getattr(full, kind)})
    got = m(d["x"], d["t"], d["text"], control=ctl)
    assert torch.equal(got, want)
    vis = patterns.block_causal(4, 2)
    assert torch.equal(m(d["x"], d["t"], d["text"], visibility=vis, control=ctl),
                       m(d["x"], d["t"], d["text"], visibility=vis))


@torch.no_grad()
def test_zero_warp_and_vectors_leave_the_kv_cache_rollout_unchanged():
    m = fresh()
    d = inputs(nf=4)

    def rollout(control):
        cache = KVCache(num_layers=3, batch=1, num_heads=2, head_dim=32, tokens_per_frame=6, chunk_frames=2,
                        max_frames=4)
        ctx = m.prepare_context(d["text"])
        outs = []
        for s in (0, 2):
            pos = [s, s + 1]
            kw = {} if control is None else dict(control=ControlPass(
                warp=d["lat"][:, :, pos], waypoints=d["wp"][:, pos], camera=d["cam"][:, pos]))
            outs.append(m(d["x"][:, :, pos], d["t"][:, pos], ctx, frame_positions=pos, kv_cache=cache,
                          cache_slots=cache.claim(pos), **kw))
        return torch.cat(outs, 2)

    want = rollout(None)
    enable_all(m)
    assert torch.equal(rollout(True), want)
    randomize_controls(m)
    assert not torch.allclose(rollout(True), want)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["warp", "vectors", "all"])
def test_nonzero_injection_changes_only_frames_that_see_the_control(kind):
    m = enable_all(fresh())
    randomize_controls(m)
    d = inputs(nf=4)
    full = full_control(d, mask=torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    ctl = {"warp": ControlPass(warp=full.warp, mask=full.mask),
           "vectors": ControlPass(waypoints=full.waypoints, camera=full.camera, mask=full.mask),
           "all": full}[kind]
    vis = patterns.block_causal(4, 2)  # frames 0-1 cannot see frames 2-3
    base = m(d["x"], d["t"], d["text"], visibility=vis)
    got = m(d["x"], d["t"], d["text"], visibility=vis, control=ctl)
    assert (got[:, :, :2] - base[:, :, :2]).abs().max() <= 1e-6
    assert (got[:, :, 2:] - base[:, :, 2:]).abs().max() > 1e-3
    # with full visibility the controlled frames reach every frame
    got_full = m(d["x"], d["t"], d["text"], control=ctl)
    assert (got_full[:, :, :2] - m(d["x"], d["t"], d["text"])[:, :, :2]).abs().max() > 1e-4


@torch.no_grad()
def test_control_errors_name_the_problem():
    m = fresh()
    d = inputs()
    with pytest.raises(ValueError, match="no 'warp' control layer"):
        m(d["x"], d["t"], d["text"], control=ControlPass(warp=d["lat"]))
    enable_all(m)
    with pytest.raises(ValueError, match="control.warp must be latents"):
        m(d["x"], d["t"], d["text"], control=ControlPass(warp=d["lat"][:, :, :2]))
    with pytest.raises(ValueError, match=r"control.waypoints must be \[B, F, features\]"):
        m(d["x"], d["t"], d["text"], control=ControlPass(waypoints=d["wp"][:, :2]))
    with pytest.raises(ValueError, match="takes 6 features per frame"):
        m(d["x"], d["t"], d["text"], control=ControlPass(waypoints=d["wp"][..., :4]))
    with pytest.raises(ValueError, match=r"control.mask must be \[B, F\]"):
        m(d["x"], d["t"], d["text"], control=ControlPass(warp=d["lat"], mask=torch.ones(1, 3)))
    # multi-view passes run through the runtime (history frames), never over a KV cache
    g = torch.Generator().manual_seed(4)
    wrapped = TimelineControlledDiT(m, {"camera": torch.randn(4, 2, 16, generator=g)}, views=2)
    cache = KVCache(num_layers=3, batch=1, num_heads=2, head_dim=32, tokens_per_frame=6, chunk_frames=2, max_frames=4)
    x = torch.randn(1, 16, 2, 4, 8, generator=g)  # 2 views of 4x4 latents
    with pytest.raises(ControlError, match="context='history'"):
        wrapped(x, d["t"][:, :2], d["text"], timeline_positions=[0, 1], frame_positions=[0, 1], kv_cache=cache,
                cache_slots=cache.claim([0, 1]))
    with pytest.raises(ControlError, match="timeline_positions"):
        wrapped(x, d["t"][:, :2], d["text"], frame_positions=[0, 1])


@torch.no_grad()
def test_longvie_branch_kinds_are_gone_from_the_controlled_dit():
    """The old invented dense / sparse branch layout is not a control kind any more (LongVie 2
    is engine.models.longvie, the release's own key layout)."""
    m = fresh()
    for kind in ("dense", "sparse"):
        with pytest.raises(ValueError, match=f"unknown control kind '{kind}'"):
            m.enable_control(kind, num_blocks=1)
        with pytest.raises(ValueError, match=f"unknown control layer '{kind}'"):
            m.load_control_state({f"{kind}.inject.0.weight": torch.zeros(1)})
    assert not hasattr(ControlPass(), "dense") and not hasattr(ControlPass(), "sparse")
    assert len(m.control_layers) == 0


# ----------------------------------------------------------------------------------
# multi-view attention
# ----------------------------------------------------------------------------------
def dense_multiview_mask(vis, V, T):
    """Independent: token (f, v, i) in (frame, view, token) order may see (f', v', j) iff
    vis[f, f'] and (v == v' or f == f')."""
    F = vis.shape[0]
    n = F * V * T
    mask = torch.zeros(n, n, dtype=torch.bool)
    for a in range(n):
        fa, va = a // (V * T), (a // T) % V
        for b in range(n):
            fb, vb = b // (V * T), (b // T) % V
            mask[a, b] = bool(vis[fa, fb]) and (va == vb or fa == fb)
    return mask


def explicit_attention(q, k, v, mask):
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * q.shape[-1] ** -0.5
    return torch.einsum("bhqk,bhkd->bhqd", s.masked_fill(~mask, float("-inf")).softmax(-1), v.double())


@pytest.mark.parametrize("backend", ["reference", "sdpa", "flex", "triton"])
def test_multiview_attention_equals_explicit_dense_mask(backend):
    F, V, T = 3, 2, 8
    vis = patterns.block_causal(F, 1)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, F * V * T, 16, generator=g) for _ in range(3))
    mv = multiview_visibility(vis, V)
    want = explicit_attention(q, k, v, dense_multiview_mask(vis, V, T))
    fv = FrameVisibility.uniform(mv, T)
    assert torch.equal(fv.dense_mask(), dense_multiview_mask(vis, V, T))
    if backend == "triton":
        import engine_kernels

        got = engine_kernels.block_attention(q, k, v, q_frame_ids=fv.q_frame_ids, k_frame_ids=fv.k_frame_ids,
                                      visibility=mv)
    elif backend == "reference":
        got = attention_reference(q, k, v, fv)
    else:
        got = attention(q, k, v, fv, backend=backend)
    assert (got.double() - want).abs().max() <= 1e-5


@torch.no_grad()
def test_multiview_model_pass_equals_the_flattened_dense_pattern():
    m = fresh()
    m.enable_control("camera")
    randomize_controls(m)
    V, n, h, w = 2, 3, 4, 4
    g = torch.Generator().manual_seed(2)
    cams = torch.randn(n + 2, V, 16, generator=g)
    wrapped = TimelineControlledDiT(m, {"camera": cams}, views=V)
    x = torch.randn(1, 16, n, h, V * w, generator=g)
    t = torch.rand(1, n, generator=g) * 1000
    text = torch.randn(1, 5, 32, generator=g)
    positions = [2, 3, 4]
    vis = patterns.block_causal(n, 1)
    got = wrapped(x, t, text, timeline_positions=positions, frame_positions=[0, 1, 2], visibility=vis)
    # the same pass by hand: (frame, view) frames, repeated RoPE time, the explicit pattern
    mv = torch.zeros(n * V, n * V, dtype=torch.bool)
    for a in range(n * V):
        for b in range(n * V):
            mv[a, b] = bool(vis[a // V, b // V]) and (a % V == b % V or a // V == b // V)
    want = m(views_to_frames(x, V), t.repeat_interleave(V, 1), text, frame_positions=[0, 0, 1, 1, 2, 2],
             visibility=mv, control=ControlPass(camera=cams[positions].reshape(1, n * V, 16)))
    assert torch.equal(got, frames_to_views(want, V))
    assert torch.equal(frames_to_views(views_to_frames(x, V), V), x)


# ----------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------
@torch.no_grad()
def test_checkpoint_control_layers_load_and_absent_ones_are_zero(tmp_path):
    m = fresh()
    folder = save_original_layout(m, tmp_path / "plain")
    loaded = engine.load_model(str(folder), device="cpu")
    assert type(loaded) is WanDiT  # a plain checkpoint gives the plain model
    m.enable_control("warp")
    m.enable_control("waypoints", in_features=6)
    randomize_controls(m)
    folder = save_original_layout(m, tmp_path / "with_controls")
    loaded = engine.load_model(str(folder), device="cpu")
    assert isinstance(loaded, ControlledWanDiT) and set(loaded.control_layers) == {"warp", "waypoints"}
    d = inputs()
    ctl = ControlPass(warp=d["lat"], waypoints=d["wp"])
    assert torch.equal(loaded(d["x"], d["t"], d["text"], control=ctl), m(d["x"], d["t"], d["text"], control=ctl))
    # a checkpoint whose control layer does not fit is refused with the layer named
    from safetensors.torch import load_file, save_file

    f = folder / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    sd["control_layers.warp.patch_embedding.weight"] = torch.zeros(3, 3)
    save_file(sd, str(f))
    with pytest.raises(CheckpointError, match="control layer 'warp'"):
        engine.load_model(str(folder), device="cpu")
