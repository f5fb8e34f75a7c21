"""Our CogVideoX DiT against diffusers' CogVideoXTransformer3DModel holding the same random
weights, plus the frame-level extensions (visibility, per-frame timesteps, positions)."""

import inspect
import json

import pytest
import torch

from engine.models.cogvideox import (
    COGVIDEOX_PRESETS,
    CogVideoXConfig,
    CogVideoXContext,
    CogVideoXDiT,
    config_from_diffusers_json,
    diffusers_to_ours,
    load_cogvideox,
)
from engine.models.weights import CheckpointError
from helpers import randomize_, rel_err

TEXT_DIM = 20


def diffusers_cogvideox(*, heads=2, head_dim=32, layers=2, frames=3, text_len=7, rope=False, learned=False,
                        sample_hw=(12, 10), time_embed_dim=24, seed=1):
    """A random-weight diffusers CogVideoXTransformer3DModel (float32, eval). Its sin-cos
    embedding needs exactly ``max_text_seq_length`` text tokens, so that is ``text_len``."""
    from diffusers import CogVideoXTransformer3DModel

    m = CogVideoXTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, num_layers=layers, time_embed_dim=time_embed_dim,
        text_embed_dim=TEXT_DIM, sample_height=sample_hw[0], sample_width=sample_hw[1],
        sample_frames=(frames - 1) * 4 + 1, max_text_seq_length=text_len,
        use_rotary_positional_embeddings=rope, use_learned_positional_embeddings=learned,
    )
    randomize_(m, seed)
    if learned:  # a buffer, not a parameter: randomise it too (text rows included)
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            m.patch_embed.pos_embedding.copy_(0.3 * torch.randn(m.patch_embed.pos_embedding.shape, generator=g))
    return m.eval()


def diffusers_rope(model, frames, height, width):
    """The rotary tables CogVideoX's pipeline passes to the transformer (CogVideoX 1.0)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    c = model.config
    gh, gw = height // c.patch_size, width // c.patch_size
    crops = get_resize_crop_region_for_grid((gh, gw), c.sample_width // c.patch_size, c.sample_height // c.patch_size)
    return get_3d_rotary_pos_embed(c.attention_head_dim, crops, (gh, gw), frames)


def ref_forward(ref, x, t, text, rope):
    """diffusers takes [B, F, C, H, W]; we take [B, C, F, H, W]."""
    _, _, nf, h, w = x.shape
    rot = diffusers_rope(ref, nf, h, w) if rope else None
    out = ref(x.transpose(1, 2), text, t, image_rotary_emb=rot, return_dict=False)[0]
    return out.transpose(1, 2)


SHAPES = [
    # (heads, head_dim, layers, frames, height, width, text_len, rope, learned)
    pytest.param(2, 32, 2, 3, 8, 8, 7, False, False, id="tiny-sincos"),
    pytest.param(3, 16, 1, 4, 6, 10, 5, False, False, id="3heads-hd16-4frames-sincos"),
    pytest.param(4, 16, 2, 2, 10, 6, 6, True, False, id="4heads-hd16-rope"),
    pytest.param(2, 32, 1, 3, 12, 10, 6, True, True, id="rope-learned-5b-i2v-style"),
]


@pytest.mark.parametrize("heads,head_dim,layers,frames,height,width,text_len,rope,learned", SHAPES)
def test_matches_diffusers(tmp_path, heads, head_dim, layers, frames, height, width, text_len, rope, learned):
    ref = diffusers_cogvideox(heads=heads, head_dim=head_dim, layers=layers, frames=frames, text_len=text_len,
                              rope=rope, learned=learned)
    ref.save_pretrained(tmp_path / "transformer")
    ours = load_cogvideox(tmp_path / "transformer", dtype="float32", device="cpu")
    cfg = ours.config
    assert (cfg.num_heads, cfg.head_dim, cfg.num_layers) == (heads, head_dim, layers)
    assert cfg.use_rotary_positional_embeddings == rope and cfg.use_learned_positional_embeddings == learned

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, frames, height, width, generator=g)
    t = torch.rand(2, generator=g) * 1000
    text = torch.randn(2, text_len, TEXT_DIM, generator=g)
    with torch.no_grad():
        want = ref_forward(ref, x, t, text, rope)
        got = ours(x, t, text)
        # [B, F] timesteps with equal rows, all-true visibility, explicit default positions,
        # a prepared context: all the same prediction.
        got_bf = ours(x, t[:, None].expand(2, frames), text)
        got_vis = ours(x, t, text, visibility=torch.ones(frames, frames, dtype=torch.bool))
        got_pos = ours(x, t, ours.prepare_context(text), frame_positions=torch.arange(frames))
    assert got.shape == want.shape == x.shape
    assert rel_err(got, want) <= 1e-5, rel_err(got, want)
    assert rel_err(got_bf, got) <= 1e-6
    assert rel_err(got_vis, got) <= 1e-6
    assert rel_err(got_pos, got) <= 1e-6


def test_sharded_folder_and_pipeline_root(tmp_path):
    ref = diffusers_cogvideox(layers=3, seed=3)
    ref.save_pretrained(tmp_path / "pipe" / "transformer", max_shard_size="30KB")
    files = sorted(p.name for p in (tmp_path / "pipe" / "transformer").iterdir())
    assert any(f.endswith(".safetensors.index.json") for f in files)
    assert sum(f.endswith(".safetensors") for f in files) > 1
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "CogVideoXPipeline"}')
    ours = load_cogvideox(tmp_path / "pipe", dtype="float32", device="cpu")
    assert ours.config.num_layers == 3
    g = torch.Generator().manual_seed(4)
    x, t, text = torch.randn(1, 16, 2, 4, 6, generator=g), torch.tensor([321.0]), torch.randn(1, 7, TEXT_DIM, generator=g)
    with torch.no_grad():
        assert rel_err(ours(x, t, text), ref_forward(ref, x, t, text, rope=False)) <= 1e-5


def test_presets_match_diffusers_architecture():
    """cogvideox-2b equals diffusers' default (2B) config, and its parameter names/shapes
    equal diffusers' after our renames (both built on the meta device: no memory)."""
    from diffusers import CogVideoXTransformer3DModel

    defaults = {k: p.default for k, p in inspect.signature(CogVideoXTransformer3DModel.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    cfg = CogVideoXConfig(name="cogvideox-2b", **config_from_diffusers_json(defaults))
    assert cfg == COGVIDEOX_PRESETS["cogvideox-2b"]
    assert cfg.dim == 1920 and not cfg.use_rotary_positional_embeddings
    with torch.device("meta"):
        ref = CogVideoXTransformer3DModel()
        ours = CogVideoXDiT(cfg)
    want = {k: tuple(v.shape) for k, v in diffusers_to_ours(ref.state_dict()).items()}
    assert want == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert 1.6e9 < sum(p.numel() for p in ours.parameters()) < 1.8e9  # "2B" is 1.69B parameters
    five = COGVIDEOX_PRESETS["cogvideox-5b"]
    assert five.use_rotary_positional_embeddings and five.dim == 3072


def test_positional_tables_index_absolute_frames():
    """Our sin-cos embedding / RoPE tables at frame positions [2, 5] are rows 2 and 5 of
    diffusers' tables for 6 frames (diffusers repeats each RoPE angle twice)."""
    from diffusers.models.embeddings import get_3d_sincos_pos_embed

    from engine.models.cogvideox import rope_cos_sin, sincos_3d

    pos = torch.tensor([2, 5])
    want = get_3d_sincos_pos_embed(64, (5, 3), 6, 1.875, 1.0).float()  # spatial (cols, rows)
    got = sincos_3d(64, pos, 3, 5, 1.875, 1.0)
    assert rel_err(got, want[pos]) <= 1e-6

    cfg = COGVIDEOX_PRESETS["tiny-cogvideox-rope"]
    ref = diffusers_cogvideox(rope=True, sample_hw=(cfg.sample_height, cfg.sample_width), frames=4)
    cos_w, sin_w = (a.view(6, 3 * 5, -1)[pos].flatten(0, 1)[:, ::2] for a in diffusers_rope(ref, 6, 6, 10))
    cos, sin = rope_cos_sin(cfg, pos, 3, 5)
    assert rel_err(cos, cos_w) <= 1e-6 and rel_err(sin, sin_w) <= 1e-6


# ----------------------------------------------------------------------------------
# frame-level extensions on a small preset model
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_layer():
    """One-layer models (sin-cos and rotary): with one layer the text tokens a frame sees
    have not yet mixed with other frames, so a frame mask makes frames exactly independent."""
    out = {}
    for name in ("tiny-cogvideox", "tiny-cogvideox-rope"):
        cfg = COGVIDEOX_PRESETS[name].replace(num_layers=1)
        # livelier weights than the preset's std 0.02, so that gates and modulation matter
        out[name] = randomize_(load_cogvideox(name, dtype="float32", device="cpu", config=cfg), seed=7, std=0.2)
    return out


def _inputs(seed=5, frames=3, b=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 16, frames, 4, 6, generator=g), torch.rand(b, generator=g) * 1000,
            torch.randn(b, 5, 32, generator=g))


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-cogvideox-rope"])
def test_frame_causal_visibility_is_wired(one_layer, name):
    model = one_layer[name]
    x, t, text = _inputs()
    causal = torch.tril(torch.ones(3, 3, dtype=torch.bool))
    x2 = x.clone()
    x2[:, :, 2] += torch.randn_like(x2[:, :, 2])
    with torch.no_grad():
        full, masked = model(x, t, text), model(x, t, text, visibility=causal)
        full2, masked2 = model(x2, t, text), model(x2, t, text, visibility=causal)
    assert rel_err(masked, full) > 1e-3  # the mask changes the output
    # frames 0, 1 do not see frame 2 under the causal mask (one layer), but do without it
    assert rel_err(masked2[:, :, :2], masked[:, :, :2]) <= 1e-6
    assert rel_err(full2[:, :, :2], full[:, :, :2]) > 1e-3
    assert rel_err(masked2[:, :, 2], masked[:, :, 2]) > 1e-3


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-cogvideox-rope"])
def test_frame_positions_move_the_temporal_embedding(one_layer, name):
    model = one_layer[name]
    x, t, text = _inputs()
    with torch.no_grad():
        base = model(x, t, text)
        moved = model(x, t, text, frame_positions=torch.tensor([5, 6, 7]))
    assert rel_err(moved, base) > 1e-4


def test_per_frame_timesteps(one_layer):
    model = one_layer["tiny-cogvideox"]
    x, _, text = _inputs(b=2)
    tf = torch.tensor([[900.0, 500.0, 100.0], [10.0, 10.0, 800.0]])
    with torch.no_grad():
        per_frame = model(x, tf, text)
        # each frame's video tokens use their own timestep: differs from any single [B] value
        for col in range(3):
            assert rel_err(per_frame, model(x, tf[:, col], text)) > 1e-4
        # text tokens take the max over frames by default; other modes differ
        model.text_timestep = "first"
        first = model(x, tf, text)
        model.text_timestep = "max"
    assert rel_err(first, per_frame) > 1e-3
    with pytest.raises(ValueError, match="text_timestep"):
        CogVideoXDiT(COGVIDEOX_PRESETS["tiny-cogvideox"], text_timestep="median")


def test_bfloat16_runs_close_to_float32(one_layer):
    model = one_layer["tiny-cogvideox-rope"]
    x, t, text = _inputs()
    with torch.no_grad():
        want = model(x, t, text)
        got = model.to(torch.bfloat16)(x, t, text)
    model.to(torch.float32)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert rel_err(got, want) < 5e-2


# ----------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------
def test_wrong_shapes_raise_clear_errors(one_layer):
    model = one_layer["tiny-cogvideox"]
    x, t, text = _inputs(frames=3)
    cases = [
        ((x[:, :, 0], t, text), {}, "latents must be"),
        ((x[:, :8], t, text), {}, "latent channels"),
        ((x[..., :5], t, text), {}, "divisible by the patch size"),
        ((x, t, text[..., :7]), {}, "text_embeds must be"),
        ((x, t, torch.cat([text, text])), {}, "batch"),
        ((x, torch.rand(3) * 1000, text), {}, "timesteps"),
        ((x, torch.rand(1, 2) * 1000, text), {}, "timesteps"),
        ((x, t, text), {"visibility": torch.ones(2, 2, dtype=torch.bool)}, "visibility must be"),
        ((x, t, text), {"visibility": torch.ones(3, 3)}, "visibility must be"),
        ((x, t, text), {"frame_positions": torch.arange(4)}, "frame_positions"),
        ((x, t, text), {"image_embeds": torch.randn(1, 2, 8)}, "image_embeds"),
    ]
    for args, kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            model(*args, **kwargs)
    with pytest.raises(ValueError, match="KV cache"):
        model(x, t, text, kv_cache=object())
    assert isinstance(model.prepare_context(text), CogVideoXContext)


def test_checkpoint_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    ref = diffusers_cogvideox(layers=1, seed=9)
    folder = tmp_path / "ckpt"
    ref.save_pretrained(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state.pop("transformer_blocks.0.attn1.to_out.0.bias")
    state["transformer_blocks.0.ff.net.2.weight"] = state["transformer_blocks.0.ff.net.2.weight"][:, :10].contiguous()
    state["extra.weight"] = torch.randn(3)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError) as exc:
        load_cogvideox(folder, dtype="float32", device="cpu")
    msg = str(exc.value)
    assert "missing keys" in msg and "transformer_blocks.0.attn1.to_out.bias" in msg
    assert "mis-shaped keys" in msg and "transformer_blocks.0.ff.2.weight" in msg
    assert "unexpected keys" in msg and "extra.weight" in msg

    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "patch_size_t": 2}))
    with pytest.raises(CheckpointError, match="1.5"):
        load_cogvideox(folder, dtype="float32", device="cpu")
    (folder / "config.json").write_text(json.dumps({**cfg, "_class_name": "WanTransformer3DModel"}))
    with pytest.raises(CheckpointError, match="not a CogVideoXTransformer3DModel"):
        load_cogvideox(folder, dtype="float32", device="cpu")

    # no config.json and a width no preset has: sin-cos vs rotary cannot be told
    other = tmp_path / "no-config"
    diffusers_cogvideox(heads=2, head_dim=16, layers=1, seed=10).save_pretrained(other)
    (other / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_cogvideox(other, dtype="float32", device="cpu")
    with pytest.raises(FileNotFoundError, match="neither a CogVideoX preset"):
        load_cogvideox(tmp_path / "nope")


def test_presets_load_and_run():
    model = load_cogvideox("tiny-cogvideox", device="cpu")
    assert model.source is None and not model.training and model.config.dim == 64
    x, t, text = _inputs()
    with torch.no_grad():
        out = model(x, t, text)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() > 0
