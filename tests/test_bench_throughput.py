"""bench/throughput.py in --smoke mode (tiny model, few frames, one run per row), so the
benchmark never rots. Checks the shape of its JSON and that the baseline and the engine
did the same work -- never timings."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_KEYS = ("name", "kind", "strategy", "workers", "wall_s", "ttff_s", "fps", "dit_s", "vae_s", "other_s",
            "peak_memory_bytes", "flops", "model_flops_per_s", "mfu_dit", "speedup_vs_baseline",
            "ttff_speedup_vs_baseline")


def test_throughput_smoke(tmp_path):
    out = tmp_path / "throughput-cpu-smoke.json"  # the default smoke output, in $BENCH_OUT_DIR (never bench/results/)
    env = dict(os.environ, PYTHONUNBUFFERED="1", BENCH_OUT_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--smoke", "--devices", "cpu,cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "frames/s" in proc.stdout and "x base" in proc.stdout  # the table was printed
    res = json.loads(out.read_text())

    for key in ("bench", "date", "command", "device", "versions", "config", "matmul", "runs", "check", "scaling"):
        assert key in res, key
    assert res["versions"]["torch"] == __import__("torch").__version__
    assert res["config"]["smoke"] and res["config"]["max_workers"] == 2
    assert res["matmul"]["flops_per_s"] > 0

    runs = res["runs"]
    ok = [r for r in runs if "error" not in r]
    for r in ok:
        for k in RUN_KEYS:
            assert k in r, (r["name"], k)
        for k in ("fps", "speedup_vs_baseline", "ttff_speedup_vs_baseline", "mfu_dit", "model_flops_per_s"):
            assert math.isfinite(r[k]) and r[k] > 0, (r["name"], k, r[k])
        assert r["video_frames"] == res["config"]["frames"], r["name"]
    # (a) the baseline, (b) the engine's ar path per available backend, (c) every strategy at 1 and 2 workers
    assert [r["kind"] for r in ok].count("baseline") == 1
    assert {r["backend"] for r in ok if r["kind"] == "engine"} >= {"sdpa", "reference"}
    for s in ("mmpl", "longdwm", "mila"):
        assert {r["workers"] for r in ok if r["kind"] == "strategy" and r["strategy"] == s} == {1, 2}, s
    assert any(r["kind"] == "strategy" and r["strategy"] == "ar" for r in ok)
    # unavailable backends are reported, not silently dropped
    names = {r["name"] for r in runs}
    assert {"ar[triton]", "ar[flash-attn]", "ar[xformers]"} <= names

    # same work: the naive baseline and the engine's ar rollout give the same video
    chk = res["check"]
    assert chk["match"], chk
    assert chk["latent_max_abs_diff"] < 1e-3 and chk["frames_max_abs_diff"] <= 2
    # the runtime's output does not depend on the worker count
    for r in ok:
        if r["kind"] == "strategy" and r["workers"] == 2:
            assert r["same_output_as_1_worker"], r["name"]

    wb = res["work_budget"]  # FLOPs of the video and the frames/s ceiling they allow
    assert wb["dit_flops"] > 0 and wb["vae_decode_flops"] > 0, wb
    assert wb["total_flops"] == wb["dit_flops"] + wb["vae_decode_flops"]
    assert all(r["fps"] <= wb["ceiling_fps"] * 1.5 for r in ok)  # nothing beats the matmul roofline

    sc = res["scaling"]
    assert [e["seconds"] for e in sc["lengths"]] == [10, 30, 60, 120, 300]
    for e in sc["lengths"]:
        assert set(e["strategies"]) == {"ar", "mmpl", "longdwm"}
        for v in e["strategies"].values():
            assert v["critical_path_passes"] <= v["total_passes"]
            assert 0 < v["critical_path_flops"] <= v["total_flops"]
            assert math.isfinite(v["est_wall_s_serial"]) and v["est_wall_s_critical_path"] <= v["est_wall_s_serial"]
    # cost grows with the video: more passes at 5 min than at 10 s, for every strategy
    first, last = sc["lengths"][0]["strategies"], sc["lengths"][-1]["strategies"]
    assert all(last[s]["total_passes"] > first[s]["total_passes"] for s in first)


def test_work_budget_counts_the_chosen_decoder(tmp_path):
    """--decoder: the work budget's decode FLOPs are the light decoder's, not the VAE's."""
    import importlib.util

    import torch

    from engine.decoders import load_decoder
    from engine.models.taehv import TAEHV

    spec = importlib.util.spec_from_file_location("throughput", ROOT / "bench" / "throughput.py")
    tp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tp)
    torch.save(TAEHV().state_dict(), tmp_path / "taehv.pth")
    dec = load_decoder(tmp_path / "taehv.pth")
    light = tp.light_decode_flops(dec, (1, 16, 3, 4, 4))
    more = tp.light_decode_flops(dec, (1, 16, 5, 4, 4))
    assert light and more and more > light > 0  # counted, and it grows with the latent frames
