"""Videos every strategy made on its options before the clips refactor (issue 11), as
SHA-256 hashes of the uint8 frames, with a fingerprint of this machine's float arithmetic.

``python tests/golden_videos.py`` records ``tests/fixtures/golden_videos.json``;
``tests/test_golden_videos.py`` regenerates every case and compares. Float results of the
same code differ between CPU kinds (vector width, BLAS kernels), so the comparison runs
only where the arithmetic fingerprint equals the recorded one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "golden_videos.json"
SMALL = dict(height=32, width=32, progress=False, prompt="x")
FIRST = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)

# name -> (video frames, generate options)
CASES = {
    "ar-cache": (13, dict(strategy="ar", seed=2)),
    "ar-cache-first-frame": (21, dict(strategy="ar", seed=2, first_frame=FIRST, chunk_frames=2)),
    "ar-cache-window": (37, dict(strategy="ar", seed=5, chunk_frames=2, sink_frames=2, window_frames=3)),
    "ar-cache-unified": (13, dict(strategy="ar", seed=2, unified_noise=True)),
    "ar-history-unified": (21, dict(strategy="ar", seed=2, context="history", history_frames=3, sink_frames=1,
                                    unified_noise=True)),
    "mmpl": (33, dict(strategy="mmpl", seed=2, segment_frames=4, anchor_frames=1, midpoint=2)),
    "mmpl-min-memory": (53, dict(strategy="mmpl", seed=2, segment_frames=6, anchor_frames=2, schedule="min_memory",
                                 noise_rho=0.3)),
    "mmpl-first-frame": (33, dict(strategy="mmpl", seed=3, first_frame=FIRST, segment_frames=4)),
    "longdwm": (25, dict(strategy="longdwm", seed=2, keyframes=3, fps_ratio=2)),
    "mila": (25, dict(strategy="mila", seed=2, anchor_stride=3, anchors_per_rollout=3, clip_frames=3,
                      history_frames=2)),
    "mila-first-frame": (25, dict(strategy="mila", seed=2, first_frame=FIRST, anchor_stride=3,
                                  anchors_per_rollout=3, clip_frames=3)),
    "i2v-ar-cache": (13, dict(strategy="ar", seed=2, first_frame=FIRST, model="tiny-i2v")),
    "i2v-mmpl": (17, dict(strategy="mmpl", seed=2, first_frame=FIRST, model="tiny-i2v", segment_frames=4)),
    "ar-cache-fewstep-cfg": (13, dict(strategy="ar", seed=2, guidance_scale=3.0)),
    "mmpl-euler": (17, dict(strategy="mmpl", seed=2, segment_frames=4, sampler=("euler", 3))),
    "ctl-warp-ar-cache": (13, dict(strategy="ar", seed=4, chunk_frames=2, model="controlled", first_frame=FIRST,
                                   trajectory=np.array([[0, 0], [0.1, 0.6], [0.3, 1.2], [0.6, 1.8], [1.0, 2.3]]),
                                   intrinsics=(32.0, 32.0, 15.5, 15.5), warp_depth=8.0)),
    "ctl-waypoints-mmpl": (13, dict(strategy="mmpl", seed=4, segment_frames=3, anchor_frames=1, midpoint=2,
                                    model="controlled", waypoints=np.random.default_rng(2).normal(size=(13, 3, 2)))),
    "ctl-multiview-ar": (13, dict(strategy="ar", seed=4, chunk_frames=2, model="controlled", views=2, width=64,
                                  cameras=np.abs(np.random.default_rng(3).normal(size=(2, 16))) + 0.1)),
}


def controlled_model():
    """The tiny model with every control layer enabled and non-zero."""
    import engine
    from engine.models.wan_control import ControlledWanDiT

    m = ControlledWanDiT.from_base(engine.load_model("tiny", device="cpu"))
    torch.manual_seed(0)  # the layers' default init draws from the global generator
    m.enable_control("warp")
    m.enable_control("waypoints", in_features=6)
    m.enable_control("camera")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.control_layers.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m


def fingerprint() -> str:
    """SHA-256 of a small fixed computation (matmul, conv3d, exp) on this machine."""
    torch.manual_seed(0)
    a = torch.randn(64, 96)
    b = torch.randn(96, 80)
    x = torch.randn(1, 4, 5, 9, 9)
    w = torch.randn(6, 4, 3, 3, 3)
    with torch.no_grad():
        out = [(a @ b).exp().sum(), torch.nn.functional.conv3d(x, w).tanh().sum(),
               torch.nn.functional.scaled_dot_product_attention(*torch.randn(3, 1, 2, 7, 16)).sum()]
    return hashlib.sha256(torch.stack(out).numpy().tobytes()).hexdigest()[:16]


def run_case(name: str, devices=("cpu",), shuffle=None):
    """Generate case ``name``; returns the :class:`engine.video.Video`."""
    import engine
    from engine.config import SamplerConfig

    n, opts = CASES[name]
    opts = dict(opts)
    name_ = opts.pop("model", "tiny")
    model = controlled_model() if name_ == "controlled" else engine.load_model(name_, device="cpu")
    if "sampler" in opts:
        kind, steps = opts.pop("sampler")
        opts["sampler"] = SamplerConfig(kind=kind, num_steps=steps)
    kw = dict(SMALL, **opts)
    return engine.generate(model, num_frames=n, devices=list(devices), shuffle=shuffle, **kw)


def video_hash(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def main() -> None:
    rec = {"fingerprint": fingerprint(), "torch": torch.__version__, "videos": {}}
    for name in CASES:
        v = run_case(name)
        rec["videos"][name] = {"frames": int(len(v.frames)), "sha256": video_hash(v.frames)}
        print(name, rec["videos"][name])
    FIXTURE.write_text(json.dumps(rec, indent=1) + "\n")


if __name__ == "__main__":
    main()
