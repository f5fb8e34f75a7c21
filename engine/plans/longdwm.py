"""``longdwm``: coarse keyframes at low fps, fine interpolation between every pair.

Keyframes sit every r = ``fps_ratio`` latent positions: 0, r, 2r, ... (a video of F latent
frames needs (F-1) % r == 0). Each keyframe is its own latent frame on the timeline (no
temporal compression across keyframes: keyframe p decodes to video frames 4p-3 .. 4p,
like any latent frame). The coarse model sees the keyframes of one rollout on its own
low-fps time axis: RoPE position p / r (``coarse_rope="keyframe"``) or p (``"absolute"``).

- coarse rollout j: one joint job generating up to ``keyframes`` keyframes (K); rollouts
  after the first take the previous rollout's last keyframe as clean context and generate
  the next K-1 ("the next rollout starts from the last keyframe");
- fine job per adjacent pair (a, a+r): generates a+1 .. a+r-1 with both keyframes as
  clean context (visibility = :func:`kernels.patterns.interpolation`); all pairs are
  independent of each other, so they run in parallel.

Coarse jobs use model role ``coarse``, fine jobs ``fine``.
"""

from __future__ import annotations

from .core import INPUT, Plan, PlanError, frames_hint, make_job

OPTIONS = ("keyframes", "fps_ratio", "coarse_rope")


def build_longdwm(num_frames: int, *, base: list[float], first_given: bool = False, keyframes: int = 5,
                  fps_ratio: int = 3, coarse_rope: str = "keyframe") -> Plan:
    K, r = int(keyframes), int(fps_ratio)
    if K < 2:
        raise PlanError(f"longdwm keyframes (per coarse rollout) must be >= 2, got {keyframes}")
    if r < 1:
        raise PlanError(f"fps_ratio must be >= 1 latent frame between keyframes, got {fps_ratio}")
    if coarse_rope not in ("keyframe", "absolute"):
        raise PlanError(f"coarse_rope must be 'keyframe' or 'absolute', got {coarse_rope!r}")
    if (num_frames - 1) % r:
        lo = (num_frames - 1) // r * r + 1
        raise PlanError(f"{num_frames} latent frames do not fit longdwm with fps_ratio={r}: keyframes every {r} "
                        f"latent frames need (latent frames - 1) divisible by {r} ({frames_hint([lo, lo + r])})")
    kf = list(range(0, num_frames, r))
    producer: dict[int, str] = {0: INPUT} if first_given else {}
    jobs = []
    j, i = 0, 0  # rollout index, index of the rollout's first keyframe
    while True:
        ctx = [kf[i]] if kf[i] in producer else []
        gen = [p for p in kf[i:i + K] if p not in producer]
        if not gen:
            break
        jid = f"longdwm/coarse{j}"
        frames = {p: (False, producer[p]) for p in ctx}
        frames.update({p: (True, None) for p in gen})
        pos = sorted(frames)
        rope = tuple(p // r for p in pos) if coarse_rope == "keyframe" else None
        jobs.append(make_job(jid, "coarse", frames, base=base, outputs=gen, kind="plan", rope=rope))
        for p in gen:
            producer[p] = jid
        i = kf.index(gen[-1])
        j += 1
        if i == len(kf) - 1:
            break
    if r > 1:
        for a, bpos in zip(kf, kf[1:]):
            gen = list(range(a + 1, bpos))
            frames = {a: (False, producer[a]), bpos: (False, producer[bpos])}
            frames.update({p: (True, None) for p in gen})
            jobs.append(make_job(f"longdwm/fine{a // r}", "fine", frames, base=base, outputs=gen))
    opts = dict(keyframes=K, fps_ratio=r, coarse_rope=coarse_rope)
    return Plan("longdwm", num_frames, jobs, inputs=(0,) if first_given else (), options=opts)
