"""``mmpl`` as the Tele-AI/MMPL release runs it (``MmplOptions(release="t2v" | "i2v")``).

What the release computes (MMPL_t2v/pipeline/casual_fps_inference.py ``inference``,
MMPL_t2v/wan/modules/causal_fps_model.py ``CausalWanSelfAttention.forward``; the I2V
variant in MMPL_i2v/), restated as a plan:

- A video is a chain of *segments*, each its own VAE clip of 21 latent frames (81 video
  frames) with RoPE positions 0..20 (every frame's temporal RoPE index is its index in the
  segment, also for non-contiguous stages).
- A segment is denoised in *stages*, each one bidirectional pass over its frames (no mask
  inside a stage), every stage with its own 50-step sampler run:
  T2V ``[0,1] | [2,3,10,11,12,19,20] | [4..9] | [13..18]`` (micro planning = stage 1);
  I2V ``[0] | [1] | [2,3,10,11,12,19,20] | [4..9] | [13..18]``.
- A stage's queries see the keys of the earlier stages listed in :data:`T2V_SEES` /
  :data:`I2V_SEES` plus their own (the release's ``attention_vis_index``; T2V stage 2
  does not see frames 19, 20, stage 3 sees them again; I2V never hides them).
- Keys and values live in one KV cache per segment (rows cond + uncond under CFG) of 15
  frame slots, as the release's: written with RoPE during every step of every stage but
  the last, then overwritten by one pass at t = 0 over the stage's clean result (the
  release's "refresh"); the last stage writes nothing: it attends to the cache followed by
  its own keys (and its refresh pass is skipped: nothing reads it).
- Noise: fresh per segment. The release replaces the noise of frames 4, 9, 13, 18 by
  ``add_noise(x, randn, t)`` with sigma exactly 1.0, which is fresh noise again: every
  frame of a segment starts from its own draw.
- Chaining (``handoff``):
  ``"tail"`` (Wan_fps_inference_1gpu.py): decode the whole segment, encode its last 5
  decoded frames as the next segment's frames 0, 1 (their cache entries are written by
  t = 0 passes, as the release's ``initial_latent`` branch); every segment drops its first
  5 video frames in the output (the first one too): 76 frames per segment.
  ``"stage1"`` (Wan_fps_inference_parallel_4gpu_*.py): once stage 1 is done, decode the
  latent sequence [f0, f19, f19, f20] and encode its video frames 8..12 as the next
  segment's frames 0, 1 -- segment k+1 starts while segment k still populates, so the
  segments overlap across workers. The release saves every segment as its own 81-frame
  video; one continuous stream here drops the 5 frames each later segment repeats:
  81 + 76 (n - 1) frames.
- I2V: the image's latent (``first_frame``) is frame 0 of the first segment; later
  segments write their two re-encoded frames with one t = 0 pass each (frame 1 seeing 0).

Paper-only variants (interpolated noise, anchor bundles, ``min_memory``) are the other
``mmpl`` options; they are not part of the release layout.
"""

from __future__ import annotations

from .core import INPUT, CacheSpec, Clip, DecodeJob, EncodeJob, Plan, PlanError, make_job

SEGMENT = 21  # latent frames per segment (81 video frames)
T2V_STAGES = ((0, 1), (2, 3, 10, 11, 12, 19, 20), tuple(range(4, 10)), tuple(range(13, 19)))
T2V_SEES = ((), (0, 1), (0, 1, 2, 3, 10, 11, 12), tuple(range(13)) + (19, 20))
I2V_STAGES = ((0,), (1,)) + T2V_STAGES[1:]
I2V_SEES = ((), (0,), (0, 1), (0, 1, 2, 3, 10, 11, 12, 19, 20), tuple(range(13)) + (19, 20))
HANDOFFS = ("tail", "stage1")
DROP = 5  # video frames each chained segment repeats (its 2 re-encoded latents)


def release_segments(video_frames: int, handoff: str) -> int:
    """Segments for a requested video length: 76 n frames (``tail``) or 81 + 76 (n - 1)
    (``stage1``); anything else raises naming the nearest lengths."""
    extra = 0 if handoff == "tail" else DROP
    per = 4 * (SEGMENT - 1) + 1 - DROP
    if not isinstance(video_frames, int) or video_frames < per + extra or (video_frames - extra) % per:
        n = max(1, round((int(video_frames) - extra) / per)) if isinstance(video_frames, int) else 1
        ok = ", ".join(str(k * per + extra) for k in range(max(1, n - 1), n + 2))
        raise PlanError(f"num_frames={video_frames} does not fit the MMPL release's segments of 81 frames chained "
                        f"with the {handoff!r} hand-off: use {per}*n{' + 5' if extra else ''} frames ({ok})")
    return (video_frames - extra) // per


def build_mmpl_release(num_frames: int, *, base: list[float], first_given: bool, variant: str,
                       handoff: str) -> Plan:
    """The release's plan over ``num_frames`` = 21 n latent positions (n segments, see the
    module docstring); ``first_given`` (I2V): position 0 is the image latent."""
    if variant not in ("t2v", "i2v"):
        raise PlanError(f"mmpl release must be 't2v' or 'i2v', got {variant!r}")
    if handoff not in HANDOFFS:
        raise PlanError(f"mmpl release handoff must be one of {HANDOFFS}, got {handoff!r}")
    if variant == "t2v" and first_given:
        raise PlanError("the MMPL T2V release starts from noise; for a first frame use release='i2v' (mmpl-i2v)")
    if variant == "i2v" and not first_given:
        raise PlanError("the MMPL I2V release starts from an image: pass first_frame")
    if num_frames < SEGMENT or num_frames % SEGMENT:
        raise PlanError(f"the MMPL release runs segments of {SEGMENT} latent frames; got {num_frames} positions")
    stages, sees = (T2V_STAGES, T2V_SEES) if variant == "t2v" else (I2V_STAGES, I2V_SEES)
    stage_of = {f: g for g, st in enumerate(stages) for f in st}
    nseg = num_frames // SEGMENT
    producer: dict[int, str] = {0: INPUT} if first_given else {}
    jobs, clips, decodes, encodes, caches = [], [], [], [], {}
    for k in range(nseg):
        S = k * SEGMENT
        drop = DROP if (handoff == "tail" or k > 0) else 0
        clips.append(Clip(f"seg{k}", S, SEGMENT, rope_origin=S, drop=drop))
        cache = f"seg{k}"
        # slots for every frame but the last stage's (which only reads), as the release's 15
        caches[cache] = CacheSpec(chunk_frames=max(len(st) for st in stages), max_frames=SEGMENT - len(stages[-1]),
                                  origin=S, visible="plan")
        for g, stage in enumerate(stages):
            gen = [f for f in stage if S + f not in producer]
            if not gen:
                continue  # frames handed in (image, re-encoded): written by the next job's clean passes
            if len(gen) != len(stage):
                raise PlanError(f"segment {k} stage {g}: frames {stage} are partly given")
            rel = sorted(set(sees[g]) | set(stage))
            frames = {S + f: (f in stage, None if f in stage else producer[S + f]) for f in rel}

            def row(f):  # what frame f's pass sees: its own stage's context and stage
                h = stage_of[f]
                return set(sees[h]) | set(stages[h])

            vis = [[c in row(f) for c in rel] for f in rel]
            jid = f"mmpl/seg{k}/stage{g}"
            last = g == len(stages) - 1
            jobs.append(make_job(jid, "main", frames, base=base, outputs=[S + f for f in stage], visibility=vis,
                                 kind="plan" if g <= 1 else "populate", cache=cache, extra_passes=0 if last else 1))
            for f in stage:
                producer[S + f] = jid
        if k + 1 == nseg:
            break
        nxt = (S + SEGMENT, S + SEGMENT + 1)
        eid = f"mmpl/seg{k + 1}/reencode"
        if handoff == "tail":  # the segment's last 5 decoded frames
            frames = tuple((f"seg{k}", i) for i in range(4 * (SEGMENT - 1) + 1 - DROP, 4 * (SEGMENT - 1) + 1))
        else:  # decode [f0, f19, f19, f20] after stage 1, take its video frames 8..12
            did = f"mmpl/seg{k}/handoff"
            decodes.append(DecodeJob(did, tuple((S + f, producer[S + f]) for f in (0, 19, 19, 20))))
            frames = tuple((did, i) for i in range(8, 13))
        encodes.append(EncodeJob(eid, frames, nxt))
        for p in nxt:
            producer[p] = eid
    opts = dict(release=variant, handoff=handoff, segment_frames=SEGMENT)
    return Plan("mmpl", num_frames, jobs, inputs=(0,) if first_given else (), options=opts, clips=clips,
                decodes=decodes, encodes=encodes, caches=caches)
