"""Wan VAE wrapper: tiny model, streaming decode == full decode, normalisation, encode, I2V condition."""

import types

import pytest
import torch

from engine.models.vae import (
    StreamingDecoder,
    TINY_VAE_CONFIG,
    denormalize_latents,
    encode_frames,
    i2v_condition,
    load_vae,
    make_tiny_vae,
    normalize_latents,
    num_latent_frames,
    num_video_frames,
)


@pytest.fixture(scope="module")
def vae():
    return make_tiny_vae(seed=0)


@pytest.fixture(scope="module")
def latents():
    # normalized latents [B=2, 16, F=5, h=4, w=6] -> video [2, 3, 17, 32, 48]
    return torch.randn(2, 16, 5, 4, 6, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def full_decode(vae, latents):
    with torch.no_grad():
        return vae.decode(denormalize_latents(latents, vae)).sample


def test_tiny_config_keeps_real_stats(vae):
    assert len(TINY_VAE_CONFIG["latents_mean"]) == 16 and len(TINY_VAE_CONFIG["latents_std"]) == 16
    assert vae.config.z_dim == 16
    assert list(vae.config.latents_mean) == TINY_VAE_CONFIG["latents_mean"]


def test_tiny_vae_deterministic_and_not_constant(vae, full_decode):
    other = make_tiny_vae(seed=0)
    for (n, a), (_, b) in zip(vae.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n
    different = make_tiny_vae(seed=1)
    assert not torch.equal(vae.decoder.conv_in.weight, different.decoder.conv_in.weight)
    assert all(p.abs().max() > 0 for p in vae.parameters())
    assert full_decode.shape == (2, 3, 17, 32, 48)
    assert full_decode.std() > 0.05
    assert full_decode.std(dim=2).mean() > 0.01  # varies over time too
    assert (full_decode.abs() < 1).float().mean() > 0.5  # mostly not clamped


def test_frame_count_helpers():
    assert num_latent_frames(81) == 21 and num_video_frames(21) == 81
    assert num_latent_frames(1) == 1 and num_video_frames(1) == 1
    with pytest.raises(ValueError, match="4\\*k \\+ 1"):
        num_latent_frames(80)


def test_post_quant_conv_is_pointwise_in_time(vae, latents):
    z = denormalize_latents(latents, vae)
    with torch.no_grad():
        whole = vae.post_quant_conv(z)
        parts = torch.cat([vae.post_quant_conv(z[:, :, :2]), vae.post_quant_conv(z[:, :, 2:])], dim=2)
    assert vae.post_quant_conv.kernel_size == (1, 1, 1)
    torch.testing.assert_close(parts, whole, atol=0, rtol=0)


@pytest.mark.parametrize("split", [[1, 2, 2], [3, 2], [1, 1, 1, 1, 1], [5], [2, 3]])
def test_streaming_equals_full_decode(vae, latents, full_decode, split):
    dec = StreamingDecoder(vae)
    outs, start = [], 0
    for n in split:
        outs.append(dec.decode_chunk(latents[:, :, start : start + n]))
        start += n
    expected_t = [4 * split[0] - 3] + [4 * n for n in split[1:]]
    assert [o.shape[2] for o in outs] == expected_t
    video = torch.cat(outs, dim=2)
    assert video.shape == full_decode.shape
    torch.testing.assert_close(video, full_decode, atol=1e-5, rtol=1e-5)
    assert video.min() >= -1 and video.max() <= 1


def test_streaming_reset_starts_new_video(vae, latents, full_decode):
    dec = StreamingDecoder(vae)
    dec.decode_chunk(latents[:, :, :3])
    dec.reset()
    again = torch.cat([dec.decode_chunk(latents[:, :, :2]), dec.decode_chunk(latents[:, :, 2:])], dim=2)
    torch.testing.assert_close(again, full_decode, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dec.decode_all(latents), full_decode, atol=1e-5, rtol=1e-5)
    # un-normalized input path
    raw = denormalize_latents(latents, vae)
    torch.testing.assert_close(dec.decode_all(raw, normalized=False), full_decode, atol=1e-5, rtol=1e-5)


def test_normalize_roundtrip(vae, latents):
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    raw = denormalize_latents(latents, vae)
    torch.testing.assert_close(raw, latents * std + mean)
    torch.testing.assert_close(normalize_latents(raw, vae), latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normalize_latents(raw, vae.config), (raw - mean) / std)


def test_bad_shapes(vae):
    dec = StreamingDecoder(vae)
    with pytest.raises(ValueError, match="16 channels"):
        dec.decode_chunk(torch.zeros(1, 4, 1, 2, 2))
    with pytest.raises(ValueError, match="5-D"):
        dec.decode_chunk(torch.zeros(16, 1, 2, 2))
    with pytest.raises(ValueError, match="16 channels"):
        normalize_latents(torch.zeros(1, 3, 1, 2, 2), vae)
    with pytest.raises(ValueError, match="3 channels"):
        encode_frames(vae, torch.zeros(1, 4, 1, 16, 16))
    with pytest.raises(ValueError, match="4\\*k \\+ 1"):
        encode_frames(vae, torch.zeros(1, 3, 3, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        encode_frames(vae, torch.zeros(1, 3, 1, 12, 16))
    with pytest.raises(ValueError, match="4-D"):
        i2v_condition(vae, torch.zeros(1, 3, 1, 16, 16), 5, 16, 16)
    with pytest.raises(ValueError, match="resize"):
        i2v_condition(vae, torch.zeros(1, 3, 16, 24), 5, 16, 16)
    with pytest.raises(ValueError, match="4\\*k \\+ 1"):
        i2v_condition(vae, torch.zeros(1, 3, 16, 16), 6, 16, 16)


def test_encode_frames_is_posterior_mean(vae):
    video = torch.rand(1, 3, 5, 16, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1
    z = encode_frames(vae, video)
    assert z.shape == (1, 16, 2, 2, 3)
    with torch.no_grad():
        ref = normalize_latents(vae.encode(video).latent_dist.mode(), vae)
    torch.testing.assert_close(z, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(encode_frames(vae, video), z, atol=0, rtol=0)  # deterministic


def test_i2v_condition_matches_diffusers_pipeline(vae):
    """Our condition == WanImageToVideoPipeline.prepare_latents (the method run on a stand-in
    ``self`` holding the tiny VAE). The pipeline encodes one image and repeats it over the batch."""
    from diffusers import WanImageToVideoPipeline

    height, width, num_frames, batch = 32, 48, 9, 2
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(4)) * 2 - 1
    fake = types.SimpleNamespace(
        vae=vae,
        config=types.SimpleNamespace(expand_timesteps=False),
        vae_scale_factor_temporal=4,
        vae_scale_factor_spatial=8,
    )
    _, ref = WanImageToVideoPipeline.prepare_latents(
        fake, image, batch, 16, height, width, num_frames, torch.float32, torch.device("cpu"), None
    )
    ours = i2v_condition(vae, image.expand(batch, -1, -1, -1), num_frames, height, width)
    assert ours.shape == ref.shape == (batch, 20, 3, 4, 6)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # structure: mask channels first (frame 0 all ones, the rest zero), then the latent
    assert torch.all(ours[:, :4, 0] == 1) and torch.all(ours[:, :4, 1:] == 0)
    first = encode_frames(vae, image.unsqueeze(2))
    torch.testing.assert_close(ours[:1, 4:, :1], first, atol=1e-5, rtol=1e-5)  # causal: frame 0 = image alone


def test_load_vae_folder_and_pipeline_root(vae, tmp_path, latents):
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    direct = load_vae(tmp_path / "pipe" / "vae")
    root = load_vae(tmp_path / "pipe")
    for m in (direct, root):
        for (n, a), (_, b) in zip(vae.state_dict().items(), m.state_dict().items()):
            assert torch.equal(a, b), n
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vae(tmp_path / "missing")


def test_conv_autotune_only_on_cuda_and_restores_the_setting():
    from engine.models.vae import conv_autotune

    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with conv_autotune(torch.device("cpu")):
            assert torch.backends.cudnn.benchmark is False  # CPU: untouched
        with conv_autotune(torch.device("cuda", 0)):
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
        with pytest.raises(RuntimeError), conv_autotune("cuda"):
            raise RuntimeError("decode failed")
        assert torch.backends.cudnn.benchmark is False  # restored on errors too
    finally:
        torch.backends.cudnn.benchmark = before
