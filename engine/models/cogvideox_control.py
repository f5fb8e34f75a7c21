"""The CogVideoX DiT with LongDWM's warp control: :class:`ControlledCogVideoXDiT`, a
:class:`~engine.models.cogvideox.CogVideoXDiT` subclass owning the control layers (the
CogVideoX twin of :class:`~engine.models.wan_control.ControlledWanDiT`).

LongDWM (arXiv 2506.01546, App. A; no code released) conditions its fine model on the
first frame warped along the trajectory. As for Wan, the warped frames are encoded by the
model's own VAE (here CogVideoX's, scaled latents) and embedded by a trainable patch
embedding of the DiT's patch size; its tokens [B, F, rows*cols, dim] are added to the video
tokens entering every transformer block (after the positional embeddings, before the
joint text-video attention). The layer starts at zero, so a model without trained warp
weights is the base model.

Checkpoint keys (beside the diffusers ``CogVideoXTransformer3DModel`` keys, in the same
safetensors): ``control_layers.warp.patch_embedding.weight`` [dim, 16, 1, p, p] and
``control_layers.warp.patch_embedding.bias`` [dim]; ``warp_embedding.*`` /
``trajectory_embedding.*`` are read as the same layer
(:func:`~engine.models.wan_control.split_control_state`). Only ``warp`` exists for
CogVideoX: MiLA's waypoint / camera embeddings are Wan layers.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .cogvideox import CogVideoXConfig, CogVideoXDiT, load_cogvideox
from .wan_control import ControlPass, WarpInjection, fitted_layer, share_weights

CONTROL_KINDS = ("warp",)


class ControlledCogVideoXDiT(CogVideoXDiT):
    """A :class:`CogVideoXDiT` that also takes ``control=`` (a
    :class:`~engine.models.wan_control.ControlPass` with ``warp`` latents [B, 16, F, h, w]
    and optionally ``mask`` [B, F]); without ``control`` its output is the base model's."""

    def __init__(self, cfg: CogVideoXConfig, attention_backend: str = "sdpa", text_timestep: str = "max"):
        super().__init__(cfg, attention_backend=attention_backend, text_timestep=text_timestep)
        self.control_layers = nn.ModuleDict()

    @classmethod
    def from_base(cls, base: CogVideoXDiT) -> "ControlledCogVideoXDiT":
        """A controlled model sharing ``base``'s parameter and buffer tensors (not copied),
        no control layers yet; ``base`` itself when it already is one."""
        if isinstance(base, cls):
            return base
        if not isinstance(base, CogVideoXDiT):
            raise TypeError(f"CogVideoX controls need a CogVideoX DiT, got {type(base).__name__}")
        with torch.device("meta"):
            model = cls(base.config, attention_backend=base.attention_backend, text_timestep=base.text_timestep)
        return share_weights(base, model)

    def _check_kind(self, kind: str) -> None:
        if kind not in CONTROL_KINDS:
            raise ValueError(f"CogVideoX model {self.config.name!r} takes only LongDWM's warp control "
                             f"({CONTROL_KINDS}); {kind!r} (MiLA's) exists for Wan DiTs")

    def enable_control(self, kind: str, **kw) -> nn.Module:
        """The (zero-initialised on first use) control layer of ``kind`` ("warp")."""
        self._check_kind(kind)
        if kind not in self.control_layers:
            cfg = self.config
            layer = WarpInjection(cfg.out_channels, cfg.dim, cfg.patch_size)
            self.control_layers[kind] = layer.to(device=self.device, dtype=self.dtype).requires_grad_(False)
        return self.control_layers[kind]

    def load_control_state(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load control layers from ``{"warp.<param>": tensor}`` (keys relative to
        ``control_layers``); a missing, unexpected or mis-shaped key is one error naming it."""
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for k, v in state.items():
            kind, _, rest = k.partition(".")
            if kind not in CONTROL_KINDS:
                raise ValueError(f"{source}: unknown CogVideoX control layer {kind!r} in key {k!r}; known: "
                                 f"{CONTROL_KINDS}")
            groups.setdefault(kind, {})[rest] = v
        for kind, sd in groups.items():
            cfg = self.config
            self.control_layers[kind] = fitted_layer(WarpInjection(cfg.out_channels, cfg.dim, cfg.patch_size), sd,
                                                     f"{source}: control layer {kind!r} of model {cfg.name!r}",
                                                     self.device, self.dtype)

    def forward(self, latents, timesteps, text_embeds, *, image_embeds=None, condition=None, frame_positions=None,
                visibility=None, kv_cache=None, cache_slots=None, control: ControlPass | None = None) -> torch.Tensor:
        """As :meth:`CogVideoXDiT.forward`; ``control``: the warp latents of this pass's frames."""
        kw = dict(image_embeds=image_embeds, condition=condition, frame_positions=frame_positions,
                  visibility=visibility, kv_cache=kv_cache, cache_slots=cache_slots)
        if control is None:
            return super().forward(latents, timesteps, text_embeds, **kw)
        for kind in control.kinds():
            self._check_kind(kind)
        if control.warp is None:
            return super().forward(latents, timesteps, text_embeds, **kw)
        if "warp" not in self.control_layers:
            raise ValueError(f"model {self.config.name!r} has no 'warp' control layer: load weights that hold it or "
                             f"call model.enable_control('warp') (zero-initialised)")
        B, _, nf, h, w = latents.shape
        z = torch.as_tensor(control.warp, device=self.device)
        if z.dim() != 5 or z.shape[0] != B or tuple(z.shape[2:]) != (nf, h, w):
            raise ValueError(f"control.warp must be latents [B, 16, F, h, w] = [{B}, 16, {nf}, {h}, {w}]; got "
                             f"{tuple(z.shape)}")
        tokens = self.control_layers["warp"](z)  # [B, F, rows*cols, dim]
        if control.mask is not None:
            m = torch.as_tensor(control.mask, device=self.device).float()
            m = m[None].expand(B, -1) if m.dim() == 1 else m
            if m.shape != (B, nf):
                raise ValueError(f"control.mask must be [B, F] = [{B}, {nf}]; got {tuple(m.shape)}")
            tokens = tokens * m[:, :, None, None].to(tokens.dtype)
        return super().forward(latents, timesteps, text_embeds, block_tokens=tokens, **kw)


def load_cogvideox_with_controls(path_or_preset, dtype=None, device=None, **kw) -> CogVideoXDiT:
    """:func:`~engine.models.cogvideox.load_cogvideox`, giving a :class:`ControlledCogVideoXDiT`
    with its trained layers when the checkpoint holds control keys (a plain
    :class:`CogVideoXDiT` otherwise)."""
    return load_cogvideox(path_or_preset, dtype=dtype, device=device, controlled_cls=ControlledCogVideoXDiT, **kw)


__all__ = ["CONTROL_KINDS", "ControlledCogVideoXDiT", "load_cogvideox_with_controls"]
