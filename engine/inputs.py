"""Inputs of a generation run: the model(s), the VAE and text encoder, the text/image
context, the first frame, and the checks that the requested video fits the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import EngineConfig
from .models.wan import WanDiT


@dataclass
class Components:
    """Everything besides the DiT that a run needs: the VAE (decode / first-frame encode)
    and, optionally, a text encoder. ``random_weights``: the DiT is an untrained preset."""

    vae: torch.nn.Module
    text_encoder: object | None
    random_weights: bool


def resolve_model(model, dtype, device, engine_config: EngineConfig | None = None,
                  checkpoint_key: str | None = None) -> WanDiT:
    """A loaded model; an EngineConfig sets its device, dtype, attention backend and fused ops;
    ``checkpoint_key`` picks a training checkpoint's dict (``generator`` / ``generator_ema``).
    Any other module with the Wan call convention (``config``, ``device``, ``dtype``; e.g.
    a CogVideoX DiT) is used as given, moved to ``device`` / ``dtype`` when asked."""
    ec = engine_config
    if ec is not None:
        device = device or ec.devices[0]
        dtype = dtype or ec.dtype
    if isinstance(model, torch.nn.Module) and not isinstance(model, WanDiT):
        if device is not None or dtype is not None:
            from .config import parse_dtype

            dev = torch.device(device) if device is not None else model.device
            model = model.to(device=dev, dtype=parse_dtype(dtype, dev) if dtype is not None else model.dtype)
        return model
    if not isinstance(model, WanDiT) and is_cogvideox_source(model):
        from .models.adapters import as_flow_model
        from .models.cogvideox_control import load_cogvideox_with_controls

        kw = {} if ec is None else dict(attention_backend=ec.attention_backend)
        return as_flow_model(load_cogvideox_with_controls(model, dtype=dtype, device=device, **kw))
    if not isinstance(model, WanDiT):
        from .loading import load_model

        kw = {} if ec is None else dict(attention_backend=ec.attention_backend, fused_ops=ec.fused_ops)
        if checkpoint_key is not None:
            kw["checkpoint_key"] = checkpoint_key  # a training checkpoint's dict (other formats have none)
        return load_model(model, dtype=dtype, device=device, **kw)
    if ec is not None and (model.attention_backend, model.fused_ops) != (ec.attention_backend, ec.fused_ops):
        import copy

        model = copy.copy(model)  # the same weights and modules; the caller's model keeps its own settings
        model.attention_backend, model.fused_ops = ec.attention_backend, ec.fused_ops
    if device is not None or dtype is not None:
        from .config import parse_dtype

        dev = torch.device(device) if device is not None else model.device
        model = model.to(device=dev, dtype=parse_dtype(dtype, dev) if dtype is not None else model.dtype)
    return model


def resolve_role_model(model, dtype, device, engine_config: EngineConfig | None = None):
    """A main / coarse / fine model: :func:`resolve_model`, a CogVideoX DiT (v-prediction on
    a DDPM schedule) wrapped as a flow-velocity predictor
    (:class:`~engine.models.adapters.VPredictionAdapter`)."""
    from .models.adapters import as_flow_model

    return as_flow_model(resolve_model(model, dtype, device, engine_config))


def is_cogvideox_source(model) -> bool:
    """A CogVideoX preset name, or a path to a CogVideoX pipeline root / transformer folder
    (its ``model_index.json`` or ``config.json`` names a CogVideoX class)."""
    import json

    from .models.cogvideox import COGVIDEOX_PRESETS

    if not isinstance(model, (str, Path)):
        return False
    p = Path(model).expanduser()
    if not p.exists():
        return str(model).lower() in COGVIDEOX_PRESETS
    if (_pipeline_class(p) or "").startswith("CogVideoX"):
        return True
    for cand in (p / "config.json", p / "transformer" / "config.json"):
        try:
            if json.loads(cand.read_text()).get("_class_name", "").startswith("CogVideoX"):
                return True
        except (OSError, ValueError):
            continue
    return False


def is_cogvideox(model) -> bool:
    """Whether ``model`` (or the DiT a VPredictionAdapter wraps) is a CogVideoX DiT."""
    from .models.cogvideox import CogVideoXConfig

    return isinstance(getattr(model, "config", None), CogVideoXConfig)


def _pipeline_root(source) -> Path | None:
    """The diffusers pipeline root (holding ``model_index.json``) of a model's source path."""
    if source is None:
        return None
    for cand in (Path(source), Path(source).parent):
        if (cand / "model_index.json").exists():
            return cand
    return None


def _origin(model):
    """(config, source path or None, random weights?, device, diffusers pipeline root or None)
    of a DiT: where its components are looked for."""
    source = getattr(model, "source", None)
    return model.config, source, source is None, model.device, _pipeline_root(source)


def _pipeline_class(path) -> str | None:
    """``_class_name`` of the ``model_index.json`` in ``path`` or its parent (a component folder)."""
    import json

    for cand in (Path(path), Path(path).parent):
        try:
            return json.loads((cand / "model_index.json").read_text()).get("_class_name")
        except (OSError, ValueError):
            continue
    return None


def _is_wan_vae(vae) -> bool:
    cfg = getattr(vae, "config", None)
    return type(vae).__name__ == "AutoencoderKLWan" or (hasattr(cfg, "z_dim") and hasattr(cfg, "latents_mean"))


def _refuse_cogvideox_parts(model, vae, text_encoder) -> None:
    """A Wan DiT given CogVideoX's VAE or T5 encoder (object, folder or CogVideoX pipeline
    root): a ValueError saying why, before anything is loaded."""
    from .models.cogvideox_vae import is_cogvideox_vae, is_cogvideox_vae_folder, scaling_factor

    name = getattr(model.config, "name", type(model).__name__)
    if (isinstance(vae, (str, Path)) and is_cogvideox_vae_folder(vae)) or (
            vae is not None and not isinstance(vae, (str, Path)) and is_cogvideox_vae(vae)):
        sf = "" if isinstance(vae, (str, Path)) else f" {scaling_factor(vae):g}"
        raise ValueError(
            f"model {name!r} is a Wan DiT: it needs the Wan VAE (AutoencoderKLWan, latents normalised per channel by "
            f"latents_mean / latents_std); the VAE given is CogVideoX's AutoencoderKLCogVideoX (latents = posterior x "
            f"scaling_factor{sf}, no per-channel statistics), whose latents are not this model's. Pass a Wan VAE "
            f"folder (e.g. Wan2.1-T2V-1.3B-Diffusers/vae)")
    cog_text = getattr(text_encoder, "family", None) == "cogvideox"
    if isinstance(text_encoder, (str, Path)):
        from .models.cogvideox_text import text_encoder_model_type

        cls = _pipeline_class(text_encoder) or ""
        cog_text = cls.startswith("CogVideoX") and text_encoder_model_type(text_encoder) == "t5"
    if cog_text:
        raise ValueError(
            f"model {name!r} is a Wan DiT conditioned on UMT5 embeddings (512 tokens, padding zeroed); the text "
            f"encoder given is CogVideoX's T5 (226 tokens, padding states kept), another text space. Pass a Wan "
            f"pipeline root or its UMT5 text_encoder folder")


def _check_cogvideox_vae(model, vae) -> None:
    from .models.cogvideox_vae import is_cogvideox_vae, latent_channels, scaling_factor

    cfg = model.config
    if _is_wan_vae(vae):
        raise ValueError(
            f"model {cfg.name!r} is a CogVideoX DiT: it was trained on AutoencoderKLCogVideoX latents "
            f"({cfg.out_channels} channels, posterior x scaling_factor); the VAE given is a Wan AutoencoderKLWan "
            f"(latents normalised per channel by latents_mean / latents_std), whose latents are not this model's. "
            f"Pass the vae/ folder of the model's CogVideoX pipeline, or load the model from its pipeline root")
    if is_cogvideox_vae(vae):
        if latent_channels(vae) != cfg.out_channels:
            raise ValueError(
                f"the CogVideoX VAE has {latent_channels(vae)} latent channels but model {cfg.name!r} denoises "
                f"{cfg.out_channels}: they are not one pipeline's components")
        if not scaling_factor(vae) > 0:
            raise ValueError(f"the CogVideoX VAE's scaling_factor is {scaling_factor(vae)}; it must be positive")


def _check_cogvideox_text(model, text_encoder) -> None:
    from .models.text import TextEncoder

    cfg = model.config
    if text_encoder is None:
        return
    model_type = getattr(getattr(getattr(text_encoder, "model", None), "config", None), "model_type", None)
    wan = isinstance(text_encoder, TextEncoder) and getattr(text_encoder, "family", None) != "cogvideox"
    if wan or model_type == "umt5":
        raise ValueError(
            f"model {cfg.name!r} is a CogVideoX DiT conditioned on T5 v1.1 states ({cfg.text_len} tokens, text_dim "
            f"{cfg.text_dim}, padding states kept); the text encoder given is Wan's UMT5 encoder ({model_type}, 512 "
            f"tokens, padding zeroed), another text space. Pass the CogVideoX pipeline root or its text_encoder/ "
            f"folder (T5EncoderModel + tokenizer)")
    dim = getattr(text_encoder, "dim", None)
    if dim is not None and dim != cfg.text_dim:
        raise ValueError(f"text encoder d_model={dim} but model {cfg.name!r} takes text_dim={cfg.text_dim}: it is "
                         f"not this model's text encoder")


def _cogvideox_components(model, vae, text_encoder, seed: int, vae_dtype: torch.dtype) -> Components:
    """resolve_components for a CogVideoX DiT: CogVideoX's own VAE and T5 encoder."""
    from .models.cogvideox_text import CogVideoXTextEncoder, make_tiny_cogvideox_text_encoder
    from .models.cogvideox_vae import cogvideox_autoencoder_cls, load_cogvideox_vae, make_tiny_cogvideox_vae

    inner = getattr(model, "model", model) if hasattr(model, "alphas_cumprod") else model  # a VPredictionAdapter
    cfg, source, random_weights, dev, root = _origin(inner)
    if isinstance(vae, (str, Path)):
        vae = load_cogvideox_vae(vae, dtype=vae_dtype, device=dev)  # refuses a Wan VAE folder
    if vae is None:
        if random_weights and cfg.name.startswith("tiny"):
            vae = make_tiny_cogvideox_vae(seed=seed, device=dev, dtype=vae_dtype)
        elif root is not None and (root / "vae").is_dir():
            vae = load_cogvideox_vae(root / "vae", dtype=vae_dtype, device=dev)
        elif random_weights:  # CogVideoX 1.0 VAE shape, random weights
            vae = cogvideox_autoencoder_cls()().to(dev, vae_dtype).eval().requires_grad_(False)
        else:
            where = f"its pipeline folder {root} has no vae/ subfolder" if root is not None else "it has no pipeline root"
            raise ValueError(
                f"no VAE for CogVideoX model loaded from {source}: {where}; pass vae=<folder of a diffusers "
                f"AutoencoderKLCogVideoX> (e.g. CogVideoX-2b/vae)")
    _check_cogvideox_vae(inner, vae)
    if isinstance(text_encoder, (str, Path)):
        text_encoder = CogVideoXTextEncoder.from_folder(text_encoder, dtype=inner.dtype, device=dev)  # refuses UMT5
    if text_encoder is None:
        if random_weights and cfg.name.startswith("tiny"):
            text_encoder = make_tiny_cogvideox_text_encoder(seed=seed, dim=cfg.text_dim, device=dev)
        elif root is not None and (root / "text_encoder").is_dir():
            text_encoder = CogVideoXTextEncoder.from_folder(root, dtype=inner.dtype, device=dev)
    _check_cogvideox_text(inner, text_encoder)
    return Components(vae=vae, text_encoder=text_encoder, random_weights=random_weights)


def resolve_components(model: WanDiT, vae=None, text_encoder=None, *, seed: int = 0,
                       vae_dtype: torch.dtype = torch.float32) -> Components:
    """Find the VAE and text encoder for a model: given objects or folders win; a
    random ``tiny-*`` preset gets its embedded random ones; a model loaded from a diffusers
    pipeline root uses the root's ``vae/`` and ``text_encoder/``; the embedded trained
    ``tiny`` (:mod:`engine.embedded`) its ``vae/`` and the tiny text encoder of the seed its
    ``model_index.json`` names (whatever ``seed`` is given: the DiT was trained on it). A VAE the engine builds
    or loads runs in ``vae_dtype`` (float32 by default: Wan's VAE degrades in bf16).

    Components come from the model's own family. A CogVideoX DiT (or a VPredictionAdapter
    around one) gets CogVideoX's: an ``AutoencoderKLCogVideoX``
    (:mod:`engine.models.cogvideox_vae`: tiny presets a tiny random one, a pipeline root its
    ``vae/``, an untrained full-size preset a random CogVideoX-2b-shaped one) and a T5
    :class:`~engine.models.cogvideox_text.CogVideoXTextEncoder` (tiny presets: a tiny
    random T5 of the model's text_dim; a root: its ``text_encoder/`` + ``tokenizer/``).
    The other family's parts are refused with the reason, both ways: a Wan VAE (per-channel
    normalised latents) or a UMT5 / Wan TextEncoder for a CogVideoX model; a CogVideoX VAE
    (scaled latents) or CogVideoX T5 encoder (object or a CogVideoX pipeline's folder) for
    a Wan model; also a VAE whose latent channels or an encoder whose width differ from
    the model's. Wan models otherwise resolve exactly as before."""
    if is_cogvideox(model):
        return _cogvideox_components(model, vae, text_encoder, seed, vae_dtype)
    _refuse_cogvideox_parts(model, vae, text_encoder)
    from .embedded import embedded_info
    from .models.text import TextEncoder, make_tiny_text_encoder
    from .models.vae import load_vae, make_tiny_vae

    cfg, source, random_weights, dev, root = _origin(model)
    if isinstance(vae, (str, Path)):
        vae = load_vae(vae, dtype=vae_dtype, device=dev)
    if vae is None:
        if random_weights and cfg.name.startswith("tiny"):
            vae = make_tiny_vae(seed=seed, device=dev, dtype=vae_dtype)
        elif root is not None and (root / "vae").is_dir():
            vae = load_vae(root / "vae", dtype=vae_dtype, device=dev)
        elif random_weights:
            from diffusers import AutoencoderKLWan

            vae = AutoencoderKLWan().to(dev, vae_dtype).eval().requires_grad_(False)  # Wan2.1 VAE shape, random weights
        elif root is not None:
            raise ValueError(
                f"no VAE for model loaded from {source}: its pipeline folder {root} has no vae/ subfolder; pass "
                f"vae=<folder of a diffusers AutoencoderKLWan> (e.g. Wan2.1-T2V-1.3B-Diffusers/vae)"
            )
        else:
            raise ValueError(
                f"no VAE for model loaded from {source}: pass vae=<folder of a diffusers AutoencoderKLWan> "
                f"(e.g. Wan2.1-T2V-1.3B-Diffusers/vae) or load the model from a diffusers pipeline root"
            )
    if isinstance(text_encoder, (str, Path)):
        text_encoder = TextEncoder.from_folder(text_encoder, dtype=model.dtype, device=dev)
    if text_encoder is None:
        if random_weights and cfg.name.startswith("tiny"):
            text_encoder = make_tiny_text_encoder(seed=seed, dim=cfg.text_dim, device=dev)
        elif root is not None and (root / "text_encoder").is_dir():
            text_encoder = TextEncoder.from_folder(root, dtype=model.dtype, device=dev)
        elif (info := embedded_info(root)) is not None:  # the embedded model: the tiny encoder it was trained on
            text_encoder = make_tiny_text_encoder(seed=int(info["text_encoder_seed"]), dim=cfg.text_dim, device=dev)
    return Components(vae=vae, text_encoder=text_encoder, random_weights=random_weights)


def check_frames(num_frames: int, height: int, width: int, model: WanDiT, temporal: bool = True) -> tuple[int, int, int]:
    """Validate the requested video size; return latent (frames, height, width).
    ``temporal=False``: the strategy has its own frame rule (checked by its plan; the
    returned frame count is then meaningless)."""
    cfg = model.config
    st, sh, sw = cfg.vae_stride
    _, ph, pw = cfg.patch_size
    if not temporal:
        num_frames = 1
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % st:
        lo = max(1, ((max(num_frames, 1) - 1) // st) * st + 1)
        raise ValueError(
            f"num_frames={num_frames} does not fit the VAE's {st}x temporal compression: "
            f"use {st}k+1 frames, e.g. {lo} or {lo + st}"
        )
    mh, mw = sh * ph, sw * pw
    if height % mh or width % mw or height <= 0 or width <= 0:
        raise ValueError(
            f"height x width = {height}x{width} must be positive multiples of {mh}x{mw} "
            f"(VAE stride x patch size), e.g. {max(mh, height // mh * mh)}x{max(mw, width // mw * mw)}"
        )
    return (num_frames - 1) // st + 1, height // sh, width // sw


def text_rows(model, comps, prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, guidance, seed,
              same_uncond: bool = False) -> torch.Tensor:
    """The text conditioning rows [1 or 2, L, text_dim] (positive, then negative when
    ``guidance`` != 1), zero-padded to the model's text_len; an untrained preset without a
    text encoder gets deterministic random tokens (positive) and zeros (negative).
    ``same_uncond``: the unconditional row keeps the positive text (guidance on the
    controls alone; ``cfg_drop`` without "text")."""
    from .models.text import resolve_prompt_embeds

    cfg = model.config
    dev, dt = model.device, model.dtype
    enc = comps.text_encoder
    max_len = cfg.text_len
    if prompt_embeds is None and enc is None and comps.random_weights:
        # Untrained preset without a text encoder: deterministic random text tokens.
        g = torch.Generator().manual_seed(seed)
        prompt_embeds = torch.randn(1, max_len, cfg.text_dim, generator=g)
    text = resolve_prompt_embeds(prompt, prompt_embeds, enc, 1, text_dim=cfg.text_dim, max_length=max_len)
    rows = [text.to(dev, dt)]
    if guidance != 1.0 and same_uncond:
        rows.append(rows[0])
    elif guidance != 1.0:
        if negative_prompt_embeds is None and enc is None and comps.random_weights:
            negative_prompt_embeds = torch.zeros(1, max_len, cfg.text_dim)
        neg = resolve_prompt_embeds(negative_prompt or "", negative_prompt_embeds, enc, 1, text_dim=cfg.text_dim,
                                    max_length=max_len, name="negative_prompt_embeds")
        neg = neg.to(dev, dt)
        if hasattr(model, "pad_text"):  # Wan: both rows zero-padded to text_len (longer is an error)
            rows[0], neg = model.pad_text(rows[0]), model.pad_text(neg)
        if neg.shape[1] != rows[0].shape[1]:  # pad/crop the negative to the positive's length
            pad = neg.new_zeros(1, rows[0].shape[1], neg.shape[2])
            n = min(neg.shape[1], rows[0].shape[1])
            pad[:, :n] = neg[:, :n]
            neg = pad
        rows.append(neg)
    return torch.cat(rows, 0)


def resolve_image_encoder(model, image_encoder=None):
    """The CLIP image encoder of an I2V model: ``image_encoder`` as given (an
    :class:`~engine.models.image.ImageEncoder`, or a folder holding ``image_encoder/`` +
    ``image_processor/`` or both files), else the ``image_encoder/`` of the diffusers root the
    model was loaded from (the Wan2.1-I2V-Diffusers layout), else None. A folder loads in the
    model's dtype on its device."""
    from .models.image import ImageEncoder

    if image_encoder is None or isinstance(image_encoder, ImageEncoder):
        if image_encoder is None:
            src = getattr(model, "source", None)
            root = next((c for c in ([Path(src), Path(src).parent] if src else []) if (c / "image_encoder").is_dir()),
                        None)
            if root is not None:
                return ImageEncoder.from_folder(root, dtype=model.dtype, device=model.device)
        return image_encoder
    if isinstance(image_encoder, (str, Path)):
        return ImageEncoder.from_folder(image_encoder, dtype=model.dtype, device=model.device)
    raise TypeError(f"image_encoder must be an ImageEncoder or a folder path, not {type(image_encoder).__name__}")


def first_frame_image_embeds(encoder, first_frame) -> torch.Tensor:
    """CLIP image tokens [1, N, hidden] of the user's first frame, as diffusers'
    ``WanImageToVideoPipeline.encode_image`` computes them: the ORIGINAL image (not resized
    to the video) through the CLIP image processor (shortest edge resize + centre crop) and
    the encoder's penultimate hidden state. first_frame: an image path, PIL image, uint8
    array [H, W, 3], or a float tensor [3, H, W] / [1, 3, H, W] in [-1, 1] (taken to uint8
    as the pipeline's post-processing would: (x + 1) * 127.5, rounded)."""
    from PIL import Image

    if isinstance(first_frame, (str, Path)):
        first_frame = Image.open(first_frame).convert("RGB")  # readable: first_frame_tensor already opened it
    if isinstance(first_frame, Image.Image):
        first_frame = np.asarray(first_frame.convert("RGB"))
    if isinstance(first_frame, torch.Tensor):
        x = first_frame.detach().float().cpu().reshape(3, *first_frame.shape[-2:])
        first_frame = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return encoder.encode(first_frame)


def missing_image_tokens(cfg) -> ValueError:
    """The error for an I2V model (config ``cfg``) run without CLIP image tokens or an encoder."""
    return ValueError(
        f"model {cfg.name!r} is image-to-video and cross-attends to CLIP image tokens of the first frame, but no "
        f"image encoder was found (the model was not loaded from a diffusers root with image_encoder/): pass "
        f"image_encoder=<folder with image_encoder/ + image_processor/> (e.g. Wan2.1-I2V-14B-480P-Diffusers; CLI "
        f"--image-encoder), or image_embeds=[1, 257, {cfg.image_dim}] (CLIP ViT-H/14 penultimate-layer tokens)")


def prompt_context(model, comps, prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, guidance, image_embeds,
                   seed, same_uncond: bool = False):
    """The model's prepared context (text rows of :func:`text_rows`, plus CLIP image tokens
    for an I2V model), or the raw text rows for a DiT that embeds its text on every call."""
    cfg = model.config
    dev, dt = model.device, model.dtype
    text = text_rows(model, comps, prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, guidance, seed,
                     same_uncond)
    img = None
    if cfg.is_i2v:
        if image_embeds is None and comps.random_weights:
            g = torch.Generator().manual_seed(seed + 1)
            image_embeds = torch.randn(1, 257, cfg.image_dim, generator=g)
        if image_embeds is None:
            raise missing_image_tokens(cfg)
        if image_embeds.dim() != 3 or image_embeds.shape[0] != 1 or image_embeds.shape[2] != cfg.image_dim:
            raise ValueError(f"image_embeds must be [1, N, {cfg.image_dim}] for model {cfg.name!r} (its image_dim); "
                             f"got {tuple(image_embeds.shape)}")
        img = image_embeds.to(dev, dt).expand(text.shape[0], -1, -1)
    if not hasattr(model, "prepare_context"):  # a DiT that embeds its text on every call
        return text
    return model.prepare_context(text, img)


def first_frame_tensor(first_frame, height: int, width: int) -> torch.Tensor:
    """An image (path, PIL image, uint8 array [H,W,3], or float tensor [3,H,W] in [-1,1])
    -> float tensor [1, 3, height, width] in [-1, 1], resized to the video size."""
    from PIL import Image

    if isinstance(first_frame, (str, Path)):
        from PIL import UnidentifiedImageError

        try:
            first_frame = Image.open(first_frame).convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"first_frame {str(first_frame)!r}: no such file") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"first_frame {str(first_frame)!r} is not an image PIL can read (png, jpg, ...): "
                             f"{exc}") from None
    if isinstance(first_frame, Image.Image):
        first_frame = np.asarray(first_frame.convert("RGB").resize((width, height), Image.BICUBIC))
    if isinstance(first_frame, np.ndarray):
        if first_frame.ndim != 3 or first_frame.shape[2] != 3 or first_frame.dtype != np.uint8:
            raise ValueError(f"first_frame array must be uint8 [H, W, 3]; got {first_frame.dtype} {first_frame.shape}")
        first_frame = torch.from_numpy(first_frame.copy()).permute(2, 0, 1).float() / 127.5 - 1
    if not isinstance(first_frame, torch.Tensor) or first_frame.dim() not in (3, 4) or first_frame.shape[-3] != 3:
        raise ValueError("first_frame must be an image path, a PIL image, uint8 [H,W,3] or a float tensor [3,H,W] in [-1,1]")
    x = first_frame.float().reshape(1, 3, *first_frame.shape[-2:])
    if tuple(x.shape[-2:]) != (height, width):
        x = torch.nn.functional.interpolate(x, size=(height, width), mode="bicubic", align_corners=False).clamp(-1, 1)
    return x


def prior_frames_tensor(first_frames, height: int, width: int, views: int = 1) -> torch.Tensor:
    """Prior frames (MiLA's condition frames) -> float [V, P, 3, height, width] in [-1, 1].

    first_frames: P images for one view -- a list of images (paths, PIL images, uint8
    [H, W, 3]) or a uint8 array [P, H, W, 3] -- or, for ``views`` V > 1, a list of V such
    lists or a uint8 array [V, P, H, W, 3]; every frame resized to the video size."""
    if isinstance(first_frames, np.ndarray):
        want = 5 if views > 1 else 4
        if first_frames.ndim != want or first_frames.shape[-1] != 3:
            shape = "[V, P, H, W, 3]" if views > 1 else "[P, H, W, 3]"
            raise ValueError(f"first_frames as an array must be uint8 {shape}; got {first_frames.dtype} "
                             f"{first_frames.shape}")
        first_frames = list(first_frames) if views > 1 else [list(first_frames)]
    elif views == 1:
        first_frames = [list(first_frames)]
    per_view = [list(v) for v in first_frames]
    if len(per_view) != views:
        raise ValueError(f"first_frames: {len(per_view)} view(s) of prior frames for views={views}")
    counts = {len(v) for v in per_view}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"first_frames: every view needs the same number (>= 1) of prior frames; got "
                         f"{[len(v) for v in per_view]}")
    return torch.stack([torch.cat([first_frame_tensor(f, height, width) for f in v]) for v in per_view])


# ----------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------
