"""Chunked generation through the fixed-slot KV cache equals one full forward pass with
the matching frame visibility (block-causal; sliding window with sink frames)."""

import pytest
import torch

from engine.kvcache import KVCache
from engine.loading import build_model
import engine
from helpers import rel_err


def block_causal_window(num_frames, chunk, window=None, sink=0):
    """Independent statement of the rollout's visibility: a frame in the chunk starting at
    s sees its own chunk, every earlier frame within `window` frames of s, and frames < sink."""
    vis = torch.zeros(num_frames, num_frames, dtype=torch.bool)
    for q in range(num_frames):
        s = (q // chunk) * chunk
        e = min(s + chunk, num_frames)
        for k in range(e):
            vis[q, k] = k >= s or k < sink or window is None or k >= s - window
    return vis


def chunked_forward(model, x, t, text, chunk, window=None, sink=0):
    B, _, nf, h, w = x.shape
    cfg = model.config
    cache = KVCache(num_layers=cfg.num_layers, batch=B, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                    tokens_per_frame=model.tokens_per_frame(h, w), chunk_frames=chunk, sink_frames=sink,
                    window_frames=window, max_frames=nf)
    ctx = model.prepare_context(text)
    outs = []
    for s in range(0, nf, chunk):
        pos = list(range(s, min(s + chunk, nf)))
        slots = cache.claim(pos)
        outs.append(model(x[:, :, pos], t[:, pos], ctx, frame_positions=pos, kv_cache=cache, cache_slots=slots))
    return torch.cat(outs, dim=2), cache


@pytest.fixture(scope="module")
def model():
    return build_model(engine.PRESETS["tiny-random"].replace(num_layers=3), seed=21).eval()


def _inputs(nf, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 16, nf, 4, 6, generator=g), torch.rand(2, nf, generator=g) * 1000,
            torch.randn(2, 5, 32, generator=g))


@torch.no_grad()
@pytest.mark.parametrize("nf,chunk", [(6, 2), (7, 3), (4, 1)])
def test_chunked_equals_block_causal_full_pass(model, nf, chunk):
    x, t, text = _inputs(nf, seed=nf * 10 + chunk)
    got, _ = chunked_forward(model, x, t, text, chunk)
    want = model(x, t, text, visibility=block_causal_window(nf, chunk))
    assert rel_err(got, want) <= 1e-5
    # and the pattern matters: full visibility gives a different answer
    assert rel_err(model(x, t, text), want) > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("nf,chunk,window,sink", [(10, 2, 4, 2), (9, 3, 3, 3), (8, 2, 2, 1), (7, 1, 2, 0)])
def test_sliding_window_with_sink_equals_pattern(model, nf, chunk, window, sink):
    x, t, text = _inputs(nf, seed=nf + window)
    got, cache = chunked_forward(model, x, t, text, chunk, window=window, sink=sink)
    want = model(x, t, text, visibility=block_causal_window(nf, chunk, window, sink))
    assert rel_err(got, want) <= 1e-5
    assert cache.num_slots == sink + window + chunk  # bounded, however long the video


def test_cache_buffers_never_move():
    cache = KVCache(num_layers=2, batch=1, num_heads=2, head_dim=4, tokens_per_frame=3, chunk_frames=2,
                    sink_frames=1, window_frames=2)
    ptrs = (cache.k.data_ptr(), cache.v.data_ptr())
    for s in range(0, 40, 2):
        slots = cache.claim([s, s + 1])
        k = torch.randn(1, 2, 6, 4)
        cache.write(0, slots, k, k)
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == ptrs
    held = sorted(p for p in cache.slot_positions() if p >= 0)
    assert held == [0, 36, 37, 38, 39]


def test_claim_rejects_bad_chunks():
    cache = KVCache(num_layers=1, batch=1, num_heads=1, head_dim=2, tokens_per_frame=1, chunk_frames=2,
                    window_frames=None, max_frames=4)
    with pytest.raises(ValueError, match="consecutive"):
        cache.claim([0, 2])
    with pytest.raises(ValueError, match="1..2 frames"):
        cache.claim([0, 1, 2])
    with pytest.raises(ValueError, match="capacity"):
        cache.claim([4, 5])


@torch.no_grad()
@pytest.mark.parametrize("backend", ["reference", "flex"])
def test_other_backends_in_cached_rollout(backend):
    m = build_model(engine.PRESETS["tiny-random"].replace(num_layers=2), seed=8, attention_backend=backend).eval()
    x, t, text = _inputs(8, seed=99)
    got, _ = chunked_forward(m, x, t, text, chunk=2, window=2, sink=2)
    m.attention_backend = "sdpa"
    want = m(x, t, text, visibility=block_causal_window(8, 2, 2, 2))
    assert rel_err(got, want) <= 1e-5


def test_attention_reads_only_the_slots_in_use():
    cache = KVCache(num_layers=1, batch=1, num_heads=1, head_dim=4, tokens_per_frame=3, chunk_frames=2,
                    window_frames=None, max_frames=6)
    k = torch.randn(1, 1, 6, 4)
    used = []
    for s in (0, 2, 4):
        slots = cache.claim([s, s + 1])
        kk, vv = cache.write(0, slots, k, k)
        used.append((slots.key_slots, kk.shape[2], slots.attend.visibility.shape))
        assert kk.data_ptr() == cache.k[0].data_ptr()  # a view of the fixed buffer
    assert used == [(2, 6, (2, 2)), (4, 12, (2, 4)), (6, 18, (2, 6))]
