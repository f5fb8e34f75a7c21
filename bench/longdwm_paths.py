"""LongDWM's critical path (issue 14's bar): a 145-frame video in DiT passes, beside ar's.

    python bench/longdwm_paths.py     # -> out/bench/longdwm-paths-<date>.json (plan arithmetic, no device)

``--out PATH`` writes elsewhere (the committed result: ``--out bench/results/longdwm-paths-<date>.json``).

The paper's layout (13 keyframes per coarse rollout from the first frame, 12 fine clips of
13 frames between them, ``keyframe_clips=True``, fps_ratio 3) against ar (3-latent
chunks over the KV cache) for the same 145 frames, with the few-step sampler and with 50
Euler steps. Every DiT pass counts 1 (CFG rows run in one batched pass).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from bench.bench_io import command, out_path  # noqa: E402
from engine.config import SamplerConfig  # noqa: E402
from engine.loading import build_model  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="JSON path (default out/bench/longdwm-paths-<date>.json)")
    p.add_argument("--smoke", action="store_true", help="accepted for symmetry: this is plan arithmetic, seconds")
    a = p.parse_args(argv)
    m = build_model(engine.PRESETS["tiny-random"])
    res = {"what": "critical path / total DiT passes of a 145-frame video: longdwm (paper layout) vs ar",
           "date": datetime.date.today().isoformat(), "command": command(), "samplers": {}}
    for name, s in (("fewstep-4", SamplerConfig()),
                    ("euler-50", SamplerConfig(kind="euler", num_steps=50, timesteps=None))):
        ld = engine.plan_for(m, num_frames=145, height=32, width=32, strategy="longdwm", keyframes=13, fps_ratio=3,
                             keyframe_clips=True, first_frame_given=True, sampler=s)
        ar = engine.plan_for(m, num_frames=145, height=32, width=32, strategy="ar", sampler=s, first_frame_given=True)
        res["samplers"][name] = {
            "longdwm": {"video_frames": ld.video_frames, "critical_path_passes": ld.critical_path()[0],
                        "total_passes": ld.total_passes(), "fine_clips": sum(1 for j in ld.jobs if j.model == "fine")},
            "ar": {"video_frames": ar.video_frames, "critical_path_passes": ar.critical_path()[0],
                   "total_passes": ar.total_passes()}}
    out = out_path(a.out, f"longdwm-paths-{res['date']}.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
