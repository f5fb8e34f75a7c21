"""Our CogVideoX DiT (CogVideoX-2B class; 5B-style rotary embeddings too).

Architecture (one stream of [text tokens + video tokens], "expert" AdaLN):

- patch embedding: a 2-D conv (``patch_size`` x ``patch_size``) per latent frame, a linear
  text projection; the 2B model adds a fixed 3-D sin-cos positional embedding to the
  video tokens (``use_rotary_positional_embeddings=False``), the 5B models instead rotate
  queries/keys of the video tokens with 3-D RoPE (``True``); 5B-I2V also adds a learned
  positional table (``use_learned_positional_embeddings``) over text + video tokens.
- timestep embedding: sinusoidal (``flip_sin_to_cos``, ``freq_shift``) -> MLP (SiLU).
- blocks: CogVideoXLayerNormZero -- one LayerNorm, but separate shift/scale/gate for text
  and for video tokens -- then full self-attention over the joint sequence with a
  per-head LayerNorm on q and k, then the same for a GELU-tanh FFN shared by both streams.
- output: LayerNorm, AdaLN (shift, scale), linear projection, unpatchify.

Prediction type: CogVideoX is trained as **v-prediction on a DDPM-style discrete
schedule** (``scaled_linear`` betas, 1000 steps, zero-terminal-SNR rescaling; diffusers
samples it with CogVideoXDDIMScheduler / CogVideoXDPMScheduler, ``prediction_type =
"v_prediction"``): with x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps the network predicts
v = sqrt(a_t) eps - sqrt(1 - a_t) x0, so x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v. This is
*not* Wan's flow-matching velocity; a sampler must convert. The model returns its raw
output and knows nothing about the schedule. Timesteps are the integer-valued DDPM
indices 0..999 (any float works).

Call convention (mirrors :class:`engine.models.wan.WanDiT`)::

    model(latents [B,C,F,H,W], timesteps [B] or [B,F], text_embeds [B,L,text_dim],
          *, frame_positions=None, visibility=None) -> prediction [B,C_out,F,H,W]

- ``timesteps [B,F]``: CogVideoX modulates per sample; we modulate the *video* tokens of
  each frame with that frame's timestep embedding (blocks and output head). The *text*
  tokens get one timestep per sample chosen by ``text_timestep`` (constructor argument):
  ``"max"`` (default: the noisiest frame, i.e. the denoising step of the frames being
  generated -- clean context frames at t=0 do not pull the text stream towards "clean"),
  ``"mean"`` or ``"first"``. [B,F] with equal rows equals [B].
- ``frame_positions [F]``: absolute latent-frame positions. The sin-cos embedding and the
  temporal RoPE axis are evaluated at these positions (default 0..F-1, which is what
  diffusers does); a learned table is indexed at them (integers inside the table).
- ``visibility`` bool [F,F]: video tokens of frame i see video tokens of frame j iff
  ``visibility[i, j]``; text tokens see every token and every token sees them (the text
  tokens get their own frame id F in an extended [F+1, F+1] pattern).

Parameter names follow diffusers' CogVideoXTransformer3DModel except three renames
(``attn1.to_out.0`` -> ``attn1.to_out``, ``ff.net.0.proj`` -> ``ff.0``, ``ff.net.2`` ->
``ff.2``); :func:`load_cogvideox` reads diffusers folders directly.

Sampling runs through the engine's one runtime (``engine.generate`` on a CogVideoX model
or pipeline root): the DiT wrapped as a flow model
(:class:`engine.models.adapters.VPredictionAdapter`), CogVideoX's DDIM / DPM as the flow
Euler / DPM-Solver++ SDE samplers on its timesteps (:mod:`engine.sampling`), the
scheduler config of the model's pipeline root (:func:`cogvideox_scheduler_for`); equal to
diffusers' CogVideoXPipeline and CogVideoXImageToVideoPipeline (the image latents of
:func:`engine.models.cogvideox_vae.i2v_image_latents` on channels, in_channels 32).
Dynamic CFG (``use_dynamic_cfg``) exists only in the tests' pipeline reference
(``tests/cogvideox_reference.py``). The VAE and T5 encoder live in :mod:`engine.models.cogvideox_vae`
and :mod:`engine.models.cogvideox_text`.

Not supported: CogVideoX 1.5 (``patch_size_t``, ``ofs_embed_dim``), KV caches.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import FrameVisibility, attention, resolve_backend
from ..sampling import CogVideoXSchedule, cogvideox_scheduler_kind
from .wan import apply_rope, init_random_weights
from .weights import CheckpointError, check_state_dict, read_state_dict, strip_prefixes

TEXT_TIMESTEP_MODES = ("max", "mean", "first")


# ----------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CogVideoXConfig:
    """Architecture of a CogVideoX(1.0)-style DiT; field names follow diffusers' config
    where they exist. ``dim = num_heads * head_dim``; the FFN is ``4 * dim`` wide.

    ``sample_height`` / ``sample_width`` (latent pixels) and ``sample_frames`` (video
    frames) are the training size: the rotary grid is laid out relative to it, and a
    learned positional table only exists for it. ``patch_size`` is (1, p, p) like Wan's.
    ``prediction_type`` documents the training objective; the model itself ignores it.
    """

    name: str = "custom"
    num_heads: int = 30
    head_dim: int = 64
    in_channels: int = 16
    out_channels: int = 16
    num_layers: int = 30
    time_embed_dim: int = 512
    text_dim: int = 4096
    patch_size: tuple[int, int, int] = (1, 2, 2)
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    attention_bias: bool = True
    patch_bias: bool = True
    norm_elementwise_affine: bool = True
    norm_eps: float = 1e-5
    qk_norm_eps: float = 1e-6
    use_rotary_positional_embeddings: bool = False
    use_learned_positional_embeddings: bool = False
    sample_height: int = 60
    sample_width: int = 90
    sample_frames: int = 49
    temporal_compression_ratio: int = 4
    max_text_seq_length: int = 226
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    rope_theta: float = 10000.0
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    latent_channels: int = 16
    fps: int = 8
    prediction_type: str = "v_prediction"

    def __post_init__(self) -> None:
        pt, ph, pw = self.patch_size
        if pt != 1 or ph != pw:
            raise ValueError(f"CogVideoXConfig: patch_size must be (1, p, p) (CogVideoX 1.0), got {self.patch_size}")
        if self.dim % 16:
            raise ValueError(f"CogVideoXConfig: dim={self.dim} must be divisible by 16 (3-D sin-cos embedding)")
        if self.use_rotary_positional_embeddings and self.head_dim % 16:
            raise ValueError(f"CogVideoXConfig: head_dim={self.head_dim} must be divisible by 16 for 3-D RoPE")
        if self.use_learned_positional_embeddings and not self.use_rotary_positional_embeddings:
            raise ValueError("CogVideoXConfig: learned positional embeddings come only with rotary ones (5B-I2V)")

    @property
    def dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def ffn_dim(self) -> int:
        return 4 * self.dim

    @property
    def text_len(self) -> int:
        return self.max_text_seq_length

    @property
    def image_dim(self) -> None:
        return None  # no CLIP image tokens (CogVideoX I2V concatenates latents on channels)

    @property
    def is_i2v(self) -> bool:
        return False

    @property
    def patch(self) -> int:
        return self.patch_size[1]

    @property
    def sample_grid(self) -> tuple[int, int, int]:
        """(frames, rows, cols) of tokens at the training size."""
        f = (self.sample_frames - 1) // self.temporal_compression_ratio + 1
        return f, self.sample_height // self.patch, self.sample_width // self.patch

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Head channels given to RoPE's (time, height, width) axes: d/4, 3d/8, 3d/8."""
        d = self.head_dim
        return d // 4, d // 8 * 3, d // 8 * 3

    def replace(self, **changes) -> "CogVideoXConfig":
        return dataclasses.replace(self, **changes)


_TINY = dict(num_heads=2, head_dim=32, num_layers=2, time_embed_dim=32, text_dim=32, max_text_seq_length=16,
             sample_height=16, sample_width=16, sample_frames=13)

COGVIDEOX_PRESETS: dict[str, CogVideoXConfig] = {
    "cogvideox-2b": CogVideoXConfig(name="cogvideox-2b"),
    "cogvideox-5b": CogVideoXConfig(
        name="cogvideox-5b", num_heads=48, num_layers=42, use_rotary_positional_embeddings=True
    ),
    "tiny-cogvideox": CogVideoXConfig(name="tiny-cogvideox", **_TINY),
    "tiny-cogvideox-rope": CogVideoXConfig(name="tiny-cogvideox-rope", use_rotary_positional_embeddings=True, **_TINY),
    # CogVideoX-I2V shaped (the image latent on the channels): LongDWM's fine model in recipe "longdwm"
    "tiny-cogvideox-i2v": CogVideoXConfig(name="tiny-cogvideox-i2v", in_channels=32, **_TINY),
}


# diffusers config.json key -> our field (same meaning).
_JSON_FIELDS = {
    "num_attention_heads": "num_heads", "attention_head_dim": "head_dim", "in_channels": "in_channels",
    "out_channels": "out_channels", "num_layers": "num_layers", "time_embed_dim": "time_embed_dim",
    "text_embed_dim": "text_dim", "flip_sin_to_cos": "flip_sin_to_cos", "freq_shift": "freq_shift",
    "attention_bias": "attention_bias", "patch_bias": "patch_bias", "norm_elementwise_affine": "norm_elementwise_affine",
    "norm_eps": "norm_eps", "use_rotary_positional_embeddings": "use_rotary_positional_embeddings",
    "use_learned_positional_embeddings": "use_learned_positional_embeddings", "sample_height": "sample_height",
    "sample_width": "sample_width", "sample_frames": "sample_frames",
    "temporal_compression_ratio": "temporal_compression_ratio", "max_text_seq_length": "max_text_seq_length",
    "spatial_interpolation_scale": "spatial_interpolation_scale",
    "temporal_interpolation_scale": "temporal_interpolation_scale",
}


def config_from_diffusers_json(cfg: dict) -> dict:
    """CogVideoXConfig fields from a diffusers ``config.json``; refuses variants we do not
    implement (CogVideoX 1.5, other activations) with a message that says so."""
    cls = cfg.get("_class_name")
    if cls is not None and cls != "CogVideoXTransformer3DModel":
        raise CheckpointError(f"config.json describes a {cls}, not a CogVideoXTransformer3DModel")
    if cfg.get("patch_size_t") is not None or cfg.get("ofs_embed_dim"):
        raise CheckpointError(
            "CogVideoX 1.5 checkpoints (patch_size_t / ofs_embed_dim) are not supported; only CogVideoX 1.0 (2B / 5B)"
        )
    for key, want in (("activation_fn", "gelu-approximate"), ("timestep_activation_fn", "silu")):
        if cfg.get(key, want) != want:
            raise CheckpointError(f"config.json has {key}={cfg[key]!r}; only {want!r} is supported")
    out = {ours: cfg[theirs] for theirs, ours in _JSON_FIELDS.items() if cfg.get(theirs) is not None}
    if "patch_size" in cfg:
        p = cfg["patch_size"]
        out["patch_size"] = (1, p, p) if isinstance(p, int) else tuple(p)
    return out


# ----------------------------------------------------------------------------------
# embeddings
# ----------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, shift: float = 0.0) -> torch.Tensor:
    """DDPM sinusoidal embedding [N, dim] (float32) of timesteps t [N]; frequencies
    exp(-ln(1e4) i / (dim/2 - shift)); ``flip_sin_to_cos`` puts the cosine half first."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([args.cos(), args.sin()] if flip_sin_to_cos else [args.sin(), args.cos()], dim=-1)
    return F.pad(emb, (0, dim % 2))


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[sin | cos] embedding [M, dim] (float64) of positions pos [M], frequencies 1e4^(-2i/dim)."""
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0))
    ang = pos.reshape(-1).double()[:, None] * omega[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


def sincos_3d(dim: int, frame_positions: torch.Tensor, rows: int, cols: int,
              spatial_scale: float, temporal_scale: float) -> torch.Tensor:
    """CogVideoX's fixed 3-D positional embedding, float32 [F, rows*cols, dim]: channels
    [time (dim/4) | column (3dim/8) | row (3dim/8)], tokens row-major; spatial positions
    are index / ``spatial_scale``, temporal ones frame_position / ``temporal_scale``."""
    dev = frame_positions.device
    ds = 3 * dim // 4
    col = (torch.arange(cols, dtype=torch.float32, device=dev) / spatial_scale)[None, :].expand(rows, cols)
    row = (torch.arange(rows, dtype=torch.float32, device=dev) / spatial_scale)[:, None].expand(rows, cols)
    spatial = torch.cat([sincos_1d(ds // 2, col), sincos_1d(ds // 2, row)], dim=1)  # [rows*cols, 3dim/4]
    temporal = sincos_1d(dim // 4, frame_positions.float() / temporal_scale)  # [F, dim/4]
    nf, n = temporal.shape[0], spatial.shape[0]
    out = torch.cat([temporal[:, None].expand(nf, n, -1), spatial[None].expand(nf, n, -1)], dim=-1)
    return out.float()


def _crop_region(rows: int, cols: int, base_rows: int, base_cols: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (top, left), (bottom, right) box that a rows x cols grid is resized/centred into
    on the base (training) grid, keeping its aspect ratio (as CogVideoX's pipeline does)."""
    if rows / cols > base_rows / base_cols:
        rh, rw = base_rows, int(round(base_rows / rows * cols))
    else:
        rw, rh = base_cols, int(round(base_cols / cols * rows))
    top, left = int(round((base_rows - rh) / 2.0)), int(round((base_cols - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


def rope_cos_sin(cfg: CogVideoXConfig, frame_positions: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real 3-D RoPE tables cos, sin: float32 [F*rows*cols, head_dim/2] (token order frame,
    row, col). Head channels split (time, row, col) = (d/4, 3d/8, 3d/8); time at the frame
    positions; rows/cols spread over their crop box of the training grid:
    pos_i = start + i * (end * (n-1)/n - start)/(n-1) (the CogVideoX pipeline's grid)."""
    dev = frame_positions.device
    _, base_r, base_c = cfg.sample_grid
    (top, left), (bottom, right) = _crop_region(rows, cols, base_r, base_c)
    grid_r = torch.linspace(top, bottom * (rows - 1) / rows, rows, dtype=torch.float32, device=dev)
    grid_c = torch.linspace(left, right * (cols - 1) / cols, cols, dtype=torch.float32, device=dev)
    nf = frame_positions.numel()
    axes = (
        frame_positions.float().view(nf, 1, 1).expand(nf, rows, cols),
        grid_r.view(1, rows, 1).expand(nf, rows, cols),
        grid_c.view(1, 1, cols).expand(nf, rows, cols),
    )
    cos, sin = [], []
    for d, grid in zip(cfg.rope_split, axes):
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=dev) / d))
        ang = grid.reshape(-1, 1) * inv[None, :]
        cos.append(ang.cos())
        sin.append(ang.sin())
    return torch.cat(cos, -1), torch.cat(sin, -1)


# ----------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------
def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm in float32 (returns float32)."""
    w = norm.weight.float() if norm.weight is not None else None
    b = norm.bias.float() if norm.bias is not None else None
    return F.layer_norm(x.float(), norm.normalized_shape, w, b, norm.eps)


class PatchEmbed(nn.Module):
    """Per-frame 2-D patch conv for video latents, a linear projection for text tokens,
    and (5B-I2V) a learned positional table ``pos_embedding`` [1, L_max + N, dim]."""

    def __init__(self, cfg: CogVideoXConfig):
        super().__init__()
        p = cfg.patch
        self.proj = nn.Conv2d(cfg.in_channels, cfg.dim, kernel_size=p, stride=p, bias=cfg.patch_bias)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.dim)
        if cfg.use_learned_positional_embeddings:
            nf, r, c = cfg.sample_grid
            self.register_buffer("pos_embedding", torch.zeros(1, cfg.max_text_seq_length + nf * r * c, cfg.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,C,F,H,W] -> tokens [B, F, rows*cols, dim]."""
        B, C, nf, H, W = x.shape
        y = self.proj(x.transpose(1, 2).reshape(B * nf, C, H, W))  # [B*F, D, r, c]
        return y.flatten(2).transpose(1, 2).reshape(B, nf, -1, y.shape[1])


class TimestepMLP(nn.Module):
    """linear_1 -> SiLU -> linear_2 on the sinusoidal timestep embedding."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ExpertAdaLN(nn.Module):
    """CogVideoXLayerNormZero: one LayerNorm, separate (shift, scale, gate) for video
    tokens and for text tokens, all from linear(SiLU(time embedding))."""

    def __init__(self, cond_dim: int, dim: int, affine: bool, eps: float):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)

    def forward(self, video: torch.Tensor, text: torch.Tensor, silu_v: torch.Tensor, silu_t: torch.Tensor):
        """video [B,F,T,D], text [B,L,D], silu_v [B,F,E] / silu_t [B,E] = SiLU(time embedding).
        Returns normed+modulated video, text (their dtype) and gates [B,F,1,D], [B,1,D] (float32)."""
        shift, scale, gate = self.linear(silu_v).float().chunk(6, dim=-1)[:3]
        t_shift, t_scale, t_gate = self.linear(silu_t).float().chunk(6, dim=-1)[3:]
        v = _layer_norm(self.norm, video) * (1 + scale[:, :, None]) + shift[:, :, None]
        t = _layer_norm(self.norm, text) * (1 + t_scale[:, None]) + t_shift[:, None]
        return v.to(video.dtype), t.to(text.dtype), gate[:, :, None], t_gate[:, None]


class JointAttention(nn.Module):
    """Full self-attention over [text + video] tokens with a per-head LayerNorm on q and k
    and (optionally) RoPE on the video tokens' q and k."""

    def __init__(self, cfg: CogVideoXConfig):
        super().__init__()
        dim, bias = cfg.dim, cfg.attention_bias
        self.num_heads = cfg.num_heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(dim, dim, bias=bias)
        self.to_v = nn.Linear(dim, dim, bias=bias)
        self.norm_q = nn.LayerNorm(cfg.head_dim, eps=cfg.qk_norm_eps)
        self.norm_k = nn.LayerNorm(cfg.head_dim, eps=cfg.qk_norm_eps)
        self.to_out = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, n_text: int, rope, vis: FrameVisibility | None, backend: str) -> torch.Tensor:
        """x [B, L+N, D] (text first) -> [B, L+N, D]."""
        h = self.num_heads
        q = _layer_norm(self.norm_q, self.to_q(x).unflatten(-1, (h, -1))).to(x.dtype)  # [B,S,H,Dh]
        k = _layer_norm(self.norm_k, self.to_k(x).unflatten(-1, (h, -1))).to(x.dtype)
        v = self.to_v(x).unflatten(-1, (h, -1))
        if rope is not None:
            cos, sin = rope
            q = torch.cat([q[:, :n_text], apply_rope(q[:, n_text:], cos, sin)], dim=1)
            k = torch.cat([k[:, :n_text], apply_rope(k[:, n_text:], cos, sin)], dim=1)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), vis, backend=backend)
        return self.to_out(out.transpose(1, 2).flatten(2))


class CogVideoXBlock(nn.Module):
    """Expert AdaLN -> joint attention -> gated residual; expert AdaLN -> shared GELU-tanh
    FFN -> gated residual."""

    def __init__(self, cfg: CogVideoXConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = ExpertAdaLN(cfg.time_embed_dim, dim, cfg.norm_elementwise_affine, cfg.norm_eps)
        self.attn1 = JointAttention(cfg)
        self.norm2 = ExpertAdaLN(cfg.time_embed_dim, dim, cfg.norm_elementwise_affine, cfg.norm_eps)
        self.ff = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))

    def forward(self, video, text, silu_v, silu_t, rope, vis, backend):
        """video [B,F,T,D], text [B,L,D] -> updated (video, text)."""
        B, nf, T, D = video.shape
        L = text.shape[1]
        hv, ht, gv, gt = self.norm1(video, text, silu_v, silu_t)
        y = self.attn1(torch.cat([ht, hv.view(B, nf * T, D)], dim=1), L, rope, vis, backend)
        video = (video.float() + gv * y[:, L:].view(B, nf, T, D).float()).to(video.dtype)
        text = (text.float() + gt * y[:, :L].float()).to(text.dtype)
        hv, ht, gv, gt = self.norm2(video, text, silu_v, silu_t)
        y = self.ff(torch.cat([ht, hv.view(B, nf * T, D)], dim=1))
        video = (video.float() + gv * y[:, L:].view(B, nf, T, D).float()).to(video.dtype)
        text = (text.float() + gt * y[:, :L].float()).to(text.dtype)
        return video, text


class OutputNorm(nn.Module):
    """AdaLN of the output: LayerNorm(x) * (1 + scale) + shift from linear(SiLU(temb))."""

    def __init__(self, cond_dim: int, dim: int, affine: bool, eps: float):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor, silu_v: torch.Tensor) -> torch.Tensor:
        """x [B,F,T,D], silu_v [B,F,E] -> [B,F,T,D] float32."""
        shift, scale = self.linear(silu_v).float().chunk(2, dim=-1)
        return _layer_norm(self.norm, x) * (1 + scale[:, :, None]) + shift[:, :, None]


@dataclass
class CogVideoXContext:
    """Projected text tokens [B, L, dim] (``patch_embed.text_proj`` applied once); reuse it
    across steps. Unlike Wan's cross-attention context, the text stream is then updated
    inside every forward pass."""

    text: torch.Tensor

    @property
    def batch(self) -> int:
        return self.text.shape[0]


# ----------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------
class CogVideoXDiT(nn.Module):
    """CogVideoX diffusion transformer (see the module docstring for the call convention
    and the v-prediction objective)."""

    def __init__(self, cfg: CogVideoXConfig, attention_backend: str = "sdpa", text_timestep: str = "max"):
        super().__init__()
        if text_timestep not in TEXT_TIMESTEP_MODES:
            raise ValueError(f"text_timestep must be one of {TEXT_TIMESTEP_MODES}, got {text_timestep!r}")
        self.config = cfg
        self.attention_backend = attention_backend
        self.text_timestep = text_timestep
        self.fused_ops = False  # no fused kernels for this model (attribute kept for the runtime)
        dim = cfg.dim
        self.patch_embed = PatchEmbed(cfg)
        self.time_embedding = TimestepMLP(dim, cfg.time_embed_dim)
        self.transformer_blocks = nn.ModuleList([CogVideoXBlock(cfg) for _ in range(cfg.num_layers)])
        self.norm_final = nn.LayerNorm(dim, cfg.norm_eps, cfg.norm_elementwise_affine)
        self.norm_out = OutputNorm(cfg.time_embed_dim, dim, cfg.norm_elementwise_affine, cfg.norm_eps)
        self.proj_out = nn.Linear(dim, cfg.patch ** 2 * cfg.out_channels)

    # -- helpers ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    def tokens_per_frame(self, height: int, width: int) -> int:
        """Video tokens of one latent frame of latent size (height, width)."""
        return (height // self.config.patch) * (width // self.config.patch)

    def prepare_context(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor | None = None) -> CogVideoXContext:
        """Project text embeddings [B, L, text_dim] (T5 states) once."""
        cfg = self.config
        if image_embeds is not None:
            raise ValueError(f"model {cfg.name!r} takes no image_embeds (CogVideoX has no CLIP image tokens)")
        if not isinstance(text_embeds, torch.Tensor) or text_embeds.dim() != 3 or text_embeds.shape[-1] != cfg.text_dim:
            shape = tuple(text_embeds.shape) if isinstance(text_embeds, torch.Tensor) else type(text_embeds).__name__
            raise ValueError(f"text_embeds must be [B, L, {cfg.text_dim}] for model {cfg.name!r}; got {shape}")
        text = self.patch_embed.text_proj(text_embeds.to(self.device, self.dtype))
        if cfg.use_learned_positional_embeddings:
            if text.shape[1] != cfg.max_text_seq_length:
                raise ValueError(
                    f"model {cfg.name!r} has a learned positional table over exactly {cfg.max_text_seq_length} "
                    f"text tokens; got {text.shape[1]} (pad the prompt embedding)"
                )
            text = text + self.patch_embed.pos_embedding[:, : text.shape[1]].to(text.dtype)
        return CogVideoXContext(text)

    def _check_latents(self, latents: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        if not isinstance(latents, torch.Tensor) or latents.dim() != 5:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must be [B, C, F, H, W]; got {shape}")
        if condition is not None:
            if condition.dim() != 5 or condition.shape[0] != latents.shape[0] or condition.shape[2:] != latents.shape[2:]:
                raise ValueError(
                    f"condition {tuple(condition.shape)} must match latents {tuple(latents.shape)} in batch, frames and size"
                )
            latents = torch.cat([latents, condition.to(latents.dtype)], dim=1)
        if latents.shape[1] != cfg.in_channels:
            raise ValueError(
                f"model {cfg.name!r} takes {cfg.in_channels} latent channels (latents + condition), got {latents.shape[1]}"
            )
        _, _, _, h, w = latents.shape
        if h % cfg.patch or w % cfg.patch:
            raise ValueError(f"latent size (H={h}, W={w}) must be divisible by the patch size {cfg.patch}")
        return latents

    def _time(self, timesteps, batch: int, frames: int) -> torch.Tensor:
        t = torch.as_tensor(timesteps, device=self.device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1 and t.shape[0] != batch:
            raise ValueError(f"timesteps [B] must have B={batch} entries, got {t.shape[0]}")
        if t.dim() not in (1, 2) or (t.dim() == 2 and t.shape != (batch, frames)):
            raise ValueError(f"timesteps must be [B] or [B, F] = [{batch}, {frames}]; got {tuple(t.shape)}")
        return t

    def _embed_time(self, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        e = timestep_embedding(t.reshape(-1), cfg.dim, cfg.flip_sin_to_cos, cfg.freq_shift)
        return self.time_embedding(e.to(self.dtype))

    def _positions(self, frame_positions, nf: int) -> torch.Tensor:
        if frame_positions is None:
            return torch.arange(nf, device=self.device)
        pos = torch.as_tensor(frame_positions, device=self.device)
        if pos.shape != (nf,):
            raise ValueError(f"frame_positions must have one entry per latent frame ({nf}), got {tuple(pos.shape)}")
        return pos

    def _learned_video_pos(self, pos: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        cfg = self.config
        tf, tr, tc = cfg.sample_grid
        if (rows, cols) != (tr, tc):
            raise ValueError(
                f"model {cfg.name!r} has a learned positional table for a {tr}x{tc} token grid "
                f"(latent {cfg.sample_height}x{cfg.sample_width}); got {rows}x{cols}"
            )
        if pos.is_floating_point() and not bool((pos == pos.round()).all()):
            raise ValueError("a learned positional table needs integer frame_positions")
        pos = pos.long()
        if bool((pos < 0).any()) or bool((pos >= tf).any()):
            raise ValueError(f"frame_positions must lie in [0, {tf}) for the learned positional table; got {pos.tolist()}")
        table = self.patch_embed.pos_embedding[0, cfg.max_text_seq_length:].view(tf, tr * tc, cfg.dim)
        return table.index_select(0, pos)

    # -- forward ------------------------------------------------------------------
    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeds: torch.Tensor | CogVideoXContext,
        *,
        image_embeds: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        frame_positions: torch.Tensor | list[int] | None = None,
        visibility: torch.Tensor | None = None,
        kv_cache=None,
        cache_slots=None,
        block_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw prediction (v-prediction for CogVideoX checkpoints).

        latents [B,C,F,H,W]; timesteps [B] or [B,F] (0..999); text_embeds [B,L,text_dim]
        or a :class:`CogVideoXContext`; condition [B,C',F,H,W] appended to latents'
        channels (image-conditioned variants); frame_positions [F] absolute latent-frame
        positions; visibility bool [F,F] over this pass's frames (default: full);
        block_tokens [B, F, rows*cols, dim] added to the video tokens entering every
        transformer block (a control's injection, e.g. LongDWM's warp: see
        :mod:`engine.models.cogvideox_control`). Returns [B, out_channels, F, H, W].
        """
        cfg = self.config
        if kv_cache is not None or cache_slots is not None:
            raise ValueError("CogVideoXDiT takes no KV cache: put the clean context frames in the sequence (frame_positions + visibility) instead")
        x = self._check_latents(latents, condition).to(self.dtype)
        B, _, nf, h, w = x.shape
        p = cfg.patch
        rows, cols = h // p, w // p
        tpf = rows * cols
        if isinstance(text_embeds, CogVideoXContext):
            if image_embeds is not None:
                raise ValueError(f"model {cfg.name!r} takes no image_embeds")
            ctx = text_embeds
        else:
            ctx = self.prepare_context(text_embeds, image_embeds)
        if ctx.batch != B:
            raise ValueError(f"text context has batch {ctx.batch} but latents have batch {B}")
        text = ctx.text
        L = text.shape[1]
        pos = self._positions(frame_positions, nf)

        # time embeddings: per frame for video tokens, one per sample for text tokens
        t = self._time(timesteps, B, nf)
        if t.dim() == 1:
            emb_t = self._embed_time(t)  # [B, E]
            emb_v = emb_t[:, None].expand(B, nf, -1)
        else:
            emb_v = self._embed_time(t).view(B, nf, -1)
            if self.text_timestep == "max":
                tt = t.max(dim=1).values
            elif self.text_timestep == "mean":
                tt = t.float().mean(dim=1)
            else:
                tt = t[:, 0]
            emb_t = self._embed_time(tt)
        silu_v, silu_t = F.silu(emb_v), F.silu(emb_t)

        # tokens and positions
        video = self.patch_embed(x)  # [B, F, T, D]
        rope = None
        if cfg.use_rotary_positional_embeddings:
            rope = rope_cos_sin(cfg, pos, rows, cols)
        else:
            pe = sincos_3d(cfg.dim, pos, rows, cols, cfg.spatial_interpolation_scale, cfg.temporal_interpolation_scale)
            video = video + pe.to(video.dtype)
        if cfg.use_learned_positional_embeddings:
            video = video + self._learned_video_pos(pos, rows, cols).to(video.dtype)

        # visibility: frames 0..F-1 for video tokens, frame F for the text tokens
        backend = resolve_backend(self.attention_backend, self.device)
        vis = None
        if visibility is not None:
            visibility = torch.as_tensor(visibility, device=self.device)
            if visibility.shape != (nf, nf) or visibility.dtype != torch.bool:
                raise ValueError(
                    f"visibility must be bool [{nf}, {nf}] (frames x frames); got {tuple(visibility.shape)} {visibility.dtype}"
                )
            full = torch.ones(nf + 1, nf + 1, dtype=torch.bool, device=self.device)
            full[:nf, :nf] = visibility
            ids = torch.cat([
                torch.full((L,), nf, dtype=torch.long, device=self.device),
                torch.arange(nf, device=self.device).repeat_interleave(tpf),
            ])
            vis = FrameVisibility(ids, ids, full)

        if block_tokens is not None and tuple(block_tokens.shape) != tuple(video.shape):
            raise ValueError(f"block_tokens must be [B, F, tokens, dim] = {list(video.shape)}; got "
                             f"{list(block_tokens.shape)}")
        for block in self.transformer_blocks:
            if block_tokens is not None:
                video = video + block_tokens.to(video.dtype)
            video, text = block(video, text, silu_v, silu_t, rope, vis, backend)

        y = self.norm_out(_layer_norm(self.norm_final, video), silu_v)  # float32 [B,F,T,D]
        out = self.proj_out(y.to(video.dtype))  # [B, F, T, C*p*p]
        out = out.view(B, nf, rows, cols, cfg.out_channels, p, p)
        return out.permute(0, 4, 1, 2, 5, 3, 6).reshape(B, cfg.out_channels, nf, h, w)


# ----------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------
_DIFFUSERS_RENAMES = [
    (re.compile(r"^(transformer_blocks\.\d+\.attn1)\.to_out\.0\."), r"\1.to_out."),
    (re.compile(r"^(transformer_blocks\.\d+)\.ff\.net\.0\.proj\."), r"\1.ff.0."),
    (re.compile(r"^(transformer_blocks\.\d+)\.ff\.net\.2\."), r"\1.ff.2."),
]


def diffusers_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers CogVideoXTransformer3DModel state dict to our names (wrapper
    prefixes stripped; unknown keys kept, and reported later as unexpected)."""
    out = {}
    for key, value in strip_prefixes(dict(state)).items():
        for pat, rep in _DIFFUSERS_RENAMES:
            key, n = pat.subn(rep, key)
            if n:
                break
        out[key] = value
    return out


def infer_cogvideox_config(state: dict[str, torch.Tensor], hints: dict | None = None) -> CogVideoXConfig:
    """The architecture of a state dict in our key layout; ``hints`` (from config.json)
    win. Whether positions are sin-cos or rotary does not show in the weights: without a
    config.json a preset of the same width decides, else an error asks for one."""
    need = ["patch_embed.proj.weight", "patch_embed.text_proj.weight", "time_embedding.linear_1.weight",
            "proj_out.weight", "transformer_blocks.0.attn1.norm_q.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(
            f"cannot infer the architecture: missing {missing}. Is this a CogVideoX DiT checkpoint? "
            f"First keys: {sorted(state)[:8]}"
        )
    pe = state["patch_embed.proj.weight"]
    if pe.dim() != 4:
        raise CheckpointError(f"patch_embed.proj.weight has shape {tuple(pe.shape)}; expected a 2-D conv [D, C, p, p]")
    dim, in_ch, p = pe.shape[0], pe.shape[1], pe.shape[2]
    head_dim = state["transformer_blocks.0.attn1.norm_q.weight"].shape[0]
    fields = dict(
        num_heads=dim // head_dim,
        head_dim=head_dim,
        in_channels=in_ch,
        patch_size=(1, p, p),
        num_layers=1 + max(int(m.group(1)) for k in state if (m := re.match(r"transformer_blocks\.(\d+)\.", k))),
        time_embed_dim=state["time_embedding.linear_1.weight"].shape[0],
        text_dim=state["patch_embed.text_proj.weight"].shape[1],
        out_channels=state["proj_out.weight"].shape[0] // (p * p),
        use_learned_positional_embeddings="patch_embed.pos_embedding" in state,
    )
    hints = dict(hints or {})
    if "use_rotary_positional_embeddings" not in hints:
        same = [c for c in COGVIDEOX_PRESETS.values() if c.dim == dim]
        if not same:
            raise CheckpointError(
                f"cannot tell sin-cos from rotary positional embeddings for dim={dim}: put the diffusers "
                f"config.json beside the weights or pass config=CogVideoXConfig(...)"
            )
        hints.setdefault("use_rotary_positional_embeddings", same[0].use_rotary_positional_embeddings)
        if fields["use_learned_positional_embeddings"]:
            hints["use_rotary_positional_embeddings"] = True
    fields.update(hints)
    match = next(
        (n for n, c in COGVIDEOX_PRESETS.items()
         if all(getattr(c, k) == v for k, v in fields.items() if k != "name")), None
    )
    fields.setdefault("name", match or "custom")
    try:
        return CogVideoXConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"inferred an invalid CogVideoX architecture {fields}: {exc}") from exc


def build_cogvideox(config: CogVideoXConfig, *, seed: int = 0, attention_backend: str = "sdpa",
                    text_timestep: str = "max") -> CogVideoXDiT:
    """A CogVideoX DiT with seeded random weights (float32, CPU)."""
    model = CogVideoXDiT(config, attention_backend=attention_backend, text_timestep=text_timestep)
    init_random_weights(model, seed=seed)
    if config.use_learned_positional_embeddings:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            model.patch_embed.pos_embedding.copy_(0.02 * torch.randn(model.patch_embed.pos_embedding.shape, generator=gen))
    return model


def load_cogvideox(
    path_or_preset: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    *,
    config: CogVideoXConfig | None = None,
    attention_backend: str = "sdpa",
    text_timestep: str = "max",
    seed: int = 0,
    controlled_cls=None,
) -> CogVideoXDiT:
    """Load a CogVideoX DiT in eval mode on ``device`` in ``dtype``.

    path_or_preset: a preset name from ``COGVIDEOX_PRESETS`` (random weights from
    ``seed``), or a diffusers ``CogVideoXTransformer3DModel`` folder (``config.json`` +
    safetensors, sharded with an index), or a pipeline root (its ``transformer/``), or a
    single safetensors file. ``config`` overrides the inferred architecture. A checkpoint
    holding LongDWM's warp layer (``control_layers.warp.*``) needs ``controlled_cls`` (the
    class that owns it: :func:`engine.models.cogvideox_control.load_cogvideox_with_controls`
    passes :class:`~engine.models.cogvideox_control.ControlledCogVideoXDiT`).
    device: default cuda:0 when available, else cpu; dtype: default bfloat16 on CUDA,
    float32 on CPU. The returned model has ``.source`` (the path, or None for presets).
    """
    from ..config import parse_dtype

    device = torch.device(device) if device is not None else torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    dt = parse_dtype(dtype, device)
    key = str(path_or_preset)
    if key.lower() in COGVIDEOX_PRESETS and not Path(key).exists():
        model = build_cogvideox(config or COGVIDEOX_PRESETS[key.lower()], seed=seed,
                                attention_backend=attention_backend, text_timestep=text_timestep)
        model.source = None
        return model.to(device=device, dtype=dt).eval().requires_grad_(False)

    path = Path(key).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{key!r} is neither a CogVideoX preset ({', '.join(sorted(COGVIDEOX_PRESETS))}) nor an existing path"
        )
    raw, cfg_json = read_state_dict(path)
    from .wan_control import split_control_state

    state, control_state = split_control_state(diffusers_to_ours(raw))  # LongDWM's warp layer, when present
    if control_state and controlled_cls is None:
        raise CheckpointError(f"{path} holds control layers ({sorted(control_state)[:4]}...): load it with "
                              f"engine.models.cogvideox_control.load_cogvideox_with_controls (engine.load_model and "
                              f"engine.generate do)")
    if config is None:
        config = infer_cogvideox_config(state, config_from_diffusers_json(cfg_json) if cfg_json else None)
    with torch.device("meta"):
        cls = controlled_cls if control_state else CogVideoXDiT
        model = cls(config, attention_backend=attention_backend, text_timestep=text_timestep)
    check_state_dict(model, state, source=str(path))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"cannot load {path}: {exc}") from exc
    if control_state:
        try:
            model.load_control_state(control_state, source=str(path))
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
    model.source = path
    return model.to(device=device, dtype=dt).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------
# sampling: diffusers' CogVideoXPipeline / CogVideoXImageToVideoPipeline
# ----------------------------------------------------------------------------------
def default_cogvideox_schedule(config: CogVideoXConfig) -> CogVideoXSchedule:
    """The published scheduler config of a model's family when there is no pipeline root:
    CogVideoX-2b's (``snr_shift_scale`` 3.0) for sin-cos models and the tiny presets,
    CogVideoX-5b's (1.0) for the other rotary models (the rule of
    :meth:`engine.models.adapters.VPredictionAdapter.for_cogvideox`)."""
    five_b = config.name.startswith("cogvideox-5b") or (
        config.use_rotary_positional_embeddings and not config.name.startswith("tiny"))
    return CogVideoXSchedule(snr_shift_scale=1.0 if five_b else 3.0)


def read_cogvideox_scheduler(path: str | Path) -> tuple[str, CogVideoXSchedule]:
    """(kind "ddim" | "dpm", schedule) from a pipeline root's ``scheduler/scheduler_config.json``
    (or that folder, or the file). ``FileNotFoundError`` when there is none."""
    import json

    p = Path(path)
    cands = [p / "scheduler" / "scheduler_config.json", p / "scheduler_config.json", p]
    f = next((c for c in cands if c.is_file()), None)
    if f is None:
        raise FileNotFoundError(f"no scheduler_config.json at {path} (looked at {', '.join(map(str, cands[:2]))})")
    cfg = json.loads(f.read_text())
    return cogvideox_scheduler_kind(cfg), CogVideoXSchedule.from_config(cfg)


def cogvideox_scheduler_for(model) -> tuple[str, CogVideoXSchedule]:
    """The sampler kind and schedule of a CogVideoX DiT: its pipeline root's scheduler
    config when it was loaded from one (``model.source`` or its parent holds
    ``model_index.json`` and ``scheduler/``), else DDIM on :func:`default_cogvideox_schedule`."""
    model = getattr(model, "model", model) if hasattr(model, "alphas_cumprod") else model
    source = getattr(model, "source", None)
    if source is not None:
        for cand in (Path(source), Path(source).parent):
            if (cand / "model_index.json").is_file() and (cand / "scheduler").is_dir():
                return read_cogvideox_scheduler(cand)
    return "ddim", default_cogvideox_schedule(model.config)


