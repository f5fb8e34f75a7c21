"""Shared test helpers: random diffusers Wan models, relative error."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def wan_text(text: torch.Tensor, n: int = 512) -> torch.Tensor:
    """Text embeddings [B, L, D] zero-padded to [B, n, D], as Wan's and diffusers' Wan
    pipelines hand them to the transformer (our models pad to text_len themselves)."""
    return torch.cat([text, text.new_zeros(text.shape[0], n - text.shape[1], text.shape[2])], 1)


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Fill every parameter with fresh seeded noise (norm-like weights around 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * r)
            elif "scale_shift_table" in name or "modulation" in name:
                p.copy_(r / p.shape[-1] ** 0.5)
            else:
                p.copy_(std * r)
    return module


def diffusers_wan(*, heads=2, head_dim=32, layers=2, in_ch=16, text_dim=32, freq_dim=32, ffn=96,
                  image_dim=None, seed=0):
    """A random-weight diffusers WanTransformer3DModel (float32, eval)."""
    from diffusers import WanTransformer3DModel

    m = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_ch,
        out_channels=16, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn, num_layers=layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=image_dim,
        added_kv_proj_dim=heads * head_dim if image_dim else None, rope_max_seq_len=1024,
    )
    return randomize_(m, seed).eval()


class Flaky(torch.nn.Module):
    """A model wrapper that raises when asked to run one job's frames (by RoPE positions)."""

    def __init__(self, inner, bad_positions):
        super().__init__()
        self.inner, self.bad = inner, list(bad_positions)
        self.config = inner.config

    device = property(lambda self: self.inner.device)
    dtype = property(lambda self: self.inner.dtype)

    def prepare_context(self, *a):
        return self.inner.prepare_context(*a)

    def forward(self, x, t, ctx, frame_positions=None, **kw):
        if list(frame_positions) == self.bad:
            raise RuntimeError("simulated device failure")
        return self.inner(x, t, ctx, frame_positions=frame_positions, **kw)
