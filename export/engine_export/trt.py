"""TensorRT engines from the exported ONNX graphs, and a runner for them.

Everything here is written against TensorRT's documented Python API (10.x; 11 keeps it,
with strongly typed networks always on) and is imported lazily: :func:`status` says
whether TensorRT can be used here and why not, and nothing else in the project needs it.

Build (:func:`build_engines`): one engine per graph of the manifest, from a strongly typed
network (the precision is the ONNX graph's own: export a float16 / bfloat16 graph, then
build), a persistent timing cache shared by all builds in the folder, and an optimisation
profile per graph with min = opt = max = the bucket's static shapes. Engine files are named
``<graph>.trt<version>.sm<major><minor>.engine`` and recorded in the manifest with their
SHA-256, the TensorRT version and the SM.

Run (:class:`TrtRunner`): ``set_input_shape`` / ``set_tensor_address`` on torch CUDA
tensors, ``execute_async_v3`` on a torch stream; with ``cuda_graphs=True`` the first call
of a shape bucket runs eagerly (TensorRT's recommended warm-up), the second captures a CUDA
graph over static input/output buffers, and later calls copy the feeds in and replay.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .manifest import Manifest, sha256_file, write_manifest
from .runtime import TORCH_DTYPES, check_feeds


def _import():
    import tensorrt as trt  # noqa: PLC0415 - optional dependency

    return trt


def status() -> tuple[bool, str]:
    """(usable, reason): TensorRT imports and a CUDA device is visible."""
    try:
        trt = _import()
    except ImportError as exc:
        return False, f"the 'tensorrt' Python package cannot be imported ({exc}); pip install tensorrt on a CUDA machine"
    if not torch.cuda.is_available():
        return False, f"tensorrt {trt.__version__} is installed but no CUDA device is visible"
    return True, f"tensorrt {trt.__version__}"


def available() -> bool:
    return status()[0]


def gpu_sm(device: int = 0) -> str:
    """The GPU's SM as a string, e.g. '90' for an H100."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}{minor}"


def engine_file_name(graph_name: str, trt_version: str, sm: str) -> str:
    """``<graph>.trt<version>.sm<sm>.engine``: engines are specific to both."""
    return f"{graph_name}.trt{trt_version}.sm{sm}.engine"


def engines_for_this_gpu(manifest: Manifest) -> list[dict]:
    """The manifest's engines built with this TensorRT version for this GPU's SM."""
    trt = _import()
    sm = gpu_sm()
    return [e for e in (manifest.data.get("tensorrt") or {}).get("engines", [])
            if e["tensorrt_version"] == trt.__version__ and e["sm"] == sm and (manifest.directory / e["file"]).exists()]


# ----------------------------------------------------------------------------------
# build
# ----------------------------------------------------------------------------------
def build_engine(onnx_path: str | Path, out_path: str | Path, graph: dict, *, timing_cache: str | Path | None = None,
                 workspace_gib: float = 8.0, opt_level: int = 3, logger=None) -> Path:
    """Build one strongly typed engine for ``graph`` (its manifest entry) from its ONNX file."""
    trt = _import()
    logger = logger or trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # follows external data next to the file
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.builder_optimization_level = opt_level
    profile = builder.create_optimization_profile()
    for t in graph["inputs"]:  # static buckets: min = opt = max
        shape = tuple(t["shape"])
        profile.set_shape(t["name"], shape, shape, shape)
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        tc = Path(timing_cache)
        cache = config.create_timing_cache(tc.read_bytes() if tc.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} (see the log above)")
    out = Path(out_path)
    out.write_bytes(bytes(plan))
    if cache is not None:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    return out


def build_engines(directory: str | Path, *, kinds=("context", "step"), opset: int | None = None,
                  workspace_gib: float = 8.0) -> Manifest:
    """Build engines for the folder's graphs (highest opset unless ``opset``) and record
    them in its manifest. Needs TensorRT and a CUDA device."""
    from .manifest import load_manifest

    ok, why = status()
    if not ok:
        raise RuntimeError(f"cannot build TensorRT engines: {why}")
    trt = _import()
    m = load_manifest(directory)
    sm = gpu_sm()
    ops = sorted({g["opset"] for g in m.graphs}, reverse=True)
    use = opset if opset is not None else ops[0]
    engines = [e for e in (m.data.get("tensorrt") or {}).get("engines", [])
               if not (e["tensorrt_version"] == trt.__version__ and e["sm"] == sm)]
    timing = m.directory / f"timing.trt{trt.__version__}.sm{sm}.cache"
    for g in m.graphs:
        if g["kind"] not in kinds or g["opset"] != use:
            continue
        name = engine_file_name(g["name"], trt.__version__, sm)
        build_engine(m.path(g), m.directory / name, g, timing_cache=timing, workspace_gib=workspace_gib)
        engines.append({"graph": g["name"], "file": name, "sha256": sha256_file(m.directory / name),
                        "tensorrt_version": trt.__version__, "sm": sm, "precision": g["precision"],
                        "strongly_typed": True, "timing_cache": timing.name})
    m.data["tensorrt"] = {"engines": engines}
    write_manifest(m.directory, m.data)
    return m


# ----------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------
class TrtRunner:
    """One engine; ``runner(feeds) -> outputs`` on torch CUDA tensors (manifest names)."""

    def __init__(self, engine_path: str | Path, graph: dict, *, cuda_graphs: bool = True, device: int = 0):
        trt = _import()
        self.trt = trt
        self.graph = graph
        self.device = torch.device("cuda", device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {engine_path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)
        self.cuda_graphs = cuda_graphs
        self.outputs = {o["name"]: o for o in graph["outputs"]}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        want = {t["name"] for t in graph["inputs"]} | set(self.outputs)
        if set(names) != want:
            raise RuntimeError(f"engine {engine_path} has tensors {sorted(names)}, the manifest says {sorted(want)}")
        # static buffers: the engine always reads/writes these addresses (CUDA-graph safe)
        self._in = {t["name"]: torch.empty(t["shape"], dtype=TORCH_DTYPES[t["dtype"]], device=self.device)
                    for t in graph["inputs"]}
        self._out = {n: torch.empty(o["shape"], dtype=TORCH_DTYPES[o["dtype"]], device=self.device)
                     for n, o in self.outputs.items()}
        for name, t in {**self._in, **self._out}.items():
            if name in self._in:
                self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        self._calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None

    @classmethod
    def from_manifest(cls, manifest: Manifest, graph: dict, **kw) -> "TrtRunner":
        for e in engines_for_this_gpu(manifest):
            if e["graph"] == graph["name"]:
                return cls(manifest.directory / e["file"], graph, **kw)
        raise RuntimeError(f"no TensorRT engine for graph {graph['name']!r} built for this TensorRT and GPU; "
                           f"run `python -m engine_export trt {manifest.directory}`")

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.graph['name']!r}")

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_feeds(self.graph, feeds)
        cur = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(cur)
        with torch.cuda.stream(self.stream):
            for name, t in feeds.items():
                self._in[name].copy_(t, non_blocking=True)
            if self._graph is not None:
                self._graph.replay()
            elif self.cuda_graphs and self._calls >= 1:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, stream=self.stream):
                    self._enqueue()
                self._graph = g
                g.replay()
            else:
                self._enqueue()
        self._calls += 1
        cur.wait_stream(self.stream)
        return {n: t.clone() for n, t in self._out.items()}


__all__ = ["status", "available", "gpu_sm", "engine_file_name", "engines_for_this_gpu", "build_engine", "build_engines",
           "TrtRunner"]
