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
  (k counts generated frames only). A generated frame that starts below sigma 1 is a
  re-noised anchor (MiLA's JDC): its x0 comes from ``sources[i]``.

``visibility[i][j]``: may frame i attend to frame j within the pass. Context rows never see
generated frames (a clean frame must not depend on noise). ``outputs`` are the generated
positions that are final frames of the video; every position is output by exactly one job
(or is an input). ``after`` adds scheduling-only edges (no data).

Noise (see :mod:`kernels.noise`): ``noise="fresh"`` draws frame noise from
(seed, ``noise_stream``*1000, position); ``"interp"`` interpolates the noise of the
``planning`` positions (stream 0, the planning jobs' own initial noise) with an optional
fresh share ``noise_rho``; ``"unified"`` gives the k-th generated frame of every clip
the same noise (LongVie 2), addressed by (seed, stream, k). Few-step re-noising after
step i uses stream ``noise_stream``*1000 + 1 + i.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

INPUT = "@input"
UNIFIED_STREAM = 999  # offset (within a job's noise_stream block) of the unified clip noise
FRESH_SHARE_STREAM = 998  # offset of the fresh share mixed into interpolated noise
ROLES = ("main", "coarse", "fine")
NOISE_MODES = ("fresh", "interp", "unified")


class PlanError(ValueError):
    """A plan is malformed, or the requested video does not fit a strategy."""


@dataclass(frozen=True)
class Job:
    """One denoise job (see the module docstring)."""

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

    @property
    def generated_positions(self) -> tuple[int, ...]:
        return tuple(p for p, g in zip(self.positions, self.generated) if g)

    @property
    def context_positions(self) -> tuple[int, ...]:
        return tuple(p for p, g in zip(self.positions, self.generated) if not g)

    @property
    def reads(self) -> tuple[tuple[int, str], ...]:
        """(position, producer) of every latent this job reads (context and anchors)."""
        return tuple((p, s) for p, s in zip(self.positions, self.sources) if s is not None)

    @property
    def deps(self) -> tuple[str, ...]:
        """Jobs that must finish first: producers of what it reads, plus ``after``."""
        d = {s for s in self.sources if s is not None and s != INPUT}
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
        }


@dataclass
class Plan:
    """A strategy's DAG: jobs (topologically listed), the timeline length in latent frames,
    given input positions, and the options that built it."""

    strategy: str
    num_frames: int
    jobs: list[Job]
    inputs: tuple[int, ...] = ()
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        self._by_id = {j.id: j for j in self.jobs}

    # -- queries ------------------------------------------------------------------
    def job(self, job_id: str) -> Job:
        return self._by_id[job_id]

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(sorted({j.model for j in self.jobs}))

    def output_map(self) -> dict[int, str]:
        """Final position -> producing job (inputs map to :data:`INPUT`)."""
        out = {p: INPUT for p in self.inputs}
        for j in self.jobs:
            for p in j.outputs:
                out[p] = j.id
        return out

    def children(self) -> dict[str, list[str]]:
        ch: dict[str, list[str]] = {j.id: [] for j in self.jobs}
        for j in self.jobs:
            for d in j.deps:
                ch[d].append(j.id)
        return ch

    def topo_order(self) -> list[str]:
        """Job ids in a dependency-respecting order (Kahn; ties by plan order). Raises
        :class:`PlanError` on a cycle."""
        index = {j.id: i for i, j in enumerate(self.jobs)}
        indeg = {j.id: len(j.deps) for j in self.jobs}
        ch = self.children()
        ready = [index[j] for j, n in indeg.items() if n == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            jid = self.jobs[heapq.heappop(ready)].id
            order.append(jid)
            for c in ch[jid]:
                indeg[c] -= 1
                if indeg[c] == 0:
                    heapq.heappush(ready, index[c])
        if len(order) != len(self.jobs):
            stuck = sorted(j for j, n in indeg.items() if n > 0)
            raise PlanError(f"plan {self.strategy!r} has a dependency cycle among jobs {stuck[:8]}")
        return order

    def priorities(self) -> dict[str, int]:
        """Critical-path-first priority: DiT passes on the longest path from a job (itself
        included) to the end of the plan."""
        ch = self.children()
        prio: dict[str, int] = {}
        for jid in reversed(self.topo_order()):
            prio[jid] = self._by_id[jid].passes + max((prio[c] for c in ch[jid]), default=0)
        return prio

    def critical_path(self) -> tuple[int, list[str]]:
        """(sequential DiT passes on the longest dependency chain, that chain's job ids)."""
        if not self.jobs:
            return 0, []
        prio = self.priorities()
        ch = self.children()
        roots = [j.id for j in self.jobs if not j.deps]
        cur = max(roots, key=lambda r: prio[r])
        path = [cur]
        while ch[cur]:
            cur = max(ch[cur], key=lambda c: prio[c])
            path.append(cur)
        return prio[path[0]], path

    def total_passes(self) -> int:
        return sum(j.passes for j in self.jobs)

    def summary(self) -> dict:
        cp, _ = self.critical_path()
        return {"strategy": self.strategy, "latent_frames": self.num_frames, "jobs": len(self.jobs),
                "total_passes": self.total_passes(), "critical_path_passes": cp, "options": dict(self.options)}

    # -- validation -----------------------------------------------------------------
    def validate(self) -> "Plan":
        """Check the plan; raise :class:`PlanError` naming the first problem. Returns self."""
        F = self.num_frames
        if F < 1:
            raise PlanError(f"a plan needs at least one latent frame, got {F}")
        ids = [j.id for j in self.jobs]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise PlanError(f"duplicate job ids {dup}")
        for p in self.inputs:
            if not 0 <= p < F:
                raise PlanError(f"input position {p} outside the timeline 0..{F - 1}")
        for j in self.jobs:
            self._validate_job(j)
        self.topo_order()
        # coverage: every position output exactly once (inputs count as outputs)
        owner: dict[int, str] = {p: INPUT for p in self.inputs}
        for j in self.jobs:
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
            if g:
                if j.sigmas[0][k] < 1.0 and s is None:
                    raise PlanError(f"{where}: frame {p} starts at sigma {j.sigmas[0][k]} < 1 but has no source x0")
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
def default_sigmas(kind: str = "fewstep", num_steps: int = 4, shift: float = 5.0,
                   timesteps: tuple[float, ...] | None = (1000.0, 750.0, 500.0, 250.0)) -> list[float]:
    """The sampler's shared sigma schedule [steps+1] as floats (same formulas as
    :mod:`engine.sampling`: few-step timesteps / 1000 or linspace(1, 0), shifted)."""
    def sh(s: float) -> float:
        return shift * s / (1.0 + (shift - 1.0) * s)

    if kind == "fewstep":
        ts = list(timesteps or (1000.0, 750.0, 500.0, 250.0))
        return [sh(t / 1000.0) for t in ts] + [0.0]
    s = [sh(1.0 - i / num_steps) for i in range(num_steps + 1)]
    s[0], s[-1] = 1.0, 0.0
    return s


def uniform_table(base: list[float], n: int, start: list[float] | None = None) -> tuple[tuple[float, ...], ...]:
    """[steps+1][n]: every frame follows ``base``; ``start[k]`` < 1 scales frame k's
    schedule to begin at that sigma (a re-noised anchor): s_k(i) = start_k * base(i)."""
    start = start or [1.0] * n
    return tuple(tuple(float(base[i]) * (1.0 if st >= 1.0 else st) for st in start) for i in range(len(base)))


def tpd_table(base: list[float], n: int, strength: float, start: list[float] | None = None) -> tuple[tuple[float, ...], ...]:
    """MiLA's TPD schedule, [steps+1][n]: frame k (0 = earliest) follows ``base`` at the
    warped progress u_k(i) = 1 - (1 - i/N)^g_k with g_k = 1 + strength (n-1-k)/(n-1), read
    by linear interpolation in ``base``. Earlier frames reach low sigma sooner; every frame
    starts at base[0] (times ``start[k]`` for re-noised anchors) and ends at 0 at step N."""
    N = len(base) - 1
    start = start or [1.0] * n
    rows = []
    for i in range(N + 1):
        row = []
        for k in range(n):
            g = 1.0 + (strength * (n - 1 - k) / (n - 1) if n > 1 else 0.0)
            u = 1.0 - (1.0 - i / N) ** g if i < N else 1.0
            x = u * N
            lo = min(int(x), N - 1)
            f = x - lo
            s = base[lo] * (1 - f) + base[lo + 1] * f
            row.append(float(s) * (1.0 if start[k] >= 1.0 else start[k]))
        rows.append(tuple(row))
    rows[-1] = tuple(0.0 for _ in range(n))
    return tuple(rows)


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


def frames_hint(latent_ok: list[int]) -> str:
    """'e.g. num_frames 33 or 65' for a few valid latent frame counts."""
    vids = [4 * (f - 1) + 1 for f in latent_ok if f >= 1][:3]
    return "e.g. num_frames " + " or ".join(str(v) for v in vids)
