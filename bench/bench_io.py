"""Where the benchmarks write, and what every result says about the machine.

A benchmark run is a measurement of *this* machine, not a file of the repository: by
default every ``bench/*.py`` writes into ``out/bench/`` (ignored by git, so a fresh
checkout stays clean), or into ``$BENCH_OUT_DIR`` when that is set. ``bench/results/``
holds the committed results the documentation quotes; a script writes there only when
given ``--out bench/results/<name>`` explicitly.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "bench" / "results"  # the quoted results: written only through an explicit --out
DEFAULT_DIR = ROOT / "out" / "bench"    # /out/ is in .gitignore


def out_dir() -> Path:
    """``$BENCH_OUT_DIR`` if set, else ``out/bench/`` of the checkout."""
    env = os.environ.get("BENCH_OUT_DIR")
    return Path(env) if env else DEFAULT_DIR


def out_path(given: str | os.PathLike | None, name: str) -> Path:
    """``given`` (the user's ``--out``) as is, else ``out_dir() / name``; its folder is made."""
    p = Path(given) if given else out_dir() / name
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def unique(p: Path) -> Path:
    """``p``, or ``p`` with ``-2``, ``-3``, ... before the suffix if it exists."""
    n, q = 2, p
    while q.exists():
        q = p.with_name(f"{p.stem}-{n}{p.suffix}")
        n += 1
    return q


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str = "cpu") -> str:
    """The GPU's name for a CUDA device, else ``<cpu model> (<n> CPUs)``."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_name()} ({os.cpu_count()} CPUs)"


def command(argv: list[str] | None = None) -> str:
    """The command line that produced a result, as run from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]) if argv else Path("?")
    if script.is_absolute() and script.is_relative_to(ROOT):
        script = script.relative_to(ROOT)
    return " ".join(["python", str(script), *argv[1:]])


def meta(device: str = "cpu", argv: list[str] | None = None) -> dict:
    """device, cpu, torch, date, command: what every result JSON carries."""
    import torch

    return {"device": device_name(device), "cpu": cpu_name(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "command": command(argv)}
