"""CLIP image conditioning loads from a local folder and matches the Wan pipeline's recipe."""

import numpy as np
import pytest
import torch

from engine.models.image import ImageEncoder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    root = tmp_path_factory.mktemp("pipe")
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           image_size=32, patch_size=8)
    CLIPVisionModel(cfg).save_pretrained(root / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "image_processor")
    return root


def test_encode_is_penultimate_hidden_state(clip_folder):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    enc = ImageEncoder.from_folder(clip_folder)
    img = (np.random.default_rng(1).random((40, 56, 3)) * 255).astype(np.uint8)
    tokens = enc.encode(img)
    assert tokens.shape == (1, 17, 48) and enc.dim == 48
    model = CLIPVisionModel.from_pretrained(clip_folder / "image_encoder")
    pixels = CLIPImageProcessor.from_pretrained(clip_folder / "image_processor")(images=[img], return_tensors="pt")
    want = model(**pixels, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(tokens, want, atol=1e-6)
    assert not torch.allclose(tokens, model(**pixels).last_hidden_state, atol=1e-3)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="image_encoder"):
        ImageEncoder.from_folder(tmp_path)


def test_encode_pixels_preprocesses_as_wans_own_clip_wrapper(clip_folder):
    """encode_pixels (LongVie 2 / Wan's clip.py): the whole [-1, 1] image bicubic-resized to
    the encoder's square size (no crop), mapped to [0, 1], normalised with CLIP mean / std."""
    import torch.nn.functional as F
    from transformers import CLIPVisionModel

    enc = ImageEncoder.from_folder(clip_folder)
    img = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(3)) * 2 - 1
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    x = (F.interpolate(img, size=(32, 32), mode="bicubic", align_corners=False).mul(0.5).add(0.5) - mean) / std
    model = CLIPVisionModel.from_pretrained(clip_folder / "image_encoder")
    want = model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(enc.encode_pixels(img), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"pixels must be \[B, 3, H, W\]"):
        enc.encode_pixels(img[0])
