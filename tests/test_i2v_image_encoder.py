"""Wan2.1 I2V through ``generate(first_frame=...)`` encodes the first frame with the root's
CLIP image encoder, as diffusers' ``WanImageToVideoPipeline.encode_image`` does: no
user-made ``image_embeds`` needed."""

import json
import types

import numpy as np
import pytest
import torch

import engine
from engine.models.text import make_tiny_text_encoder
from engine.models.vae import make_tiny_vae
from helpers import diffusers_wan

RUN = dict(num_frames=5, height=32, width=32, progress=False, seed=0,
           sampler=engine.SamplerConfig(kind="euler", num_steps=2, timesteps=None, guidance_scale=3.0))


def _clip(path, seed=0, hidden=48):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=hidden, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           image_size=32, patch_size=8)
    CLIPVisionModel(cfg).save_pretrained(path / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path / "image_processor")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A Wan2.1-I2V-Diffusers-shaped root: transformer (36 in-channels, image_dim 48), vae,
    text encoder, image_encoder/ + image_processor/."""
    r = tmp_path_factory.mktemp("Wan-I2V-tiny-Diffusers")
    diffusers_wan(seed=3, in_ch=36, image_dim=48).save_pretrained(r / "transformer")
    make_tiny_vae(seed=4).save_pretrained(r / "vae")
    make_tiny_text_encoder(seed=5, dim=32).save_pretrained(r)
    _clip(r)
    (r / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    return r


@pytest.fixture(scope="module")
def image():
    """An image of another size than the video (the CLIP processor resizes + centre-crops it)."""
    return (np.random.default_rng(7).random((40, 56, 3)) * 255).astype(np.uint8)


def _pipeline_tokens(folder, image):
    """WanImageToVideoPipeline.encode_image run on a stand-in ``self`` holding the CLIP parts."""
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionModel

    fake = types.SimpleNamespace(image_processor=CLIPImageProcessor.from_pretrained(folder / "image_processor"),
                                 image_encoder=CLIPVisionModel.from_pretrained(folder / "image_encoder"))
    fake.image_encoder.eval()
    with torch.no_grad():
        return WanImageToVideoPipeline.encode_image(fake, image, torch.device("cpu"))


def test_first_frame_tokens_equal_the_pipelines(root, image):
    from engine.inputs import first_frame_image_embeds, resolve_image_encoder

    model = engine.load_model(root, device="cpu")
    enc = resolve_image_encoder(model, None)  # found in the root the model came from
    assert enc is not None and enc.dim == 48
    want = _pipeline_tokens(root, image)
    assert want.shape == (1, 17, 48)
    torch.testing.assert_close(first_frame_image_embeds(enc, image), want, rtol=1e-5, atol=1e-6)
    # a [-1, 1] tensor is taken to uint8 first, as the image it stands for
    as_tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(first_frame_image_embeds(enc, as_tensor), want, rtol=1e-5, atol=1e-6)


def test_generate_uses_the_roots_image_encoder(root, image):
    """generate from the root == generate with the pipeline's tokens given as image_embeds;
    other tokens give another video (the tokens are in the loop)."""
    video = engine.generate(str(root), prompt="a car", first_frame=image, **RUN)
    given = engine.generate(str(root), prompt="a car", first_frame=image, image_embeds=_pipeline_tokens(root, image),
                            **RUN)
    np.testing.assert_array_equal(video.frames, given.frames)
    other = engine.generate(str(root), prompt="a car", first_frame=image,
                            image_embeds=torch.randn(1, 17, 48, generator=torch.Generator().manual_seed(1)), **RUN)
    assert np.abs(video.frames.astype(int) - other.frames.astype(int)).max() > 0


def test_image_encoder_folder_and_errors(root, image, tmp_path):
    """A transformer folder alone (no root encoder) needs image_encoder=; a given folder is
    used; a wrong-width encoder, both inputs at once, or an encoder for a T2V model are
    errors that name the fix."""
    import shutil

    shutil.copytree(root / "transformer", tmp_path / "dit")  # a DiT folder outside any pipeline root
    model = engine.load_model(tmp_path / "dit", device="cpu")
    kw = dict(RUN, vae=str(root / "vae"), text_encoder=str(root))
    with pytest.raises(ValueError, match="image_encoder=<folder"):
        engine.generate(model, prompt="a car", first_frame=image, **kw)
    video = engine.generate(model, prompt="a car", first_frame=image, image_encoder=str(root), **kw)
    ref = engine.generate(str(root), prompt="a car", first_frame=image, **RUN)
    np.testing.assert_array_equal(video.frames, ref.frames)
    _clip(tmp_path / "wide", hidden=64)
    with pytest.raises(ValueError, match="64-wide tokens .* image_dim=48"):
        engine.generate(model, prompt="a car", first_frame=image, image_encoder=str(tmp_path / "wide"), **kw)
    with pytest.raises(ValueError, match="not both"):
        engine.generate(model, prompt="a car", first_frame=image, image_encoder=str(root),
                        image_embeds=torch.randn(1, 17, 48), **kw)
    with pytest.raises(ValueError, match=r"image_embeds must be \[1, N, 48\]"):
        engine.generate(model, prompt="a car", first_frame=image, image_embeds=torch.randn(1, 17, 40), **kw)
    with pytest.raises(ValueError, match="no model of this run"):
        engine.generate("tiny-random", num_frames=5, height=32, width=32, progress=False,
                        image_encoder=str(root))


def test_cli_image_encoder_flag(root, image, tmp_path, capsys):
    from PIL import Image

    from engine.cli import main
    from engine.video import read_video_frames

    import shutil

    shutil.copytree(root / "transformer", tmp_path / "dit")
    Image.fromarray(image).save(tmp_path / "first.png")
    out = tmp_path / "i2v.mp4"
    args = ["generate", "--model", str(tmp_path / "dit"), "--vae", str(root / "vae"), "--text-encoder", str(root),
            "--first-frame", str(tmp_path / "first.png"), "--prompt", "a car", "--num-frames", "5", "--height", "32",
            "--width", "32", "--sampler", "euler", "--steps", "2", "--out", str(out), "--no-progress"]
    assert main(args) == 2  # no encoder anywhere: bad input, named
    assert "--image-encoder" in capsys.readouterr().err
    assert main(args + ["--image-encoder", str(root)]) == 0
    assert read_video_frames(out).shape == (5, 32, 32, 3)
