"""A user holding a diffusers Wan pipeline folder generates with one call: the DiT, the
VAE and the text encoder all load from the folder."""

import json
import subprocess
import sys

import torch

import engine
from engine.models.text import make_tiny_text_encoder
from engine.models.vae import make_tiny_vae
from engine.video import read_video_frames
from helpers import diffusers_wan


def _pipeline(root):
    diffusers_wan(seed=3).save_pretrained(root / "transformer")
    make_tiny_vae(seed=4).save_pretrained(root / "vae")
    make_tiny_text_encoder(seed=5, dim=32).save_pretrained(root)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    return root


def test_generate_from_pipeline_root(tmp_path):
    root = _pipeline(tmp_path / "Wan-tiny-Diffusers")
    video = engine.generate(str(root), prompt="a truck turns left", num_frames=9, height=32, width=32,
                            progress=False, seed=0)
    assert video.frames.shape == (9, 32, 32, 3)
    # the prompt matters: the text encoder from the folder is in the loop
    other = engine.generate(str(root), prompt="snow on a bridge", num_frames=9, height=32, width=32,
                            progress=False, seed=0)
    assert (video.frames != other.frames).any()

    out = tmp_path / "cli.mp4"
    res = subprocess.run([sys.executable, "-m", "engine", "generate", "--model", str(root), "--prompt", "a truck",
                          "--num-frames", "5", "--height", "32", "--width", "32", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert read_video_frames(out).shape == (5, 32, 32, 3)
