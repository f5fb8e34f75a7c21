"""Text conditioning for Wan2.1: a UMT5 encoder (transformers) + tokenizer from a LOCAL folder.

Wan2.1 feeds the DiT ``[B, 512, 4096]`` umt5-xxl embeddings: prompts are tokenized with
padding to 512, encoded, and every position past a prompt's real token count (its
tokens + EOS) is set to exactly zero (diffusers ``WanPipeline._get_t5_prompt_embeds``).

For tests and the embedded ``tiny`` model, :func:`make_tiny_text_encoder` builds a small
random UMT5 with a dependency-free UTF-8 byte tokenizer (no downloads).
"""

from __future__ import annotations

import html
import json
import os
import re
from typing import Sequence

import torch

__all__ = [
    "WAN_TEXT_LEN",
    "WAN_TEXT_DIM",
    "ByteTokenizer",
    "TextEncoder",
    "make_tiny_text_encoder",
    "resolve_prompt_embeds",
    "prompt_clean",
]

WAN_TEXT_LEN = 512
WAN_TEXT_DIM = 4096

BYTE_TOKENIZER_FILE = "byte_tokenizer.json"


def prompt_clean(text: str) -> str:
    """Wan prompt cleaning: ftfy fix (only if ``ftfy`` is installed), html-unescape twice,
    collapse whitespace runs to one space, strip."""
    try:
        import ftfy  # optional, as in diffusers

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class _Encoding(dict):
    """dict with attribute access (``enc.input_ids``), like transformers' BatchEncoding."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class ByteTokenizer:
    """Dependency-free UTF-8 byte tokenizer (ByT5-style ids): ``id = byte + offset``,
    ``pad_id`` 0, ``eos_id`` 1, ``unk_id`` 2, ``offset`` 3 -> vocabulary of 259 ids.

    Called like a Hugging Face tokenizer with ``padding="max_length"``/``truncation=True``:
    returns ``{"input_ids": LongTensor [B, max_length], "attention_mask": LongTensor [B, max_length]}``;
    EOS is appended (kept as the last token when truncating).
    """

    def __init__(self, offset: int = 3, pad_id: int = 0, eos_id: int = 1, unk_id: int = 2):
        self.offset, self.pad_token_id, self.eos_token_id, self.unk_token_id = offset, pad_id, eos_id, unk_id

    @property
    def vocab_size(self) -> int:
        return 256 + self.offset

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one string (EOS appended when ``add_special_tokens``)."""
        ids = [b + self.offset for b in text.encode("utf-8")]
        return ids + [self.eos_token_id] if add_special_tokens else ids

    def __call__(
        self,
        texts: str | Sequence[str],
        padding: str | bool = "max_length",
        max_length: int = WAN_TEXT_LEN,
        truncation: bool = True,
        add_special_tokens: bool = True,
        return_attention_mask: bool = True,
        return_tensors: str = "pt",
    ) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        if return_tensors != "pt":
            raise ValueError("ByteTokenizer only returns torch tensors (return_tensors='pt')")
        rows = []
        for t in texts:
            ids = self.encode(t, add_special_tokens=add_special_tokens)
            if truncation and len(ids) > max_length:
                ids = ids[: max_length - 1] + [self.eos_token_id] if add_special_tokens else ids[:max_length]
            rows.append(ids)
        length = max_length if padding == "max_length" else max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            if len(r) > length:
                raise ValueError(f"prompt {i} has {len(r)} tokens > max_length={length} and truncation=False")
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return _Encoding(input_ids=input_ids, attention_mask=mask)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``folder/byte_tokenizer.json`` (what :meth:`TextEncoder.from_folder` looks for)."""
        os.makedirs(folder, exist_ok=True)
        cfg = {"type": "utf8-bytes", "offset": self.offset, "pad_id": self.pad_token_id,
               "eos_id": self.eos_token_id, "unk_id": self.unk_token_id}
        with open(os.path.join(folder, BYTE_TOKENIZER_FILE), "w") as f:
            json.dump(cfg, f, indent=2)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ByteTokenizer":
        with open(path) as f:
            cfg = json.load(f)
        return cls(offset=cfg["offset"], pad_id=cfg["pad_id"], eos_id=cfg["eos_id"], unk_id=cfg["unk_id"])


def _has_model_config(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "config.json"))


def _has_tokenizer(folder: str) -> bool:
    names = (BYTE_TOKENIZER_FILE, "tokenizer.json", "spiece.model", "tokenizer_config.json")
    return any(os.path.isfile(os.path.join(folder, n)) for n in names)


def _encoder_class(folder: str):
    import transformers

    with open(os.path.join(folder, "config.json")) as f:
        model_type = json.load(f).get("model_type", "umt5")
    if model_type == "umt5":
        return transformers.UMT5EncoderModel
    if model_type in ("t5", "mt5"):
        return transformers.T5EncoderModel if model_type == "t5" else transformers.MT5EncoderModel
    raise ValueError(f"{folder}/config.json has model_type={model_type!r}; expected a UMT5 (or T5) encoder")


class TextEncoder:
    """UMT5 encoder + tokenizer producing Wan text embeddings ``[B, max_length, d_model]``.

    Attributes: ``model`` (transformers encoder, eval), ``tokenizer`` (HF tokenizer or
    :class:`ByteTokenizer`), ``dim`` (= ``d_model``, 4096 for umt5-xxl), ``device``, ``dtype``.
    """

    def __init__(self, model: torch.nn.Module, tokenizer):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
    ) -> "TextEncoder":
        """Load from a LOCAL folder: a diffusers pipeline root (``text_encoder/`` + ``tokenizer/``)
        or a single folder holding both the encoder (``config.json`` + weights) and the
        tokenizer files (``tokenizer.json``/``spiece.model``/... or ``byte_tokenizer.json``).

        Raises ``FileNotFoundError`` naming what was looked for.
        """
        path = os.fspath(path)
        model_dirs = [os.path.join(path, "text_encoder"), path]
        model_dir = next((d for d in model_dirs if _has_model_config(d)), None)
        if model_dir is None:
            raise FileNotFoundError(
                f"No text encoder found at {path!r}: looked for "
                + " and ".join(os.path.join(d, "config.json") for d in model_dirs)
                + " (a transformers UMT5EncoderModel folder, e.g. a Wan diffusers pipeline root)."
            )
        tok_dirs = [os.path.join(path, "tokenizer"), model_dir, path]
        tok_dir = next((d for d in tok_dirs if _has_tokenizer(d)), None)
        if tok_dir is None:
            raise FileNotFoundError(
                f"No tokenizer found for text encoder at {path!r}: looked in "
                + ", ".join(dict.fromkeys(tok_dirs))
                + f" for tokenizer.json / spiece.model / tokenizer_config.json / {BYTE_TOKENIZER_FILE}."
            )
        if os.path.isfile(os.path.join(tok_dir, BYTE_TOKENIZER_FILE)):
            tokenizer = ByteTokenizer.from_file(os.path.join(tok_dir, BYTE_TOKENIZER_FILE))
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        model = _encoder_class(model_dir).from_pretrained(model_dir, dtype=dtype, local_files_only=True)
        return cls(model.to(device), tokenizer)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write a pipeline-style folder: ``folder/text_encoder`` and ``folder/tokenizer``."""
        folder = os.fspath(folder)
        self.model.save_pretrained(os.path.join(folder, "text_encoder"))
        self.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str], max_length: int = WAN_TEXT_LEN) -> torch.Tensor:
        """Encode prompts the way Wan does.

        Args:
            prompts: a string or list of ``B`` strings (cleaned with :func:`prompt_clean`).
        Returns:
            ``[B, max_length, dim]`` in the encoder's dtype/device; rows past each prompt's
            token count (tokens + EOS, truncated to ``max_length``) are exactly 0.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        prompts = [prompt_clean(p) for p in prompts]
        tok = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        seq_lens = mask.gt(0).sum(dim=1)
        keep = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < seq_lens[:, None]
        return hidden * keep[:, :, None].to(hidden.dtype)


TINY_TEXT_CONFIG = dict(
    vocab_size=384,
    d_kv=16,
    num_layers=2,
    num_heads=2,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.0,
    feed_forward_proj="gated-gelu",
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)


def reinit_t5_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw every parameter of a (U)T5 encoder from ``torch.Generator(seed)`` in
    ``named_parameters`` order: norm gains 1 + N(0, 0.1^2), embeddings and relative-position
    biases N(0, 1), other matrices N(0, 1/fan_in). Returns the model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embed" in name or "shared" in name or "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    return model


def make_tiny_text_encoder(seed: int = 0, dim: int = 32, dtype: torch.dtype = torch.float32,
                           device: str | torch.device = "cpu") -> TextEncoder:
    """A tiny random UMT5 encoder (``d_model=dim``, 2 layers, 2 heads, vocab 384, ``d_ff=2*dim``)
    with a :class:`ByteTokenizer`. Same ``seed`` -> same weights -> same embeddings
    (``[B, L, dim]``). Weights are drawn from a ``torch.Generator(seed)``:
    matrices ~ N(0, 1/fan_in) (embeddings N(0, 1)), norm gains ~ 1 + N(0, 0.1^2).
    """
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(d_model=dim, d_ff=2 * dim, **TINY_TEXT_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(cfg)
    reinit_t5_weights(model, seed)
    model = model.to(device=device, dtype=dtype)
    return TextEncoder(model, ByteTokenizer())


def resolve_prompt_embeds(
    prompt: str | Sequence[str] | None,
    prompt_embeds: torch.Tensor | None,
    encoder: TextEncoder | None,
    batch: int,
    *,
    text_dim: int | None = None,
    max_length: int = WAN_TEXT_LEN,
    name: str = "prompt_embeds",
) -> torch.Tensor:
    """Text conditioning ``[batch, L, text_dim]`` from either precomputed embeddings or a prompt.

    * ``prompt_embeds`` ``[B, L, D]`` (or ``[L, D]``) wins when given: a batch of 1 is
      expanded to ``batch``; ``D`` must equal ``text_dim`` when that is given.
    * else ``encoder.encode(prompt)`` (a str, or a list of 1 or ``batch`` strings; ``None`` -> ``""``).
    * neither -> ``ValueError`` explaining what to pass.
    ``name``: what the caller calls the embeddings (``negative_prompt_embeds``) in errors.
    """
    if prompt_embeds is not None:
        if not isinstance(prompt_embeds, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor [B, L, text_dim], got {type(prompt_embeds).__name__}")
        if prompt_embeds.ndim == 2:
            prompt_embeds = prompt_embeds.unsqueeze(0)
        if prompt_embeds.ndim != 3:
            raise ValueError(f"{name} must be [B, L, text_dim], got shape {tuple(prompt_embeds.shape)}")
        if text_dim is not None and prompt_embeds.shape[-1] != text_dim:
            raise ValueError(
                f"{name} must be [B, L, {text_dim}] (the model's text_dim), got {tuple(prompt_embeds.shape)}"
            )
        if prompt_embeds.shape[0] == 1 and batch > 1:
            prompt_embeds = prompt_embeds.expand(batch, -1, -1)
        if prompt_embeds.shape[0] != batch:
            raise ValueError(
                f"{name} batch {prompt_embeds.shape[0]} does not match batch {batch} "
                f"(expected [{batch}, L, text_dim]{', or [1, L, text_dim] to repeat' if batch > 1 else ''})"
            )
        return prompt_embeds
    if encoder is None and name == "negative_prompt_embeds":
        raise ValueError(
            "classifier-free guidance (guidance_scale != 1) needs the negative prompt too and there is no text "
            "encoder: pass negative_prompt_embeds=... ([1, L, text_dim]; CLI --negative-prompt-embeds FILE), or "
            "text_encoder=<folder>, or guidance_scale=1 (no guidance)")
    if encoder is None:
        raise ValueError(
            "No text conditioning: pass prompt_embeds=... ([B, L, text_dim] tensor) "
            "or text_encoder=<local folder with a UMT5 encoder> (e.g. a Wan diffusers pipeline root "
            "with text_encoder/ and tokenizer/)."
        )
    if prompt is None:
        prompt = ""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if len(prompts) == 1 and batch > 1:
        prompts = prompts * batch
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompts for batch {batch} (pass 1 or {batch})")
    if text_dim is not None and encoder.dim != text_dim:
        raise ValueError(f"text encoder d_model={encoder.dim} but the model expects text_dim={text_dim}")
    return encoder.encode(prompts, max_length=max_length)
