"""Control injection layers of the Wan DiT and the per-pass control tensors.

A :class:`ControlPass` holds the control inputs of ONE forward pass (already sliced to the
pass's frames); ``WanDiT.forward(..., control=ControlPass(...))`` applies them through the
layers in ``model.control_layers`` (an ``nn.ModuleDict``, empty by default, so a model
without controls has exactly its original parameters and output):

====================  ==========================================  =============================
layer (key prefix)    what                                        initialisation
====================  ==========================================  =============================
``warp``              LongDWM: patch embedding (Conv3d, same       zero (absent in a checkpoint:
                      patch as the DiT) of the warped-frame        the model behaves as before)
                      latents, added to the tokens entering
                      every DiT block
``waypoints``,        MiLA: Fourier features + MLP of a per-frame  last linear zero
``camera``            vector, added to the frame (time) embedding
``dense``, ``sparse`` LongVie 2: a control branch -- copies of the injection linears zero; blocks
                      first n DiT blocks at half width (the dense  copied from the base blocks'
                      path takes the first half of the features,   halves
                      the sparse path the second), fed its own
                      control latents, injected after base block
                      i through a zero-initialised linear
====================  ==========================================  =============================

``ControlPass.mask`` ([B, F], optional) scales every injection per frame: frames with mask
0 get no control at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

FOURIER_BANDS = 6
CAMERA_FEATURES = 16  # fx/W, fy/H, cx/W, cy/H, rotation (9, row-major), translation (3)
CONTROL_KINDS = ("warp", "waypoints", "camera", "dense", "sparse")


@dataclass
class ControlPass:
    """Control inputs of one forward pass, sliced to its F latent frames.

    warp / dense / sparse: latents [B, C_lat, F, h, w] (normalised, the VAE's latent space);
    waypoints: [B, F, 2*N_w]; camera: [B, F, 16]; mask: [B, F] (1 = control applies).
    """

    warp: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    sparse: torch.Tensor | None = None
    waypoints: torch.Tensor | None = None
    camera: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in CONTROL_KINDS if getattr(self, k) is not None)


def fourier_features(x: torch.Tensor, bands: int = FOURIER_BANDS) -> torch.Tensor:
    """[..., k] -> [..., k * (2 * bands + 1)]: x, sin(2^j pi x), cos(2^j pi x) for j < bands."""
    freqs = math.pi * 2.0 ** torch.arange(bands, dtype=torch.float32, device=x.device)
    ang = x.float()[..., None] * freqs
    return torch.cat([x.float(), ang.sin().flatten(-2), ang.cos().flatten(-2)], -1)


class VectorEmbedding(nn.Module):
    """MiLA's waypoint / camera embedding: Fourier features then a 2-layer MLP to the model
    width; the last layer starts at zero."""

    def __init__(self, in_features: int, dim: int, bands: int = FOURIER_BANDS):
        super().__init__()
        self.in_features, self.bands = in_features, bands
        self.mlp = nn.Sequential(nn.Linear(in_features * (2 * bands + 1), dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """v [B, F, in_features] -> [B, F, dim] (float32)."""
        if v.shape[-1] != self.in_features:
            raise ValueError(f"this embedding takes {self.in_features} features per frame, got {v.shape[-1]}")
        w = self.mlp[0].weight
        return self.mlp(fourier_features(v, self.bands).to(w.dtype)).float()


class WarpInjection(nn.Module):
    """LongDWM: warped-frame latents -> tokens [B, F', T, D] through a patch embedding."""

    def __init__(self, latent_channels: int, dim: int, patch_size: tuple[int, int, int]):
        super().__init__()
        self.patch_embedding = nn.Conv3d(latent_channels, dim, kernel_size=patch_size, stride=patch_size)
        nn.init.zeros_(self.patch_embedding.weight)
        nn.init.zeros_(self.patch_embedding.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.patch_embedding.weight
        return self.patch_embedding(z.to(w.dtype)).flatten(3).permute(0, 2, 3, 1)


def half_config(cfg):
    """The ModelConfig of one control path: half the width, heads and FFN (same head dim)."""
    if cfg.dim % 2 or cfg.num_heads % 2 or cfg.ffn_dim % 2:
        raise ValueError(f"control branches split the features in two: dim ({cfg.dim}), heads ({cfg.num_heads}) "
                         f"and ffn_dim ({cfg.ffn_dim}) must be even")
    return cfg.replace(dim=cfg.dim // 2, ffn_dim=cfg.ffn_dim // 2, num_heads=cfg.num_heads // 2)


class ControlBranch(nn.Module):
    """One LongVie 2 control path (``dense`` = half 0, ``sparse`` = half 1): a patch
    embedding of its control latents, ``n`` half-width copies of the base model's first
    blocks, and one zero-initialised linear (D/2 -> D) per block injecting into the base."""

    def __init__(self, cfg, num_blocks: int, half: int):
        super().__init__()
        from ..models.wan import WanBlock

        if not 1 <= num_blocks <= cfg.num_layers:
            raise ValueError(f"a control branch copies 1..{cfg.num_layers} blocks, got {num_blocks}")
        sub = half_config(cfg)
        self.half = int(half)
        self.dim = sub.dim
        self.patch_embedding = nn.Conv3d(cfg.latent_channels, sub.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.blocks = nn.ModuleList([WanBlock(sub) for _ in range(num_blocks)])
        self.inject = nn.ModuleList([nn.Linear(sub.dim, cfg.dim) for _ in range(num_blocks)])
        for lin in self.inject:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    @property
    def features(self) -> slice:
        return slice(self.half * self.dim, (self.half + 1) * self.dim)

    @torch.no_grad()
    def copy_from(self, model) -> "ControlBranch":
        """Initialise the blocks (and the control patch embedding) as this path's half of
        the base model's first blocks: every dimension the base has twice as large is
        sliced to this half."""
        def take(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
            idx = []
            for d, (a, b) in enumerate(zip(dst.shape, src.shape)):
                if a == b:
                    idx.append(slice(None))
                elif b == 2 * a:
                    idx.append(slice(self.half * a, (self.half + 1) * a))
                else:
                    idx.append(slice(0, a))  # in_channels of the patch embedding: the latent channels
            return src[tuple(idx)]

        for i, blk in enumerate(self.blocks):
            base = dict(model.blocks[i].named_parameters())
            for name, p in blk.named_parameters():
                p.copy_(take(p, base[name]))
        self.patch_embedding.weight.copy_(take(self.patch_embedding.weight, model.patch_embedding.weight))
        self.patch_embedding.bias.copy_(take(self.patch_embedding.bias, model.patch_embedding.bias))
        return self

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        w = self.patch_embedding.weight
        return self.patch_embedding(z.to(w.dtype)).flatten(3).permute(0, 2, 3, 1)

    def context_kv(self, ctx) -> list[tuple]:
        """Per-block cross-attention keys/values from this path's half of the text (and
        image) embedding of a prepared context."""
        sl = self.features
        text = ctx.text[..., sl]
        image = None if ctx.image is None else ctx.image[..., sl]
        return [blk.cross_attn.context_kv(text, image) for blk in self.blocks]


def make_layer(kind: str, cfg, **kw) -> nn.Module:
    """A freshly (zero-)initialised control layer of ``kind`` for a model config."""
    if kind == "warp":
        return WarpInjection(cfg.latent_channels, cfg.dim, cfg.patch_size)
    if kind == "waypoints":
        return VectorEmbedding(int(kw["in_features"]), cfg.dim)
    if kind == "camera":
        return VectorEmbedding(int(kw.get("in_features", CAMERA_FEATURES)), cfg.dim)
    if kind in ("dense", "sparse"):
        return ControlBranch(cfg, int(kw["num_blocks"]), 0 if kind == "dense" else 1)
    raise ValueError(f"unknown control kind {kind!r}; known: {CONTROL_KINDS}")


def layer_from_state(kind: str, cfg, state: dict[str, torch.Tensor]) -> nn.Module:
    """Build the layer of ``kind`` whose shape fits ``state`` (keys relative to the layer)."""
    if kind in ("waypoints", "camera"):
        w = state.get("mlp.0.weight")
        if w is None:
            raise ValueError(f"control layer {kind!r}: the checkpoint lacks 'mlp.0.weight'")
        return make_layer(kind, cfg, in_features=w.shape[1] // (2 * FOURIER_BANDS + 1))
    if kind in ("dense", "sparse"):
        ids = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
        return make_layer(kind, cfg, num_blocks=max(ids) + 1 if ids else 1)
    return make_layer(kind, cfg)


def default_branch_blocks(num_layers: int) -> int:
    """LongVie 2 copies 12 of Wan-14B's 40 blocks: the same share, at least one."""
    return max(1, round(num_layers * 12 / 40))
