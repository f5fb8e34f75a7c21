"""Checkpoint formats: original Wan layout (checked against diffusers' own converter),
Self-Forcing / CausVid training files, sharding, and clear errors for bad files."""

import json

import pytest
import torch
from safetensors.torch import save_file

import engine
from engine.loading import build_model
from engine.models.weights import CheckpointError
from helpers import rel_err, wan_text


def _original_state(seed, **cfg_changes):
    cfg = engine.PRESETS["tiny-random"].replace(**cfg_changes)
    model = build_model(cfg, seed=seed)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _inputs(seed, in_ch=16, text_len=6, image_dim=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, in_ch, 3, 6, 4, generator=g)
    t = torch.rand(1, generator=g) * 1000
    text = torch.randn(1, 512 if image_dim else text_len, 32, generator=g)
    img = torch.randn(1, 4, image_dim, generator=g) if image_dim else None
    return x, t, text, img


@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
def test_original_layout_matches_diffusers_converter(tmp_path, i2v):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    changes = dict(in_channels=36, image_dim=24) if i2v else {}
    _, state = _original_state(seed=11, **changes)
    save_file(state, str(tmp_path / "wan.safetensors"))  # no config.json: architecture is inferred

    # no weight shows the head count: an exact preset match (t2v: tiny) or a config says it
    given = engine.PRESETS["tiny-random"].replace(text_len=512, **changes) if i2v else None
    ours = engine.load_model(tmp_path / "wan.safetensors", dtype="float32", device="cpu", config=given)
    cfg = ours.config
    ref = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_channels, out_channels=16, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, image_dim=cfg.image_dim,
        added_kv_proj_dim=cfg.dim if i2v else None,
    )
    converted = convert_wan_transformer_to_diffusers({k: v.clone() for k, v in state.items()})
    ref.load_state_dict(converted, strict=True)
    ref.eval()

    x, t, text, img = _inputs(12, in_ch=cfg.in_channels, image_dim=cfg.image_dim)
    with torch.no_grad():
        want = ref(x, t, wan_text(text, cfg.text_len), encoder_hidden_states_image=img, return_dict=False)[0]
        got = ours(x, t, text, image_embeds=img)
    assert rel_err(got, want) <= 1e-5


def test_original_folder_with_wan_config(tmp_path):
    from engine.models.weights import save_original_layout

    model, _ = _original_state(seed=3)
    save_original_layout(model, tmp_path / "wan")
    cfg = json.loads((tmp_path / "wan" / "config.json").read_text())
    assert cfg["num_heads"] == 2 and cfg["in_dim"] == 16
    loaded = engine.load_model(tmp_path / "wan", device="cpu", dtype="float32")
    x, t, text, _ = _inputs(4)
    with torch.no_grad():
        assert rel_err(loaded(x, t, text), model(x, t, text)) == 0.0


def test_sharded_original_layout_with_index(tmp_path):
    model, state = _original_state(seed=5)
    keys = sorted(state)
    shards = {"wan-00001-of-00002.safetensors": keys[: len(keys) // 2], "wan-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, str(tmp_path / name))
        weight_map.update({k: name for k in ks})
    (tmp_path / "wan.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    loaded = engine.load_model(tmp_path, device="cpu", dtype="float32")
    assert all(torch.equal(loaded.state_dict()[k], state[k]) for k in keys)


def test_self_forcing_checkpoint_prefers_ema(tmp_path):
    _, gen = _original_state(seed=1)
    _, ema = _original_state(seed=2)
    torch.save(
        {"generator": {f"model.{k}": v for k, v in gen.items()}, "generator_ema": {f"model.{k}": v for k, v in ema.items()},
         "step": 1000},
        tmp_path / "self_forcing.pt",
    )
    loaded = engine.load_model(tmp_path / "self_forcing.pt", device="cpu", dtype="float32")
    assert all(torch.equal(loaded.state_dict()[k], ema[k]) for k in ema)
    plain = engine.load_model(tmp_path / "self_forcing.pt", device="cpu", dtype="float32", prefer_ema=False)
    assert all(torch.equal(plain.state_dict()[k], gen[k]) for k in gen)


def test_causvid_checkpoint_generator_only(tmp_path):
    _, gen = _original_state(seed=7)
    torch.save({"generator": {f"model.{k}": v for k, v in gen.items()}}, tmp_path / "causvid.pt")
    loaded = engine.load_model(tmp_path / "causvid.pt", device="cpu", dtype="float32")
    assert all(torch.equal(loaded.state_dict()[k], gen[k]) for k in gen)


class NotATensor:
    pass


def test_pickled_checkpoint_is_refused(tmp_path):
    _, gen = _original_state(seed=1)
    torch.save({"generator": gen, "extra": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only") as info:
        engine.load_model(tmp_path / "evil.pt", device="cpu")
    msg = str(info.value)
    assert "\x1b[" not in msg and "NotATensor" in msg and len(msg.splitlines()) == 1  # one plain line


def test_corrupt_file(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(torch.randint(0, 255, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="corrupt"):
        engine.load_model(tmp_path / "bad.safetensors", device="cpu")


def test_missing_unexpected_and_misshaped_keys_listed_together(tmp_path):
    _, state = _original_state(seed=1)
    del state["blocks.1.ffn.2.bias"]
    state["blocks.0.extra.weight"] = torch.randn(3)
    save_file(state, str(tmp_path / "w.safetensors"))
    bad_cfg = engine.PRESETS["tiny-random"].replace(ffn_dim=96)
    with pytest.raises(CheckpointError) as info:
        engine.load_model(tmp_path / "w.safetensors", device="cpu", config=bad_cfg)
    msg = str(info.value)
    assert "blocks.1.ffn.2.bias" in msg and "blocks.0.extra.weight" in msg and "blocks.0.ffn.0.weight" in msg
    assert "missing" in msg and "unexpected" in msg and "mis-shaped" in msg


def test_unknown_path_and_preset():
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        engine.load_model("/nonexistent/wan", device="cpu")
    with pytest.raises(ValueError, match="unknown model preset"):
        engine.config.get_preset("wan9")


def test_not_a_wan_checkpoint(tmp_path):
    save_file({"encoder.weight": torch.randn(4, 4)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="Wan DiT"):
        engine.load_model(tmp_path / "other.safetensors", device="cpu")
