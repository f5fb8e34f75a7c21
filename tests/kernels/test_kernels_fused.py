import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine_kernels import layernorm_modulate, layernorm_modulate_reference, qk_rmsnorm_rope, qk_rmsnorm_rope_reference

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.float16: dict(atol=1e-2, rtol=1e-2),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), tpf=st.integers(1, 12), frames=st.integers(1, 4), cut=st.integers(0, 5),
       d=st.integers(8, 200), dtype=st.sampled_from([torch.float32, torch.float16]))
def test_layernorm_modulate_matches_reference(b, tpf, frames, cut, d, dtype):
    s = max(1, tpf * frames - cut)  # last frame may be partial
    x = (torch.randn(b, s, d, device=DEV) * 3 + 1).to(dtype)
    shift = torch.randn(b, frames, d, device=DEV, dtype=dtype)
    scale = torch.randn(b, frames, d, device=DEV, dtype=dtype)
    out = torch.full((b, s, d), float("nan"), device=DEV, dtype=dtype)
    got = layernorm_modulate(x, shift, scale, tpf, 1e-6, out=out)
    assert got is out and not torch.isnan(got).any()
    torch.testing.assert_close(got, layernorm_modulate_reference(x, shift, scale, tpf, 1e-6), **TOL[dtype])


def test_layernorm_modulate_semantics(device):
    """Independent check of the maths: per-frame modulation and strided (chunked) inputs."""
    x = torch.randn(1, 6, 16, device=device)
    mod = torch.randn(1, 2, 6, 16, device=device)  # [B, F, 6 modulation vectors, D] like Wan
    shift, scale = mod[:, :, 0], mod[:, :, 1]  # non-contiguous views
    got = layernorm_modulate(x, shift, scale, tokens_per_frame=3)
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    normed = (x - mu) / torch.sqrt(var + 1e-6)
    want = torch.cat([normed[:, :3] * (1 + scale[:, 0:1]) + shift[:, 0:1],
                      normed[:, 3:] * (1 + scale[:, 1:2]) + shift[:, 1:2]], dim=1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="frames of modulation"):
        layernorm_modulate(x, shift, scale, tokens_per_frame=2)
    with pytest.raises(ValueError, match="shift"):
        layernorm_modulate(x, shift[..., :8], scale, tokens_per_frame=3)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), s=st.integers(1, 9), heads=st.integers(1, 4), dh=st.sampled_from([2, 6, 16, 32]),
       dtype=st.sampled_from([torch.float32, torch.float16]))
def test_qk_rmsnorm_rope_matches_reference(b, s, heads, dh, dtype):
    x = (torch.randn(b, s, heads * dh, device=DEV) * 2).to(dtype)
    weight = (torch.rand(heads * dh, device=DEV) + 0.5).to(dtype)
    ang = torch.rand(s, dh // 2, device=DEV) * 6.3
    out = torch.full((b, s, heads, dh), float("nan"), device=DEV, dtype=dtype)
    got = qk_rmsnorm_rope(x, weight, ang.cos(), ang.sin(), heads, out=out)
    assert got is out and not torch.isnan(got).any()
    want = qk_rmsnorm_rope_reference(x, weight, ang.cos(), ang.sin(), heads)
    torch.testing.assert_close(got, want, **TOL[dtype])


def test_qk_rmsnorm_rope_semantics(device):
    """Check against complex multiplication (Wan's formulation) with an independent RMSNorm."""
    b, s, h, dh = 2, 5, 3, 8
    x = torch.randn(b, s, h * dh, device=device)
    weight = torch.randn(h * dh, device=device)
    ang = torch.randn(s, dh // 2, device=device)
    got = qk_rmsnorm_rope(x[:, :, :], weight, ang.cos(), ang.sin(), h, eps=1e-5)
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * weight
    yc = torch.view_as_complex(y.view(b, s, h, dh // 2, 2).contiguous())
    rot = torch.polar(torch.ones_like(ang), ang)[None, :, None, :]
    want = torch.view_as_real(yc * rot).reshape(b, s, h, dh)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        qk_rmsnorm_rope(x, weight, ang.cos(), ang.sin(), 5)
    with pytest.raises(ValueError, match="cos"):
        qk_rmsnorm_rope(x, weight, ang.cos()[:-1], ang.sin(), h)


def test_qk_rmsnorm_rope_strided_input(device):
    """x as the q slice of a fused qkv projection output (row stride 3*H*Dh)."""
    qkv = torch.randn(1, 4, 3 * 64, device=device)
    q = qkv[:, :, :64]
    w = torch.rand(64, device=device)
    ang = torch.randn(4, 8, device=device)
    torch.testing.assert_close(qk_rmsnorm_rope(q, w, ang.cos(), ang.sin(), 4),
                               qk_rmsnorm_rope_reference(q, w, ang.cos(), ang.sin(), 4), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_bfloat16_wan_shapes_gpu():
    x = torch.randn(1, 1560 * 2, 1536, device="cuda", dtype=torch.bfloat16)
    shift = torch.randn(1, 2, 1536, device="cuda", dtype=torch.bfloat16)
    scale = torch.randn(1, 2, 1536, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(layernorm_modulate(x, shift, scale, 1560),
                               layernorm_modulate_reference(x, shift, scale, 1560), **TOL[torch.bfloat16])
    w = torch.rand(1536, device="cuda", dtype=torch.bfloat16) + 0.5
    ang = torch.rand(3120, 64, device="cuda") * 6
    torch.testing.assert_close(qk_rmsnorm_rope(x, w, ang.cos(), ang.sin(), 12),
                               qk_rmsnorm_rope_reference(x, w, ang.cos(), ang.sin(), 12), **TOL[torch.bfloat16])
