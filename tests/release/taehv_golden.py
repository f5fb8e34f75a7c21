"""Golden TAEHV outputs from the public release's own module (madebyollin/taehv, taehv.py).

    TAEHV_RELEASE=/tmp/taehv python tests/release/taehv_golden.py [--check]

Builds the release's ``TAEHV(checkpoint_path=None)`` (the Wan2.1 configuration, ~11M
parameters), fills its state dict with seeded random weights (:func:`seeded_state_dict`,
which tests/test_taehv.py applies to the engine's module in the same layout), and
writes tests/fixtures/taehv/golden.safetensors + manifest.json:

- ``latents`` [1, 5, 16, 4, 6] (NTCHW) and ``decoded`` = ``decode_video(parallel=True)``
  [1, 17, 3, 32, 48] in [0, 1]; ``decoded_streaming``: the release's ``StreamingTAEHV``
  fed one latent at a time;
- ``video`` [1, 17, 3, 32, 48] and ``encoded`` = ``encode_video(parallel=True)``.

Only outputs and inputs are committed (the weights are ~45 MB in float32); ``--check``
compares with the committed files instead of writing them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SEED = 20250101
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "taehv"
LATENT_SHAPE = (1, 5, 16, 4, 6)
VIDEO_SHAPE = (1, 17, 3, 32, 48)


def seeded_state_dict(shapes: dict[str, torch.Size], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Deterministic random weights for a TAEHV state dict, drawn in sorted-key order:
    weights ~ N(0, 1/fan_in), biases ~ N(0, 0.02^2); the final RGB conv's bias gets +0.8
    so that decoded frames sit mostly inside [0, 1] (not clamped)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = torch.Size(shapes[key])
        if len(shape) >= 2:
            out[key] = torch.randn(shape, generator=gen) / shape[1:].numel() ** 0.5
        else:
            out[key] = 0.02 * torch.randn(shape, generator=gen)
    last = max((k for k in out if k.startswith("decoder.") and k.endswith(".bias")),
               key=lambda k: int(k.split(".")[1]))
    out[last] = out[last] + 0.8
    return out


def inputs(seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents NTCHW, video NTCHW in [0, 1]) drawn from ``seed + 1``."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(LATENT_SHAPE, generator=gen), torch.rand(VIDEO_SHAPE, generator=gen)


def release_outputs(release_dir: str) -> tuple[dict, str]:
    """Run the release's module on the seeded weights; returns (tensors, release commit)."""
    sys.path.insert(0, release_dir)
    import taehv as release  # the release's own taehv.py

    torch.manual_seed(0)
    model = release.TAEHV(checkpoint_path=None).eval()
    model.load_state_dict(seeded_state_dict({k: v.shape for k, v in model.state_dict().items()}))
    latents, video = inputs()
    with torch.no_grad():
        decoded = model.decode_video(latents, parallel=True, show_progress_bar=False)
        stream = release.StreamingTAEHV(model)
        frames = []
        for t in range(latents.shape[1]):
            frame = stream.decode(latents[:, t:t + 1])
            while frame is not None:
                frames.append(frame)
                frame = stream.decode()
        encoded = model.encode_video(video, parallel=True, show_progress_bar=False)
    try:
        commit = subprocess.run(["git", "-C", release_dir, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = os.environ.get("TAEHV_RELEASE_COMMIT", "unknown")
    return {"latents": latents, "decoded": decoded.contiguous(), "decoded_streaming": torch.cat(frames, 1),
            "video": video, "encoded": encoded.contiguous()}, commit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed fixtures, write nothing")
    args = ap.parse_args(argv)
    release_dir = os.environ.get("TAEHV_RELEASE", "/tmp/taehv")
    if not os.path.isfile(os.path.join(release_dir, "taehv.py")):
        print(f"release not found: {release_dir}/taehv.py (fetch github.com/madebyollin/taehv and set TAEHV_RELEASE)",
              file=sys.stderr)
        return 2
    from safetensors.torch import load_file, save_file

    tensors, commit = release_outputs(release_dir)
    if args.check:
        ref = load_file(str(FIXTURES / "golden.safetensors"))
        worst = max(((tensors[k] - ref[k]).norm() / ref[k].norm()).item() for k in ref)
        print(f"max relative difference to the committed fixtures: {worst:.3g}")
        return 0 if worst <= 1e-6 else 1
    FIXTURES.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(FIXTURES / "golden.safetensors"))
    manifest = {"seed": SEED, "release": "github.com/madebyollin/taehv", "release_commit": commit,
                "module": "taehv.TAEHV(checkpoint_path=None) (Wan2.1 config), float32 CPU",
                "shapes": {k: list(v.shape) for k, v in tensors.items()},
                "torch": torch.__version__, "command": "TAEHV_RELEASE=<dir> python tests/release/taehv_golden.py"}
    (FIXTURES / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {FIXTURES} (release {commit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
