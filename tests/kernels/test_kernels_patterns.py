import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine_kernels import patterns as P


def _m(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_full():
    assert P.full(3).all() and P.full(3).shape == (3, 3)


def test_block_causal_exact():
    want = _m([[1, 1, 0, 0, 0],
               [1, 1, 0, 0, 0],
               [1, 1, 1, 1, 0],
               [1, 1, 1, 1, 0],
               [1, 1, 1, 1, 1]])
    assert torch.equal(P.block_causal(5, 2), want)
    assert torch.equal(P.block_causal(4, 1), torch.ones(4, 4, dtype=torch.bool).tril())


def test_sliding_window_exact():
    # chunk 2, window 4 frames, one sink frame, 8 frames
    got = P.sliding_window(8, chunk=2, window=4, sink=1)
    want = _m([[1, 1, 0, 0, 0, 0, 0, 0],
               [1, 1, 0, 0, 0, 0, 0, 0],
               [1, 1, 1, 1, 0, 0, 0, 0],
               [1, 1, 1, 1, 0, 0, 0, 0],
               [1, 0, 1, 1, 1, 1, 0, 0],
               [1, 0, 1, 1, 1, 1, 0, 0],
               [1, 0, 0, 0, 1, 1, 1, 1],
               [1, 0, 0, 0, 1, 1, 1, 1]])
    assert torch.equal(got, want)
    # a window covering everything is block-causal
    assert torch.equal(P.sliding_window(8, 2, 8, 0), P.block_causal(8, 2))
    with pytest.raises(ValueError):
        P.sliding_window(8, 3, 2)


def test_mmpl_planning_exact():
    vis = P.mmpl_planning(9, keyframes=[4, 8])
    rows = {i: set(vis[i].nonzero().flatten().tolist()) for i in range(9)}
    assert rows[0] == {0}
    assert rows[4] == {0, 4, 8} and rows[8] == {0, 4, 8}
    assert rows[1] == {0, 4, 1}
    assert rows[3] == {0, 4, 1, 2, 3}
    assert rows[6] == {4, 8, 5, 6}
    vis_nc = P.mmpl_planning(9, keyframes=[4, 8], causal_within_stage=False)
    assert set(vis_nc[1].nonzero().flatten().tolist()) == {0, 4, 1, 2, 3}
    # frames after the last keyframe have a head anchor only
    tail = P.mmpl_planning(7, keyframes=[3])
    assert set(tail[5].nonzero().flatten().tolist()) == {3, 4, 5}
    with pytest.raises(ValueError):
        P.mmpl_planning(5, keyframes=[0])


def test_interpolation_exact():
    vis = P.interpolation(4)
    want = _m([[1, 0, 0, 1],
               [1, 1, 1, 1],
               [1, 1, 1, 1],
               [1, 0, 0, 1]])
    assert torch.equal(vis, want)


def test_frame_ids():
    assert P.frame_ids(3, 2, first_frame=5).tolist() == [5, 5, 5, 6, 6, 6]


@settings(max_examples=40, deadline=None)
@given(f=st.integers(1, 12), chunk=st.integers(1, 4), extra=st.integers(0, 6),
       sink=st.integers(0, 3), data=st.data())
def test_every_row_sees_itself(f, chunk, extra, sink, data):
    kf = data.draw(st.lists(st.integers(1, max(1, f - 1)), max_size=3)) if f > 1 else []
    pats = [P.full(f), P.block_causal(f, chunk), P.sliding_window(f, chunk, chunk + extra, sink),
            P.mmpl_planning(f, kf)]
    if f >= 2:
        pats.append(P.interpolation(f))
    for vis in pats:
        assert vis.dtype == torch.bool and vis.shape == (f, f)
        assert vis.diagonal().all()
