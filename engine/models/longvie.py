"""LongVie 2 as released (Vchitect/LongVie): the dual control branches beside a Wan2.1-I2V DiT.

:class:`LongVieController` holds the release's ``WanModelDualControl`` parameters under the
release's own names (``diffsynth/models/wan_video_dit_dual_control.py``), so its
``control.safetensors`` loads as is (with or without the ``pipe.dual_controller.`` prefix
the training wrapper leaves on the keys)::

    control_blocks_dense.<i>.*, control_blocks_sparse.<i>.*   Wan blocks at half width,
                                       half the heads and half the FFN, with image cross-attention
    control_initial_combine_linear_dense|sparse.{weight,bias}  Linear(D -> D/2), zero-init
    control_text_linear.{weight,bias}   Linear(D -> D/2) over the embedded context
    control_t_mod.{weight,bias}         Linear(D -> D/2) over the 6 x D time modulation
    control_combine_linears.<i>.*       Linear(D/2 -> D), zero-init, one per block, shared by
                                       both branches

:class:`LongVieDiT` is a :class:`~engine.models.wan.WanDiT` with a ``controller``; its
forward computes what the release's ``model_fn_wan_video`` computes
(``diffsynth/pipelines/wan_video_new_longvie.py``):

- base tokens: the patch embedding of [noisy latents 16 | mask 4 | first-frame latent 16];
- history (optional, the previous clip's re-encoded frames): the patch embedding of
  [ones 20 | history latents 16] -- the ones come FIRST, unlike the clip's own channels;
  prepended to the base tokens, given the same timestep as the clip, RoPE frames
  0..f_h-1 (the clip's frames continue at f_h..), dropped before the head;
- branches: dense / sparse control latents [control video latents 16 | mask 4 | latent of
  (first control frame, zeros) 16] through the BASE patch embedding, then their
  ``control_initial_combine_linear``; they never read the base hidden state; their context
  is ``control_text_linear`` of the embedded [CLIP tokens; text tokens], their modulation
  ``control_t_mod`` of the base's, their RoPE frames 0..f-1 (no history);
- injection: after base block i < L, the clip's tokens (not the history's) get
  ``control_combine_linears[i](dense_i + sparse_i)``.

Classifier-free guidance runs both rows in one forward: a 2-row context (positive,
negative) and latents / conditions of batch 1 are expanded to batch 2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..attention import resolve_backend
from ..config import ModelConfig
from .wan import Context, SelfAttnContext, WanBlock, WanDiT, rope_cos_sin, timestep_embedding
from .weights import CheckpointError, check_state_dict

RELEASE_PREFIX = "pipe.dual_controller."
DEFAULT_CONTROL_LAYERS = 12  # the release's WanModelDualControl default (of Wan-14B's 40 blocks)
HISTORY_ONES = 20  # condition channels of history tokens, all ones (placed before the latents)


def half_config(cfg: ModelConfig) -> ModelConfig:
    """The ModelConfig of one control branch: half the width, heads and FFN (the release's
    ``DiTBlock(dim//2, num_heads//2, ffn_dim//2)``)."""
    if cfg.dim % 2 or cfg.num_heads % 2 or cfg.ffn_dim % 2:
        raise ValueError(f"LongVie 2 control branches are half-width: dim ({cfg.dim}), heads ({cfg.num_heads}) and "
                         f"ffn_dim ({cfg.ffn_dim}) must be even")
    return cfg.replace(dim=cfg.dim // 2, ffn_dim=cfg.ffn_dim // 2, num_heads=cfg.num_heads // 2)


class LongVieController(nn.Module):
    """The release's ``WanModelDualControl`` (parameter names as released; see the module
    docstring) for a base DiT config ``cfg`` and ``control_layers`` branch blocks."""

    def __init__(self, cfg: ModelConfig, control_layers: int = DEFAULT_CONTROL_LAYERS):
        super().__init__()
        if not cfg.is_i2v:
            raise ValueError(f"LongVie 2 builds on a Wan2.1 image-to-video DiT; model {cfg.name!r} is text-to-video")
        if not 1 <= control_layers <= cfg.num_layers:
            raise ValueError(f"control_layers must be in 1..{cfg.num_layers}, got {control_layers}")
        half = half_config(cfg)
        d, d2 = cfg.dim, half.dim
        self.control_layers = int(control_layers)
        self.control_blocks_dense = nn.ModuleList([WanBlock(half) for _ in range(control_layers)])
        self.control_blocks_sparse = nn.ModuleList([WanBlock(half) for _ in range(control_layers)])
        self.control_initial_combine_linear_dense = nn.Linear(d, d2)
        self.control_initial_combine_linear_sparse = nn.Linear(d, d2)
        self.control_text_linear = nn.Linear(d, d2)
        self.control_t_mod = nn.Linear(d, d2)
        self.control_combine_linears = nn.ModuleList([nn.Linear(d2, d) for _ in range(control_layers)])
        for lin in (self.control_initial_combine_linear_dense, self.control_initial_combine_linear_sparse,
                    *self.control_combine_linears):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)


def controller_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A release ``control.safetensors`` state with the ``pipe.dual_controller.`` prefix
    stripped where present (as the release's ``from_pretrained`` does)."""
    return {k[len(RELEASE_PREFIX):] if k.startswith(RELEASE_PREFIX) else k: v for k, v in state.items()}


def control_layers_of(state: dict[str, torch.Tensor], source: str = "control weights") -> int:
    """The number of branch blocks a controller state holds (``control_blocks_dense.<i>``)."""
    ids = {int(m.group(1)) for k in state for m in [re.match(r"^control_blocks_dense\.(\d+)\.", k)] if m}
    if not ids:
        raise CheckpointError(f"{source}: no 'control_blocks_dense.<i>.*' key: this is not a LongVie 2 control file "
                              f"(keys look like {sorted(state)[:4]})")
    return max(ids) + 1


@dataclass
class LongVieContext(Context):
    """A prepared context plus the branches' cross-attention keys / values (computed once
    per clip from ``control_text_linear`` of the embedded context, not on every step)."""

    dense_kv: list | None = None
    sparse_kv: list | None = None


class LongVieDiT(WanDiT):
    """A Wan2.1-I2V DiT with the LongVie 2 ``controller`` (see the module docstring)."""

    takes_history = True

    def __init__(self, cfg: ModelConfig, attention_backend: str = "auto", fused_ops: bool = False,
                 control_layers: int = DEFAULT_CONTROL_LAYERS):
        super().__init__(cfg, attention_backend=attention_backend, fused_ops=fused_ops)
        self.controller = LongVieController(cfg, control_layers)

    @classmethod
    def from_base(cls, base: WanDiT, control: dict[str, torch.Tensor] | None = None, *,
                  control_layers: int | None = None, source: str = "control weights") -> "LongVieDiT":
        """A LongVie model sharing ``base``'s parameter tensors, its controller loaded from
        ``control`` (a release ``control.safetensors`` state, prefix optional; every key
        must fit, named otherwise) or, without it, zero-initialised with ``control_layers``
        blocks (default 12)."""
        if not isinstance(base, WanDiT) or type(base).forward is not WanDiT.forward:
            raise TypeError(f"LongVie 2 needs a plain Wan DiT as its base, got {type(base).__name__}")
        state = None
        if control is not None:
            state = controller_state(control)
            n = control_layers_of(state, source)
            if control_layers is not None and control_layers != n:
                raise CheckpointError(f"{source}: holds {n} control layers, control_layers={control_layers} was asked")
            control_layers = n
        with torch.device("meta"):
            model = cls(base.config, attention_backend=base.attention_backend, fused_ops=base.fused_ops,
                        control_layers=control_layers or DEFAULT_CONTROL_LAYERS)
        for name, t in [*base.named_parameters(remove_duplicate=False), *base.named_buffers(remove_duplicate=False)]:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, t)
        ctl = LongVieController(base.config, model.controller.control_layers)
        if state is not None:
            load_controller(ctl, state, source)
        model.controller = ctl.to(device=base.device, dtype=base.dtype).requires_grad_(False)
        model.source = getattr(base, "source", None)
        return model.train(base.training)

    def prepare_context(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor | None = None) -> LongVieContext:
        """As :meth:`WanDiT.prepare_context`, plus the control branches' cross-attention
        keys / values over ``control_text_linear`` of the embedded [CLIP tokens; text]."""
        ctx = super().prepare_context(text_embeds, image_embeds)
        c = self.controller
        text = c.control_text_linear(ctx.text)
        image = None if ctx.image is None else c.control_text_linear(ctx.image)
        return LongVieContext(ctx.text, ctx.image, ctx.cross_kv,
                              [blk.cross_attn.context_kv(text, image) for blk in c.control_blocks_dense],
                              [blk.cross_attn.context_kv(text, image) for blk in c.control_blocks_sparse])

    # -- forward ------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor | Context, *,
                image_embeds: torch.Tensor | None = None, condition: torch.Tensor, dense: torch.Tensor,
                sparse: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """The release's ``model_fn_wan_video`` (dual control, optional history).

        latents [B|1, 16, F, h, w]; timesteps [B] or a scalar (one timestep per row, as the
        release); text_embeds [B, L, text_dim] or this model's :meth:`prepare_context` (B = 2: CFG
        rows); image_embeds [B, N, image_dim] (CLIP tokens, with raw text); condition
        [B|1, 20, F, h, w] (mask + first-frame latent); dense / sparse [B|1, 36, F, h, w]
        (control latents | mask | first control frame latent); history [B|1, 16, f_h, h, w]
        (normalised latents of the previous clip's re-encoded frames) or None.
        Returns the velocity [B, 16, F, h, w] (float32 for float32 models).
        """
        cfg = self.config
        ctx = text_embeds if isinstance(text_embeds, Context) else self.prepare_context(text_embeds, image_embeds)
        B = ctx.batch
        dt, dev = self.dtype, self.device

        def rows(name, z, channels):
            z = torch.as_tensor(z, device=dev)
            if z.dim() != 5 or z.shape[1] != channels or z.shape[0] not in (1, B):
                raise ValueError(f"{name} must be [B, {channels}, F, h, w] with B = 1 or {B}; got {tuple(z.shape)}")
            return z.to(dt).expand(B, -1, -1, -1, -1)

        x = rows("latents", latents, cfg.latent_channels)
        _, _, nf, h, w = x.shape
        cond = rows("condition", condition, cfg.in_channels - cfg.latent_channels)
        d_in, s_in = rows("dense", dense, cfg.in_channels), rows("sparse", sparse, cfg.in_channels)
        for name, z in (("condition", cond), ("dense", d_in), ("sparse", s_in)):
            if z.shape[2:] != x.shape[2:]:
                raise ValueError(f"{name} {tuple(z.shape)} must match latents {tuple(x.shape)} in frames and size")
        pt, ph, pw = cfg.patch_size
        if pt != 1 or h % ph or w % pw:
            raise ValueError(f"latent size ({h}, {w}) must be divisible by the patch size {cfg.patch_size}")
        gh, gw = h // ph, w // pw
        tpf = gh * gw

        def embed(z):  # [B, C, f, h, w] -> [B, f, tpf, D]
            return self.patch_embedding(z).flatten(3).permute(0, 2, 3, 1).contiguous()

        tokens = embed(torch.cat([x, cond], 1))
        fh = 0
        if history is not None:
            hz = rows("history", history, cfg.latent_channels)
            if hz.shape[3:] != x.shape[3:]:
                raise ValueError(f"history {tuple(hz.shape)} must have the latents' size {tuple(x.shape[3:])}")
            fh = hz.shape[2]
            ones = torch.ones(B, HISTORY_ONES, fh, h, w, device=dev, dtype=dt)
            tokens = torch.cat([embed(torch.cat([ones, hz], 1)), tokens], 1)
        c = self.controller
        dense_t = c.control_initial_combine_linear_dense(embed(d_in))
        sparse_t = c.control_initial_combine_linear_sparse(embed(s_in))

        t = torch.as_tensor(timesteps, device=dev, dtype=torch.float32).reshape(-1)
        if t.numel() == 1:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"timesteps must be a scalar or [B] = [{B}] (one per row); got {tuple(t.shape)}")
        e = self.time_embedding(timestep_embedding(t, cfg.freq_dim).to(dt))  # [B, D]
        t_mod = self.time_projection(e).view(B, 6, cfg.dim)  # model dtype, as the release
        e_base = t_mod.float()[:, None].expand(B, fh + nf, 6, cfg.dim)
        e_ctl = c.control_t_mod(t_mod).float()[:, None].expand(B, nf, 6, cfg.dim // 2)

        backend = resolve_backend(self.attention_backend, dev)
        pos_all = torch.arange(fh + nf, device=dev)
        actx = SelfAttnContext(*rope_cos_sin(pos_all, gh, gw, cfg.rope_split, cfg.rope_theta), None, backend,
                               fused=self.fused_ops)
        bctx = actx
        if fh:
            bctx = SelfAttnContext(*rope_cos_sin(pos_all[:nf], gh, gw, cfg.rope_split, cfg.rope_theta), None, backend,
                                   fused=self.fused_ops)
        if not isinstance(ctx, LongVieContext):
            raise TypeError("pass text_embeds (and image_embeds) or a context from this model's prepare_context")
        dense_kv, sparse_kv = ctx.dense_kv, ctx.sparse_kv

        for i, block in enumerate(self.blocks):
            tokens = block(tokens, e_base, ctx.cross_kv[i], actx, i)
            if i < c.control_layers:
                dense_t = c.control_blocks_dense[i](dense_t, e_ctl, dense_kv[i], bctx, i)
                sparse_t = c.control_blocks_sparse[i](sparse_t, e_ctl, sparse_kv[i], bctx, i)
                inj = c.control_combine_linears[i](dense_t + sparse_t)
                tokens = torch.cat([tokens[:, :fh], tokens[:, fh:] + inj], 1) if fh else tokens + inj
        tokens = tokens[:, fh:]
        out = self.head(tokens, e[:, None].expand(B, nf, cfg.dim))  # [B, nf, tpf, C*ph*pw]
        out = out.view(B, nf, gh, gw, pt, ph, pw, cfg.out_channels)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, cfg.out_channels, nf, h, w)


def load_controller(ctl: LongVieController, state: dict[str, torch.Tensor], source: str = "control weights") -> None:
    """Load a (prefix-stripped) release controller state into ``ctl``: a missing,
    unexpected or mis-shaped key is a :class:`CheckpointError` naming it."""
    check_state_dict(ctl, state, source=f"{source} (a LongVie 2 controller of {ctl.control_layers} layers)")
    ctl.load_state_dict({k: v.float() for k, v in state.items()})
