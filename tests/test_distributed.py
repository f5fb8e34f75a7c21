"""The runtime over torch.distributed ranks (gloo on CPU): a static critical-path-first
assignment computed identically on every rank, latents crossing ranks by point-to-point
send/recv, rank 0 decoding in order -- bit-identical to the single-process video; a failing
job or a dead rank ends every rank with a clear error instead of a hang."""

import datetime
import json
import os
import socket
import time
import traceback

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

import engine
from engine.distributed import assign_jobs, distributed_active
from engine.plans import INPUT, build_plan
from helpers import Flaky

SMALL = dict(height=32, width=32, progress=False, prompt="x", seed=1)
RUNS = {
    "longdwm": dict(num_frames=25, strategy="longdwm", keyframes=3, fps_ratio=2),
    "mmpl": dict(num_frames=33, strategy="mmpl", segment_frames=4, anchor_frames=1, midpoint=2),
    "mila": dict(num_frames=33, strategy="mila", clip_frames=2, anchor_stride=2, anchors_per_rollout=2),  # anchors cross
    "mmpl-clips": dict(num_frames=33, strategy="mmpl", segment_frames=4, segment_clips=True),  # re-encoded hand-offs
    "ar-cache": dict(num_frames=13, strategy="ar"),  # one pinned KV-cache chain
    # the MMPL release: a KV-cache chain per segment, hand-offs decoded and re-encoded on rank 0
    "mmpl-release": dict(num_frames=157, recipe="mmpl-t2v-parallel",
                         sampler=engine.SamplerConfig(kind="unipc", num_steps=2, timesteps=None, guidance_scale=5.0,
                                                      schedule="wan")),
}
BAD = [6, 7, 8]  # frames of longdwm/fine3 at 41 video frames


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_Flaky = Flaky


class _Dying(_Flaky):
    """Kills its process in the middle of a job (a rank that crashes)."""

    def __init__(self, inner):
        super().__init__(inner, [])

    def forward(self, *a, **k):
        os._exit(0)


def _rank_main(rank: int, world: int, port: int, out: str):
    """One rank: the same generate() calls as the single-process run."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=20))
    report = {"rank": rank}
    try:
        assert distributed_active()
        tiny = engine.load_model("tiny-random", device="cpu")
        for name, kw in RUNS.items():
            v = engine.generate(tiny, devices=["cpu"], **SMALL, **kw)
            report[name] = {"frames": len(v), "jobs": sorted(j["id"] for j in v.stats.jobs),
                            "workers": sorted({j["worker"] for j in v.stats.jobs})}
            if rank == 0:
                np.save(os.path.join(out, f"{name}.npy"), v.frames)
        # a job that raises: every rank ends with an error naming it, nobody hangs
        t0 = time.perf_counter()
        try:
            engine.generate(_Flaky(tiny, BAD), devices=["cpu"], num_frames=41, strategy="longdwm", keyframes=3,
                            fps_ratio=2, **SMALL)
            report["failure"] = "no error"
        except Exception as exc:  # noqa: BLE001
            report["failure"] = f"{type(exc).__name__}: {exc}"
            report["partial"] = len(getattr(exc, "video", []))
        report["failure_seconds"] = time.perf_counter() - t0
        # a rank that dies mid-run: the survivor gets a clear error, not a hang
        model = tiny
        if rank == 1:
            with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
                json.dump(report, f)
            model = _Dying(tiny)
        t0 = time.perf_counter()
        try:
            engine.generate(model, devices=["cpu"], **SMALL, **RUNS["longdwm"])
            report["dead_peer"] = "no error"
        except Exception as exc:  # noqa: BLE001
            report["dead_peer"] = f"{type(exc).__name__}: {exc}"
        report["dead_peer_seconds"] = time.perf_counter() - t0
    except BaseException:  # noqa: BLE001
        report["crash"] = traceback.format_exc()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


def test_assignment_is_deterministic_uses_all_ranks_and_orders_transfers():
    plan = build_plan("mmpl", 25, segment_frames=4, anchor_frames=1, midpoint=2)
    assert assign_jobs(plan, 3, workers=2) == assign_jobs(plan, 3, workers=2)
    a = assign_jobs(plan, 3)
    assert a == assign_jobs(plan, 3)
    assert set(a.rank) == {j.id for j in plan.all_jobs()} and set(a.rank.values()) == {0, 1, 2}
    assert all(a.rank[j.id] == 0 for j in plan.all_jobs() if j.kind == "decode")  # the VAE lives on rank 0
    for job in plan.jobs:  # a job finishes after everything it depends on
        assert all(a.finish[job.id] > a.finish[d] for d in job.deps)
    # every remote read and every off-rank output is one transfer, in producer-finish order
    need = {(s, p, a.rank[s], a.rank[j.id]) for j in plan.all_jobs() for p, s in plan.reads_of(j)
            if s != INPUT and a.rank[s] != a.rank[j.id]}
    need |= {(s, p, a.rank[s], 0) for p, s in plan.output_map().items() if s != INPUT and a.rank[s] != 0}
    assert set(a.transfers) == need and len(a.transfers) == len(need)
    assert [a.finish[t[0]] for t in a.transfers] == sorted(a.finish[t[0]] for t in a.transfers)
    # a chain does not get spread: the AR history plan is one sequential chain
    chain = build_plan("ar", 12, chunk_frames=3, context="history", history_frames=3)
    assert len({r for j, r in assign_jobs(chain, 2).rank.items() if not j.startswith("decode/")}) == 1
    # one rank: everything local, nothing to send
    one = assign_jobs(plan, 1)
    assert set(one.rank.values()) == {0} and one.transfers == []


def test_two_ranks_bit_identical_to_one_process_and_failures_do_not_hang(tmp_path):
    port = _free_port()
    t0 = time.perf_counter()
    ctx = mp.start_processes(_rank_main, args=(2, port, str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    refs = {}
    tiny = engine.load_model("tiny-random", device="cpu")
    for name, kw in RUNS.items():  # the single-process reference, computed while the ranks run
        refs[name] = engine.generate(tiny, devices=["cpu"], **SMALL, **kw)
    while not ctx.join(timeout=60):
        assert time.perf_counter() - t0 < 120, "distributed ranks hung"
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rep in reports:
        assert "crash" not in rep, rep["crash"]
    r0, r1 = reports
    for name, ref in refs.items():
        frames = np.load(tmp_path / f"{name}.npy")
        assert frames.shape == ref.frames.shape and ref.frames.std() > 1.0
        assert np.array_equal(frames, ref.frames), f"{name}: 2 ranks differ from 1 process"
        assert r0[name]["frames"] == len(ref) and r1[name]["frames"] == 0  # rank 0 emits the video
        # the ranks split the jobs between them, each exactly once
        jobs0, jobs1 = set(r0[name]["jobs"]), set(r1[name]["jobs"])
        assert jobs0 and (jobs1 or name == "ar-cache") and not jobs0 & jobs1  # one KV-cache chain: one rank
        assert jobs0 | jobs1 == {j["id"] for j in ref.stats.jobs}
        assert r0[name]["workers"] == ["r0/w0:cpu"] and r1[name]["workers"] == (["r1/w0:cpu"] if jobs1 else [])
    for rep in reports:  # the failing job is named on both ranks, quickly
        assert "longdwm/fine3" in rep["failure"] and "GenerationError" in rep["failure"], rep["failure"]
        assert rep["failure_seconds"] < 15
    assert "simulated device failure" in r0["failure"] + r1["failure"]
    assert "lost contact with rank 1 while" in r0["dead_peer"], r0["dead_peer"]  # sending or receiving
    assert r0["dead_peer"] != "no error" and r0["dead_peer_seconds"] < 25
