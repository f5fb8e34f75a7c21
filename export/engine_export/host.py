"""Python face of the native host (``engine_export._native``, C++17 in ``csrc/``).

The host reads a manifest, owns the sampler schedule, the noise initialisation and the
KV-slot bookkeeping, and drives a backend through a whole chunked rollout. Backends: a
TensorRT one (compiled where TensorRT's headers are found) and :class:`CallbackBackend`,
through which Python runs each graph -- here with ONNX Runtime (:func:`ort_callback`).

Noise. The Python runtime draws frame noise with ``torch.randn`` from a CPU generator
seeded by ``engine_kernels.noise.frame_seed(seed, stream, position)``; torch's normal sampler
cannot be reproduced without libtorch. So the host's noise source is pluggable:

- ``noise="torch"`` -- the host asks Python for each frame's noise through a callback
  (:func:`torch_noise`, i.e. ``engine_kernels.noise.frame_noise``): the host's rollout then
  equals ``engine.rollout.ar_rollout`` exactly (same noise, schedule and slots).
- ``noise="builtin"`` -- the host's own counter-based generator (``counter-based-v1``:
  splitmix64 counters from the same frame seed + Box-Muller in float64), for embedding
  without Python. Python can use the very same generator (:func:`builtin_noise` calls the
  compiled code), e.g. to run the PyTorch rollout with host noise for comparison.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def native_status() -> tuple[bool, str]:
    try:
        from . import _native  # noqa: F401
    except ImportError as exc:
        return False, f"the native host extension is not built ({exc}); reinstall with `pip install -e .`"
    return True, "engine_export._native"


def _native():
    from . import _native

    return _native


def load_host(directory: str | Path, *, verify_hashes: bool = True):
    """A native :class:`Host` for an export folder (raises ``ManifestError``, a ValueError)."""
    return _native().Host(str(directory), verify_hashes)


def ort_callback(directory: str | Path, *, threads: int | None = None, providers=None):
    """``run(graph_name, feeds) -> outputs`` over ONNX Runtime sessions of the folder's
    graphs (created on first use), for :class:`CallbackBackend`."""
    import onnxruntime as ort

    from .manifest import load_manifest

    man = load_manifest(directory, verify_hashes=False, check_graphs=False)
    by_name = {g["name"]: g for g in man.graphs}
    sessions: dict[str, object] = {}

    def run(name: str, feeds: dict) -> dict:
        s = sessions.get(name)
        if s is None:
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            opts.log_severity_level = 3
            s = ort.InferenceSession(str(man.path(by_name[name])), opts, providers=providers or ["CPUExecutionProvider"])
            sessions[name] = s
        names = [o["name"] for o in by_name[name]["outputs"]]
        return dict(zip(names, s.run(names, dict(feeds))))

    return run


def torch_noise(seed: int, stream: int, positions, channels: int, height: int, width: int) -> np.ndarray:
    """The Python runtime's frame noise [C, n, h, w] (engine_kernels.noise.frame_noise), as the
    host's noise callback."""
    from engine_kernels.noise import frame_noise

    return frame_noise(seed, list(positions), (1, channels, height, width), stream=stream)[0].numpy()


def builtin_noise(seed: int, positions, shape, *, stream: int = 0, device=None, dtype=torch.float32) -> torch.Tensor:
    """The host's built-in noise with :func:`engine_kernels.noise.frame_noise`'s signature
    (shape (C, h, w) or (B, C, h, w); B rows repeat the same frame noise)."""
    shape = tuple(int(s) for s in shape)
    C, h, w = shape[-3:]
    x = torch.from_numpy(_native().counter_noise(seed, stream, [int(p) for p in positions], C, h, w))
    if len(shape) == 4:
        x = x[None].expand(shape[0], -1, -1, -1, -1)
    return x.to(device=device or "cpu", dtype=dtype)


def host_rollout(directory: str | Path, text_embeds, *, num_frames: int, seed: int = 0, noise: str = "torch",
                 chunk_frames: int = 0, sink_frames: int = 0, window_frames: int | None = None, latent_hw=(0, 0),
                 guidance_scale: float = 1.0, first_latent=None, opset: int = 0, backend=None, threads: int | None = None):
    """Run a whole rollout in the native host; returns [(positions, latents [1, C, n, h, w])].

    num_frames: **latent** frames to roll out (Wan: n latents = 4(n-1)+1 video frames).
    text_embeds: [B, text_len, text_dim] with exactly the manifest's ``text_len`` tokens
    (zero-pad shorter embeddings as Wan pads its T5 output; B = 2 with guidance: row 0
    conditional); backend: a
    native backend (default: the callback backend over ONNX Runtime); noise: ``torch``
    or ``builtin`` (see the module docstring).
    """
    nat = _native()
    host = load_host(directory)
    if backend is None:
        backend = nat.CallbackBackend(ort_callback(directory, threads=threads))
    if noise not in ("torch", "builtin"):
        raise ValueError(f"noise must be 'torch' or 'builtin', got {noise!r}")
    text = text_embeds.detach().float().cpu().numpy() if isinstance(text_embeds, torch.Tensor) else np.asarray(text_embeds, np.float32)
    first = None
    if first_latent is not None:
        first = first_latent.detach().float().cpu().numpy() if isinstance(first_latent, torch.Tensor) else first_latent
    out = host.rollout(backend, text, num_frames=num_frames, seed=seed, chunk_frames=chunk_frames,
                       sink_frames=sink_frames, window_frames=window_frames, latent_hw=tuple(latent_hw),
                       guidance_scale=guidance_scale, first_latent=first,
                       noise=torch_noise if noise == "torch" else None, opset=opset)
    from .manifest import load_manifest

    man = load_manifest(directory, verify_hashes=False, check_graphs=False)
    if not (latent_hw[0] and latent_hw[1]):
        b = next(g["bucket"] for g in man.graphs if g["kind"] == "step")
        latent_hw = (b["latent_height"], b["latent_width"])
    C = man.config.out_channels
    return [(list(p), torch.from_numpy(flat).view(1, C, len(p), *latent_hw)) for p, flat in out]


__all__ = ["native_status", "load_host", "ort_callback", "torch_noise", "builtin_noise", "host_rollout"]
