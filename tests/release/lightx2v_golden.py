"""Golden LightTAE / LightVAE (Wan2.1) outputs from LightX2V's own modules (github.com/ModelTC/LightX2V).

    LIGHTX2V_RELEASE=<checkout or bare git dir> python tests/release/lightx2v_golden.py [--check]

Runs, on seeded random weights in the release's layouts (float32, CPU):
- LightTAE: ``lightx2v/models/video_encoders/hf/wan/vae_tiny.py`` ``WanVAE_tiny(vae_path=
  <lighttaew2_1.safetensors>, dtype=float32, need_scaled=True)`` (need_scaled: what
  ``pipeline.enable_lightvae`` sets for a "lighttae" path) ``.decode(latents[0])``;
- LightVAE: ``lightx2v/models/video_encoders/hf/wan/vae.py`` ``WanVAE_(dim=96, z_dim=16,
  temperal_downsample=[False, True, True], pruning_rate=0.75)`` (``_video_vae`` +
  ``WanVAE(use_lightvae=True)``) ``.decode(latents, scale=[mean, 1 / std])``.
Writes tests/fixtures/lightx2v/golden.safetensors (normalized latents, decoded videos)
and manifest.json (release commit, the LightVAE's key -> shape list, used by the test to
rebuild the same weights). The release files are executed with light stubs for its
logger / platform imports (loguru, einops.rearrange, lightx2v.utils.*).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import torch

SEED = 20250202
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lightx2v"
LATENT_SHAPE = (1, 16, 3, 4, 6)  # NCFhw, normalized (DiT space)
FILES = {"tae": "lightx2v/models/video_encoders/hf/tae.py", "vae_tiny": "lightx2v/models/video_encoders/hf/wan/vae_tiny.py",
         "vae": "lightx2v/models/video_encoders/hf/wan/vae.py", "pipeline": "lightx2v/pipeline.py"}
WAN21_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN21_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


def seeded_state_dict(shapes: dict, seed: int) -> dict:
    """N(0, 1/fan_in) weights, N(0, 0.02^2) biases, RMS-norm gammas 1 + N(0, 0.02^2), in sorted-key order."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = torch.Size(shapes[key])
        if key.endswith("gamma"):
            out[key] = 1 + 0.02 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2:
            out[key] = torch.randn(shape, generator=gen) / shape[1:].numel() ** 0.5
        else:
            out[key] = 0.02 * torch.randn(shape, generator=gen)
    return out


def latents(seed: int = SEED) -> torch.Tensor:
    return torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(seed + 1))


def _source(release: str, path: str) -> tuple[str, str]:
    """(file text, commit) from a checkout or a bare git dir."""
    if os.path.isfile(os.path.join(release, path)):
        git = ["git", "-C", release]
        text = Path(release, path).read_text()
    else:
        git = ["git", f"--git-dir={release}"]
        text = subprocess.run(git + ["show", f"HEAD:{path}"], capture_output=True, text=True, check=True).stdout
    try:
        commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return text, commit


def _stubs():
    def rearrange(x, pattern, t=None):
        if pattern.replace(" ", "") == "bcthw->(bt)chw":
            b, c, tt, h, w = x.shape
            return x.permute(0, 2, 1, 3, 4).reshape(b * tt, c, h, w)
        if pattern.replace(" ", "") == "(bt)chw->bcthw":
            bt, c, h, w = x.shape
            return x.reshape(bt // t, t, c, h, w).permute(0, 2, 1, 3, 4)
        raise NotImplementedError(pattern)

    import logging

    mods = {"loguru": {"logger": logging.getLogger("lightx2v")}, "einops": {"rearrange": rearrange},
            "lightx2v": {}, "lightx2v.utils": {}, "lightx2v.utils.envs": {"GET_USE_CHANNELS_LAST_3D": lambda: False},
            "lightx2v.utils.utils": {"load_weights": None}, "lightx2v_platform": {}, "lightx2v_platform.base": {},
            "lightx2v_platform.base.global_var": {"AI_DEVICE": "cpu"},
            "lightx2v.models": {}, "lightx2v.models.video_encoders": {}, "lightx2v.models.video_encoders.hf": {}}
    for name, attrs in mods.items():
        if name not in sys.modules or name.startswith("lightx2v"):
            m = types.ModuleType(name)
            m.__path__ = []
            m.__dict__.update(attrs)
            sys.modules[name] = m


def _exec(name: str, text: str):
    m = types.ModuleType(name)
    sys.modules[name] = m
    exec(compile(text, name, "exec"), m.__dict__)
    return m


def release_outputs(release: str, workdir: str) -> tuple[dict, dict]:
    _stubs()
    tae_src, commit = _source(release, FILES["tae"])
    _exec("lightx2v.models.video_encoders.hf.tae", tae_src)
    tiny = _exec("lightx2v_vae_tiny", _source(release, FILES["vae_tiny"])[0])
    wan = _exec("lightx2v_wan_vae", _source(release, FILES["vae"])[0])
    z = latents()
    from safetensors.torch import save_file

    # LightTAE: the TAEHV layout; the release loads it strictly
    shapes_tae = {k: tuple(v.shape) for k, v in sys.modules["lightx2v.models.video_encoders.hf.tae"]
                  .TAEHV(checkpoint_path=None).state_dict().items()}
    sd_tae = seeded_state_dict(shapes_tae, SEED)
    last = max((k for k in sd_tae if k.startswith("decoder.") and k.endswith(".bias")), key=lambda k: int(k.split(".")[1]))
    sd_tae[last] = sd_tae[last] + 0.8
    path = os.path.join(workdir, "lighttaew2_1.safetensors")
    save_file(sd_tae, path)
    tae = tiny.WanVAE_tiny(vae_path=path, dtype=torch.float32, need_scaled=True)
    with torch.no_grad():
        out_tae = tae.decode(z[0].clone())  # [1, 3, 4F-3, 8h, 8w] in [-1, 1]
    # LightVAE: WanVAE_ with the release's config and pruning rate
    torch.manual_seed(0)
    vae = wan.WanVAE_(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                      temperal_downsample=[False, True, True], dropout=0.0, pruning_rate=0.75).eval()
    shapes_vae = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    vae.load_state_dict(seeded_state_dict(shapes_vae, SEED + 7))
    scale = [torch.tensor(WAN21_MEAN), 1.0 / torch.tensor(WAN21_STD)]
    with torch.no_grad():
        out_vae = vae.decode(z.clone(), scale)
    tensors = {"latents": z, "lighttae_decoded": out_tae.contiguous(), "lightvae_decoded": out_vae.contiguous()}
    meta = {"release_commit": commit, "lightvae_shapes": shapes_vae, "lighttae_shapes": shapes_tae}
    return tensors, meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    release = os.environ.get("LIGHTX2V_RELEASE", "/tmp/LightX2V")
    import tempfile

    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as tmp:
        tensors, meta = release_outputs(release, tmp)
    if args.check:
        ref = load_file(str(FIXTURES / "golden.safetensors"))
        worst = max(((tensors[k] - ref[k]).norm() / ref[k].norm()).item() for k in ref)
        print(f"max relative difference to the committed fixtures: {worst:.3g}")
        return 0 if worst <= 1e-6 else 1
    FIXTURES.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(FIXTURES / "golden.safetensors"))
    manifest = {"seed": SEED, "release": "github.com/ModelTC/LightX2V", **meta, "files": FILES,
                "shapes": {k: list(v.shape) for k, v in tensors.items()}, "torch": torch.__version__,
                "command": "LIGHTX2V_RELEASE=<dir> python tests/release/lightx2v_golden.py"}
    (FIXTURES / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {FIXTURES} (release {meta['release_commit']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
