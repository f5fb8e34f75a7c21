"""tests/release/mmpl_golden.py regenerates the committed MMPL release fixtures bit for bit.

The script executes the public MMPL release's own code (Tele-AI/MMPL, extracted at
$MMPL_RELEASE, default /tmp/mmpl); without it this test is skipped.  The fixtures
themselves (tests/fixtures/mmpl_release/) are always committed and need no release.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "release" / "mmpl_golden.py"
FIXTURES = ROOT / "tests" / "fixtures" / "mmpl_release"
RELEASE = Path(os.environ.get("MMPL_RELEASE", "/tmp/mmpl"))

pytestmark = pytest.mark.skipif(
    not ((RELEASE / "MMPL_t2v").is_dir() and (RELEASE / "MMPL_i2v").is_dir()),
    reason=f"MMPL release sources not found at {RELEASE} (set MMPL_RELEASE to the extracted "
           "Tele-AI/MMPL checkout holding MMPL_t2v/ and MMPL_i2v/)",
)

# manifest fields that describe the machine / checkout rather than the computation
_VOLATILE = ("release_commit", "versions")


def _load_safetensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_same_tensors(a, b, what):
    assert sorted(a) == sorted(b), f"{what}: keys differ: {sorted(set(a) ^ set(b))}"
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{what}/{k}: dtype/shape differ"
        if not torch.equal(a[k], b[k]):
            diff = (a[k].double() - b[k].double()).abs().max().item()
            pytest.fail(f"{what}/{k}: regenerated tensor differs from the committed one (max |diff| {diff:.3g})")


def test_mmpl_golden_script_reproduces_committed_fixtures(tmp_path):
    out = tmp_path / "mmpl_release"
    env = dict(os.environ, MMPL_RELEASE=str(RELEASE))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=str(ROOT), env=env, check=False,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"mmpl_golden.py failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"

    _assert_same_tensors(_load_safetensors(out / "golden.safetensors"),
                         _load_safetensors(FIXTURES / "golden.safetensors"), "golden.safetensors")

    new_ck = torch.load(out / "t2v_tiny.pt", map_location="cpu")
    old_ck = torch.load(FIXTURES / "t2v_tiny.pt", map_location="cpu")
    assert sorted(new_ck) == sorted(old_ck) == ["generator", "generator_ema"]
    for name in new_ck:
        _assert_same_tensors(new_ck[name], old_ck[name], f"t2v_tiny.pt/{name}")

    _assert_same_tensors(_load_safetensors(out / "vae" / "diffusion_pytorch_model.safetensors"),
                         _load_safetensors(FIXTURES / "vae" / "diffusion_pytorch_model.safetensors"), "vae")
    new_cfg = json.loads((out / "vae" / "config.json").read_text())
    old_cfg = json.loads((FIXTURES / "vae" / "config.json").read_text())
    new_cfg.pop("_diffusers_version", None)
    old_cfg.pop("_diffusers_version", None)
    assert new_cfg == old_cfg

    new_m = json.loads((out / "golden.json").read_text())
    old_m = json.loads((FIXTURES / "golden.json").read_text())
    for k in _VOLATILE:
        new_m.pop(k, None)
        old_m.pop(k, None)
    assert new_m == old_m, "golden.json (manifest) differs from the committed one"
