"""The native host (csrc/, pybind11 module engine_export._native): its schedule, noise, RoPE and
slot logic equal the Python runtime's, and its rollout through the callback backend
(ONNX Runtime) equals the Python rollout exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("onnxruntime")
_native = pytest.importorskip("engine_export._native", reason="the native host extension is not built (pip install -e .)")

import engine  # noqa: E402
import engine_kernels.noise as noise_mod  # noqa: E402
from engine.config import SamplerConfig  # noqa: E402
from engine.kvcache import KVCache  # noqa: E402
from engine.models.wan import rope_cos_sin  # noqa: E402
from engine.rollout import RolloutPlan, ar_rollout  # noqa: E402
from engine.sampling import few_step_sigmas, flow_sigmas  # noqa: E402
from engine_export.host import builtin_noise, host_rollout, load_host  # noqa: E402
from engine_export.onnx import export_model  # noqa: E402
from helpers import rel_err  # noqa: E402
from engine_kernels.noise import frame_seed  # noqa: E402

HW = (4, 4)


@pytest.fixture(scope="module")
def tiny():
    return engine.load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def export_dir(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("host_export")
    export_model(tiny, d, frames=(3, 1), sizes=(HW,), cache_slots=9, opsets=(20,))
    return d


def _text(seed=0):
    return torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------
# the pieces
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_schedules_equal_python(shift):
    for ts in [(1000.0, 750.0, 500.0, 250.0), (999.0, 600.0, 37.5)]:
        assert _native.few_step_sigmas(list(ts), shift) == few_step_sigmas(ts, shift).tolist()
    for n in (1, 4, 7, 50):  # torch's vectorised linspace may differ in the last ulp; the host runs the manifest's table
        assert _native.flow_sigmas(n, shift) == pytest.approx(flow_sigmas(n, shift).tolist(), abs=1e-14, rel=0)


def test_frame_seed_and_builtin_noise():
    for seed, stream, pos in [(0, 0, 0), (123, 1, 7), (-5, 999, 2**40), (2**63 - 1, 3, 12)]:
        assert _native.frame_seed(seed, stream, pos) == frame_seed(seed, stream, pos)
    a = _native.counter_noise(7, 0, [3, 4], 16, 8, 8)
    assert a.shape == (16, 2, 8, 8)
    assert abs(float(a.mean())) < 0.1 and abs(float(a.std()) - 1) < 0.1
    # addressed by position: frame 4 alone equals frame 4 of the pair; other seeds/streams differ
    assert (_native.counter_noise(7, 0, [4], 16, 8, 8)[:, 0] == a[:, 1]).all()
    assert not (_native.counter_noise(7, 1, [4], 16, 8, 8)[:, 0] == a[:, 1]).all()
    b = builtin_noise(7, [3, 4], (1, 16, 8, 8))
    assert b.shape == (1, 16, 2, 8, 8) and torch.equal(b[0], torch.from_numpy(a))


def test_rope_tables_equal_python(tiny):
    cfg = tiny.config
    for positions in ([0, 1, 2], [17, 18], [1000]):
        c, s = _native.rope_tables(positions, 3, 5, list(cfg.rope_split), cfg.rope_theta)
        rc, rs = rope_cos_sin(torch.tensor(positions), 3, 5, cfg.rope_split, cfg.rope_theta)
        assert torch.equal(torch.from_numpy(c), rc) and torch.equal(torch.from_numpy(s), rs)


@pytest.mark.parametrize("sink, window, frames", [(0, None, 10), (3, 3, 20), (1, 5, 30), (0, 0, 9)])
def test_slot_bookkeeping_equals_kvcache(sink, window, frames):
    chunk, tpf = 3, 2
    py = KVCache(num_layers=1, batch=1, num_heads=1, head_dim=2, tokens_per_frame=tpf, chunk_frames=chunk,
                 sink_frames=sink, window_frames=window, max_frames=frames)
    cc = _native.SlotCache(tpf, chunk, sink, -1 if window is None else window, frames)
    assert cc.num_slots == py.num_slots
    for s in range(0, frames, chunk):
        pos = list(range(s, min(s + chunk, frames)))
        ps = py.claim(pos)
        slots, index, vis = cc.claim(pos)
        assert index == ps.token_index.tolist()
        assert torch.equal(torch.tensor(vis, dtype=torch.bool), ps.visibility.visibility)
        assert cc.slot_positions() == py.slot_positions()


def test_host_reads_the_manifest(export_dir):
    host = load_host(export_dir)
    assert host.model_name == "tiny-random" and host.precision == "float32"
    assert host.sigmas() == few_step_sigmas((1000, 750, 500, 250), 5.0).tolist()
    assert any(g.startswith("step_n3") for g in host.graphs)


# ----------------------------------------------------------------------------------
# rollouts
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("plan", [RolloutPlan(9, 3), RolloutPlan(10, 3, sink_frames=3, window_frames=3)],
                         ids=["three-chunks", "window-and-tail-chunk"])
def test_host_rollout_equals_python_rollout_exactly(tiny, export_dir, plan):
    """Same noise (torch's, through the callback), same schedule, same slots -> bitwise
    equal to the Python runtime driving the same exported graphs; and close to PyTorch."""
    em = engine.load_model(export_dir)
    text = _text(1)
    py = list(ar_rollout(em, em.prepare_context(text), plan, latent_hw=HW, sampler=SamplerConfig(), seed=11))
    nat = host_rollout(export_dir, text, num_frames=plan.num_frames, seed=11, sink_frames=plan.sink_frames,
                       window_frames=plan.window_frames)
    assert [p for p, _ in nat] == [p for p, _ in py]
    for (_, a), (_, b) in zip(py, nat):
        assert torch.equal(a, b)
    ref = list(ar_rollout(tiny, tiny.prepare_context(text), plan, latent_hw=HW, sampler=SamplerConfig(), seed=11))
    assert rel_err(torch.cat([x for _, x in nat], 2), torch.cat([x for _, x in ref], 2)) <= 1e-4


def test_host_builtin_noise_matches_python_with_the_same_generator(export_dir, monkeypatch):
    em = engine.load_model(export_dir)
    text = _text(2)

    monkeypatch.setattr(noise_mod, "frame_noise", builtin_noise)  # every draw of the runtime
    py = list(ar_rollout(em, em.prepare_context(text), RolloutPlan(6, 3), latent_hw=HW, sampler=SamplerConfig(), seed=3))
    nat = host_rollout(export_dir, text, num_frames=6, seed=3, noise="builtin")
    for (_, a), (_, b) in zip(py, nat):
        assert torch.equal(a, b)


def test_host_first_frame_given(export_dir):
    em = engine.load_model(export_dir)
    text = _text(3)
    first = torch.randn(1, 16, 1, *HW, generator=torch.Generator().manual_seed(9))
    plan = RolloutPlan(7, 3, first_given=True)
    py = list(ar_rollout(em, em.prepare_context(text), plan, latent_hw=HW, sampler=SamplerConfig(), seed=4,
                         first_latent=first))
    nat = host_rollout(export_dir, text, num_frames=7, seed=4, first_latent=first)
    assert [p for p, _ in nat] == [[0], [1, 2, 3], [4, 5, 6]]
    for (_, a), (_, b) in zip(py, nat):
        assert torch.equal(a.float(), b)


def test_host_rejects_what_it_cannot_run(export_dir):
    with pytest.raises(ValueError, match="needs 12 cache slots but the graphs hold 9"):
        host_rollout(export_dir, _text(), num_frames=12)
    with pytest.raises(ValueError, match="no step graph for 2 frames"):
        host_rollout(export_dir, _text(), num_frames=8)


# ----------------------------------------------------------------------------------
# manifest errors in C++
# ----------------------------------------------------------------------------------
def _copy_edit(export_dir, tmp_path, fn=None):
    d = tmp_path / "c"
    shutil.copytree(export_dir, d)
    if fn is not None:
        p = d / "manifest.json"
        data = json.loads(p.read_text())
        fn(data, d)
        p.write_text(json.dumps(data))
    return d


def _step(data):
    return next(g for g in data["graphs"] if g["kind"] == "step")


def _corrupt(data, d):
    f = d / _step(data)["file"]
    raw = bytearray(f.read_bytes())
    raw[10] ^= 0x55
    f.write_bytes(bytes(raw))


@pytest.mark.parametrize("edit, match", [
    (lambda m, d: m.update(schema_version=2), "newer than this host supports"),
    (lambda m, d: m.update(schema="x"), "not a worldengine export manifest"),
    (lambda m, d: (d / _step(m)["file"]).unlink(), "is missing"),
    (_corrupt, "SHA-256"),
    (lambda m, d: _step(m)["inputs"][0].update(shape=[1, 16, 3, 8, 8]), "'latents' is \\[1, 16, 3, 8, 8\\]"),
    (lambda m, d: m["sampler"].update(sigmas=[1.0, 0.9, 0.8, 0.6, 0.0]), "sigmas disagree"),
    (lambda m, d: m.pop("rope"), "missing field 'rope'"),
])
def test_host_manifest_errors_are_clear(export_dir, tmp_path, edit, match):
    d = _copy_edit(export_dir, tmp_path, edit)
    with pytest.raises(ValueError, match=match) as exc:
        load_host(d).sigmas()
    assert isinstance(exc.value, _native.ManifestError)
