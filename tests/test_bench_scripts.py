"""Every benchmark script runs as written, in its smallest mode (``--smoke``), and writes
its result outside the committed ``bench/results/`` (issue 27: ``bench/longdwm_cogvideox.py``
had crashed since a sampler change while the README quoted its figure, and six scripts
wrote dated files into the tracked folder by default). Checks the exit status and the
JSON's provenance keys -- never timings. ``bench/throughput.py``'s smoke run is in
tests/test_bench_throughput.py (it checks its figures too)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from bench import bench_io  # noqa: E402

# script -> (its smoke arguments, the result file's name prefix, provenance keys of the result)
SMOKE = {
    "longdwm_cogvideox": (["--smoke"], "longdwm-cogvideox-cpu-smoke-", ("device", "cpu", "torch", "date", "command")),
    "mmpl_release": (["--smoke"], "mmpl-release-cpu-smoke-", ("device", "cpu", "torch", "date", "command")),
    "longvie": (["--smoke"], "longvie-cpu-smoke-", ("device", "cpu", "torch", "date", "command")),
    "quality": (["--smoke"], "quality-smoke-", ("device", "cpu", "torch", "date", "command")),
    "strategies": (["--smoke"], "strategies-cpu-smoke-", ("device", "torch", "date", "command")),
    "batching": (["--smoke"], "batching-cpu-smoke-", ("device", "torch")),
    "decoders": (["--smoke"], "decoders-cpu-smoke", ("device", "torch", "date", "command")),
    "default_model": (["--smoke"], "default-model-cpu-smoke-", ("cpu", "torch", "date", "command")),
    "kernel_speed": (["--smoke"], "kernels-cpu-check-", ("device", "torch", "date", "command")),
    "longdwm_paths": ([], "longdwm-paths-", ("date", "command")),
    "tpd_plot": ([], "tpd_schedule.png", ()),
    "cpu_vs_references": (["--smoke"], "cpu-vs-references-smoke-", ("device", "torch", "date", "command")),
}
COVERED_ELSEWHERE = {"throughput"}  # tests/test_bench_throughput.py
NOT_SCRIPTS = {"baseline", "bench_io"}  # modules the scripts import


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_every_bench_script_has_a_smoke_run():
    """A script the docs quote (or any new one) cannot rot unseen: each one is run here."""
    scripts = {p.stem for p in BENCH.glob("*.py") if "__main__" in p.read_text()}
    assert scripts - NOT_SCRIPTS == set(SMOKE) | COVERED_ELSEWHERE, (
        f"bench scripts without a smoke run in tests/test_bench_scripts.py: "
        f"{sorted(scripts - NOT_SCRIPTS - set(SMOKE) - COVERED_ELSEWHERE)}")
    quoted = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text() if doc.is_file() else ""
        quoted |= {w.split("bench/")[1][:-3] for w in text.split() if w.startswith("bench/") and w.endswith(".py")}
    assert quoted - NOT_SCRIPTS <= set(SMOKE) | COVERED_ELSEWHERE, sorted(quoted)


def test_default_output_is_outside_the_committed_results(monkeypatch):
    monkeypatch.delenv("BENCH_OUT_DIR", raising=False)
    p = bench_io.out_path(None, "x.json")
    assert p == ROOT / "out" / "bench" / "x.json"
    assert bench_io.COMMITTED not in p.parents
    assert bench_io.out_path("bench/results/y.json", "x.json") == Path("bench/results/y.json")  # explicit: as given
    if shutil.which("git") and (ROOT / ".git").exists():  # ignored by git: a fresh clone stays clean
        r = subprocess.run(["git", "check-ignore", "-q", str(p)], cwd=ROOT)
        assert r.returncode == 0, f"{p} is not ignored by git"


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_bench_script_smoke(script, tmp_path):
    args, prefix, keys = SMOKE[script]
    out = tmp_path / "out"
    before = _snapshot(bench_io.COMMITTED)
    env = dict(os.environ, BENCH_OUT_DIR=str(out), PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _snapshot(bench_io.COMMITTED) == before, "a default run wrote into bench/results/"
    written = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    mine = [n for n in written if n.startswith(prefix)]
    assert mine, f"{script} wrote {written} into $BENCH_OUT_DIR, nothing named {prefix}*"
    for name in mine:
        if name.endswith(".json"):
            res = json.loads((out / name).read_text())
            for k in keys:
                assert res.get(k), (name, k)
            if "command" in keys:
                assert f"bench/{script}.py" in res["command"], res["command"]
        else:
            assert (out / name).stat().st_size > 0
