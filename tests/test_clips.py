"""Plans over several VAE clips: decode and encode jobs in the DAG, pixel hand-offs between
clips, parallel decode, in-order stitching, failures of VAE jobs."""

import numpy as np
import pytest
import torch

import engine
from engine.generation import GenerationError
from engine.models.vae import StreamingDecoder
from engine.plans import Clip, DecodeJob, EncodeJob, PlanError, build_plan, make_job
from engine.plans.core import Plan
from engine.video import read_video_frames

SMALL = dict(height=32, width=32, progress=False, prompt="x")
MMPL3 = dict(strategy="mmpl", segment_frames=4, segment_clips=True)  # 3 segments at 49 frames
LONGDWM = dict(strategy="longdwm", keyframes=3, fps_ratio=2, keyframe_clips=True)


@pytest.fixture(scope="module")
def tiny():
    return engine.load_model("tiny-random", device="cpu")


class RecordingDecoder(StreamingDecoder):
    """A streaming decoder that keeps what it was given and what it returned."""

    made: list = []

    def __init__(self, vae):
        super().__init__(vae)
        self.latents, self.frames = [], []
        RecordingDecoder.made.append(self)

    def decode_chunk(self, latents, normalized=True):
        out = super().decode_chunk(latents, normalized)
        self.latents.append(latents.clone())
        self.frames.append(out.clone())
        return out


def test_three_clips_chained_by_reencode_plan():
    plan = build_plan("mmpl", 13, segment_frames=4, segment_clips=True)
    assert [c.id for c in plan.clips] == ["seg0", "seg1", "seg2"]
    assert [c.drop for c in plan.clips] == [0, 1, 1] and [c.rope_origin for c in plan.clips] == [0, 5, 10]
    assert plan.video_frames == 4 * 12 + 1
    # segment k+1's initial latent is made by re-encoding decoded pixels of segment k's hand-off
    enc = plan.job("mmpl/seg1/reencode")
    assert isinstance(enc, EncodeJob) and plan.deps_of(enc) == ("mmpl/seg0/handoff",)
    assert plan.job("mmpl/seg1/plan").sources[0] == "mmpl/seg1/reencode"
    assert plan.rope_of(plan.job("mmpl/seg1/plan"))[0] == 0  # positions restart in every clip
    hand = plan.job("mmpl/seg0/handoff")
    assert hand.positions == (0, 4, 4) and hand.clip is None  # [initial, copy of terminal, terminal]
    # every output clip is decoded by its own chain; chains do not depend on each other
    for clip, chain in plan.output_sequence():
        assert [d.clip for d in chain] == [clip.id] * len(chain)
        assert chain[0].chain is None and all(b.chain == a.id for a, b in zip(chain, chain[1:]))
        assert sum(d.frames for d in chain) == clip.frames
    assert plan.describe()["summary"]["encode_jobs"] == 2


def test_three_clips_same_video_on_any_workers_each_clip_decodes_alone(tiny):
    runs = {}
    for label, devs, shuffle in [("1", ["cpu"], None), ("2", ["cpu"] * 2, None), ("2-shuffled", ["cpu"] * 2, 3)]:
        RecordingDecoder.made = []
        v = engine.generate(tiny, num_frames=49, devices=devs, shuffle=shuffle, seed=1, decoder=RecordingDecoder,
                            **SMALL, **MMPL3)
        assert v.frames.shape == (49, 32, 32, 3) and v.frames.std() > 1.0
        runs[label] = (v, list(RecordingDecoder.made))
    ref = runs["1"][0].frames
    for label, (v, _) in runs.items():
        assert np.array_equal(v.frames, ref), f"{label} workers differ"
    # each output clip's decode equals decoding that clip's latents alone, in one go
    v, decoders = runs["2"]
    clip_decoders = [d for d in decoders if sum(x.shape[2] for x in d.latents) == 5]
    assert len(clip_decoders) == 3  # hand-off decodes see 3 latents
    from engine.video import to_uint8_frames

    from engine.runtime import run_pinned

    alone = []
    for d in clip_decoders:  # decoded on the runtime's thread count (cpu_threads=1), whatever the caller's
        whole = run_pinned(1, StreamingDecoder(d.vae).decode_all, torch.cat(d.latents, 2))
        assert torch.equal(whole, torch.cat(d.frames, 2))
        alone.append(to_uint8_frames(whole)[0])
    alone.sort(key=lambda f: 0 if np.array_equal(f, ref[:17]) else 1)
    stitched = np.concatenate([alone[0]] + [a[1:] for a in alone[1:]])
    assert stitched.shape == ref.shape
    # in order: the chunks' latent positions increase through the clips
    pos = [p for c in v.stats.chunks for p in c["positions"]]
    assert pos == sorted(pos)
    # decode jobs ran on both workers, and were counted in the stats
    jobs = v.stats.runtime.jobs
    assert {j["worker"] for j in jobs if j["kind"] == "decode"} == {"w0:cpu", "w1:cpu"}
    assert {j["kind"] for j in jobs} >= {"plan", "decode", "encode"}


def test_first_frame_arrives_before_the_last_clip_is_denoised(tiny):
    v = engine.generate(tiny, num_frames=49, devices=["cpu", "cpu"], seed=1, **SMALL, **MMPL3)
    rs = v.stats.runtime
    last = max(j["end"] for j in rs.jobs if j["id"].startswith("mmpl/seg2/") and j["kind"] != "encode")
    assert rs.first_output_seconds < last


def test_plan_for_a_model_is_the_plan_generate_runs(tiny):
    plan = engine.plan_for(tiny, num_frames=33, height=32, width=32, **MMPL3)
    assert plan.video_frames == 33 and [c.id for c in plan.clips] == ["seg0", "seg1"]
    v = engine.generate(tiny, num_frames=33, seed=1, **SMALL, **MMPL3)
    assert sorted(j["id"] for j in v.stats.runtime.jobs) == sorted(j.id for j in plan.all_jobs())


def test_keyframe_image_clips_same_video_on_any_workers(tiny):
    plan = build_plan("longdwm", 7, keyframes=3, fps_ratio=2, keyframe_clips=True)
    kf = [c for c in plan.clips if c.kind == "image"]
    assert len(kf) == 4 and all(c.output for c in kf)  # each keyframe is output once, as its own decoded frame
    assert all((c.drop, c.drop_tail) == (1, 1) for c in plan.clips if c.kind == "video")
    assert all(len(plan.clip_decodes[c.id]) == 1 and plan.clip_decodes[c.id][0].image for c in kf)
    videos = [engine.generate(tiny, num_frames=25, devices=devs, seed=2, **SMALL, **LONGDWM).frames
              for devs in (["cpu"], ["cpu"] * 3)]
    assert videos[0].shape == (25, 32, 32, 3) and np.array_equal(videos[0], videos[1])


def test_clip_plan_validation_names_the_problem():
    base = [1.0, 0.5, 0.0]
    job = make_job("j", "main", {0: (True, None), 1: (True, None)}, base=base, outputs=[0, 1])
    with pytest.raises(PlanError, match="without gaps"):
        Plan("x", 2, [job], clips=[Clip("a", 0, 1), Clip("b", 2, 1)]).validate()
    with pytest.raises(PlanError, match="span several clips"):
        Plan("x", 2, [job], clips=[Clip("a", 0, 1), Clip("b", 1, 1)]).validate()
    with pytest.raises(PlanError, match="neither a decoded clip"):
        Plan("x", 2, [job], encodes=[EncodeJob("e", (("nope", 0),), (1,))]).validate()
    with pytest.raises(PlanError, match="4k\\+1 frames"):
        Plan("x", 2, [make_job("j", "main", {0: (True, None)}, base=base, outputs=[0])],
             encodes=[EncodeJob("e", (("video", 0), ("video", 0)), (1,))]).validate()
    with pytest.raises(PlanError, match="frame 40 does not exist"):
        Plan("x", 2, [make_job("j", "main", {0: (True, None)}, base=base, outputs=[0])],
             encodes=[EncodeJob("e", (("video", 40),), (1,))]).validate()
    with pytest.raises(PlanError, match="not made by"):
        Plan("x", 2, [job], decodes=[DecodeJob("d", ((0, "other"),))]).validate()


def test_failing_decode_job_is_named_and_emitted_frames_kept(tiny, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = StreamingDecoder.decode_chunk

    def flaky(self, latents, normalized=True):
        calls["n"] += 1
        if calls["n"] == 14:  # late in the run: clip 0 is out by then
            raise RuntimeError("simulated VAE failure")
        return real(self, latents, normalized)

    monkeypatch.setattr(StreamingDecoder, "decode_chunk", flaky)
    out = tmp_path / "partial.mp4"
    with pytest.raises(GenerationError, match=r"decode job '.*' failed on worker w0:cpu.*simulated VAE") as info:
        engine.generate(tiny, num_frames=49, devices=["cpu"], seed=1, output=out, **SMALL, **MMPL3)
    err = info.value
    assert 0 < len(err.video) < 49
    assert read_video_frames(out).shape[0] == len(err.video)


def test_failing_encode_job_is_named(tiny, monkeypatch):
    import engine.models.vae as vae_mod

    def broken(vae, video):
        raise RuntimeError("simulated encoder failure")

    monkeypatch.setattr(vae_mod, "encode_frames", broken)
    with pytest.raises(GenerationError, match=r"encode job 'mmpl/seg1/reencode' failed.*simulated encoder"):
        engine.generate(tiny, num_frames=33, devices=["cpu", "cpu"], seed=1, **SMALL, **MMPL3)


def test_clip_plans_refuse_whole_video_conditions():
    i2v = engine.load_model("tiny-i2v", device="cpu")
    first = np.zeros((32, 32, 3), np.uint8) + 100
    with pytest.raises(ValueError, match="not cut per clip yet"):
        engine.generate(i2v, num_frames=33, first_frame=first, **SMALL, **MMPL3)


def test_cli_plan_only_prints_clips_and_jobs():
    import json
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "engine", "generate", "--strategy", "mmpl", "--segment-frames", "4",
                          "--segment-clips", "--num-frames", "33", "--height", "32", "--width", "32", "--plan-only"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert [c["id"] for c in d["clips"]] == ["seg0", "seg1"]
    kinds = {j["id"]: j.get("kind") for j in d["jobs"]}
    assert kinds["mmpl/seg0/handoff"] == "decode" and kinds["mmpl/seg1/reencode"] == "encode"
    assert d["summary"]["video_frames"] == 33


def test_longdwm_paper_layout_145_frames_from_13_keyframes():
    """LongDWM App. D: 13 keyframes (image clips) and 12 fine clips of 13 frames (4 latents:
    the re-encoded first keyframe + 3 generated) that also read the end keyframe; the video
    is every keyframe once plus 11 fine frames between each pair: 12 x 11 + 13 = 145."""
    from engine.plans import INPUT

    plan = build_plan("longdwm", 37, keyframes=13, fps_ratio=3, keyframe_clips=True, first_given=True)
    kf = [c for c in plan.clips if c.kind == "image"]
    pairs = [c for c in plan.clips if c.kind == "video"]
    assert len(kf) == 13 and len(pairs) == 12 and plan.video_frames == 145
    assert all(c.frames == 13 and c.frames - c.drop - c.drop_tail == 11 for c in pairs)
    assert all(plan.clip_decodes[c.id][0].image for c in kf)  # keyframes decoded as images
    coarse = [j for j in plan.jobs if j.model == "coarse"]
    assert len(coarse) == 1 and coarse[0].sources[0] == INPUT and coarse[0].rope == tuple(range(13))
    for a, pair in enumerate(pairs):
        fine = plan.job(f"longdwm/fine{a}")
        ends = [p for p, g in zip(fine.positions, fine.generated) if not g]
        assert ends == [pair.start, kf[a + 1].start]  # its re-encoded first keyframe and the next keyframe
        assert fine.generated_positions == tuple(range(pair.start + 1, pair.start + 4))
        head = plan.job(fine.sources[0])
        assert head.kind == "encode" and head.frames == ((f"kf{a}", 0),) and head.image
    steps = len(plan.jobs[0].sigmas) - 1
    assert plan.critical_path()[0] == 2 * steps  # one coarse rollout + one fine rollout
