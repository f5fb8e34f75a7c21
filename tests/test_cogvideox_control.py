"""LongDWM's trajectory warp control on a CogVideoX DiT (issue 14, part 4): the zero-init
patch embedding of the warped frames' latents added before every block, its checkpoint
keys, the warning when a checkpoint lacks it, and a run through engine.generate."""

import warnings

import numpy as np
import pytest
import torch

import engine
from engine.models.cogvideox import COGVIDEOX_PRESETS, build_cogvideox, load_cogvideox
from engine.models.cogvideox_control import ControlledCogVideoXDiT, load_cogvideox_with_controls
from engine.models.wan_control import ControlPass
from engine.models.weights import CheckpointError
from helpers import randomize_, rel_err

H = W = 32


def _base(seed=1):
    m = build_cogvideox(COGVIDEOX_PRESETS["tiny-cogvideox"], seed=seed)
    randomize_(m, seed)
    return m.eval()


def _inputs(seed=0, F=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, F, 4, 4, generator=g)
    text = torch.randn(1, 16, 32, generator=g)
    warp = torch.randn(1, 16, F, 4, 4, generator=g)
    return x, torch.full((1,), 700.0), text, warp


def test_warp_layer_is_zero_at_first_and_added_before_every_block():
    base = _base()
    m = ControlledCogVideoXDiT.from_base(base)
    assert m.patch_embed.proj.weight is base.patch_embed.proj.weight  # shared, not copied
    x, t, text, warp = _inputs()
    ref = base(x, t, text)
    layer = m.enable_control("warp")
    assert float(layer.patch_embedding.weight.abs().sum()) == 0.0
    assert torch.equal(m(x, t, text, control=ControlPass(warp=warp)), ref)  # zero-init: the base model
    with torch.no_grad():
        layer.patch_embedding.weight.normal_(0, 0.1)
        layer.patch_embedding.bias.normal_(0, 0.1)
    got = m(x, t, text, control=ControlPass(warp=warp))
    assert rel_err(got, ref) > 1e-3
    # the definition: the same tokens through block_tokens of the base forward
    tokens = torch.nn.functional.conv3d(warp, layer.patch_embedding.weight, layer.patch_embedding.bias,
                                        stride=(1, 2, 2)).flatten(3).permute(0, 2, 3, 1)
    assert rel_err(got, base(x, t, text, block_tokens=tokens)) <= 1e-6
    # mask 0 on a frame: that frame gets no control
    masked = m(x, t, text, control=ControlPass(warp=warp, mask=torch.zeros(1, 3)))
    assert torch.equal(masked, ref)
    with pytest.raises(ValueError, match="only LongDWM's warp"):
        m.enable_control("waypoints")
    with pytest.raises(ValueError, match="control.warp must be latents"):
        m(x, t, text, control=ControlPass(warp=warp[:, :, :2]))


def _save_folder(tmp_path, model, extra: dict | None = None, name="transformer"):
    """A diffusers CogVideoXTransformer3DModel folder holding ``model``'s weights (and ``extra`` keys)."""
    from diffusers import CogVideoXTransformer3DModel
    from safetensors.torch import load_file, save_file

    ref = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=32, num_layers=2, time_embed_dim=32, text_embed_dim=32,
        in_channels=16, out_channels=16, sample_height=16, sample_width=16, sample_frames=13, max_text_seq_length=16)
    randomize_(ref, 5)
    folder = tmp_path / name
    ref.save_pretrained(folder)
    f = folder / "diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    sd.update({k: v.contiguous() for k, v in (extra or {}).items()})
    save_file(sd, f)
    return folder


def test_checkpoint_keys_load_and_are_checked(tmp_path):
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(64, 16, 1, 2, 2, generator=g), torch.randn(64, generator=g)
    folder = _save_folder(tmp_path, None, {"control_layers.warp.patch_embedding.weight": w,
                                           "control_layers.warp.patch_embedding.bias": b})
    with pytest.raises(CheckpointError, match="load_cogvideox_with_controls"):
        load_cogvideox(folder, device="cpu")
    m = load_cogvideox_with_controls(folder, device="cpu")
    assert isinstance(m, ControlledCogVideoXDiT)
    assert torch.equal(m.control_layers["warp"].patch_embedding.weight, w)
    alt = _save_folder(tmp_path, None, {"warp_embedding.weight": w, "warp_embedding.bias": b}, name="alt")
    assert torch.equal(load_cogvideox_with_controls(alt, device="cpu").control_layers["warp"].patch_embedding.bias, b)
    bad = _save_folder(tmp_path, None, {"control_layers.warp.patch_embedding.weight": w[:, :8],
                                        "control_layers.warp.patch_embedding.bias": b}, name="bad")
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_cogvideox_with_controls(bad, device="cpu")
    plain = load_cogvideox(_save_folder(tmp_path, None, name="plain"), device="cpu")
    assert type(plain).__name__ == "CogVideoXDiT"


def test_generate_with_a_trajectory_on_cogvideox(tmp_path):
    """A CogVideoX main model with a trajectory: the warped first frame through CogVideoX's
    VAE into the warp layer; a checkpoint without the layer warns naming it; a trained
    layer changes the video, a zero one does not."""
    traj = [[0.0, 0.0], [0.3, 2.0], [0.8, 4.0]]
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(1)) * 2 - 1
    from engine.models.cogvideox_text import make_tiny_cogvideox_text_encoder
    from engine.models.cogvideox_vae import make_tiny_cogvideox_vae

    kw = dict(num_frames=9, height=H, width=W, first_frame=image, prompt="a road", chunk_frames=3, seed=1,
              progress=False, sampler=engine.SamplerConfig(kind="euler", schedule="cogvideox", num_steps=4),
              vae=make_tiny_cogvideox_vae(seed=2), text_encoder=make_tiny_cogvideox_text_encoder(seed=3, dim=32))
    plain = load_cogvideox(_save_folder(tmp_path, None, name="plain"), device="cpu")
    with pytest.warns(UserWarning, match=r"no \['warp'\] control layer"):
        a = engine.generate(plain, trajectory=traj, **kw)
    b = engine.generate(plain, **kw)
    assert np.array_equal(a.frames, b.frames)  # a zero warp layer: the video ignores the trajectory
    g = torch.Generator().manual_seed(3)
    trained = load_cogvideox_with_controls(_save_folder(tmp_path, None, {
        "control_layers.warp.patch_embedding.weight": 0.2 * torch.randn(64, 16, 1, 2, 2, generator=g),
        "control_layers.warp.patch_embedding.bias": 0.2 * torch.randn(64, generator=g)}, name="trained"), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = engine.generate(trained, trajectory=traj, **kw)
    d = engine.generate(trained, trajectory=[[0.0, 0.0], [-0.5, 2.0], [-1.5, 3.0]], **kw)
    assert c.frames.shape == (9, H, W, 3) and not np.array_equal(c.frames, d.frames)
    with pytest.raises(Exception, match="only the trajectory"):
        engine.generate(trained, waypoints=np.zeros((9, 4, 2)), **kw)
