"""Tests for gptkit.tokenizers on real text: round trips, offline tiktoken, errors (the stored form:
test_tokenizer_io.py)."""

from __future__ import annotations

import codecs
import inspect
import json
import os
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import tiktoken

from gptkit.errors import TokenizerError
from gptkit.tokenizers import TIKTOKEN_NAMES, TOKENIZER_KINDS, build_tokenizer
from gptkit.tokenizers.core import Tokenizer
from gptkit.tokenizers.named import load_tiktoken
from gptkit.tokenizers.stored import tokenizer_from_dict
from tests.conftest import DATA  # conftest (loaded first) points TIKTOKEN_CACHE_DIR at the shipped cache

KINDS = ["char", "byte", "bpe", "gpt2", "cl100k_base"]
LANGS = ["korean", "english"]


@cache
def full_text(lang: str) -> str:
    path = {"korean": DATA / "korean.txt",
            "english": DATA / "english.txt"}[lang]
    return path.read_text(encoding="utf-8")


@cache
def sample(lang: str) -> str:
    """About 200 KB of UTF-8 from the start of the text."""
    text = full_text(lang)
    n = 200_000 if lang == "english" else 80_000  # Hangul is 3 bytes a character
    return text[:n]


@cache
def tok_for(kind: str, lang: str) -> Tokenizer:
    """char and bpe learn from the language's sample; the others ignore the text."""
    if kind == "bpe":
        return build_tokenizer("bpe", sample(lang), vocab_size=512)
    if kind == "char":
        return build_tokenizer("char", sample(lang))
    return build_tokenizer(kind)


def one_line(err: pytest.ExceptionInfo[TokenizerError]) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("kind", KINDS)
def test_exact_round_trip(kind: str, lang: str) -> None:
    text = sample(lang)
    tok = tok_for(kind, lang)
    ids = tok.encode(text)
    assert ids and min(ids) >= 0 and max(ids) < tok.vocab_size
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert b"".join(tok.token_bytes(i) for i in ids[:2000]) == tok.decode_bytes(ids[:2000])


def test_kinds_names_and_sizes() -> None:
    char = tok_for("char", "english")
    assert (char.kind, char.name, char.eot_id) == ("char", "char", None)
    assert char.vocab_size == len(set(sample("english")))
    byte = tok_for("byte", "korean")
    assert (byte.kind, byte.name, byte.vocab_size, byte.eot_id) == ("byte", "byte", 256, None)
    bpe = tok_for("bpe", "korean")
    assert (bpe.kind, bpe.name, bpe.vocab_size, bpe.eot_id) == ("bpe", "bpe", 512, None)
    gpt2 = tok_for("gpt2", "korean")
    assert (gpt2.kind, gpt2.name, gpt2.vocab_size, gpt2.eot_id) == ("tiktoken", "gpt2", 50257, 50256)
    cl = tok_for("cl100k_base", "korean")
    assert (cl.kind, cl.name, cl.vocab_size, cl.eot_id) == ("tiktoken", "cl100k_base", 100277, 100257)
    assert set(TOKENIZER_KINDS) == {"char", "byte", "bpe"}
    assert {"gpt2", "r50k_base", "cl100k_base", "o200k_base"} <= set(TIKTOKEN_NAMES)


# --- tiktoken ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base"])
def test_tiktoken_ids_match_tiktoken_itself(name: str) -> None:
    ref = tiktoken.get_encoding(name)
    tok = tok_for(name, "english")
    assert tok.vocab_size == ref.n_vocab and tok.eot_id == ref.eot_token
    texts = [sample("korean")[:20_000], sample("english")[:50_000],
             "a document<|endoftext|>the next one <|fim_prefix|>"]
    for text in texts:
        assert tok.encode(text) == ref.encode_ordinary(text)
    # special-token text is plain text: no eot id appears
    assert tok.eot_id not in tok.encode(texts[2])
    assert tok.encode_batch(texts) == [ref.encode_ordinary(t) for t in texts]
    rebuilt = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert rebuilt.encode(texts[0]) == ref.encode_ordinary(texts[0])


def test_tiktoken_file_table_matches_installed_tiktoken() -> None:
    from tiktoken_ext import openai_public

    from gptkit.tokenizers import named as mod

    source = inspect.getsource(openai_public)
    assert set(mod.TIKTOKEN_NAMES) == set(openai_public.ENCODING_CONSTRUCTORS)
    for files in mod.TIKTOKEN_FILES.values():
        for url, sha256 in files:
            assert f'"{url}"' in source and f'"{sha256}"' in source


def test_gpt2_loads_tiktokens_own_ranks_and_settings_faster() -> None:
    """gptkit reads gpt2's ranks from encoder.json alone (tokenizers.named.gpt2_ranks); tiktoken's loader
    rebuilds them from vocab.bpe's merges and checks the two agree: the same ranks, pattern and specials."""
    from tiktoken_ext import openai_public

    from gptkit.tokenizers.named import check_cached, gpt2_ranks

    ref = openai_public.gpt2()
    assert gpt2_ranks(check_cached("gpt2")) == ref["mergeable_ranks"]
    tok = load_tiktoken("gpt2")
    assert tok.mergeable_ranks == ref["mergeable_ranks"] and tok.special_tokens == ref["special_tokens"]
    assert tok.pat_str == ref["pat_str"] and tok.vocab_size == ref["explicit_n_vocab"]


@pytest.mark.parametrize("name", ["o200k_base", "p50k_base", "gpt2"])
def test_uncached_tiktoken_fails_fast_without_network(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to use the network")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(TokenizerError) as err:  # at once: the blocked sockets prove nothing was tried
        build_tokenizer(name)
    msg = one_line(err)
    assert repr(name) in msg and "TIKTOKEN_CACHE_DIR" in msg and str(tmp_path) in msg
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or written


def test_o200k_base_is_not_in_the_shipped_cache_either() -> None:
    with pytest.raises(TokenizerError) as err:
        build_tokenizer("o200k_base")
    assert "TIKTOKEN_CACHE_DIR" in one_line(err)


def test_corrupt_cached_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    (tmp_path / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4").write_bytes(b"not the cl100k ranks")
    with pytest.raises(TokenizerError) as err:
        build_tokenizer("cl100k_base")
    assert "sha256" in one_line(err)
    assert (tmp_path / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4").exists()  # not deleted


# --- BPE ---------------------------------------------------------------------------------------


def test_bpe_compresses_korean_far_better_than_bytes() -> None:
    text = full_text("korean")
    cut = int(len(text) * 0.9)
    train, held_out = text[:cut], text[cut:]
    bpe = build_tokenizer("bpe", train, vocab_size=1024)  # its speed: benchmarks/tokenize_speed.py
    assert bpe.vocab_size == 1024
    n_bytes = len(held_out.encode("utf-8"))
    tokens_per_byte = len(bpe.encode(held_out)) / n_bytes
    assert tokens_per_byte < 0.5  # measured on text the tokenizer never saw
    assert len(tok_for("byte", "korean").encode(held_out)) == n_bytes
    assert bpe.decode(bpe.encode(held_out)) == held_out


def test_bpe_default_vocab_size_is_1024() -> None:
    assert build_tokenizer("bpe", sample("english")).vocab_size == 1024


def test_bpe_on_tiny_text_stops_early_and_still_round_trips() -> None:
    tok = build_tokenizer("bpe", "abc abc", vocab_size=1000)
    assert 256 < tok.vocab_size < 1000
    assert tok.decode(tok.encode("zebra 한글 abc")) == "zebra 한글 abc"


@pytest.mark.parametrize("vocab_size", [255, 0, -3, 2**32, 2**40])  # rustbpe panics below 256, overflows at 2**32
def test_bpe_vocab_outside_256_to_2_32_is_rejected_before_rustbpe(
    vocab_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rustbpe

    def boom() -> None:
        raise AssertionError("rustbpe was called")

    monkeypatch.setattr(rustbpe, "Tokenizer", boom)
    with pytest.raises(TokenizerError) as err:
        build_tokenizer("bpe", sample("english"), vocab_size=vocab_size)
    assert "256" in one_line(err)


# --- char --------------------------------------------------------------------------------------


def test_char_unknown_characters_are_listed() -> None:
    tok = tok_for("char", "english")
    with pytest.raises(TokenizerError) as err:
        tok.encode("Elizabeth said 한글 ☃")
    msg = one_line(err)
    assert "'한'" in msg and "'글'" in msg and "'☃'" in msg
    assert "--tokenizer byte" in msg and "bpe" in msg


def test_char_error_caps_the_list() -> None:
    tok = tok_for("char", "english")
    with pytest.raises(TokenizerError) as err:
        tok.encode(sample("korean")[:5000])
    msg = one_line(err)
    assert "more" in msg and msg.count("'") <= 2 * 10 + 2


# --- bytes and streaming -----------------------------------------------------------------------


def test_decode_bytes_of_a_split_hangul_syllable_is_raw_bytes() -> None:
    byte = tok_for("byte", "korean")
    ids = byte.encode("한")
    assert ids == [0xED, 0x95, 0x9C]
    assert byte.decode_bytes(ids[:1]) == b"\xed"
    assert byte.decode_bytes(ids[:2]) == b"\xed\x95"
    assert byte.decode(ids[:2]) == "\ufffd"  # decode replaces, decode_bytes does not
    assert byte.token_bytes(ids[2]) == b"\x9c"


@pytest.mark.parametrize("kind", ["byte", "bpe", "gpt2", "cl100k_base"])
def test_incremental_utf8_streaming_reconstructs_korean(kind: str) -> None:
    tok = tok_for(kind, "korean")
    text = sample("korean")[-3000:]
    ids = tok.encode(text)
    pieces = [tok.token_bytes(i) for i in ids]
    if kind in ("byte", "gpt2"):  # these split syllables across tokens
        assert any(_invalid_utf8(p) for p in pieces)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    out = "".join(decoder.decode(p) for p in pieces) + decoder.decode(b"", final=True)
    assert out == text and "\ufffd" not in out


def _invalid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.parametrize("kind", KINDS)
def test_decode_accepts_numpy_ids(kind: str) -> None:
    import numpy as np  # a hard dependency: no skip
    tok = tok_for(kind, "korean")
    text = sample("korean")[:300]
    ids = tok.encode(text)
    for arr in (np.array(ids, dtype=np.int64), np.array(ids, dtype=np.uint32)):
        assert tok.decode_bytes(arr) == text.encode("utf-8")
        assert tok.decode(arr) == text


@pytest.mark.parametrize("kind", KINDS)
def test_decoding_an_unknown_id_is_a_tokenizer_error(kind: str) -> None:
    tok = tok_for(kind, "english")
    for bad in (tok.vocab_size, 10**9):
        with pytest.raises(TokenizerError):
            tok.decode([0, bad])
        with pytest.raises(TokenizerError):
            tok.token_bytes(bad)


# --- building ----------------------------------------------------------------------------------


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(TokenizerError) as err:
        build_tokenizer("gpt-2")
    msg = one_line(err)
    assert "'gpt-2'" in msg and all(n in msg for n in ("char", "byte", "bpe", "gpt2", "cl100k_base"))


@pytest.mark.parametrize("name", ["char", "bpe"])
def test_trained_kinds_need_text(name: str) -> None:
    for text in (None, ""):
        with pytest.raises(TokenizerError) as err:
            build_tokenizer(name, text)
        assert "text" in one_line(err)


def test_import_loads_neither_torch_nor_tiktoken() -> None:
    code = ("import sys, gptkit.tokenizers, gptkit.tokenizers.stored; "
            "print(sorted(m for m in ('torch', 'tiktoken', 'rustbpe') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
