"""Golden fixtures from the *public MMPL release's own inference code* (Tele-AI/MMPL).

Run:  python tests/release/mmpl_golden.py [--out DIR] [--verbose]
      (release sources read from $MMPL_RELEASE, default /tmp/mmpl, holding MMPL_t2v/ and MMPL_i2v/)

What it does
------------
Nothing of the release is copied into this repository: at run time this script reads the
release's .py files, applies a few explicit, asserted text substitutions (below), and
executes them as modules (``wan.modules.causal_fps_model``, ``utils.wan_wrapper``,
``pipeline.casual_fps_inference``, ...).  Then it runs, on CPU in float32 with tiny random
weights, the release's ``CausalFPSInferencePipeline.inference`` and re-does the few lines of
glue of the release's top-level scripts (which cannot be imported: they are argparse/
OmegaConf/DataLoader scripts) that chain segments:

1. ``t2v_one``   one T2V segment, no initial latent (MMPL_t2v pipeline).
2. ``t2v_1gpu``  two segments chained as ``MMPL_t2v/Wan_fps_inference_1gpu.py`` does
   (duration=2): decode the 21 latents (inside ``inference``), put the last 5 decoded
   frames at the start of an otherwise zero 81-frame clip in [0, 1] space, map to [-1, 1]
   (so the "zero" frames are -1), VAE-encode, first 2 latents = next ``initial_latent``;
   the output video drops the first ``(2 - 1) * 4 + 1 = 5`` frames of EVERY segment
   (``initial_num`` is set to 2 before the drop also for segment 0) -> 76 + 76 = 152 frames.
3. ``t2v_4gpu``  two segments chained as ``MMPL_t2v/Wan_fps_inference_parallel_4gpu_20s.py``'s
   ``generate_video_chunk`` does, simulated sequentially: segment 0 writes
   ``cat(output[:, :1], stage-1 latents)`` ([f0, f2, f3, f10, f11, f12, f19, f20]) to its
   ``save`` file after stage 1; segment 1 loads it, builds [f0, f19, f19, f20] + 17 zero
   latents, decodes 81 frames, takes decoded frames 8..12, puts them at the start of a zero
   81-frame clip ([0, 1] space, then *2-1), encodes, first 2 latents = ``initial_latent``.
   The RNG protocol is the script's: both segments' noises are drawn up front (noise0,
   noise1), then segment 0 runs (its internal boundary draws come after noise1), then
   segment 1.  (In the release the four threads share the global CUDA RNG, so the order of
   their internal ``randn_like`` draws is not deterministic there; sequential is one valid
   order and every draw is recorded here.)
4. ``i2v_1gpu``  the MMPL_i2v tree's own pipeline (stages [1, 1, 7, 6, 6], no boundary
   re-noise) with the same weights, a random image [1, 3, 1, 64, 64] in [-1, 1] encoded as
   the first initial latent, two segments chained as ``MMPL_i2v/Wan_fps_inference_1gpu.py``
   (which forces ``args.i2v = False``, so the noise is 21 frames; segment >= 1 gets 2
   initial latents, each written to the cache by its own t=0 pass).

The RNG protocol is the release scripts': ``set_seed(seed)`` (torch.manual_seed here) ->
pipeline construction (its ``__init__`` draws ``torch.randint(980, 1000, [1, 1])`` for the
boundary re-noise timestep) -> ``set_seed(seed)`` -> ``torch.randn`` segment noise ->
``inference`` (draws ``torch.randn_like`` internally) -> next segment's ``torch.randn`` ...
Every random draw made while the release code runs is intercepted (``torch.randn_like``,
``torch.randint``, ``torch.randn``, ``torch.rand``, ``torch.rand_like``, ``torch.normal``)
and recorded; ``add_noise`` of the boundary frames is checked to use sigma == 1.0 exactly,
i.e. the re-noised frame IS the fresh draw, so each segment's "effective noise" is the
segment noise with frames 4, 9, 13, 18 replaced by the four draws (T2V; I2V: no draws).

Tiny setup: ``CausalFPSWanModel(dim=32, ffn_dim=64, num_heads=2 (head_dim 16), num_layers=2,
text_dim=32, ...)``, latents [16, 8, 8] per frame -> 4x4 = 16 tokens per frame, 21 latent
frames per segment, 81 video frames at 64x64.  Every DiT parameter is re-drawn from a seeded
generator (Wan zero-inits the head).  The VAE is a tiny diffusers ``AutoencoderKLWan``
(base_dim 4, real Wan2.1 latents_mean/std) wrapped in an adapter with WanVAEWrapper's exact
arithmetic: encode ``(mu - mean) * (1 / std)`` of the posterior MEAN, decode
``z / (1 / std) + mean``, full causal decode, ``.float().clamp_(-1, 1)``.  The text encoder
is a stub returning fixed random embeddings padded with zeros to [1, 512, 32] (what
WanTextEncoder returns: padding set to 0).  UniPC 50 steps, shift 5, CFG 5,
num_train_timestep 1000 (configs/self_forcing_df.yaml + default_config.yaml).

Outputs (in --out, default tests/fixtures/mmpl_release/):
  golden.safetensors  every recorded tensor (float32; timesteps int64), keys in golden.json
  golden.json         manifest: keys/shapes/descriptions, configs, seeds, release commit,
                      sha256 of every release file executed, every patch and shim, findings
  t2v_tiny.pt         checkpoint in the release layout {"generator", "generator_ema"}
                      (keys of WanFPSWrapper.state_dict(), e.g. "model.blocks.0.self_attn.q.weight");
                      the golden runs load "generator" exactly as the release scripts do
  vae/                the tiny AutoencoderKLWan (diffusers save_pretrained folder)

Patches applied to the release text (each asserted to match; counts in golden.json)
------------------------------------------------------------------------------------
wan/modules/causal_fps_model.py (both trees):
  * ``\\b1560\\b`` -> ``16``     tokens per latent frame (60*104/4 -> 8*8/4)
  * ``\\b32760\\b`` -> ``336``   21 frames * tokens per frame (max_attention_size, unused)
pipeline/casual_fps_inference.py (both trees):
  * ``torch.backends.cuda.preferred_linalg_library("magma")`` -> ``pass`` (raises on a CPU
    build of torch; linear algebra backends play no role here)
  * ``\\b1560\\b`` -> ``16``, ``\\b32760\\b`` -> ``336`` (``current_start`` in tokens, KV cache
    size ``32760 - 6*1560`` -> ``336 - 6*16`` = 15 frames)
  * ``self.num_transformer_blocks = 40`` -> ``= 2``
  * ``40, 128]`` -> ``2, 16]`` (KV / cross-attention cache head shapes; the cross-attention
    cache keeps its 512 text tokens)
  * T2V only: ``target_values = [31200, 29640]`` -> ``[320, 304]`` (frames 20 and 19 in tokens)
Module-level shims (no text change):
  * ``wan.modules.attention.attention`` and ``.flash_attention`` -> float32 torch SDPA (the
    release runs flash-attn / an SDPA fallback in bfloat16; neither pads: the cross-attention
    is called with ``k_lens=None`` so all 512 text tokens, zero padding included, are attended)
  * ``wan``, ``wan.modules``, ``wan.utils``, ``utils``, ``pipeline`` are bare packages (their
    ``__init__`` files, which import T5/CLIP/VAE/other pipelines, are not executed)
  * ``wan.modules.tokenizers`` / ``.t5`` / ``.vae`` / ``.causal_model`` are placeholder modules
    (only imported by utils/wan_wrapper.py for classes these runs never build)
  * ``einops`` placeholder if it is not installed (only ``einops.repeat`` in the unused
    classify branch of model.py needs it)
  * ``WanFPSWrapper`` is built by its own ``__init__`` with ``CausalFPSWanModel.from_pretrained``
    replaced by a factory returning the tiny model; then ``load_state_dict(ckpt["generator"])``
  * glue of the top-level scripts re-done here in float32 (the release casts to bfloat16 in
    ``pipeline.to(dtype=torch.bfloat16)``, the noise, the re-encode clips): no bf16 anywhere
  * ``torch.set_grad_enabled(False)`` as the release scripts do (it matters: with grad on,
    the blocks take the gradient-checkpointing branch, which drops the cross-attn cache)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "mmpl_release")
RELEASE = os.environ.get("MMPL_RELEASE", "/tmp/mmpl")
MIRROR_GIT = "/work/.mirror/Tele-AI+MMPL/repo"

# ----------------------------------------------------------------------------- tiny config

TOKENS_PER_FRAME = 16  # latents [16, 8, 8], patch (1, 2, 2) -> 4 x 4
NUM_LATENT_FRAMES = 21
LATENT_SHAPE = [16, 8, 8]
VIDEO_HW = 64
NUM_VIDEO_FRAMES = 81
NUM_HEADS = 2
HEAD_DIM = 16
NUM_LAYERS = 2
TEXT_DIM = 32

DIT_CONFIG = dict(
    model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=32, ffn_dim=64,
    freq_dim=256, text_dim=TEXT_DIM, out_dim=16, num_heads=NUM_HEADS, num_layers=NUM_LAYERS,
    qk_norm=True, cross_attn_norm=True, eps=1e-6,
)

WAN21_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]
WAN21_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]
VAE_CONFIG = dict(
    base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0,
    latents_mean=list(WAN21_LATENTS_MEAN), latents_std=list(WAN21_LATENTS_STD),
)

# release configs/self_forcing_df.yaml merged over configs/default_config.yaml (the keys used)
ARGS = dict(
    num_train_timestep=1000, timestep_shift=5.0, guidance_scale=5.0,
    independent_first_frame=False, model_kwargs={"timestep_shift": 5.0},
    negative_prompt="<tiny negative prompt>", i2v=False,
)
PROMPT = "<tiny prompt>"

SEEDS = dict(
    run=0,            # the release scripts' --seed 0 (torch.manual_seed, global RNG)
    dit_weights=1234,  # torch.Generator for the DiT parameters
    dit_ema=1235,     # torch.Generator for the generator_ema offsets
    vae_weights=4321,  # torch.Generator for the VAE parameters
    text=77,          # torch.Generator for the prompt embeddings
    image=99,         # torch.Generator for the I2V image
)
COND_LEN, UNCOND_LEN = 7, 5

T2V_BOUNDARY_FRAMES = [4, 9, 13, 18]  # in draw order
T2V_STAGES = {"stage0": [0, 1], "stage1": [2, 3, 10, 11, 12, 19, 20],
              "stage2": [4, 5, 6, 7, 8, 9], "stage3": [13, 14, 15, 16, 17, 18]}
I2V_STAGES = {"stage0": [0], "stage1": [1], "stage2": [2, 3, 10, 11, 12, 19, 20],
              "stage3": [4, 5, 6, 7, 8, 9], "stage4": [13, 14, 15, 16, 17, 18]}

# ----------------------------------------------------------------------------- release loading

_TAG = "# [mmpl_golden patch]"

PATCHES = {
    "wan/modules/causal_fps_model.py": [
        (r"\b1560\b", "16", "tokens per latent frame: 60*104/4 -> 8*8/4"),
        (r"\b32760\b", "336", "21 frames * tokens per frame (max_attention_size, unused here)"),
    ],
    "pipeline/casual_fps_inference.py": [
        (r'torch\.backends\.cuda\.preferred_linalg_library\("magma"\)',
         "pass  " + _TAG + " magma backend (raises on CPU torch)",
         "raises on a CPU build of torch; irrelevant to the computation"),
        (r"\b1560\b", "16", "tokens per latent frame (current_start / cache_start in tokens)"),
        (r"\b32760\b", "336", "21 frames * tokens per frame (KV cache size 32760 - 6*1560 -> 336 - 6*16)"),
        (r"self\.num_transformer_blocks = 40\b", "self.num_transformer_blocks = 2", "2 tiny blocks"),
        (r"40, 128\]", "2, 16]", "KV / cross-attn cache heads x head_dim (40x128 -> 2x16)"),
    ],
}
T2V_ONLY_PATCHES = {
    "pipeline/casual_fps_inference.py": [
        (r"target_values = \[31200, 29640\]", "target_values = [320, 304]",
         "frames 20 and 19 in tokens (20*1560, 19*1560 -> 20*16, 19*16)"),
    ],
}

FILES_EXECUTED = [
    "wan/modules/attention.py",
    "wan/modules/model.py",
    "wan/modules/causal_fps_model.py",
    "wan/utils/fm_solvers.py",
    "wan/utils/fm_solvers_unipc.py",
    "utils/scheduler.py",
    "utils/wan_wrapper.py",
    "pipeline/casual_fps_inference.py",
]

SHIMS = [
    "wan.modules.attention.attention / .flash_attention -> float32 torch.nn.functional."
    "scaled_dot_product_attention (release: flash-attn or SDPA in bfloat16; no padding masks "
    "either way: the cross-attention passes k_lens=None)",
    "wan, wan.modules, wan.utils, utils, pipeline: bare packages (their __init__ not executed)",
    "wan.modules.tokenizers / t5 / vae / causal_model: placeholder modules (imported by "
    "utils/wan_wrapper.py for classes never built here)",
    "einops: placeholder when not installed (only einops.repeat in model.py's unused classify branch)",
    "WanFPSWrapper.__init__ runs with CausalFPSWanModel.from_pretrained -> tiny CausalFPSWanModel"
    "(**DIT_CONFIG); weights then loaded with load_state_dict(ckpt['generator']) as the release does",
    "text encoder: stub nn.Module returning {'prompt_embeds': [1, 512, 32]} (random rows, zeros after "
    "the real length)",
    "VAE: adapter with WanVAEWrapper's encode_to_latent / decode_to_pixel arithmetic over diffusers "
    "AutoencoderKLWan (posterior mean; (mu - mean) * (1/std); z / (1/std) + mean; clamp_(-1, 1))",
    "chaining glue of Wan_fps_inference_1gpu.py / Wan_fps_inference_parallel_4gpu_20s.py re-done "
    "here, float32 (release: bfloat16 casts), device 'cpu' for device_cond / device_uncond",
    "pipeline 'save' path (latents_chunkK.pt) -> a temporary directory",
    "torch.set_grad_enabled(False) as the release scripts do",
]


def _sdpa_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None,
                    q_scale=None, causal=False, window_size=(-1, -1), deterministic=False,
                    dtype=None, version=None, fa_version=None):
    """float32 stand-in for the release's flash_attention / attention: q, k, v [B, L, N, D]."""
    assert q_lens is None and k_lens is None, "padding masks are never used on this path"
    assert tuple(window_size) == (-1, -1) and not causal and dropout_p == 0.0
    if q_scale is not None:
        q = q * q_scale
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale)
    return out.transpose(1, 2).contiguous().type(q.dtype)


class _Placeholder:
    def __init__(self, name):
        self._name = name

    def __call__(self, *a, **k):
        raise RuntimeError(f"{self._name} is a placeholder in mmpl_golden (not needed by these runs)")


def _placeholder_module(name, attrs):
    m = types.ModuleType(name)
    m.__file__ = f"<mmpl_golden placeholder {name}>"
    for a in attrs:
        setattr(m, a, _Placeholder(f"{name}.{a}"))
    return m


_OWNED = ("wan", "utils", "pipeline", "einops")


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_release_tree(tree: str) -> tuple[dict, list]:
    """Execute the release modules of ``$MMPL_RELEASE/<tree>`` (MMPL_t2v or MMPL_i2v).

    Returns ({module name: module}, [applied patch records]).  sys.modules is restored
    afterwards, so both trees can be loaded in one process.
    """
    root = os.path.join(RELEASE, tree)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"MMPL release tree not found: {root} (set MMPL_RELEASE)")
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in _OWNED}
    mods, applied = {}, []
    try:
        for pkg in ("wan", "wan.modules", "wan.utils", "utils", "pipeline"):
            m = types.ModuleType(pkg)
            m.__path__ = [os.path.join(root, *pkg.split("."))]
            m.__package__ = pkg
            sys.modules[pkg] = m
            if "." in pkg:
                parent, _, child = pkg.rpartition(".")
                setattr(sys.modules[parent], child, m)
        if "einops" in saved:
            sys.modules["einops"] = saved["einops"]
        else:
            try:
                import einops  # noqa: F401
            except ImportError:
                sys.modules["einops"] = _placeholder_module("einops", ["repeat", "rearrange"])
        for name, attrs in (("wan.modules.tokenizers", ["HuggingfaceTokenizer"]),
                            ("wan.modules.t5", ["umt5_xxl"]),
                            ("wan.modules.vae", ["_video_vae"]),
                            ("wan.modules.causal_model", ["CausalWanModel"])):
            sys.modules[name] = _placeholder_module(name, attrs)

        def load(rel):
            path = os.path.join(root, rel)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            subs = list(PATCHES.get(rel, []))
            if tree == "MMPL_t2v":
                subs += T2V_ONLY_PATCHES.get(rel, [])
            for pattern, repl, why in subs:
                text, n = re.subn(pattern, repl, text)
                if n == 0:
                    raise RuntimeError(f"patch {pattern!r} did not match {tree}/{rel}: release changed?")
                applied.append({"file": f"{tree}/{rel}", "pattern": pattern, "replacement": repl,
                                "count": n, "why": why})
            name = rel[:-3].replace("/", ".")
            m = types.ModuleType(name)
            m.__file__ = path
            m.__package__ = name.rpartition(".")[0]
            sys.modules[name] = m
            parent, _, child = name.rpartition(".")
            setattr(sys.modules[parent], child, m)
            exec(compile(text, path, "exec"), m.__dict__)
            mods[name] = m
            if name == "wan.modules.attention":
                m.attention = _sdpa_attention
                m.flash_attention = _sdpa_attention
            return m

        for rel in FILES_EXECUTED:
            load(rel)
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] in _OWNED]:
            del sys.modules[k]
        sys.modules.update(saved)
    assert mods["wan.modules.model"].flash_attention is _sdpa_attention
    assert mods["wan.modules.causal_fps_model"].attention is _sdpa_attention
    return mods, applied


# ----------------------------------------------------------------------------- tiny models


def build_wrapper(mods):
    """The release's WanFPSWrapper(timestep_shift=5, is_causal=True) around a tiny CausalFPSWanModel."""
    ww = mods["utils.wan_wrapper"]
    cfm = mods["wan.modules.causal_fps_model"]

    class _TinyFactory:
        @staticmethod
        def from_pretrained(path, local_attn_size=-1, sink_size=0):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return cfm.CausalFPSWanModel(**DIT_CONFIG, local_attn_size=local_attn_size,
                                             sink_size=sink_size)

    orig = ww.CausalFPSWanModel
    ww.CausalFPSWanModel = _TinyFactory
    try:
        wrapper = ww.WanFPSWrapper(**ARGS["model_kwargs"], is_causal=True)
    finally:
        ww.CausalFPSWanModel = orig
    return wrapper


def randomize_dit_(wrapper, seed):
    """Every parameter re-drawn: weights N(0, clamp(1/sqrt(fan_in), .05, .2)), norm gains
    1 + 0.1 N, biases 0.05 N, modulation 0.1 N."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in wrapper.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("modulation"):
                p.copy_(0.1 * r)
            elif p.ndim >= 2:
                std = min(max(p[0].numel() ** -0.5, 0.05), 0.2)
                p.copy_(std * r)
            elif name.endswith("bias"):
                p.copy_(0.05 * r)
            else:  # RMSNorm / LayerNorm gains
                p.copy_(1.0 + 0.1 * r)


def build_vae(seed):
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**VAE_CONFIG)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim >= 2:
                p.copy_(r / p[0].numel() ** 0.5)
            elif name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * r)
            else:
                p.copy_(0.02 * r)
    return vae.eval().requires_grad_(False)


class VAEAdapter(torch.nn.Module):
    """WanVAEWrapper.encode_to_latent / decode_to_pixel over a diffusers AutoencoderKLWan."""

    def __init__(self, vae):
        super().__init__()
        self.model = vae
        self.mean = torch.tensor(WAN21_LATENTS_MEAN, dtype=torch.float32)
        self.std = torch.tensor(WAN21_LATENTS_STD, dtype=torch.float32)

    def _scale(self, ref):
        return [self.mean.to(device=ref.device, dtype=ref.dtype),
                1.0 / self.std.to(device=ref.device, dtype=ref.dtype)]

    def encode_to_latent(self, pixel):  # [B, 3, T, H, W] -> [B, F, 16, h, w]
        scale = self._scale(pixel)
        out = []
        for u in pixel:
            mu = self.model.encode(u.unsqueeze(0)).latent_dist.mean
            mu = (mu - scale[0].view(1, 16, 1, 1, 1)) * scale[1].view(1, 16, 1, 1, 1)
            out.append(mu.float().squeeze(0))
        return torch.stack(out, dim=0).permute(0, 2, 1, 3, 4)

    def decode_to_pixel(self, latent, use_cache=False):  # [B, F, 16, h, w] -> [B, T, 3, H, W]
        assert not use_cache
        zs = latent.permute(0, 2, 1, 3, 4)
        scale = self._scale(latent)
        out = []
        for u in zs:
            z = u.unsqueeze(0) / scale[1].view(1, 16, 1, 1, 1) + scale[0].view(1, 16, 1, 1, 1)
            x = self.model.decode(z).sample
            out.append(x.float().clamp_(-1, 1).squeeze(0))
        return torch.stack(out, dim=0).permute(0, 2, 1, 3, 4)


class StubTextEncoder(torch.nn.Module):
    """What WanTextEncoder returns: {"prompt_embeds": [B, 512, text_dim]}, zeros after the real length."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, text_prompts):
        return {"prompt_embeds": torch.cat([self.table[p] for p in text_prompts], dim=0).clone()}


def pad512(x):
    out = torch.zeros(1, 512, x.shape[-1])
    out[:, : x.shape[1]] = x
    return out


# ----------------------------------------------------------------------------- recording


_RNG_FUNCS = ("randn_like", "randint", "randn", "rand", "rand_like", "normal")


@contextlib.contextmanager
def record_draws(log):
    """Intercept the global-RNG torch functions; append (fn, tensor) for every call."""
    originals = {n: getattr(torch, n) for n in _RNG_FUNCS}

    def wrap(n):
        f = originals[n]

        def g(*a, **k):
            t = f(*a, **k)
            log.append((n, t.detach().clone()))
            return t
        return g

    try:
        for n in _RNG_FUNCS:
            setattr(torch, n, wrap(n))
        yield log
    finally:
        for n, f in originals.items():
            setattr(torch, n, f)


class Recorder:
    """Hooks on one pipeline: sampler per stage, model-call log, boundary add_noise checks."""

    def __init__(self, pipe, tokens=TOKENS_PER_FRAME):
        self.pipe, self.tokens = pipe, tokens
        self.schedulers = []
        self.calls = []        # compact per-call records
        self.first_outputs = []
        self.add_noise = []
        self.draws = []
        orig_init = pipe._initialize_sample_scheduler

        def init_sched(noise):
            s = orig_init(noise)
            self.schedulers.append(s)
            return s
        pipe._initialize_sample_scheduler = init_sched

        sched = pipe.ddpm_scheduler
        orig_add = sched.add_noise

        def add_noise(original_samples, noise, timestep):
            ts = timestep.flatten() if timestep.ndim == 2 else timestep
            tid = torch.argmin((sched.timesteps.unsqueeze(0) - ts.unsqueeze(1)).abs(), dim=1)
            sigma = sched.sigmas[tid]
            out = orig_add(original_samples, noise, timestep)
            self.add_noise.append({"timestep": float(ts[0]), "timestep_id": int(tid[0]),
                                   "sigma": float(sigma[0]), "equals_noise": bool(torch.equal(out, noise))})
            return out
        sched.add_noise = add_noise

        wrapper = pipe.generator_cond
        self._handles = [
            wrapper.register_forward_pre_hook(self._pre, with_kwargs=True),
            wrapper.register_forward_hook(self._post, with_kwargs=True),
        ]
        self._pending = None

    def _pre(self, module, args, kwargs):
        t = kwargs["timestep"]
        cache = kwargs["kv_cache"]
        self._pending = {
            "cache": "pos" if cache is self.pipe.kv_cache_pos else "neg",
            "stage_sampler": len(self.schedulers) - 1,
            "t": float(t.flatten()[0]),
            "frames": [s // self.tokens for s in kwargs["current_start"]],
        }

    def _post(self, module, args, kwargs, output):
        rec = self._pending
        vis = self.pipe.kv_cache_pos[0]["attention_vis_index"] if rec["cache"] == "pos" else \
            self.pipe.kv_cache_neg[0]["attention_vis_index"]
        rec["vis_after"] = [v // self.tokens for v in vis]
        if len(self.first_outputs) < 2:
            self.first_outputs.append(output[0].detach().clone())
        key = (rec["cache"], rec["stage_sampler"], rec["t"] == 0.0, tuple(rec["frames"]), tuple(rec["vis_after"]))
        if self.calls and self.calls[-1]["_key"] == key:
            self.calls[-1]["n"] += 1
        else:
            rec["_key"] = key
            rec["n"] = 1
            self.calls.append(rec)

    def call_log(self, start=0, stop=None):
        """Per (kind, frames): the pos cache's attention_vis_index (frames, list order) after the call."""
        out = []
        for c in self.calls[start:stop]:
            if c["cache"] != "pos":
                continue
            out.append({"kind": "t=0 cache write" if c["t"] == 0.0 else "denoise",
                        "frames": c["frames"], "calls": c["n"], "first_t": c["t"],
                        "attention_vis_index_after (frames, list order)": c["vis_after"]})
        merged = []
        for e in out:
            if merged and merged[-1]["kind"] == e["kind"] and merged[-1]["frames"] == e["frames"] and \
                    merged[-1]["attention_vis_index_after (frames, list order)"] == \
                    e["attention_vis_index_after (frames, list order)"]:
                merged[-1]["calls"] += e["calls"]
            else:
                merged.append(e)
        return merged


# ----------------------------------------------------------------------------- runs


class Golden:
    def __init__(self):
        self.tensors, self.desc = {}, {}

    def put(self, key, t, desc):
        assert key not in self.tensors, key
        t = t.detach().contiguous().clone()
        if t.dtype != torch.int64:
            t = t.to(torch.float32)
        assert torch.isfinite(t.float()).all(), f"{key}: non-finite values"
        self.tensors[key] = t
        self.desc[key] = desc


def make_pipeline(mods, ckpt, vae_adapter, text_encoder, save_path, quiet=True):
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        return _make_pipeline(mods, ckpt, vae_adapter, text_encoder, save_path)


def _make_pipeline(mods, ckpt, vae_adapter, text_encoder, save_path):
    wrapper = build_wrapper(mods)
    wrapper.load_state_dict(ckpt["generator"])  # as the release scripts do
    args = types.SimpleNamespace(**ARGS)
    P = mods["pipeline.casual_fps_inference"].CausalFPSInferencePipeline
    pipe = P(args, device="cpu", generator=wrapper, text_encoder=text_encoder, vae=vae_adapter,
             device_cond="cpu", device_uncond="cpu", save=save_path)
    pipe.independent_first_frame = False  # as the release scripts do
    return pipe


def run_inference(pipe, rec, noise, initial_latent, quiet):
    sink = io.StringIO()
    with contextlib.ExitStack() as st:
        if quiet:
            st.enter_context(contextlib.redirect_stdout(sink))
            st.enter_context(contextlib.redirect_stderr(sink))
        st.enter_context(record_draws(rec.draws if rec is not None else []))
        n0 = len(rec.draws) if rec is not None else 0
        video, latents = pipe.inference(noise=noise, text_prompts=[PROMPT], return_latents=True,
                                        initial_latent=initial_latent)
    draws = rec.draws[n0:] if rec is not None else []
    return video, latents, draws


def effective_noise_t2v(noise, draws):
    assert [d[0] for d in draws] == ["randn_like"] * 4, [d[0] for d in draws]
    eff = noise.clone()
    for f, (_, d) in zip(T2V_BOUNDARY_FRAMES, draws):
        assert d.shape == (1, 1, *LATENT_SHAPE)
        eff[:, f:f + 1] = d
    return eff, torch.cat([d for _, d in draws], dim=1)


def chain_1gpu(vae, video):
    """Wan_fps_inference_1gpu.py: next initial_latent and the kept frames of this segment."""
    vid_test = torch.zeros_like(video)
    vid_test[:, 0:5] = video[:, -5:]
    vid_test_normalized = vid_test * 2.0 - 1.0
    vid_test_rearranged = vid_test_normalized.permute(0, 2, 1, 3, 4)  # b t c h w -> b c t h w
    vid_test_latents = vae.encode_to_latent(vid_test_rearranged)
    initial_latent = vid_test_latents[:, :2]
    initial_num = 2
    current_video = video.permute(0, 1, 3, 4, 2)  # b t c h w -> b t h w c
    current_video = current_video[:, (initial_num - 1) * 4 + 1:]
    return initial_latent, current_video


def chain_4gpu(vae, saved):
    """generate_video_chunk of Wan_fps_inference_parallel_4gpu_20s.py (wait_file branch)."""
    latents_chunk_1 = saved
    mask = torch.zeros(1, NUM_LATENT_FRAMES, *LATENT_SHAPE)
    mask[:, 0:1] = latents_chunk_1[:, 0:1]
    mask[:, 1:2] = latents_chunk_1[:, -2:-1]
    mask[:, 2:4] = latents_chunk_1[:, -2:]
    vid = vae.decode_to_pixel(mask)
    vid = (vid * 0.5 + 0.5).clamp(0, 1)
    vid_test = torch.zeros_like(vid)
    vid_test[:, 0:5] = vid[:, 8:13]
    vid_test_normalized = vid_test * 2.0 - 1.0
    vid_test_rearranged = vid_test_normalized.permute(0, 2, 1, 3, 4)
    lat = vae.encode_to_latent(vid_test_rearranged)
    return lat[:, :2], vid[:, 8:13]


SEG_SHAPE = [1, NUM_LATENT_FRAMES, *LATENT_SHAPE]
VIDEO_FRAME_IDX = [0, 40, 75, 76, 151]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--verbose", action="store_true", help="show the release's prints / tqdm bars")
    a = ap.parse_args(argv)
    quiet = not a.verbose
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(1)  # bitwise-reproducible CPU reductions
    torch.set_grad_enabled(False)  # as the release scripts do

    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        t2v, patches_t2v = load_release_tree("MMPL_t2v")
        i2v, patches_i2v = load_release_tree("MMPL_i2v")

    g = Golden()
    findings = {
        "attention per stage (T2V, MMPL_t2v causal_fps_model.py + pipeline)": {
            "stage0 {0,1}": "writes its k/v to cache slots 0,1 and attends cache[0,1] (itself)",
            "stage1 {2,3,10,11,12,19,20}": "19*T in current_start -> frames 19,20 are written to slots 13,14 "
                                           "(start - 6 frames) but RoPE uses their true indices 19,20; attends 0,1 + itself",
            "stage2 {4..9}": "tokens 20*T, 19*T are first removed from attention_vis_index (and their boundary "
                             "frames 4, 9 re-drawn): writes 4..9, attends frames 0..12 (NOT 19, 20)",
            "stage3 {13..18}": "20*T, 19*T appended back; 15*T in current_start -> nothing is written to the "
                               "cache; keys = cat(cache[vis] = frames 0..12, 20, 19 (slots 13, 14), own fresh k/v); "
                               "its t=0 refresh pass changes nothing",
            "every denoise call": "the current frames' NOISY k/v of this step are written to the cache and "
                                  "attended; the stage's t=0 pass over the clean latents overwrites them",
            "segment >= 1": "initial_latent [1,2] written by ONE t=0 pass over frames [0,1] (they attend each other)",
        },
        "attention per stage (I2V, MMPL_i2v)": {
            "stage0 {0} / stage1 {1}": "frame 0 (initial) attends itself; frame 1 attends 0,1",
            "stage2 {2,3,10,11,12,19,20}": "as T2V stage1 (19,20 -> slots 13,14): attends 0,1 + itself",
            "stage3 {4..9}": "NO removal of 19,20 in I2V: attends 0..12, 19, 20",
            "stage4 {13..18}": "no cache write; attends everything (0..12, 19, 20 cached + itself)",
            "segment >= 1": "initial latents [1,2]: frame 0 by its own t=0 pass (attends only itself), then frame 1 "
                            "by another (attends 0,1); the 1-frame stage is then skipped (7 != 1 -> continue)",
        },
        "attention_vis_index order": "list(set(list + current_start)): Python set iteration order of the token "
                                     "offsets, so keys are gathered in a hash order (see the call logs; it differs "
                                     "with 1560 tokens/frame). Softmax attention is permutation invariant: only "
                                     "float rounding depends on it",
        "sampler": "FlowUniPC timesteps are int64 (999, 995, ..., 92: truncated), the model gets t = float(that); "
                   "sigmas are float32 (0.9998 ... 0.0925, 0)",
        "cross-attention": "k_lens=None: all 512 text tokens, zero padding included, are attended (padding rows "
                           "become text_embedding(0) != 0: 505 / 507 padding rows vs 7 / 5 real ones)",
    }

    # -- text
    tg = torch.Generator().manual_seed(SEEDS["text"])
    cond = torch.randn(1, COND_LEN, TEXT_DIM, generator=tg)
    uncond = torch.randn(1, UNCOND_LEN, TEXT_DIM, generator=tg)
    g.put("text/cond", cond, "cond prompt embeds [1, 7, 32]; fed padded with zeros to [1, 512, 32]")
    g.put("text/uncond", uncond, "negative prompt embeds [1, 5, 32]; fed padded with zeros to [1, 512, 32]")
    text_encoder = StubTextEncoder({PROMPT: pad512(cond), ARGS["negative_prompt"]: pad512(uncond)})

    # -- DiT checkpoint in the release layout
    w = build_wrapper(t2v)
    randomize_dit_(w, SEEDS["dit_weights"])
    sd = {k: v.clone() for k, v in w.state_dict().items()}
    eg = torch.Generator().manual_seed(SEEDS["dit_ema"])
    ema = {k: v + 0.01 * torch.randn(v.shape, generator=eg) for k, v in sd.items()}
    ckpt_path = os.path.join(a.out, "t2v_tiny.pt")
    torch.save({"generator": sd, "generator_ema": ema}, ckpt_path)
    ckpt = torch.load(ckpt_path, map_location="cpu")
    del w

    # -- VAE (saved, then reloaded: what engine.models.vae.load_vae reads)
    from diffusers import AutoencoderKLWan
    vae_dir = os.path.join(a.out, "vae")
    build_vae(SEEDS["vae_weights"]).save_pretrained(vae_dir, safe_serialization=True)
    vae = VAEAdapter(AutoencoderKLWan.from_pretrained(vae_dir, low_cpu_mem_usage=False).eval().requires_grad_(False))

    tmp = tempfile.mkdtemp(prefix="mmpl_golden_")
    try:
        # ------------------------------------------------------------- 1. t2v_one
        torch.manual_seed(SEEDS["run"])
        pipe = make_pipeline(t2v, ckpt, vae, text_encoder, os.path.join(tmp, "t2v_one_chunk1.pt"), quiet)
        findings["ddpm_index (randint(980, 1000) in __init__)"] = int(pipe.ddpm_index.flatten()[0])
        findings["ddmp_timestep (ddpm timesteps[ddpm_index] + 1000)"] = float(pipe.ddmp_timestep.flatten()[0])
        rec = Recorder(pipe)
        torch.manual_seed(SEEDS["run"])
        noise = torch.randn(SEG_SHAPE)
        video, out, draws = run_inference(pipe, rec, noise, None, quiet)
        eff, raw = effective_noise_t2v(noise, draws)
        p = "t2v_one/"
        g.put(p + "noise", noise, "segment noise torch.randn([1,21,16,8,8]) after manual_seed(0)")
        g.put(p + "draws", raw, "the 4 torch.randn_like draws of inference, in order: frames 4, 9 (stage2), 13, 18 (stage3) [1,4,16,8,8]")
        g.put(p + "effective_noise", eff, "noise each frame starts from: noise with frames 4,9,13,18 = draws")
        for name, frames in T2V_STAGES.items():
            g.put(p + name, out[:, frames], f"{name} output latents, frames {frames}")
        g.put(p + "final", out, "the 21 output latents (normalised)")
        s0 = rec.schedulers[0]
        g.put(p + "timesteps", s0.timesteps.clone(), "FlowUniPCMultistepScheduler timesteps of one stage (int64, 50)")
        g.put(p + "sigmas", s0.sigmas.clone(), "its sigmas (51, last 0)")
        g.put(p + "first_call/cond", rec.first_outputs[0], "flow_pred of the very first model call (stage0, cond, t=timesteps[0]) [1,2,16,8,8]")
        g.put(p + "first_call/uncond", rec.first_outputs[1], "flow_pred of the first uncond call [1,2,16,8,8]")
        g.put(p + "video_frames", video[0, [0, 40, 80]].permute(0, 2, 3, 1),
              "decoded video (inference's (x*0.5+0.5).clamp(0,1)) frames 0, 40, 80 as [3, 64, 64, 3] (t h w c)")
        findings["t2v boundary add_noise"] = rec.add_noise
        findings["t2v_one call log (pos cache, block 0)"] = rec.call_log()
        findings["t2v_one model calls"] = sum(c["n"] for c in rec.calls)
        stage_stats = {n: {"mean": float(out[:, f].mean()), "std": float(out[:, f].std())} for n, f in T2V_STAGES.items()}
        findings["t2v_one stage output stats"] = stage_stats
        findings["t2v_one video pixel std / saturated fraction"] = [
            float((video * 2 - 1).std()), float(((video * 2 - 1).abs() >= 1.0).float().mean())]
        checks_one = (noise, eff, out, rec)
        del pipe

        # ------------------------------------------------------------- 2. t2v_1gpu
        torch.manual_seed(SEEDS["run"])
        pipe = make_pipeline(t2v, ckpt, vae, text_encoder, os.path.join(tmp, "t2v_1gpu_chunk1.pt"), quiet)
        rec = Recorder(pipe)
        torch.manual_seed(SEEDS["run"])
        noise = torch.randn(SEG_SHAPE)
        initial_latent, all_video, starts = None, [], []
        for seg in range(2):
            starts.append(len(rec.calls))
            video, out, draws = run_inference(pipe, rec, noise, initial_latent, quiet)
            eff, raw = effective_noise_t2v(noise, draws)
            p = f"t2v_1gpu/seg{seg}/"
            if initial_latent is not None:
                g.put(p + "initial_latent", initial_latent, "re-encoded initial latents fed to this segment [1,2,16,8,8]")
            g.put(p + "draws", raw, "randn_like draws for frames 4, 9, 13, 18")
            g.put(p + "effective_noise", eff, "noise with frames 4,9,13,18 = draws (frames 0,1 unused when initial_latent given)")
            g.put(p + "final", out, "the 21 output latents")
            initial_latent, cur = chain_1gpu(vae, video)
            all_video.append(cur)
            noise = torch.randn(SEG_SHAPE)
        full = torch.cat(all_video, dim=1)
        assert full.shape[1] == 152, full.shape
        g.put("t2v_1gpu/video_frames", full[0, VIDEO_FRAME_IDX],
              f"frames {VIDEO_FRAME_IDX} of the concatenated 152-frame output in [0,1], [5, 64, 64, 3] (t h w c; the release writes 255*this)")
        findings["t2v_1gpu call log seg1 (pos cache, block 0)"] = rec.call_log(starts[1])
        del pipe

        # ------------------------------------------------------------- 3. t2v_4gpu
        torch.manual_seed(SEEDS["run"])
        pipe0 = make_pipeline(t2v, ckpt, vae, text_encoder, os.path.join(tmp, "latents_chunk1.pt"), quiet)
        pipe1 = make_pipeline(t2v, ckpt, vae, text_encoder, os.path.join(tmp, "latents_chunk2.pt"), quiet)
        rec0, rec1 = Recorder(pipe0), Recorder(pipe1)
        torch.manual_seed(SEEDS["run"])
        noise0 = torch.randn(SEG_SHAPE)
        noise1 = torch.randn(SEG_SHAPE)
        _, out0, draws0 = run_inference(pipe0, rec0, noise0, None, quiet)
        saved = torch.load(os.path.join(tmp, "latents_chunk1.pt"), map_location="cpu")
        os.remove(os.path.join(tmp, "latents_chunk1.pt"))
        init1, handoff = chain_4gpu(vae, saved)
        _, out1, draws1 = run_inference(pipe1, rec1, noise1, init1, quiet)
        for seg, (nz, dr, o) in enumerate(((noise0, draws0, out0), (noise1, draws1, out1))):
            eff, raw = effective_noise_t2v(nz, dr)
            p = f"t2v_4gpu/seg{seg}/"
            g.put(p + "draws", raw, "randn_like draws for frames 4, 9, 13, 18")
            g.put(p + "effective_noise", eff, "noise with frames 4,9,13,18 = draws")
            g.put(p + "final", o, "the 21 output latents")
        assert torch.equal(saved, torch.cat([out0[:, :1], out0[:, T2V_STAGES["stage1"]]], dim=1))
        g.put("t2v_4gpu/seg0/saved_latents", saved, "latents_chunk1.pt = cat(output[:, :1], stage1 latents) = frames [0,2,3,10,11,12,19,20]")
        g.put("t2v_4gpu/seg1/handoff_frames_cmean", handoff.mean(dim=2),
              "channel mean of decoded frames 8..12 of [f0,f19,f19,f20]+17 zero latents, in [0,1], [1,5,64,64]")
        g.put("t2v_4gpu/seg1/initial_latent", init1, "segment 1's initial latents [1,2,16,8,8]")
        findings["t2v_4gpu seg1 boundary add_noise"] = rec1.add_noise
        del pipe0, pipe1

        # ------------------------------------------------------------- 4. i2v_1gpu
        torch.manual_seed(SEEDS["run"])
        pipe = make_pipeline(i2v, ckpt, vae, text_encoder, os.path.join(tmp, "i2v_chunk1.pt"), quiet)
        rec = Recorder(pipe)
        torch.manual_seed(SEEDS["run"])
        noise = torch.randn(SEG_SHAPE)  # the script forces args.i2v = False: 21 frames
        ig = torch.Generator().manual_seed(SEEDS["image"])
        image = torch.rand(1, 3, 1, VIDEO_HW, VIDEO_HW, generator=ig) * 2 - 1
        g.put("i2v_1gpu/image", image, "input image [1,3,1,64,64] in [-1,1]")
        initial_latent = vae.encode_to_latent(image)
        all_video, starts = [], []
        for seg in range(2):
            starts.append(len(rec.calls))
            video, out, draws = run_inference(pipe, rec, noise, initial_latent, quiet)
            assert not draws, [d[0] for d in draws]
            p = f"i2v_1gpu/seg{seg}/"
            g.put(p + "initial_latent", initial_latent,
                  "initial latents: seg0 = VAE(image) [1,1,16,8,8]; seg1 = re-encoded tail [1,2,16,8,8]")
            g.put(p + "effective_noise", noise, "segment noise = effective noise (no draws in I2V); "
                  + ("frame 0 unused" if seg == 0 else "frames 0, 1 unused"))
            g.put(p + "final", out, "the 21 output latents")
            initial_latent, cur = chain_1gpu(vae, video)
            all_video.append(cur)
            noise = torch.randn(SEG_SHAPE)
        full = torch.cat(all_video, dim=1)
        g.put("i2v_1gpu/video_frames", full[0, VIDEO_FRAME_IDX],
              f"frames {VIDEO_FRAME_IDX} of the concatenated 152-frame output in [0,1], [5, 64, 64, 3] (t h w c)")
        findings["i2v_1gpu call log seg0 (pos cache, block 0)"] = rec.call_log(0, starts[1])
        findings["i2v_1gpu call log seg1 (pos cache, block 0)"] = rec.call_log(starts[1])
        del pipe
    finally:
        for f in os.listdir(tmp):
            os.remove(os.path.join(tmp, f))
        os.rmdir(tmp)

    # ------------------------------------------------------------- sanity checks
    noise, eff, out, rec = checks_one
    assert all(x["sigma"] == 1.0 and x["equals_noise"] for x in findings["t2v boundary add_noise"])
    assert not torch.equal(rec.first_outputs[0], rec.first_outputs[1]), "cond == uncond"
    for name, frames in T2V_STAGES.items():
        d = (out[:, frames] - eff[:, frames]).abs().mean()
        assert d > 0.1, f"{name} barely moved from its noise ({d})"
    for k, t in g.tensors.items():
        if t.dtype == torch.float32:
            assert t.abs().max() < 100, f"{k}: max |x| = {float(t.abs().max())}"
    assert torch.equal(g.tensors["t2v_one/final"], g.tensors["t2v_1gpu/seg0/final"])

    # ------------------------------------------------------------- write
    from safetensors.torch import save_file
    keys = sorted(g.tensors)
    save_file({k: g.tensors[k] for k in keys}, os.path.join(a.out, "golden.safetensors"))
    commit = os.environ.get("MMPL_RELEASE_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", f"--git-dir={MIRROR_GIT}", "rev-parse", "HEAD"],
                                    capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
    manifest = {
        "what": "golden fixtures of the public MMPL release (Tele-AI/MMPL) inference, tiny random "
                "float32 weights on CPU; generated by tests/release/mmpl_golden.py (see its docstring)",
        "release_commit": commit,
        "release_files_sha256": {
            f"{tree}/{rel}": _sha256(os.path.join(RELEASE, tree, rel))
            for tree in ("MMPL_t2v", "MMPL_i2v") for rel in FILES_EXECUTED},
        "patches": patches_t2v + patches_i2v,
        "shims": SHIMS,
        "dit_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in DIT_CONFIG.items()},
        "dit_init": "every parameter re-drawn (torch.Generator(dit_weights) in named_parameters order): "
                    "weights N(0, clamp(fan_in^-1/2, .05, .2)), norm gains 1 + 0.1 N, biases 0.05 N, "
                    "modulation 0.1 N; generator_ema = generator + 0.01 N (Generator(dit_ema))",
        "checkpoint": "t2v_tiny.pt: {'generator': WanFPSWrapper.state_dict(), 'generator_ema': ...}; "
                      "golden runs use 'generator'",
        "vae_config": VAE_CONFIG,
        "vae_folder": "vae/ (diffusers AutoencoderKLWan save_pretrained; load with engine.models.vae.load_vae)",
        "vae_init": "weights N(0, 1/fan_in), gamma 1 + 0.1 N, biases 0.02 N (Generator(vae_weights))",
        "vae_semantics": "encode: posterior mean, (mu - mean) * (1/std); decode: z / (1/std) + mean, "
                         "full causal decode, .float().clamp_(-1, 1); pipeline video = (x*0.5+0.5).clamp(0,1)",
        "sampler": {"solver": "FlowUniPCMultistepScheduler (release wan/utils/fm_solvers_unipc.py)",
                    "steps": 50, "shift": ARGS["timestep_shift"], "num_train_timesteps": 1000,
                    "guidance_scale": ARGS["guidance_scale"],
                    "cfg": "flow = uncond + 5 * (cond - uncond), separate pos/neg KV caches"},
        "tokens_per_frame": TOKENS_PER_FRAME,
        "latent_frame_shape": LATENT_SHAPE,
        "video": {"frames": NUM_VIDEO_FRAMES, "height": VIDEO_HW, "width": VIDEO_HW},
        "seeds": SEEDS,
        "prompts": {"cond": PROMPT, "negative": ARGS["negative_prompt"]},
        "rng_protocol": "manual_seed(run) -> pipeline __init__ (randint) -> manual_seed(run) -> randn noise "
                        "-> inference (randn_like x4 for T2V) -> [chaining] -> randn next noise ...; "
                        "t2v_4gpu: noise0, noise1 drawn first, then seg0, then seg1",
        "t2v_stages": T2V_STAGES,
        "i2v_stages": I2V_STAGES,
        "findings": findings,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                     "python": sys.version.split()[0]},
        "keys": {k: {"shape": list(g.tensors[k].shape), "dtype": str(g.tensors[k].dtype).replace("torch.", ""),
                     "desc": g.desc[k]} for k in keys},
    }
    with open(os.path.join(a.out, "golden.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(a.out) for fn in fns)
    print(f"wrote {len(keys)} tensors to {a.out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
