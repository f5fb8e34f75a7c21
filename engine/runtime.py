"""Populating runtime: executes any :class:`~engine.plans.Plan` on W workers.

One worker per entry of ``devices`` (``cuda:0``, ``cuda:1``, ... or CPU threads:
``["cpu", "cpu"]``). Each worker owns a compute stream and a copy stream on its device;
the model weights are copied once per distinct device and shared by the workers on it.

Scheduling: a job becomes ready when every job it depends on has been *issued*; the ready
queue is ordered critical-path-first (DiT passes on the longest remaining chain, so
planning jobs run ahead of populating). On CUDA, "issued" means queued on the producer's
stream: the consumer's stream waits on the producer's event (latents are copied
asynchronously between devices on the copy stream), never on the whole device. On the
CPU there are no streams and an issued job is a finished job.

Output: final latents are decoded by the VAE on a separate decode thread (its own stream)
strictly in frame order -- a prefix of the timeline is decoded as soon as it is complete
-- and handed out through the iterator :func:`execute` returns.

Determinism: a job's result depends only on its inputs (dependency latents and noise
addressed by (seed, stream, position)), never on the worker, the order or the device
count. On CPU the intra-op thread count also changes float results, so the runtime pins
it (``cpu_threads``, default 1 per worker) for the whole run.

Failure: if a job raises, the runtime stops issuing jobs, decodes and hands out every
frame whose latents are complete, then raises :class:`JobError` naming the job.
"""

from __future__ import annotations

import contextlib
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
from .plans import INPUT, Job, Plan
from .plans.core import FRESH_SHARE_STREAM, UNIFIED_STREAM
from .sampling import FewStepSampler, cfg as apply_cfg, make_sampler


class JobError(RuntimeError):
    """A job of a plan failed; ``job`` names it, ``worker`` says where it ran."""

    def __init__(self, message: str, job: str, worker: str):
        super().__init__(message)
        self.job = job
        self.worker = worker


@dataclass
class RuntimeStats:
    """Per-run statistics (times in seconds from the start of the run).

    jobs: one dict per job: id, model, worker, device, start, end, passes.
    critical_path_passes / critical_path: the plan's longest chain in DiT forward passes.
    idle_fraction: per worker, 1 - busy / wall time. peak_memory: per device, bytes
    (CUDA: max allocated; CPU: the process's peak RSS). latent_peak_bytes: per device,
    the most latent bytes the runtime held at once.
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

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------------
# one job
# ----------------------------------------------------------------------------------
def _stream(job: Job, k: int) -> int:
    return job.noise_stream * 1000 + k


def initial_latents(job: Job, sources: dict[int, torch.Tensor], *, seed: int, shape_chw: tuple[int, int, int],
                    device) -> torch.Tensor:
    """Initial noisy latents [1, C, G, h, w] (float32) of a job's generated frames."""
    from kernels.noise import frame_noise, noise_init_reference

    gen = list(job.generated_positions)
    shape = (1, *shape_chw)
    if job.noise == "unified":
        eps = frame_noise(seed, list(range(len(gen))), shape, stream=_stream(job, UNIFIED_STREAM))
    elif job.noise == "interp":
        planning = sorted(job.planning)
        pn = frame_noise(seed, planning, shape, stream=_stream(job, 0) if job.noise_stream else 0)
        fresh = (frame_noise(seed, gen, shape, stream=_stream(job, FRESH_SHARE_STREAM)) if job.noise_rho > 0 else None)
        eps = noise_init_reference(gen, planning, pn, fresh=fresh, rho=job.noise_rho)
    else:
        eps = frame_noise(seed, gen, shape, stream=_stream(job, 0))
    eps = eps.to(device)
    start = job.sigmas[0]
    if any(s < 1.0 for s in start):  # re-noised anchors: x = (1 - s) x0 + s eps
        for k, (p, s) in enumerate(zip(gen, start)):
            if s < 1.0:
                x0 = sources[p].to(device=device, dtype=torch.float32)[:, :, 0]
                eps[:, :, k] = (1 - s) * x0 + s * eps[:, :, k]
    return eps


def _sampler(kind: str, table: torch.Tensor):
    if kind == "fewstep":
        return FewStepSampler(table)
    return make_sampler(kind, sigmas=table)


@torch.no_grad()
def denoise_job(model, context, job: Job, sources: dict[int, torch.Tensor], *, seed: int, sampler: SamplerConfig,
                latent_hw: tuple[int, int], condition: torch.Tensor | None = None) -> torch.Tensor:
    """Run one job: returns the clean latents [1, C, G, h, w] (float32) of its generated
    frames, in position order. ``sources``: {position: clean latent [1, C, 1, h, w]} for
    every frame the job reads (context frames and re-noised anchors)."""
    cfg_ = model.config
    dev, dt = model.device, model.dtype
    h, w = latent_hw
    C = cfg_.out_channels
    n = len(job.positions)
    gen_idx = [i for i, g in enumerate(job.generated) if g]
    ctx_idx = [i for i, g in enumerate(job.generated) if not g]
    gen_pos = [job.positions[i] for i in gen_idx]
    table = torch.tensor(job.sigmas, dtype=torch.float64)  # [N+1, G]
    x = initial_latents(job, sources, seed=seed, shape_chw=(C, h, w), device=dev)
    clean = None
    if ctx_idx:
        clean = torch.cat([sources[job.positions[i]].to(dev, torch.float32) for i in ctx_idx], 2)
    vis = torch.tensor(job.visibility, dtype=torch.bool, device=dev)
    rope = list(job.rope_positions)
    batch = getattr(context, "batch", 1)
    guided = batch == 2
    cond = None
    if condition is not None:
        cond = condition.to(dev, dt)[:, :, list(job.positions)].expand(batch, -1, -1, -1, -1)
    steps = _sampler(sampler.kind, table)
    gen_t = torch.tensor(gen_idx, device=dev)
    ctx_t = torch.tensor(ctx_idx, device=dev) if ctx_idx else None
    full = torch.empty(1, C, n, h, w, device=dev, dtype=torch.float32)
    if clean is not None:
        full.index_copy_(2, ctx_t, clean)
    for i in range(steps.num_steps):
        full.index_copy_(2, gen_t, x)
        t = torch.zeros(n, dtype=torch.float32)
        t[gen_idx] = (table[i] * 1000.0).float()
        tb = t.to(dev).reshape(1, n).expand(batch, n)
        kw = dict(frame_positions=rope, visibility=vis)
        if cond is not None:
            kw["condition"] = cond
        if getattr(model, "takes_timeline_positions", False):
            kw["timeline_positions"] = list(job.positions)
        v = model(full.to(dt).expand(batch, -1, -1, -1, -1), tb, context, **kw)
        if guided:
            v = apply_cfg(v[:1], v[1:], sampler.guidance_scale)
        vg = v.index_select(2, gen_t).float()
        noise = None
        if isinstance(steps, FewStepSampler) and i + 1 < steps.num_steps:
            from kernels.noise import frame_noise

            noise = frame_noise(seed, gen_pos, (1, C, h, w), stream=_stream(job, 1 + i), device=dev)
        x = steps.step(i, x, vg, noise=noise)
    return x


# ----------------------------------------------------------------------------------
# devices, streams, workers
# ----------------------------------------------------------------------------------
class _Lane:
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
class _Entry:
    tensor: torch.Tensor
    event: object
    device: str
    refs: int


class _Run:
    def __init__(self, plan: Plan, models: dict, devices: list[str], make_context: Callable, *, seed: int,
                 sampler: SamplerConfig, latent_hw: tuple[int, int], inputs: dict[int, torch.Tensor],
                 condition: torch.Tensor | None, decoder, shuffle: int | None, cpu_threads: int,
                 stats: RuntimeStats, to_frames: Callable | None):
        self.plan = plan
        self.seed = seed
        self.sampler = sampler
        self.latent_hw = latent_hw
        self.condition = condition
        self.decoder = decoder
        self.to_frames = to_frames
        self.stats = stats
        self.cpu_threads = cpu_threads
        self.devices = [torch.device(d) for d in devices]
        self.names = [f"w{i}:{d}" for i, d in enumerate(devices)]
        # weights once per device, contexts once per (device, role)
        self.models: dict[str, dict[str, torch.nn.Module]] = {}
        self.contexts: dict[str, dict] = {}
        copies: dict[tuple[int, str], torch.nn.Module] = {}
        for dev in self.devices:
            key = str(dev)
            if key in self.models:
                continue
            self.models[key], self.contexts[key] = {}, {}
            for role in plan.roles:
                m = models[role]
                ck = (id(m), key)
                if ck not in copies:
                    copies[ck] = m if m.device == dev else _copy_to(m, dev)
                self.models[key][role] = copies[ck]
                self.contexts[key][role] = make_context(role, copies[ck])
        self.lanes = {str(d): _Lane(d) for d in self.devices}
        # scheduling state
        self.prio = plan.priorities()
        self.order = {j.id: i for i, j in enumerate(plan.jobs)}
        self.children = plan.children()
        self.waiting = {j.id: len(j.deps) for j in plan.jobs}
        self.ready: list = []
        self.rng = random.Random(shuffle) if shuffle is not None else None
        self.cond = threading.Condition()
        self.issued = 0
        self.error: JobError | None = None
        self.cancelled = False
        self.outputs = plan.output_map()
        self.n_jobs = len(plan.jobs)  # jobs this run issues (a distributed rank: its own)
        self.refs = self._reader_counts()  # readers of every (producer, position)
        self.store: dict[tuple[str, int], _Entry] = {}
        self.latent_bytes: dict[str, int] = {}
        self.latent_peak: dict[str, int] = {}
        home = str(self.devices[0])
        for p, t in inputs.items():
            self._put((INPUT, p), t.to(self.devices[0]), None, home)
        for jid in self._initial_ready():
            self._push(jid)
        self.t0 = time.perf_counter()
        self.busy = [0.0] * len(self.devices)

    # -- hooks (engine.distributed narrows them to one rank's jobs) ----------------------
    def _reader_counts(self) -> dict[tuple[str, int], int]:
        """How many times each (producer, position) latent will be read: by jobs, and by the
        emitter for final frames. An entry is freed after its last read."""
        refs: dict[tuple[str, int], int] = {}
        for j in self.plan.jobs:
            for p, s in j.reads:
                refs[(s, p)] = refs.get((s, p), 0) + 1
        for p, s in self.outputs.items():
            refs[(s, p)] = refs.get((s, p), 0) + 1
        return refs

    def _initial_ready(self) -> list[str]:
        return [j.id for j in self.plan.jobs if not j.deps]

    # -- bookkeeping (callers hold self.cond) -----------------------------------------
    def _push(self, jid: str):
        heapq.heappush(self.ready, (-self.prio[jid], self.order[jid], jid))

    def _pop(self) -> str:
        if self.rng is not None:
            k = self.rng.randrange(len(self.ready))
            item = self.ready.pop(k)
            heapq.heapify(self.ready)
            return item[2]
        return heapq.heappop(self.ready)[2]

    def _put(self, key, tensor, event, dev: str):
        n = self.refs.get(key, 0)
        if n == 0:
            return
        self.store[key] = _Entry(tensor, event, dev, n)
        b = tensor.numel() * tensor.element_size()
        self.latent_bytes[dev] = self.latent_bytes.get(dev, 0) + b
        self.latent_peak[dev] = max(self.latent_peak.get(dev, 0), self.latent_bytes[dev])

    def _release(self, key):
        e = self.store[key]
        e.refs -= 1
        if e.refs == 0:
            del self.store[key]
            self.latent_bytes[e.device] -= e.tensor.numel() * e.tensor.element_size()

    # -- workers ----------------------------------------------------------------------
    def worker(self, w: int):
        dev = self.devices[w]
        key = str(dev)
        lane = self.lanes[key]
        if dev.type == "cpu":
            torch.set_num_threads(self.cpu_threads)
        else:
            torch.cuda.set_device(dev)
        with torch.no_grad():
            while True:
                with self.cond:
                    while not self.ready and self.issued < self.n_jobs and not (self.error or self.cancelled):
                        self.cond.wait()
                    if self.error or self.cancelled or not self.ready:
                        return
                    jid = self._pop()
                    self.issued += 1
                    job = self.plan.job(jid)
                    entries = {p: self.store[(s, p)] for p, s in job.reads}
                start = time.perf_counter()
                try:
                    src = {p: lane.fetch(e.tensor, e.event) for p, e in entries.items()}
                    with lane.compute_ctx():
                        x = denoise_job(self.models[key][job.model], self.contexts[key][job.model], job, src,
                                        seed=self.seed, sampler=self.sampler, latent_hw=self.latent_hw,
                                        condition=self.condition)
                        outs = {p: x[:, :, k:k + 1] for k, p in enumerate(job.generated_positions)}
                    event = lane.record()
                except BaseException as exc:  # noqa: BLE001 -- reported with the job's name
                    with self.cond:
                        if self.error is None:
                            self.error = JobError(f"job {jid!r} failed on worker {self.names[w]}: "
                                                  f"{type(exc).__name__}: {exc}", jid, self.names[w])
                            self.error.__cause__ = exc
                        self.cond.notify_all()
                    return
                end = time.perf_counter()
                with self.cond:
                    self.busy[w] += end - start
                    self.stats.jobs.append({"id": jid, "model": job.model, "worker": self.names[w], "device": key,
                                            "start": start - self.t0, "end": end - self.t0, "passes": job.passes})
                    for p, t in outs.items():
                        self._put((jid, p), t, event, key)
                    for p, s in job.reads:
                        self._release((s, p))
                    for c in self.children[jid]:
                        self.waiting[c] -= 1
                        if self.waiting[c] == 0:
                            self._push(c)
                    self.cond.notify_all()

    # -- in-order output ------------------------------------------------------------------
    def emitter(self, out: queue.Queue):
        F = self.plan.num_frames
        nxt = 0
        dev = self.devices[0]
        lane = self.lanes[str(dev)]
        if dev.type == "cpu":
            torch.set_num_threads(self.cpu_threads)
        else:
            torch.cuda.set_device(dev)
        decode_stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        try:
            with torch.no_grad():
                while nxt < F:
                    with self.cond:
                        while (self.outputs[nxt], nxt) not in self.store and not self.cancelled:
                            if self.error is not None:
                                break
                            self.cond.wait()
                        if self.cancelled:
                            return
                        batch = []
                        p = nxt
                        while p < F and (self.outputs[p], p) in self.store:
                            batch.append((p, self.store[(self.outputs[p], p)]))
                            p += 1
                        if not batch:  # failed (or nothing more can come)
                            break
                    ctxm = torch.cuda.stream(decode_stream) if decode_stream is not None else contextlib.nullcontext()
                    with ctxm:
                        lat = [lane.fetch(e.tensor, e.event) if decode_stream is None else self._to_decode(e, dev, decode_stream)
                               for _, e in batch]
                        positions = [q for q, _ in batch]
                        if self.decoder is not None:
                            # one latent frame at a time: the result never depends on how
                            # the timeline prefix happened to be grouped
                            video = torch.cat([self.decoder.decode_chunk(z.float()) for z in lat], 2)
                            item = self.to_frames(video)
                        else:
                            item = torch.cat(lat, 2).float().cpu()
                    with self.cond:
                        for q, _ in batch:
                            self._release((self.outputs[q], q))
                        if self.stats.first_output_seconds is None:
                            self.stats.first_output_seconds = time.perf_counter() - self.t0
                    out.put(("data", positions, item))
                    nxt = positions[-1] + 1
        except BaseException as exc:  # noqa: BLE001
            out.put(("error", JobError(f"decoding failed at latent frame {nxt}: {type(exc).__name__}: {exc}",
                                       "decode", "decoder"), None))
            return
        out.put(("end", None, None))

    @staticmethod
    def _to_decode(e: _Entry, dev, stream):
        if e.event is not None:
            stream.wait_event(e.event)
        t = e.tensor
        if t.device != dev:
            t = t.to(dev, non_blocking=True)
        return t


def drain(out: queue.Queue):
    """Yield (positions, frames) from the emitter's queue until it says done; re-raise
    an error it reports."""
    while True:
        kind, positions, item = out.get()
        if kind == "data":
            yield positions, item
        elif kind == "error":
            raise item
        else:
            return


def cancel(run, threads) -> None:
    """Tell a run's threads to stop and wait for them."""
    with run.cond:
        run.cancelled = True
        run.cond.notify_all()
    for t in threads:
        t.join()


def finish_stats(run, stats: RuntimeStats) -> None:
    """Fill wall time, job order, idle fractions and latent peaks of a finished run."""
    wall = time.perf_counter() - run.t0
    stats.wall_seconds = wall
    stats.jobs.sort(key=lambda r: r["start"])
    stats.idle_fraction = {n: max(0.0, 1.0 - b / wall) if wall > 0 else 0.0 for n, b in zip(run.names, run.busy)}
    stats.latent_peak_bytes = dict(run.latent_peak)


def _copy_to(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).to(device)


def execute(plan: Plan, models: dict, *, devices: list[str], make_context: Callable, seed: int = 0,
            sampler: SamplerConfig | None = None, latent_hw: tuple[int, int], inputs: dict[int, torch.Tensor] | None = None,
            condition: torch.Tensor | None = None, decoder=None, to_frames: Callable | None = None,
            shuffle: int | None = None, cpu_threads: int = 1, stats: RuntimeStats | None = None
            ) -> Iterator[tuple[list[int], object]]:
    """Run ``plan`` and yield (latent positions, output) in timeline order as prefixes
    complete: decoded frames ``to_frames(decoder.decode_chunk(...))`` when a ``decoder``
    (a :class:`~engine.models.vae.StreamingDecoder`) is given, else clean latents
    [1, C, n, h, w] on the CPU.

    models: {role: model} for every role the plan uses (``main``, ``coarse``, ``fine``);
    make_context(role, model_on_device) -> the text context that model is called with;
    inputs: {position: clean latent [1, C, 1, h, w]} for the plan's given frames;
    shuffle: seed to pick ready jobs at random instead of critical-path-first (tests);
    cpu_threads: torch intra-op threads while the run lasts (pinned: results depend on it).
    Raises :class:`JobError` (after yielding every completed frame) when a job fails.
    """
    plan.validate()
    if not devices:
        raise ValueError("devices must name at least one device, e.g. ['cpu'] or ['cuda:0', 'cuda:1']")
    missing = [r for r in plan.roles if r not in models]
    if missing:
        raise ValueError(f"plan {plan.strategy!r} needs model role(s) {missing}; got {sorted(models)}")
    stats = stats if stats is not None else RuntimeStats()
    stats.strategy = plan.strategy
    stats.workers = [f"w{i}:{d}" for i, d in enumerate(devices)]
    stats.critical_path_passes, stats.critical_path = plan.critical_path()
    stats.total_passes = plan.total_passes()
    return _execute(plan, models, devices, make_context, seed, sampler or SamplerConfig(), latent_hw, inputs or {},
                    condition, decoder, to_frames, shuffle, cpu_threads, stats)


def _execute(plan, models, devices, make_context, seed, sampler, latent_hw, inputs, condition, decoder, to_frames,
             shuffle, cpu_threads, stats):
    old_threads = torch.get_num_threads()
    use_cpu = any(torch.device(d).type == "cpu" for d in devices)
    if use_cpu:
        torch.set_num_threads(cpu_threads)
    for d in devices:
        if torch.device(d).type == "cuda":
            torch.cuda.reset_peak_memory_stats(torch.device(d))
    run = None
    threads = []
    try:
        run = _Run(plan, models, devices, make_context, seed=seed, sampler=sampler, latent_hw=latent_hw,
                   inputs=inputs, condition=condition, decoder=decoder, shuffle=shuffle, cpu_threads=cpu_threads,
                   stats=stats, to_frames=to_frames)
        out: queue.Queue = queue.Queue()
        threads = [threading.Thread(target=run.worker, args=(w,), name=f"engine-worker-{w}", daemon=True)
                   for w in range(len(devices))]
        threads.append(threading.Thread(target=run.emitter, args=(out,), name="engine-decode", daemon=True))
        for t in threads:
            t.start()
        yield from drain(out)
        for t in threads:
            t.join()
        if run.error is not None:
            raise run.error
    finally:
        if run is not None:
            cancel(run, threads)
            finish_stats(run, stats)
            for d in dict.fromkeys(devices):
                dev = torch.device(d)
                if dev.type == "cuda":
                    stats.peak_memory[d] = int(torch.cuda.max_memory_allocated(dev))
                else:
                    stats.peak_memory[d] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        if use_cpu:
            torch.set_num_threads(old_threads)
