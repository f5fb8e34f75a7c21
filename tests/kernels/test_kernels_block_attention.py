import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine_kernels import block_attention, block_attention_reference, build_block_mask, patterns
from engine_kernels.block_mask import dense_mask

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.float16: dict(atol=1e-2, rtol=1e-2),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}

PATTERNS = {
    "full": lambda f: patterns.full(f),
    "block_causal": lambda f: patterns.block_causal(f, 3),
    "sliding_sink": lambda f: patterns.sliding_window(f, 2, 4, sink=1),
    "mmpl": lambda f: patterns.mmpl_planning(f, [3, f - 1]),
    "interpolation": lambda f: patterns.interpolation(f),
}


def _run_and_compare(vis, tq, tk, dtype, device, *, b=1, h=2, d=32, q_frames=None, k_frames=None,
                     bm=None, bn=None, scale=None, perm=False):
    fq, fk = vis.shape
    qf = patterns.frame_ids(tq, fq) if q_frames is None else q_frames
    kf = patterns.frame_ids(tk, fk) if k_frames is None else k_frames
    if perm:
        qf = qf[torch.randperm(qf.numel())]
        kf = kf[torch.randperm(kf.numel())]
    sq, sk = qf.numel(), kf.numel()
    # q laid out [B, S, H, D] and viewed as [B, H, S, D]; k/v are slices of a bigger cache buffer
    q = torch.randn(b, sq, h, d, dtype=dtype, device=device).transpose(1, 2)
    cache = torch.randn(2, b, h, sk + 13, d, dtype=dtype, device=device)
    k, v = cache[0, :, :, 7:7 + sk], cache[1, :, :, 5:5 + sk]
    assert k.storage_offset() > 0 and v.untyped_storage().data_ptr() == cache.untyped_storage().data_ptr()
    out = torch.full((b, h, sq, d), float("nan"), dtype=dtype, device=device)
    o, lse = block_attention(q, k, v, q_frame_ids=qf.to(device), k_frame_ids=kf.to(device),
                             visibility=vis.to(device), scale=scale, return_lse=True,
                             block_m=bm, block_n=bn, out=out)
    assert o is out
    ro, rlse = block_attention_reference(q, k, v, q_frame_ids=qf, k_frame_ids=kf, visibility=vis,
                                         scale=scale, return_lse=True)
    assert not torch.isnan(o).any() and not torch.isnan(lse).any()
    torch.testing.assert_close(o.float(), ro.float(), **TOL[dtype])
    torch.testing.assert_close(lse, rlse, atol=1e-4 if dtype == torch.float32 else 1e-2, rtol=1e-4)
    return o


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_patterns_against_reference(name, dtype, device):
    vis = PATTERNS[name](6)
    _run_and_compare(vis, 24, 24, dtype, device, bm=16, bn=32)


@pytest.mark.parametrize("d", [64, 128])
def test_head_dims(d, device):
    _run_and_compare(patterns.block_causal(4, 2), 40, 40, torch.float32, device, d=d, bm=32, bn=16,
                     scale=0.3)


def test_kv_cache_chunk(device):
    """Queries of the newest chunk against cached context + chunk (Sq != Sk, frames offset)."""
    vis_all = patterns.sliding_window(9, 3, 6, sink=1)
    q_frames = torch.arange(6, 9, dtype=torch.int32).repeat_interleave(24)
    k_frames = patterns.frame_ids(24, 9)
    _run_and_compare(vis_all, 24, 24, torch.float32, device, q_frames=q_frames, k_frames=k_frames,
                     bm=32, bn=32)


def test_default_tiles_and_no_lse(device):
    vis = patterns.mmpl_planning(5, [2, 4])
    ids = patterns.frame_ids(20, 5)
    q, k, v = (torch.randn(2, 1, 100, 16, device=device) for _ in range(3))
    o = block_attention(q, k, v, q_frame_ids=ids, k_frame_ids=ids, visibility=vis)
    ro = block_attention_reference(q, k, v, q_frame_ids=ids, k_frame_ids=ids, visibility=vis)
    assert o.shape == (2, 1, 100, 16)
    torch.testing.assert_close(o, ro, **TOL[torch.float32])


def test_prebuilt_block_mask(device):
    vis = patterns.block_causal(4, 1)
    ids = patterns.frame_ids(24, 4)
    bm = build_block_mask(ids, ids, vis, 16, 16, device=device)
    q, k, v = (torch.randn(1, 2, 96, 32, device=device) for _ in range(3))
    o = block_attention(q, k, v, q_frame_ids=ids, k_frame_ids=ids, visibility=vis, block_mask=bm)
    ro = block_attention_reference(q, k, v, q_frame_ids=ids, k_frame_ids=ids, visibility=vis)
    torch.testing.assert_close(o, ro, **TOL[torch.float32])


@settings(max_examples=30, deadline=None)
@given(fq=st.integers(1, 4), fk=st.integers(1, 4), tq=st.integers(1, 30), tk=st.integers(1, 30),
       bm=st.sampled_from([16, 32]), bn=st.sampled_from([16, 32]), perm=st.booleans(),
       density=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float32, torch.float16]))
def test_random_patterns(fq, fk, tq, tk, bm, bn, perm, density, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    vis = torch.rand(fq, fk, generator=g) < density
    vis[torch.arange(fq), torch.randint(0, fk, (fq,), generator=g)] = True
    _run_and_compare(vis, tq, tk, dtype, "cpu" if not torch.cuda.is_available() else "cuda",
                     b=1, h=1, d=16, bm=bm, bn=bn, perm=perm)


@pytest.mark.parametrize("tiles", [(128, 128), (128, 64), (32, 32)])
def test_gpu_default_tile_sizes(tiles, device):
    """The tile sizes the GPU defaults use, on a pattern whose FULL tiles form several runs
    per query tile (sink + window) and whose frames straddle tiles (40 tokens per frame)."""
    vis = patterns.sliding_window(10, 2, 4, sink=2)
    bm = build_block_mask(patterns.frame_ids(40, 10), patterns.frame_ids(40, 10), vis, *tiles,
                          cache=False)
    if tiles != (128, 128):  # at 128x128 the 400-token sequence has too few tiles for gaps
        assert int(bm.full_run_counts.max()) >= 2
    _run_and_compare(vis, 40, 40, torch.float32, device, d=16, bm=tiles[0], bn=tiles[1])


@pytest.mark.parametrize("fk", [64, 70])
def test_many_key_frames(fk, device):
    """Fk = 64 uses the int64 row-bit mask up to its sign bit; Fk > 64 the int8 gather."""
    g = torch.Generator().manual_seed(fk)
    vis = torch.rand(5, fk, generator=g) < 0.5
    vis[:, fk - 1] = True  # the last key frame (bit 63 at Fk = 64) is seen by every row
    vis[:, 0] = False
    k_frames = torch.randperm(fk, generator=g).repeat_interleave(2)[: 2 * fk - 3]
    for dtype in (torch.float32, torch.float16):
        _run_and_compare(vis, 9, 2, dtype, device, d=16, k_frames=k_frames, bm=16, bn=32)


def test_kernel_visits_only_listed_tiles(device):
    """With the PARTIAL lists emptied, the kernel must attend over FULL tiles only."""
    vis = patterns.block_causal(4, 1)
    ids = patterns.frame_ids(24, 4)
    bm = build_block_mask(ids, ids, vis, 16, 16, device=device, cache=False)
    assert int(bm.partial_counts.sum()) > 0 and bool((bm.full_counts > 0).all())
    only_full = dataclasses.replace(bm, partial_counts=torch.zeros_like(bm.partial_counts))
    q, k, v = (torch.randn(1, 1, 96, 16, device=device) for _ in range(3))
    o = block_attention(q, k, v, q_frame_ids=ids, k_frame_ids=ids, visibility=vis, block_mask=only_full)
    tiles = (bm.to_dense_tiles() == 2).repeat_interleave(16, 0).repeat_interleave(16, 1)[:96, :96]
    allowed = dense_mask(ids, ids, vis) & tiles
    s = (q[0, 0] @ k[0, 0].T * 0.25).masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(o[0, 0], s.softmax(-1) @ v[0, 0], **TOL[torch.float32])
    full = block_attention(q, k, v, q_frame_ids=ids, k_frame_ids=ids, visibility=vis, block_mask=bm)
    assert (full - o).abs().max() > 1e-3


def test_large_logits_stay_finite(device):
    """Online softmax must survive logits far beyond exp overflow."""
    vis = patterns.block_causal(3, 1)
    ids = patterns.frame_ids(24, 3)
    q = torch.randn(1, 1, 72, 32, device=device) * 30
    k = torch.randn(1, 1, 72, 32, device=device) * 30
    v = torch.randn(1, 1, 72, 32, device=device)
    o = block_attention(q, k, v, q_frame_ids=ids, k_frame_ids=ids, visibility=vis, block_m=16, block_n=16)
    ro = block_attention_reference(q, k, v, q_frame_ids=ids, k_frame_ids=ids, visibility=vis)
    assert torch.isfinite(o).all()
    # logits here are ~|q.k|/sqrt(32) ~ 1e3: float32 rounds each to ~1e3 * 2^-23 ~ 1e-4, and two
    # near-equal top keys turn that into ~1e-4 x |v| output differences between any two exact
    # float32 softmax orders (seen: 2e-4 on 5 of 2304 values) -- the bound scales with the logits
    logit = float((q @ k.transpose(-1, -2)).abs().max()) / 32 ** 0.5
    tol = 1e-4 + logit * 2.0 ** -23 * float(v.abs().max())
    torch.testing.assert_close(o, ro, atol=tol, rtol=1e-4)


def test_blind_rows_raise_before_launch(device):
    vis = patterns.block_causal(3, 1)
    qf = patterns.frame_ids(8, 3)
    kf = torch.full((16,), 2, dtype=torch.int32)  # only frame 2 has keys: frames 0, 1 see nothing
    q = torch.randn(1, 1, 24, 16, device=device)
    k = torch.randn(1, 1, 16, 16, device=device)
    for fn in (block_attention, block_attention_reference):
        with pytest.raises(ValueError, match=r"query frames \[0, 1\]"):
            fn(q, k, k, q_frame_ids=qf, k_frame_ids=kf, visibility=vis)


def test_bad_inputs(device):
    ids = patterns.frame_ids(4, 2)
    vis = patterns.full(2)
    q = torch.randn(1, 1, 8, 24, device=device)
    with pytest.raises(ValueError, match="power of two"):
        block_attention(q, q, q, q_frame_ids=ids, k_frame_ids=ids, visibility=vis)
    q = torch.randn(1, 1, 8, 16, device=device)
    with pytest.raises(TypeError):
        block_attention(q, q.half(), q, q_frame_ids=ids, k_frame_ids=ids, visibility=vis)
    with pytest.raises(ValueError, match="q_frame_ids"):
        block_attention(q, q, q, q_frame_ids=ids[:5], k_frame_ids=ids, visibility=vis)
    with pytest.raises(TypeError, match="bool"):
        block_attention(q, q, q, q_frame_ids=ids, k_frame_ids=ids, visibility=vis.int())


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_bfloat16_wan_like_gpu(name):
    """bfloat16 at a Wan-like frame size (1560 tokens per frame, D=128) on the GPU."""
    vis = PATTERNS[name](6)
    _run_and_compare(vis, 1560, 1560, torch.bfloat16, "cuda", b=1, h=2, d=128)
    _run_and_compare(vis, 1560, 1560, torch.float16, "cuda", b=1, h=2, d=64)
