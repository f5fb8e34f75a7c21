"""Videos every strategy makes on its options, as SHA-256 hashes of the uint8 frames per
machine kind, with thumbnails for every machine.

``python tests/golden_videos.py`` records ``tests/fixtures/golden_videos.json`` anew (this
machine's hashes only); ``python tests/golden_videos.py --machine`` adds this machine's
hashes to the record (after checking against the thumbnails). ``tests/test_golden_videos.py``
regenerates every case and compares. Float results of the same code differ between CPU
kinds (vector width, BLAS kernels), so the exact comparison runs only on a machine whose
arithmetic fingerprint (:func:`fingerprint2`: model-sized matmuls, convolutions, norms and
attention) is in the record's ``machines``. Everywhere, each video is also compared with
its recorded thumbnail (4x4-pixel block means of every frame) within
:data:`THUMB_TOLERANCE` uint8 levels: a changed video moves far more than a CPU kind's
rounding does.

Re-recorded 2026-12-08 (issue 30: the CPU decoder's causal convolutions run as 2-D ones,
which moves the last float bits of every decoded frame); the earlier record's Intel Xeon
hashes could not be re-made here (an AMD EPYC), so a Xeon checks the thumbnails until
someone runs ``--machine`` on one.
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

    m = ControlledWanDiT.from_base(engine.load_model("tiny-random", device="cpu"))
    torch.manual_seed(0)  # the layers' default init draws from the global generator
    m.enable_control("warp")
    m.enable_control("waypoints", in_features=6)
    m.enable_control("camera")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.control_layers.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m


def fingerprint2() -> str:
    """SHA-256 of model-sized float32 work (a 4096x64 @ 64x128 matmul, a 16-channel 3x3x3
    conv3d over 34x34 frames, group norm, SDPA over 224 tokens): what tells CPU kinds apart."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4096, 64, generator=g), torch.randn(64, 128, generator=g)
    x, w = torch.randn(1, 16, 3, 34, 34, generator=g), torch.randn(16, 16, 3, 3, 3, generator=g)
    q = torch.randn(3, 1, 2, 224, 32, generator=g)
    with torch.no_grad():
        y = torch.nn.functional.conv3d(x, w, padding=1)
        out = [(a @ b).tanh().sum(), torch.nn.functional.group_norm(y, 4).pow(3).sum(),
               torch.nn.functional.scaled_dot_product_attention(*q).pow(3).sum()]
    return hashlib.sha256(torch.stack(out).numpy().tobytes()).hexdigest()[:16]


#: Largest allowed |thumbnail difference| (uint8 levels) between a video and its record.
THUMB_TOLERANCE = 2.0


def thumbnail(frames: np.ndarray) -> np.ndarray:
    """uint8 frames [T, H, W, 3] -> float [T, H/4, W/4, 3] means of 4x4 pixel blocks."""
    T, H, W, C = frames.shape
    return frames.reshape(T, H // 4, 4, W // 4, 4, C).astype(np.float64).mean((2, 4))


def expected_hashes(record: dict) -> dict | None:
    """{case: sha256} recorded for a machine with this machine's arithmetic, or None."""
    fp2 = fingerprint2()
    for m in record.get("machines", []):
        if m["fingerprint2"] == fp2:
            return m["sha256"]
    return None


def run_case(name: str, devices=("cpu",), shuffle=None):
    """Generate case ``name``; returns the :class:`engine.video.Video`."""
    import engine
    from engine.config import SamplerConfig

    n, opts = CASES[name]
    opts = dict(opts)
    name_ = opts.pop("model", "tiny-random")
    model = controlled_model() if name_ == "controlled" else engine.load_model(name_, device="cpu")
    if "sampler" in opts:
        kind, steps = opts.pop("sampler")
        opts["sampler"] = SamplerConfig(kind=kind, num_steps=steps)
    kw = dict(SMALL, cpu_threads=1, **opts)  # the recorded thread count (float bits depend on it)
    return engine.generate(model, num_frames=n, devices=list(devices), shuffle=shuffle, **kw)


def video_hash(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def main() -> None:
    """Record every case (``--machine``: keep the record, add this machine's hashes and, where
    missing, the thumbnails -- only after checking this code makes the recorded videos)."""
    import sys

    entry = {"fingerprint2": fingerprint2(), "torch": torch.__version__, "sha256": {}}
    if "--machine" in sys.argv:
        rec = json.loads(FIXTURE.read_text())
    else:
        rec = {"torch": torch.__version__, "videos": {}, "thumbs": {}, "machines": []}
    for name in CASES:
        v = run_case(name)
        entry["sha256"][name] = video_hash(v.frames)
        thumb = thumbnail(v.frames)
        if "--machine" in sys.argv and name in rec["thumbs"]:
            diff = float(np.abs(thumb - np.asarray(rec["thumbs"][name])).max())
            if diff > THUMB_TOLERANCE:
                raise SystemExit(f"{name} moved {diff:.2f} levels from its thumbnail: the code changed, re-record all")
        rec["videos"][name] = {"frames": int(len(v.frames))}
        rec["thumbs"].setdefault(name, np.round(thumb, 2).tolist())
        print(name, entry["sha256"][name])
    rec["machines"] = [m for m in rec.get("machines", []) if m["fingerprint2"] != entry["fingerprint2"]] + [entry]
    FIXTURE.write_text(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
