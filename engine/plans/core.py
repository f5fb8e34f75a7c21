"""Plans: DAGs of denoise jobs on a latent-frame timeline (pure Python, no tensors).

Timeline
--------
A *position* is the absolute index of a latent frame of the video (0 .. F-1). The Wan
VAE's causal 4x temporal compression maps position 0 to video frame 0 and position
p >= 1 to video frames 4p-3 .. 4p, so a video of T = 4(F-1)+1 frames has F positions.
RoPE, noise and output order are all addressed by position.

Jobs
----
A :class:`Job` is one denoising run of one model over the frames of its forward pass,
listed in timeline order (``positions``). Each frame is either

- *context* (``generated[i] == False``): a clean latent fed at sigma 0, read from the job
  named in ``sources[i]`` (or :data:`INPUT`, a frame given by the caller); or
- *generated*: denoised here from sigma ``sigmas[0][k]`` to ``sigmas[-1][k] == 0``
  (k counts generated frames only). A generated frame with a source is a re-noised
  anchor (MiLA's JDC): it starts from its x0 in ``sources[i]`` noised to its first sigma;
  one without starts from pure noise (whatever the schedule's first sigma).

``visibility[i][j]``: may frame i attend to frame j within the pass. Context rows never see
generated frames (a clean frame must not depend on noise). ``outputs`` are the generated
positions that are final frames of the video; every position is output by exactly one job
(or is an input). ``after`` adds scheduling-only edges (no data).

Noise (see :mod:`engine_kernels.noise`): ``noise="fresh"`` draws frame noise from
(seed, ``noise_stream``*1000, position); ``"interp"`` interpolates the noise of the
``planning`` positions (stream 0, the planning jobs' own initial noise) with an optional
fresh share ``noise_rho``; ``"unified"`` gives the k-th generated frame of every clip
the same noise (LongVie 2), addressed by (seed, stream, k). Few-step re-noising after
step i uses stream ``noise_stream``*1000 + 1 + i (the table: :mod:`engine.noise_streams`).

Clips
-----
A :class:`Clip` is one independent VAE segment: a contiguous range of positions that the
VAE decodes as one causal sequence (``kind="video"``: its first latent gives 1 video
frame, every later one 4) or frame by frame (``kind="image"``: every latent is one
image encoded alone). It has its own RoPE origin (a frame's RoPE position is
``position - rope_origin`` unless the job sets ``rope``) and its place in the output:
``output`` clips are emitted in plan order, each without its first ``drop`` and its last
``drop_tail`` decoded
frames (where it overlaps the clip before). A plan without clips has one video clip over
the whole timeline: today's single continuous video.

Decode and encode jobs
----------------------
Besides denoise jobs (:class:`Job`), a plan has :class:`DecodeJob` s (latents -> pixels)
and :class:`EncodeJob` s (pixels -> latents). Every clip that is output or whose pixels
are read is decoded by a chain of decode jobs, derived by the plan: one per run of
consecutive positions made by the same producer, each continuing the causal decoder
state of the one before (an image clip: one independent decode per latent). A strategy
may add *hand-off* decodes of any latent sequence it assembles (e.g. MMPL's
[initial, copy of terminal, terminal]). An encode job reads decoded frames
``(pixel source, frame index)`` -- a clip id (its frames before ``drop``) or a hand-off
decode's id -- and produces the latents of positions of another clip, which denoise jobs
read like any other latent. So conditions made from pixels (history frames re-encoded,
a re-encoded terminal, an image keyframe) are ordinary edges of the DAG, scheduled on
workers like everything else.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field, replace

INPUT = "@input"
ROLES = ("main", "coarse", "fine")
NOISE_MODES = ("fresh", "interp", "unified")


class PlanError(ValueError):
    """A plan is malformed, or the requested video does not fit a strategy."""


@dataclass(frozen=True)
class Job:
    """One denoise job (see the module docstring).

    Re-noised anchors (MiLA's JDC, paper Sec. 3.3): a generated frame k with a source starts
    from its predicted clean latent x0 (the source's output) as

        x_k = (1 - s_k) x0 + s_k eps_total,   s_k = sigmas[0][k]
        eps_total = sqrt(1 - beta^2) eps + beta eps_s,   beta = ``anchor_structure``

    with eps the job's Gaussian noise for that frame and eps_s *structured* noise made from
    the anchor itself: the high-pass H(x0) (:func:`engine_kernels.highpass`), standardised to zero
    mean and unit variance per (channel, frame) over (h, w). eps and eps_s are independent,
    so Var(eps_total) = (1 - beta^2) + beta^2 = 1: the added noise stays standard normal, as
    the paper asks; beta (the paper's "noise scale") is a constant. The anchor's timestep is
    a linear function of the clip's: its column of ``sigmas`` is start * (the column a
    plain frame at its place would get), slope start = MiLA's ``jdc_sigma``
    (:func:`uniform_table`, :func:`tpd_table`). ``anchor_structure`` 0 (the default, every
    strategy but MiLA's fine clips) is plain Gaussian re-noising, bit for bit as before.
    """

    id: str
    model: str
    positions: tuple[int, ...]
    generated: tuple[bool, ...]
    sources: tuple[str | None, ...]
    sigmas: tuple[tuple[float, ...], ...]
    visibility: tuple[tuple[bool, ...], ...]
    outputs: tuple[int, ...]
    noise: str = "fresh"
    planning: tuple[int, ...] = ()
    noise_rho: float = 0.0
    noise_stream: int = 0
    rope: tuple[int, ...] | None = None
    after: tuple[str, ...] = ()
    kind: str = "populate"
    extra_passes: int = 0
    cache: str | None = None  # a KV cache (Plan.caches) this job's context lives in
    anchor_structure: float = 0.0  # beta: structured share of re-noised anchors' noise (JDC, above)
    # Clean latents handed on the model's *channels* (CogVideoX-I2V style: appended after the
    # noisy latents, zeros elsewhere): (frame index in positions, source position, producer).
    channel_frames: tuple[tuple[int, int, str], ...] = ()

    def __post_init__(self):
        if not 0.0 <= float(self.anchor_structure) <= 1.0:
            raise PlanError(f"job {self.id!r}: anchor_structure (beta of the anchors' structured noise, MiLA's "
                            f"jdc_structure) must lie in [0, 1], got {self.anchor_structure}")

    @property
    def pin(self) -> str | None:
        """Jobs with the same pin run on the same worker (the one owning their KV cache)."""
        return f"cache:{self.cache}" if self.cache is not None else None

    @property
    def generated_positions(self) -> tuple[int, ...]:
        return tuple(p for p, g in zip(self.positions, self.generated) if g)

    @property
    def context_positions(self) -> tuple[int, ...]:
        return tuple(p for p, g in zip(self.positions, self.generated) if not g)

    @property
    def reads(self) -> tuple[tuple[int, str], ...]:
        """(position, producer) of every latent this job reads (context and anchors). A
        KV-cache job does not read the context its own chain left in the cache (see
        :meth:`Plan.reads_of`)."""
        own = tuple((p, s) for p, s in zip(self.positions, self.sources) if s is not None)
        return own + tuple((p, s) for _, p, s in self.channel_frames if (p, s) not in own)

    @property
    def deps(self) -> tuple[str, ...]:
        """Jobs that must finish first: producers of what it reads, plus ``after``."""
        d = {s for s in self.sources if s is not None and s != INPUT}
        d.update(s for _, _, s in self.channel_frames if s != INPUT)
        d.update(self.after)
        return tuple(sorted(d))

    @property
    def passes(self) -> int:
        """DiT forward passes (sequential): one per sampler step (plus e.g. a KV-cache refresh)."""
        return len(self.sigmas) - 1 + self.extra_passes

    @property
    def rope_positions(self) -> tuple[int, ...]:
        return self.rope if self.rope is not None else self.positions

    def describe(self) -> dict:
        return {
            "id": self.id, "model": self.model, "kind": self.kind, "generated": list(self.generated_positions),
            "context": list(self.context_positions), "outputs": list(self.outputs), "deps": list(self.deps),
            "passes": self.passes, "noise": self.noise,
            **({"channel_frames": [list(c) for c in self.channel_frames]} if self.channel_frames else {}),
        }


@dataclass(frozen=True)
class Clip:
    """One independent VAE segment over positions ``start .. start + length - 1`` (see the
    module docstring)."""

    id: str
    start: int
    length: int
    kind: str = "video"
    rope_origin: int = 0
    output: bool = True
    drop: int = 0
    drop_tail: int = 0

    @property
    def positions(self) -> range:
        return range(self.start, self.start + self.length)

    @property
    def frames(self) -> int:
        """Decoded video frames: 4(n-1)+1 for a video clip, n for an image clip."""
        return self.length if self.kind == "image" else 4 * (self.length - 1) + 1


@dataclass(frozen=True)
class CacheSpec:
    """A fixed-slot KV cache owned by one worker: ``chunk_frames`` per write, ``sink_frames``
    kept forever, the most recent ``window_frames`` (None: all), ``max_frames`` in all,
    counted from position ``origin``. ``visible``: ``"window"`` (a chunk sees the sink, its
    window and itself) or ``"plan"`` (a chunk sees exactly the context frames its job's
    visibility lists -- e.g. MMPL's stages; each frame keeps its own slot)."""

    chunk_frames: int
    max_frames: int
    sink_frames: int = 0
    window_frames: int | None = None
    origin: int = 0
    visible: str = "window"


def decoded_frames(n_latents: int, first: bool, image: bool = False) -> int:
    """Video frames decoded from ``n_latents`` latents: 1 + 4(n-1) when they start a causal
    sequence, 4n when they continue one, n for image latents."""
    if image:
        return n_latents
    return 4 * n_latents - 3 if first else 4 * n_latents


@dataclass(frozen=True)
class DecodeJob:
    """Latents -> video frames on the VAE. ``latents``: (position, producer) in decode order
    (repeats allowed in a hand-off sequence); ``chain``: the decode job whose causal
    decoder state this one continues (None: a fresh sequence); ``image``: each latent alone;
    ``clip``: the clip whose frames these are (None: a hand-off decode, never output)."""

    id: str
    latents: tuple[tuple[int, str], ...]
    chain: str | None = None
    image: bool = False
    clip: str | None = None
    root: str = ""  # first job of the chain (set by the plan)
    after: tuple[str, ...] = ()
    kind = "decode"
    model = "vae"
    passes = 0

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(p for p, _ in self.latents)

    @property
    def reads(self) -> tuple[tuple[int, str], ...]:
        return tuple(dict.fromkeys(self.latents))

    @property
    def deps(self) -> tuple[str, ...]:
        d = {s for _, s in self.latents if s != INPUT}
        if self.chain is not None:
            d.add(self.chain)
        d.update(self.after)
        return tuple(sorted(d))

    @property
    def pin(self) -> str:
        """A causal chain keeps its decoder state on one worker."""
        return f"decode:{self.root or self.id}"

    @property
    def frames(self) -> int:
        return decoded_frames(len(self.latents), self.chain is None, self.image)

    def describe(self) -> dict:
        return {"id": self.id, "kind": "decode", "clip": self.clip, "latents": list(self.positions),
                "frames": self.frames, "deps": list(self.deps)}


@dataclass(frozen=True)
class EncodeJob:
    """Video frames -> latents of ``positions`` on the VAE. ``frames``: (pixel source, frame
    index) assembled into one sequence -- a source is a clip id (its decoded frames, counted
    before ``drop``) or a hand-off decode job's id; ``image``: every frame encoded alone
    (image latents), else the sequence (4k+1 frames) is encoded causally into k+1 latents."""

    id: str
    frames: tuple[tuple[str, int], ...]
    positions: tuple[int, ...]
    image: bool = False
    after: tuple[str, ...] = ()
    kind = "encode"
    model = "vae"
    passes = 0
    pin = None

    @property
    def generated_positions(self) -> tuple[int, ...]:
        return self.positions

    @property
    def outputs(self) -> tuple[int, ...]:
        return self.positions

    @property
    def reads(self) -> tuple[tuple[int, str], ...]:
        return ()

    def describe(self) -> dict:
        return {"id": self.id, "kind": "encode", "frames": [list(f) for f in self.frames],
                "outputs": list(self.positions)}


@dataclass
class Plan:
    """A strategy's DAG (see the module docstring): denoise ``jobs`` (topologically
    listed), the timeline length in latent positions, given input positions, the options
    that built it, its ``clips`` (default: one video clip over the whole timeline), the
    strategy's hand-off ``decodes`` and its ``encodes``, and the KV ``caches`` its chained
    jobs share. The decode chains of the clips are derived here (:attr:`clip_decodes`)."""

    strategy: str
    num_frames: int
    jobs: list[Job]
    inputs: tuple[int, ...] = ()
    options: dict = field(default_factory=dict)
    clips: list[Clip] = field(default_factory=list)
    decodes: list[DecodeJob] = field(default_factory=list)
    encodes: list[EncodeJob] = field(default_factory=list)
    caches: dict[str, CacheSpec] = field(default_factory=dict)
    whole_clip_decodes: bool = False  # one decode job per video clip (a VAE that cannot stream: CogVideoX's)

    def __post_init__(self):
        if not self.clips:
            self.clips = [Clip("video", 0, self.num_frames)]
        self._clip_by_id = {c.id: c for c in self.clips}
        self._by_id = {j.id: j for j in self.jobs}
        self._by_id.update({j.id: j for j in self.encodes})
        self.decodes = [self._rooted(d) for d in self.decodes]
        self._by_id.update({j.id: j for j in self.decodes})
        self.clip_decodes: dict[str, list[DecodeJob]] = self._derive_clip_decodes()
        for chain in self.clip_decodes.values():
            self._by_id.update({j.id: j for j in chain})
        self._encode_deps = {e.id: self._pixel_producers(e) for e in self.encodes}
        self._cache_reads = self._derive_cache_reads()

    # -- derived structure ----------------------------------------------------------
    def _rooted(self, d: DecodeJob) -> DecodeJob:
        if d.chain is None:
            return replace(d, root=d.id)
        prev = self._by_id.get(d.chain)
        root = prev.root if isinstance(prev, DecodeJob) else d.chain
        return replace(d, root=root)

    def _derive_cache_reads(self) -> dict[str, tuple[tuple[int, str], ...]]:
        """A KV-cache job is handed only the context its chain has not yet written to the
        cache (jobs of one cache run in plan order)."""
        held: dict[str, set[int]] = {}
        reads = {}
        for j in self.jobs:
            if j.cache is None:
                continue
            have = held.setdefault(j.cache, set())
            reads[j.id] = tuple((p, s) for p, s in j.reads if p not in have)
            have.update(j.positions)
        return reads

    def _derive_clip_decodes(self) -> dict[str, list[DecodeJob]]:
        """Decode chains of every clip that is output or read by an encode: one job per run
        of consecutive positions with the same producer (image clips: one per latent;
        ``whole_clip_decodes``: one job per video clip, after all its producers)."""
        read = {src for e in self.encodes for src, _ in e.frames}
        owner = self.output_map()
        chains: dict[str, list[DecodeJob]] = {}
        for c in self.clips:
            if not (c.output or c.id in read) or any(p not in owner for p in c.positions):
                continue
            runs: list[list[int]] = []
            for p in c.positions:
                if runs and c.kind == "video" and (self.whole_clip_decodes or owner[runs[-1][-1]] == owner[p]):
                    runs[-1].append(p)
                else:
                    runs.append([p])
            chain: list[DecodeJob] = []
            for i, run in enumerate(runs):
                jid = f"decode/{c.id}/{i}"
                prev = chain[-1].id if (chain and c.kind == "video") else None
                root = chain[0].id if prev else jid
                chain.append(DecodeJob(jid, tuple((p, owner[p]) for p in run), chain=prev, image=c.kind == "image",
                                       clip=c.id, root=root))
            chains[c.id] = chain
        return chains

    def pixel_source(self, source: str, index: int) -> tuple[str, int]:
        """(decode job, frame index within its output) holding decoded frame ``index`` of a
        pixel source (a clip id: counted before its ``drop``; or a hand-off decode's id)."""
        if source in self.clip_decodes:
            k = index
            for d in self.clip_decodes[source]:
                if k < d.frames:
                    return d.id, k
                k -= d.frames
            raise PlanError(f"clip {source!r} decodes to {self._clip_by_id[source].frames} frames; frame {index} "
                            f"does not exist")
        d = self._by_id.get(source)
        if not isinstance(d, DecodeJob):
            raise PlanError(f"pixel source {source!r} is neither a clip nor a decode job")
        if not 0 <= index < d.frames:
            raise PlanError(f"decode job {source!r} gives {d.frames} frames; frame {index} does not exist")
        return d.id, index

    def _pixel_producers(self, e: EncodeJob) -> tuple[str, ...]:
        if not all(src in self.clip_decodes or isinstance(self._by_id.get(src), DecodeJob) for src, _ in e.frames):
            return ()  # reported by validate()
        return tuple(sorted({self.pixel_source(src, i)[0] for src, i in e.frames}))

    # -- queries ------------------------------------------------------------------
    def job(self, job_id: str):
        return self._by_id[job_id]

    def clip(self, clip_id: str) -> Clip:
        return self._clip_by_id[clip_id]

    def clip_of(self, position: int) -> Clip:
        for c in self.clips:
            if c.start <= position < c.start + c.length:
                return c
        raise PlanError(f"position {position} lies in no clip")

    def all_jobs(self) -> list:
        """Every job of the DAG: denoise, encode, then decode jobs."""
        out = list(self.jobs) + list(self.encodes) + list(self.decodes)
        for chain in self.clip_decodes.values():
            out.extend(chain)
        return out

    def deps_of(self, job) -> tuple[str, ...]:
        """Jobs that must finish before ``job`` (an encode waits for the decodes it reads)."""
        if isinstance(job, EncodeJob):
            return tuple(sorted(set(self._encode_deps[job.id]) | set(job.after)))
        return job.deps

    def passes_of(self, job) -> int:
        """DiT passes of a job as the runtime runs it: its steps and refreshes plus, for a
        KV-cache job handed context its cache lacks, the clean passes that write it (one,
        or one per visibility group for a ``visible="plan"`` cache); 0 for VAE jobs."""
        if not isinstance(job, Job):
            return 0
        if job.cache is None:
            return job.passes
        read = {p for p, _ in self._cache_reads[job.id]}
        fill = [i for i, (p, g) in enumerate(zip(job.positions, job.generated)) if not g and p in read]
        if not fill:
            return job.passes
        if self.caches[job.cache].visible != "plan":
            return job.passes + 1
        groups = 1 + sum(1 for a, b in zip(fill, fill[1:]) if job.visibility[a] != job.visibility[b])
        return job.passes + groups

    def reads_of(self, job) -> tuple[tuple[int, str], ...]:
        """(position, producer) of every latent the runtime must hand ``job``: a KV-cache
        job skips context an earlier job of its cache wrote there already."""
        if isinstance(job, Job) and job.cache is not None:
            return self._cache_reads[job.id]
        return job.reads

    def pixel_reads_of(self, job) -> tuple[tuple[str, int], ...]:
        """(decode job, frame index) of every decoded frame an encode job assembles."""
        if not isinstance(job, EncodeJob):
            return ()
        return tuple(self.pixel_source(src, i) for src, i in job.frames)

    def rope_of(self, job: Job) -> tuple[int, ...]:
        """RoPE positions of a denoise job's frames: its own ``rope``, else each position
        relative to its clip's origin."""
        if job.rope is not None:
            return job.rope
        origin = self.clip_of(job.positions[0]).rope_origin
        return tuple(p - origin for p in job.positions)

    def output_sequence(self) -> list[tuple[Clip, list[DecodeJob]]]:
        """The output clips in video order with their decode chains."""
        return [(c, self.clip_decodes[c.id]) for c in self.clips if c.output]

    @property
    def video_frames(self) -> int:
        """Frames of the output video (output clips, without their dropped frames)."""
        return sum(c.frames - c.drop - c.drop_tail for c in self.clips if c.output)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(sorted({j.model for j in self.jobs}))

    def output_map(self) -> dict[int, str]:
        """Final position -> producing job (inputs map to :data:`INPUT`)."""
        out = {p: INPUT for p in self.inputs}
        for j in list(self.jobs) + list(self.encodes):
            for p in j.outputs:
                out[p] = j.id
        return out

    def children(self) -> dict[str, list[str]]:
        jobs = self.all_jobs()
        ch: dict[str, list[str]] = {j.id: [] for j in jobs}
        for j in jobs:
            for d in self.deps_of(j):
                ch[d].append(j.id)
        return ch

    def topo_order(self) -> list[str]:
        """Job ids in a dependency-respecting order (Kahn; ties by plan order). Raises
        :class:`PlanError` on a cycle."""
        jobs = self.all_jobs()
        index = {j.id: i for i, j in enumerate(jobs)}
        indeg = {j.id: len(self.deps_of(j)) for j in jobs}
        ch = self.children()
        ready = [index[j] for j, n in indeg.items() if n == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            jid = jobs[heapq.heappop(ready)].id
            order.append(jid)
            for c in ch[jid]:
                indeg[c] -= 1
                if indeg[c] == 0:
                    heapq.heappush(ready, index[c])
        if len(order) != len(jobs):
            stuck = sorted(j for j, n in indeg.items() if n > 0)
            raise PlanError(f"plan {self.strategy!r} has a dependency cycle among jobs {stuck[:8]}")
        return order

    def priorities(self) -> dict[str, int]:
        """Critical-path-first priority: DiT passes on the longest path from a job (itself
        included) to the end of the plan (decode and encode jobs count 0 passes)."""
        ch = self.children()
        prio: dict[str, int] = {}
        for jid in reversed(self.topo_order()):
            prio[jid] = self.passes_of(self._by_id[jid]) + max((prio[c] for c in ch[jid]), default=0)
        return prio

    def critical_path(self) -> tuple[int, list[str]]:
        """(sequential DiT passes on the longest dependency chain, that chain's job ids)."""
        if not self.jobs:
            return 0, []
        prio = self.priorities()
        ch = self.children()
        roots = [j.id for j in self.all_jobs() if not self.deps_of(j)]
        cur = max(roots, key=lambda r: prio[r])
        path = [cur]
        while ch[cur]:
            cur = max(ch[cur], key=lambda c: prio[c])
            path.append(cur)
        return prio[path[0]], path

    def total_passes(self) -> int:
        return sum(self.passes_of(j) for j in self.jobs)

    def summary(self) -> dict:
        cp, _ = self.critical_path()
        return {"strategy": self.strategy, "latent_frames": self.num_frames, "video_frames": self.video_frames,
                "clips": len(self.clips), "jobs": len(self.jobs),
                "decode_jobs": sum(1 for j in self.all_jobs() if isinstance(j, DecodeJob)),
                "encode_jobs": len(self.encodes), "total_passes": self.total_passes(),
                "critical_path_passes": cp, "options": dict(self.options)}

    def describe(self) -> dict:
        """Everything a user inspects with ``--plan-only``: summary, clips and every job."""
        return {"summary": self.summary(),
                "clips": [{"id": c.id, "kind": c.kind, "positions": [c.start, c.start + c.length - 1],
                           "rope_origin": c.rope_origin, "output": c.output, "drop": c.drop, "drop_tail": c.drop_tail,
                           "frames": c.frames}
                          for c in self.clips],
                "jobs": [j.describe() for j in self.all_jobs()]}

    # -- validation -----------------------------------------------------------------
    def validate(self) -> "Plan":
        """Check the plan; raise :class:`PlanError` naming the first problem. Returns self."""
        F = self.num_frames
        if F < 1:
            raise PlanError(f"a plan needs at least one latent frame, got {F}")
        self._validate_clips()
        ids = [j.id for j in self.all_jobs()]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise PlanError(f"duplicate job ids {dup}")
        for p in self.inputs:
            if not 0 <= p < F:
                raise PlanError(f"input position {p} outside the timeline 0..{F - 1}")
        for j in self.jobs:
            self._validate_job(j)
        for e in self.encodes:
            self._validate_encode(e)
        owner_of = self.output_map()
        for d in self.decodes:
            self._validate_decode(d, owner_of)
        self.topo_order()
        # coverage: every position output exactly once (inputs and encodes count as outputs)
        owner: dict[int, str] = {p: INPUT for p in self.inputs}
        for j in list(self.jobs) + list(self.encodes):
            for p in j.outputs:
                if p in owner:
                    raise PlanError(f"position {p} is output by both {owner[p]!r} and {j.id!r}")
                owner[p] = j.id
        missing = [p for p in range(F) if p not in owner]
        extra = sorted(p for p in owner if not 0 <= p < F)
        if missing or extra:
            raise PlanError(f"plan does not cover the timeline 0..{F - 1} exactly once: missing {missing[:10]}, "
                            f"outside {extra[:10]}")
        return self

    def _validate_clips(self) -> None:
        at = 0
        seen = set()
        for c in self.clips:
            if c.id in seen:
                raise PlanError(f"duplicate clip id {c.id!r}")
            seen.add(c.id)
            if c.kind not in ("video", "image"):
                raise PlanError(f"clip {c.id!r}: kind must be 'video' or 'image', got {c.kind!r}")
            if c.start != at or c.length < 1:
                raise PlanError(f"clips must cover the timeline 0..{self.num_frames - 1} in order without gaps: clip "
                                f"{c.id!r} starts at {c.start} (expected {at}) with {c.length} latent frames")
            if c.drop < 0 or c.drop_tail < 0 or c.drop + c.drop_tail >= c.frames:
                raise PlanError(f"clip {c.id!r}: drop={c.drop} and drop_tail={c.drop_tail} must leave some of its "
                                f"{c.frames} frames")
            at += c.length
        if at != self.num_frames:
            raise PlanError(f"clips cover {at} latent frames, the timeline has {self.num_frames}")
        if not any(c.output for c in self.clips):
            raise PlanError("no clip is output")

    def _validate_encode(self, e: EncodeJob) -> None:
        where = f"encode job {e.id!r}"
        if not e.frames or not e.positions:
            raise PlanError(f"{where} needs frames and output positions")
        for src, i in e.frames:
            if src not in self.clip_decodes and not isinstance(self._by_id.get(src), DecodeJob):
                known = sorted(self.clip_decodes)
                raise PlanError(f"{where} reads frames of {src!r}, which is neither a decoded clip {known} nor a "
                                f"decode job")
            self.pixel_source(src, i)
        n = len(e.frames)
        want = n if e.image else ((n - 1) // 4 + 1 if (n - 1) % 4 == 0 else None)
        if want is None:
            raise PlanError(f"{where}: a causal encode takes 4k+1 frames, got {n} (or set image=True)")
        if want != len(e.positions):
            raise PlanError(f"{where}: {n} frames encode to {want} latents, but it outputs positions {list(e.positions)}")
        if any(b != a + 1 for a, b in zip(e.positions, e.positions[1:])):
            raise PlanError(f"{where}: output positions must be consecutive, got {list(e.positions)}")
        if len({self.clip_of(p).id for p in e.positions}) != 1:
            raise PlanError(f"{where}: output positions {list(e.positions)} span several clips")

    def _validate_decode(self, d: DecodeJob, owner: dict[int, str]) -> None:
        where = f"decode job {d.id!r}"
        if not d.latents:
            raise PlanError(f"{where} decodes no latents")
        if d.clip is not None:
            raise PlanError(f"{where}: clips are decoded by the plan's own chains; a hand-off decode has clip=None")
        for p, s in d.latents:
            if owner.get(p) != s and not (s in self._by_id and p in getattr(self._by_id[s], "generated_positions", ())):
                raise PlanError(f"{where}: latent {p} is not made by {s!r}")
        if d.chain is not None and not isinstance(self._by_id.get(d.chain), DecodeJob):
            raise PlanError(f"{where}: chain {d.chain!r} is not a decode job")

    def _validate_job(self, j: Job) -> None:
        n = len(j.positions)
        where = f"job {j.id!r}"
        if j.model not in ROLES:
            raise PlanError(f"{where}: model role must be one of {ROLES}, got {j.model!r}")
        if n == 0:
            raise PlanError(f"{where} has no frames")
        if len(j.generated) != n or len(j.sources) != n:
            raise PlanError(f"{where}: generated/sources must have one entry per frame ({n})")
        if any(b <= a for a, b in zip(j.positions, j.positions[1:])):
            raise PlanError(f"{where}: positions must be strictly increasing, got {list(j.positions)}")
        if j.positions[0] < 0 or j.positions[-1] >= self.num_frames:
            raise PlanError(f"{where}: positions {list(j.positions)} outside the timeline 0..{self.num_frames - 1}")
        if j.rope is not None and len(j.rope) != n:
            raise PlanError(f"{where}: rope positions must have one entry per frame")
        if j.rope is None and len({self.clip_of(p).id for p in j.positions}) != 1:
            raise PlanError(f"{where}: frames {list(j.positions)} span several clips; give the job explicit rope "
                            f"positions")
        if j.cache is not None and j.cache not in self.caches:
            raise PlanError(f"{where}: KV cache {j.cache!r} is not one of the plan's caches {sorted(self.caches)}")
        gen = j.generated_positions
        if not gen:
            raise PlanError(f"{where} generates no frame")
        if len(j.sigmas) < 2 or any(len(row) != len(gen) for row in j.sigmas):
            raise PlanError(f"{where}: sigmas must be [steps+1 >= 2][{len(gen)} generated frames]")
        for k in range(len(gen)):
            col = [row[k] for row in j.sigmas]
            if any(not 0.0 <= s <= 1.0 for s in col) or any(b > a for a, b in zip(col, col[1:])) or col[-1] != 0.0:
                raise PlanError(f"{where}: sigmas of frame {gen[k]} must be non-increasing in [0, 1] and end at 0; got {col}")
        k = 0
        for i, (p, g, s) in enumerate(zip(j.positions, j.generated, j.sources)):
            if g:  # with a source: a re-noised anchor (its x0); without: pure noise
                k += 1
            elif s is None:
                raise PlanError(f"{where}: context frame {p} has no source job")
            if s == INPUT and p not in self.inputs:
                raise PlanError(f"{where}: frame {p} reads an input, but the plan's inputs are {list(self.inputs)}")
            if s is not None and s != INPUT:
                if s not in self._by_id:
                    raise PlanError(f"{where}: frame {p} reads unknown job {s!r}")
                if p not in self._by_id[s].generated_positions:
                    raise PlanError(f"{where}: frame {p} reads job {s!r}, which does not generate it")
        for slot, p, s in j.channel_frames:
            if not 0 <= slot < n:
                raise PlanError(f"{where}: channel frame slot {slot} outside its {n} frames")
            if s == INPUT and p not in self.inputs:
                raise PlanError(f"{where}: channel frame {p} reads an input, but the plan's inputs are {list(self.inputs)}")
            if s != INPUT and (s not in self._by_id or p not in self._by_id[s].generated_positions):
                raise PlanError(f"{where}: channel frame {p} reads job {s!r}, which does not generate it")
        if j.channel_frames and j.cache is not None:
            raise PlanError(f"{where}: channel frames are not supported with a KV cache")
        for a in j.after:
            if a not in self._by_id:
                raise PlanError(f"{where}: 'after' names unknown job {a!r}")
        if len(j.visibility) != n or any(len(r) != n for r in j.visibility):
            raise PlanError(f"{where}: visibility must be [{n}][{n}] over the pass's frames")
        for i in range(n):
            if not j.visibility[i][i]:
                raise PlanError(f"{where}: frame {j.positions[i]} must see itself")
            if not j.generated[i] and any(j.visibility[i][c] and j.generated[c] for c in range(n)):
                raise PlanError(f"{where}: context frame {j.positions[i]} must not see generated (noisy) frames")
        if not set(j.outputs) <= set(gen):
            raise PlanError(f"{where}: outputs {list(j.outputs)} must be generated positions {list(gen)}")
        if j.noise not in NOISE_MODES:
            raise PlanError(f"{where}: noise must be one of {NOISE_MODES}, got {j.noise!r}")
        if j.noise == "interp" and not j.planning:
            raise PlanError(f"{where}: interpolated noise needs planning positions")
        if not 0.0 <= j.noise_rho <= 1.0:
            raise PlanError(f"{where}: noise_rho must lie in [0, 1]")


# ----------------------------------------------------------------------------------
# helpers shared by the strategies
# ----------------------------------------------------------------------------------
#: The sampler's default sigma table (few-step, Self-Forcing's timesteps 1000/750/500/250 at
#: shift 5) as plain floats: what ``engine.sampling.config_sigmas(SamplerConfig())`` gives
#: (tests/test_plans.py checks that they agree). Plans stay torch-free; a run builds its plan
#: on its own sampler's table (``build_plan(..., sigmas=config_sigmas(sampler))``).
DEFAULT_SIGMAS = (1.0, 0.9375, 0.8333333333333334, 0.625, 0.0)


def default_sigmas() -> list[float]:
    """:data:`DEFAULT_SIGMAS` as a list [steps + 1]: the table of a plan built without one."""
    return list(DEFAULT_SIGMAS)


def uniform_table(base: list[float], n: int, start: list[float] | None = None) -> tuple[tuple[float, ...], ...]:
    """[steps+1][n]: every frame follows ``base``; ``start[k]`` < 1 scales frame k's
    schedule to begin at that sigma (a re-noised anchor): s_k(i) = start_k * base(i)."""
    start = start or [1.0] * n
    return tuple(tuple(float(base[i]) * (1.0 if st >= 1.0 else st) for st in start) for i in range(len(base)))


TPD_FAST = 4.0  # log shift factor per unit strength of a clip's earliest frame (divides its shift)
TPD_SLOW = 1.0  # log shift factor per unit strength of a clip's last frame (multiplies its shift)


def tpd_table(base: list[float], n: int, strength: float, start: list[float] | None = None) -> tuple[tuple[float, ...], ...]:
    """MiLA's TPD schedule (paper Sec. 3.4), [steps+1][n]: frame k (0 = earliest generated
    frame of the batch) gets its own sigma sequence, a per-frame transform of the base sigma.

    The paper's formulas (13)-(14) were lost; its prose asks that (a) all frames of a
    denoising batch reach sigma 0 at the last step together, (b) earlier frames are denoised
    with larger steps at first and are almost denoised early, (c) trailing frames follow a
    slow-fast pattern (small steps at first, large ones in the last few steps). Our choice:
    frame k runs the base schedule with its *timestep shift* multiplied by kappa_k,

        s(i)        = base[i] / base[0]                        (in [0, 1])
        sigma_k(i)  = base[0] * s(i) / (s(i) + (1 - s(i)) * exp(-l_k))
        l_k         = strength * (TPD_SLOW * w_k - TPD_FAST * (1 - w_k)),   w_k = k / (n - 1)

    i.e. the flow-matching shift map s -> kappa s / (1 + (kappa - 1) s) with
    kappa_k = exp(l_k): kappa_0 = exp(-4 strength) for the earliest frame (fast-slow: big
    early steps, below 0.1 base[0] half-way for strength >= 1 on Wan's shift-5 schedules),
    kappa_{n-1} = exp(+strength) for the last (slow-fast: above the base everywhere, so
    smaller steps first and a larger drop in the last steps), log kappa linear in between.
    Shift maps compose (shift(shift(t, a), b) = shift(t, ab)), so on a base that is a shifted
    linear schedule of shift S, frame k follows exactly the shift-S*kappa_k schedule; the map
    fixes s = 1 and s = 0, so every frame starts at base[0] and reaches 0 exactly at step N,
    and none before (s(i) > 0 for i < N). It is increasing in s (non-increasing sigmas per
    frame) and in kappa (an earlier frame is never noisier than a later one at any step).
    The proposed progress warp u_k(x) = (1-w_k)(1-(1-x)^(1+g)) + w_k x^(1+g) was not used:
    on shifted schedules its earliest frame is still at 0.625 (shift 5, strength 1) half-way,
    far from "almost denoised".

    strength 0 (and a single frame, n == 1) gives ``base`` exactly for every frame (the same
    table as :func:`uniform_table`). Re-noised anchors (``start[k]`` < 1) are scaled as in
    :func:`uniform_table`: their sigma at step i is start[k] * sigma_k(i) -- a linear map of the
    clip's timestep with slope start[k] (MiLA's JDC, :class:`Job`). Last row exactly 0; each
    frame's column is clamped to be non-increasing against float rounding.
    """
    N = len(base) - 1
    start = start or [1.0] * n
    if strength == 0 or n == 1:
        return uniform_table(base, n, start)
    if strength < 0:
        raise PlanError(f"TPD strength must be >= 0, got {strength}")
    s0 = float(base[0])
    rows = []
    for i in range(N + 1):
        s = float(base[i]) / s0 if s0 > 0 else 0.0
        row = []
        for k in range(n):
            w = k / (n - 1)
            lk = strength * (TPD_SLOW * w - TPD_FAST * (1.0 - w))
            if lk == 0.0 or i == 0:
                v = float(base[i])
            else:
                v = s0 * (s / (s + (1.0 - s) * math.exp(-lk))) if s > 0 else 0.0
            row.append(min(v, rows[-1][k]) if rows else v)
        rows.append(row)
    out = [tuple(v * (1.0 if st >= 1.0 else st) for v, st in zip(row, start)) for row in rows]
    out[-1] = tuple(0.0 for _ in range(n))
    return tuple(out)


def conditioned_visibility(generated: list[bool], groups: list[int] | None = None) -> tuple[tuple[bool, ...], ...]:
    """The default visibility of a job: every frame sees every context frame; generated
    frames also see every generated frame; context frames see only context frames.
    ``groups`` (optional, per frame): a generated frame of group g sees generated frames of
    groups <= g only (e.g. MMPL's generated initial frame, group 0, sees only itself; the
    keyframes, group 1, see it and each other)."""
    n = len(generated)
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            if not generated[j]:
                v = True
            elif not generated[i]:
                v = False
            else:
                v = groups is None or groups[j] <= groups[i]
            row.append(v)
        rows.append(tuple(row))
    return tuple(rows)


def make_job(job_id: str, model: str, frames: dict[int, tuple[bool, str | None]], *, base: list[float],
             outputs, start: dict[int, float] | None = None, tpd: float = 0.0, visibility=None, **kw) -> Job:
    """Build a job from {position: (generated, source)}; sigmas from ``base`` (TPD when
    ``tpd`` > 0), ``start`` = {position: starting sigma} for re-noised anchors."""
    positions = tuple(sorted(frames))
    generated = tuple(frames[p][0] for p in positions)
    sources = tuple(frames[p][1] for p in positions)
    gen = [p for p in positions if frames[p][0]]
    st = [float((start or {}).get(p, 1.0)) for p in gen]
    table = tpd_table(base, len(gen), tpd, st) if tpd > 0 else uniform_table(base, len(gen), st)
    vis = visibility if visibility is not None else conditioned_visibility(list(generated))
    return Job(id=job_id, model=model, positions=positions, generated=generated, sources=sources, sigmas=table,
               visibility=tuple(tuple(bool(v) for v in r) for r in vis), outputs=tuple(sorted(outputs)), **kw)


def coarse_rollouts(keyframes: list[int], per_rollout: int, first_given: bool) -> list[tuple[list[int], list[int]]]:
    """(context, generated) keyframe positions of each coarse rollout: up to ``per_rollout``
    keyframes per joint job, every rollout after the first (and the first, when frame 0 is
    given) starting from the last keyframe before it as clean context."""
    have = {0} if first_given else set()
    out, i = [], 0
    while True:
        ctx = [keyframes[i]] if keyframes[i] in have else []
        gen = [p for p in keyframes[i:i + per_rollout] if p not in have]
        if not gen:
            break
        out.append((ctx, gen))
        have.update(gen)
        i = keyframes.index(gen[-1])
        if i == len(keyframes) - 1:
            break
    return out


def frames_hint(latent_ok: list[int]) -> str:
    """'e.g. num_frames 33 or 65' for a few valid latent frame counts."""
    vids = [4 * (f - 1) + 1 for f in latent_ok if f >= 1][:3]
    return "e.g. num_frames " + " or ".join(str(v) for v in vids)
