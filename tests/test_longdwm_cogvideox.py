"""LongDWM end to end on CogVideoX (issue 14): a CogVideoX coarse model makes 13 keyframes,
each an image latent of CogVideoX's own VAE; CogVideoX fine models fill 11 image-latent
frames between every pair, seeing both ends in the sequence (T2V fine model) or on the
channels (a CogVideoX-I2V-shaped fine model, in_channels 32). 145 frames, every frame
once; the same video on 1, 2 and 3 workers and with batching on or off."""

import numpy as np
import pytest
import torch

import engine
from engine.config import SamplerConfig
from engine.generation import prepare, run
from engine.models.cogvideox import COGVIDEOX_PRESETS, build_cogvideox
from engine.sampling import CogVideoXSchedule
from cogvideox_reference import cogvideox_sample
from helpers import randomize_, rel_err

H = W = 32
STEPS = 5  # DDIM 999, 799, ..., 199 (T // N = 200 apart: the runtime's DDIM rule)
KW = dict(num_frames=145, strategy="longdwm", keyframes=13, fps_ratio=3, keyframe_clips=True, fine_latents="image",
          height=H, width=W, prompt="a road at dusk", seed=3)


def _sampler(guidance=1.0):
    return SamplerConfig(kind="euler", schedule="cogvideox", num_steps=STEPS, guidance_scale=guidance,
                         ddpm=CogVideoXSchedule())


def _model(i2v: bool, seed: int):
    cfg = COGVIDEOX_PRESETS["tiny-cogvideox"]
    m = build_cogvideox(cfg.replace(in_channels=32) if i2v else cfg, seed=seed)
    randomize_(m, seed)  # zero-initialised layers get values too
    m.source = None
    return m.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def models():
    return {"coarse": _model(False, 1), "fine": _model(False, 2), "fine_i2v": _model(True, 4)}


def _run(models, cond, **kw):
    fine = models["fine_i2v" if cond == "channels" else "fine"]
    pr = prepare(models["coarse"], fine_model=fine, fine_condition=cond, sampler=kw.pop("sampler", _sampler()),
                 **{**KW, **kw})
    keep = {}
    frames = np.concatenate(list(run(pr, keep_latents=keep)), 0)
    return pr, frames, {p: z for (_, p), z in keep.items()}


@pytest.mark.parametrize("cond", ["sequence", "channels"])
def test_145_frames_keyframes_as_images_and_fine_clips_see_both_ends(models, cond):
    pr, frames, lat = _run(models, cond)
    plan = pr.plan
    assert frames.shape == (145, H, W, 3)  # 12 x 11 + 13, every frame once
    assert len([c for c in plan.clips if c.id.startswith("kf")]) == 13
    assert all(c.kind == "image" for c in plan.clips)
    from engine.models.cogvideox_vae import decode_latents, is_cogvideox_vae
    from engine.video import to_uint8_frames

    assert is_cogvideox_vae(pr.vae)
    kfp = [c.start for c in plan.clips if c.id.startswith("kf")]
    for i in (0, 5, 12):  # keyframe i is output frame 12 i, its latent decoded alone
        want = to_uint8_frames(decode_latents(pr.vae, lat[kfp[i]]))[0][0]
        assert np.abs(frames[12 * i].astype(int) - want.astype(int)).max() <= 1
    # the fine job of pair 4, recomputed by hand: the CogVideoX sampler on the fine model with
    # both keyframe latents (in the sequence, or on the channels) and the run's own noise
    job = plan.job("longdwm/fine4")
    fine = models["fine_i2v" if cond == "channels" else "fine"]
    ctx = pr.make_context("fine", pr.models["fine"])
    from engine.denoise import initial_latents

    C = 16
    src = {p: lat[p] for p, _ in plan.reads_of(job)}
    x = initial_latents(job, src, seed=pr.seed, shape_chw=(C, H // 8, W // 8), device=torch.device("cpu"))
    a, b = kfp[4], kfp[5]
    gen = list(job.generated_positions)
    if cond == "channels":
        image = torch.zeros(1, C, len(gen), H // 8, W // 8)
        image[:, :, :1], image[:, :, -1:] = lat[a], lat[b]
        got = torch.cat([lat[p] for p in gen], 2)
        want = _sample(fine, x, ctx, image_latents=image, frame_positions=list(range(len(gen))))
    else:
        full = torch.cat([lat[a], x, lat[b]], 2)
        got = torch.cat([lat[p] for p in gen], 2)
        want = _sample_with_context(fine, full, ctx)
    err = rel_err(got, want)
    print(f"{cond}: fine job vs the hand-run sampler rel err {err:.2e}")
    assert err <= 1e-5


def _sample(model, x, ctx, **kw):
    """CogVideoX DDIM over every frame of ``x`` (no CFG), the model's text context given."""
    from cogvideox_reference import CogVideoXDDIMSampler

    smp = CogVideoXDDIMSampler(STEPS)
    for i in range(STEPS):
        t = torch.full((1,), float(smp.timestep(i)))
        out = model(x, t, ctx, condition=kw.get("image_latents"), frame_positions=kw.get("frame_positions"))
        x = smp.step(i, x, out.float())
    return x


def _sample_with_context(model, full, ctx):
    """DDIM on frames 1 .. n-2 of ``full`` with frames 0 and n-1 clean (timestep 0), every
    frame seeing the clean ends and the generated frames seeing each other."""
    from engine.plans.core import conditioned_visibility
    from cogvideox_reference import CogVideoXDDIMSampler

    n = full.shape[2]
    gen = [False] + [True] * (n - 2) + [False]
    vis = torch.tensor(conditioned_visibility(gen))
    smp = CogVideoXDDIMSampler(STEPS)
    x = full[:, :, 1:-1]
    for i in range(STEPS):
        t = torch.zeros(1, n)
        t[:, 1:-1] = float(smp.timestep(i))
        inp = torch.cat([full[:, :, :1], x, full[:, :, -1:]], 2)
        out = model(inp, t, ctx, frame_positions=list(range(n)), visibility=vis)
        x = smp.step(i, x, out[:, :, 1:-1].float())
    return x


@pytest.mark.parametrize("cond", ["sequence", "channels"])
def test_same_video_on_1_2_3_workers_and_with_batching(models, cond):
    """Workers: bit-identical. Batching (CFG on): CogVideoX's batched forward of B jobs is
    not bit-identical to B forwards of one on CPU (the batched GEMMs round differently:
    measured 4.5e-7 relative on the latents, at most 1 uint8 level on 0.004 % of pixels),
    so it is held to a tolerance; Wan's batched forward is bit-identical (test_batching.py)."""
    _, ref, ref_lat = _run(models, cond, sampler=_sampler(4.0))
    for devices in (["cpu", "cpu"], ["cpu", "cpu", "cpu"]):
        _, got, _ = _run(models, cond, sampler=_sampler(4.0), devices=devices)
        assert np.array_equal(got, ref), devices
    for devices, batch in ((["cpu"], 12), (["cpu", "cpu", "cpu"], 4)):
        pr, got, lat = _run(models, cond, sampler=_sampler(4.0), devices=devices, batch_jobs=batch)
        assert max(rel_err(lat[p], ref_lat[p]) for p in ref_lat) <= 1e-5, (devices, batch)
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 2, (devices, batch)


def test_fine_condition_must_fit_the_fine_model(models):
    with pytest.raises(ValueError, match="fine_condition='sequence'"):
        prepare(models["coarse"], fine_model=models["fine"], fine_condition="channels", sampler=_sampler(), **KW)
    with pytest.raises(ValueError, match="fine_condition='channels'"):
        prepare(models["coarse"], fine_model=models["fine_i2v"], sampler=_sampler(), **KW)
    with pytest.raises(ValueError, match="even number"):  # 4-latent video clips: CogVideoX decodes them to 16 frames
        prepare(models["coarse"], sampler=_sampler(), **{**KW, "fine_latents": "video"})
    with pytest.raises(ValueError, match="layouts of keyframe_clips"):
        prepare(models["coarse"], sampler=_sampler(), **{**KW, "keyframe_clips": False})


def test_longdwm_recipe_is_the_paper_layout(models):
    """recipe='longdwm': 13 keyframes, 11 image-latent fine frames per pair on the channels,
    CogVideoX DDIM 50 steps with CFG 6 on the model's own schedule, 12 fps, from a first
    frame; explicit arguments override it."""
    from engine.recipes import apply_recipe

    image = torch.rand(3, H, W) * 2 - 1
    kw = apply_recipe("longdwm", dict(first_frame=image, height=H, width=W, num_frames=145))
    pr = prepare(models["coarse"], fine_model=models["fine_i2v"], **kw)
    o = pr.plan.options
    assert (o["keyframes"], o["fine_latents"], o["fine_condition"]) == (13, "image", "channels")
    assert pr.plan.video_frames == 145 and pr.fps == 12
    s = pr.sampler
    assert (s.schedule, s.num_steps, s.guidance_scale) == ("cogvideox", 50, 6.0) and s.ddpm is not None
    assert pr.plan.critical_path()[0] == 100  # one coarse rollout + one fine rollout of 50 steps
    with pytest.raises(ValueError, match="starts from an image"):
        apply_recipe("longdwm", dict(height=H, width=W))
    video = engine.generate(models["coarse"], recipe="longdwm", fine_model=models["fine_i2v"], first_frame=image,
                            height=H, width=W, num_frames=145, sampler=_sampler(6.0), progress=False)
    assert video.frames.shape == (145, H, W, 3)
    from engine.models.cogvideox_vae import decode_latents, encode_video
    from engine.video import to_uint8_frames

    # frame 0 is the given first frame, encoded alone by CogVideoX's VAE and decoded
    want = to_uint8_frames(decode_latents(pr.vae, encode_video(pr.vae, image[None, :, None])))[0][0]
    assert np.abs(video.frames[0].astype(int) - want.astype(int)).max() <= 1


def test_cli_runs_the_longdwm_recipe_on_cogvideox_presets(tmp_path):
    """python -m engine generate --model tiny-cogvideox --fine-model tiny-cogvideox-i2v --recipe longdwm."""
    import imageio.v3 as iio
    from PIL import Image

    from engine.cli import main

    ff = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(ff)
    out = tmp_path / "v.mp4"
    rc = main(["generate", "--model", "tiny-cogvideox", "--fine-model", "tiny-cogvideox-i2v", "--recipe", "longdwm",
               "--first-frame", str(ff), "--height", str(H), "--width", str(W), "--num-frames", "145", "--steps", "4",
               "--fine-condition", "channels", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert iio.imread(out, plugin="pyav").shape[0] == 145
