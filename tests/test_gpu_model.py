"""GPU lane for the engine core: bfloat16 numerics, the Triton attention backend inside
the model, and device independence. Skipped without CUDA."""

import pytest
import torch

import engine
from engine.kvcache import KVCache
from engine.loading import build_model
from helpers import rel_err

pytestmark = pytest.mark.gpu


def _inputs(nf=6, h=8, w=12, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, nf, h, w, generator=g)
    t = torch.rand(1, nf, generator=g) * 1000
    text = torch.randn(1, 9, 32, generator=g)
    return x.to(device), t.to(device), text.to(device)


@torch.no_grad()
def test_bf16_model_close_to_float32():
    ref = build_model(engine.PRESETS["tiny-random"], seed=3)
    x, t, text = _inputs(device="cpu")
    want = ref(x, t, text)
    gpu = build_model(engine.PRESETS["tiny-random"], seed=3).to("cuda", torch.bfloat16)
    got = gpu(x.cuda(), t.cuda(), text.cuda()).float().cpu()
    assert rel_err(got, want) < 3e-2


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_backend_equals_sdpa_in_cached_rollout(dtype):
    base = build_model(engine.PRESETS["tiny-random"].replace(num_layers=3), seed=5).to("cuda", dtype)
    x, t, text = _inputs(nf=9, seed=1)
    outs = {}
    for backend in ("sdpa", "triton"):
        base.attention_backend = backend
        cache = KVCache(num_layers=3, batch=1, num_heads=2, head_dim=32, tokens_per_frame=24, chunk_frames=3,
                        sink_frames=3, window_frames=3, device="cuda", dtype=dtype)
        ctx = base.prepare_context(text.to(dtype))
        chunks = []
        for s in range(0, 9, 3):
            pos = list(range(s, s + 3))
            chunks.append(base(x[:, :, pos], t[:, pos], ctx, frame_positions=pos, kv_cache=cache, cache_slots=cache.claim(pos)))
        outs[backend] = torch.cat(chunks, 2).float()
    assert rel_err(outs["triton"], outs["sdpa"]) < 2e-2


def test_generate_on_gpu_matches_cpu_in_float32():
    kw = dict(num_frames=9, height=32, width=32, seed=2, progress=False, dtype="float32")
    cpu = engine.generate("tiny-random", devices=["cpu"], **kw)
    gpu = engine.generate("tiny-random", devices=["cuda:0"], **kw)
    diff = abs(cpu.frames.astype(int) - gpu.frames.astype(int))
    assert diff.mean() < 1.0  # uint8 levels; TF32/reduction order may move a few pixels by one


@pytest.mark.parametrize("strategy,opts", [("mmpl", dict(segment_frames=4)), ("longdwm", dict(keyframes=3, fps_ratio=2))])
def test_runtime_cuda_streams_bit_identical(strategy, opts):
    """The runtime's CUDA path (compute + copy streams, events): several workers on the GPU(s)
    give the same video as one worker, and a CPU worker mixed in changes nothing beyond
    device numerics."""
    n = torch.cuda.device_count()
    devs = [f"cuda:{i % n}" for i in range(2)]
    kw = dict(num_frames=17, height=32, width=32, seed=4, progress=False, strategy=strategy, dtype="float32", **opts)
    one = engine.generate("tiny-random", devices=devs[:1], **kw)
    two = engine.generate("tiny-random", devices=devs, **kw)
    assert (one.frames == two.frames).all()
    stats = two.stats.runtime
    assert set(stats.peak_memory) >= set(devs)
