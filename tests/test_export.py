"""Export: ONNX graphs (opset 23 native Attention/RMSNormalization, opset 20 decomposed),
ORT parity with the PyTorch model, a chunked rollout through the exported step, the
manifest (round trip, schema, corrupt / mismatched folders), load_model(DIR) + generate,
and the TensorRT path's availability check. Tiny preset, tiny shapes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import engine  # noqa: E402
from engine.config import SamplerConfig  # noqa: E402
from engine.rollout import RolloutPlan, ar_rollout  # noqa: E402
from engine_export import trt  # noqa: E402
from engine_export.manifest import ManifestError, load_manifest, validate  # noqa: E402
from engine_export.onnx import (  # noqa: E402
    Bucket,
    DiTBlockStep,
    DiTStep,
    example_inputs,
    export_model,
    export_step,
    op_types,
)
from engine_export.runtime import OrtRunner  # noqa: E402
from helpers import rel_err  # noqa: E402

HW = (4, 4)  # latent size (32x32 video): 4 tokens per frame
SLOTS = 9


@pytest.fixture(scope="module")
def tiny():
    return engine.load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def export_dir(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_export")
    export_model(tiny, d, frames=(3,), sizes=(HW,), cache_slots=SLOTS, opsets=(23, 20), block=True)
    return d


def _text(seed=0):
    return torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------
# graphs
# ----------------------------------------------------------------------------------
def test_graphs_pass_checker_and_use_the_expected_ops(export_dir):
    import onnx

    man = load_manifest(export_dir)
    assert {(g["kind"], g["opset"]) for g in man.graphs} == {
        (k, op) for k in ("context", "step", "block") for op in (23, 20)}
    for g in man.graphs:
        onnx.checker.check_model(str(man.path(g)), full_check=True)
        ops = op_types(man.path(g))
        assert not any("complex" in o.lower() or o in ("DFT", "STFT") for o in ops)
        if g["kind"] in ("step", "block"):
            native = {"Attention", "RMSNormalization"} <= ops
            assert native == (g["opset"] == 23), (g["name"], sorted(ops))
            assert "ScatterND" in ops  # the cache write
        onnx_model = onnx.load(str(man.path(g)), load_external_data=False)
        assert onnx_model.opset_import[0].version == g["opset"]


@pytest.mark.parametrize("opset", [23, 20])
def test_step_and_block_match_pytorch_in_float32(tiny, export_dir, opset):
    man = load_manifest(export_dir, verify_hashes=False)
    step = man.find("step", opset=opset)[0]
    bucket = Bucket.from_dict(step["bucket"])
    feeds = example_inputs(step["inputs"], seed=opset)
    got = OrtRunner(man, step)(feeds)
    with torch.no_grad():
        ref = DiTStep(tiny, bucket)(**feeds)
    for name, r in zip(("velocity", "new_k", "new_v"), ref):
        assert rel_err(got[name], r) <= 1e-4, name
    block = man.find("block", opset=opset)[0]
    feeds = example_inputs(block["inputs"], seed=opset + 1)
    got = OrtRunner(man, block)(feeds)
    with torch.no_grad():
        ref = DiTBlockStep(tiny, bucket, layer=0)(**feeds)
    for name, r in zip(("hidden_out", "new_k", "new_v"), ref):
        assert rel_err(got[name], r) <= 1e-4, name


@pytest.mark.parametrize("plan", [RolloutPlan(9, 3), RolloutPlan(12, 3, sink_frames=3, window_frames=3)],
                         ids=["three-chunks", "ring-eviction"])
def test_rollout_through_the_exported_step_equals_pytorch(tiny, export_dir, plan):
    """Cache in, cache out: the exported backend's rollout vs the PyTorch model's."""
    em = engine.load_model(export_dir)
    text = _text(1)
    sampler = SamplerConfig()
    ref = list(ar_rollout(tiny, tiny.prepare_context(text), plan, latent_hw=HW, sampler=sampler, seed=5))
    got = list(ar_rollout(em, em.prepare_context(text), plan, latent_hw=HW, sampler=sampler, seed=5))
    assert len(got) == len(ref) >= 3
    for (pr, xr), (pg, xg) in zip(ref, got):
        assert pr == pg
        assert rel_err(xg, xr) <= 1e-4


def test_opset20_rollout_matches_opset23(export_dir):
    from engine_export.model import ExportedDiT

    text = _text(2)
    runs = []
    for op in (23, 20):
        em = ExportedDiT(export_dir, opset=op, verify=False)
        runs.append(torch.cat([x for _, x in ar_rollout(em, em.prepare_context(text), RolloutPlan(6, 3),
                                                        latent_hw=HW, sampler=SamplerConfig(), seed=0)], 2))
    assert rel_err(runs[1], runs[0]) <= 1e-4


def test_float16_graph_within_half_tolerance(tiny, tmp_path):
    bucket = Bucket(3, *HW, batch=1, cache_slots=SLOTS, text_len=32)
    info = export_step(tiny, bucket, tmp_path / "step_fp16.onnx", opset=23, precision="float16")
    assert {i["dtype"] for i in info["inputs"] if i["name"] in ("latents", "cache_k")} == {"float16"}
    feeds = example_inputs(info["inputs"], seed=7)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "step_fp16.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in feeds.items()})
    with torch.no_grad():
        ref = DiTStep(tiny, bucket)(**{k: v.float() if v.is_floating_point() else v for k, v in feeds.items()})
    for g, r in zip(got, ref):
        assert g.dtype == np.float16
        assert rel_err(torch.from_numpy(g).float(), r) <= 5e-3


# ----------------------------------------------------------------------------------
# backend: load_model(DIR) and generate
# ----------------------------------------------------------------------------------
def test_load_model_dir_runs_generate(export_dir, tiny):
    em = engine.load_model(export_dir)
    assert getattr(em, "is_exported", False) and em.config == tiny.config
    assert em.tokens_per_frame(*HW) == 4 and em.dtype == torch.float32
    kw = dict(num_frames=33, prompt="a road", seed=3, progress=False, height=32, width=32)
    a = engine.generate(em, **kw)
    b = engine.generate(tiny, **kw)
    assert a.frames.shape == b.frames.shape == (33, 32, 32, 3)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 2
    with pytest.raises(ValueError, match="no step graph"):  # checked before any work
        engine.generate(em, num_frames=33, seed=0, progress=False, height=64, width=64)


def test_plain_call_without_cache_matches_model(export_dir, tiny):
    em = engine.load_model(export_dir)
    x = torch.randn(1, 16, 3, *HW)
    t = torch.tensor([[900.0, 500.0, 100.0]])
    vis = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    text = _text(3)
    ref = tiny(x, t, text, frame_positions=[4, 5, 6], visibility=vis)
    got = em(x, t, text, frame_positions=[4, 5, 6], visibility=vis)
    assert rel_err(got, ref) <= 1e-4


# ----------------------------------------------------------------------------------
# manifest
# ----------------------------------------------------------------------------------
def test_manifest_round_trip_and_contents(export_dir):
    man = load_manifest(export_dir)
    data = json.loads((export_dir / "manifest.json").read_text())
    assert man.data == data
    validate(data)
    assert data["schema_version"] == 1 and data["precision"] == "float32"
    assert data["sampler"]["sigmas"] == pytest.approx([1.0, 0.9375, 25 / 30, 0.625, 0.0])
    assert data["rope"]["split"] == list(man.config.rope_split)
    step = man.find("step")[0]
    assert step["tokens_per_frame"] == 4 and step["bucket"]["cache_slots"] == SLOTS
    names = [t["name"] for t in step["inputs"]]
    assert names[:2] == ["latents", "timestep"] and "write_index" in names and "visibility" in names
    assert all(len(g["sha256"]) == 64 for g in data["graphs"])
    man.save()  # re-validated and re-written unchanged
    assert json.loads((export_dir / "manifest.json").read_text()) == data


def _copy(export_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(export_dir, d)
    return d


def _edit(d, fn):
    p = d / "manifest.json"
    data = json.loads(p.read_text())
    fn(data)
    p.write_text(json.dumps(data))


@pytest.mark.parametrize("case, match", [
    ("newer-schema", "schema_version 2 is newer"),
    ("not-a-manifest", "not a worldengine export manifest"),
    ("missing-field", "missing required field 'sampler'"),
    ("wrong-type", r"manifest.graphs\[0\].opset: expected integer"),
    ("wrong-shape", "is float32 .* in the graph but float32 .* in the manifest"),
    ("missing-file", "is missing"),
    ("hash-mismatch", "SHA-256"),
    ("bad-json", "not valid JSON"),
    ("no-manifest", "no manifest.json"),
])
def test_corrupt_or_mismatched_manifest_gives_a_clear_error(export_dir, tmp_path, case, match):
    d = _copy(export_dir, tmp_path)
    step_idx = next(i for i, g in enumerate(json.loads((d / "manifest.json").read_text())["graphs"]) if g["kind"] == "step")
    if case == "newer-schema":
        _edit(d, lambda m: m.update(schema_version=2))
    elif case == "not-a-manifest":
        _edit(d, lambda m: m.update(schema="something.else"))
    elif case == "missing-field":
        _edit(d, lambda m: m.pop("sampler"))
    elif case == "wrong-type":
        _edit(d, lambda m: m["graphs"][0].update(opset="23"))
    elif case == "wrong-shape":
        _edit(d, lambda m: m["graphs"][step_idx]["inputs"][0].update(shape=[1, 16, 3, 8, 8]))
    elif case == "missing-file":
        (d / json.loads((d / "manifest.json").read_text())["graphs"][step_idx]["file"]).unlink()
    elif case == "hash-mismatch":
        f = d / json.loads((d / "manifest.json").read_text())["graphs"][step_idx]["file"]
        raw = bytearray(f.read_bytes())
        raw[-1] ^= 0xFF
        f.write_bytes(bytes(raw))
    elif case == "bad-json":
        (d / "manifest.json").write_text("{not json")
    elif case == "no-manifest":
        (d / "manifest.json").unlink()
    with pytest.raises(ManifestError, match=match):
        load_manifest(d)
    if case != "no-manifest":  # the engine loader surfaces the same error
        with pytest.raises(ManifestError, match=match):
            engine.load_model(d)


def test_cli_writes_and_checks_a_folder(tmp_path, capsys):
    from engine_export.__main__ import main

    out = tmp_path / "cli"
    assert main(["onnx", "--model", "tiny-random", "--out", str(out), "--size", "32x32", "--frames", "3",
                 "--opset", "20", "--cache-frames", "6"]) == 0
    man = load_manifest(out)
    assert man.find("step")[0]["bucket"] == {"frames": 3, "latent_height": 4, "latent_width": 4, "batch": 1,
                                              "cache_slots": 6, "text_len": 32}
    assert main(["check", str(out)]) == 0
    assert "ok: tiny-random float32" in capsys.readouterr().out
    (out / man.graphs[0]["file"]).write_bytes(b"x")
    assert main(["check", str(out)]) == 1


# ----------------------------------------------------------------------------------
# TensorRT: skipped cleanly without it
# ----------------------------------------------------------------------------------
def test_tensorrt_path_reports_why_it_is_unavailable(export_dir):
    ok, why = trt.status()
    if ok:
        pytest.skip("TensorRT is usable here: the gpu lane covers it")
    assert "tensorrt" in why.lower()
    assert trt.engine_file_name("step_x", "10.9.0", "90") == "step_x.trt10.9.0.sm90.engine"
    from engine_export.model import ExportedDiT

    assert ExportedDiT(export_dir, verify=False).provider == "onnxruntime"
    with pytest.raises(RuntimeError, match="TensorRT provider unavailable"):
        ExportedDiT(export_dir, provider="tensorrt", verify=False)
    from engine_export.__main__ import main

    assert main(["trt", str(export_dir)]) == 1


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(tiny, tmp_path):  # pragma: no cover - needs CUDA + tensorrt
    pytest.importorskip("tensorrt")
    d = tmp_path / "fp16"
    export_model(tiny, d, frames=(3,), sizes=(HW,), cache_slots=SLOTS, opsets=(23,), precision="float16")
    man = trt.build_engines(d)
    names = [e["file"] for e in man.data["tensorrt"]["engines"]]
    assert all(f".sm{trt.gpu_sm()}." in n for n in names)
    from engine_export.model import ExportedDiT

    text = _text(4)
    runs = []
    for provider in ("tensorrt", "onnxruntime"):
        em = ExportedDiT(d, provider=provider)
        runs.append(torch.cat([x.cpu() for _, x in ar_rollout(em, em.prepare_context(text), RolloutPlan(6, 3),
                                                              latent_hw=HW, sampler=SamplerConfig(), seed=0)], 2))
    assert rel_err(runs[0], runs[1]) <= 2e-2
