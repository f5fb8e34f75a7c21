"""Golden fixtures from the *public LongVie release's own inference code* (Vchitect/LongVie).

Run:  python tests/release/longvie_golden.py [--out DIR] [--verbose]
      (release sources read from $LONGVIE_RELEASE, default /tmp/lv: the checkout's root,
      holding diffsynth/ and inference.py)

What it does
------------
Nothing of the release is copied into this repository: at run time a meta-path finder
serves ``diffsynth.*`` modules from the release's own .py files (two asserted text
substitutions, below) and the script runs them on CPU in float32 with tiny random weights:

1. ``forward_nohist``  ``model_fn_wan_video`` (diffsynth/pipelines/wan_video_new_longvie.py)
   on random inputs: latents [1,16,3,4,6], timestep [713.], context [1,7,32], clip_feature
   [1,257,64], y [1,20,3,4,6], dense / sparse [1,36,3,4,6], history_latents=None.
2. ``forward_hist``    the same inputs plus history_latents [1,16,2,4,6].
3. ``loop``            the sampling loop of ``LongViePipeline.__call__`` re-done step by step
   with the release's scheduler object and model_fn (4 steps, shift 5, CFG 5 with a
   different negative context, frame-0 blend with the history's last latent) on the
   forward inputs (3 latent frames).
4. ``chain``           two 81-frame clips through the release's actual
   ``LongViePipeline.__call__`` (constructed directly, not from_pretrained), chained as
   inference.py does: clip 0 ``history=[]``, ``noise=None``; clip 1 ``input_image=video[-1]``,
   ``history=video[-8:]``, ``noise=`` clip 0's returned noise.  3 steps, 32x48, seed 0,
   tiled=False, cfg 5 (default), the negative prompt string of inference.py.  Each clip's
   dense / sparse control video is 81 frames picked from 11 stored uint8 keyframes
   (``longvie_stub_clip.control_frame_index``: frame t = keyframe t*11//81), to keep the
   fixture small.  Every random draw inside the calls is intercepted: the only one is
   generate_noise's seeded torch.randn (the global torch / numpy / python RNGs are untouched).

Tiny models: WanModel(dim=40, in_dim=36, ffn_dim=64, out_dim=16, text_dim=32, freq_dim=256,
patch (1,2,2), num_heads=2, num_layers=3, has_image_input=True), WanModelDualControl(dim=40,
ffn_dim=64, num_heads=2, num_layers=3, control_layers=2): head_dim 20, because the release's
RoPE split of head_dim d into (d - 2*(d//3), d//3, d//3) rotary parts needs even parts (d = 16,
i.e. dim 32 with 2 heads, fails in rope_apply).  Every parameter is re-drawn from a seeded
generator (the zero-initialised combine linears included).  Latent grid 4x6 (video 32x48).

Weights (in --out, default tests/fixtures/longvie/), in the release's layouts:
  base.safetensors         WanModel state_dict (original Wan2.1 checkpoint key names)
  dit_overlay.safetensors  blocks.*.self_attn.* with other values: the release's
                           ``dit_weight_path``, loaded ``pipe.dit.load_state_dict(w, strict=False)``
  control.safetensors      WanModelDualControl state_dict, keys prefixed ``pipe.dual_controller.``
                           (the release's ``control_weight_path``; its loader strips the prefix)
  vae.safetensors          VideoVAE_(dim=2, z_dim=16) state_dict: the original Wan2.1_VAE.pth keys
  golden.safetensors       every recorded tensor; manifest.json describes each one, the
                           configs, seeds, patches, shims, sha256 of every release file
                           executed, and findings checked at run time.
The golden DiT is base + overlay, loaded exactly as ``LongViePipeline.from_pretrained`` does.

Patches applied to the release text (each asserted to match once)
-----------------------------------------------------------------
diffsynth/models/wan_video_dit.py and wan_video_dit_dual_control.py:
  * ``self.img_emb = MLP(1280, dim`` -> ``MLP(64, dim``   CLIP width 1280 -> 64 (fixture size)
Module-level shims (no text change)
-----------------------------------
  * ``diffsynth``, ``diffsynth.models``, ``.pipelines``, ``.prompters``, ``.schedulers`` are bare
    packages (their ``__init__`` files, which import every model/pipeline of DiffSynth, are not
    executed); ``diffsynth.models.ModelManager`` / ``.model_manager`` is a placeholder (only used by
    from_pretrained, not called) and ``diffsynth.models.load_state_dict`` is the release's
    ``diffsynth.models.utils.load_state_dict``.  Every other ``diffsynth.*`` module is the release file.
  * third-party modules absent here or never exercised: ``modelscope`` (snapshot_download),
    ``ftfy`` (tokenizer text cleaning), ``torchvision`` (the real CLIP encoder's transforms) are
    placeholders; ``einops`` is the real package when installed, else a small shim
    (rearrange / repeat / reduce by reshape + permute + expand + mean: bit-identical data movement).
  * ``FLASH_ATTN_3_AVAILABLE = FLASH_ATTN_2_AVAILABLE = SAGE_ATTN_AVAILABLE = False`` in both DiT
    modules: the release's own fallback, ``F.scaled_dot_product_attention``, in float32.
  * text encoder: ``pipe.prompter.tokenizer`` / ``.text_encoder`` stubs (fixed random
    embeddings per prompt string); the release's ``WanPrompter.encode_prompt`` runs as is
    (512-token padding, ``prompt_emb[:, v:] = 0``).
  * CLIP image encoder: tests/release/longvie_stub_clip.py ``StubClipEncoder``.
  * float32 on CPU (inference.py: bfloat16 on CUDA); ``pipe.enable_vram_management()`` (CUDA
    offload wrappers) not applied; from_pretrained's loading lines re-done here (no ModelManager).
  * ``torch.set_grad_enabled(False)``; ``torch.set_num_threads(1)`` (reproducible reductions).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import io
import json
import math
import os
import random
import re
import subprocess
import sys
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "longvie")
RELEASE = os.environ.get("LONGVIE_RELEASE", "/tmp/lv")
MIRROR_GIT = "/work/.mirror/Vchitect+LongVie/repo"

sys.path.insert(0, HERE)
import longvie_stub_clip as stub_clip  # noqa: E402

# ----------------------------------------------------------------------------- tiny config

CLIP_WIDTH = stub_clip.CLIP_WIDTH  # 64 (real: 1280)
TEXT_DIM = 32
# dim 40 / 2 heads = head_dim 20, not the dim 32 (head_dim 16) first planned: the release's
# precompute_freqs_cis_3d(head_dim) splits head_dim into f = d - 2*(d//3), h = w = d//3 rotary
# parts, each needing an even size: d = 16 gives 6 + 5 + 5 (rope_apply fails); d = 20 gives
# 8 + 6 + 6 (the real 128: 44 + 42 + 42).  The control branch (dim // 2, heads // 2) must keep the
# same head_dim, since model_fn feeds it the DiT's freqs: 20, one head.
DIT_CONFIG = dict(dim=40, in_dim=36, ffn_dim=64, out_dim=16, text_dim=TEXT_DIM, freq_dim=256, eps=1e-6,
                  patch_size=(1, 2, 2), num_heads=2, num_layers=3, has_image_input=True)
CONTROL_CONFIG = dict(dim=40, ffn_dim=64, eps=1e-6, num_heads=2, num_layers=3, has_image_input=True,
                      control_layers=2)
VAE_CONFIG = dict(dim=2, z_dim=16)  # VideoVAE_ defaults otherwise: dim_mult [1,2,4,4], num_res_blocks 2
HEIGHT, WIDTH, NUM_FRAMES = 32, 48, 81
LATENT_HW = (HEIGHT // 8, WIDTH // 8)
NUM_LATENT_FRAMES = (NUM_FRAMES - 1) // 4 + 1
FWD_FRAMES, HIST_FRAMES = 3, 2
CHAIN_STEPS, LOOP_STEPS = 3, 4
CONTROL_KEYFRAMES = 11  # control videos: 81 frames picked from 11 stored keyframes (fixture size)
CFG_SCALE, SHIFT, SIGMA_BLEND = 5.0, 5.0, 0.925926

SEEDS = dict(
    dit_weights=1234,     # torch.Generator for every WanModel parameter (base.safetensors)
    dit_overlay=1235,     # torch.Generator for the blocks.*.self_attn.* overlay
    control_weights=1236,  # torch.Generator for every WanModelDualControl parameter
    vae_weights=4321,     # torch.Generator for every VideoVAE_ parameter
    forward_inputs=11,    # torch.Generator for the forward/loop inputs
    loop_noise=12,        # torch.Generator for the loop's noise
    text=77,              # torch.Generator for the prompt embeddings
    image=99,             # longvie_stub_clip.random_uint8_image seed of the first image
    control_videos=500,   # smooth_uint8_keyframes seeds: dense0 = 500, sparse0 = 501, dense1 = 502, sparse1 = 503
    pipeline=0,           # LongViePipeline.__call__(seed=0), as inference.py's --seed default
    clip=stub_clip.SEED,  # longvie_stub_clip parameters
)
PROMPTS = {"clip0": "<longvie golden clip 0 prompt>", "clip1": "<longvie golden clip 1 prompt>"}
PROMPT_LENS = {"clip0": 7, "clip1": 9, "negative": 5}
TEXT_LEN = 512  # WanPrompter(text_len=512)

# ----------------------------------------------------------------------------- release loading

PATCHES = {
    "diffsynth/models/wan_video_dit.py": [
        (r"self\.img_emb = MLP\(1280, dim", f"self.img_emb = MLP({CLIP_WIDTH}, dim",
         f"CLIP feature width 1280 -> {CLIP_WIDTH} (fixture size); MLP = LayerNorm, Linear, GELU, Linear, LayerNorm"),
    ],
    "diffsynth/models/wan_video_dit_dual_control.py": [
        (r"self\.img_emb = MLP\(1280, dim", f"self.img_emb = MLP({CLIP_WIDTH}, dim",
         "same (this file's WanModel copy is imported by the pipeline, not instantiated)"),
    ],
}
BARE = ("diffsynth", "diffsynth.models", "diffsynth.pipelines", "diffsynth.prompters", "diffsynth.schedulers")
SHIMS = [
    "diffsynth, diffsynth.models, .pipelines, .prompters, .schedulers: bare packages (their __init__ "
    "files import all of DiffSynth and are not executed); every other diffsynth.* module is the release file",
    "diffsynth.models.model_manager / diffsynth.models.ModelManager: placeholder (used by from_pretrained "
    "and type hints only); diffsynth.models.load_state_dict = the release's diffsynth.models.utils.load_state_dict; "
    "diffsynth.prompters.WanPrompter = the release's diffsynth.prompters.wan_prompter.WanPrompter",
    "modelscope, ftfy, torchvision(.transforms): placeholder modules (hub download, tokenizer text "
    "cleaning, the real CLIP encoder's transforms: none is exercised)",
    "einops: the installed package, else a shim of rearrange/repeat/reduce (reshape, permute, expand, "
    "mean over the reduced axes) - pure data movement, bit-identical",
    "FLASH_ATTN_3_AVAILABLE / FLASH_ATTN_2_AVAILABLE / SAGE_ATTN_AVAILABLE = False in wan_video_dit(.py, "
    "_dual_control.py): the release's own F.scaled_dot_product_attention fallback, float32",
    "text encoder: pipe.prompter.tokenizer = stub (ids + mask, mask = 1 for the prompt's L tokens of 512), "
    "pipe.prompter.text_encoder = stub returning [1, 512, 32]: the prompt's fixed random rows, then a "
    "non-zero filler (3.0) that the release's encode_prompt must zero; WanPrompter.encode_prompt runs as is",
    "CLIP image encoder: tests/release/longvie_stub_clip.py StubClipEncoder (tanh(proj(pool16x16(img))))",
    "LongViePipeline(device='cpu', torch_dtype=torch.float32) built directly; from_pretrained's loading "
    "lines re-done: dit.load_state_dict(base) (ModelManager), dual_controller.load_state_dict("
    "prefix-stripped control, strict=False), .to(float32), dit.load_state_dict(overlay, strict=False), "
    "height/width_division_factor = vae.upsampling_factor * 2; pipe.enable_vram_management() not applied "
    "(CUDA offload wrappers; inference.py runs bfloat16 on CUDA)",
    "WanVideoVAE(z_dim=16) built, then .model = VideoVAE_(dim=2, z_dim=16).eval().requires_grad_(False) "
    "(real dim 96), weights loaded through the release's WanVideoVAEStateDictConverter.from_civitai",
    "torch.set_grad_enabled(False); torch.set_num_threads(1)",
]

_OWNED = ("diffsynth", "modelscope", "ftfy", "torchvision", "einops")


class _Placeholder:
    def __init__(self, name):
        self._name = name

    def __call__(self, *a, **k):
        raise RuntimeError(f"{self._name} is a placeholder in longvie_golden (not needed by these runs)")


def _placeholder_module(name, attrs, package=False):
    m = types.ModuleType(name)
    m.__file__ = f"<longvie_golden placeholder {name}>"
    if package:
        m.__path__ = []
    for a in attrs:
        setattr(m, a, _Placeholder(f"{name}.{a}"))
    return m


def _einops_shim():
    """rearrange / repeat / reduce for the patterns DiffSynth uses (names, (groups), 1)."""

    def parse(side):
        groups, cur = [], None
        for tok in re.findall(r"\(|\)|[A-Za-z_][A-Za-z0-9_]*|\d+", side):
            if tok == "(":
                cur = []
            elif tok == ")":
                groups.append(cur)
                cur = None
            elif tok.isdigit():
                assert tok == "1", f"einops shim: literal {tok} unsupported"
                if cur is None:
                    groups.append([])
            elif cur is not None:
                cur.append(tok)
            else:
                groups.append([tok])
        return groups

    def ungroup(x, groups, sizes):
        assert x.dim() == len(groups), (tuple(x.shape), groups)
        shape = []
        for g, n in zip(groups, x.shape):
            if not g:
                assert n == 1
                continue
            known = math.prod(sizes[a] for a in g if a in sizes)
            unknown = [a for a in g if a not in sizes]
            if unknown:
                assert len(unknown) == 1 and n % known == 0
                sizes[unknown[0]] = n // known
            else:
                assert known == n
            shape += [sizes[a] for a in g]
        return x.reshape(shape), [a for g in groups for a in g]

    def finish(x, names, right, sizes):
        rnames = [a for g in right for a in g]
        x = x.permute([names.index(a) for a in rnames])
        return x.reshape([math.prod(sizes[a] for a in g) for g in right])

    def rearrange(tensor, pattern, /, **axes):  # axis names may be 'x', 'y', ...
        left, right = (parse(s) for s in pattern.split("->"))
        sizes = dict(axes)
        x, names = ungroup(tensor, left, sizes)
        assert sorted(names) == sorted(a for g in right for a in g), pattern
        return finish(x, names, right, sizes)

    def repeat(tensor, pattern, /, **axes):  # axis names may be 'x', 'y', ...
        left, right = (parse(s) for s in pattern.split("->"))
        sizes = dict(axes)
        x, names = ungroup(tensor, left, sizes)
        for a in [a for g in right for a in g if a not in names]:
            x = x.unsqueeze(-1)
            x = x.expand(*x.shape[:-1], sizes[a])
            names.append(a)
        return finish(x, names, right, sizes)

    def reduce(tensor, pattern, /, reduction):
        assert reduction == "mean", reduction
        left, right = (parse(s) for s in pattern.split("->"))
        sizes = {}
        x, names = ungroup(tensor, left, sizes)
        keep = {a for g in right for a in g}
        red = [i for i, a in enumerate(names) if a not in keep]
        if red:
            x = x.mean(dim=red)
        names = [a for a in names if a in keep]
        return finish(x, names, right, sizes)

    m = types.ModuleType("einops")
    m.__file__ = "<longvie_golden einops shim>"
    m.rearrange, m.repeat, m.reduce = rearrange, repeat, reduce
    return m


class _ReleaseLoader(importlib.abc.Loader):
    def __init__(self, path, rel, applied, executed):
        self.path, self.rel, self.applied, self.executed = path, rel, applied, executed

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        for pattern, repl, why in PATCHES.get(self.rel, []):
            text, n = re.subn(pattern, repl, text)
            if n != 1:
                raise RuntimeError(f"patch {pattern!r} matched {n} times in {self.rel}: release changed?")
            self.applied.append({"file": self.rel, "pattern": pattern, "replacement": repl, "count": n, "why": why})
        self.executed.append(self.rel)
        exec(compile(text, self.path, "exec"), module.__dict__)


class _BareLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        pass


class _ReleaseFinder(importlib.abc.MetaPathFinder):
    def __init__(self, root, applied, executed):
        self.root, self.applied, self.executed = root, applied, executed

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "diffsynth" and not fullname.startswith("diffsynth."):
            return None
        rel = fullname.replace(".", "/")
        d = os.path.join(self.root, rel)
        if fullname in BARE:
            spec = importlib.machinery.ModuleSpec(fullname, _BareLoader(), is_package=True)
            spec.submodule_search_locations = [d]
            return spec
        if os.path.isfile(os.path.join(d, "__init__.py")):
            f = os.path.join(d, "__init__.py")
            return importlib.util.spec_from_file_location(
                fullname, f, loader=_ReleaseLoader(f, rel + "/__init__.py", self.applied, self.executed),
                submodule_search_locations=[d])
        if os.path.isfile(d + ".py"):
            return importlib.util.spec_from_file_location(
                fullname, d + ".py", loader=_ReleaseLoader(d + ".py", rel + ".py", self.applied, self.executed))
        return None


def load_release():
    """Import the release modules this script needs; returns (namespace, patches applied, files executed)."""
    if not os.path.isfile(os.path.join(RELEASE, "diffsynth", "pipelines", "wan_video_new_longvie.py")):
        raise FileNotFoundError(f"LongVie release not found at {RELEASE} (set LONGVIE_RELEASE)")
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in _OWNED}
    applied, executed = [], []
    finder = _ReleaseFinder(RELEASE, applied, executed)
    einops_source = "shim"
    # wan_prompter.py imports transformers.AutoTokenizer: import it before the placeholders exist
    # (transformers probes for torchvision / ftfy with importlib.util.find_spec)
    from transformers import AutoTokenizer  # noqa: F401
    try:
        if "einops" in saved:
            sys.modules["einops"] = saved["einops"]
            einops_source = "einops " + getattr(saved["einops"], "__version__", "?")
        else:
            try:
                import einops
                einops_source = "einops " + einops.__version__
            except ImportError:
                sys.modules["einops"] = _einops_shim()
        sys.modules["modelscope"] = _placeholder_module("modelscope", ["snapshot_download"])
        sys.modules["ftfy"] = _placeholder_module("ftfy", ["fix_text"])
        tv = _placeholder_module("torchvision", [], package=True)
        tvt = _placeholder_module("torchvision.transforms", ["Compose", "Normalize", "Resize", "ToTensor"])
        tv.transforms = tvt
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tvt
        sys.meta_path.insert(0, finder)

        import diffsynth.models  # bare
        import diffsynth.models.utils as mutils
        mm = _placeholder_module("diffsynth.models.model_manager", [])

        class ModelManager:  # placeholder
            def __init__(self, *a, **k):
                raise RuntimeError("ModelManager is a placeholder in longvie_golden")
        mm.ModelManager = ModelManager
        sys.modules["diffsynth.models.model_manager"] = mm
        diffsynth.models.model_manager = mm
        diffsynth.models.ModelManager = ModelManager
        diffsynth.models.load_state_dict = mutils.load_state_dict

        import diffsynth.models.wan_video_dit as wdit
        import diffsynth.models.wan_video_dit_dual_control as wdual
        import diffsynth.models.wan_video_vae as wvae
        import diffsynth.schedulers.flow_match as fm
        import diffsynth.prompters
        import diffsynth.prompters.wan_prompter as wp
        diffsynth.prompters.WanPrompter = wp.WanPrompter
        import diffsynth.pipelines.wan_video_new_longvie as lv
        for m in (wdit, wdual):
            m.FLASH_ATTN_3_AVAILABLE = m.FLASH_ATTN_2_AVAILABLE = m.SAGE_ATTN_AVAILABLE = False
        ns = types.SimpleNamespace(wdit=wdit, wdual=wdual, wvae=wvae, fm=fm, lv=lv, utils=sys.modules["diffsynth.utils"],
                                   einops_source=einops_source)
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        for k in [k for k in sys.modules if k.split(".")[0] in _OWNED]:
            del sys.modules[k]
        sys.modules.update(saved)
    # the pipeline uses the classes it imported; check they are ours
    assert ns.lv.WanModelDualControl is ns.wdual.WanModelDualControl
    assert ns.lv.WanVideoVAE is ns.wvae.WanVideoVAE and ns.lv.FlowMatchScheduler is ns.fm.FlowMatchScheduler
    return ns, applied, sorted(set(executed))


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _release_text(rel):
    with open(os.path.join(RELEASE, rel), encoding="utf-8") as f:
        return f.read()


def _line(rel, needle):
    """'rel:N' of the single line of release file rel containing needle (asserted unique); a needle
    'ANCHOR >> TEXT' is the first line containing TEXT after the (unique) line containing ANCHOR."""
    lines = _release_text(rel).splitlines()
    start = 0
    if " >> " in needle:
        anchor, needle = needle.split(" >> ")
        hits = [i for i, l in enumerate(lines) if anchor in l]
        assert len(hits) == 1, (rel, anchor, hits)
        start = hits[0]
        hits = [i + 1 for i, l in enumerate(lines) if i > start and needle in l][:1]
    else:
        hits = [i + 1 for i, l in enumerate(lines) if needle in l]
    assert len(hits) == 1, (rel, needle, hits)
    return f"{rel}:{hits[0]}"


def check_release_text():
    """The lines of the release this script re-does or relies on, asserted present; returns file:line refs."""
    P = "diffsynth/pipelines/wan_video_new_longvie.py"
    refs = {}
    for key, rel, needle in [
        ("inference.py image = video[-1]", "inference.py", "image = video[-1]"),
        ("inference.py history = video[-8:]", "inference.py", "history = video[-8:]"),
        ("inference.py pipe call", "inference.py", "video, noise = pipe("),
        ("inference.py negative prompt", "inference.py", "negative_prompt=\""),
        ("from_pretrained control prefix strip", P, 'new_key = key.replace("pipe.dual_controller.", "")'),
        ("from_pretrained control load", P, "pipe.dual_controller.load_state_dict(new_state_dict, strict=False)"),
        ("from_pretrained control dtype", P, "pipe.dual_controller = pipe.dual_controller.to(torch_dtype)"),
        ("from_pretrained overlay load", P, "pipe.dit.load_state_dict(new_dit_weight, strict=False)"),
        ("from_pretrained division factor", P, "pipe.height_division_factor = pipe.vae.upsampling_factor * 2"),
        ("scheduler", P, "self.scheduler = FlowMatchScheduler(shift=5, sigma_min=0.0, extra_one_step=True)"),
        ("set_timesteps", P, "self.scheduler.set_timesteps(num_inference_steps, denoising_strength=denoising_strength, shift=sigma_shift)"),
        ("noise passed in -> latents", P, 'inputs_shared["latents"] = noise'),
        ("frame-0 blend sigma", P, "sigma = 0.925926"),
        ("frame-0 blend", P, 'inputs_shared["latents"][:,:,:1] = (1 - sigma) * inputs_shared["history_latents"][:,:,-1:] + sigma * noise[:,:,:1]'),
        ("timestep cast", P, "timestep = timestep.unsqueeze(0).to(dtype=self.torch_dtype, device=self.device)"),
        ("cfg", P, "noise_pred = noise_pred_nega + cfg_scale * (noise_pred_posi - noise_pred_nega)"),
        ("scheduler step", P, 'inputs_shared["latents"] = self.scheduler.step(noise_pred, self.scheduler.timesteps[progress_id], inputs_shared["latents"])'),
        ("decode", P, 'video = self.vae.decode(inputs_shared["latents"], device=self.device, tiled=tiled, tile_size=tile_size, tile_stride=tile_stride)'),
        ("return", P, 'return video, inputs_shared["noise"]'),
        ("history embedder encode", P, "input_latents = pipe.vae.encode(history_video, device=pipe.device, tiled=tiled, tile_size=tile_size, tile_stride=tile_stride)"),
        ("y = [msk, vae]", P, "class WanVideoUnit_ImageEmbedderVAE >> y = torch.concat([msk, y])"),
        ("dense = [msk, first-frame vae]", P, "dense = torch.concat([msk, dense])"),
        ("dense = [video latents, msk, first-frame vae]", P, "dense = torch.cat([dense_latents, dense],dim=1)"),
        ("sparse = [video latents, msk, first-frame vae]", P, "sparse = torch.cat([sparse_latents, sparse],dim=1)"),
        ("history ones channels", P, "history_latents = torch.cat([ones,history_latents], dim=1)"),
        ("history tokens first", P, "x = torch.cat([history, x], dim=1)"),
        ("control injected after history", P, "x[:,history_token:] += dual_controller.control_combine_linears[block_id](dense + sparse)"),
        ("noise generation", P, "noise = pipe.generate_noise(shape, seed=seed, rand_device=rand_device)"),
        ("encode_prompt zero padding", "diffsynth/prompters/wan_prompter.py", "prompt_emb[:, v:] = 0"),
        ("vae encode chunks", "diffsynth/models/wan_video_vae.py", "class VideoVAE_(nn.Module) >> iter_ = 1 + (t - 1) // 4"),
        ("vae_output_to_image", "diffsynth/utils/__init__.py", "image = ((vae_output - min_value) * (255 / (max_value - min_value))).clip(0, 255)"),
        ("uint8 cast", "diffsynth/utils/__init__.py", "image = image.to(device=\"cpu\", dtype=torch.uint8)"),
        ("preprocess_image", "diffsynth/utils/__init__.py", "image = image * ((max_value - min_value) / 255) + min_value"),
        ("generate_noise", "diffsynth/utils/__init__.py", "noise = torch.randn(shape, generator=generator, device=rand_device, dtype=rand_torch_dtype)"),
    ]:
        refs[key] = _line(rel, needle)
    neg = re.search(r'negative_prompt="([^"]*)"', _release_text("inference.py"))
    assert neg, "negative prompt not found in inference.py"
    return refs, neg.group(1)


# ----------------------------------------------------------------------------- weights


def randomize_dit_(module, seed):
    """Every parameter re-drawn in named_parameters order: weights N(0, clamp(fan_in^-1/2, .05, .2)),
    modulation 0.1 N, biases 0.05 N, norm gains 1 + 0.1 N."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(_draw(name, p.shape, gen))


def _draw(name, shape, gen):
    r = torch.randn(shape, generator=gen, dtype=torch.float32)
    if name.endswith("modulation"):
        return 0.1 * r
    if len(shape) >= 2:
        return min(max(math.prod(shape[1:]) ** -0.5, 0.05), 0.2) * r
    if name.endswith("bias"):
        return 0.05 * r
    return 1.0 + 0.1 * r


def randomize_vae_(model, seed):
    """RMS_norm gammas 1 + 0.1 N, other weights N(0, 1/fan_in), biases 0.02 N (named_parameters order)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * r)
            elif p.ndim >= 2:
                p.copy_(r / p[0].numel() ** 0.5)
            else:
                p.copy_(0.02 * r)


@contextlib.contextmanager
def _fresh_rng():
    """Module constructors draw from the global RNG (values overwritten): keep it untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def make_weights(ns, out):
    from safetensors.torch import save_file

    with _fresh_rng():
        dit = ns.wdit.WanModel(**DIT_CONFIG)
        ctl = ns.wdual.WanModelDualControl(**CONTROL_CONFIG)
        vae = ns.wvae.VideoVAE_(**VAE_CONFIG)
    randomize_dit_(dit, SEEDS["dit_weights"])
    randomize_dit_(ctl, SEEDS["control_weights"])
    randomize_vae_(vae, SEEDS["vae_weights"])
    base = {k: v.detach().clone().contiguous() for k, v in dit.state_dict().items()}
    gen = torch.Generator().manual_seed(SEEDS["dit_overlay"])
    overlay = {k: _draw(k, v.shape, gen) for k, v in base.items() if re.fullmatch(r"blocks\.\d+\.self_attn\..*", k)}
    control = {"pipe.dual_controller." + k: v.detach().clone().contiguous() for k, v in ctl.state_dict().items()}
    vae_sd = {k: v.detach().clone().contiguous() for k, v in vae.state_dict().items()}
    files = {"base.safetensors": base, "dit_overlay.safetensors": overlay, "control.safetensors": control,
             "vae.safetensors": vae_sd}
    for name, sd in files.items():
        save_file(sd, os.path.join(out, name))
    return {name: sorted(sd) for name, sd in files.items()}


def load_models(ns, out):
    """The golden models, loaded from the saved files the way the release loads them."""
    from safetensors.torch import load_file

    info = {}
    with _fresh_rng():
        dit = ns.wdit.WanModel(**DIT_CONFIG)
        ctl = ns.wdual.WanModelDualControl(**CONTROL_CONFIG)
        vae = ns.wvae.WanVideoVAE(z_dim=16)
        vae.model = ns.wvae.VideoVAE_(**VAE_CONFIG).eval().requires_grad_(False)
    # ModelManager: WanModel.state_dict_converter().from_civitai (keys unchanged) + load_state_dict
    base = load_file(os.path.join(out, "base.safetensors"))
    base_conv, cfg = ns.wdit.WanModel.state_dict_converter().from_civitai(base)
    assert sorted(base_conv) == sorted(base) and cfg == {}
    dit.load_state_dict(base_conv, strict=True)
    # from_pretrained: control (prefix stripped, strict=False), .to(dtype); overlay strict=False
    control = load_file(os.path.join(out, "control.safetensors"))
    new_state_dict = {k.replace("pipe.dual_controller.", ""): v for k, v in control.items()}
    r = ctl.load_state_dict(new_state_dict, strict=False)
    assert not r.missing_keys and not r.unexpected_keys, r
    ctl = ctl.to(torch.float32)
    overlay = load_file(os.path.join(out, "dit_overlay.safetensors"))
    r = dit.load_state_dict(overlay, strict=False)
    assert not r.unexpected_keys and len(r.missing_keys) == len(base) - len(overlay), r
    info["overlay_keys"] = len(overlay)
    info["base_keys"] = len(base)
    info["control_keys"] = len(control)
    # VAE: WanVideoVAEStateDictConverter.from_civitai (prefix 'model.') + load_state_dict
    vsd = load_file(os.path.join(out, "vae.safetensors"))
    vconv = ns.wvae.WanVideoVAE.state_dict_converter().from_civitai(vsd)
    vae.load_state_dict(vconv, strict=True)
    info["vae_keys"] = len(vsd)
    for m in (dit, ctl, vae):
        m.eval().requires_grad_(False)
    info["param_counts"] = {"dit": sum(p.numel() for p in dit.parameters()),
                            "dual_controller": sum(p.numel() for p in ctl.parameters()),
                            "vae": sum(p.numel() for p in vae.parameters())}
    return dit, ctl, vae, info


# ----------------------------------------------------------------------------- recording


class Golden:
    def __init__(self):
        self.tensors, self.desc = {}, {}

    def put(self, key, t, desc):
        assert key not in self.tensors, key
        t = t.detach().contiguous().clone()
        assert t.dtype in (torch.float32, torch.uint8, torch.int64), (key, t.dtype)
        if t.is_floating_point():
            assert torch.isfinite(t).all(), f"{key}: non-finite values"
        self.tensors[key] = t
        self.desc[key] = desc


_RNG_FUNCS = ("randn", "randn_like", "rand", "rand_like", "randint", "randint_like", "normal", "randperm",
              "bernoulli", "multinomial")


@contextlib.contextmanager
def record_draws(log):
    """Intercept torch's random functions; append (fn, has_generator, tensor) per call.  Also checks the
    global torch / numpy / python RNG states are unchanged on exit."""
    originals = {n: getattr(torch, n) for n in _RNG_FUNCS}
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())

    def wrap(n):
        f = originals[n]

        def g(*a, **k):
            t = f(*a, **k)
            log.append((n, k.get("generator") is not None, t.detach().clone()))
            return t
        return g

    try:
        for n in _RNG_FUNCS:
            setattr(torch, n, wrap(n))
        yield log
    finally:
        for n, f in originals.items():
            setattr(torch, n, f)
    assert torch.equal(torch.get_rng_state(), states[0]), "the global torch RNG was used"
    assert (np.random.get_state()[1] == states[1]).all(), "numpy's global RNG was used"
    assert random.getstate() == states[2], "python's random module was used"


class StubTokenizer:
    """HuggingfaceTokenizer(seq_len=512) as WanPrompter.encode_prompt calls it: (ids, mask) [1, 512]."""

    def __init__(self, prompts):
        self.index = {p: i for i, p in enumerate(prompts)}
        self.lens = dict(prompts)
        self.calls = []

    def __call__(self, prompt, return_mask=False, add_special_tokens=True):
        assert return_mask and add_special_tokens and isinstance(prompt, str)
        self.calls.append(prompt)
        L = self.lens[prompt]
        ids = torch.zeros(1, TEXT_LEN, dtype=torch.int64)
        ids[0, :L] = 1000 * (self.index[prompt] + 1) + torch.arange(L)
        mask = torch.zeros(1, TEXT_LEN, dtype=torch.int64)
        mask[0, :L] = 1
        return ids, mask


class StubTextEncoder(torch.nn.Module):
    """WanTextEncoder(ids, mask) stand-in: [1, 512, 32] = the prompt's rows, then 3.0 filler."""

    def __init__(self, tokenizer, table):
        super().__init__()
        self.tok, self.table = tokenizer, table  # table: prompt -> [1, L, 32]

    def forward(self, ids, mask):
        prompt = [p for p, i in self.tok.index.items() if int(ids[0, 0]) == 1000 * (i + 1)]
        assert len(prompt) == 1
        emb = self.table[prompt[0]]
        L = emb.shape[1]
        assert int(mask.sum()) == L
        out = torch.full((1, TEXT_LEN, TEXT_DIM), 3.0)
        out[:, :L] = emb
        return out


class ModelFnRecorder:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, **kw):
        rec = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()
               if k in ("latents", "timestep", "context", "clip_feature", "y", "dense", "sparse", "history_latents")}
        out = self.fn(**kw)
        rec["out"] = out.detach().clone()
        self.calls.append(rec)
        return out


class VaeRecorder:
    """Wraps pipe.vae.encode / decode (instance attributes) to log every call."""

    def __init__(self, vae):
        self.vae, self.encodes, self.decodes = vae, [], []
        self._enc, self._dec = vae.encode, vae.decode

        def encode(videos, device, **kw):
            out = self._enc(videos, device, **kw)
            self.encodes.append({"in": [v.detach().clone() for v in videos], "out": out.detach().clone(), "kw": kw})
            return out

        def decode(hidden_states, device, **kw):
            out = self._dec(hidden_states, device, **kw)
            self.decodes.append({"in": hidden_states.detach().clone(), "out": out.detach().clone(), "kw": kw})
            return out
        vae.encode, vae.decode = encode, decode

    def restore(self):
        del self.vae.encode, self.vae.decode


# ----------------------------------------------------------------------------- runs


def forward_inputs():
    g = torch.Generator().manual_seed(SEEDS["forward_inputs"])
    T, (h, w) = FWD_FRAMES, LATENT_HW
    return {
        "latents": torch.randn(1, 16, T, h, w, generator=g),
        "timestep": torch.tensor([713.0]),
        "context": torch.randn(1, 7, TEXT_DIM, generator=g),
        "clip_feature": torch.randn(1, 257, CLIP_WIDTH, generator=g),
        "y": torch.randn(1, 20, T, h, w, generator=g),
        "dense": torch.randn(1, 36, T, h, w, generator=g),
        "sparse": torch.randn(1, 36, T, h, w, generator=g),
        "history_latents": torch.randn(1, 16, HIST_FRAMES, h, w, generator=g),
        "negative_context": torch.randn(1, 5, TEXT_DIM, generator=g),
    }


@contextlib.contextmanager
def block_hooks(dit, ctl, store):
    hs = []
    for i, b in enumerate(dit.blocks):
        hs.append(b.register_forward_hook(lambda m, a, o, i=i: store.__setitem__(f"block{i}", o.detach().clone())))
    for i in range(ctl.control_layers):
        for kind in ("dense", "sparse"):
            b = getattr(ctl, f"control_blocks_{kind}")[i]
            hs.append(b.register_forward_hook(
                lambda m, a, o, i=i, kind=kind: store.__setitem__(f"{kind}{i}", o.detach().clone())))
    try:
        yield store
    finally:
        for h in hs:
            h.remove()


def run_forward(ns, dit, ctl, g, findings):
    inp = forward_inputs()
    keep = {k: v.clone() for k, v in inp.items()}
    fn = ns.lv.model_fn_wan_video
    common = dict(dit=dit, dual_controller=ctl, latents=inp["latents"], timestep=inp["timestep"],
                  context=inp["context"], clip_feature=inp["clip_feature"], y=inp["y"], dense=inp["dense"],
                  sparse=inp["sparse"])
    with block_hooks(dit, ctl, {}) as st0:
        out0 = fn(**common, history_latents=None)
    with block_hooks(dit, ctl, {}) as st1:
        out1 = fn(**common, history_latents=inp["history_latents"])
    for k, v in inp.items():
        assert torch.equal(v, keep[k]), f"model_fn mutated its input {k}"
    d = {"latents": "noisy latents [1,16,3,4,6]", "timestep": "timestep [1] float32 (713.0)",
         "context": "text context [1,7,32] (not padded here; the pipeline pads to 512, see chain)",
         "clip_feature": f"CLIP tokens [1,257,{CLIP_WIDTH}]", "y": "image condition [1,20,3,4,6] (= [mask 4, latents 16])",
         "dense": "dense control [1,36,3,4,6]", "sparse": "sparse control [1,36,3,4,6]",
         "history_latents": "history latents [1,16,2,4,6] (forward_hist only)",
         "negative_context": "negative text context [1,5,32] (loop only)"}
    for k, v in inp.items():
        g.put(f"forward/in/{k}", v, d[k])
    fn_ref = "model_fn_wan_video (diffsynth/pipelines/wan_video_new_longvie.py)"
    g.put("forward_nohist/out", out0, f"{fn_ref}(history_latents=None) -> [1,16,3,4,6]")
    g.put("forward_hist/out", out1, f"{fn_ref}(history_latents=forward/in/history_latents) -> [1,16,3,4,6]")
    per_frame = (LATENT_HW[0] // 2) * (LATENT_HW[1] // 2)  # patch (1, 2, 2): 2 x 3 = 6 tokens per latent frame
    cur, hist = FWD_FRAMES * per_frame, HIST_FRAMES * per_frame
    dim = DIT_CONFIG["dim"]
    for name, st, tok in (("forward_nohist", st0, cur), ("forward_hist", st1, cur + hist)):
        for i in range(DIT_CONFIG["num_layers"]):
            g.put(f"{name}/block{i}", st[f"block{i}"],
                  f"output of dit.blocks[{i}] BEFORE the control injection (x [1,{tok},{dim}]"
                  + (f"; history tokens 0..{hist - 1} first)" if tok > cur else ")"))
        for i in range(CONTROL_CONFIG["control_layers"]):
            for kind in ("dense", "sparse"):
                g.put(f"{name}/{kind}{i}", st[f"{kind}{i}"],
                      f"output of dual_controller.control_blocks_{kind}[{i}] [1,{cur},{dim // 2}] (no history tokens)")
    # the control branch matters, the history matters
    assert (out0 - out1).abs().max() > 1e-3
    findings["forward: |out_hist - out_nohist| max"] = float((out0 - out1).abs().max())
    return inp


def run_loop(ns, pipe, dit, ctl, inp, g):
    """LongViePipeline.__call__'s denoising loop, re-done on the forward inputs (3 latent frames)."""
    sched = pipe.scheduler
    sched.set_timesteps(LOOP_STEPS, denoising_strength=1.0, shift=SHIFT)
    gen = torch.Generator().manual_seed(SEEDS["loop_noise"])
    noise = torch.randn(inp["latents"].shape, generator=gen)
    g.put("loop/noise", noise, "loop noise [1,16,3,4,6] (before the frame-0 blend)")
    g.put("loop/sigmas", sched.sigmas, f"FlowMatchScheduler sigmas after set_timesteps({LOOP_STEPS}, 1.0, shift=5)")
    g.put("loop/timesteps", sched.timesteps, "its timesteps (= sigmas * 1000, float32)")
    shared = dict(y=inp["y"], clip_feature=inp["clip_feature"], dense=inp["dense"], sparse=inp["sparse"],
                  history_latents=inp["history_latents"])
    models = {name: getattr(pipe, name) for name in pipe.in_iteration_models}
    assert models["dit"] is dit and models["dual_controller"] is ctl
    latents = noise.clone()
    sigma = SIGMA_BLEND
    latents[:, :, :1] = (1 - sigma) * shared["history_latents"][:, :, -1:] + sigma * latents[:, :, :1]
    g.put("loop/latents_init", latents, "latents after latents[:,:,:1] = (1-0.925926)*history[:,:,-1:] + "
          "0.925926*noise[:,:,:1] (float32 arithmetic, python-float sigma)")
    for progress_id, timestep in enumerate(sched.timesteps):
        t = timestep.unsqueeze(0).to(dtype=torch.float32)
        posi = ns.lv.model_fn_wan_video(**models, latents=latents, timestep=t, context=inp["context"], **shared)
        nega = ns.lv.model_fn_wan_video(**models, latents=latents, timestep=t, context=inp["negative_context"], **shared)
        pred = nega + CFG_SCALE * (posi - nega)
        g.put(f"loop/step{progress_id}/posi", posi, f"step {progress_id}: model_fn with context")
        g.put(f"loop/step{progress_id}/nega", nega, f"step {progress_id}: model_fn with negative_context")
        latents = sched.step(pred, sched.timesteps[progress_id], latents)
        g.put(f"loop/step{progress_id}/latents", latents, f"latents after scheduler.step of step {progress_id}")
    g.put("loop/final", latents, "final latents (= loop/step3/latents)")


def pil_video(frames_u8):
    from PIL import Image
    return [Image.fromarray(f.numpy()) for f in frames_u8]


def video_u8(video):
    return torch.from_numpy(np.stack([np.array(im, dtype=np.uint8) for im in video]))


def run_chain(ns, pipe, vae, negative_prompt, g, findings):
    from PIL import Image

    # text embeddings per prompt string
    tg = torch.Generator().manual_seed(SEEDS["text"])
    table = {}
    prompt_of = {"clip0": PROMPTS["clip0"], "clip1": PROMPTS["clip1"], "negative": negative_prompt}
    for key in ("clip0", "clip1", "negative"):
        table[prompt_of[key]] = torch.randn(1, PROMPT_LENS[key], TEXT_DIM, generator=tg)
        g.put(f"chain/text/{key}", table[prompt_of[key]],
              f"text-encoder rows of the {key} prompt [1,{PROMPT_LENS[key]},32]; the release's encode_prompt "
              f"feeds them padded with zeros to [1,{TEXT_LEN},32]")
    tok = StubTokenizer({prompt_of[k]: PROMPT_LENS[k] for k in ("clip0", "clip1", "negative")})
    pipe.prompter.tokenizer = tok
    pipe.prompter.fetch_models(StubTextEncoder(tok, table))
    clip = stub_clip.StubClipEncoder()
    pipe.image_encoder = clip

    image0 = stub_clip.random_uint8_image(SEEDS["image"], HEIGHT, WIDTH)
    g.put("chain/in/image0", image0, "clip 0 input image, uint8 [32,48,3] (PIL RGB 48x32)")
    ctrl = {}
    index = stub_clip.control_frame_index(NUM_FRAMES, CONTROL_KEYFRAMES)
    g.put("chain/in/control_frame_index", index,
          f"int64 [81]: control video frame t = keyframes[index[t]] (= t * {CONTROL_KEYFRAMES} // 81)")
    for c in range(2):
        for j, kind in enumerate(("dense", "sparse")):
            kf = stub_clip.smooth_uint8_keyframes(SEEDS["control_videos"] + 2 * c + j, CONTROL_KEYFRAMES, HEIGHT, WIDTH)
            ctrl[(c, kind)] = kf[index]
            g.put(f"chain/in/clip{c}/{kind}_keyframes", kf,
                  f"clip {c} {kind} control video keyframes, uint8 [{CONTROL_KEYFRAMES},32,48,3]; the video fed "
                  "to the pipeline (81 PIL frames) is keyframes[chain/in/control_frame_index]")

    sig = inspect.signature(type(pipe).__call__).parameters
    assert sig["num_frames"].default == NUM_FRAMES and sig["cfg_scale"].default == CFG_SCALE
    assert sig["sigma_shift"].default == SHIFT and sig["denoising_strength"].default == 1.0
    assert sig["rand_device"].default == "cpu"

    rec_fn = ModelFnRecorder(pipe.model_fn)
    pipe.model_fn = rec_fn
    vrec = VaeRecorder(pipe.vae)
    image, history, noise = Image.fromarray(image0.numpy()), [], None
    clip_findings = []
    sink = io.StringIO()
    for c in range(2):
        n_fn, n_enc, n_dec, n_clip, n_tok = len(rec_fn.calls), len(vrec.encodes), len(vrec.decodes), len(clip.calls), len(tok.calls)
        noise_in = noise.clone() if noise is not None else None
        draws = []
        with contextlib.ExitStack() as st:
            if not findings["_verbose"]:
                st.enter_context(contextlib.redirect_stdout(sink))
                st.enter_context(contextlib.redirect_stderr(sink))
            st.enter_context(record_draws(draws))
            video, noise_out = pipe(
                input_image=image,
                prompt=PROMPTS[f"clip{c}"],
                negative_prompt=negative_prompt,
                seed=SEEDS["pipeline"],
                tiled=False,
                height=HEIGHT,
                width=WIDTH,
                dense_video=pil_video(ctrl[(c, "dense")]),
                sparse_video=pil_video(ctrl[(c, "sparse")]),
                history=history,
                noise=noise,
                num_inference_steps=CHAIN_STEPS,
            )
        calls = rec_fn.calls[n_fn:]
        encs, decs = vrec.encodes[n_enc:], vrec.decodes[n_dec:]
        p = f"chain/clip{c}/"
        # --- random draws: exactly one, generate_noise's seeded torch.randn
        assert [(n, hg) for n, hg, _ in draws] == [("randn", True)], [(n, hg) for n, hg, _ in draws]
        ref_noise = torch.randn((1, 16, NUM_LATENT_FRAMES, *LATENT_HW), generator=torch.Generator().manual_seed(SEEDS["pipeline"]))
        assert torch.equal(draws[0][2], ref_noise) and torch.equal(noise_out, ref_noise)
        # --- model calls: posi, nega per step; only context differs
        assert len(calls) == 2 * CHAIN_STEPS
        for s in range(CHAIN_STEPS):
            a, b = calls[2 * s], calls[2 * s + 1]
            for k in ("latents", "timestep", "clip_feature", "y", "dense", "sparse"):
                assert torch.equal(a[k], b[k]), k
            assert (a["history_latents"] is None) == (b["history_latents"] is None) == (c == 0)
            assert a["context"].shape == b["context"].shape == (1, TEXT_LEN, TEXT_DIM)
        first = calls[0]
        ts = torch.stack([calls[2 * s]["timestep"] for s in range(CHAIN_STEPS)])
        g.put(p + "timesteps", ts, "timestep fed to model_fn per step [3,1] float32 (scheduler.timesteps[i].unsqueeze(0))")
        g.put(p + "latents_init", first["latents"], "latents fed to the first model call [1,16,21,4,6]"
              + (" = the seed-0 noise" if c == 0 else ": the passed noise with frame 0 blended with history_latents[:,:,-1:]"))
        for s in range(1, CHAIN_STEPS):
            g.put(p + f"step{s}/latents", calls[2 * s]["latents"], f"latents fed to the model at step {s}")
        g.put(p + "step0/posi", calls[0]["out"], "model_fn output, positive prompt, step 0")
        g.put(p + "y", first["y"], "y [1,20,21,4,6] = cat([mask (4), vae.encode(image + 80 zero frames) (16)])")
        g.put(p + "dense", first["dense"], "dense [1,36,21,4,6] = cat([vae.encode(dense video), mask (4), "
              "vae.encode(dense frame 0 + 80 zero frames)])")
        g.put(p + "sparse", first["sparse"], "sparse [1,36,21,4,6], same layout as dense")
        assert torch.equal(first["clip_feature"], stub_clip.stub_clip_tokens(clip.calls[n_clip][0]))
        pre = clip.calls[n_clip][0]
        img_u8 = torch.from_numpy(np.array(image, dtype=np.uint8))
        assert torch.equal(pre, (img_u8.to(torch.float32) * (2 / 255) + (-1)).permute(2, 0, 1)[None]), "preprocess_image"
        if c == 1:
            g.put(p + "history_latents", first["history_latents"],
                  "history_latents [1,16,2,4,6] = vae.encode(preprocess_video(video0[-8:]))")
        # context check: zero padded, filler removed
        ctx_p, ctx_n = first["context"], calls[1]["context"]
        for ctx, key in ((ctx_p, f"clip{c}"), (ctx_n, "negative")):
            L = PROMPT_LENS[key]
            assert torch.equal(ctx[:, :L], table[prompt_of[key]]) and not ctx[:, L:].any()
        assert tok.calls[n_tok:] == [PROMPTS[f"clip{c}"], negative_prompt]
        # --- VAE calls
        labels = (["history = preprocess_video(video0[-8:])"] if c == 1 else []) + [
            "y: preprocess(image) + 80 zero frames", "dense video", "sparse video",
            "dense frame 0 + 80 zero frames", "sparse frame 0 + 80 zero frames"]
        assert len(encs) == len(labels) and all(len(e["in"]) == 1 for e in encs)
        enc_log = [f"{lab}: {list(e['in'][0].shape)} -> {list(e['out'].shape)}, tiled={e['kw'].get('tiled')}"
                   for lab, e in zip(labels, encs)]
        # channel layouts, checked against the logged VAE encodes
        mask = torch.zeros(4, NUM_LATENT_FRAMES, *LATENT_HW)
        mask[:, 0] = 1
        by_input = {}
        for e in encs:
            by_input.setdefault(tuple(e["in"][0].shape), []).append(e)
        full = by_input[(3, NUM_FRAMES, HEIGHT, WIDTH)]
        assert len(full) == 5 and len(encs) == 5 + (c == 1)
        img_t = (img_u8.to(torch.float32) * (2 / 255) + (-1)).permute(2, 0, 1)
        y_enc, dv_enc, sv_enc, d0_enc, s0_enc = full
        assert [id(e) for e in encs[-5:]] == [id(e) for e in full]  # the order the labels say
        assert torch.equal(y_enc["in"][0][:, 0], img_t) and not y_enc["in"][0][:, 1:].any()
        for k_enc, kind in ((dv_enc, "dense"), (sv_enc, "sparse")):
            vid_t = ctrl[(c, kind)].to(torch.float32) * (2 / 255) + (-1)
            assert torch.equal(k_enc["in"][0], vid_t.permute(3, 0, 1, 2))
        for k_enc, kind in ((d0_enc, "dense"), (s0_enc, "sparse")):
            assert torch.equal(k_enc["in"][0][:, 0], (ctrl[(c, kind)][0].to(torch.float32) * (2 / 255) + (-1)).permute(2, 0, 1))
            assert not k_enc["in"][0][:, 1:].any()
        assert torch.equal(first["y"][0, :4], mask) and torch.equal(first["y"][:, 4:], y_enc["out"])
        for key, vid_enc, f0_enc in (("dense", dv_enc, d0_enc), ("sparse", sv_enc, s0_enc)):
            t = first[key]
            assert torch.equal(t[:, :16], vid_enc["out"]) and torch.equal(t[0, 16:20], mask)
            assert torch.equal(t[:, 20:], f0_enc["out"])
        if c == 1:
            assert torch.equal(first["history_latents"], by_input[(3, 8, HEIGHT, WIDTH)][0]["out"])
        final = decs[0]["in"]
        assert len(decs) == 1
        g.put(p + "final_latents", final, "latents after the last step = vae.decode input [1,16,21,4,6]")
        vid = video_u8(video)
        assert vid.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
        g.put(p + "video", vid, "returned video: 81 PIL frames as uint8 [81,32,48,3]")
        x = decs[0]["out"][0].permute(1, 2, 3, 0)
        trunc = ((x - (-1)) * (255 / (1 - (-1)))).clip(0, 255).to(torch.uint8)
        rnd = ((x + 1) * 127.5).round().clip(0, 255).to(torch.uint8)
        assert torch.equal(trunc, vid)
        # --- extra check of the history encode: frames 5..7 of the 8 do not matter
        cf = {"clip": c, "vae.encode calls (in order)": enc_log,
              "noise passed in mutated by the frame-0 blend": (None if noise_in is None else not torch.equal(noise_in, noise)),
              "returned noise == generate_noise(seed=0)": True,
              "uint8 frames differing from round()": int((rnd != vid).sum()),
              "decoded pixel std / saturated fraction": [float(decs[0]["out"].std()), float((decs[0]["out"].abs() >= 1).float().mean())]}
        if c == 1:
            hist_in = [e for e in encs if e["in"][0].shape[1] == 8]
            assert len(hist_in) == 1
            h8 = hist_in[0]["in"][0]
            h5 = vrec._enc([h8[:, :5]], device="cpu", tiled=False)
            h8b = h8.clone()
            h8b[:, 5:] = 0
            h8z = vrec._enc([h8b], device="cpu", tiled=False)
            cf["history encode == encode(first 5 of the 8 frames)"] = bool(torch.equal(h5, hist_in[0]["out"]))
            cf["history encode unchanged when frames 5..7 are zeroed"] = bool(torch.equal(h8z, hist_in[0]["out"]))
            blend = (1 - SIGMA_BLEND) * first["history_latents"][:, :, -1:] + SIGMA_BLEND * noise_in[:, :, :1]
            assert torch.equal(first["latents"][:, :, :1], blend) and torch.equal(first["latents"][:, :, 1:], noise_in[:, :, 1:])
            assert torch.equal(noise[:, :, :1], blend), "the passed noise was expected to be blended in place"
        if c == 0:
            g.put("chain/noise", noise_out, "generate_noise((1,16,21,4,6), seed=0, rand_device='cpu') float32: "
                  "clip 0's initial latents and the noise every call returns")
        clip_findings.append(cf)
        image, history, noise = video[-1], video[-8:], noise_out
    vrec.restore()
    findings["chain"] = clip_findings


# ----------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--verbose", action="store_true", help="show the release's prints / tqdm bars")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)

    refs, negative_prompt = check_release_text()
    ns, patches, executed = load_release()
    weight_keys = make_weights(ns, a.out)
    dit, ctl, vae, load_info = load_models(ns, a.out)

    with _fresh_rng():
        pipe = ns.lv.LongViePipeline(device="cpu", torch_dtype=torch.float32)
    pipe.dit, pipe.dual_controller, pipe.vae = dit, ctl, vae
    pipe.height_division_factor = pipe.vae.upsampling_factor * 2
    pipe.width_division_factor = pipe.vae.upsampling_factor * 2
    assert pipe.scheduler.shift == 5 and pipe.scheduler.sigma_min == 0.0 and pipe.scheduler.extra_one_step
    assert pipe.dit2 is None and pipe.vace is None and pipe.motion_controller is None and pipe.animate_adapter is None

    g = Golden()
    findings = {"_verbose": a.verbose}
    inp = run_forward(ns, dit, ctl, g, findings)
    run_loop(ns, pipe, dit, ctl, inp, g)
    run_chain(ns, pipe, vae, negative_prompt, g, findings)
    del findings["_verbose"]

    for k, t in g.tensors.items():
        if t.is_floating_point() and "timestep" not in k:
            assert t.abs().max() < 100, f"{k}: max |x| = {float(t.abs().max())}"
    assert not torch.equal(g.tensors["chain/clip0/video"], g.tensors["chain/clip1/video"])

    from safetensors.torch import save_file
    keys = sorted(g.tensors)
    save_file({k: g.tensors[k] for k in keys}, os.path.join(a.out, "golden.safetensors"))
    commit = os.environ.get("LONGVIE_RELEASE_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", f"--git-dir={MIRROR_GIT}", "rev-parse", "HEAD"],
                                    capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
    manifest = {
        "what": "golden fixtures of the public LongVie release (Vchitect/LongVie) inference, tiny random "
                "float32 weights on CPU; generated by tests/release/longvie_golden.py (see its docstring)",
        "release_commit": commit,
        "release_files_sha256": {rel: _sha256(os.path.join(RELEASE, rel)) for rel in executed + ["inference.py"]},
        "patches": patches,
        "shims": SHIMS,
        "dit_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in DIT_CONFIG.items()},
        "dit_class": "diffsynth/models/wan_video_dit.py WanModel (what ModelManager builds for 'wan_video_dit'; "
                     "identical text to the WanModel in wan_video_dit_dual_control.py)",
        "control_config": CONTROL_CONFIG,
        "control_branch": "DiTBlock(has_image_input=True, dim 20, 1 head of 20, ffn 32) x 2 per branch (dense, sparse)",
        "head_dim": "20 (dim 40 / 2 heads; RoPE parts f 8, h 6, w 6 complex-pair dims x2); dim 32 / 2 heads = 16 "
                    "does not work with the release's precompute_freqs_cis_3d (6 + 5 + 5 rotary dims)",
        "clip_width": CLIP_WIDTH,
        "vae_config": {"class": "diffsynth/models/wan_video_vae.py VideoVAE_", **VAE_CONFIG,
                       "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
                       "temperal_downsample": [False, True, True],
                       "scale": "WanVideoVAE's Wan2.1 mean/std: encode (mu - mean) / std (posterior mean), "
                                "decode z * std + mean, clamp_(-1, 1)"},
        "weights_init": {
            "dit / dual_controller": "every parameter re-drawn in named_parameters order from "
                                     "torch.Generator(seed): weights (ndim >= 2) N(0, clamp(fan_in^-1/2, .05, .2)), "
                                     "*modulation 0.1 N, biases 0.05 N, norm gains 1 + 0.1 N (the zero-initialised "
                                     "combine linears and the head are random too)",
            "overlay": "blocks.*.self_attn.* re-drawn by the same rule from Generator(dit_overlay), sorted-key "
                       "order of base.safetensors",
            "vae": "gamma 1 + 0.1 N, weights N(0, 1/fan_in), biases 0.02 N (named_parameters order)",
        },
        "weight_files": {name: {"keys": len(ks), "layout": desc} for (name, ks), desc in zip(weight_keys.items(), [
            "WanModel.state_dict(): original Wan2.1 DiT key names (blocks.N.self_attn.q.weight, img_emb.proj.0.weight, ...)",
            "subset of base keys (blocks.*.self_attn.*); loaded strict=False over base",
            "'pipe.dual_controller.' + WanModelDualControl.state_dict() keys",
            "VideoVAE_.state_dict(): Wan2.1_VAE.pth keys (encoder.conv1.weight, ...)"])},
        "load_info": load_info,
        "seeds": SEEDS,
        "prompts": {"clip0": PROMPTS["clip0"], "clip1": PROMPTS["clip1"], "negative": negative_prompt,
                    "lengths": PROMPT_LENS, "padded_to": TEXT_LEN},
        "shapes": {"height": HEIGHT, "width": WIDTH, "num_frames": NUM_FRAMES, "latent_frames": NUM_LATENT_FRAMES,
                   "latent_hw": list(LATENT_HW), "forward_latent_frames": FWD_FRAMES, "history_latent_frames": HIST_FRAMES},
        "sampler": {"scheduler": "FlowMatchScheduler(shift=5, sigma_min=0.0, extra_one_step=True)",
                    "chain_steps": CHAIN_STEPS, "loop_steps": LOOP_STEPS, "shift": SHIFT, "cfg_scale": CFG_SCALE,
                    "frame0_blend_sigma": SIGMA_BLEND},
        "chain_calls": "pipe(input_image=image, prompt=P_c, negative_prompt=<inference.py's>, seed=0, tiled=False, "
                       "height=32, width=48, dense_video=<81 PIL>, sparse_video=<81 PIL>, history=history, "
                       "noise=noise, num_inference_steps=3); then image = video[-1]; history = video[-8:]; "
                       "noise = returned noise (num_frames 81, cfg_scale 5, sigma_shift 5: defaults)",
        "release_refs": refs,
        "findings": {
            "y channels": f"[mask 4, vae latents 16] ({refs['y = [msk, vae]']}); the DiT input is "
                          "cat([latents 16, y 20]) = [noise 0:16, mask 16:20, image latents 20:36]",
            "mask": "ones(1, 81, h, w), frames 1: = 0, frame 0 repeated 4x -> 84 -> view [1,21,4,h,w] -> "
                    "transpose -> [4,21,h,w]: all 4 channels 1 at latent frame 0, 0 elsewhere",
            "dense / sparse channels": f"[vae.encode(control video) 16, mask 4, vae.encode(control frame 0 + 80 "
                                       f"zero frames) 16] ({refs['dense = [video latents, msk, first-frame vae]']}); "
                                       "patchified by dit.patch_embedding, then control_initial_combine_linear_*",
            "history channels": f"cat([ones 20, history latents 16]) ({refs['history ones channels']}): the ones "
                                "fill the noise (0:16) AND mask (16:20) slots, the history latents sit in the "
                                "image-latent slot 20:36 - NOT [latents 16, ones 20]",
            "history tokens": f"prepended to x ({refs['history tokens first']}); RoPE over f_h + f frames "
                              "(history at frame positions 0..f_h-1, current at f_h..); the control branch uses "
                              "the current frames' RoPE (0..f-1) and is added only to x[:, history_token:] "
                              f"({refs['control injected after history']}); history tokens dropped before the head",
            "history timestep": "no separate timestep: the history tokens get the same t_mod as the current "
                                "tokens (the current denoising timestep), seperated_timestep=False",
            "history encode": f"video[-8:] -> preprocess_video -> vae.encode ({refs['history embedder encode']}): "
                              f"{refs['vae encode chunks']} iter_ = 1 + (8-1)//4 = 2 chunks: frame [0] and "
                              "frames [1:5] -> 2 latents; frames 5, 6, 7 of the 8 (clip frames 78, 79, 80) are "
                              "never encoded (checked: encode of the first 5 frames is bit-identical)",
            "frame-0 blend": f"{refs['frame-0 blend']}: latents IS the passed noise tensor, so the blend writes "
                             "into the caller's noise in place (the caller's variable is then replaced by the "
                             "returned noise); the blend uses history_latents[:,:,-1:] = the latent of clip frames "
                             "74..77 (causal: it also sees frame 73 through the encoder cache)",
            "returned noise": f"{refs['return']} returns inputs_shared['noise'] = generate_noise(seed) of THIS "
                              "call, not the noise passed in: with a fixed seed every clip starts from the same "
                              "noise values (frame 0 blended for clips >= 1)",
            "noise": f"{refs['generate_noise']}: torch.randn((1,16,21,h,w), generator=Generator('cpu')"
                     ".manual_seed(seed), float32), then .to(pipe dtype); the only random draw of a call",
            "prompt embeddings": f"padded: WanPrompter.encode_prompt tokenizes to 512 and zeroes rows >= the real "
                                 f"length ({refs['encode_prompt zero padding']}); model_fn gets [1,512,32] and the "
                                 "cross-attention attends all 512 (no mask) after cat([img_emb(clip) 257, "
                                 "text_embedding(context) 512])",
            "vae_output_to_video": f"{refs['vae_output_to_image']}: ((x + 1) * 127.5).clip(0, 255) then "
                                   ".to(uint8) = TRUNCATION (no rounding); x = decode(...).clamp_(-1, 1); the "
                                   "einops reduce 'B C T H W -> T H W C' mean over B=1",
            "preprocess_image": f"{refs['preprocess_image']}: u8 float32 * (2/255) + (-1), HWC -> [1,C,H,W]",
            "scheduler": "sigmas = shift*s/(1+(shift-1)*s) for s = linspace(1, 0, N+1)[:-1]; timesteps = "
                         "sigmas*1000 (float); step: x + v*(sigma_next - sigma), sigma_next = 0 after the last",
            "cfg": "two model_fn calls per step (cfg_merge False), only context differs (the negative pass gets "
                   "the same history / y / dense / sparse / clip_feature); pred = nega + 5 * (posi - nega)",
            "chain timesteps": [float(x) for x in g.tensors["chain/clip0/timesteps"].flatten()],
            "control branch": "dense / sparse are patchified by the BASE DiT's patch_embedding (36 channels), then "
                              "control_initial_combine_linear_* (dim -> dim/2); control_context = "
                              "control_text_linear(context) where context = cat([img_emb(clip) 257, "
                              "text_embedding(text)]); control_t_mod = control_t_mod(t_mod) applied to the [1, 6, dim] "
                              "modulation (not to t); after DiT block i < control_layers: x[current] += "
                              "control_combine_linears[i](dense_i + sparse_i); with history the control tokens use "
                              "RoPE positions 0..f-1 while the current tokens they are added to sit at f_h..f_h+f-1",
            **findings,
        },
        "versions": {"torch": torch.__version__, "einops": ns.einops_source, "python": sys.version.split()[0]},
        "keys": {k: {"shape": list(g.tensors[k].shape), "dtype": str(g.tensors[k].dtype).replace("torch.", ""),
                     "desc": g.desc[k]} for k in keys},
    }
    with open(os.path.join(a.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(a.out, fn)) for fn in os.listdir(a.out))
    print(f"wrote {len(keys)} tensors to {a.out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
