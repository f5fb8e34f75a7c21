"""Never lose a frame, never continue silently (issue 18): stop signals finalise the video,
non-finite numbers are an error naming the job, bad inputs fail before any forward runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
from engine.generation import GenerationError
from engine.video import read_video_frames

REPO = Path(__file__).resolve().parents[1]


def test_sigterm_finalises_the_mp4_with_the_frames_reported(tmp_path):
    out = tmp_path / "killed.mp4"
    cmd = [sys.executable, "-m", "engine", "generate", "--model", "tiny-random", "--num-frames", "801", "--height", "64",
           "--width", "64", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seen = b""
    deadline = time.monotonic() + 600
    while not re.search(rb"\| *[1-9]\d*/801", seen):  # the bar has counted a first chunk
        chunk = proc.stderr.read1(4096)
        assert chunk or proc.poll() is None, f"the run ended before its first chunk: {seen.decode()[-2000:]}"
        seen += chunk
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=600)
    err = (seen + rest).decode()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    m = re.search(r"stopped: interrupted by SIGTERM after (\d+) of 801 frames; (\d+) frames saved to (.+\.mp4)", err)
    assert m, err[-2000:]
    n = int(m.group(1))
    assert 0 < n < 801 and int(m.group(2)) == n and Path(m.group(3)) == out
    frames = read_video_frames(out)
    assert frames.shape[0] == n and frames.shape[1:] == (64, 64, 3)


def test_stop_request_in_the_api_keeps_the_frames(tmp_path):
    """A stop signal during generate(output=...) ends at the next chunk with the frames so far."""
    out = tmp_path / "api.mp4"
    state = {"sent": False}

    def on_frames(frames, start):
        if not state["sent"]:
            state["sent"] = True
            os.kill(os.getpid(), signal.SIGTERM)  # handled by generate: stop at this chunk boundary

    with pytest.raises(engine.generation.GenerationInterrupted) as info:
        engine.generate("tiny-random", num_frames=97, height=32, width=32, output=out, on_frames=on_frames, progress=False)
    err = info.value
    assert err.signum == signal.SIGTERM and 0 < len(err.video) < 97
    assert read_video_frames(out).shape[0] == len(err.video)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are put back


def test_sigkill_keeps_every_frame_but_the_last_one_written(tmp_path):
    """The mp4 is fragmented: a process killed without warning (the OOM killer) leaves a
    playable file with what was written (all but the last frame handed to the writer)."""
    out = tmp_path / "killed.mp4"
    code = ("import os, signal, sys, engine\n"
            "seen = []\n"
            "def on_frames(f, i):\n"
            "    seen.append(len(f))\n"
            "    if sum(seen) >= 20:\n"
            "        print(sum(seen), flush=True); os.kill(os.getpid(), signal.SIGKILL)\n"
            f"engine.generate('tiny-random', num_frames=97, height=32, width=32, output={str(out)!r}, "
            "on_frames=on_frames, progress=False)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    written = int(proc.stdout.split()[-1])
    frames = read_video_frames(out)
    assert written >= 20 and frames.shape[0] == written - 1 and frames.shape[1:] == (32, 32, 3)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)")
def test_a_full_disk_is_a_generation_error_with_the_frames(tmp_path):
    out = tmp_path / "full.mp4"
    out.symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(GenerationError, match=r"No space left on device.*frames already generated are in err.video") \
            as info:
        engine.generate("tiny-random", num_frames=33, height=32, width=32, output=out, progress=False)
    assert len(info.value.video) > 0 and str(out) in str(info.value)


@pytest.mark.parametrize("where", ["/proc", "/sys"])
def test_an_output_that_cannot_be_created_fails_before_any_forward(where):
    if not Path(where).is_dir():
        pytest.skip(f"no {where} here")
    with pytest.raises(ValueError, match=f"output '{where}/x.mp4' cannot be written"):
        engine.generate("tiny-random", num_frames=9, height=32, width=32, output=f"{where}/x.mp4", progress=False)


def _nan_model():
    m = engine.load_model("tiny-random")
    with torch.no_grad():
        m.blocks[1].ffn[0].weight[0, 0] = float("nan")
    return m


def test_nan_weights_are_an_error_naming_the_job():
    with pytest.raises(GenerationError, match=r"non-finite.*ar/chunk0.*positions \[0, 1, 2\]"):
        engine.generate(_nan_model(), num_frames=33, height=32, width=32, progress=False)


@pytest.mark.parametrize("what", ["prompt_embeds", "negative_prompt_embeds", "first_frame", "image_embeds"])
def test_non_finite_inputs_are_refused_before_any_forward(what):
    m = engine.load_model("tiny-i2v" if what == "image_embeds" else "tiny-random")
    calls = []
    hook = m.register_forward_pre_hook(lambda *a: calls.append(1))
    bad = {"prompt_embeds": torch.full((1, 4, 32), float("nan")),
           "negative_prompt_embeds": torch.full((1, 4, 32), float("inf")),
           "first_frame": torch.full((3, 32, 32), float("nan")),
           "image_embeds": torch.full((1, 257, m.config.image_dim or 1), float("nan"))}[what]
    kw = {what: bad}
    if what == "negative_prompt_embeds":
        kw["guidance_scale"] = 3.0
    if what == "image_embeds":
        kw["first_frame"] = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=f"{what}.*(NaN|inf)"):
        engine.generate(m, num_frames=9, height=32, width=32, progress=False, **kw)
    hook.remove()
    assert not calls


BAD = [
    (dict(height=0), ValueError, "height"),
    (dict(width=-16), ValueError, "width"),
    (dict(num_frames=9.0), TypeError, "num_frames must be an integer.*float"),
    (dict(num_frames="9"), TypeError, "num_frames must be an integer.*str"),
    (dict(seed=2 ** 70), ValueError, "seed"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(guidance_scale=-1.0), ValueError, "guidance_scale"),
    (dict(window_frames=-1), ValueError, "window"),
    (dict(window_frames=0), ValueError, "window_frames=0 without sink_frames"),
    (dict(sink_frames=50), ValueError, "sink_frames=50"),
    (dict(prompt="a road", prompt_embeds=torch.zeros(1, 4, 32)), ValueError, "prompt.*prompt_embeds"),
    (dict(devices=["cuda:0"]), ValueError, "cpu"),
    (dict(num_frames=4 * 10 ** 7 + 1), ValueError, "plan"),
    (dict(height=16000, width=16000), ValueError, r"needs roughly .* GiB"),
    (dict(output="/nonexistent-dir/x.mp4"), ValueError, "/nonexistent-dir"),
    (dict(output="video.avi"), ValueError, r"\.mp4"),
]


@pytest.mark.parametrize("bad,exc,match", BAD, ids=[str(sorted(b))[:40] for b, _, _ in BAD])
def test_bad_input_fails_before_any_forward(bad, exc, match):
    if "devices" in bad and torch.cuda.is_available():
        pytest.skip("a CUDA device exists here")
    m = engine.load_model("tiny-random")
    calls = []
    hook = m.register_forward_pre_hook(lambda *a: calls.append(1))
    kw = dict(num_frames=9, height=32, width=32, progress=False)
    kw.update(bad)
    try:
        with pytest.raises(exc, match=match):
            engine.generate(m, **kw)
    finally:
        hook.remove()
    assert not calls


def test_unknown_attention_backend_is_refused_at_load():
    with pytest.raises(ValueError, match="magic"):
        engine.EngineConfig(attention_backend="magic")
    with pytest.raises(ValueError, match="magic"):
        engine.load_model("tiny-random", attention_backend="magic")


def test_integral_num_frames_of_any_type_are_accepted():
    v = engine.generate("tiny-random", num_frames=np.int64(9), height=32, width=32, progress=False)
    assert len(v) == 9


def test_progress_rate_and_summary_agree(capsys):
    v = engine.generate("tiny-random", num_frames=33, height=32, width=32, progress=True)
    err = capsys.readouterr().err
    assert "plan: ar" in err and "checking inputs" in err
    rates = [float(r) for r in re.findall(r"([\d.]+) frames/s since the call began", err)]
    assert rates and abs(rates[-1] - v.stats.fps) <= 0.05 * v.stats.fps + 0.01
    assert v.stats.first_frame_seconds <= v.stats.seconds


def test_fit_rounds_to_the_strategy_length_rule():
    m = engine.load_model("tiny-random")
    from engine.generation import fit_frames

    assert fit_frames(m, 100, "down", strategy="mmpl", height=32, width=32) == 97
    assert fit_frames(m, 100, "up", strategy="mmpl", height=32, width=32) == 129
    assert fit_frames(m, 100, "up", strategy="longdwm", height=32, width=32) == 109
    assert fit_frames(m, 153, "down", strategy="mmpl", release="t2v", height=32, width=32) == 152
    with pytest.raises(ValueError, match="'down' or 'up'"):
        fit_frames(m, 100, "nearest", strategy="ar")
    v = engine.generate(m, num_frames=30, fit="up", height=32, width=32, progress=False)
    assert len(v) == 33


def test_wrong_words_are_fixed(monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device.*'cpu'"):
            engine.load_model("tiny-random", device="cuda:0")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="fused_ops=True.*CUDA"):
        engine.load_model("tiny-random", device="cpu", fused_ops=True)
    with pytest.raises(ValueError, match="negative_prompt_embeds must be \\[B, L, 32\\]"):
        engine.generate("tiny-random", num_frames=9, height=32, width=32, guidance_scale=3.0, progress=False,
                        negative_prompt_embeds=torch.zeros(1, 4, 31))


def test_cli_errors_are_one_line(tmp_path, capsys):
    from engine.cli import main

    assert main(["generate", "--num-frames", "9", "--timesteps", "1000,abc"]) == 2
    assert "error: --timesteps must be comma-separated numbers" in capsys.readouterr().err
    assert main(["generate", "--num-frames", "9", "--steps", "0", "--sampler", "unipc"]) == 2
    assert "num_steps must be >= 1" in capsys.readouterr().err
    assert main(["generate", "--num-frames", "9", "--stats", str(tmp_path / "no" / "s.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1, 4, 32), "b": torch.zeros(1)}, str(tmp_path / "two.safetensors"))
    assert main(["generate", "--num-frames", "9", "--height", "32", "--width", "32", "--out", str(tmp_path / "o.mp4"),
                 "--prompt-embeds", str(tmp_path / "two.safetensors"), "--no-progress"]) == 2
    assert "error: --prompt-embeds" in capsys.readouterr().err


def test_help_does_not_import_torch():
    code = ("import sys\nfrom engine.cli import _parser\n"
            "try:\n    _parser().parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "generate" in out.stdout


def test_export_prints_progress(tmp_path):
    cmd = [sys.executable, "-m", "engine_export", "onnx", "--model", "tiny-random", "--out", str(tmp_path / "x"), "--frames", "1",
           "--size", "32x32", "--opset", "23"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    if out.returncode != 0 and "onnx" in out.stderr and "No module" in out.stderr:
        pytest.skip("onnx is not installed")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "export: loading tiny" in out.stderr and re.search(r"graph 2/2: step_\S+ done in [\d.]+ s", out.stderr)
