import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine_kernels import build_block_mask, clear_block_mask_cache, patterns
from engine_kernels.block_mask import _CACHE, dense_mask


def _random_pattern(fq, fk, gen_seed):
    g = torch.Generator().manual_seed(gen_seed)
    vis = torch.rand(fq, fk, generator=g) < 0.4
    vis[torch.arange(fq), torch.randint(0, fk, (fq,), generator=g)] = True  # every row sees >= 1
    return vis


@settings(max_examples=100, deadline=None)
@given(fq=st.integers(1, 6), fk=st.integers(1, 6), tq=st.integers(1, 40), tk=st.integers(1, 40),
       bm=st.sampled_from([16, 32]), bn=st.sampled_from([16, 32]), shuffle=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_tiles_match_dense_mask(fq, fk, tq, tk, bm, bn, shuffle, seed):
    vis = _random_pattern(fq, fk, seed)
    qf = patterns.frame_ids(tq, fq)
    kf = patterns.frame_ids(tk, fk)
    if shuffle:
        g = torch.Generator().manual_seed(seed + 1)
        kf = kf[torch.randperm(kf.numel(), generator=g)]
        qf = qf[torch.randperm(qf.numel(), generator=g)]
    bmask = build_block_mask(qf, kf, vis, bm, bn, cache=False)
    dense = dense_mask(qf, kf, vis)
    sq, sk = dense.shape
    assert bmask.visible_pairs == int(dense.sum())
    tiles = bmask.to_dense_tiles()
    for m in range(tiles.shape[0]):
        full_list = bmask.full_index[m, : bmask.full_counts[m]].tolist()
        part_list = bmask.partial_index[m, : bmask.partial_counts[m]].tolist()
        assert full_list == sorted(full_list) and part_list == sorted(part_list)
        runs = bmask.full_runs[m, : bmask.full_run_counts[m]].tolist()
        assert [n for first, end in runs for n in range(first, end)] == full_list
        assert all(e0 < f1 for (_, e0), (f1, _) in zip(runs, runs[1:]))  # maximal runs
        for n in range(tiles.shape[1]):
            sub = dense[m * bm:(m + 1) * bm, n * bn:(n + 1) * bn]
            ragged = (n + 1) * bn > sk
            if not sub.any():
                want = 0
            elif sub.all() and not ragged:
                want = 2
            else:
                want = 1
            assert tiles[m, n] == want, (m, n)
            assert (n in full_list) == (want == 2)
            assert (n in part_list) == (want == 1)


def test_blind_query_frame_raises_naming_frames():
    vis = patterns.block_causal(4, 1)
    vis[2] = False
    vis[3] = torch.tensor([False, False, True, False])  # sees only frame 2 ...
    qf = patterns.frame_ids(5, 4)
    kf = patterns.frame_ids(5, 2)  # ... which has no key tokens
    with pytest.raises(ValueError, match=r"query frames \[2, 3\]"):
        build_block_mask(qf, kf, vis, 16, 16, cache=False)


def test_out_of_range_frame_ids():
    with pytest.raises(ValueError, match="k_frame_ids"):
        build_block_mask(torch.zeros(4, dtype=torch.int32), torch.full((4,), 3), torch.ones(2, 2, dtype=torch.bool), 16, 16)
    with pytest.raises(TypeError):
        build_block_mask(torch.zeros(4), torch.zeros(4, dtype=torch.int32), torch.ones(2, 2, dtype=torch.bool), 16, 16)


def test_cache_identity_content_and_mutation():
    clear_block_mask_cache()
    vis = patterns.block_causal(4, 2)
    ids = patterns.frame_ids(20, 4)
    a = build_block_mask(ids, ids, vis, 16, 16)
    builds = _CACHE.builds
    assert build_block_mask(ids, ids, vis, 16, 16) is a  # identity hit
    assert build_block_mask(ids.clone(), ids.clone(), vis.clone(), 16, 16) is a  # content hit
    assert _CACHE.builds == builds
    assert build_block_mask(ids, ids, vis, 32, 16) is not a  # other tiles
    vis.fill_(True)  # in-place change bumps the version: must not reuse the stale mask
    c = build_block_mask(ids, ids, vis, 16, 16)
    assert c is not a and c.to_dense_tiles().max() == 2 and (c.to_dense_tiles() > 0).all()


@pytest.mark.parametrize("fk", [1, 5, 63, 64, 65])
def test_visibility_row_bits(fk):
    """Bit j of row word i equals visibility[i, j] for Fk <= 64 (bit 63 is the sign bit)."""
    vis = _random_pattern(7, fk, fk)
    bmask = build_block_mask(patterns.frame_ids(2, 7), patterns.frame_ids(1, fk), vis, 16, 16,
                             cache=False)
    if fk > 64:
        assert bmask.visibility_bits is None
        return
    words = bmask.visibility_bits.tolist()
    got = torch.tensor([[(w >> j) & 1 for j in range(fk)] for w in words], dtype=torch.bool)
    assert torch.equal(got, vis)
