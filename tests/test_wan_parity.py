"""Our Wan DiT against diffusers' WanTransformer3DModel holding the same random weights."""

import pytest
import torch

import engine
from engine.models.weights import is_diffusers_layout
from helpers import diffusers_wan, rel_err, wan_text

SHAPES = [
    # (heads, head_dim, layers, frames, height, width, in_ch, image_dim)
    pytest.param(2, 32, 2, 3, 8, 8, 16, None, id="tiny-t2v"),
    pytest.param(2, 32, 2, 3, 8, 6, 36, 24, id="tiny-i2v"),
    pytest.param(3, 16, 1, 5, 6, 10, 16, None, id="3heads-hd16-5frames"),
    pytest.param(4, 24, 3, 2, 10, 4, 16, None, id="4heads-hd24-3layers"),
]


@pytest.mark.parametrize("heads,head_dim,layers,frames,height,width,in_ch,image_dim", SHAPES)
def test_matches_diffusers(tmp_path, heads, head_dim, layers, frames, height, width, in_ch, image_dim):
    ref = diffusers_wan(heads=heads, head_dim=head_dim, layers=layers, in_ch=in_ch, image_dim=image_dim, seed=1)
    ref.save_pretrained(tmp_path / "transformer")
    ours = engine.load_model(tmp_path / "transformer", dtype="float32", device="cpu")
    assert ours.config.num_heads == heads and ours.config.num_layers == layers
    assert ours.config.is_i2v == (image_dim is not None)

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, in_ch, frames, height, width, generator=g)
    t = torch.rand(2, generator=g) * 1000
    text_len = 512 if image_dim else 7  # diffusers hard-codes 512 text tokens for I2V
    text = torch.randn(2, text_len, 32, generator=g)
    image = torch.randn(2, 5, image_dim, generator=g) if image_dim else None
    with torch.no_grad():
        want = ref(x, t, wan_text(text), encoder_hidden_states_image=image, return_dict=False)[0]
        got = ours(x, t, text, image_embeds=image)
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-5

    # Per-frame timesteps [B, F] equal diffusers' per-token timesteps.
    tf = torch.rand(2, frames, generator=g) * 1000
    per_token = tf[:, :, None].expand(2, frames, (height // 2) * (width // 2)).reshape(2, -1)
    with torch.no_grad():
        want = ref(x, per_token, wan_text(text), encoder_hidden_states_image=image, return_dict=False)[0]
        got = ours(x, tf, text, image_embeds=image)
    assert rel_err(got, want) <= 1e-5


def test_sharded_diffusers_folder(tmp_path):
    ref = diffusers_wan(layers=3, seed=3)
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    files = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert any(f.endswith(".safetensors.index.json") for f in files)
    assert sum(f.endswith(".safetensors") for f in files) > 1
    ours = engine.load_model(tmp_path / "sharded", dtype="float32", device="cpu")
    g = torch.Generator().manual_seed(4)
    x, t, text = torch.randn(1, 16, 2, 4, 4, generator=g), torch.tensor([321.0]), torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        assert rel_err(ours(x, t, text), ref(x, t, wan_text(text), return_dict=False)[0]) <= 1e-5


def test_pipeline_root_follows_transformer_folder(tmp_path):
    ref = diffusers_wan(seed=5)
    ref.save_pretrained(tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    ours = engine.load_model(tmp_path / "pipe", dtype="float32", device="cpu")
    assert ours.config.dim == 64


def test_key_layout_detection():
    ref = diffusers_wan(seed=0)
    assert is_diffusers_layout(ref.state_dict())
    assert not is_diffusers_layout(engine.load_model("tiny-random", device="cpu").state_dict())
