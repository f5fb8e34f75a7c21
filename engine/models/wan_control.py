"""The Wan DiT with control injections: :class:`ControlledWanDiT`, a :class:`WanDiT`
subclass owning the control layers, and the per-pass control tensors.

A :class:`ControlPass` holds the control inputs of ONE forward pass (already sliced to the
pass's frames); ``ControlledWanDiT.forward(..., control=ControlPass(...))`` applies them
through the layers in ``model.control_layers`` (an ``nn.ModuleDict``, empty until enabled
or loaded, so the model has exactly its base parameters and output):

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
0 get no control at all. In a checkpoint the layers' keys are ``control_layers.<kind>.*``
(:func:`split_control_state`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import ModelConfig
from .wan import DiTPass, SelfAttnContext, WanBlock, WanDiT

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


# ----------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------
class ControlledWanDiT(WanDiT):
    """A :class:`WanDiT` that also takes ``control=`` (a :class:`ControlPass`) through its
    ``control_layers``; without ``control`` its output is the base model's."""

    def __init__(self, cfg: ModelConfig, attention_backend: str = "auto", fused_ops: bool = False):
        super().__init__(cfg, attention_backend=attention_backend, fused_ops=fused_ops)
        self.control_layers = nn.ModuleDict()

    @classmethod
    def from_base(cls, base: WanDiT) -> "ControlledWanDiT":
        """A controlled model with ``base``'s config and its very parameter and buffer
        tensors (shared, not copied), no control layers yet; ``base`` itself when it
        already is one."""
        if isinstance(base, cls):
            return base
        if not isinstance(base, WanDiT):
            raise TypeError(f"controls need a Wan DiT, got {type(base).__name__}")
        with torch.device("meta"):
            model = cls(base.config, attention_backend=base.attention_backend, fused_ops=base.fused_ops)
        for name, t in [*base.named_parameters(remove_duplicate=False), *base.named_buffers(remove_duplicate=False)]:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, t)
        model.train(base.training)
        if hasattr(base, "source"):
            model.source = base.source
        return model

    def enable_control(self, kind: str, **kw) -> nn.Module:
        """The control layer of ``kind`` (:data:`CONTROL_KINDS`), created zero-initialised
        on first use (a ``dense``/``sparse`` branch takes ``num_blocks`` and starts as a copy
        of its half of the first blocks). An existing (e.g. loaded) layer is returned as is."""
        if kind not in self.control_layers:
            layer = make_layer(kind, self.config, **kw)
            if kind in ("dense", "sparse"):
                layer.copy_from(self)
            self.control_layers[kind] = layer.to(device=self.device, dtype=self.dtype).requires_grad_(False)
        return self.control_layers[kind]

    def load_control_state(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load control layers from ``{"<kind>.<param>": tensor}`` (keys relative to
        ``control_layers``), building each layer to fit; every mismatch is one error."""
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for k, v in state.items():
            kind, _, rest = k.partition(".")
            if kind not in CONTROL_KINDS:
                raise ValueError(f"{source}: unknown control layer {kind!r} in key {k!r}; known: {CONTROL_KINDS}")
            groups.setdefault(kind, {})[rest] = v
        for kind, sd in groups.items():
            layer = layer_from_state(kind, self.config, sd)
            expected = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
            missing = sorted(set(expected) - set(sd))
            unexpected = sorted(set(sd) - set(expected))
            bad = sorted(f"{k}: {tuple(sd[k].shape)} vs {expected[k]}" for k in set(sd) & set(expected)
                         if tuple(sd[k].shape) != expected[k])
            if missing or unexpected or bad:
                raise ValueError(f"{source}: control layer {kind!r} does not fit model {self.config.name!r}: "
                                 f"missing {missing[:10]}, unexpected {unexpected[:10]}, mis-shaped {bad[:10]}")
            layer.load_state_dict({k: v.float() for k, v in sd.items()})
            self.control_layers[kind] = layer.to(device=self.device, dtype=self.dtype).requires_grad_(False)

    def _layer(self, kind: str) -> nn.Module:
        if kind not in self.control_layers:
            raise ValueError(f"model {self.config.name!r} has no {kind!r} control layer: load weights that hold it or "
                             f"call model.enable_control({kind!r}, ...) (zero-initialised)")
        return self.control_layers[kind]

    # -- forward ------------------------------------------------------------------
    def forward(self, latents, timesteps, text_embeds, *, image_embeds=None, condition=None, frame_positions=None,
                visibility=None, kv_cache=None, cache_slots=None, control: ControlPass | None = None) -> torch.Tensor:
        """As :meth:`WanDiT.forward`; ``control``: a :class:`ControlPass` of this pass's
        frames (warp latents, waypoint / camera vectors, dense / sparse branch latents)."""
        kw = dict(image_embeds=image_embeds, condition=condition, frame_positions=frame_positions,
                  visibility=visibility, kv_cache=kv_cache, cache_slots=cache_slots)
        if control is None:
            return super().forward(latents, timesteps, text_embeds, **kw)
        p = self.prepare_pass(latents, timesteps, text_embeds, **kw)
        B, gf = p.dims[0], p.dims[4]
        mask = self._mask(control, B, gf)
        p.time = self._add_vectors(control, p.time, mask, B, gf)
        e0 = self.frame_modulation(p)
        return self.output(p, self._blocks(control, p, e0, mask))

    def _mask(self, control: ControlPass, B: int, gf: int) -> torch.Tensor | None:
        """control.mask [B, F] (or [F]) -> [B, gf] float32, or None."""
        if control.mask is None:
            return None
        pt = self.config.patch_size[0]
        m = torch.as_tensor(control.mask, device=self.device).float()
        if m.dim() == 1:
            m = m[None].expand(B, -1)
        if m.shape != (B, gf * pt):
            raise ValueError(f"control.mask must be [B, F] = [{B}, {gf * pt}]; got {tuple(m.shape)}")
        return m[:, ::pt]

    def _add_vectors(self, control: ControlPass, e: torch.Tensor, mask, B: int, gf: int) -> torch.Tensor:
        """Add the waypoint / camera embeddings (MiLA) to the per-frame embedding e [B*gf, D]."""
        pt = self.config.patch_size[0]
        add = None
        for kind in ("waypoints", "camera"):
            v = getattr(control, kind)
            if v is None:
                continue
            v = torch.as_tensor(v, device=self.device)
            if v.dim() != 3 or v.shape[:2] != (B, gf * pt):
                raise ValueError(f"control.{kind} must be [B, F, features] = [{B}, {gf * pt}, ...]; got {tuple(v.shape)}")
            emb = self._layer(kind)(v[:, ::pt])  # [B, gf, D] float32
            add = emb if add is None else add + emb
        if add is None:
            return e
        if mask is not None:
            add = add * mask[:, :, None]
        return (e.float() + add.reshape(B * gf, -1)).to(e.dtype)

    def _blocks(self, control: ControlPass, p: DiTPass, e0: torch.Tensor, mask) -> torch.Tensor:
        """The block loop with control injections: warp tokens before every block, control
        branches beside the first blocks (their outputs added after base block i)."""
        cfg = self.config
        B, nf, h, w = p.dims[:4]
        tokens, actx, ctx_in = p.tokens, p.attn, p.context
        m4 = None if mask is None else mask[:, :, None, None]

        def check_map(name, z):
            z = torch.as_tensor(z, device=self.device)
            if z.dim() != 5 or z.shape[0] != B or tuple(z.shape[2:]) != (nf, h, w):
                raise ValueError(f"control.{name} must be latents [B, C, F, h, w] = [{B}, {cfg.latent_channels}, {nf}, "
                                 f"{h}, {w}]; got {tuple(z.shape)}")
            return z

        warp = None
        if control.warp is not None:
            warp = self._layer("warp")(check_map("warp", control.warp))
            if m4 is not None:
                warp = warp * m4.to(warp.dtype)
            warp = warp.to(tokens.dtype)
        branches = []
        for kind in ("dense", "sparse"):
            z = getattr(control, kind)
            if z is None:
                continue
            if actx.cache is not None:
                raise ValueError(f"the {kind!r} control branch cannot run over a KV cache (its blocks keep no cache): "
                                 f"run the ar strategy with context='history'")
            br = self._layer(kind)
            hb = (tokens[..., br.features].float() + br.embed(check_map(kind, z)).float()).to(tokens.dtype)
            bctx = SelfAttnContext(actx.cos, actx.sin, actx.vis, actx.backend, fused=actx.fused)
            branches.append([br, hb, br.context_kv(ctx_in), e0[..., br.features].contiguous(), bctx])
        for i, block in enumerate(self.blocks):
            if warp is not None:
                tokens = tokens + warp
            tokens = block(tokens, e0, ctx_in.cross_kv[i], actx, i)
            for st in branches:
                br = st[0]
                if i < len(br.blocks):
                    st[1] = br.blocks[i](st[1], st[3], st[2][i], st[4], i)
                    inj = br.inject[i](st[1])
                    if m4 is not None:
                        inj = inj * m4.to(inj.dtype)
                    tokens = tokens + inj.to(tokens.dtype)
        return tokens


def split_control_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(base weights, control-layer weights) of a checkpoint. Control keys are
    ``control_layers.<kind>.<param>`` (also read: ``warp_embedding.*`` /
    ``trajectory_embedding.*`` for the warp patch embedding); a checkpoint without any
    gives an empty second dict."""
    base, ctl = {}, {}
    for k, v in state.items():
        if k.startswith("control_layers."):
            ctl[k[len("control_layers."):]] = v
            continue
        m = re.match(r"^(?:warp|traj|trajectory)_(?:patch_)?embedding\.(weight|bias)$", k)
        if m:
            ctl[f"warp.patch_embedding.{m.group(1)}"] = v
            continue
        base[k] = v
    return base, ctl
