"""Bad inputs to the DiT and the configs give errors that name the problem."""

import pytest
import torch

import engine
from engine.attention import BackendUnavailable, resolve_backend
from engine.config import ModelConfig, SamplerConfig


@pytest.fixture(scope="module")
def tiny():
    return engine.load_model("tiny-random", device="cpu")


def _x(c=16, f=2, h=4, w=4):
    return torch.randn(1, c, f, h, w)


def test_wrong_latent_shapes(tiny):
    text = torch.randn(1, 5, 32)
    with pytest.raises(ValueError, match=r"\[B, C, F, H, W\]"):
        tiny(torch.randn(16, 2, 4, 4), torch.tensor([1.0]), text)
    with pytest.raises(ValueError, match="16 latent channels"):
        tiny(_x(c=12), torch.tensor([1.0]), text)
    with pytest.raises(ValueError, match="divisible by the patch size"):
        tiny(_x(h=5), torch.tensor([1.0]), text)
    with pytest.raises(ValueError, match="timesteps"):
        tiny(_x(), torch.tensor([1.0, 2.0, 3.0]), text)
    with pytest.raises(ValueError, match="text_embeds must be"):
        tiny(_x(), torch.tensor([1.0]), torch.randn(1, 5, 31))
    with pytest.raises(ValueError, match="frame_positions"):
        tiny(_x(), torch.tensor([1.0]), text, frame_positions=[0, 1, 2])
    with pytest.raises(ValueError, match="visibility must be bool"):
        tiny(_x(), torch.tensor([1.0]), text, visibility=torch.ones(3, 3, dtype=torch.bool))


def test_i2v_needs_condition_and_image():
    m = engine.load_model("tiny-i2v", device="cpu")
    text = torch.randn(1, 5, 32)
    with pytest.raises(ValueError, match="image_embeds"):
        m(_x(c=36), torch.tensor([1.0]), text)
    with pytest.raises(ValueError, match="condition="):
        m(_x(), torch.tensor([1.0]), text, image_embeds=torch.randn(1, 3, 48))
    out = m(_x(), torch.tensor([1.0]), text, image_embeds=torch.randn(1, 3, 48), condition=_x(c=20))
    assert out.shape == (1, 16, 2, 4, 4)


def test_config_validation():
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig(dim=100, num_heads=3)
    with pytest.raises(ValueError, match="input channels"):
        ModelConfig(image_dim=1280, in_channels=16)
    with pytest.raises(ValueError, match="kind"):
        SamplerConfig(kind="ddim")
    with pytest.raises(ValueError, match="unknown fields"):
        ModelConfig.from_dict({"dim": 64, "heads": 2})
    assert ModelConfig.from_dict(engine.PRESETS["tiny-random"].to_dict()) == engine.PRESETS["tiny-random"]


def test_backend_selection():
    assert resolve_backend("auto", "cpu") == "sdpa"
    with pytest.raises(BackendUnavailable, match="CUDA"):
        resolve_backend("triton", "cpu")
    with pytest.raises(BackendUnavailable, match="flash-attn needs a CUDA device"):
        resolve_backend("flash-attn", "cpu")
    assert resolve_backend("flex", "cpu") == "flex"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("magic", "cpu")


def test_reference_and_sdpa_backends_agree(tiny):
    from engine.attention import FrameVisibility, attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 8, generator=g) for _ in range(3))
    vis = FrameVisibility.uniform(torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool), 4)
    a = attention(q, k, v, vis, backend="reference")
    for backend in ("sdpa", "flex"):
        assert torch.allclose(attention(q, k, v, vis, backend=backend), a, atol=1e-6), backend
    # frame 0 sees only itself: its output is attention over keys 0..3 alone
    solo = attention(q[:, :, :4], k[:, :, :4], v[:, :, :4], None, backend="reference")
    assert torch.allclose(a[:, :, :4], solo, atol=1e-6)
