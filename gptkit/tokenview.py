"""What `gptkit tokenize` shows: tokens with their pieces and offsets, counts, and tokenizer comparisons.

Owns the numbers behind the views: each token's bytes, a legible label (bytes that are only part of
a character, like one byte of a Hangul syllable in gpt2, become `<0xEC>`, never `�`), character and
byte offsets, the segments of the coloured text view (a character split across tokens is one
segment, so the text stays readable), counts (characters, bytes, tokens, bytes per token) and the
comparison table (tokens, bytes per token, tokens per character, vocabulary, share of tokens that
split a character, held-out tokens per character on the last 10%).
It does not print or pick colours (the CLI renders), and it never imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gptkit.errors import TokenizerError
from gptkit.tokenizer import (
    TOKENIZER_NAMES,
    CharTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    build_tokenizer,
)
from gptkit.tokenizer_io import load_tokenizer

HELD_OUT = 0.1  # the compare table's held-out part: the last 10% of the text, cut at a line
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible_char(ch: str) -> str:
    """A character as it is displayed: control characters escaped so they cannot drive the terminal."""
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    return f"\\x{ord(ch):02x}" if ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 else ch


def resolve_tokenizer(spec: str, train_text: str | None = None, vocab_size: int | None = None) -> Tokenizer:
    """A tokenizer from a name (char and bpe learn from `train_text`) or a JSON file saved earlier."""
    if spec in TOKENIZER_NAMES:
        return build_tokenizer(spec, train_text, vocab_size)
    if spec.endswith(".json") or Path(spec).is_file():
        return load_tokenizer(spec)
    raise TokenizerError(f"unknown tokenizer {spec!r}; choose one of: {', '.join(TOKENIZER_NAMES)}, "
                         "or a tokenizer .json file saved with --save-tokenizer")


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """(vocab_size,) int64: how many UTF-8 bytes each token id stands for (0 for unused ids)."""
    if tok.kind == "byte":
        return np.ones(256, dtype=np.int64)
    if isinstance(tok, CharTokenizer):
        return np.array([len(c.encode("utf-8")) for c in tok.chars], dtype=np.int64)
    lengths = np.zeros(tok.vocab_size, dtype=np.int64)
    if isinstance(tok, TiktokenTokenizer):
        for piece, rank in tok.mergeable_ranks.items():
            lengths[rank] = len(piece)
        for text, i in tok.special_tokens.items():
            lengths[i] = len(text.encode("utf-8"))
        return lengths
    for i in range(tok.vocab_size):
        lengths[i] = len(tok.token_bytes(i))
    return lengths


@dataclass
class Boundaries:
    """Where tokens sit in the text: per token, byte and character offsets; whether it splits a character."""

    byte_start: np.ndarray  # (n_tokens,)
    byte_end: np.ndarray  # (n_tokens,)
    char_start: np.ndarray  # (n_tokens,) first character the token touches
    char_end: np.ndarray  # (n_tokens,) one past the last character it touches
    partial: np.ndarray  # (n_tokens,) bool: starts or ends inside a multi-byte character


def boundaries(data: bytes, ids: np.ndarray, lengths: np.ndarray) -> Boundaries:
    """Offsets of `ids` (the encoding of the UTF-8 bytes `data`), computed with array operations."""
    ends = np.cumsum(lengths[ids]) if len(ids) else np.zeros(0, dtype=np.int64)
    assert not len(ids) or ends[-1] == len(data), "ids do not encode these bytes"
    starts = ends - lengths[ids]
    b = np.frombuffer(data, dtype=np.uint8)
    is_char_start = np.append((b & 0xC0) != 0x80, True)  # (n_bytes + 1,): also true at the very end
    char_of_byte = np.cumsum(is_char_start) - 1  # (n_bytes + 1,) index of the character holding the byte
    partial = ~is_char_start[starts] | ~is_char_start[ends]
    char_end = np.where(ends > starts, char_of_byte[np.maximum(ends - 1, 0)] + 1, char_of_byte[starts])
    return Boundaries(starts, ends, char_of_byte[starts], char_end, partial)


def label(piece: bytes) -> str:
    """A token's bytes as readable text: whole characters as themselves (\\n, \\t, \\r and other
    control characters escaped), bytes that are only part of a character as <0xEC>."""
    out, i = [], 0
    while i < len(piece):
        for n in (1, 2, 3, 4):
            try:
                ch = piece[i:i + n].decode("utf-8")
            except UnicodeDecodeError:
                continue
            out.append(visible_char(ch))
            i += n
            break
        else:
            out.append(f"<0x{piece[i]:02X}>")
            i += 1
    return "".join(out)


@dataclass
class Token:
    """One token of a text, as `--json` reports it."""

    id: int
    text: str | None  # the piece as text; None when it is only part of a character
    bytes: list[int]
    label: str  # readable form (see `label`)
    start: int  # character offsets in the text: the characters this token touches
    end: int
    byte_start: int
    byte_end: int


def tokens_of(tok: Tokenizer, text: str, ids: list[int]) -> list[Token]:
    """Every token of `text` (encoded as `ids`) with its bytes, label and offsets."""
    arr = np.asarray(ids, dtype=np.int64)
    bounds = boundaries(text.encode("utf-8"), arr, token_byte_lengths(tok))
    out = []
    for k, i in enumerate(ids):
        piece = tok.token_bytes(i)
        out.append(Token(id=int(i), text=None if bounds.partial[k] else piece.decode("utf-8"), bytes=list(piece),
                         label=label(piece), start=int(bounds.char_start[k]), end=int(bounds.char_end[k]),
                         byte_start=int(bounds.byte_start[k]), byte_end=int(bounds.byte_end[k])))
    return out


def segments(text: str, tokens: list[Token]) -> list[tuple[str, int, int, bool]]:
    """The text view's pieces of `text`: (text, first token, one past the last token, split). A
    character split across tokens joins those tokens into one segment marked split; the rest is one
    segment per token."""
    out: list[tuple[str, int, int, bool]] = []
    k = 0
    while k < len(tokens):
        first, end, split = k, tokens[k].end, tokens[k].text is None
        k += 1
        while k < len(tokens) and tokens[k].start < end:  # shares a character with the segment so far
            end, split = max(end, tokens[k].end), True
            k += 1
        out.append((text[tokens[first].start:end], first, k, split))
    return out


@dataclass
class Counts:
    chars: int
    bytes: int
    tokens: int

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens if self.tokens else 0.0

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / self.chars if self.chars else 0.0


@dataclass
class CompareRow:
    """One tokenizer's line in the comparison table."""

    tokenizer: str
    vocab_size: int
    tokens: int
    bytes_per_token: float
    tokens_per_char: float
    split_share: float  # fraction of tokens that start or end inside a multi-byte character
    held_out_tokens_per_char: float  # on the last 10%; char and bpe learnt from the rest (or --train-file)
    trained_on: str  # "" for fixed tokenizers, else what char/bpe learnt from

    def as_dict(self) -> dict:
        return asdict(self)


def compare(text: str, specs: list[str], vocab_size: int | None = None,
            train_text: str | None = None) -> list[CompareRow]:
    """Each tokenizer on `text`, as `gptkit train` would build it: char learns the whole text
    (validation must be encodable), bpe the first 90% (or `train_text` for both when given);
    held-out tokens per character are counted on the last 10%."""
    from gptkit.data import split_point
    from gptkit.dataset_build import array_encoder

    cut = split_point(text, HELD_OUT)
    held_out = text[cut:]
    data = text.encode("utf-8")
    rows = []
    for spec in specs:
        if train_text is not None:
            learn, trained_on = train_text, "--train-file"
        else:
            learn, trained_on = (text, "all of the text") if spec == "char" else (text[:cut], "first 90%")
        tok = resolve_tokenizer(spec, learn, vocab_size)
        encode = array_encoder(tok)
        ids = encode(text).astype(np.int64)
        bounds = boundaries(data, ids, token_byte_lengths(tok))
        counts = Counts(len(text), len(data), len(ids))
        held = len(encode(held_out)) / len(held_out) if held_out else float("nan")
        rows.append(CompareRow(spec if spec in TOKENIZER_NAMES else f"{spec} ({tok.name})", tok.vocab_size,
                               counts.tokens, counts.bytes_per_token, counts.tokens_per_char,
                               float(bounds.partial.mean()) if len(ids) else 0.0, held,
                               trained_on if spec in ("char", "bpe") else ""))
    return rows
