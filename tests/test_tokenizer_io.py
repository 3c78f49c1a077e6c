"""Tests for gptkit.tokenizers.stored: every kind's stored form rebuilds the same tokenizer, tokenizer
files, and damaged descriptions as one-line errors (never a Rust panic inside tiktoken)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptkit.errors import TokenizerError
from gptkit.tokenizers.stored import load_tokenizer, save_tokenizer, tokenizer_from_dict
from tests.test_tokenizer import KINDS, LANGS, one_line, sample, tok_for


@pytest.mark.parametrize("kind", KINDS)
def test_to_dict_json_round_trip_gives_identical_ids(kind: str) -> None:
    for lang in LANGS:
        tok = tok_for(kind, lang)
        d = tok.to_dict()
        assert d["kind"] == tok.kind and d["name"] == tok.name
        again = tokenizer_from_dict(json.loads(json.dumps(d)))
        assert type(again) is type(tok)
        assert (again.kind, again.name, again.vocab_size, again.eot_id) == (
            tok.kind, tok.name, tok.vocab_size, tok.eot_id)
        text = sample(lang)
        ids = tok.encode(text)
        assert again.encode(text) == ids
        assert again.decode(ids) == tok.decode(ids) == text
        assert again.fingerprint == tok.fingerprint


def test_to_dict_of_tiktoken_is_compact_and_fingerprints_differ() -> None:
    gpt2 = tok_for("gpt2", "english")
    size = len(json.dumps(gpt2.to_dict()))
    assert 300_000 < size < 1_500_000  # 50k base64 tokens, not a dump of the Python objects
    prints = {tok_for(k, lang).fingerprint for k in KINDS for lang in LANGS}
    assert len(prints) == 2 + 2 + 1 + 1 + 1  # char and bpe depend on the text, the rest don't
    assert all(len(p) == 16 and int(p, 16) >= 0 for p in prints)


@pytest.mark.parametrize("kind", ["char", "bpe", "gpt2"])
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    tok = tok_for(kind, "korean")
    path = tmp_path / "tokenizer.json"
    save_tokenizer(tok, path)
    again = load_tokenizer(str(path))
    assert again.fingerprint == tok.fingerprint
    text = sample("korean")[:5000]
    assert again.encode(text) == tok.encode(text)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp file left


def test_load_missing_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(tmp_path / "nope.json")
    assert "not found" in one_line(err)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(bad)
    assert "JSON" in one_line(err)


@pytest.mark.parametrize(
    "d",
    [
        {"kind": "sentencepiece", "name": "x"},
        {"name": "char"},
        {"kind": "char", "name": "char"},
        {"kind": "char", "name": "char", "chars": "aab"},
        {"kind": "bpe", "name": "bpe", "pat_str": ".", "mergeable_ranks": ["!!"], "special_tokens": {}},
        {"kind": "bpe", "name": "bpe", "pat_str": "(", "mergeable_ranks": [], "special_tokens": {}},
        {"kind": "byte", "name": "byte", "format": 99},
        [1, 2],
    ],
)
def test_bad_dict_is_a_tokenizer_error(d: object) -> None:
    with pytest.raises(TokenizerError) as err:
        tokenizer_from_dict(d)  # type: ignore[arg-type]
    one_line(err)


def test_bpe_dict_missing_single_bytes_is_rejected_not_a_rust_panic() -> None:
    d = tok_for("bpe", "english").to_dict()
    d["mergeable_ranks"] = d["mergeable_ranks"][:100]
    with pytest.raises(TokenizerError):
        tokenizer_from_dict(d)
    d = tok_for("bpe", "english").to_dict()
    d["special_tokens"] = {"<|endoftext|>": 3}  # collides with a byte's id
    with pytest.raises(TokenizerError):
        tokenizer_from_dict(d)
