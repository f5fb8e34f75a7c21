"""CogVideoX's own components and sampling against diffusers (issue 14, parts 1-2):
AutoencoderKLCogVideoX scaling / frame counts / streaming decode, the T5 prompt embeddings
of CogVideoXPipeline._get_t5_prompt_embeds, CogVideoXDDIMScheduler / CogVideoXDPMScheduler,
CogVideoXPipeline and CogVideoXImageToVideoPipeline end to end (output_type="latent") on
tiny random components saved as a pipeline folder, and resolve_components refusing the
other family's VAE / text encoder. Everything float32 on CPU."""

from types import SimpleNamespace

import pytest
import torch

from engine.inputs import resolve_components
from engine.models.cogvideox import cogvideox_scheduler_for, load_cogvideox
from engine.models.cogvideox_text import (COGVIDEOX_TEXT_LEN, CogVideoXTextEncoder, make_tiny_cogvideox_text_encoder,
                                          make_tiny_t5_tokenizer)
from engine.models.cogvideox_vae import (CogVideoXStreamingDecoder, decode_batches, decode_latents, encode_video,
                                         i2v_image_latents, is_cogvideox_vae, load_cogvideox_vae,
                                         make_tiny_cogvideox_vae, num_decoded_frames, scaling_factor)
from engine.sampling import CogVideoXSchedule, cogvideox_scheduler_kind
from cogvideox_reference import cogvideox_sample, make_cogvideox_sampler
from helpers import randomize_, rel_err

TEXT_DIM = 32
# THUDM/CogVideoX-2b scheduler/scheduler_config.json (CogVideoX-5b: snr_shift_scale 1.0)
SCHEDULER_2B = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                    clip_sample_range=1.0, num_train_timesteps=1000, prediction_type="v_prediction",
                    rescale_betas_zero_snr=True, sample_max_value=1.0, set_alpha_to_one=True, snr_shift_scale=3.0,
                    steps_offset=0, timestep_spacing="trailing", trained_betas=None)


# ----------------------------------------------------------------------------------- builders
def tiny_transformer(*, i2v=False, seed=1):
    """A random diffusers CogVideoXTransformer3DModel: 2B-style (sin-cos positions) for T2V,
    5B-I2V-style (RoPE + learned positions, in_channels 32) for I2V; 226 text tokens;
    trained size = the test's latent size (4x4 latents, 9 frames)."""
    from diffusers import CogVideoXTransformer3DModel

    m = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=32, num_layers=2, time_embed_dim=32, text_embed_dim=TEXT_DIM,
        in_channels=32 if i2v else 16, out_channels=16, sample_height=4, sample_width=4, sample_frames=9,
        max_text_seq_length=COGVIDEOX_TEXT_LEN, use_rotary_positional_embeddings=i2v,
        use_learned_positional_embeddings=i2v)
    randomize_(m, seed)
    if i2v:  # the learned table is a buffer: randomise it too
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            m.patch_embed.pos_embedding.copy_(0.3 * torch.randn(m.patch_embed.pos_embedding.shape, generator=g))
    return m.eval()


def tiny_pipeline(tmp_path, *, i2v=False, scheduler="ddim"):
    """(diffusers pipeline, its saved folder) of tiny random components."""
    from diffusers import (CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXImageToVideoPipeline,
                           CogVideoXPipeline)

    te = make_tiny_cogvideox_text_encoder(seed=3, dim=TEXT_DIM)
    sched = (CogVideoXDDIMScheduler if scheduler == "ddim" else CogVideoXDPMScheduler)(**SCHEDULER_2B)
    cls = CogVideoXImageToVideoPipeline if i2v else CogVideoXPipeline
    pipe = cls(tokenizer=te.tokenizer, text_encoder=te.model, vae=make_tiny_cogvideox_vae(seed=2),
               transformer=tiny_transformer(i2v=i2v), scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    root = tmp_path / ("i2v" if i2v else "t2v")
    pipe.save_pretrained(root)
    return pipe, root


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------- VAE
def test_vae_scaling_and_frame_counts():
    vae = make_tiny_cogvideox_vae(seed=0)
    sf = scaling_factor(vae)
    assert sf == pytest.approx(1.15258426) and is_cogvideox_vae(vae)
    x = torch.rand(1, 3, 17, 32, 32, generator=_gen(0)) * 2 - 1
    z = encode_video(vae, x)
    assert z.shape == (1, 16, 5, 4, 4)  # 1 + 4k frames -> 1 + k latents
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        assert torch.equal(z, post.mode() * sf)
        assert torch.equal(encode_video(vae, x, sample=True, generator=_gen(7)), post.sample(_gen(7)) * sf)
        assert torch.equal(decode_latents(vae, z, clamp=False), vae.decode(z / sf).sample)
    for f in (1, 9, 13, 49):
        assert encode_video(vae, torch.zeros(1, 3, f, 8, 8)).shape[2] == (f - 1) // 4 + 1
    # decode frame counts: odd F -> 4F - 3, even F -> 4F (diffusers' [3, 2, ...] / [2, 2, ...] batches)
    assert decode_batches(13) == [3] + [2] * 5 and decode_batches(4) == [2, 2] and decode_batches(1) == [1]
    with torch.no_grad():
        for f in (1, 2, 3, 4, 5):
            assert vae.decode(torch.randn(1, 16, f, 2, 2)).sample.shape[2] == num_decoded_frames(f)
    assert num_decoded_frames(13) == 49 and num_decoded_frames(4) == 16
    with pytest.raises(ValueError, match="4k \\+ 1"):
        encode_video(vae, torch.zeros(1, 3, 4, 8, 8))
    with pytest.raises(ValueError, match="16, F, h, w"):
        decode_latents(vae, torch.zeros(1, 4, 1, 2, 2))


@pytest.mark.parametrize("F", [1, 2, 3, 4, 5, 7, 8])
def test_streaming_decode_equals_full_decode(F):
    vae = make_tiny_cogvideox_vae(seed=1)
    z = torch.randn(1, 16, F, 4, 4, generator=_gen(F))
    with torch.no_grad():
        want = vae.decode(z / scaling_factor(vae)).sample.clamp(-1, 1)
    dec = CogVideoXStreamingDecoder(vae)
    splits = [list(range(1, F + 1)), sorted({1, F // 2 + 1, F})]  # one latent at a time; an uneven split
    for cuts in splits:
        dec.reset(F)
        parts, a = [], 0
        for b in cuts:
            if b > a:
                parts.append(dec.decode_chunk(z[:, :, a:b]))
                a = b
        parts.append(dec.finish())
        assert torch.equal(torch.cat(parts, 2), want)
    assert torch.equal(dec.decode_all(z), want)
    dec.reset()  # the clip's length unknown: taken as odd
    parts = [dec.decode_chunk(z[:, :, i:i + 1]) for i in range(F)]
    if F % 2 or F <= 2:
        assert torch.equal(torch.cat(parts + [dec.finish()], 2), want)
    else:
        with pytest.raises(ValueError, match="even number of latent frames"):
            dec.finish()


def test_load_vae_folders(tmp_path):
    from engine.models.vae import make_tiny_vae

    vae = make_tiny_cogvideox_vae(seed=4)
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    z = torch.randn(1, 16, 3, 2, 2, generator=_gen(1))
    for p in (tmp_path / "pipe", tmp_path / "pipe" / "vae"):
        assert torch.equal(decode_latents(load_cogvideox_vae(p), z), decode_latents(vae, z))
    make_tiny_vae().save_pretrained(tmp_path / "wan" / "vae")
    with pytest.raises(ValueError, match="AutoencoderKLWan, not an AutoencoderKLCogVideoX"):
        load_cogvideox_vae(tmp_path / "wan")
    with pytest.raises(FileNotFoundError, match="No CogVideoX VAE"):
        load_cogvideox_vae(tmp_path / "nothing")


# ----------------------------------------------------------------------------------- T5
PROMPTS = ["a red car drives on the road", "", "Camera moves forward, rain. " * 60, "x,y 42!"]


def test_t5_prompt_embeds_equal_the_pipeline(tmp_path):
    from diffusers import CogVideoXPipeline

    te = make_tiny_cogvideox_text_encoder(seed=5, dim=TEXT_DIM)
    ref_self = SimpleNamespace(tokenizer=te.tokenizer, text_encoder=te.model)
    want = CogVideoXPipeline._get_t5_prompt_embeds(ref_self, PROMPTS, max_sequence_length=COGVIDEOX_TEXT_LEN,
                                                   device=torch.device("cpu"), dtype=torch.float32)
    got = te.encode(PROMPTS)
    assert got.shape == (4, COGVIDEOX_TEXT_LEN, TEXT_DIM) and torch.equal(got, want)
    ids = te.token_ids(PROMPTS)
    assert (ids[2] != 0).all() and ids[2, -1] == 1  # the long prompt: truncated to 225 tokens + EOS
    assert ids[1, 0] == 1 and (ids[1, 1:] == 0).all()  # "": EOS then padding
    assert got[1, 1:].abs().sum() > 0  # padding positions keep their states (Wan zeroes them)
    te.save_pretrained(tmp_path / "root")
    again = CogVideoXTextEncoder.from_folder(tmp_path / "root", dtype=torch.float32)
    assert torch.equal(again.encode(PROMPTS), want)
    from engine.models.text import make_tiny_text_encoder

    make_tiny_text_encoder(dim=TEXT_DIM).save_pretrained(tmp_path / "wan")
    with pytest.raises(ValueError, match="'umt5' encoder.*UMT5 is Wan's"):
        CogVideoXTextEncoder.from_folder(tmp_path / "wan")
    assert len(make_tiny_t5_tokenizer()) < 200


# ----------------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("kind", ["ddim", "dpm"])
def test_samplers_equal_diffusers_schedulers(kind, spacing):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    cls = CogVideoXDDIMScheduler if kind == "ddim" else CogVideoXDPMScheduler
    for steps, shift in ((7, 3.0), (50, 1.0)):
        ref = cls(**dict(SCHEDULER_2B, timestep_spacing=spacing, snr_shift_scale=shift))
        ref.set_timesteps(steps)
        cfg = dict(ref.config, _class_name=cls.__name__)
        assert cogvideox_scheduler_kind(cfg) == kind
        smp = make_cogvideox_sampler(kind, steps, CogVideoXSchedule.from_config(cfg))
        assert torch.equal(smp.timesteps, ref.timesteps)
        assert torch.equal(smp.alphas_cumprod, ref.alphas_cumprod.double())
        g = _gen(steps)
        x = torch.randn(1, 4, 3, 4, 4, generator=g)
        y, old = x.clone(), None
        g_ref, g_ours = _gen(9), _gen(9)
        for i, t in enumerate(ref.timesteps):
            v = torch.randn(x.shape, generator=g)
            if kind == "ddim":
                x = ref.step(v, t, x, return_dict=False)[0]
            else:
                x, old = ref.step(v, old, t, ref.timesteps[i - 1] if i > 0 else None, x, generator=g_ref,
                                  return_dict=False)
            y = smp.step(i, y, v, noise=g_ours)
            assert rel_err(y, x) <= 1e-6, (i, rel_err(y, x))
    # numpy's float arange gives 62 trailing timesteps for 61 steps (diffusers runs a step at t = -1); we keep 61
    assert CogVideoXSchedule().timesteps(61).tolist()[-1] >= 0 and len(CogVideoXSchedule().timesteps(61)) == 61
    with pytest.raises(ValueError, match="stochastic"):
        make_cogvideox_sampler("dpm", 3).step(0, x, x)
    with pytest.raises(ValueError, match="trained_betas"):
        CogVideoXSchedule.from_config({"trained_betas": [0.1]})


@pytest.mark.parametrize("shift", [3.0, 1.0])
def test_flow_dpm_equals_cogvideox_dpm_step_by_step(shift):
    """DPMSolverSDESampler on the flow sigmas of CogVideoX's timesteps is its VP DPM-Solver++
    SDE rewritten: the state y = x / (sqrt(a) + sqrt(1 - a)) after every step, with the flow
    velocity of the same v-prediction and the noise the VP sampler used (the last of its
    draws per step)."""
    from engine.sampling import DPMSolverSDESampler, EulerSampler, cogvideox_flow_sigmas

    sched = CogVideoXSchedule.from_config(dict(SCHEDULER_2B, snr_shift_scale=shift))
    vp = make_cogvideox_sampler("dpm", 50, sched)
    sig = cogvideox_flow_sigmas(sched, 50)
    flow = DPMSolverSDESampler(sig)
    g = _gen(4)
    x = torch.randn(1, 4, 3, 4, 4, generator=g, dtype=torch.float64)
    alpha = torch.cat([vp.alphas_cumprod[vp.timesteps], torch.ones(1, dtype=torch.float64)])
    scale = alpha.sqrt() + (1 - alpha).sqrt()  # x_vp = scale * y
    y = x / scale[0]
    for i in range(50):
        v = torch.randn(x.shape, generator=g, dtype=torch.float64)  # the DiT's v-prediction at x
        a = float(alpha[i])
        xv = y * scale[i]
        v_flow = ((1 - a) ** 0.5 * xv + a ** 0.5 * v) - (a ** 0.5 * xv - (1 - a) ** 0.5 * v)  # eps - x0
        drawn = []

        def noise(like):
            drawn.append(torch.randn(like.shape, generator=g, dtype=like.dtype))
            return drawn[-1]

        x = vp.step(i, x, v, noise=noise)
        y = flow.step(i, y, v_flow, noise=drawn[-1] if i + 1 < 50 else None)
        assert rel_err(y * scale[i + 1], x) <= 1e-10, (i, rel_err(y * scale[i + 1], x))
    assert flow.stochastic and not EulerSampler(sig).stochastic
    with pytest.raises(ValueError, match="stochastic"):
        DPMSolverSDESampler(sig).step(1, y, y)


# ----------------------------------------------------------------------------------- parity
B, F_LAT, H, W = 1, 3, 32, 32  # 9 frames -> 3 latents of 4x4


def _embeds(seed, batch=B):
    g = _gen(seed)
    return (torch.randn(batch, COGVIDEOX_TEXT_LEN, TEXT_DIM, generator=g),
            torch.randn(batch, COGVIDEOX_TEXT_LEN, TEXT_DIM, generator=g))


@pytest.mark.parametrize("scheduler,dynamic", [("ddim", False), ("dpm", False), ("ddim", True)])
def test_t2v_equals_cogvideox_pipeline(tmp_path, scheduler, dynamic):
    pipe, root = tiny_pipeline(tmp_path, scheduler=scheduler)
    ours = load_cogvideox(root, dtype="float32", device="cpu")
    assert cogvideox_scheduler_for(ours)[0] == scheduler
    pos, neg = _embeds(1)
    noise = torch.randn(B, F_LAT, 16, H // 8, W // 8, generator=_gen(2))  # diffusers' [B, F, C, h, w]
    kw = dict(height=H, width=W, num_frames=9, num_inference_steps=5, guidance_scale=6.0, use_dynamic_cfg=dynamic,
              output_type="latent", return_dict=False)
    want = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=noise, generator=_gen(3), **kw)[0]
    got = cogvideox_sample(ours, noise.transpose(1, 2), pos, neg, num_steps=5, guidance_scale=6.0,
                           use_dynamic_cfg=dynamic, noise=_gen(3))
    err = rel_err(got, want.transpose(1, 2))
    print(f"t2v {scheduler} dynamic={dynamic}: rel err {err:.2e}")
    assert err <= 1e-5
    if scheduler == "ddim" and not dynamic:
        # prompts through our T5 encoder loaded from the same folder; the default negative ""
        enc = CogVideoXTextEncoder.from_folder(root, dtype=torch.float32)
        want = pipe(prompt=PROMPTS[0], latents=noise, **kw)[0]
        got = cogvideox_sample(ours, noise.transpose(1, 2), enc.encode(PROMPTS[0]), enc.encode(""), num_steps=5)
        err = rel_err(got, want.transpose(1, 2))
        print(f"t2v from prompts: rel err {err:.2e}")
        assert err <= 1e-5
        # decoding: the pipeline's decode_latents (1 / scaling_factor, vae.decode)
        vae = load_cogvideox_vae(root)
        assert rel_err(decode_latents(vae, got, clamp=False), pipe.decode_latents(got.transpose(1, 2))) <= 1e-6
        # guidance 1: no CFG, no negative needed
        want = pipe(prompt_embeds=pos, latents=noise, **dict(kw, guidance_scale=1.0))[0]
        got = cogvideox_sample(ours, noise.transpose(1, 2), pos, num_steps=5, guidance_scale=1.0)
        assert rel_err(got, want.transpose(1, 2)) <= 1e-5


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_i2v_equals_cogvideox_image_to_video_pipeline(tmp_path, scheduler):
    pipe, root = tiny_pipeline(tmp_path, i2v=True, scheduler=scheduler)
    ours = load_cogvideox(root, dtype="float32", device="cpu")
    assert ours.config.in_channels == 32 and ours.config.use_learned_positional_embeddings
    pos, neg = _embeds(4)
    noise = torch.randn(B, F_LAT, 16, H // 8, W // 8, generator=_gen(5))
    image = torch.rand(B, 3, H, W, generator=_gen(6))  # [0, 1]: the pipeline maps it to 2x - 1
    want = pipe(image=image, prompt_embeds=pos, negative_prompt_embeds=neg, latents=noise, generator=_gen(7),
                height=H, width=W, num_frames=9, num_inference_steps=5, guidance_scale=6.0, output_type="latent",
                return_dict=False)[0]
    g = _gen(7)  # one stream, as the pipeline: the image posterior sample first, then the DPM steps
    img_lat = i2v_image_latents(load_cogvideox_vae(root), image * 2 - 1, F_LAT, generator=g)
    assert img_lat.shape == (B, 16, F_LAT, 4, 4) and (img_lat[:, :, 1:] == 0).all()
    got = cogvideox_sample(ours, noise.transpose(1, 2), pos, neg, num_steps=5, guidance_scale=6.0,
                           image_latents=img_lat, noise=g)
    err = rel_err(got, want.transpose(1, 2))
    print(f"i2v {scheduler}: rel err {err:.2e}")
    assert err <= 1e-5
    with pytest.raises(ValueError, match="image-to-video, pass image_latents"):
        cogvideox_sample(ours, noise.transpose(1, 2), pos, neg, num_steps=2)


# ----------------------------------------------------------------------------------- components
def test_resolve_components_picks_the_family_and_refuses_the_other(tmp_path):
    from diffusers import AutoencoderKLWan

    from engine.models.cogvideox import COGVIDEOX_PRESETS, build_cogvideox
    from engine.models.text import TextEncoder, make_tiny_text_encoder
    from engine.models.vae import make_tiny_vae

    pipe, root = tiny_pipeline(tmp_path)
    cog = load_cogvideox(root, dtype="float32", device="cpu")
    comps = resolve_components(cog)
    assert is_cogvideox_vae(comps.vae) and isinstance(comps.text_encoder, CogVideoXTextEncoder)
    assert not comps.random_weights
    z = torch.randn(1, 16, 3, 2, 2, generator=_gen(0))
    assert torch.equal(decode_latents(comps.vae, z), decode_latents(pipe.vae, z))
    assert torch.equal(comps.text_encoder.encode("a car"), CogVideoXTextEncoder(pipe.text_encoder, pipe.tokenizer)
                       .encode("a car"))
    from engine.models.adapters import as_flow_model

    assert is_cogvideox_vae(resolve_components(as_flow_model(cog)).vae)  # through the adapter too
    tiny = load_cogvideox("tiny-cogvideox", device="cpu")
    comps = resolve_components(tiny)
    assert is_cogvideox_vae(comps.vae) and comps.text_encoder.dim == tiny.config.text_dim and comps.random_weights

    wan_vae, umt5 = make_tiny_vae(), make_tiny_text_encoder(dim=TEXT_DIM)
    make_tiny_vae().save_pretrained(tmp_path / "wanvae")
    with pytest.raises(ValueError, match="Wan AutoencoderKLWan.*latents_mean"):
        resolve_components(cog, vae=wan_vae)
    with pytest.raises(ValueError, match="AutoencoderKLWan, not an AutoencoderKLCogVideoX"):
        resolve_components(cog, vae=tmp_path / "wanvae")
    with pytest.raises(ValueError, match="UMT5 encoder"):
        resolve_components(cog, text_encoder=umt5)
    with pytest.raises(ValueError, match="text_dim=32"):
        resolve_components(cog, text_encoder=make_tiny_cogvideox_text_encoder(dim=48))
    with pytest.raises(ValueError, match="24 latent channels but model"):
        resolve_components(cog, vae=make_tiny_cogvideox_vae(latent_channels=24))
    cog_novae = load_cogvideox(root / "transformer", dtype="float32", device="cpu")
    cog_novae.source = tmp_path / "elsewhere"  # a trained model without a pipeline root
    with pytest.raises(ValueError, match="no VAE for CogVideoX model"):
        resolve_components(cog_novae)
    big = build_cogvideox(COGVIDEOX_PRESETS["tiny-cogvideox"].replace(name="custom"))
    big.source = None  # untrained, not a tiny preset: a random CogVideoX-2b-shaped VAE, no text encoder
    assert type(resolve_components(big).vae).__name__ == "AutoencoderKLCogVideoX"

    # vice versa: a Wan DiT refuses CogVideoX's parts; its own resolve as before
    import engine

    wan = engine.load_model("tiny-random", device="cpu")
    with pytest.raises(ValueError, match="Wan DiT: it needs the Wan VAE.*AutoencoderKLCogVideoX"):
        resolve_components(wan, vae=make_tiny_cogvideox_vae())
    with pytest.raises(ValueError, match="Wan DiT: it needs the Wan VAE"):
        resolve_components(wan, vae=root)
    with pytest.raises(ValueError, match="CogVideoX's T5"):
        resolve_components(wan, text_encoder=make_tiny_cogvideox_text_encoder())
    with pytest.raises(ValueError, match="CogVideoX's T5"):
        resolve_components(wan, text_encoder=root)
    comps = resolve_components(wan)
    assert isinstance(comps.vae, AutoencoderKLWan) and isinstance(comps.text_encoder, TextEncoder)


def _run_latents(prepared):
    """(final latents [1, 16, F, h, w] of the run in position order, decoded uint8 frames)."""
    import numpy as np

    from engine.generation import run

    keep = {}
    frames = np.concatenate(list(run(prepared, keep_latents=keep)), 0)
    return torch.cat([keep[k] for k in sorted(keep, key=lambda k: k[1])], 2), frames


def test_generate_runs_a_cogvideox_pipeline_root_as_diffusers_does(tmp_path):
    """engine.generate on a CogVideoX pipeline root (one call): its T5 (226 tokens), its DDIM
    schedule (50 trailing steps, CFG 6, the empty negative prompt), its VAE -- the runtime's
    latents equal CogVideoXPipeline's, and the decoded frames its decode of them."""
    from engine.generation import prepare
    from engine.video import to_uint8_frames

    pipe, root = tiny_pipeline(tmp_path)
    noise = torch.randn(B, F_LAT, 16, H // 8, W // 8, generator=_gen(2))
    want = pipe(prompt=PROMPTS[0], latents=noise, height=H, width=W, num_frames=9, num_inference_steps=50,
                guidance_scale=6.0, output_type="latent", return_dict=False)[0].transpose(1, 2)
    pr = prepare(str(root), num_frames=9, height=H, width=W, prompt=PROMPTS[0], chunk_frames=F_LAT,
                 noise=noise.transpose(1, 2), devices=["cpu"])
    assert pr.sampler.schedule == "cogvideox" and pr.sampler.num_steps == 50 and pr.sampler.guidance_scale == 6.0
    got, frames = _run_latents(pr)
    err = rel_err(got, want)
    print(f"generate on a CogVideoX root vs CogVideoXPipeline: rel err {err:.2e}")
    assert err <= 1e-5
    video = pipe.decode_latents(got.transpose(1, 2))  # [B, 3, T, H, W] as the pipeline decodes
    assert frames.shape == (9, H, W, 3)
    assert (frames.astype(int) - to_uint8_frames(video.clamp(-1, 1))[0].astype(int)).__abs__().max() <= 1


def test_generate_runs_a_cogvideox_dpm_root_as_diffusers_does(tmp_path, monkeypatch):
    """CogVideoX-5b's sampler through the runtime: a root whose scheduler is
    CogVideoXDPMScheduler runs DPM-Solver++(2M) SDE (engine.sampling.DPMSolverSDESampler, in
    flow variables) and equals CogVideoXPipeline when the runtime's per-step noise is the
    pipeline's generator draws (diffusers draws twice on second-order steps, the first
    unused: the replay skips it)."""
    import engine.denoise as denoise
    from engine.generation import prepare

    pipe, root = tiny_pipeline(tmp_path, scheduler="dpm")
    noise = torch.randn(B, F_LAT, 16, H // 8, W // 8, generator=_gen(2))
    want = pipe(prompt=PROMPTS[0], latents=noise, height=H, width=W, num_frames=9, num_inference_steps=50,
                guidance_scale=6.0, generator=_gen(3), output_type="latent", return_dict=False)[0].transpose(1, 2)
    g = _gen(3)

    def replay(jobs, seed, shape, dev):  # the pipeline's draws, in its [B, F, C, h, w] layout
        def noise(k, i):  # asked on every step but the last (engine.denoise.sample)
            for _ in range(1 if i == 0 else 2):
                eps = torch.randn(B, len(jobs[k].generated_positions), 16, H // 8, W // 8, generator=g)
            return eps.transpose(1, 2)
        return noise

    monkeypatch.setattr(denoise, "renoise", replay)
    pr = prepare(str(root), num_frames=9, height=H, width=W, prompt=PROMPTS[0], chunk_frames=F_LAT,
                 noise=noise.transpose(1, 2), devices=["cpu"])
    assert pr.sampler.kind == "dpm" and pr.sampler.schedule == "cogvideox" and pr.sampler.num_steps == 50
    got, frames = _run_latents(pr)
    err = rel_err(got, want)
    print(f"generate on a CogVideoX DPM root vs CogVideoXPipeline: rel err {err:.2e}")
    assert err <= 1e-5 and frames.shape == (9, H, W, 3)


def test_generate_cogvideox_i2v_main_model_and_custom_schedule(tmp_path):
    """A CogVideoX-I2V root: the first frame's latent (posterior mode) on the channels as
    CogVideoXImageToVideoPipeline builds it; 5 DDIM steps given as a SamplerConfig."""
    from engine.config import SamplerConfig
    from engine.generation import prepare
    from engine.models.cogvideox import cogvideox_scheduler_for

    _, root = tiny_pipeline(tmp_path, i2v=True)
    ours = load_cogvideox(root, dtype="float32", device="cpu")
    noise = torch.randn(B, 16, F_LAT, H // 8, W // 8, generator=_gen(5))
    image = torch.rand(3, H, W, generator=_gen(6)) * 2 - 1
    sampler = SamplerConfig(kind="euler", schedule="cogvideox", num_steps=5, guidance_scale=6.0,
                            ddpm=cogvideox_scheduler_for(ours)[1])
    enc = CogVideoXTextEncoder.from_folder(root, dtype=torch.float32)
    img_lat = i2v_image_latents(load_cogvideox_vae(root), image[None], F_LAT, sample=False)
    want = cogvideox_sample(ours, noise, enc.encode(PROMPTS[1]), enc.encode(""), num_steps=5, guidance_scale=6.0,
                            image_latents=img_lat, sampler="ddim")
    with pytest.raises(ValueError, match="image-to-video"):
        prepare(str(root), num_frames=9, height=H, width=W, prompt=PROMPTS[1], devices=["cpu"])
    pr = prepare(str(root), num_frames=9, height=H, width=W, prompt=PROMPTS[1], first_frame=image, chunk_frames=F_LAT,
                 noise=noise, sampler=sampler, devices=["cpu"])
    got, _ = _run_latents(pr)
    assert rel_err(got, want) <= 1e-5


def test_generate_refuses_what_cogvideox_cannot_decode_or_sample(tmp_path):
    """A clip made by several jobs (a given first frame, then chunks) decodes whole, after its
    last job; an even latent count (CogVideoX 1.0 decodes it to 4F frames) and a DDIM step
    count off its timestep rule are errors naming the fix."""
    from engine.generation import prepare

    _, root = tiny_pipeline(tmp_path)
    pr = prepare(str(root), num_frames=9, height=H, width=W, chunk_frames=1, devices=["cpu"],
                 first_frame=torch.rand(3, H, W) * 2 - 1)  # latent 0 given, latents 1 and 2: one chunk job each
    assert len(pr.plan.jobs) == 2 and [len(c) for c in pr.plan.clip_decodes.values()] == [1]  # one whole decode
    _, frames = _run_latents(pr)
    assert frames.shape == (9, H, W, 3)
    with pytest.raises(ValueError, match="even number"):
        prepare(str(root), num_frames=13, height=H, width=W, chunk_frames=4, devices=["cpu"])
    from engine.config import SamplerConfig

    with pytest.raises(ValueError, match="t - 33"):
        prepare(str(root), num_frames=9, height=H, width=W, chunk_frames=F_LAT, devices=["cpu"],
                sampler=SamplerConfig(kind="euler", schedule="cogvideox", num_steps=30))


def test_cli_steps_flag_keeps_a_dpm_roots_sampler(tmp_path):
    """`--steps N` on a CogVideoX-5b-style root changes the step count, not the sampler."""
    import argparse

    from engine.cli import _sampler

    _, root = tiny_pipeline(tmp_path, scheduler="dpm")
    args = argparse.Namespace(model=str(root), sampler=None, steps=10, shift=None, guidance_scale=None, timesteps=None)
    smp = _sampler(args, None)
    assert smp.kind == "dpm" and smp.schedule == "cogvideox" and smp.num_steps == 10
