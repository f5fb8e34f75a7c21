"""LightX2V's light decoders for Wan2.1 (engine/decoders.py): LightTAE and LightVAE.

Parity: LightX2V's own modules ran on seeded random weights in their released layouts
(tests/release/lightx2v_golden.py); outputs in tests/fixtures/lightx2v/.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from engine.decoders import LightDecoder, LightVAEDecoder, load_decoder, resolve_decoder
from engine.models.vae import make_tiny_vae

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "lightx2v"


def _golden_module():
    spec = importlib.util.spec_from_file_location("lightx2v_golden", ROOT / "tests" / "release" / "lightx2v_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def golden():
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / "golden.safetensors")), json.loads((FIXTURES / "manifest.json").read_text())


@pytest.fixture(scope="module")
def files(golden, tmp_path_factory):
    from safetensors.torch import save_file

    mod = _golden_module()
    _, manifest = golden
    d = tmp_path_factory.mktemp("lightx2v")
    tae = mod.seeded_state_dict(manifest["lighttae_shapes"], mod.SEED)
    last = max((k for k in tae if k.startswith("decoder.") and k.endswith(".bias")), key=lambda k: int(k.split(".")[1]))
    tae[last] = tae[last] + 0.8
    save_file(tae, str(d / "lighttaew2_1.safetensors"))
    save_file(mod.seeded_state_dict(manifest["lightvae_shapes"], mod.SEED + 7), str(d / "lightvaew2_1.safetensors"))
    return d


def test_lighttae_matches_release(golden, files):
    ref, _ = golden
    dec = load_decoder(files / "lighttaew2_1.safetensors")
    assert isinstance(dec, LightDecoder) and dec.raw_latents and dec.kind == "lighttae"
    vae = make_tiny_vae()
    z = ref["latents"]
    one = dec(vae).decode_all(z)
    assert one.shape == ref["lighttae_decoded"].shape == (1, 3, 9, 32, 48)
    assert _rel(one, ref["lighttae_decoded"]) < 1e-5
    s = dec(vae)  # streamed one latent at a time: same video
    chunked = torch.cat([s.decode_chunk(z[:, :, i:i + 1]) for i in range(z.shape[2])], 2)
    assert _rel(chunked, ref["lighttae_decoded"]) < 1e-5
    # without a VAE the Wan2.1 statistics are used; raw latents pass through untouched
    from engine.models.taehv import TAEHVStreamingDecoder
    from engine.models.vae import denormalize_latents

    assert _rel(TAEHVStreamingDecoder(dec.model, raw_latents=True).decode_all(z), ref["lighttae_decoded"]) < 1e-5
    raw = TAEHVStreamingDecoder(dec.model, raw_latents=True).decode_all(denormalize_latents(z, vae), normalized=False)
    assert _rel(raw, ref["lighttae_decoded"]) < 1e-5
    # the same file read as madebyollin's taew2_1 (normalized latents) differs
    plain = load_decoder(files / "lighttaew2_1.safetensors", raw_latents=False)
    assert _rel(plain(vae).decode_all(z), ref["lighttae_decoded"]) > 1e-2


def test_lightvae_matches_release(golden, files):
    ref, _ = golden
    dec = load_decoder(files / "lightvaew2_1.safetensors")
    assert isinstance(dec, LightVAEDecoder) and dec.kind == "lightvae" and dec.latent_channels == 16
    assert dec.model.config.base_dim == 24
    vae = make_tiny_vae()
    z = ref["latents"]
    want = ref["lightvae_decoded"].clamp(-1, 1)
    one = dec(vae).decode_all(z)
    assert one.shape == want.shape == (1, 3, 9, 32, 48)
    assert _rel(one, want) < 1e-5
    s = dec(vae)
    chunked = torch.cat([s.decode_chunk(z[:, :, :2]), s.decode_chunk(z[:, :, 2:])], 2)
    assert _rel(chunked, want) < 1e-5


def test_names_and_refusals(files, monkeypatch, tmp_path):
    monkeypatch.setenv("ENGINE_LIGHTTAE", str(files / "lighttaew2_1.safetensors"))
    monkeypatch.setenv("ENGINE_LIGHTVAE", str(files / "lightvaew2_1.safetensors"))
    assert resolve_decoder("lighttae").kind == "lighttae"
    assert resolve_decoder("lighttaew2_1").raw_latents
    assert isinstance(resolve_decoder("lightvae"), LightVAEDecoder)
    assert isinstance(resolve_decoder(str(files / "lightvaew2_1.safetensors")), LightVAEDecoder)
    monkeypatch.delenv("ENGINE_LIGHTVAE")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="lightvaew2_1"):
        resolve_decoder("lightvae")
    with pytest.raises(ValueError, match="lighttae"):
        resolve_decoder("no-such-decoder")
