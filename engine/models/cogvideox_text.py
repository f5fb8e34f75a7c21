"""Text conditioning for CogVideoX: a T5 (v1.1) encoder + tokenizer through transformers.

CogVideoX feeds its DiT ``[B, 226, 4096]`` t5-v1_1-xxl states computed the way diffusers'
``CogVideoXPipeline._get_t5_prompt_embeds`` computes them, which differs from Wan's UMT5
conditioning (:mod:`engine.models.text`) in three ways, all kept here:

* the prompt is tokenized as given (no ftfy / html clean-up), ``padding="max_length"``,
  ``max_length=226``, ``truncation=True``, ``add_special_tokens=True`` (EOS appended;
  a long prompt keeps its first 225 tokens + EOS);
* the encoder runs on the token ids **without an attention mask**: the padding tokens are
  attended to and get states of their own;
* those padding states are kept (Wan zeroes every position past the prompt).

The encoder and tokenizer come from a pipeline root's ``text_encoder/`` (a transformers
``T5EncoderModel``, ``model_type="t5"``) and ``tokenizer/`` (``T5Tokenizer`` files); a UMT5
folder (Wan's encoder) is refused with the reason. For tests and the ``tiny-cogvideox``
presets :func:`make_tiny_cogvideox_text_encoder` builds a small random T5 with a real
transformers T5 tokenizer made offline from a fixed unigram vocabulary
(:func:`make_tiny_t5_tokenizer`; no sentencepiece model or download needed).
"""

from __future__ import annotations

import json
import os
import string
from typing import Sequence

import torch

from .text import TextEncoder, reinit_t5_weights

__all__ = [
    "COGVIDEOX_TEXT_LEN",
    "COGVIDEOX_TEXT_DIM",
    "CogVideoXTextEncoder",
    "make_tiny_t5_tokenizer",
    "make_tiny_cogvideox_text_encoder",
    "text_encoder_model_type",
]

COGVIDEOX_TEXT_LEN = 226
COGVIDEOX_TEXT_DIM = 4096


def text_encoder_model_type(path: str | os.PathLike) -> str | None:
    """``model_type`` of the text encoder at ``path`` (a pipeline root with ``text_encoder/``,
    or the encoder folder itself), or None when there is no ``config.json``."""
    path = os.fspath(path)
    for d in (os.path.join(path, "text_encoder"), path):
        try:
            with open(os.path.join(d, "config.json")) as f:
                return json.load(f).get("model_type")
        except (OSError, ValueError):
            continue
    return None


class CogVideoXTextEncoder(TextEncoder):
    """T5 encoder + tokenizer producing CogVideoX prompt embeddings ``[B, 226, d_model]``
    (module docstring). Attributes: ``model`` (transformers ``T5EncoderModel``, eval),
    ``tokenizer``, ``dim`` (``d_model``), ``device``, ``dtype``. Same ``encode`` surface as
    :class:`engine.models.text.TextEncoder`, so :func:`engine.models.text.resolve_prompt_embeds`
    takes either."""

    family = "cogvideox"

    def __init__(self, model: torch.nn.Module, tokenizer):
        model_type = getattr(model.config, "model_type", None)
        if model_type != "t5":
            raise ValueError(
                f"CogVideoX's text encoder is a T5 (v1.1) encoder, got model_type={model_type!r}"
                + (" (UMT5 is Wan's encoder: another vocabulary and text space)" if model_type == "umt5" else "")
            )
        super().__init__(model, tokenizer)

    @classmethod
    def from_folder(cls, path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
                    device: str | torch.device = "cpu") -> "CogVideoXTextEncoder":
        """Load from a LOCAL folder: a CogVideoX diffusers pipeline root (``text_encoder/`` +
        ``tokenizer/``) or one folder holding both. Refuses a UMT5 (Wan) encoder; raises
        ``FileNotFoundError`` naming what was looked for."""
        from transformers import AutoTokenizer, T5EncoderModel

        path = os.fspath(path)
        model_dirs = [os.path.join(path, "text_encoder"), path]
        model_dir = next((d for d in model_dirs if os.path.isfile(os.path.join(d, "config.json"))), None)
        if model_dir is None:
            raise FileNotFoundError(
                f"No text encoder found at {path!r}: looked for "
                + " and ".join(os.path.join(d, "config.json") for d in model_dirs)
                + " (a transformers T5EncoderModel folder, e.g. a CogVideoX diffusers pipeline root)."
            )
        model_type = text_encoder_model_type(model_dir)
        if model_type != "t5":
            raise ValueError(
                f"{model_dir} holds a {model_type!r} encoder; CogVideoX was trained on T5 v1.1 (model_type 't5') "
                f"embeddings of {COGVIDEOX_TEXT_LEN} tokens"
                + (" -- UMT5 is Wan's text encoder (512 tokens, another vocabulary)" if model_type == "umt5" else "")
            )
        tok_dirs = [os.path.join(path, "tokenizer"), model_dir, path]
        names = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
        tok_dir = next((d for d in tok_dirs if any(os.path.isfile(os.path.join(d, n)) for n in names)), None)
        if tok_dir is None:
            raise FileNotFoundError(
                f"No tokenizer found for the text encoder at {path!r}: looked in {', '.join(dict.fromkeys(tok_dirs))} "
                f"for {' / '.join(names)}."
            )
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        model = T5EncoderModel.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
        return cls(model.to(device), tokenizer)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write a pipeline-style folder: ``folder/text_encoder`` and ``folder/tokenizer``."""
        folder = os.fspath(folder)
        self.model.save_pretrained(os.path.join(folder, "text_encoder"))
        self.tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))

    def token_ids(self, prompts: str | Sequence[str], max_length: int = COGVIDEOX_TEXT_LEN) -> torch.Tensor:
        """Token ids ``[B, max_length]`` (int64), padded and truncated as the pipeline does."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                             add_special_tokens=True, return_tensors="pt")
        return tok["input_ids"]

    @torch.no_grad()
    def encode_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Encoder states ``[B, L, dim]`` of token ids ``[B, L]``, no attention mask (every
        position, padding included, attends to every other), in the encoder's dtype."""
        return self.model(input_ids.to(self.device))[0]

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str], max_length: int = COGVIDEOX_TEXT_LEN) -> torch.Tensor:
        """CogVideoX prompt embeddings ``[B, max_length, dim]`` (encoder dtype / device) of a
        string or a list of strings; padding positions keep their states (module docstring)."""
        return self.encode_ids(self.token_ids(prompts, max_length))


#: Pieces of the tiny offline tokenizer after the special tokens: whole words (with the
#: sentencepiece word-start mark), then single characters so any ASCII text tokenizes.
_TINY_WORDS = ("a the car road drives on in of and with sunny day night city street red blue white "
               "black camera moves forward left right turn highway rain snow").split()


def make_tiny_t5_tokenizer():
    """A real transformers T5 fast tokenizer built offline: a ``tokenizers`` unigram model
    over a fixed vocabulary (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, some whole words, ``▁``,
    single characters; no extra ids) with T5's whitespace + Metaspace pre-tokenizer and its
    ``$A </s>`` post-processor, wrapped in ``T5TokenizerFast`` (``T5Tokenizer`` in
    transformers 5). It pads, truncates and appends EOS as T5's own does, saves and
    reloads with ``AutoTokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -2.0) for w in _TINY_WORDS] + [("\u2581", -3.0)]
    vocab += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    tk = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")])
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                      special_tokens=[("</s>", 1)])
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    return T5TokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


def make_tiny_cogvideox_text_encoder(seed: int = 0, dim: int = 32, dtype: torch.dtype = torch.float32,
                                     device: str | torch.device = "cpu") -> CogVideoXTextEncoder:
    """A tiny random T5 encoder (``d_model=dim``, 2 layers, 2 heads, gated-GELU as T5 v1.1,
    vocabulary of :func:`make_tiny_t5_tokenizer`) with that tokenizer. Same ``seed`` -> same
    weights, drawn from ``torch.Generator(seed)``: matrices ~ N(0, 1/fan_in), embeddings and
    relative-position biases ~ N(0, 1), norm gains ~ 1 + N(0, 0.1^2)."""
    from transformers import T5Config, T5EncoderModel

    tok = make_tiny_t5_tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=dim, d_kv=max(dim // 2, 8), d_ff=2 * dim, num_layers=2, num_heads=2,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0,
                   feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(cfg)
    reinit_t5_weights(model, seed)
    return CogVideoXTextEncoder(model.to(device=device, dtype=dtype), tok)
