"""Checks of a generation request that run before any weight is loaded or any step runs:
integral sizes and counts, seeds, ranges, mutually exclusive arguments, devices,
non-finite inputs, the plan size and a memory estimate. Each failure is a ValueError or
TypeError naming the argument and the fix."""

from __future__ import annotations

import math
import numbers
import os

import torch

MAX_VIDEO_FRAMES = 1_000_001  # ~17 hours at 16 fps: beyond this, building the plan alone takes minutes


def integral(name: str, value, *, minimum: int | None = None) -> int:
    """``value`` as a Python int when it is any integral type (int, numpy integer, 0-d
    integer tensor); bool, float, str and the rest raise TypeError naming the type."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_request(*, num_frames, height, width, seed, guidance_scale, prompt, prompt_embeds, devices,
                  sink_frames, window_frames, chunk_frames) -> tuple[int, int | None, int | None, int]:
    """The request's scalar arguments, checked; returns (num_frames, height, width, seed)
    as ints (height / width None: the model's default size)."""
    num_frames = integral("num_frames", num_frames, minimum=1)
    if num_frames > MAX_VIDEO_FRAMES:
        raise ValueError(f"num_frames={num_frames} is beyond what one plan holds ({MAX_VIDEO_FRAMES} frames, ~17 h at "
                         f"16 fps); generate it in parts (engine.stream per part) or ask for fewer frames")
    sizes = []
    for name, v in (("height", height), ("width", width)):
        if v is not None:
            v = integral(name, v)
            if v <= 0:
                raise ValueError(f"{name} must be a positive multiple of 16 (e.g. 480 x 832), got {v}")
        sizes.append(v)
    seed = integral("seed", seed)
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must lie in [0, 2**63), got {seed}")
    if guidance_scale is not None and not (isinstance(guidance_scale, numbers.Real) and math.isfinite(guidance_scale)
                                           and guidance_scale >= 0):
        raise ValueError(f"guidance_scale must be a finite number >= 0 (1: no guidance), got {guidance_scale!r}")
    if prompt and prompt_embeds is not None:
        raise ValueError("pass either prompt (encoded by the text encoder) or prompt_embeds, not both")
    if chunk_frames is not None:
        integral("chunk_frames", chunk_frames, minimum=1)
    if window_frames is not None:
        integral("window_frames", window_frames, minimum=0)
        if window_frames == 0 and not sink_frames:
            raise ValueError("window_frames=0 without sink_frames: every chunk would see no earlier frame (independent "
                             "clips, no temporal coherence); give window_frames >= 1 or some sink_frames")
    if sink_frames is not None:
        sink = integral("sink_frames", sink_frames, minimum=0)
        latent = (num_frames - 1) // 4 + 1
        if sink > latent:
            raise ValueError(f"sink_frames={sink} exceeds the video's {latent} latent frames (num_frames={num_frames})")
    if isinstance(devices, (str, bytes)) or (devices is not None and not isinstance(devices, (list, tuple))):
        raise TypeError(f"devices must be a list of device names, one worker each (e.g. ['cpu'], ['cuda:0', 'cuda:1']), "
                        f"got {devices!r}" + (f"; write devices=[{devices!r}]" if isinstance(devices, str) else ""))
    for d in devices or ():
        check_device(d)
    return num_frames, sizes[0], sizes[1], seed


def check_device(device) -> None:
    """A device string that can run here (no CUDA: say so and suggest 'cpu')."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a device name such as 'cpu' or 'cuda:0' ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available on this machine; use 'cpu' "
                             f"(devices=['cpu'] or ['cpu', 'cpu'] for two CPU workers)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def check_fused_ops(fused_ops: bool, device) -> None:
    """The fused Triton kernels run on CUDA; on the CPU only under TRITON_INTERPRET=1 (tests)."""
    if not fused_ops or torch.device(device).type == "cuda":
        return
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"fused_ops=True runs Triton kernels, which need a CUDA device (got {device}); drop fused_ops "
                         f"on the CPU (TRITON_INTERPRET=1 runs them slowly, for tests only)")
    from engine_kernels import triton_available

    ok, why = triton_available()
    if not ok:
        raise ValueError(f"fused_ops=True on {device}: {why}; or drop fused_ops")


def check_finite(name: str, tensor, error: type[ValueError] = ValueError) -> None:
    """NaN / inf in a user input is refused up front (it would give a silent black video):
    raises ``error`` naming the input, the counts and the first bad index."""
    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
        bad = ~torch.isfinite(tensor)
        nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise error(f"{name} holds non-finite values ({nan} NaN, {inf} inf of {tensor.numel()}, the first at index "
                    f"{first}); check how it was made (a float16 overflow, a failed encoder, a bad file)")


def device_memory(device: torch.device) -> int:
    """Bytes the device can hold: free CUDA memory, or the machine's physical memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_memory(model, vae, plan, h: int, w: int, device: torch.device, workers: int = 1) -> None:
    """Refuse a request whose rough peak memory cannot fit the device: the largest DiT pass
    (tokens x widths), the KV caches alive at once (a chain frees its cache when done: at
    most one per worker on the device) and one VAE decode step at full resolution."""
    cfg = model.config
    el = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 4
    tpf = model.tokens_per_frame(h, w) if hasattr(model, "tokens_per_frame") else h * w // 4
    frames = max((len(j.positions) for j in plan.jobs), default=1)
    dit = frames * tpf * (6 * cfg.dim + 2 * getattr(cfg, "ffn_dim", 4 * cfg.dim)) * el * 2
    sizes = sorted((2 * cfg.num_layers * spec.max_frames * tpf * cfg.dim * el * 2 for spec in plan.caches.values()),
                   reverse=True)
    caches = sum(sizes[:max(1, workers)])
    H, W = 8 * h, 8 * w
    base = int(getattr(getattr(vae, "config", None), "base_dim", 96) or 96) if vae is not None else 0
    decode = H * W * base * 4 * 4 * 4  # a 4-frame causal step, a few live float32 tensors of the widest level
    need = dit + caches + decode
    have = device_memory(device)
    if need > have:
        raise ValueError(f"this request needs roughly {need / 2 ** 30:.1f} GiB on {device} (largest DiT pass "
                         f"{dit / 2 ** 30:.1f}, KV caches {caches / 2 ** 30:.1f}, VAE decode at {H}x{W} "
                         f"{decode / 2 ** 30:.1f}) but it has {have / 2 ** 30:.1f} GiB: lower the resolution or "
                         f"chunk_frames")


def check_kept_frames(frames: int, height: int, width: int) -> None:
    """``generate`` keeps every uint8 frame in host memory: refuse what cannot fit in half
    of it and point at ``stream``."""
    kept = frames * height * width * 3
    ram = device_memory(torch.device("cpu"))
    if kept > ram // 2:
        raise ValueError(f"generate() keeps every frame in memory ({kept / 2 ** 30:.1f} GiB for {frames} frames at "
                         f"{height}x{width}; this machine has {ram / 2 ** 30:.1f} GiB): use engine.stream() and consume "
                         f"the frames as they come")
