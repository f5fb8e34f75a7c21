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
====================  ==========================================  =============================

LongVie 2's dense / sparse control branches are the release's own model, beside this one:
:mod:`engine.models.longvie`.

``ControlPass.unguided`` names vector kinds (``waypoints``, ``camera``) the LAST row of a
batch does not get: with classifier-free guidance that row is the unconditional one, and
MiLA trains with waypoints dropped there (its CFG guides on them).
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
CONTROL_KINDS = ("warp", "waypoints", "camera")


@dataclass
class ControlPass:
    """Control inputs of one forward pass, sliced to its F latent frames.

    warp: latents [B, C_lat, F, h, w] (normalised, the VAE's latent space);
    waypoints: [B, F, 2*N_w]; camera: [B, F, 16]; mask: [B, F] (1 = control applies);
    unguided: vector kinds left out of the last row when B >= 2 (the CFG unconditional row).
    """

    warp: torch.Tensor | None = None
    waypoints: torch.Tensor | None = None
    camera: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    unguided: tuple[str, ...] = ()

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


def make_layer(kind: str, cfg, **kw) -> nn.Module:
    """A freshly (zero-)initialised control layer of ``kind`` for a model config."""
    if kind == "warp":
        return WarpInjection(cfg.latent_channels, cfg.dim, cfg.patch_size)
    if kind == "waypoints":
        return VectorEmbedding(int(kw["in_features"]), cfg.dim)
    if kind == "camera":
        return VectorEmbedding(int(kw.get("in_features", CAMERA_FEATURES)), cfg.dim)
    raise ValueError(f"unknown control kind {kind!r}; known: {CONTROL_KINDS}")


def layer_from_state(kind: str, cfg, state: dict[str, torch.Tensor]) -> nn.Module:
    """Build the layer of ``kind`` whose shape fits ``state`` (keys relative to the layer)."""
    if kind in ("waypoints", "camera"):
        w = state.get("mlp.0.weight")
        if w is None:
            raise ValueError(f"control layer {kind!r}: the checkpoint lacks 'mlp.0.weight'")
        return make_layer(kind, cfg, in_features=w.shape[1] // (2 * FOURIER_BANDS + 1))
    return make_layer(kind, cfg)


# ----------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------
def fitted_layer(layer: nn.Module, state: dict, source: str, device, dtype) -> nn.Module:
    """``layer`` loaded with ``state`` (float tensors by key) after one check that every key
    fits (a :class:`~engine.models.weights.CheckpointError` naming ``source`` and every
    missing / unexpected / mis-shaped key otherwise); returned frozen on device / dtype."""
    from .weights import check_state_dict

    check_state_dict(layer, state, source)
    layer.load_state_dict({k: v.float() for k, v in state.items()})
    return layer.to(device=device, dtype=dtype).requires_grad_(False)


def share_weights(base: nn.Module, model: nn.Module) -> nn.Module:
    """``model`` (built on the meta device, a superset of ``base``'s modules) given ``base``'s
    very parameter and buffer tensors (shared, not copied), its train/eval mode and
    ``source``; returns ``model``."""
    for name, t in [*base.named_parameters(remove_duplicate=False), *base.named_buffers(remove_duplicate=False)]:
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, t)
    model.train(base.training)
    if hasattr(base, "source"):
        model.source = base.source
    return model


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
        return share_weights(base, model)

    def enable_control(self, kind: str, **kw) -> nn.Module:
        """The control layer of ``kind`` (:data:`CONTROL_KINDS`), created zero-initialised
        on first use. An existing (e.g. loaded) layer is returned as is."""
        if kind not in self.control_layers:
            layer = make_layer(kind, self.config, **kw)
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
            self.control_layers[kind] = fitted_layer(layer_from_state(kind, self.config, sd), sd,
                                                     f"{source}: control layer {kind!r} of model {self.config.name!r}",
                                                     self.device, self.dtype)

    def _layer(self, kind: str) -> nn.Module:
        if kind not in self.control_layers:
            raise ValueError(f"model {self.config.name!r} has no {kind!r} control layer: load weights that hold it or "
                             f"call model.enable_control({kind!r}, ...) (zero-initialised)")
        return self.control_layers[kind]

    # -- forward ------------------------------------------------------------------
    def forward(self, latents, timesteps, text_embeds, *, image_embeds=None, condition=None, frame_positions=None,
                visibility=None, kv_cache=None, cache_slots=None, control: ControlPass | None = None) -> torch.Tensor:
        """As :meth:`WanDiT.forward`; ``control``: a :class:`ControlPass` of this pass's
        frames (warp latents, waypoint / camera vectors)."""
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
            if kind in control.unguided and B >= 2:  # the CFG unconditional row goes without it
                keep = torch.ones(B, 1, 1, device=emb.device, dtype=emb.dtype)
                keep[-1] = 0
                emb = emb * keep
            add = emb if add is None else add + emb
        if add is None:
            return e
        if mask is not None:
            add = add * mask[:, :, None]
        return (e.float() + add.reshape(B * gf, -1)).to(e.dtype)

    def _blocks(self, control: ControlPass, p: DiTPass, e0: torch.Tensor, mask) -> torch.Tensor:
        """The block loop with the warp tokens added before every block."""
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
        for i, block in enumerate(self.blocks):
            if warp is not None:
                tokens = tokens + warp
            tokens = block(tokens, e0, ctx_in.cross_kv[i], actx, i)
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
