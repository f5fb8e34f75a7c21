"""Our Wan2.1 DiT: frame-structured attention, per-frame timesteps, absolute frame positions.

Parameter names follow the original Wan layout (``blocks.N.self_attn.q``, ``ffn.0``,
``modulation``, ``head.head``, ...), so original and Self-Forcing / CausVid checkpoints
load without renaming; :mod:`engine.models.weights` maps diffusers' names onto these.

Call it as ``model(latents [B,C,F,H,W], timesteps [B] or [B,F], text_embeds [B,L,text_dim])``
for a full-visibility prediction [B,C_out,F,H,W], or add ``frame_positions``,
``visibility`` and a KV cache for block-causal, chunked generation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import BACKENDS, FrameVisibility, attention, resolve_backend
from ..config import ModelConfig
from ..kvcache import ChunkSlots, KVCache


# ----------------------------------------------------------------------------------
# small pieces
# ----------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """RMS norm over the last dim, statistics in float32, learnable weight [dim]."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [N, dim] (cos half first) of timesteps t [N] (0..1000)."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t.float()[:, None] * exponent.exp()[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_cos_sin(
    frame_positions: torch.Tensor, height: int, width: int, split: tuple[int, int, int], theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real 3-D RoPE tables for a grid of tokens.

    frame_positions: int [F] absolute frame index of each latent frame (any values).
    Returns cos, sin: float32 [F*height*width, head_dim/2], token order (frame, row, col);
    channel pairs (2i, 2i+1) rotate by angle pos_axis * theta^(-2i/d_axis) with the
    head dim split over (time, height, width) as ``split``.
    """
    dev = frame_positions.device
    parts_cos, parts_sin = [], []
    nf = frame_positions.numel()
    grids = (
        frame_positions.to(torch.float64).view(nf, 1, 1).expand(nf, height, width),
        torch.arange(height, dtype=torch.float64, device=dev).view(1, height, 1).expand(nf, height, width),
        torch.arange(width, dtype=torch.float64, device=dev).view(1, 1, width).expand(nf, height, width),
    )
    for d, grid in zip(split, grids):
        inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=dev)[: d // 2] / d))
        ang = grid.reshape(-1, 1) * inv[None, :]
        parts_cos.append(ang.cos())
        parts_sin.append(ang.sin())
    return torch.cat(parts_cos, -1).float(), torch.cat(parts_sin, -1).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x [B,S,H,Dh] by cos/sin [S, Dh/2]; returns x's dtype."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)
    return out.to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B,F,T,D] * (1 + scale) + shift, with shift/scale [B,F,D] per frame (float32)."""
    return x * (1 + scale[:, :, None]) + shift[:, :, None]


def norm_modulate(norm: nn.LayerNorm, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, fused: bool) -> torch.Tensor:
    """LayerNorm (no affine, float32) then per-frame AdaLN: x [B,F,T,D], shift/scale
    [B,F,D] -> [B,F,T,D] in x's dtype; ``fused`` runs it as one Triton kernel."""
    if fused:
        from engine_kernels import layernorm_modulate

        B, nf, T, D = x.shape
        return layernorm_modulate(x.reshape(B, nf * T, D), shift, scale, T, norm.eps).view(B, nf, T, D)
    return modulate(norm(x.float()), shift, scale).to(x.dtype)


# ----------------------------------------------------------------------------------
# attention layers
# ----------------------------------------------------------------------------------
@dataclass
class SelfAttnContext:
    """Everything a self-attention layer needs besides its input, shared by all layers.

    cos/sin: RoPE tables [S, Dh/2]; vis: visibility over the keys attended (None = full);
    cache/slots: when set, keys and values go to the cache and attention reads the cache;
    backend: a concrete attention backend name.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    vis: FrameVisibility | None
    backend: str
    cache: KVCache | None = None
    slots: ChunkSlots | None = None
    fused: bool = False


class AttentionProjections(nn.Module):
    """The q, k, v, o projections and the QK RMSNorms (over the full hidden dim) shared by
    Wan's self- and cross-attention; parameter names follow the original Wan layout."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)


class SelfAttention(AttentionProjections):
    """Self-attention with QK RMSNorm over the full hidden dim and 3-D RoPE."""

    def forward(self, x: torch.Tensor, ctx: SelfAttnContext, layer: int) -> torch.Tensor:
        """x [B,S,D] -> [B,S,D]."""
        h = self.num_heads
        if ctx.fused:  # one Triton pass: RMSNorm over the full hidden dim + RoPE
            from engine_kernels import qk_rmsnorm_rope

            q = qk_rmsnorm_rope(self.q(x), self.norm_q.weight, ctx.cos, ctx.sin, h, self.norm_q.eps).transpose(1, 2)
            k = qk_rmsnorm_rope(self.k(x), self.norm_k.weight, ctx.cos, ctx.sin, h, self.norm_k.eps).transpose(1, 2)
        else:
            q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, (h, -1)), ctx.cos, ctx.sin).transpose(1, 2)
            k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, (h, -1)), ctx.cos, ctx.sin).transpose(1, 2)
        v = self.v(x).unflatten(-1, (h, -1)).transpose(1, 2)
        if ctx.cache is not None:
            k, v = ctx.cache.write(layer, ctx.slots, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)
        out = attention(q, k, v, ctx.vis, backend=ctx.backend)
        return self.o(out.transpose(1, 2).flatten(2))


class CrossAttention(AttentionProjections):
    """Cross-attention from video tokens to text tokens (and CLIP image tokens for I2V)."""

    def __init__(self, dim: int, num_heads: int, eps: float, with_image: bool):
        super().__init__(dim, num_heads, eps)
        if with_image:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps)

    def context_kv(self, text: torch.Tensor, image: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Keys/values [B,H,L,Dh] of the (constant) context: (k, v) or (k, v, k_img, v_img)."""
        h = self.num_heads
        k = self.norm_k(self.k(text)).unflatten(-1, (h, -1)).transpose(1, 2)
        v = self.v(text).unflatten(-1, (h, -1)).transpose(1, 2)
        if image is None:
            return (k, v)
        ki = self.norm_k_img(self.k_img(image)).unflatten(-1, (h, -1)).transpose(1, 2)
        vi = self.v_img(image).unflatten(-1, (h, -1)).transpose(1, 2)
        return (k, v, ki, vi)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """x [B,S,D], context keys/values from :meth:`context_kv` -> [B,S,D]."""
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])
        if len(kv) == 4:
            out = out + F.scaled_dot_product_attention(q, kv[2], kv[3])
        return self.o(out.transpose(1, 2).flatten(2))


class WanBlock(nn.Module):
    """One DiT block: AdaLN-modulated self-attention, cross-attention, GELU-tanh FFN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.eps, with_image=cfg.is_i2v)
        self.norm2 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self, x: torch.Tensor, e: torch.Tensor, cross_kv: tuple, ctx: SelfAttnContext, layer: int
    ) -> torch.Tensor:
        """x [B,F,T,D] (frames x tokens per frame), e [B,F,6,D] float32 per-frame
        modulation -> [B,F,T,D]."""
        B, nf, T, D = x.shape
        mod = self.modulation[None].float() + e  # [B,F,6,D]
        shift, scale, gate, c_shift, c_scale, c_gate = mod.unbind(2)
        h = norm_modulate(self.norm1, x, shift, scale, ctx.fused)
        y = self.self_attn(h.view(B, nf * T, D), ctx, layer).view(B, nf, T, D)
        x = (x.float() + y.float() * gate[:, :, None]).to(x.dtype)
        y = self.cross_attn(self.norm3(x.float()).to(x.dtype).view(B, nf * T, D), cross_kv).view(B, nf, T, D)
        x = x + y
        h = norm_modulate(self.norm2, x, c_shift, c_scale, ctx.fused)
        y = self.ffn(h)
        return (x.float() + y.float() * c_gate[:, :, None]).to(x.dtype)


class Head(nn.Module):
    """Output head: modulated LayerNorm (2 parameters per frame) then a linear unpatch projection."""

    def __init__(self, dim: int, out_features: int, eps: float):
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B,F,T,D], e [B,F,D] time embedding -> [B,F,T,out_features]."""
        mod = self.modulation[None].float() + e.float()[:, :, None]  # [B,F,2,D]
        shift, scale = mod.unbind(2)
        return self.head(modulate(self.norm(x.float()), shift, scale).to(x.dtype))


class ImageProjection(nn.Module):
    """CLIP image tokens [B,N,image_dim] -> [B,N,dim] (LayerNorm, MLP with exact GELU, LayerNorm)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            FP32LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim), FP32LayerNorm(out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@dataclass
class Context:
    """Text (and image) conditioning prepared once: embedded tokens and, per layer, the
    cross-attention keys/values. Reuse it across chunks and steps of a rollout."""

    text: torch.Tensor
    image: torch.Tensor | None
    cross_kv: list[tuple]

    @property
    def batch(self) -> int:
        return self.text.shape[0]


@dataclass
class DiTPass:
    """One forward pass between :meth:`WanDiT.prepare_pass` and :meth:`WanDiT.output`.

    tokens [B, gf, tpf, D]; time: per-frame time embedding [B*gf, D] (model dtype; a
    subclass may add to it before :meth:`WanDiT.frame_modulation`); context: the text context;
    attn: the self-attention context; dims: (B, F, H, W, gf, gh, gw), latent and patch grid.
    """

    tokens: torch.Tensor
    time: torch.Tensor
    context: Context
    attn: SelfAttnContext
    dims: tuple[int, int, int, int, int, int, int]


# ----------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------
class WanDiT(nn.Module):
    """Wan2.1 diffusion transformer (see module docstring for the call convention)."""

    def __init__(self, cfg: ModelConfig, attention_backend: str = "auto", fused_ops: bool = False):
        super().__init__()
        if attention_backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {attention_backend!r}; choose one of {BACKENDS}")
        self.config = cfg
        self.attention_backend = attention_backend
        self.fused_ops = fused_ops  # fused Triton LayerNorm+AdaLN and QK-norm+RoPE
        self._rope_cache: dict = {}  # (positions, gh, gw, device) -> (cos, sin); see _rope_tables
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([WanBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(dim, cfg.out_channels * math.prod(cfg.patch_size), cfg.eps)
        if cfg.is_i2v:
            self.img_emb = ImageProjection(cfg.image_dim, dim)

    # -- helpers ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def tokens_per_frame(self, height: int, width: int) -> int:
        """Tokens of one latent frame of latent size (height, width)."""
        _, ph, pw = self.config.patch_size
        return (height // ph) * (width // pw)

    def pad_text(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """Text embeddings [B, L, text_dim] zero-padded to [B, text_len, text_dim], as Wan
        pads its T5 output (the zeros then go through the text embedding like any token);
        longer than ``text_len`` is an error (Wan's tokenizer truncates there)."""
        n = self.config.text_len
        if text_embeds.dim() != 3 or text_embeds.shape[-1] != self.config.text_dim:
            raise ValueError(f"text_embeds must be [B, L, {self.config.text_dim}] for model {self.config.name!r}; "
                             f"got {tuple(text_embeds.shape)}")
        if text_embeds.shape[1] > n:
            raise ValueError(f"text_embeds have {text_embeds.shape[1]} tokens but model {self.config.name!r} takes at "
                             f"most text_len={n}: truncate them to {n} (Wan's tokenizer does)")
        if text_embeds.shape[1] == n:
            return text_embeds
        pad = text_embeds.new_zeros(text_embeds.shape[0], n - text_embeds.shape[1], text_embeds.shape[2])
        return torch.cat([text_embeds, pad], 1)

    def prepare_context(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor | None = None) -> Context:
        """Embed text [B,L,text_dim] (zero-padded to text_len, :meth:`pad_text`; and CLIP
        image tokens [B,N,image_dim]) once and precompute every layer's cross-attention
        keys/values."""
        cfg = self.config
        text_embeds = self.pad_text(text_embeds)
        if cfg.is_i2v:
            if image_embeds is None:
                raise ValueError(
                    f"model {cfg.name!r} is image-to-video: pass image_embeds [B, N, {cfg.image_dim}] (CLIP image tokens)"
                )
            if image_embeds.dim() != 3 or image_embeds.shape[-1] != cfg.image_dim:
                raise ValueError(f"image_embeds must be [B, N, {cfg.image_dim}]; got {tuple(image_embeds.shape)}")
        elif image_embeds is not None:
            raise ValueError(f"model {cfg.name!r} is text-to-video and takes no image_embeds")
        dt = self.dtype
        text = self.text_embedding(text_embeds.to(self.device, dt))
        image = self.img_emb(image_embeds.to(self.device, dt)) if cfg.is_i2v else None
        kv = [blk.cross_attn.context_kv(text, image) for blk in self.blocks]
        return Context(text, image, kv)

    def _check_latents(self, latents: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        if latents.dim() != 5:
            raise ValueError(f"latents must be [B, C, F, H, W]; got shape {tuple(latents.shape)}")
        if condition is not None:
            if condition.shape[0] != latents.shape[0] or condition.shape[2:] != latents.shape[2:]:
                raise ValueError(
                    f"condition {tuple(condition.shape)} must match latents {tuple(latents.shape)} in batch, frames and size"
                )
            latents = torch.cat([latents, condition.to(latents.dtype)], dim=1)
        if latents.shape[1] != cfg.in_channels:
            hint = ""
            if cfg.is_i2v and latents.shape[1] == cfg.latent_channels:
                hint = " (image-to-video: pass condition=[B, 20, F, H, W], the mask and first-frame latent channels)"
            raise ValueError(f"model {cfg.name!r} takes {cfg.in_channels} latent channels, got {latents.shape[1]}{hint}")
        pt, ph, pw = cfg.patch_size
        _, _, nf, h, w = latents.shape
        if nf % pt or h % ph or w % pw:
            raise ValueError(
                f"latent size (F={nf}, H={h}, W={w}) must be divisible by the patch size {cfg.patch_size}; "
                f"video height and width must be multiples of {ph * cfg.vae_stride[1]}"
            )
        return latents

    def _rope_tables(self, frame_positions, gf: int, gh: int, gw: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin [gf*gh*gw, head_dim/2] for the pass's frame positions (default
        0..gf-1). Tables for positions given as Python ints are kept for the next call: a
        rollout runs every denoising step and the cache refresh at the same positions."""
        cfg = self.config
        key = None
        if frame_positions is None or isinstance(frame_positions, (list, tuple)):
            key = (tuple(range(gf)) if frame_positions is None else tuple(int(p) for p in frame_positions), gh, gw,
                   self.device)
            hit = self._rope_cache.get(key)
            if hit is not None:
                return hit
        pos = torch.as_tensor(key[0] if key else frame_positions, device=self.device).long()
        if pos.shape != (gf,):
            raise ValueError(f"frame_positions must have one entry per latent frame ({gf}), got {tuple(pos.shape)}")
        tables = rope_cos_sin(pos, gh, gw, cfg.rope_split, cfg.rope_theta)
        if key is not None:
            if len(self._rope_cache) >= 16:
                self._rope_cache.pop(next(iter(self._rope_cache)))
            self._rope_cache[key] = tables
        return tables

    def _time(self, timesteps: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        t = torch.as_tensor(timesteps, device=self.device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            if t.shape[0] != batch:
                raise ValueError(f"timesteps [B] must have B={batch} entries, got {t.shape[0]}")
            t = t[:, None].expand(batch, frames)
        if t.shape != (batch, frames):
            raise ValueError(f"timesteps must be [B] or [B, F] = [{batch}, {frames}]; got {tuple(t.shape)}")
        return t

    # -- forward ------------------------------------------------------------------
    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeds: torch.Tensor | Context,
        *,
        image_embeds: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        frame_positions: torch.Tensor | list[int] | None = None,
        visibility: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        cache_slots: ChunkSlots | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity.

        latents [B,C,F,H,W]; timesteps [B] or [B,F] in 0..1000; text_embeds [B,L,text_dim]
        or a prepared :class:`Context`; image_embeds [B,N,image_dim] (I2V);
        condition [B,20,F,H,W] appended to latents' channels (I2V);
        frame_positions [F] absolute latent-frame indices for RoPE (default 0..F-1);
        visibility bool [F,F] over this pass's frames (default: full), or, with a KV cache,
        ``cache_slots`` from ``kv_cache.claim(positions)`` whose visibility spans the cache.
        Returns [B, out_channels, F, H, W].
        """
        p = self.prepare_pass(latents, timesteps, text_embeds, image_embeds=image_embeds, condition=condition,
                              frame_positions=frame_positions, visibility=visibility, kv_cache=kv_cache,
                              cache_slots=cache_slots)
        e0 = self.frame_modulation(p)
        tokens = p.tokens
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, e0, p.context.cross_kv[i], p.attn, i)
        return self.output(p, tokens)

    # -- the stages of a pass: prepare_pass, frame_modulation, the blocks, output ----
    def prepare_pass(self, latents, timesteps, text_embeds, *, image_embeds=None, condition=None,
                     frame_positions=None, visibility=None, kv_cache=None, cache_slots=None) -> DiTPass:
        """Check the inputs (as :meth:`forward` takes them) and embed them: patch tokens,
        per-frame time embedding, text context, RoPE tables and visibility."""
        cfg = self.config
        x = self._check_latents(latents, condition).to(self.dtype)
        B, _, nf, h, w = x.shape
        pt, ph, pw = cfg.patch_size
        gf, gh, gw = nf // pt, h // ph, w // pw
        ctx_in = text_embeds if isinstance(text_embeds, Context) else self.prepare_context(text_embeds, image_embeds)
        if ctx_in.batch != B:
            raise ValueError(f"text context has batch {ctx_in.batch} but latents have batch {B}")

        cos, sin = self._rope_tables(frame_positions, gf, gh, gw)

        backend = resolve_backend(self.attention_backend, self.device)
        tpf = gh * gw
        if kv_cache is not None:
            if cache_slots is None or len(cache_slots.positions) != gf:
                raise ValueError("with kv_cache, pass cache_slots=kv_cache.claim(positions) covering this chunk's frames")
            if visibility is not None:
                raise ValueError("with kv_cache the visibility comes from cache_slots; do not pass visibility")
            if kv_cache.tokens_per_frame != tpf:
                raise ValueError(f"cache holds {kv_cache.tokens_per_frame} tokens per frame, this chunk has {tpf}")
            vis = cache_slots.attend
        elif visibility is not None:
            visibility = torch.as_tensor(visibility, device=self.device)
            if visibility.shape != (gf, gf) or visibility.dtype != torch.bool:
                raise ValueError(f"visibility must be bool [{gf}, {gf}] (frames x frames); got {tuple(visibility.shape)}")
            vis = FrameVisibility.uniform(visibility, tpf)
        else:
            vis = None
        actx = SelfAttnContext(cos, sin, vis, backend, kv_cache, cache_slots, fused=self.fused_ops)

        t = self._time(timesteps, B, nf)[:, ::pt]  # [B, gf]
        e = self.time_embedding(timestep_embedding(t.reshape(-1), cfg.freq_dim).to(self.dtype))
        tokens = self.patch_embedding(x).flatten(3).permute(0, 2, 3, 1).contiguous()  # [B, gf, tpf, D]
        return DiTPass(tokens, e, ctx_in, actx, (B, nf, h, w, gf, gh, gw))

    def frame_modulation(self, p: DiTPass) -> torch.Tensor:
        """The blocks' per-frame modulation [B, gf, 6, D] (float32) from ``p.time``."""
        B, gf = p.dims[0], p.dims[4]
        return self.time_projection(p.time).float().view(B, gf, 6, self.config.dim)

    def output(self, p: DiTPass, tokens: torch.Tensor) -> torch.Tensor:
        """The head over the last block's tokens [B, gf, tpf, D], unpatchified to
        [B, out_channels, F, H, W]."""
        cfg = self.config
        B, nf, h, w, gf, gh, gw = p.dims
        pt, ph, pw = cfg.patch_size
        out = self.head(tokens, p.time.view(B, gf, cfg.dim))  # [B, gf, tpf, C*pt*ph*pw]
        out = out.view(B, gf, gh, gw, pt, ph, pw, cfg.out_channels)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, cfg.out_channels, nf, h, w)


def init_random_weights(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Fill every parameter with seeded random values -- norm weights 1 + 0.1 N(0,1),
    modulation tables N(0,1)/sqrt(dim), everything else std * N(0,1) -- so a preset
    without a checkpoint is deterministic and non-degenerate. Returns the model."""
    gen = torch.Generator().manual_seed(seed)
    norm_weights = {
        id(m.weight) for m in model.modules() if isinstance(m, (RMSNorm, nn.LayerNorm)) and m.weight is not None
    }
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if id(p) in norm_weights:
                p.copy_(1.0 + 0.1 * r)
            elif name.endswith("modulation"):
                p.copy_(r / p.shape[-1] ** 0.5)
            else:
                p.copy_(std * r)
    return model
