"""Defects a new user hit on a fresh machine (issue 27), each pinned by a test that failed
before its fix: errors keep their message, typed options are honoured, recipes are not
overridden by unset flags, nothing is guessed without a word, a call never changes the
caller's model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
from engine.generation import GenerationError, plan_for
from engine.loading import build_model
from engine.models.weights import CheckpointError, check_state_dict
from engine.plans import ArOptions

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_frames=9, height=32, width=32, progress=False)


@pytest.fixture(scope="module")
def tiny():
    return engine.load_model("tiny-random")


def test_an_error_while_emitting_keeps_its_message(tiny, monkeypatch):
    import engine.generation as generation

    def broken(stats):
        def to_frames(video):
            raise ValueError("a bad frame")
        return to_frames

    monkeypatch.setattr(generation, "_frames_with_telemetry", broken)
    with pytest.raises(GenerationError, match="emitting the video failed: ValueError: a bad frame") as info:
        engine.generate(tiny, **SMALL)
    assert isinstance(info.value.__cause__, engine.runtime.JobError)


def _chunks(plan):
    return [tuple(j.generated_positions) for j in plan.jobs if getattr(j, "generated_positions", None)]


def test_typed_ar_options_are_not_overridden_by_the_flat_default(tiny):
    kw = dict(num_frames=33, height=32, width=32)
    typed = _chunks(plan_for(tiny, options=ArOptions(chunk_frames=2), **kw))
    assert typed[:2] == [(0, 1), (2, 3)] and {len(c) for c in typed} <= {1, 2}, typed
    assert _chunks(plan_for(tiny, chunk_frames=2, **kw)) == typed
    assert _chunks(plan_for(tiny, **kw))[:2] == [(0, 1, 2), (3, 4, 5)]  # the default stays 3
    with pytest.raises(ValueError, match="chunk_frames=4 as a keyword but options.chunk_frames=2"):
        plan_for(tiny, chunk_frames=4, options=ArOptions(chunk_frames=2), **kw)
    with pytest.raises(ValueError, match="options of strategy 'ar', not of 'mmpl'"):
        plan_for(tiny, strategy="mmpl", chunk_frames=4, **kw)
    v = engine.generate(tiny, options=ArOptions(chunk_frames=2), **dict(SMALL, num_frames=17))
    assert len(v) == 17 and [j["id"] for j in v.stats.jobs if j["kind"] == "chunk"] == \
        ["ar/chunk0", "ar/chunk1", "ar/chunk2"]  # 5 latents: [0,1] [2,3] [4]


def test_an_unset_checkpoint_key_flag_keeps_the_recipes():
    from engine.recipes import apply_recipe

    assert apply_recipe("mmpl-t2v", {"num_frames": 76, "checkpoint_key": None})["checkpoint_key"] == "generator"
    assert apply_recipe("mmpl-t2v", {"num_frames": 76, "checkpoint_key": "generator_ema"})["checkpoint_key"] == \
        "generator_ema"


def test_a_head_count_taken_from_a_preset_is_said(tmp_path):
    exact = engine.PRESETS["tiny-random"]
    torch.save(build_model(exact).state_dict(), tmp_path / "tiny.pt")
    with pytest.warns(UserWarning, match=r"assumed num_heads=2 .* preset 'tiny-random'.*config\.json"):
        got = engine.load_model(tmp_path / "tiny.pt")
    assert got.config.num_heads == exact.num_heads
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a config says it: no warning
        engine.load_model(tmp_path / "tiny.pt", config=exact)


def test_integer_weights_are_one_error_naming_them(tmp_path):
    sd = build_model(engine.PRESETS["tiny-random"]).state_dict()
    torch.save({k: (v * 100).long() for k, v in sd.items()}, tmp_path / "int.pt")
    with pytest.raises(CheckpointError, match="not floating point") as info:
        engine.load_model(tmp_path / "int.pt", config=engine.PRESETS["tiny-random"])
    msg = str(info.value)
    assert "torch.int64" in msg and msg.count("\n") < 5 and "require gradients" not in msg


def test_a_mismatch_names_the_model_even_without_a_config_name():
    with pytest.raises(CheckpointError, match=r"does not fit the model \(Linear\)"):
        check_state_dict(torch.nn.Linear(2, 2), {"weight": torch.zeros(2, 2)})


def test_an_unavailable_backend_is_refused_up_front_and_the_model_is_unchanged(tiny):
    if torch.cuda.is_available():
        pytest.skip("the triton backend is available on CUDA")
    calls = []
    hook = tiny.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="attention backend 'triton' is unavailable"):
            engine.generate(tiny, engine_config=engine.EngineConfig(attention_backend="triton"), **SMALL)
    finally:
        hook.remove()
    assert not calls and tiny.attention_backend == "auto"
    v = engine.generate(tiny, engine_config=engine.EngineConfig(attention_backend="reference"), **SMALL)
    assert len(v) == 9 and tiny.attention_backend == "auto"  # a successful call leaves it too
    assert len(engine.generate(tiny, **SMALL)) == 9


def test_devices_as_one_string_is_refused_with_the_fix(tiny):
    with pytest.raises(TypeError, match=r"devices must be a list.*devices=\['cpu'\]"):
        engine.generate(tiny, devices="cpu", **SMALL)


def test_fused_ops_when_the_interpreter_was_set_too_late():
    if torch.cuda.is_available():
        pytest.skip("CUDA runs the kernels compiled")
    code = ("import os, torch, torch._dynamo\n"  # triton is imported here, compiled mode
            "os.environ['TRITON_INTERPRET'] = '1'\n"
            "import engine\n"
            "try:\n    engine.load_model('tiny-random', fused_ops=True)\nexcept ValueError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "set TRITON_INTERPRET=1 before Python starts" in out.stdout, out.stdout + out.stderr


# ----------------------------------------------------------------------------------
# the command line: every bad input is one line naming the option, before any work
# ----------------------------------------------------------------------------------
def _cli(argv, capsys):
    from engine.cli import main

    rc = main(argv)
    return rc, capsys.readouterr().err


def _gen_args(tmp_path, *extra):
    return ["generate", "--model", "tiny-random", "--num-frames", "9", "--height", "32", "--width", "32", "--out",
            str(tmp_path / "o.mp4"), "--no-progress", *extra]


def test_cli_bad_inputs_name_the_option(tmp_path, capsys):
    (tmp_path / "not.png").write_text("not an image")
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage")
    cases = [
        (["--cpu-threads", "0"], "cpu_threads must be >= 1"),
        (["--first-frame", str(tmp_path / "not.png")], "is not an image PIL can read"),
        (["--prompt-embeds", str(tmp_path / "garbage.safetensors")], "--prompt-embeds .* is not a readable embeddings"),
        (["--prompt-embeds", str(tmp_path / "none.pt")], "--prompt-embeds .*: no such file"),
        (["--strategy", "longdwm", "--trajectory", "0,0;abc"], r"--trajectory '0,0;abc': could not convert"),
        (["--stats", "/proc/x.json"], "'/proc/x.json' cannot be written"),
    ]
    for extra, match in cases:
        rc, err = _cli(_gen_args(tmp_path, *extra), capsys)
        assert rc == 2 and re.search(match, err) and "Traceback" not in err, (extra, err)
        assert err.count("\n") == 1, err


def test_cli_mmpl_i2v_says_it_needs_a_t2v_backbone(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 90).save(tmp_path / "f.png")
    rc, err = _cli(["generate", "--recipe", "mmpl-i2v", "--model", "tiny-i2v", "--first-frame", str(tmp_path / "f.png"),
                    "--num-frames", "76", "--height", "32", "--width", "32", "--out", str(tmp_path / "o.mp4"),
                    "--no-progress"], capsys)
    assert rc == 2 and "text-to-video backbone" in err and "image-to-video model" in err, err


def test_cli_negative_prompt_embeds_are_used(tmp_path, capsys):
    from safetensors.torch import save_file

    from engine.video import read_video_frames

    g = torch.Generator().manual_seed(3)
    for name in ("a", "b"):
        save_file({"e": torch.randn(1, 6, 32, generator=g)}, str(tmp_path / f"{name}.safetensors"))
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.mp4"
        rc, err = _cli(["generate", "--model", "tiny-random", "--num-frames", "9", "--height", "32", "--width", "32",
                        "--guidance-scale", "3", "--negative-prompt-embeds", str(tmp_path / f"{name}.safetensors"),
                        "--out", str(out), "--no-progress"], capsys)
        assert rc == 0, err
        outs.append(read_video_frames(out))
    assert np.abs(outs[0].astype(int) - outs[1].astype(int)).max() > 0  # the negative row changes the video
    rc, err = _cli(_gen_args(tmp_path, "--negative-prompt", "x", "--negative-prompt-embeds",
                             str(tmp_path / "a.safetensors")), capsys)
    assert rc == 2 and "not both" in err


def test_a_missing_negative_embedding_says_what_cfg_needs():
    from engine.models.text import resolve_prompt_embeds

    with pytest.raises(ValueError, match="needs the negative prompt too.*--negative-prompt-embeds"):
        resolve_prompt_embeds("", None, None, 1, text_dim=32, max_length=8, name="negative_prompt_embeds")


def test_a_2d_depth_map_is_named_as_one_frame():
    from engine.longvie import _videos

    with pytest.raises(ValueError, match=r"dense control has shape \(72, 48\) \(one frame\?"):
        _videos("dense", np.ones((72, 48), np.float32), None, 72, 48)


def test_export_and_world_refuse_bad_outputs_and_frames(tmp_path, capsys):
    from engine.cli import main as engine_main
    from engine_export.__main__ import main as export_main

    assert export_main(["onnx", "--model", "tiny-random", "--out", str(tmp_path / "x"), "--frames", "0"]) == 2
    assert "frames must be integers >= 1, got [0]" in capsys.readouterr().err
    if Path("/proc").is_dir():
        assert export_main(["onnx", "--model", "tiny-random", "--out", "/proc/x"]) == 2
        assert "'/proc/x' cannot be written" in capsys.readouterr().err
        assert engine_main(["world", "--out", "/proc/w.mp4", "--frames", "9"]) == 2
        assert "'/proc/w.mp4' cannot be written" in capsys.readouterr().err


def test_a_first_frame_video_does_not_depend_on_the_callers_threads():
    """The first frame's VAE encode runs on the runtime's thread count (it ran on the
    caller's: 1 uint8 level apart on ~2e-5 of the pixels between 1 and 2 threads)."""
    img = np.random.default_rng(2).integers(0, 255, (64, 112, 3), dtype=np.uint8)
    before = torch.get_num_threads()
    videos = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            videos.append(engine.generate("tiny", num_frames=9, first_frame=img, prompt="a drive on a sunny day",
                                          progress=False).frames)
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(videos[0], videos[1])


def test_the_main_command_prints_no_stray_notices(tmp_path):
    """diffusers' `accelerate` notice (and its two stray lines) came with every run."""
    out = subprocess.run([sys.executable, "-m", "engine", "generate", "--model", "tiny", "--num-frames", "9",
                          "--prompt", "a drive on a sunny day", "--out", str(tmp_path / "v.mp4"), "--no-progress"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "accelerate" not in out.stderr and "```" not in out.stderr, out.stderr
    assert out.stdout.startswith("wrote ") and out.stderr.strip() == "", out.stderr  # --no-progress: nothing else
