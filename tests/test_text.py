"""Text conditioning: tiny UMT5 + byte tokenizer, local-folder loading, Wan zero padding, errors."""

import io
import types

import pytest
import torch

from engine.models.text import (
    ByteTokenizer,
    TextEncoder,
    make_tiny_text_encoder,
    prompt_clean,
    resolve_prompt_embeds,
)

PROMPTS = ["a cat walks on the grass", "a drone flies over a city at night, neon lights"]


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_text_encoder(seed=0, dim=32)


def _reference_wan_embeds(encoder: TextEncoder, prompts, max_length, monkeypatch):
    """diffusers' WanPipeline._get_t5_prompt_embeds run on a stand-in ``self``."""
    from diffusers.pipelines.wan import pipeline_wan

    # diffusers' prompt_clean calls ftfy unconditionally; identity stand-in when it is not installed
    if not hasattr(pipeline_wan, "ftfy"):
        monkeypatch.setattr(pipeline_wan, "ftfy", types.SimpleNamespace(fix_text=lambda s: s), raising=False)
    fake = types.SimpleNamespace(
        tokenizer=encoder.tokenizer, text_encoder=encoder.model, _execution_device=torch.device("cpu")
    )
    return pipeline_wan.WanPipeline._get_t5_prompt_embeds(
        fake, prompts, max_sequence_length=max_length, device=torch.device("cpu"), dtype=torch.float32
    )


def test_byte_tokenizer():
    tok = ByteTokenizer()
    out = tok(["ab", "é"], max_length=6)
    assert out["input_ids"].tolist() == [[97 + 3, 98 + 3, 1, 0, 0, 0], [0xC3 + 3, 0xA9 + 3, 1, 0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]]
    long = tok(["abcdefgh"], max_length=4)["input_ids"][0].tolist()
    assert long == [100, 101, 102, 1]  # truncated, EOS kept
    assert max(tok.encode("\xff" * 3)) < 384


def test_tiny_shapes_zero_padding_and_determinism(tiny):
    e = tiny.encode(PROMPTS, max_length=64)
    assert e.shape == (2, 64, 32) and e.dtype == torch.float32
    for i, p in enumerate(PROMPTS):
        n = len(prompt_clean(p).encode()) + 1  # bytes + EOS
        assert torch.all(e[i, n:] == 0)
        assert torch.all(e[i, :n].abs().sum(-1) > 0)
    again = make_tiny_text_encoder(seed=0, dim=32).encode(PROMPTS, max_length=64)
    assert torch.equal(e, again)
    other = make_tiny_text_encoder(seed=1, dim=32).encode(PROMPTS, max_length=64)
    assert not torch.allclose(e, other)
    # a prompt's embedding does not depend on the other prompts of the batch or on max_length
    single = tiny.encode(PROMPTS[0], max_length=128)
    torch.testing.assert_close(single[:, :64], e[:1], atol=1e-5, rtol=1e-5)
    assert torch.all(single[:, 64:] == 0)
    assert tiny.encode(["x"]).shape == (1, 512, 32)  # Wan default length


def test_matches_diffusers_get_t5_prompt_embeds(tiny, monkeypatch):
    ours = tiny.encode(PROMPTS, max_length=48)
    ref = _reference_wan_embeds(tiny, PROMPTS, 48, monkeypatch)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def test_prompt_clean():
    assert prompt_clean("  a  &amp;amp;\n\tb  ") == "a & b"


def _spm_tokenizer(tmp_path):
    """A real (tiny) SentencePiece-unigram T5 tokenizer trained on the fly."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import T5Tokenizer

    text = ["a cat walks on the grass", "the quick brown fox jumps over the lazy dog",
            "a drone flies over a city at night", "neon lights and waves on a rocky beach"] * 10
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=buf, vocab_size=64, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    proc = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = [(proc.id_to_piece(i), proc.get_score(i)) for i in range(proc.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def test_from_folder_pipeline_root_with_sentencepiece_tokenizer(tiny, tmp_path, monkeypatch):
    tok = _spm_tokenizer(tmp_path)
    ids = tok(["a cat"], add_special_tokens=True)["input_ids"][0]
    assert ids[-1] == 1 and 2 not in ids  # EOS appended, no unknowns
    root = tmp_path / "pipe"
    tiny.model.save_pretrained(root / "text_encoder")
    tok.save_pretrained(root / "tokenizer")
    enc = TextEncoder.from_folder(root, dtype=torch.float32)
    assert enc.dim == 32
    e = enc.encode(PROMPTS, max_length=32)
    ref = _reference_wan_embeds(enc, PROMPTS, 32, monkeypatch)
    torch.testing.assert_close(e, ref, atol=1e-6, rtol=1e-6)
    lens = enc.tokenizer(PROMPTS, padding="max_length", max_length=32, return_tensors="pt")["attention_mask"].sum(1)
    for i, n in enumerate(lens.tolist()):
        assert torch.all(e[i, n:] == 0) and torch.all(e[i, :n].abs().sum(-1) > 0)


def test_from_folder_single_folder_byte_tokenizer(tiny, tmp_path):
    folder = tmp_path / "te"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    enc = TextEncoder.from_folder(folder, dtype=torch.float32)
    assert isinstance(enc.tokenizer, ByteTokenizer)
    torch.testing.assert_close(enc.encode(PROMPTS, 40), tiny.encode(PROMPTS, 40), atol=0, rtol=0)
    # save_pretrained writes a pipeline-style layout that loads back
    tiny.save_pretrained(tmp_path / "root")
    enc2 = TextEncoder.from_folder(tmp_path / "root", dtype=torch.float32)
    torch.testing.assert_close(enc2.encode(PROMPTS, 40), tiny.encode(PROMPTS, 40), atol=0, rtol=0)


def test_from_folder_errors(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        TextEncoder.from_folder(tmp_path / "nothing")
    tiny.model.save_pretrained(tmp_path / "only_model")
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        TextEncoder.from_folder(tmp_path / "only_model")


def test_resolve_prompt_embeds(tiny):
    with pytest.raises(ValueError, match="prompt_embeds=.*text_encoder=<local folder with a UMT5 encoder>"):
        resolve_prompt_embeds("a cat", None, None, 1)
    pe = torch.randn(1, 7, 32)
    out = resolve_prompt_embeds(None, pe, None, 3, text_dim=32)
    assert out.shape == (3, 7, 32) and torch.equal(out[2], pe[0])
    with pytest.raises(ValueError, match=r"\[B, L, 64\]"):
        resolve_prompt_embeds(None, pe, None, 1, text_dim=64)
    with pytest.raises(ValueError, match="text_dim"):
        resolve_prompt_embeds(None, torch.randn(2, 3, 4, 5), None, 1)
    with pytest.raises(ValueError, match="batch"):
        resolve_prompt_embeds(None, torch.randn(2, 7, 32), None, 3)
    got = resolve_prompt_embeds("a cat", None, tiny, 2, text_dim=32, max_length=16)
    assert got.shape == (2, 16, 32)
    torch.testing.assert_close(got[0], got[1])
    torch.testing.assert_close(got[:1], tiny.encode(["a cat"], 16))
    with pytest.raises(ValueError, match="prompts for batch"):
        resolve_prompt_embeds(["a", "b"], None, tiny, 3)
    with pytest.raises(ValueError, match="text_dim=64"):
        resolve_prompt_embeds("a", None, tiny, 1, text_dim=64)
    assert resolve_prompt_embeds(None, None, tiny, 1, max_length=8).shape == (1, 8, 32)  # "" prompt
