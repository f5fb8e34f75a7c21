"""tests/release/longvie_golden.py regenerates the committed LongVie release fixtures.

The script executes the public LongVie release's own code (Vchitect/LongVie, extracted at
$LONGVIE_RELEASE, default /tmp/lv); without it this test is skipped.  The fixtures themselves
(tests/fixtures/longvie/) are always committed and need no release.  Tensors must match bit for
bit, except float tensors, which may differ by at most 1e-6 (absolute) on another CPU / torch
build; the manifest must match except for the fields describing the checkout and the machine.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "release" / "longvie_golden.py"
FIXTURES = ROOT / "tests" / "fixtures" / "longvie"
RELEASE = Path(os.environ.get("LONGVIE_RELEASE", "/tmp/lv"))
FILES = ("golden.safetensors", "base.safetensors", "dit_overlay.safetensors", "control.safetensors",
         "vae.safetensors")
ATOL = 1e-6

pytestmark = pytest.mark.skipif(
    not (RELEASE / "diffsynth" / "pipelines" / "wan_video_new_longvie.py").is_file(),
    reason=f"LongVie release sources not found at {RELEASE} (set LONGVIE_RELEASE to the extracted "
           "Vchitect/LongVie checkout holding diffsynth/ and inference.py)",
)

# manifest fields that describe the machine / checkout rather than the computation
_VOLATILE = ("release_commit", "versions")


def _load(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_close_tensors(new, old, what):
    assert sorted(new) == sorted(old), f"{what}: keys differ: {sorted(set(new) ^ set(old))}"
    for k in new:
        a, b = new[k], old[k]
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}/{k}: dtype/shape differ"
        if torch.equal(a, b):
            continue
        if not a.is_floating_point():
            pytest.fail(f"{what}/{k}: regenerated {a.dtype} tensor differs from the committed one")
        diff = (a.double() - b.double()).abs().max().item()
        assert diff <= ATOL, f"{what}/{k}: regenerated tensor differs from the committed one (max |diff| {diff:.3g})"


def _assert_json_close(a, b, path="manifest"):
    """Equal JSON, except floats (a few findings statistics), which may differ by ATOL."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= ATOL, f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), f"{path}: keys differ: {sorted(set(a) ^ set(b))}"
        for k in a:
            _assert_json_close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lists differ in length"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_json_close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_longvie_golden_script_reproduces_committed_fixtures(tmp_path):
    out = tmp_path / "longvie"
    env = dict(os.environ, LONGVIE_RELEASE=str(RELEASE))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=str(ROOT), env=env, check=False,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"longvie_golden.py failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"

    for name in FILES:
        _assert_close_tensors(_load(out / name), _load(FIXTURES / name), name)

    new_m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    old_m = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))
    for k in _VOLATILE:
        new_m.pop(k, None)
        old_m.pop(k, None)
    _assert_json_close(new_m, old_m)
