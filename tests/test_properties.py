"""Property-based tests (hypothesis): every tokenizer round-trips arbitrary Unicode exactly, and the
checkpoint reader, fed mutated bytes of a real checkpoint, either loads it or raises CheckpointError."""

from __future__ import annotations

import json
import re
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptkit import checkpoint
from gptkit.completion import TextStream
from gptkit.errors import CheckpointError
from gptkit.tokenizers import build_tokenizer
from gptkit.tokenizers.core import CharTokenizer
from gptkit.tokenizers.stored import tokenizer_from_dict
from tests.conftest import ENGLISH, KOREAN, SHAKESPEARE

# Text that breaks naive tokenizers: combining marks (alone too), ZWJ emoji sequences, flags, skin
# tones, conjoining Hangul jamo (which NFC would merge into one syllable), compatibility jamo,
# a BOM, NUL, CRLF, the replacement character, the last code point, and GPT's end-of-text marker.
TRICKY = ["e\u0301", "\u0301", "\u0915\u094d\u0937", "\U0001F468\u200D\U0001F469\u200D\U0001F467", "\U0001F1F0\U0001F1F7",
          "\U0001F44D\U0001F3FD", "\u1100\u1161\u11A8", "\u3131\u314F", "한국어 ", "\ufeff", "\x00", "\r\n", "\ufffd",
          "\U0010FFFF", "<|endoftext|>", "  \t", "Ǆ", "ﬁ", "İ"]
unicode_text = st.lists(st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=16),
                                  st.sampled_from(TRICKY)), max_size=10).map("".join)
TEXT_SETTINGS = settings(max_examples=150, deadline=None)


@pytest.fixture(scope="module")
def tokenizers():
    """byte, gpt2, cl100k_base, and a BPE learnt once from Korean and English prose."""
    text = KOREAN.read_text(encoding="utf-8")[:40_000] + ENGLISH.read_text(encoding="utf-8")[:60_000]
    return {"byte": build_tokenizer("byte"), "bpe": build_tokenizer("bpe", text, 512),
            "gpt2": build_tokenizer("gpt2"), "cl100k_base": build_tokenizer("cl100k_base")}


def assert_round_trip(tok, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    # streamed one token at a time, as `gptkit sample` prints: the same text, never a broken character
    stream = TextStream()
    assert "".join(stream.feed(tok.token_bytes(i)) for i in ids) + stream.finish() == text


@pytest.mark.parametrize("kind", ["byte", "bpe", "gpt2", "cl100k_base"])
@TEXT_SETTINGS
@given(text=unicode_text)
def test_tokenizers_round_trip_arbitrary_unicode(tokenizers, kind, text):
    assert_round_trip(tokenizers[kind], text)


@TEXT_SETTINGS
@given(text=unicode_text.filter(bool), extra=unicode_text)
def test_char_tokenizer_round_trips_text_its_vocabulary_covers(text, extra):
    """A char vocabulary learnt from some text (and rebuilt from its JSON, as a checkpoint does)
    round-trips any text over those characters."""
    tok = tokenizer_from_dict(json.loads(json.dumps(CharTokenizer.from_text(text + extra).to_dict())))
    assert_round_trip(tok, text)
    assert_round_trip(tok, extra + text)


# --- the checkpoint reader on damaged files ----------------------------------------------------

@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    """A small checkpoint trained for real (weights, optimizer moments, char tokenizer, metadata)."""
    from gptkit.config import resolve_config
    from gptkit.train import train

    store = tmp_path_factory.mktemp("props")
    text = store / "tiny.txt"
    text.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    mc, tc = resolve_config("tiny", None, dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                                               max_iters=4, eval_interval=4, eval_iters=1, device="cpu"))
    train(mc, tc, str(text), store / "run", store)
    path = store / "run" / checkpoint.LAST
    return path.read_bytes(), store / "mutated.safetensors"


JSON_VALUES = st.one_of(st.integers(-2, 70), st.sampled_from([0, 2**63, -(2**40)]), st.none(), st.booleans(),
                       st.floats(allow_nan=True), st.text(max_size=4), st.lists(st.integers(-1, 3), max_size=3),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def with_header(data: bytes, header: dict) -> bytes:
    """The same tensor bytes behind a rewritten header (padded to 8 bytes, as safetensors writes)."""
    (n,) = struct.unpack("<Q", data[:8])
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def semantic_edit(draw, data: bytes) -> bytes:
    """A header that is still valid JSON with one value replaced: a model_config field, a tokenizer
    field, a metadata entry, or a tensor's dtype, shape or offsets."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header["__metadata__"]
    where = draw(st.sampled_from(["model_config", "tokenizer", "metadata", "tensor"]))
    if where in ("model_config", "tokenizer"):
        d = json.loads(meta[where])
        d[draw(st.sampled_from(sorted(d)))] = draw(JSON_VALUES)
        meta[where] = json.dumps(d)
    elif where == "metadata":
        meta[draw(st.sampled_from(sorted(meta)))] = draw(st.one_of(st.text(max_size=6), st.just("[]"), st.just("7")))
    else:
        t = header[draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))]
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        t[field] = draw(st.one_of(JSON_VALUES, st.sampled_from(["F16", "I64", "BOOL", "F64"])))
    return with_header(data, header)


@st.composite
def damage(draw, data: bytes):
    """1-4 edits of a checkpoint's bytes: bit flips, inserted or deleted bytes, a truncation, a digit
    changed or a dtype renamed in the header, and header rewrites that stay valid JSON (see
    `semantic_edit`); positions aim mostly at the header, where damage changes what the reader believes."""
    if draw(st.booleans()):
        data = semantic_edit(draw, data)
    (n,) = struct.unpack("<Q", data[:8])
    header_end = 8 + n
    digits = [m.start() for m in re.finditer(rb"\d", data[8:header_end])]
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        size = len(out)
        if size == 0:
            break
        pos = draw(st.one_of(st.integers(0, min(header_end, size) - 1), st.integers(0, size - 1)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "digit", "dtype"]))
        if kind == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del out[pos:pos + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del out[pos:]
        elif kind == "digit" and digits:
            at = 8 + draw(st.sampled_from(digits))
            if at < size:
                out[at] = ord(str(draw(st.integers(0, 9))))
        elif kind == "dtype":
            new = draw(st.sampled_from([b'"F16"', b'"I64"', b'"BOOL"', b'"U8"', b'"F64"', b'"XX"']))
            out[:] = bytes(out).replace(b'"F32"', new, draw(st.integers(1, 3)))
    return bytes(out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_checkpoints_load_or_raise_checkpoint_error(real_checkpoint, data):
    original, path = real_checkpoint
    path.write_bytes(data.draw(damage(original)))
    try:
        model, tok, info = checkpoint.load_for_inference(path)
        checkpoint.load_tensors(info, "optim.")  # what --resume reads besides the weights
    except CheckpointError as e:
        assert str(e) and "\n" not in str(e)
        return
    ids = [0, tok.vocab_size - 1]  # what loads must work: the tokenizer's ids run through the model
    logits, _ = model(torch.tensor([ids]))
    assert logits.shape == (1, 2, model.config.vocab_size)
    tok.decode_bytes(ids)


def test_a_library_message_quoting_a_newline_is_still_one_line(real_checkpoint):
    """Found by the test above: a dtype renamed to a newline made safetensors' message two lines
    ("unknown variant `\\n `"), and the CLI showed only its first half."""
    original, path = real_checkpoint
    path.write_bytes(original.replace(b'"F32"', b'"\\n "', 1))  # JSON's escaped newline, in the same length
    with pytest.raises(CheckpointError, match="unknown variant") as e:
        checkpoint.load_for_inference(path)
    assert "\n" not in str(e.value)
