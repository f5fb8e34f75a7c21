"""``mila``: coarse anchors, then recurrent (re)fine clips with JDC and TPD.

- coarse rollouts (role ``coarse``) generate anchors every r = ``anchor_stride`` latent
  positions, ``anchors_per_rollout`` per joint job, each rollout starting from the
  previous one's last anchor (as in ``longdwm``);
- fine clips (role ``fine``) of ``clip_frames`` positions run in order. Clip [s, s+n)
  reads the last ``history_frames`` fine frames before s and the next ``lookahead``
  anchors after the clip as clean context; anchors inside the clip are re-noised to
  ``jdc_sigma`` from their coarse latent and denoised jointly with the clip (JDC: their
  schedules start at jdc_sigma and end at 0 with the rest), so the anchors' final frames
  come from the fine pass;
- TPD (``tpd`` > 0): every frame of a clip gets its own sigma sequence; earlier frames
  reach low sigma sooner and all reach 0 at the last step (:func:`tpd_table`).

Coarse jobs draw their noise from stream block 1, fine jobs from block 0, so an anchor's
coarse and fine noise differ.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .core import INPUT, Clip, Plan, PlanError, coarse_rollouts, make_job

@dataclass(frozen=True)
class MilaOptions:
    """Options of ``mila`` (see the module docstring).

    JDC: an anchor inside a fine clip is re-noised from its coarse latent x0 to
    x = (1 - s) x0 + s eps_total, eps_total = sqrt(1 - beta^2) eps + beta eps_s, with eps
    Gaussian, eps_s the high-pass of x0 standardised per channel and frame (structured
    noise), beta = ``jdc_structure`` in [0, 1] (0: plain Gaussian re-noising), so the added
    noise keeps unit variance. Its timestep is linear in the clip's: sigma_anchor(i) =
    ``jdc_sigma`` * sigma_clip(i) (slope jdc_sigma; :class:`engine.plans.core.Job`).
    TPD: ``tpd`` is the strength of :func:`engine.plans.core.tpd_table` (0: one schedule).
    """

    anchor_stride: int = 4
    anchors_per_rollout: int = 5
    clip_frames: int = 4
    history_frames: int = 2
    jdc_sigma: float = 0.5
    tpd: float = 1.0
    lookahead: int = 1
    jdc_structure: float = 0.5


OPTIONS = tuple(f.name for f in fields(MilaOptions))


def _across(frames: dict, P: int) -> tuple[int, ...] | None:
    """RoPE of a job reading prior frames: the timeline positions themselves (prior frames
    0..P-1, the video from P), since the job spans the prior clip and the video clip."""
    return tuple(sorted(frames)) if P and min(frames) < P else None


def build_mila(num_frames: int, *, base: list[float], first_given: bool = False, anchor_stride: int,
               anchors_per_rollout: int, clip_frames: int, history_frames: int, jdc_sigma: float, tpd: float,
               lookahead: int, jdc_structure: float = 0.5, prior_frames: int = 0) -> Plan:
    """The mila plan for ``num_frames`` latent frames of video (module docstring).

    prior_frames P > 0 (MiLA's condition frames, ``generate(first_frames=...)``): the
    timeline starts with P given positions, an image clip (each frame encoded alone, not
    output; RoPE 0..P-1 just before the video's P..); the first coarse rollout and the
    first fine clip read all P as clean context, later fine clips their ``history_frames``
    as usual. The video clip (output) follows at positions P .. P + num_frames - 1, its
    anchors every ``anchor_stride`` from P."""
    P = int(prior_frames)
    if P < 0 or (P and first_given):
        raise PlanError(f"mila takes prior_frames >= 0 or first_given, not both; got prior_frames={prior_frames}")
    r, K, n = int(anchor_stride), int(anchors_per_rollout), int(clip_frames)
    if r < 1 or K < 2 or n < 1:
        raise PlanError(f"mila needs anchor_stride >= 1, anchors_per_rollout >= 2, clip_frames >= 1; got {r}, {K}, {n}")
    if not 0.0 < jdc_sigma <= 1.0:
        raise PlanError(f"jdc_sigma must lie in (0, 1], got {jdc_sigma}")
    if history_frames < 0 or lookahead < 0 or tpd < 0:
        raise PlanError("history_frames, lookahead and tpd must be >= 0")
    total = P + num_frames
    priors = list(range(P))
    anchors = list(range(P, total, r))
    coarse_of: dict[int, str] = {0: INPUT} if first_given else {p: INPUT for p in priors}
    jobs = []
    for j, (ctx, gen) in enumerate(coarse_rollouts(anchors, K, first_given)):
        jid = f"mila/coarse{j}"
        if j == 0:
            ctx = priors + list(ctx)
        frames = {p: (False, coarse_of[p]) for p in ctx}
        frames.update({p: (True, None) for p in gen})
        jobs.append(make_job(jid, "coarse", frames, base=base, outputs=(), kind="plan", noise_stream=1,
                             rope=_across(frames, P)))
        for p in gen:
            coarse_of[p] = jid
    fine_of: dict[int, str] = {0: INPUT} if first_given else {p: INPUT for p in priors}
    start = 1 if first_given else P
    anchor_set = set(anchors)
    for ci, s in enumerate(range(start, total, n)):
        clip = list(range(s, min(s + n, total)))
        hist = priors if ci == 0 and P else [p for p in range(max(0, s - history_frames), s)]
        ahead = [p for p in anchors if p > clip[-1]][:lookahead]
        frames = {p: (False, fine_of[p]) for p in hist}
        frames.update({p: (False, coarse_of[p]) for p in ahead})
        jdc = {}
        for p in clip:
            if p in anchor_set and coarse_of.get(p) not in (None, INPUT):
                frames[p] = (True, coarse_of[p])
                jdc[p] = jdc_sigma
            else:
                frames[p] = (True, None)
        jid = f"mila/fine{ci}"
        jobs.append(make_job(jid, "fine", frames, base=base, outputs=clip, start=jdc, tpd=tpd,
                             anchor_structure=float(jdc_structure) if jdc else 0.0, rope=_across(frames, P)))
        for p in clip:
            fine_of[p] = jid
    opts = dict(anchor_stride=r, anchors_per_rollout=K, clip_frames=n, history_frames=history_frames,
                jdc_sigma=jdc_sigma, tpd=tpd, lookahead=lookahead, jdc_structure=jdc_structure, prior_frames=P)
    clips = [Clip("prior", 0, P, kind="image", output=False), Clip("video", P, num_frames)] if P else []
    return Plan("mila", total, jobs, inputs=(0,) if first_given else tuple(priors), options=opts, clips=clips)
