"""The runtime: executes any :class:`~engine.plans.Plan` -- denoise, decode and encode jobs
over clips -- on W workers.

One worker per entry of ``devices`` (``cuda:0``, ``cuda:1``, ... or CPU threads:
``["cpu", "cpu"]``). Each worker owns a compute stream and a copy stream on its device;
model and VAE weights are copied once per distinct device and shared by its workers.

Scheduling: a job becomes ready when every job it depends on has been *issued*. Ready
encode jobs, hand-off decodes and the decodes of the next clip to be output (the
frontier) go first (frames leave as early as possible and hand-offs unblock the next
clip); denoise jobs are ordered critical-path-first (DiT passes on the longest remaining
chain, so planning runs ahead of populating), and decodes of later clips fill the gaps
after them. Jobs with the same *pin* run on the worker that took the first of them: a
KV-cache chain (its fixed-slot cache lives there; a new chain goes to the worker with the
fewest DiT passes still committed to its chains) and a clip's decode chain (its causal
decoder state lives there). Different clips
decode on different workers at the same time. On CUDA, "issued" means queued on the
producer's stream: the consumer's stream waits on the producer's event (latents are
copied asynchronously between devices on the copy stream), never on the whole device.
On the CPU there are no streams and an issued job is a finished job.

Batching (``batch_jobs`` > 1, default off): a worker that pops a ready denoise job without a
KV cache also takes up to ``batch_jobs - 1`` other READY jobs of the shared queue with the
same :func:`batch_key` (model role, frame layout, sigma table, visibility, RoPE) and runs
them as one batched forward per step (:func:`denoise_jobs`: B jobs x the context's CFG
rows), each with its own noise, sources, condition slice and sampler state; while other
workers wait idle it takes only its share of them. Every job keeps its own stats record
(``batch``: how many ran together). KV-cache jobs, exported models, models taking
timeline positions and jobs without CFG's two rows always run alone (:func:`batchable`).

Output: the output clips' decoded frames are stitched strictly in video order (each clip
without its ``drop`` leading frames) and handed out through the iterator :func:`execute`
returns as soon as a prefix is complete. Without a decoder the clean latents are handed
out in position order instead (the plan's decode jobs are not run).

Determinism: a job's result depends only on its inputs (dependency latents, decoded
frames and noise addressed by (seed, stream, position)), never on the worker, the order
or the device count. On CPU the intra-op thread count also changes float results, so the
runtime pins it in every worker thread (``cpu_threads``; default: the cores shared among the
CPU workers, :func:`default_cpu_threads`).

Placement: :class:`Placement` says which jobs run in this process and which latents come
from or go to other processes; :mod:`engine.distributed` runs the same :class:`Executor`
with a rank's placement and a communication thread.

Failure: if a job raises, the runtime stops issuing denoise and encode jobs, still runs
the decode jobs whose latents exist, hands out every frame that is complete in order,
then raises :class:`JobError` naming the job.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import queue
import random
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .config import SamplerConfig
from .plans import INPUT, Plan
from .plans.core import DecodeJob, EncodeJob, Job
from .denoise import batch_key, batchable, check_finite_latents, context_prefix, denoise_job, denoise_jobs, stack_context


class JobError(RuntimeError):
    """A job of a plan failed; ``job`` names it, ``worker`` says where it ran."""

    def __init__(self, message: str, job: str, worker: str):
        super().__init__(message)
        self.job = job
        self.worker = worker


@dataclass
class RuntimeStats:
    """Per-run statistics (times in seconds from the start of the run).

    jobs: one dict per job: id, kind, model, worker, device, start, end, passes.
    critical_path_passes / critical_path: the plan's longest chain in DiT forward passes.
    idle_fraction: per worker, 1 - busy / wall time. peak_memory: per device, bytes
    (CUDA: max allocated; CPU: the process's peak RSS). latent_peak_bytes: per device,
    the most latent and pixel bytes the runtime held at once.
    """

    strategy: str = ""
    workers: list[str] = field(default_factory=list)
    jobs: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0
    first_output_seconds: float | None = None
    critical_path_passes: int = 0
    critical_path: list[str] = field(default_factory=list)
    total_passes: int = 0
    idle_fraction: dict[str, float] = field(default_factory=dict)
    peak_memory: dict[str, int] = field(default_factory=dict)
    latent_peak_bytes: dict[str, int] = field(default_factory=dict)
    cpu_threads: int = 0  # torch intra-op threads each worker was pinned to

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------------
# devices, streams
# ----------------------------------------------------------------------------------
class Lane:
    """A device's streams (CUDA) or nothing (CPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.compute = torch.cuda.Stream(device)
            self.copy = torch.cuda.Stream(device)

    def compute_ctx(self):
        return torch.cuda.stream(self.compute) if self.cuda else contextlib.nullcontext()

    def record(self):
        if not self.cuda:
            return None
        ev = torch.cuda.Event()
        ev.record(self.compute)
        return ev

    def fetch(self, tensor: torch.Tensor, event) -> torch.Tensor:
        """``tensor`` (produced on some device, ready at ``event``) usable on this lane's
        compute stream; cross-device moves go asynchronously through the copy stream."""
        src = tensor.device
        if not self.cuda:
            if event is not None:
                event.synchronize()  # a CUDA producer feeding a CPU worker
            return tensor.to(self.device)
        if src == self.device:
            if event is not None:
                self.compute.wait_event(event)
            return tensor
        if event is not None:
            self.copy.wait_event(event)
            if src.type == "cuda":
                torch.cuda.current_stream(src).wait_event(event)
        with torch.cuda.stream(self.copy):
            out = tensor.to(self.device, non_blocking=True)
        if src.type == "cuda":
            # The copy (on this device's copy stream) reads the source's memory: make the
            # source device's stream wait for it before that memory can be reused.
            copied = torch.cuda.Event()
            copied.record(self.copy)
            src_stream = torch.cuda.current_stream(src)
            src_stream.wait_event(copied)
            tensor.record_stream(src_stream)
        self.compute.wait_stream(self.copy)
        out.record_stream(self.compute)
        return out


@dataclass
class Entry:
    """A stored latent or decoded-frames tensor, ready at ``event``, freed after ``refs`` reads."""

    tensor: torch.Tensor
    event: object
    device: str
    refs: int


@dataclass
class Placement:
    """Which jobs run in this process. ``local``: their ids (None: every job);
    ``emits``: this process hands out the video; ``sends``: latents (producer, position)
    read by other processes (one extra read each); ``receives``: latents arriving from
    other processes -> the local jobs waiting for them."""

    local: set[str] | None = None
    emits: bool = True
    sends: list[tuple[str, int]] = field(default_factory=list)
    receives: dict[tuple[str, int], list[str]] = field(default_factory=dict)

    def runs(self, job_id: str) -> bool:
        return self.local is None or job_id in self.local


class Executor:
    """One run of a plan in this process: workers, the store of latents and decoded frames,
    the ready queues, and the in-order emitter (see the module docstring)."""

    def __init__(self, plan: Plan, models: dict, devices: list[str], make_context: Callable, *, seed: int,
                 sampler: SamplerConfig, latent_hw: tuple[int, int], inputs: dict[int, torch.Tensor],
                 condition: torch.Tensor | None, vae, make_decoder: Callable | None, to_frames: Callable | None,
                 shuffle: int | None, cpu_threads: int, stats: RuntimeStats, placement: Placement | None = None,
                 worker_prefix: str = "", noise: torch.Tensor | None = None, keep_latents: dict | None = None,
                 batch_jobs: int = 1, encode: Callable | None = None):
        self.plan = plan
        self.batch_jobs = check_batch_jobs(batch_jobs)
        self.seed = seed
        self.noise = noise
        self.keep_latents = keep_latents
        self.cache_last = {j.cache: j.id for j in plan.jobs if j.cache is not None}
        self.sampler = sampler
        self.latent_hw = latent_hw
        self.condition = condition
        self.make_decoder = make_decoder
        self.encode = encode
        self.to_frames = to_frames
        self.stats = stats
        self.cpu_threads = cpu_threads
        self.placement = placement or Placement()
        self.decoding = make_decoder is not None
        if plan.encodes and (not self.decoding or encode is None):
            raise ValueError(f"plan {plan.strategy!r} re-encodes decoded frames ({plan.encodes[0].id!r}): it needs "
                             f"a VAE decoder and encoder (make_decoder= and encode=, e.g. the VAE's "
                             f"engine.models.codecs.codec_for(vae).encode)")
        self.devices = [torch.device(d) for d in devices]
        self.names = [f"{worker_prefix}w{i}:{d}" for i, d in enumerate(devices)]
        self.lanes = {str(d): Lane(d) for d in self.devices}
        self._place_weights(models, make_context, vae)
        # the jobs this process runs
        self.jobs = [j for j in plan.all_jobs() if self.placement.runs(j.id)
                     and (self.decoding or not isinstance(j, DecodeJob))]
        self.index = {j.id: i for i, j in enumerate(plan.all_jobs())}
        self.prio = plan.priorities()
        local = {j.id for j in self.jobs}
        self.children: dict[str, list[str]] = {j: [] for j in local}
        self.waiting: dict[str, int] = {}
        for j in self.jobs:
            n = 0
            for d in plan.deps_of(j):
                if d in local:
                    self.children[d].append(j.id)
                    n += 1
            self.waiting[j.id] = n
        for key, readers in self.placement.receives.items():
            for r in readers:
                if r in self.waiting:
                    self.waiting[r] += 1
        self.chain_next = {d.chain for d in plan.all_jobs() if isinstance(d, DecodeJob) and d.chain}
        # ready queues: shared, and one per worker for pinned jobs bound to it
        self.shared: list = []
        self.own: list[list] = [[] for _ in self.devices]
        self.pins: dict[str, int] = {}
        # DiT passes still to run in the chains bound to each worker (a new chain goes to the
        # least committed worker: segments of a pinned chain alternate instead of piling up)
        self.committed = [0] * len(self.devices)
        self.pin_passes: dict[str, int] = {}
        for j in plan.all_jobs():
            if j.pin is not None:
                self.pin_passes[j.pin] = self.pin_passes.get(j.pin, 0) + plan.passes_of(j)
        # the output clips in order and how many of their decode jobs are still to run here:
        # decodes of the frontier clip (the next to be emitted) go first, later ones wait
        self.out_clips = [c.id for c in plan.clips if c.output]
        self.feeds_encode = {d for e in plan.encodes for d in plan.deps_of(e)}  # decodes whose pixels an encode reads
        self.clip_left: dict[str, int] = {}
        for j in self.jobs:
            if isinstance(j, DecodeJob) and j.clip is not None:
                self.clip_left[j.clip] = self.clip_left.get(j.clip, 0) + 1
        self.frontier = 0
        self._advance_frontier()
        self.rng = random.Random(shuffle) if shuffle is not None else None
        self.cond = threading.Condition()
        self.issued = 0
        self.running = 0  # jobs being run now
        self.alive = len(self.devices)  # worker threads not yet stopped
        self.started = threading.Barrier(len(self.devices))
        self.n_jobs = len(self.jobs)
        self.error: JobError | None = None
        self.cancelled = False
        self.outputs = plan.output_map()
        self.refs = self._reader_counts()
        self.store: dict[tuple, Entry] = {}
        self.held_bytes: dict[str, int] = {}
        self.held_peak: dict[str, int] = {}
        self.caches: dict[tuple[int, str], object] = {}
        self.decoders: dict[str, object] = {}
        self.encode_lock = threading.Lock()  # the VAE's encoder keeps its cache on the module
        # batching of like jobs: the roles whose model and context can run several jobs in one
        # pass, each job's batch key (None: alone), contexts stacked for batch_jobs jobs
        self.idle = 0  # workers waiting for a job
        self.batch_roles: set[str] = set()
        if self.batch_jobs > 1:
            first = str(self.devices[0])
            self.batch_roles = {r for r in plan.roles if batchable(self.models[first][r], self.contexts[first][r])}
        self.batch_keys: dict[str, object] = {}
        self.stacked: dict[tuple[str, str], object] = {}
        self.stack_lock = threading.Lock()
        home = str(self.devices[0])
        for p, t in inputs.items():
            self.put((INPUT, p), t.to(self.devices[0]), None, home)
        for j in self.jobs:
            if self.waiting[j.id] == 0:
                self._push(j.id)
        self.t0 = time.perf_counter()
        self.busy = [0.0] * len(self.devices)

    def _place_weights(self, models: dict, make_context: Callable, vae) -> None:
        """Model and VAE weights once per device, text contexts once per (device, role)."""
        self.models: dict[str, dict[str, torch.nn.Module]] = {}
        self.contexts: dict[str, dict] = {}
        self.vaes: dict[str, object] = {}
        copies: dict[tuple[int, str], object] = {}

        def on(obj, dev):
            key = (id(obj), str(dev))
            if key not in copies:
                here = torch.device(obj.device) if hasattr(obj, "device") else next(obj.parameters()).device
                copies[key] = obj if here == dev else copy.deepcopy(obj).to(dev)
            return copies[key]

        for dev in self.devices:
            key = str(dev)
            if key in self.models:
                continue
            self.models[key], self.contexts[key] = {}, {}
            for role in self.plan.roles:
                self.models[key][role] = on(models[role], dev)
                self.contexts[key][role] = make_context(role, self.models[key][role])
            if vae is not None and self.make_decoder is not None:
                self.vaes[key] = on(vae, dev)

    # -- bookkeeping (callers hold self.cond) -----------------------------------------
    def _reader_counts(self) -> dict[tuple, int]:
        """How many times each stored tensor will be read -- latents (producer, position) by
        local jobs, the emitter and other processes; decoded frames (decode job, "px") by
        encodes and the emitter. An entry is freed after its last read."""
        refs: dict[tuple, int] = {}

        def add(key):
            refs[key] = refs.get(key, 0) + 1

        for j in self.jobs:
            for p, s in self.plan.reads_of(j):
                add((s, p))
            for d in dict.fromkeys(d for d, _ in self.plan.pixel_reads_of(j)):
                add((d, "px"))
        if self.placement.emits:
            if self.decoding:
                for _, chain in self.plan.output_sequence():
                    for d in chain:
                        add((d.id, "px"))
            else:
                for p, s in self.outputs.items():
                    add((s, p))
        for key in self.placement.sends:
            add(key)
        return refs

    def _vae_first(self, job) -> int:
        """0 for jobs that go before denoise jobs: encodes, hand-off decodes, decodes whose
        pixels an encode reads (they feed denoise work) and decodes of the frontier clip (or
        of clips no output waits for); 1 otherwise."""
        if isinstance(job, EncodeJob):
            return 0
        if isinstance(job, DecodeJob):
            if job.clip is None or job.clip not in self.out_clips or job.id in self.feeds_encode:
                return 0
            return 0 if self.out_clips.index(job.clip) <= self.frontier else 1
        return 1

    def _advance_frontier(self) -> None:
        """Move the frontier past output clips with no decode left here; re-rank queued decodes."""
        old = self.frontier
        while self.frontier < len(self.out_clips) and self.clip_left.get(self.out_clips[self.frontier], 0) == 0:
            self.frontier += 1
        if self.frontier != old and hasattr(self, "shared"):
            for q in [self.shared, *self.own]:
                q[:] = [(self._vae_first(self.plan.job(it[3])), *it[1:]) for it in q]
                heapq.heapify(q)

    def _push(self, jid: str):
        job = self.plan.job(jid)
        item = (self._vae_first(job), -self.prio[jid], self.index[jid], jid)
        pin = job.pin
        heapq.heappush(self.own[self.pins[pin]] if pin in self.pins else self.shared, item)

    def _pop(self, w: int) -> str | None:
        """The next job for worker ``w`` (its own pinned jobs compete with the shared queue);
        after a failure only decode jobs (the frames already made still come out)."""
        queues = [q for q in (self.own[w], self.shared) if q]
        if self.error is not None:
            cands = [(q, k) for q in queues for k, it in enumerate(q) if self.plan.job(it[3]).kind == "decode"]
            if not cands:
                return None
            q, k = min(cands, key=lambda c: c[0][c[1]])
            item = q.pop(k)
            heapq.heapify(q)
        elif not queues:
            return None
        elif self.rng is not None:
            cands = [(q, k) for q in queues for k in range(len(q))]
            q, k = cands[self.rng.randrange(len(cands))]
            item = q.pop(k)
            heapq.heapify(q)
        else:
            q = min(queues, key=lambda q: q[0])
            if q is self.shared and self.own[w] and self._starts_chain_elsewhere(q[0][3], w):
                q = self.own[w]  # leave the new chain to a less committed worker; run our own
            item = heapq.heappop(q)
        jid = item[3]
        pin = self.plan.job(jid).pin
        if pin is not None and pin not in self.pins:
            self.pins[pin] = w
            self.committed[w] += self.pin_passes[pin]
            for other in [it for it in self.shared if self.plan.job(it[3]).pin == pin]:  # now bound to w
                self.shared.remove(other)
                heapq.heappush(self.own[w], other)
            heapq.heapify(self.shared)
        return jid

    def _starts_chain_elsewhere(self, jid: str, w: int) -> bool:
        """Would job ``jid`` start a new pinned chain of DiT work that a worker with fewer
        committed passes than ``w`` should take?"""
        pin = self.plan.job(jid).pin
        if pin is None or pin in self.pins or not self.pin_passes.get(pin):
            return False
        return min(self.committed) < self.committed[w]

    def _next_job(self, w: int) -> str | None:
        """Wait for the next job of worker ``w``; None when it should stop: cancelled, every
        job issued, or failed with no decode left that could still come (callers hold
        self.cond)."""
        while not self.cancelled:
            jid = self._pop(w)
            if jid is not None:
                return jid
            if self.issued >= self.n_jobs or (self.error is not None and self.running == 0):
                return None
            self.idle += 1
            try:
                self.cond.wait()
            finally:
                self.idle -= 1
        return None

    def _batch_key(self, jid: str):
        if jid not in self.batch_keys:
            job = self.plan.job(jid)
            ok = isinstance(job, Job) and job.model in self.batch_roles
            self.batch_keys[jid] = batch_key(job, self.plan.rope_of(job)) if ok else None
        return self.batch_keys[jid]

    def _companions(self, w: int, jid: str) -> list[str]:
        """Other READY denoise jobs worker ``w`` runs in one batch with ``jid`` (callers hold
        self.cond): jobs of the shared queue with the same batch key, in queue (priority)
        order, at most ``batch_jobs - 1`` -- fewer when other workers wait idle, so the
        ready like jobs are shared out rather than piled on one worker. A batch never
        takes a pinned job (KV-cache jobs are never batched), nor anything after a failure."""
        if self.batch_jobs <= 1 or self.error is not None or self.cancelled:
            return []
        key = self._batch_key(jid)
        if key is None:
            return []
        like = sorted(it for it in self.shared if self._batch_key(it[3]) == key)
        if not like:
            return []
        share = -(-(len(like) + 1) // (self.idle + 1))  # ceil: this worker's share of the like jobs
        take = like[:max(0, min(self.batch_jobs, share) - 1)]
        if take:
            ids = {it[3] for it in take}
            self.shared[:] = [it for it in self.shared if it[3] not in ids]
            heapq.heapify(self.shared)
        return [it[3] for it in take]

    def _batch_context(self, key: str, role: str, m: int):
        """The role's context on device ``key`` stacked for ``m`` jobs: stacked once for
        ``batch_jobs`` jobs, smaller batches take a prefix of it."""
        ctx = self.contexts[key][role]
        with self.stack_lock:
            full = self.stacked.get((key, role))
            if full is None:
                full = self.stacked[(key, role)] = stack_context(ctx, self.batch_jobs)
        return context_prefix(full, getattr(ctx, "batch", 1), m)

    def put(self, key, tensor, event, dev: str):
        """Store ``tensor`` under ``key`` if anyone will read it."""
        n = self.refs.get(key, 0)
        if n == 0:
            return
        self.store[key] = Entry(tensor, event, dev, n)
        b = tensor.numel() * tensor.element_size()
        self.held_bytes[dev] = self.held_bytes.get(dev, 0) + b
        self.held_peak[dev] = max(self.held_peak.get(dev, 0), self.held_bytes[dev])

    def release(self, key):
        e = self.store[key]
        e.refs -= 1
        if e.refs == 0:
            del self.store[key]
            self.held_bytes[e.device] -= e.tensor.numel() * e.tensor.element_size()

    def arrived(self, key):
        """A latent from another process is stored: its local readers may become ready."""
        for c in self.placement.receives.get(key, []):
            self.waiting[c] -= 1
            if self.waiting[c] == 0 and self.error is None:
                self._push(c)
        self.cond.notify_all()

    def fail(self, err: JobError):
        if self.error is None:
            self.error = err
        self.cond.notify_all()

    # -- workers ----------------------------------------------------------------------
    def worker(self, w: int):
        dev = self.devices[w]
        try:
            try:
                if dev.type == "cpu":
                    pin_threads(self.cpu_threads)
                else:
                    torch.cuda.set_device(dev)
            except BaseException as exc:  # noqa: BLE001
                self.started.abort()
                with self.cond:
                    self.fail(JobError(f"worker {self.names[w]} could not start on {dev}: {type(exc).__name__}: "
                                       f"{exc}", "worker", self.names[w]))
                return
            try:
                self.started.wait()  # every worker has set its threads before any job (and any compile) starts
            except threading.BrokenBarrierError:
                return
            with torch.no_grad():
                self._work(w)
        finally:
            with self.cond:
                self.alive -= 1
                self.cond.notify_all()

    def _work(self, w: int):
        key = str(self.devices[w])
        lane = self.lanes[key]
        while True:
            with self.cond:
                jid = self._next_job(w)
                if jid is None:
                    return
                ids = [jid] + self._companions(w, jid)
                self.issued += len(ids)
                self.running += len(ids)
                jobs = [self.plan.job(j) for j in ids]
                reads = [self.plan.reads_of(job) for job in jobs]
                entries = [{p: self.store[(s, p)] for p, s in r} for r in reads]
                pixels = [{d: self.store[(d, "px")] for d, _ in self.plan.pixel_reads_of(job)} for job in jobs]
            start = time.perf_counter()
            try:
                with lane.compute_ctx():
                    if len(jobs) == 1:
                        outs = [self._run_job(jobs[0], w, lane, entries[0], pixels[0])]
                    else:
                        outs = self._run_batch(jobs, w, lane, entries)
                event = lane.record()
                if self.keep_latents is not None:
                    if event is not None:
                        event.synchronize()
                    kept = {k: t.detach().to("cpu", copy=True) for o in outs for k, t in o.items() if k[1] != "px"}
            except BaseException as exc:  # noqa: BLE001 -- reported with the job's name
                with self.cond:
                    self.running -= len(jobs)
                    also = f" (batched with {ids[1:]})" if len(ids) > 1 else ""
                    err = JobError(f"{jobs[0].kind} job {jid!r}{also} failed on worker {self.names[w]}: "
                                   f"{type(exc).__name__}: {exc}", jid, self.names[w])
                    err.__cause__ = exc
                    self.fail(err)
                return
            end = time.perf_counter()
            with self.cond:
                if self.keep_latents is not None:
                    self.keep_latents.update(kept)
                self.busy[w] += end - start
                for job, out, rd, px in zip(jobs, outs, reads, pixels):
                    self._finish(job, w, out, event, rd, px, start, end, len(jobs))
                self.cond.notify_all()

    def _finish(self, job, w: int, outs: dict, event, reads, pixels: dict, start: float, end: float,
                batch: int) -> None:
        """Book a finished job: stats, stored outputs, released reads, ready children
        (callers hold self.cond)."""
        key = str(self.devices[w])
        if job.pin is not None and job.pin in self.pins:
            self.committed[self.pins[job.pin]] -= self.plan.passes_of(job)
        if isinstance(job, DecodeJob) and job.clip in self.clip_left:
            self.clip_left[job.clip] -= 1
            self._advance_frontier()
        self.running -= 1
        self.stats.jobs.append({"id": job.id, "kind": job.kind, "model": job.model, "worker": self.names[w],
                                "device": key, "start": start - self.t0, "end": end - self.t0,
                                "passes": self.plan.passes_of(job), "batch": batch})
        for k, t in outs.items():
            self.put(k, t, event, key)
        for p, s in reads:
            self.release((s, p))
        for d in pixels:
            self.release((d, "px"))
        for c in self.children[job.id]:
            self.waiting[c] -= 1
            if self.waiting[c] == 0:
                self._push(c)

    def _run_batch(self, jobs: list, w: int, lane: Lane, entries: list[dict]) -> list[dict]:
        """Run like denoise jobs (one batch key) as one batched pass per step on worker ``w``."""
        key = str(self.devices[w])
        role = jobs[0].model
        srcs = [{p: lane.fetch(e.tensor, e.event) for p, e in ent.items()} for ent in entries]
        xs = denoise_jobs(self.models[key][role], self.contexts[key][role], jobs, srcs, seed=self.seed,
                          sampler=self.sampler, latent_hw=self.latent_hw, ropes=[self.plan.rope_of(j) for j in jobs],
                          condition=self.condition, noise=self.noise,
                          batch_context=self._batch_context(key, role, len(jobs)))
        outs = []
        for job, x in zip(jobs, xs):
            check_finite_latents(job, x, job.generated_positions)
            outs.append({(job.id, p): x[:, :, k:k + 1] for k, p in enumerate(job.generated_positions)})
        return outs

    def _run_job(self, job, w: int, lane: Lane, entries: dict, pixels: dict) -> dict:
        """Run one job of any kind on worker ``w``; returns {store key: tensor}."""
        key = str(self.devices[w])
        if isinstance(job, DecodeJob):
            dec = self.decoders.pop(job.pin, None)
            if dec is None:
                dec = self.make_decoder(self.vaes[key])
            if job.chain is None:
                dec.reset()
            parts = []
            lat = [lane.fetch(entries[p].tensor, entries[p].event).float() for p, _ in job.latents]
            if getattr(dec, "whole_clip", False) and not job.image:  # e.g. CogVideoX's VAE: the job's latents at once
                lat = [torch.cat(lat, 2)]
            for z in lat:
                if job.image:
                    dec.reset()
                parts.append(dec.decode_chunk(z))
            if job.id in self.chain_next:
                self.decoders[job.pin] = dec  # the next job of the chain continues this state
            return {(job.id, "px"): torch.cat(parts, 2)}
        if isinstance(job, EncodeJob):
            frames = []
            for d, i in self.plan.pixel_reads_of(job):
                e = pixels[d]
                frames.append(lane.fetch(e.tensor, e.event)[:, :, i:i + 1])
            video = torch.cat(frames, 2)
            vae = self.vaes[key]
            with self.encode_lock:
                if job.image:
                    z = torch.cat([self.encode(vae, video[:, :, k:k + 1]) for k in range(video.shape[2])], 2)
                else:
                    z = self.encode(vae, video)
            check_finite_latents(job, z, job.positions)
            return {(job.id, p): z[:, :, k:k + 1].float() for k, p in enumerate(job.positions)}
        src = {p: lane.fetch(e.tensor, e.event) for p, e in entries.items()}
        cache = None
        if job.cache is not None:
            cache = self.caches.get((w, job.cache))
            if cache is None:
                from .kvcache import cache_for

                ctx = self.contexts[key][job.model]
                cache = cache_for(self.models[key][job.model], self.plan.caches[job.cache],
                                  getattr(ctx, "batch", 1), *self.latent_hw)
                self.caches[(w, job.cache)] = cache
        x = denoise_job(self.models[key][job.model], self.contexts[key][job.model], job, src, seed=self.seed,
                        sampler=self.sampler, latent_hw=self.latent_hw, rope=self.plan.rope_of(job),
                        condition=self.condition, cache=cache, noise=self.noise,
                        cache_write=not (cache is not None and cache.plan_visibility and job.extra_passes == 0
                                         and self.cache_last[job.cache] == job.id))
        check_finite_latents(job, x, job.generated_positions)
        if job.cache is not None and self.cache_last[job.cache] == job.id:
            self.caches.pop((w, job.cache), None)  # the chain is done: its buffers go
        return {(job.id, p): x[:, :, k:k + 1] for k, p in enumerate(job.generated_positions)}

    # -- in-order output ------------------------------------------------------------------
    def _wait(self, key) -> Entry | None:
        """The stored entry ``key`` once it exists; None when it never will (cancelled, or a
        failure after which every worker stopped)."""
        with self.cond:
            while key not in self.store and not self.cancelled and not (self.error is not None and self.alive == 0):
                self.cond.wait()
            return self.store.get(key) if not self.cancelled else None

    def emitter(self, out: queue.Queue):
        """Hand out the video in order: decoded frames per decode job of the output clips
        (their ``drop`` leading frames cut), or clean latents by position."""
        dev = self.devices[0]
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        try:
            if self.decoding:
                self._emit_frames(out)
            else:
                self._emit_latents(out)
        except BaseException as exc:  # noqa: BLE001
            err = JobError(f"emitting the video failed: {type(exc).__name__}: {exc}", "emit", "emitter")
            err.__cause__ = exc
            out.put(("error", None, err))  # (kind, positions, item): the error is the item
            return
        out.put(("end", None, None))

    def _emit_frames(self, out: queue.Queue):
        for clip, chain in self.plan.output_sequence():
            todo = clip.drop
            left = clip.frames - clip.drop - clip.drop_tail  # frames of this clip still to emit
            for d in chain:
                e = self._wait((d.id, "px"))
                if e is None:
                    return
                if e.event is not None:
                    e.event.synchronize()
                video = e.tensor
                with self.cond:
                    self.release((d.id, "px"))
                cut = min(todo, video.shape[2])
                todo -= cut
                take = min(left, video.shape[2] - cut)
                left -= take
                if take == 0:
                    continue
                item = self.to_frames(video[:, :, cut:cut + take])
                with self.cond:
                    if self.stats.first_output_seconds is None:
                        self.stats.first_output_seconds = time.perf_counter() - self.t0
                out.put(("data", list(d.positions), item))

    def _emit_latents(self, out: queue.Queue):
        for p in range(self.plan.num_frames):
            key = (self.outputs[p], p)
            e = self._wait(key)
            if e is None:
                return
            if e.event is not None:
                e.event.synchronize()
            t = e.tensor.float().cpu()
            with self.cond:
                self.release(key)
                if self.stats.first_output_seconds is None:
                    self.stats.first_output_seconds = time.perf_counter() - self.t0
            out.put(("data", [p], t))

    # -- running ------------------------------------------------------------------------
    def run(self, extra_threads: list[threading.Thread] = ()) -> Iterator[tuple[list[int], object]]:
        """Start the workers (and the emitter when this process emits), yield what the
        emitter hands out, wait for every thread, raise the first error."""
        out: queue.Queue = queue.Queue()
        threads = [threading.Thread(target=self.worker, args=(w,), name=f"engine-worker-{w}", daemon=True)
                   for w in range(len(self.devices))]
        if self.placement.emits:
            threads.append(threading.Thread(target=self.emitter, args=(out,), name="engine-emit", daemon=True))
        extra = list(extra_threads)
        try:
            for t in threads + extra:
                t.start()
            if self.placement.emits:
                yield from drain(out, self)
            for t in threads + extra:
                t.join()
            if self.error is not None:
                raise self.error
        finally:
            self.cancel(threads)
            for t in extra:
                if t.is_alive():
                    t.join()  # a communicator still owes its peers matched sends/receives
            self.finish_stats()

    def cancel(self, threads) -> None:
        """Tell the threads to stop and wait for them."""
        with self.cond:
            self.cancelled = True
            self.cond.notify_all()
        for t in threads:
            t.join()

    def finish_stats(self) -> None:
        """Fill wall time, job order, idle fractions, held-tensor peaks and peak memory."""
        stats = self.stats
        wall = time.perf_counter() - self.t0
        stats.wall_seconds = wall
        stats.jobs.sort(key=lambda r: r["start"])
        stats.idle_fraction = {n: max(0.0, 1.0 - b / wall) if wall > 0 else 0.0 for n, b in zip(self.names, self.busy)}
        stats.latent_peak_bytes = dict(self.held_peak)
        for dev in dict.fromkeys(self.devices):
            if dev.type == "cuda":
                stats.peak_memory[str(dev)] = int(torch.cuda.max_memory_allocated(dev))
            else:
                stats.peak_memory[str(dev)] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def drain(out: queue.Queue, run: Executor | None = None):
    """Yield (positions, frames) from the emitter's queue until it says done; re-raise an
    error it reports, or the run's own error once the emitter stops short."""
    while True:
        kind, positions, item = out.get()
        if kind == "data":
            yield positions, item
        elif kind == "error":
            raise item
        else:
            if run is not None and run.error is not None:
                raise run.error
            return


def check_run(plan: Plan, models: dict, devices: list[str]) -> None:
    """The checks every executor makes before a run: a valid plan, devices, a model per role."""
    plan.validate()
    if not devices:
        raise ValueError("devices must name at least one device, e.g. ['cpu'] or ['cuda:0', 'cuda:1']")
    missing = [r for r in plan.roles if r not in models]
    if missing:
        raise ValueError(f"plan {plan.strategy!r} needs model role(s) {missing}; got {sorted(models)}")


def start_stats(plan: Plan, stats: RuntimeStats | None, workers: list[str]) -> RuntimeStats:
    """A run's stats with what the plan says before it runs."""
    stats = stats if stats is not None else RuntimeStats()
    stats.strategy = plan.strategy
    stats.workers = list(workers)
    stats.critical_path_passes, stats.critical_path = plan.critical_path()
    stats.total_passes = plan.total_passes()
    return stats


#: Environment variable fixing the torch threads per worker when ``cpu_threads`` is not given.
CPU_THREADS_ENV = "ENGINE_CPU_THREADS"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def default_cpu_threads(devices: list[str]) -> int:
    """Torch intra-op threads per worker when ``cpu_threads`` is not given: the
    ``ENGINE_CPU_THREADS`` environment variable if set (an int >= 1), else the cores this
    process may use divided among its CPU workers (at least 1): one CPU worker uses the
    whole machine, two share it. Float results on CPU depend on the count (it is pinned for
    the run; give ``cpu_threads`` for the same bits on another worker count or machine)."""
    import os

    env = os.environ.get(CPU_THREADS_ENV)
    if env not in (None, ""):
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{CPU_THREADS_ENV}={env!r}: torch threads per worker must be an int >= 1 (unset it "
                             f"for one share of the cores per CPU worker)")
        return n
    cpu_workers = sum(1 for d in devices if torch.device(d).type == "cpu")
    return max(1, available_cores() // max(1, cpu_workers))


def pin_threads(n: int) -> None:
    """torch intra-op threads = ``n`` for the calling thread (a per-thread setting: each
    worker pins its own; the caller's thread is never changed, so nothing is restored
    later -- a restore run by a generator's finaliser in the middle of a torch.compile
    trace broke dynamo's guard on it)."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def run_pinned(n: int, fn: Callable, *args):
    """``fn(*args)`` on a fresh thread pinned to ``n`` torch intra-op threads (as every
    worker is), returning its result or raising its error: work done before the runtime
    starts (the first frame's VAE encode) gives the same numbers whatever the caller's
    thread count is."""
    box: dict = {}
    grad = torch.is_grad_enabled()  # thread-local: carried over

    def body():
        try:
            pin_threads(n)
            with torch.set_grad_enabled(grad):
                box["out"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            box["err"] = exc

    t = threading.Thread(target=body, name="engine-pinned", daemon=True)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["out"]


def reset_peak_memory(devices: list[str]) -> None:
    """Reset the CUDA peak-memory counters of ``devices`` (the run's stats report peaks)."""
    for d in dict.fromkeys(devices):
        if torch.device(d).type == "cuda":
            torch.cuda.reset_peak_memory_stats(torch.device(d))


def execute(plan: Plan, models: dict, *, devices: list[str], make_context: Callable, seed: int = 0,
            sampler: SamplerConfig | None = None, latent_hw: tuple[int, int], inputs: dict[int, torch.Tensor] | None = None,
            condition: torch.Tensor | None = None, vae=None, make_decoder: Callable | None = None,
            to_frames: Callable | None = None, shuffle: int | None = None, cpu_threads: int | None = None,
            stats: RuntimeStats | None = None, compile_mode: str | None = None,
            placement: Placement | None = None, worker_prefix: str = "",
            extra_threads: Callable[[Executor], list[threading.Thread]] | None = None,
            noise: torch.Tensor | None = None, keep_latents: dict | None = None,
            batch_jobs: int = 1, encode: Callable | None = None) -> Iterator[tuple[list[int], object]]:
    """Run ``plan`` and yield (latent positions, output) in video order as prefixes complete:
    decoded frames ``to_frames(video [1, 3, t, H, W])`` when ``make_decoder`` is given, else
    clean latents [1, C, 1, h, w] on the CPU, one position at a time.

    models: {role: model} for every role the plan uses (``main``, ``coarse``, ``fine``);
    make_context(role, model_on_device) -> the text context that model is called with;
    inputs: {position: clean latent [1, C, 1, h, w]} for the plan's given frames;
    condition: [1, c, F, h, w] over the timeline (I2V channels), sliced per job;
    vae + make_decoder(vae) -> a fresh streaming decoder (``reset`` / ``decode_chunk``)
    + encode(vae, video [1, 3, T, H, W]) -> latents [1, C, F, h, w] (the VAE's codec,
    :mod:`engine.models.codecs`; needed when the plan has encode jobs): the decode and
    encode jobs' VAE (copied once per device);
    shuffle: seed to pick ready jobs at random instead of by priority (tests);
    cpu_threads: torch intra-op threads per worker while the run lasts (pinned: float results
    depend on it; None: :func:`default_cpu_threads`, a share of the cores per CPU worker);
    compile_mode: run every DiT's blocks under ``torch.compile`` (:mod:`engine.compile`);
    placement / worker_prefix / extra_threads: a distributed rank's share of the plan
    (:mod:`engine.distributed`);
    noise: [1, C, F, h, w] initial noise of every timeline position, replacing the seeded
    draws of fresh- and interpolated-noise jobs (replaying another implementation's noise);
    keep_latents: a dict that receives a CPU copy of every latent a denoise or encode job
    makes, keyed (job id, position) (parity checks, debugging);
    batch_jobs: at most this many READY like denoise jobs (one :func:`batch_key`, no KV
    cache) run as one batched forward per step on a worker (1: every job alone, the
    default); the output is the same either way.
    Raises :class:`JobError` (after yielding every completed frame) when a job fails.
    """
    check_run(plan, models, devices)
    check_noise(plan, noise, models, latent_hw)
    check_batch_jobs(batch_jobs)
    stats = start_stats(plan, stats, [f"{worker_prefix}w{i}:{d}" for i, d in enumerate(devices)])
    cpu_threads = default_cpu_threads(devices) if cpu_threads is None else cpu_threads
    stats.cpu_threads = cpu_threads
    return _execute(plan, models, list(devices), make_context, seed, sampler or SamplerConfig(), latent_hw,
                    inputs or {}, condition, vae, make_decoder, to_frames, shuffle, cpu_threads, stats, compile_mode,
                    placement, worker_prefix, extra_threads, noise, keep_latents, batch_jobs, encode)


def check_batch_jobs(batch_jobs) -> int:
    """``batch_jobs`` must be an int >= 1 (1: no batching)."""
    if isinstance(batch_jobs, bool) or not isinstance(batch_jobs, int) or batch_jobs < 1:
        raise ValueError(f"batch_jobs (most denoise jobs per batched pass) must be an int >= 1, got {batch_jobs!r}")
    return batch_jobs


def check_noise(plan: Plan, noise: torch.Tensor | None, models: dict, latent_hw: tuple[int, int]) -> None:
    """A replayed noise tensor must cover the timeline: [1, C, plan.num_frames, h, w]."""
    if noise is None:
        return
    C = next(iter(models[r] for r in plan.roles)).config.out_channels
    want = (1, C, plan.num_frames, *latent_hw)
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != want:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"noise must be the initial noise of every latent position [1, C, F, h, w] = {list(want)} "
                         f"for this plan ({plan.strategy}, {plan.num_frames} positions); got {got}")
    if any(j.noise == "unified" for j in plan.jobs):
        raise ValueError("noise= replays per-position noise; this plan shares unified noise between clips")


def _execute(plan, models, devices, make_context, seed, sampler, latent_hw, inputs, condition, vae, make_decoder,
             to_frames, shuffle, cpu_threads, stats, compile_mode, placement, worker_prefix, extra_threads,
             noise=None, keep_latents=None, batch_jobs=1, encode=None):
    from .compile import compiled_models

    reset_peak_memory(devices)
    run = Executor(plan, models, devices, make_context, seed=seed, sampler=sampler, latent_hw=latent_hw,
                   inputs=inputs, condition=condition, vae=vae, make_decoder=make_decoder, to_frames=to_frames,
                   shuffle=shuffle, cpu_threads=cpu_threads, stats=stats, placement=placement,
                   worker_prefix=worker_prefix, noise=noise, keep_latents=keep_latents, batch_jobs=batch_jobs,
                   encode=encode)
    distinct = {id(m): m for per in run.models.values() for m in per.values()}
    with compiled_models(list(distinct.values()), compile_mode):
        yield from run.run(extra_threads(run) if extra_threads is not None else ())
