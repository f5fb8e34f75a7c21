"""Configuration, split three ways (see DESIGN.md section 3).

- :class:`ModelConfig`   -- the DiT architecture (what the weights need).
- :class:`SamplerConfig` -- how to denoise (steps, shift, schedule, guidance).
- :class:`EngineConfig`  -- how to run (device, dtype, attention backend, compile).

``PRESETS`` maps preset names to ModelConfigs; ``tiny`` is the embedded default (trained
weights shipped with the package, :mod:`engine.embedded`), ``tiny-random`` a smaller toy
with random weights drawn from a fixed seed (tests, benchmarks of the machinery); both run
on two CPU cores.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on use: `python -m engine --help` must not need it
    import torch


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Wan2.1-style DiT.

    ``dim = num_heads * head_dim``; ``in_channels`` is 16 for text-to-video and 36 for
    image-to-video (16 noise + 4 mask + 16 first-frame latent channels); ``image_dim`` is
    the CLIP image-token width (1280) for image-to-video models, ``None`` otherwise.
    ``vae_stride`` is the VAE's (time, height, width) compression, ``fps`` the native
    frame rate of the decoded video.
    """

    name: str = "custom"
    in_channels: int = 16
    out_channels: int = 16
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    cross_attn_norm: bool = True
    image_dim: int | None = None
    rope_theta: float = 10000.0
    text_len: int = 512
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    latent_channels: int = 16
    fps: int = 16

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"ModelConfig: dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig: head_dim={self.head_dim} must be even for RoPE")
        if self.is_i2v and self.in_channels != 2 * self.latent_channels + 4:
            raise ValueError(
                f"ModelConfig: an image-to-video model (image_dim={self.image_dim}) takes "
                f"{2 * self.latent_channels + 4} input channels (noise + mask + first-frame latent), "
                f"got in_channels={self.in_channels}"
            )

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.dim // self.num_heads

    @property
    def is_i2v(self) -> bool:
        """True for image-conditioned models (CLIP tokens + mask/first-frame channels)."""
        return self.image_dim is not None

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Head channels given to RoPE's (time, height, width) axes: d-4*(d//6), 2*(d//6), 2*(d//6)."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """A JSON-friendly dict of all fields."""
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["vae_stride"] = list(self.vae_stride)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"ModelConfig: unknown fields {unknown}; known fields are {sorted(names)}")
        d = dict(d)
        for key in ("patch_size", "vae_stride"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass(frozen=True)
class SamplerConfig:
    """How a chunk is denoised.

    kind: ``"fewstep"`` (Self-Forcing / CausVid: predict x0, re-noise with fresh noise to
    the next sigma), ``"euler"`` or ``"unipc"`` (multistep flow-matching solvers), ``"dpm"``
    (DPM-Solver++(2M) SDE, fresh noise every step: CogVideoX-5b's scheduler,
    :class:`engine.sampling.DPMSolverSDESampler`).
    ``timesteps`` (0..1000) define the few-step schedule; the multistep solvers use
    ``num_steps`` sigmas from 1 to 0. ``shift`` warps sigmas s' = k s / (1 + (k-1) s).
    ``guidance_scale`` > 1 turns on classifier-free guidance (needs a negative prompt
    embedding; an empty prompt by default). ``schedule`` (multistep solvers): ``"flow"``
    (sigmas from exactly 1 to 0, model timestep 1000*sigma) or ``"wan"`` (Wan's own
    FlowUniPCMultistepScheduler table from 0.999, int64-truncated model timesteps: what
    the Wan2.1 and MMPL releases run; see :func:`engine.sampling.wan_unipc_schedule`) or
    ``"cogvideox"`` (kind ``"euler"``: CogVideoX's DDIM, ``"dpm"``: its DPM -- the integer timesteps of
    ``ddpm``, a :class:`engine.sampling.CogVideoXSchedule`, as flow sigmas; Euler on them
    *is* DDIM, see :func:`engine.sampling.cogvideox_flow_sigmas`; ``shift`` is unused;
    ``ddpm=None``: the model's own scheduler config, filled in by ``generate``).
    """

    kind: str = "fewstep"
    num_steps: int = 4
    shift: float = 5.0
    timesteps: tuple[float, ...] | None = (1000.0, 750.0, 500.0, 250.0)
    guidance_scale: float = 1.0
    schedule: str = "flow"
    ddpm: object | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("fewstep", "euler", "unipc", "dpm"):
            raise ValueError(f"SamplerConfig.kind must be 'fewstep', 'euler', 'unipc' or 'dpm', got {self.kind!r}")
        if self.num_steps < 1:
            raise ValueError(f"SamplerConfig.num_steps must be >= 1, got {self.num_steps}")
        if self.shift <= 0:
            raise ValueError(f"SamplerConfig.shift must be > 0, got {self.shift}")
        if not (isinstance(self.guidance_scale, (int, float)) and self.guidance_scale >= 0
                and self.guidance_scale == self.guidance_scale and self.guidance_scale != float("inf")):
            raise ValueError(f"SamplerConfig.guidance_scale must be a finite number >= 0 (1: off), got "
                             f"{self.guidance_scale!r}")
        if self.schedule not in ("flow", "wan", "cogvideox"):
            raise ValueError(f"SamplerConfig.schedule must be 'flow', 'wan' or 'cogvideox', got {self.schedule!r}")
        if self.schedule == "cogvideox":
            if self.kind not in ("euler", "dpm"):
                raise ValueError(f"SamplerConfig.schedule='cogvideox' steps CogVideoX's timesteps as flow sigmas: "
                                 f"kind 'euler' (= its DDIM) or 'dpm' (= its DPM-Solver++ SDE), got {self.kind!r}")
            if isinstance(self.ddpm, dict):  # a scheduler_config.json's dict
                from .sampling import CogVideoXSchedule

                object.__setattr__(self, "ddpm", CogVideoXSchedule.from_config(self.ddpm))
            elif self.ddpm is not None and type(self.ddpm).__name__ != "CogVideoXSchedule":
                raise ValueError(f"SamplerConfig.ddpm must be a CogVideoXSchedule (or a scheduler config dict), got "
                                 f"{type(self.ddpm).__name__}")
        elif self.ddpm is not None:
            raise ValueError("SamplerConfig.ddpm (a CogVideoX DDPM schedule) is used only with schedule='cogvideox'")

    def replace(self, **changes) -> "SamplerConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device | str = "cpu") -> torch.dtype:
    """A torch dtype from a name ('bf16', 'float32', ...) or a dtype; ``None`` picks
    bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return getattr(torch, _DTYPES[str(dtype).lower()])
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def default_device() -> torch.device:
    """cuda:0 when a GPU is visible, else cpu."""
    import torch

    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


@dataclass
class EngineConfig:
    """How to run: devices, precision, attention backend, compile / CUDA graphs.

    ``attention_backend``: ``"auto"`` picks the fastest available for the device (see
    :mod:`engine.attention`); ``fused_ops`` uses the fused Triton AdaLN / QK-norm+RoPE
    kernels where available; ``compile`` runs the DiT blocks under torch.compile and
    ``cuda_graphs`` additionally captures them in CUDA graphs (both for the ``ar`` KV-cache
    rollout; see :mod:`engine.compile`). ``batch_jobs``: at most this many ready like
    denoise jobs (no KV cache, equal batch keys) run as one batched forward per step on a
    worker (:func:`engine.runtime.execute`); 1 (the default) runs every job alone.
    """

    devices: list[str] = field(default_factory=lambda: [str(default_device())])
    dtype: str | None = None
    attention_backend: str = "auto"
    fused_ops: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    batch_jobs: int = 1

    def __post_init__(self) -> None:
        from .attention import BACKENDS

        if self.attention_backend not in BACKENDS:
            raise ValueError(f"EngineConfig.attention_backend {self.attention_backend!r} is unknown; choose one of "
                             f"{BACKENDS}")
        if isinstance(self.batch_jobs, bool) or not isinstance(self.batch_jobs, int) or self.batch_jobs < 1:
            raise ValueError(f"EngineConfig.batch_jobs (most denoise jobs per batched pass) must be an int >= 1, got "
                             f"{self.batch_jobs!r}")

    @property
    def device(self) -> torch.device:
        """The first device (where a single-device run happens)."""
        import torch

        return torch.device(self.devices[0])

    @property
    def torch_dtype(self) -> torch.dtype:
        """The compute dtype for the first device."""
        return parse_dtype(self.dtype, self.device)


_WAN_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)

PRESETS: dict[str, ModelConfig] = {
    "wan2.1-t2v-1.3b": ModelConfig(name="wan2.1-t2v-1.3b", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": ModelConfig(name="wan2.1-t2v-14b", **_WAN_14B),
    "wan2.1-i2v-14b": ModelConfig(name="wan2.1-i2v-14b", in_channels=36, image_dim=1280, **_WAN_14B),
    # The embedded default (engine.embedded): the Wan architecture at toy size, trained on
    # the procedural driving world (engine.world.train_dit); load_model("tiny") reads its
    # weights from the package data, this is its architecture.
    "tiny": ModelConfig(
        name="tiny", dim=128, ffn_dim=384, num_heads=2, num_layers=4, text_dim=32, freq_dim=64, text_len=32
    ),
    # The same toy architecture with seeded random weights (tests, benchmarks of the machinery).
    "tiny-random": ModelConfig(
        name="tiny-random", dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, freq_dim=32, text_len=32
    ),
    "tiny-i2v": ModelConfig(
        name="tiny-i2v",
        in_channels=36,
        image_dim=48,
        dim=64,
        ffn_dim=128,
        num_heads=2,
        num_layers=2,
        text_dim=32,
        freq_dim=32,
        text_len=32,
    ),
}


def get_preset(name: str) -> ModelConfig:
    """The ModelConfig of a preset; an unknown name is an error that lists the known ones."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}") from None
