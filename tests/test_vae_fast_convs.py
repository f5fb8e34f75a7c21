"""The CPU decode fast path (issue 30 item 2): the Wan VAE's causal 3-D convolutions run as
2-D ones inside StreamingDecoder, within float32 rounding of diffusers' own path, switched
per thread (other threads and encodes keep diffusers' numbers), surviving a deepcopy."""

import copy
import threading

import torch

from engine.models.vae import (StreamingDecoder, conv3d_as_conv2d, encode_frames, fast_convs, install_fast_convs,
                               make_tiny_vae)


def _latents(seed, frames=4):
    return torch.randn(1, 16, frames, 4, 6, generator=torch.Generator().manual_seed(seed))


def test_conv2d_path_equals_the_3d_convolution():
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    torch.manual_seed(0)
    conv = WanCausalConv3d(5, 7, 3, padding=1).eval()
    x = torch.randn(2, 5, 4, 9, 11)
    cache = torch.randn(2, 5, 2, 9, 11)
    for c in (None, cache):
        want = WanCausalConv3d.forward(conv, x, c)
        got = conv3d_as_conv2d(conv, x, c)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    strided = WanCausalConv3d(5, 7, (3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0)).eval()
    torch.testing.assert_close(conv3d_as_conv2d(strided, x), WanCausalConv3d.forward(strided, x),
                               rtol=1e-5, atol=1e-5)


def test_streaming_decode_fast_path_matches_and_streams():
    vae = make_tiny_vae(seed=3)
    z = _latents(1, 5)
    slow = StreamingDecoder(vae, conv2d=False).decode_all(z)
    fast_dec = StreamingDecoder(vae)  # default on the CPU
    assert fast_dec.conv2d
    fast = fast_dec.decode_all(z)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
    fast_dec.reset()
    chunks = torch.cat([fast_dec.decode_chunk(z[:, :, :2]), fast_dec.decode_chunk(z[:, :, 2:])], 2)
    torch.testing.assert_close(chunks, fast, rtol=0, atol=1e-6)


def test_switch_is_per_thread_and_encodes_keep_diffusers_numbers():
    vae = make_tiny_vae(seed=4)
    video = torch.rand(1, 3, 5, 32, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    before = encode_frames(vae, video)
    install_fast_convs()
    install_fast_convs()  # idempotent: one switch
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    assert not any("forward" in vars(m) for m in vae.modules() if isinstance(m, WanCausalConv3d))
    torch.testing.assert_close(encode_frames(vae, video), before, rtol=0, atol=0)  # outside the block
    seen = {}

    def other():  # another thread is not inside this thread's block
        seen["z"] = encode_frames(vae, video)

    with fast_convs():
        t = threading.Thread(target=other)
        t.start()
        t.join()
        inside = encode_frames(vae, video)
    torch.testing.assert_close(seen["z"], before, rtol=0, atol=0)
    torch.testing.assert_close(inside, before, rtol=1e-4, atol=1e-5)


def test_deepcopy_rebinds_to_the_copy():
    """The executor copies a VAE per device: the copy decodes with its own weights."""
    vae = make_tiny_vae(seed=5)
    install_fast_convs()
    twin = copy.deepcopy(vae)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    z = _latents(6, 2)
    a = StreamingDecoder(vae).decode_all(z)
    b = StreamingDecoder(twin).decode_all(z)
    ref = StreamingDecoder(twin, conv2d=False).decode_all(z)
    torch.testing.assert_close(b, ref, rtol=0, atol=1e-5)
    assert (a - b).abs().max() > 1e-3


def test_wide_or_large_convolutions_keep_the_3d_path():
    """Inside the block only convolutions where the 2-D form pays switch (conv2d_pays)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    from engine.models.vae import conv2d_pays

    assert conv2d_pays(64, 64, 112) and not conv2d_pays(65, 8, 8) and not conv2d_pays(16, 128, 128)
    install_fast_convs()
    torch.manual_seed(1)
    for c, hw in ((96, (8, 8)), (16, (72, 112))):
        conv = WanCausalConv3d(c, 8, 3, padding=1).eval()
        x = torch.randn(1, c, 2, *hw)
        with torch.no_grad():
            want = torch.nn.Conv3d.forward(conv, torch.nn.functional.pad(x, list(conv._padding)))
            with fast_convs():
                got = conv(x)
        assert torch.equal(got, want)
