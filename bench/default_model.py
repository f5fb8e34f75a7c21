"""The README's main command, trained against random: ``generate --model tiny`` (the
embedded trained model at its default 64 x 112 and its own sampler) beside the random
``tiny-random`` preset (at its default 128 x 128 -- what the main command ran before the
trained model shipped -- and at 64 x 112), same run, same frames.

    python bench/default_model.py [--frames 33] [--repeats 5] [--out PATH]   # default out/bench/default-model-cpu-<date>.json
    python bench/default_model.py --smoke     # seconds: 5 frames, one repeat, no CLI runs (for the tests)

The committed result was written with ``--out bench/results/default-model-cpu-<date>.json``.

Three measurements per model, interleaved so machine load hits both alike:

- ``generate_s``: ``engine.generate(model, num_frames=...)`` in this process, model loaded
  once (median of ``--repeats`` after one warm-up);
- ``cli_s``: the whole ``python -m engine generate --model M --num-frames N --out x.mp4``
  (a fresh process: imports, loading, generation, mp4), median of ``--cli-repeats``;
- the summed time of its denoise and decode jobs (``video.stats.jobs``).

Ratios are trained / random; below 1 the trained default is faster.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402
from bench.bench_io import cpu_name, out_path  # noqa: E402

CASES = (("tiny", None), ("tiny-random", None), ("tiny-random", (64, 112)))


def _name(model: str, size) -> str:
    return model + ("" if size is None else f"@{size[0]}x{size[1]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cli-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--smoke", action="store_true", help="seconds, for the tests: 5 frames, one repeat, no CLI runs")
    p.add_argument("--out", default=None, help="JSON path (default out/bench/default-model-cpu-<date>.json)")
    a = p.parse_args(argv)
    if a.smoke:
        a.frames, a.repeats, a.cli_repeats = 5, 1, 0
    if a.threads:
        torch.set_num_threads(a.threads)
    models = {m: engine.load_model(m, device="cpu") for m in dict.fromkeys(m for m, _ in CASES)}
    rows = {_name(m, s): {"model": m, "size": None, "generate_s": [], "dit_s": [], "decode_s": [], "cli_s": []}
            for m, s in CASES}
    for rep in range(a.repeats + 1):  # rep 0: warm-up
        for m, s in CASES:
            kw = {} if s is None else {"height": s[0], "width": s[1]}
            t0 = time.perf_counter()
            video = engine.generate(models[m], num_frames=a.frames, seed=rep, progress=False, **kw)
            dt = time.perf_counter() - t0
            r = rows[_name(m, s)]
            r["size"] = list(video.frames.shape[1:3])
            if rep:
                r["generate_s"].append(dt)
                jobs = video.stats.jobs
                r["dit_s"].append(sum(j["end"] - j["start"] for j in jobs if j["kind"] not in ("decode", "encode")))
                r["decode_s"].append(sum(j["end"] - j["start"] for j in jobs if j["kind"] == "decode"))
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.cli_repeats):
            for m, s in CASES:
                cmd = [sys.executable, "-m", "engine", "generate", "--model", m, "--num-frames", str(a.frames),
                       "--out", os.path.join(tmp, "x.mp4")]
                if s is not None:
                    cmd += ["--height", str(s[0]), "--width", str(s[1])]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
                rows[_name(m, s)]["cli_s"].append(time.perf_counter() - t0)
    summary = {}
    for k, r in rows.items():
        summary[k] = {"model": r["model"], "size": r["size"],
                      "generate_s_median": statistics.median(r["generate_s"]),
                      "cli_s_median": statistics.median(r["cli_s"]) if r["cli_s"] else None,
                      "generate_s": [round(v, 3) for v in r["generate_s"]], "cli_s": [round(v, 3) for v in r["cli_s"]]}
        summary[k]["denoise_jobs_s_median"] = statistics.median(r["dit_s"])
        summary[k]["decode_jobs_s_median"] = statistics.median(r["decode_s"])
    t = summary["tiny"]
    ratios = {f"tiny/{k}": {"generate": t["generate_s_median"] / v["generate_s_median"],
                            "cli": t["cli_s_median"] / v["cli_s_median"] if a.cli_repeats else None}
              for k, v in summary.items() if k != "tiny"}
    res = {"bench": "default_model", "date": datetime.date.today().isoformat(), "command": " ".join(["python", "bench/default_model.py", *(sys.argv[1:] if argv is None else argv)]),
           "device": "cpu", "cpu": cpu_name(), "smoke": a.smoke, "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "frames": a.frames,
           "samplers": {m: repr(engine.generation.default_sampler(models[m])) for m in models},
           "results": summary, "ratios": ratios}
    out = out_path(a.out, f"default-model-cpu{'-smoke' if a.smoke else ''}-{res['date']}.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    for k, v in summary.items():
        cli = "" if v["cli_s_median"] is None else f"  cli {v['cli_s_median']:.2f} s"
        print(f"{k:22s} {v['size']} generate {v['generate_s_median']:.2f} s{cli}")
    for k, v in ratios.items():
        cli = "" if v["cli"] is None else f"  cli {v['cli']:.2f}x"
        print(f"{k}: generate {v['generate']:.2f}x{cli}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
