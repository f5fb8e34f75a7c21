"""Multi-node execution: the same plan and runtime over ``torch.distributed`` ranks.

Started by ``torchrun`` (or any launcher that initialises a process group: gloo on CPU,
NCCL on GPUs). Every rank builds the same :class:`~engine.plans.Plan` (plans are pure and
deterministic) and then:

1. **Assignment** -- :func:`assign_jobs`: a static list schedule computed identically on
   every rank (no communication): jobs in critical-path-first order (longest chain of
   estimated cost ``passes x frames in the pass`` to the end of the plan), each placed on
   the rank where it would finish earliest given that rank's ``workers`` slots, its
   dependencies' finish times, and a small penalty per latent that would have to cross
   ranks. Ties go to the lower rank.
2. **Transfers** -- every latent a job reads from a job on another rank, and every final
   frame produced off rank 0, is one transfer (producer, position, from, to), sent with
   ``torch.distributed.send`` / ``recv`` (tensors only). All transfers run on one
   communication thread per rank, in one global order (the producers' simulated finish
   times), which both ends of a transfer agree on; since a producer's inputs are always
   earlier in that order, the blocking point-to-point sequence cannot deadlock.
3. **Execution** -- each rank runs its own jobs with the runtime's own executor
   (:class:`engine.runtime.Executor` given this rank's :class:`~engine.runtime.Placement`:
   streams, events, priority queues), a job becoming ready when its local dependencies are
   done and its remote latents arrived; a :class:`Communicator` thread moves the latents.
   ``after`` (scheduling-only) edges to jobs on other ranks are not enforced.
4. **Output** -- decode and encode jobs run on rank 0, which stitches the video in order
   and yields it, exactly like :func:`engine.runtime.execute`; other ranks yield nothing.

The video is bit-identical to the single-process run: a job's result depends only on its
inputs (noise is addressed by (seed, stream, position)) and latents cross ranks exactly.

Failure: every transfer carries a status word. A rank whose job fails (or that learns of a
failure) stops issuing jobs, and its communication thread still walks its whole transfer
list, sending "failed: job X" instead of latents it does not have and receiving what it is
owed -- so every rank finishes promptly and raises :class:`~engine.runtime.JobError`
naming the failed job and rank; rank 0 first hands out every frame that was complete. A
rank that dies outright surfaces as the process group's error (connection closed) or its
timeout (``init_distributed(timeout_s=...)``), reported as a JobError that names the peer.

Entry points: :func:`run_distributed` (same arguments as ``execute``; used by
``engine.generate`` / ``engine.stream`` whenever a process group with more than one rank is
initialised -- set ``ENGINE_DISTRIBUTED=0`` to opt out), :func:`init_distributed` (reads
torchrun's ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT``; used by
``python -m engine generate`` under torchrun).
"""

from __future__ import annotations

import datetime
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import SamplerConfig
from .plans import INPUT, Plan
from .runtime import Executor, JobError, Placement, RuntimeStats, check_run, execute

COMM_COST = 0.5  # estimated cost of moving one latent frame between ranks, in frame-passes
OK, FAILED = 0.0, 1.0


# ----------------------------------------------------------------------------------
# process group
# ----------------------------------------------------------------------------------
def distributed_active(group=None) -> bool:
    """A process group with more than one rank is initialised (and ``ENGINE_DISTRIBUTED``
    is not ``0``)."""
    if os.environ.get("ENGINE_DISTRIBUTED", "1") == "0":
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(backend: str | None = None, timeout_s: float = 600.0) -> tuple[int, int]:
    """Initialise the default process group from torchrun's environment (``env://``) unless
    one exists; backend ``nccl`` when CUDA is available else ``gloo``. On CUDA each rank
    uses ``cuda:LOCAL_RANK``. ``timeout_s`` bounds every collective and point-to-point
    operation, so a rank that dies cannot hang the others forever. Returns (rank, world)."""
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


# ----------------------------------------------------------------------------------
# static assignment
# ----------------------------------------------------------------------------------
def job_cost(job) -> float:
    """Estimated cost of a job: DiT passes x frames in each pass."""
    return float(job.passes * len(job.positions))


@dataclass
class Assignment:
    """rank of every job, the simulated finish times, and the ordered transfers
    (producer, position, src rank, dst rank)."""

    rank: dict[str, int]
    finish: dict[str, float]
    transfers: list[tuple[str, int, int, int]]
    world_size: int

    def jobs_of(self, r: int) -> list[str]:
        return [j for j, k in self.rank.items() if k == r]

    @property
    def makespan(self) -> float:
        return max(self.finish.values(), default=0.0)


def assign_jobs(plan: Plan, world_size: int, workers: int = 1, comm_cost: float = COMM_COST) -> Assignment:
    """Critical-path-first list scheduling of ``plan`` on ``world_size`` ranks with
    ``workers`` slots each (pure and deterministic: every rank computes the same). Decode
    and encode jobs run on rank 0 (the VAE and the decoded frames live there); jobs with
    the same pin (a KV-cache chain) follow the first of them."""
    if world_size < 1 or workers < 1:
        raise ValueError(f"world_size and workers must be >= 1, got {world_size}, {workers}")
    jobs = plan.all_jobs()
    index = {j.id: i for i, j in enumerate(jobs)}
    children = plan.children()
    bottom: dict[str, float] = {}
    for jid in reversed(plan.topo_order()):
        bottom[jid] = job_cost(plan.job(jid)) + max((bottom[c] for c in children[jid]), default=0.0)
    free = [[0.0] * workers for _ in range(world_size)]
    rank: dict[str, int] = {}
    finish: dict[str, float] = {}
    pinned: dict[str, int] = {}
    # work still owed by the chains bound to each rank: a new chain goes where its whole
    # chain ends first, not just its first job (segments of pinned chains then alternate)
    pin_cost: dict[str, float] = {}
    for j in jobs:
        if j.pin is not None:
            pin_cost[j.pin] = pin_cost.get(j.pin, 0.0) + job_cost(j)
    committed = [0.0] * world_size
    waiting = {j.id: len(plan.deps_of(j)) for j in jobs}
    ready = [j.id for j in jobs if not plan.deps_of(j)]
    while ready:
        ready.sort(key=lambda j: (-bottom[j], index[j]))
        jid = ready.pop(0)
        job = plan.job(jid)
        reads: dict[str, int] = {}
        for _, s in plan.reads_of(job):
            if s != INPUT:
                reads[s] = reads.get(s, 0) + 1
        if job.kind in ("decode", "encode"):
            candidates = [0]
        elif job.pin in pinned:
            candidates = [pinned[job.pin]]
        else:
            candidates = range(world_size)
        best = None
        for r in candidates:
            data = 0.0
            for d in plan.deps_of(job):
                t = finish[d] + (comm_cost * reads.get(d, 0) if rank[d] != r else 0.0)
                data = max(data, t)
            slot = min(range(workers), key=lambda k: free[r][k])
            end = max(free[r][slot], data) + job_cost(job)
            starts_chain = job.pin is not None and job.pin not in pinned and pin_cost.get(job.pin, 0.0) > 0
            score = end + (committed[r] / workers if starts_chain else 0.0)
            if best is None or score < best[0]:
                best = (score, r, slot, end)
        _, r, slot, end = best
        rank[jid], finish[jid] = r, end
        if job.pin is not None:
            if job.pin not in pinned:
                pinned[job.pin] = r
                committed[r] += pin_cost.get(job.pin, 0.0)
            committed[r] -= job_cost(job)
        free[r][slot] = end
        for c in children[jid]:
            waiting[c] -= 1
            if waiting[c] == 0:
                ready.append(c)
    transfers = set()
    for job in jobs:
        for p, s in plan.reads_of(job):
            if s != INPUT and rank[s] != rank[job.id]:
                transfers.add((s, p, rank[s], rank[job.id]))
    for p, s in plan.output_map().items():
        if s != INPUT and rank[s] != 0:
            transfers.add((s, p, rank[s], 0))
    order = sorted(transfers, key=lambda t: (finish[t[0]], index[t[0]], t[1], t[3]))
    return Assignment(rank, finish, order, world_size)


def plan_fingerprint(plan: Plan, *extra) -> int:
    """A 31-bit checksum of a plan's jobs (and ``extra`` values): ranks compare them."""
    text = repr((plan.strategy, plan.num_frames, plan.inputs, plan.describe(),
                 [(j.sigmas, j.visibility, j.sources, j.rope, j.noise_stream, j.noise_rho) for j in plan.jobs], extra))
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


# ----------------------------------------------------------------------------------
# one rank's run
# ----------------------------------------------------------------------------------
def rank_placement(plan: Plan, assignment: Assignment, rank: int) -> Placement:
    """This rank's share of the plan: its jobs, whether it emits (rank 0), the latents it
    sends and the ones it receives (with the local jobs waiting for them)."""
    local = set(assignment.jobs_of(rank))
    sends = [(s, p) for s, p, src, _ in assignment.transfers if src == rank]
    receives: dict[tuple[str, int], list[str]] = {}
    for j in plan.all_jobs():
        if j.id not in local:
            continue
        for p, s in plan.reads_of(j):
            if s != INPUT and s not in local:
                receives.setdefault((s, p), []).append(j.id)
    return Placement(local=local, emits=rank == 0, sends=sends, receives=receives)


class Communicator:
    """Walks one rank's transfers in the global order (see the module docstring), moving
    latents between this rank's :class:`~engine.runtime.Executor` and its peers."""

    def __init__(self, run: Executor, assignment: Assignment, rank: int, group, comm_device: torch.device,
                 latent_shape: tuple[int, ...]):
        self.run = run
        self.rank = rank
        self.group = group
        self.comm_device = comm_device
        self.latent_shape = latent_shape
        self.numel = 1
        for d in latent_shape:
            self.numel *= d
        self.index = {j.id: i for i, j in enumerate(run.plan.all_jobs())}
        self.jobs = run.plan.all_jobs()
        self.transfers = [t for t in assignment.transfers if rank in (t[2], t[3])]
        self.error: BaseException | None = None

    def _payload(self, tensor: torch.Tensor | None, fail_index: float) -> torch.Tensor:
        n = self.numel
        buf = torch.zeros(n + 2, dtype=torch.float32, device=self.comm_device)
        if tensor is None:
            buf[n] = FAILED
            buf[n + 1] = fail_index
        else:
            buf[:n] = tensor.reshape(-1).to(self.comm_device, torch.float32)
        return buf

    def __call__(self):
        run, n = self.run, self.numel
        if self.comm_device.type == "cuda":
            torch.cuda.set_device(self.comm_device)
        for s, p, src, dst in self.transfers:
            key = (s, p)
            try:
                if src == self.rank:
                    fail_index = -1.0
                    with run.cond:
                        while key not in run.store and run.error is None and not run.cancelled:
                            run.cond.wait()
                        entry = run.store.get(key)
                        if entry is None and run.error is not None:
                            fail_index = float(self.index.get(run.error.job, -1))
                    if entry is not None and entry.event is not None:
                        entry.event.synchronize()
                    dist.send(self._payload(entry.tensor if entry is not None else None, fail_index), dst,
                              group=self.group)
                    if entry is not None:
                        with run.cond:
                            run.release(key)
                else:
                    buf = torch.empty(n + 2, dtype=torch.float32, device=self.comm_device)
                    dist.recv(buf, src, group=self.group)
                    with run.cond:
                        if float(buf[n]) == FAILED:
                            k = int(buf[n + 1])
                            name = self.jobs[k].id if 0 <= k < len(self.jobs) else "?"
                            why = (f"job {name!r} failed on rank {src} (its own error says why)" if k >= 0 else
                                   f"rank {src} stopped before producing latent frame {p} of job {s!r}")
                            run.fail(JobError(f"{why}; rank {self.rank} stopped", name if k >= 0 else s, f"rank{src}"))
                            continue
                        lat = buf[:n].reshape(self.latent_shape).to(run.devices[0])
                        run.put(key, lat, None, str(run.devices[0]))
                        run.arrived(key)
            except BaseException as exc:  # noqa: BLE001 -- a dead peer or a timeout: cannot continue
                peer = dst if src == self.rank else src
                what = "sending" if src == self.rank else "receiving"
                self.error = exc
                with run.cond:
                    err = JobError(f"lost contact with rank {peer} while {what} latent frame {p} of job {s!r}: "
                                   f"{type(exc).__name__}: {exc}", s, f"rank{peer}")
                    err.__cause__ = exc
                    run.fail(err)
                return


def run_distributed(plan: Plan, models: dict, *, devices: list[str], make_context: Callable, seed: int = 0,
                    sampler: SamplerConfig | None = None, latent_hw: tuple[int, int],
                    inputs: dict[int, torch.Tensor] | None = None, condition: torch.Tensor | None = None,
                    vae=None, make_decoder: Callable | None = None, to_frames: Callable | None = None,
                    shuffle: int | None = None, cpu_threads: int | None = None, stats: RuntimeStats | None = None,
                    compile_mode: str | None = None, group=None,
                    noise: torch.Tensor | None = None, batch_jobs: int = 1,
                    encode: Callable | None = None) -> Iterator[tuple[list[int], object]]:
    """:func:`engine.runtime.execute` over the ranks of ``group`` (default: the world).

    Every rank calls it with the same plan, seed, sizes and models; ``devices`` are this
    rank's own workers (the same count on every rank). Rank 0's iterator yields (positions,
    frames or latents) in video order; the others' yield nothing and return when their
    jobs and transfers are done. Raises :class:`JobError` on every rank if any job fails.
    ``shuffle`` is accepted for signature parity and ignored (the assignment is static).
    """
    check_run(plan, models, devices)
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("run_distributed needs an initialised torch.distributed process group "
                           "(torchrun + engine.distributed.init_distributed())")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    backend = dist.get_backend(group)
    comm_device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    sampler = sampler or SamplerConfig()
    C = next(iter(models[r] for r in plan.roles)).config.out_channels
    latent_shape = (1, C, 1, *latent_hw)
    # every rank must run the same plan with the same worker count: compare once
    mine = torch.tensor([len(devices), plan_fingerprint(plan, seed, tuple(latent_hw), C, repr(sampler))],
                        dtype=torch.int64, device=comm_device)
    seen = [torch.zeros_like(mine) for _ in range(world)]
    try:
        dist.all_gather(seen, mine, group=group)
    except Exception as exc:  # noqa: BLE001 -- a missing or dead rank, or the group's timeout
        raise RuntimeError(f"rank {rank}: could not reach every rank of the process group before the run (a rank "
                           f"died, was never started, or is stuck elsewhere): {type(exc).__name__}: {exc}") from exc
    seen = [tuple(int(v) for v in t.cpu()) for t in seen]
    if len(set(seen)) != 1:
        raise ValueError(f"ranks disagree on (workers per rank, plan/seed/size fingerprint): {seen}; every rank must "
                         f"call generate/run_distributed with the same arguments and the same number of devices")
    assignment = assign_jobs(plan, world, workers=len(devices))

    def communicator(run: Executor) -> list[threading.Thread]:
        comm = Communicator(run, assignment, rank, group, comm_device, latent_shape)
        return [threading.Thread(target=comm, name=f"engine-r{rank}-comm", daemon=True)]

    return execute(plan, models, devices=devices, make_context=make_context, seed=seed, sampler=sampler,
                   latent_hw=latent_hw, inputs=inputs, condition=condition, vae=vae, make_decoder=make_decoder,
                   to_frames=to_frames, cpu_threads=cpu_threads, stats=stats, compile_mode=compile_mode,
                   placement=rank_placement(plan, assignment, rank), worker_prefix=f"r{rank}/",
                   extra_threads=communicator, noise=noise, batch_jobs=batch_jobs, encode=encode)
