"""LongVie 2 as released: the controller's key layout and loading, the model's forward
against its own parts, the recipe's checks (the release parity is tests/test_longvie_parity.py)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import engine
from engine.config import ModelConfig, SamplerConfig
from engine.loading import load_longvie
from engine.models.longvie import RELEASE_PREFIX, LongVieDiT
from engine.models.wan import WanDiT, init_random_weights
from engine.models.weights import CheckpointError, save_original_layout

CFG = ModelConfig(name="lv-tiny", in_channels=36, dim=32, ffn_dim=64, num_heads=2, num_layers=3, text_dim=32,
                  image_dim=64, text_len=16)


def _base(seed=0):
    return init_random_weights(WanDiT(CFG), seed=seed).eval()


def _controller_state(layers=2, seed=1):
    m = LongVieDiT.from_base(_base(), control_layers=layers)
    init_random_weights(m.controller, seed=seed)  # the zero-initialised linears get values too
    return {k: v.clone() for k, v in m.controller.state_dict().items()}


def _inputs(seed=0, F=3, h=4, w=6, hist=2):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(latents=r(1, 16, F, h, w), t=torch.tensor([613.0]), text=r(2, 7, 32), image=r(2, 257, 64),
                condition=r(1, 20, F, h, w), dense=r(1, 36, F, h, w), sparse=r(1, 36, F, h, w),
                history=r(1, 16, hist, h, w))


def _run(m, d, history=True, rows=slice(None)):
    with torch.no_grad():
        return m(d["latents"], d["t"], d["text"][rows], image_embeds=d["image"][rows], condition=d["condition"],
                 dense=d["dense"], sparse=d["sparse"], history=d["history"] if history else None)


def test_release_control_keys_load_with_and_without_the_training_prefix():
    state = _controller_state()
    assert "control_combine_linears.1.weight" in state and "control_blocks_sparse.0.cross_attn.k_img.weight" in state
    a = LongVieDiT.from_base(_base(), state)
    b = LongVieDiT.from_base(_base(), {RELEASE_PREFIX + k: v for k, v in state.items()})
    assert a.controller.control_layers == 2
    d = _inputs()
    assert torch.equal(_run(a, d), _run(b, d))


@pytest.mark.parametrize("change, match", [
    (lambda s: s.pop("control_combine_linears.0.bias"), r"1 missing keys: control_combine_linears.0.bias"),
    (lambda s: s.__setitem__("control_t_mod.weight", torch.zeros(16, 31)), r"1 mis-shaped keys: control_t_mod.weight: checkpoint \(16, 31\)"),
    (lambda s: s.__setitem__("control_extra.weight", torch.zeros(2)), r"1 unexpected keys: control_extra.weight"),
])
def test_a_bad_control_file_names_the_key(change, match):
    state = _controller_state()
    change(state)
    with pytest.raises(CheckpointError, match=match):
        LongVieDiT.from_base(_base(), state, source="control.safetensors")


def test_not_a_control_file_and_t2v_base_are_refused():
    with pytest.raises(CheckpointError, match="not a LongVie 2 control file"):
        LongVieDiT.from_base(_base(), {"blocks.0.self_attn.q.weight": torch.zeros(2)})
    t2v = init_random_weights(WanDiT(CFG.replace(in_channels=16, image_dim=None)))
    with pytest.raises(ValueError, match="image-to-video"):
        LongVieDiT.from_base(t2v, control_layers=1)


def test_zero_combine_linears_leave_the_base_model_unchanged():
    """The injections are the only way the branches reach the base: with them at zero (the
    release's init) and no history, the output is the plain I2V DiT's."""
    base = _base()
    state = _controller_state()
    for k in state:
        if k.startswith("control_combine_linears."):
            state[k].zero_()
    m = LongVieDiT.from_base(base, state)
    d = _inputs(seed=3)
    with torch.no_grad():
        want = base(d["latents"].expand(2, -1, -1, -1, -1), d["t"].expand(2), d["text"], image_embeds=d["image"],
                    condition=d["condition"].expand(2, -1, -1, -1, -1))
    torch.testing.assert_close(_run(m, d, history=False), want, rtol=1e-5, atol=1e-6)
    # with the trained (random) linears the branches and the history both change the output
    full = LongVieDiT.from_base(base, _controller_state())
    assert (_run(full, d, history=False) - want).abs().max() > 1e-3
    assert (_run(full, d) - _run(full, d, history=False)).abs().max() > 1e-3


def test_cfg_rows_batched_equal_rows_one_by_one():
    m = LongVieDiT.from_base(_base(), _controller_state())
    d = _inputs(seed=5)
    both = _run(m, d)
    one = torch.cat([_run(m, d, rows=slice(0, 1)), _run(m, d, rows=slice(1, 2))], 0)
    torch.testing.assert_close(both, one, rtol=1e-5, atol=1e-6)


def test_load_longvie_from_release_files_with_an_overlay(tmp_path):
    base = _base(seed=4)
    folder = save_original_layout(base, tmp_path / "base")
    state = _controller_state(seed=6)
    save_file({RELEASE_PREFIX + k: v.contiguous() for k, v in state.items()}, str(tmp_path / "control.safetensors"))
    g = torch.Generator().manual_seed(9)
    overlay = {k: torch.randn(v.shape, generator=g) for k, v in base.state_dict().items() if ".self_attn." in k}
    save_file(overlay, str(tmp_path / "dit.safetensors"))
    m = load_longvie(folder, tmp_path / "control.safetensors", overlay=tmp_path / "dit.safetensors", device="cpu")
    sd = m.state_dict()
    for k, v in overlay.items():
        assert torch.equal(sd[k], v), k
    assert torch.equal(sd["blocks.0.ffn.0.weight"], base.state_dict()["blocks.0.ffn.0.weight"])
    assert torch.equal(sd["controller.control_t_mod.weight"], state["control_t_mod.weight"])
    # an overlay key the base lacks, or a mis-shaped one, is an error naming it
    save_file({"blocks.9.self_attn.q.weight": torch.zeros(32, 32)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"the base does not have \['blocks.9.self_attn.q.weight'\]"):
        load_longvie(folder, tmp_path / "control.safetensors", overlay=tmp_path / "bad.safetensors")
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(32, 16)}, str(tmp_path / "bad2.safetensors"))
    with pytest.raises(CheckpointError, match=r"mis-shaped \[blocks.0.self_attn.q.weight \(32, 16\)"):
        load_longvie(folder, tmp_path / "control.safetensors", overlay=tmp_path / "bad2.safetensors")
    with pytest.raises(CheckpointError, match="pass control="):
        load_longvie(folder)
    with pytest.raises(FileNotFoundError, match="control.safetensors"):
        load_longvie(folder, tmp_path / "nope" / "control.safetensors")


# ----------------------------------------------------------------------------------
# the recipe's checks
# ----------------------------------------------------------------------------------
RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 255, (32, 48, 3), dtype=np.uint8)
DEPTH = RNG.uniform(1, 50, (161, 32, 48)).astype(np.float32)
TRACK = RNG.integers(0, 255, (161, 32, 48, 3), dtype=np.uint8)
FAST = SamplerConfig(kind="euler", num_steps=1, timesteps=None, guidance_scale=5.0)


def _gen(**kw):
    opts = dict(recipe="longvie2", first_frame=IMG, dense=DEPTH, sparse=TRACK, height=32, width=48, sampler=FAST,
                progress=False)
    opts.update(kw)
    return engine.generate("tiny-i2v", **opts)


@pytest.mark.parametrize("kw, err, match", [
    (dict(num_frames=81), ValueError, r"num_frames=81 does not fit the 2 LongVie clip\(s\) given: they make 161"),
    (dict(sparse=None), ValueError, "needs both controls"),
    (dict(sparse=TRACK[:81]), ValueError, r"makes 1 clip\(s\) but 2 are asked for"),
    (dict(dense=[TRACK[:80], TRACK[:81]]), ValueError, "has 80 frames; every LongVie clip takes 81"),
    (dict(first_frame=None), ValueError, "starts from an image"),
    (dict(devices=["cpu", "cpu"]), ValueError, "one sequential chain"),
    (dict(window_frames=3), TypeError, r"\['window_frames'\] do not apply to recipe 'longvie2'"),
    (dict(prompt=["a", "b", "c"]), ValueError, "3 entries for 2 clips"),
])
def test_recipe_errors_name_the_problem(kw, err, match):
    with pytest.raises(err, match=match):
        _gen(**kw)


def test_recipe_stitches_clips_and_hands_each_clip_on():
    clips = {}
    v = _gen(on_clip=lambda k, f: clips.__setitem__(k, f))
    assert len(v) == 161 and sorted(clips) == [0, 1] and all(c.shape == (81, 32, 48, 3) for c in clips.values())
    assert np.array_equal(v.frames[:81], clips[0]) and np.array_equal(v.frames[81:], clips[1][1:])
    assert v.stats.critical_path_passes == 2  # 1 step x 1 batched CFG pass x 2 clips
    listed = {r.name for r in engine.recipes.RECIPES.values()}
    assert {"self-forcing", "longvie2"} <= listed


def test_cli_runs_the_release_cond_json(tmp_path, monkeypatch):
    """``generate --recipe longvie2 --cond cond.json``: the release's per-clip list of prompt,
    depth mp4 and track mp4 (paths relative to the file), every clip's own video written."""
    from PIL import Image

    from engine.cli import main
    from engine.video import Video

    rng = np.random.default_rng(7)
    samples = []
    for k in range(2):
        for kind in ("depth", "track"):
            low = rng.uniform(0, 255, (81, 4, 6, 3))
            frames = np.repeat(np.repeat(low, 8, 1), 8, 2).astype(np.uint8)  # smooth: survives the codec
            Video(frames, 16).save(tmp_path / f"{kind}_{k}.mp4")
        samples.append({"text": f"clip {k}", "depth": f"depth_{k}.mp4", "track": f"track_{k}.mp4"})
    (tmp_path / "cond.json").write_text(__import__("json").dumps(samples))
    Image.fromarray(IMG).save(tmp_path / "first.png")
    monkeypatch.chdir(tmp_path.parent)  # the mp4 paths resolve relative to cond.json
    rc = main(["generate", "--model", "tiny-i2v", "--recipe", "longvie2", "--cond", str(tmp_path / "cond.json"),
               "--first-frame", str(tmp_path / "first.png"), "--height", "32", "--width", "48", "--steps", "1",
               "--out", str(tmp_path / "out.mp4"), "--clip-outputs", str(tmp_path / "clip_{clip}.mp4"),
               "--no-progress"])
    assert rc == 0
    from engine.control.longvie import read_video

    assert read_video(tmp_path / "out.mp4").shape == (161, 32, 48, 3)
    assert all(read_video(tmp_path / f"clip_{k}.mp4").shape == (81, 32, 48, 3) for k in range(2))
    assert main(["generate", "--model", "tiny-i2v", "--recipe", "longvie2", "--cond", str(tmp_path / "cond.json"),
                 "--first-frame", str(tmp_path / "first.png"), "--height", "32", "--width", "48", "--waypoints",
                 "x.npy", "--out", str(tmp_path / "o2.mp4")]) == 2
