"""What `gptkit tokenize` shows: tokens with their pieces and offsets, counts, and tokenizer comparisons.

Owns the numbers behind the views: each token's bytes, a legible label (bytes that are only part of
a character, like one byte of a Hangul syllable in gpt2, become `<0xEC>`, never `�`), character and
byte offsets, the segments of the coloured text view (a character split across tokens is one
segment, so the text stays readable), counts (characters, bytes, tokens, bytes per token) and the
comparison table (tokens, bytes per token, tokens per character, vocabulary, share of tokens that
split a character, held-out tokens per character on the last 10%).
A text of many megabytes has tens of millions of tokens: the views stream them (`iter_tokens`,
`iter_segments`), working out offsets for CHUNK_TOKENS tokens at a time and each id's piece once.
It does not print or pick colours (the CLI renders), and it never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

from gptkit.tokenizers import TOKENIZER_NAMES, resolve_tokenizer
from gptkit.tokenizers.bpe import TiktokenTokenizer
from gptkit.tokenizers.core import CharTokenizer, Tokenizer

HELD_OUT = 0.1  # the compare table's held-out part: the last 10% of the text, cut at a line
CHUNK_TOKENS = 1 << 14  # tokens whose offsets and output the streaming views hold at a time: bounds their memory
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible_char(ch: str) -> str:
    """A character as it is displayed: control characters escaped so they cannot drive the terminal."""
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    return f"\\x{ord(ch):02x}" if ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 else ch


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
    bounds = _boundaries_from(np.frombuffer(data, dtype=np.uint8), np.asarray(ids, dtype=np.int64), lengths, 0, 0)
    assert not len(ids) or bounds.byte_end[-1] == len(data), "ids do not encode these bytes"
    return bounds


def _boundaries_from(b: np.ndarray, ids: np.ndarray, lengths: np.ndarray, byte0: int, chars_before: int) -> Boundaries:
    """`boundaries` of `ids` that encode the bytes `b` (the whole text) from offset `byte0` on, where
    `chars_before` characters start before `byte0`: only that stretch of the text is looked at."""
    ends = byte0 + np.cumsum(lengths[ids])
    starts = ends - lengths[ids]
    stop = int(ends[-1]) if len(ids) else byte0
    is_char_start = (b[byte0:stop + 1] & 0xC0) != 0x80  # (stop - byte0 + 1,): the byte after the stretch too
    if stop == len(b):
        is_char_start = np.append(is_char_start, True)  # the very end of the text ends a character
    char_of_byte = chars_before - 1 + np.cumsum(is_char_start)  # index of the character holding each byte
    s, e = starts - byte0, ends - byte0
    partial = ~is_char_start[s] | ~is_char_start[e]
    char_end = np.where(e > s, char_of_byte[np.maximum(e - 1, 0)] + 1, char_of_byte[s])
    return Boundaries(starts, ends, char_of_byte[s], char_end, partial)


def chunk_boundaries(data: bytes, ids: np.ndarray, lengths: np.ndarray,
                     size: int | None = None) -> Iterator[tuple[int, Boundaries]]:
    """`boundaries(data, ids, lengths)` in runs of `size` tokens (CHUNK_TOKENS by default): (index of
    the run's first token, its offsets in the whole text). Memory follows the run, not the text, and a
    run may end inside a character: the offsets are the same as for the whole text at once."""
    size = size or CHUNK_TOKENS
    b = np.frombuffer(data, dtype=np.uint8)
    byte0 = chars_before = 0
    for first in range(0, len(ids), size):
        bounds = _boundaries_from(b, np.asarray(ids[first:first + size], dtype=np.int64), lengths, byte0, chars_before)
        stop = int(bounds.byte_end[-1])
        chars_before += int(np.count_nonzero((b[byte0:stop] & 0xC0) != 0x80))
        byte0 = stop
        yield first, bounds
    assert byte0 == len(data), "ids do not encode these bytes"


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


@dataclass(frozen=True)
class Piece:
    """What one token id stands for, whatever its place in the text."""

    bytes: bytes
    label: str  # see `label`
    text: str | None  # the bytes as text; None when they are not whole characters


class Pieces(dict):
    """Token id -> its Piece, worked out on first use: a long text repeats its vocabulary, so each id's
    bytes and label are computed once instead of once per token. One Pieces serves many texts (the
    documents of `--json --lines`), as do its `lengths`."""

    def __init__(self, tok: Tokenizer) -> None:
        super().__init__()
        self.tok = tok

    @cached_property
    def lengths(self) -> np.ndarray:
        """`token_byte_lengths` of the tokenizer (a pass over its vocabulary: worth doing once)."""
        return token_byte_lengths(self.tok)

    def __missing__(self, token_id: int) -> Piece:
        data = self.tok.token_bytes(token_id)
        try:
            text: str | None = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        piece = self[token_id] = Piece(data, label(data), text)
        return piece


def iter_tokens(tok: Tokenizer, text: str, ids: np.ndarray | list[int], pieces: Pieces | None = None,
                size: int | None = None) -> Iterator[Token]:
    """Every token of `text` (encoded as `ids`) with its bytes, label and offsets, made as they are
    asked for: offsets are worked out `size` tokens at a time (see `chunk_boundaries`)."""
    pieces = Pieces(tok) if pieces is None else pieces
    arr = np.asarray(ids)
    for first, bounds in chunk_boundaries(text.encode("utf-8"), arr, pieces.lengths, size):
        run = arr[first:first + len(bounds.partial)].tolist()
        for i, partial, start, end, byte_start, byte_end in zip(
                run, bounds.partial.tolist(), bounds.char_start.tolist(), bounds.char_end.tolist(),
                bounds.byte_start.tolist(), bounds.byte_end.tolist(), strict=True):
            p = pieces[i]
            yield Token(i, None if partial else p.text, list(p.bytes), p.label, start, end, byte_start, byte_end)


def iter_segments(text: str, tokens: Iterable[Token]) -> Iterator[tuple[str, list[Token], bool]]:
    """The text view's pieces of `text` as (text, its tokens, split), from a stream of tokens: a
    character split across tokens joins those tokens into one segment marked split; the rest is one
    segment per token. Only the current segment's tokens are held."""
    group: list[Token] = []
    end, split = 0, False
    for t in tokens:
        if group and t.start < end:  # shares a character with the segment so far
            group.append(t)
            end, split = max(end, t.end), True
            continue
        if group:
            yield text[group[0].start:end], group, split
        group, end, split = [t], t.end, t.text is None
    if group:
        yield text[group[0].start:end], group, split


def segments(text: str, tokens: Iterable[Token]) -> list[tuple[str, int, int, bool]]:
    """`iter_segments` as (text, first token, one past the last token, split), with token indices."""
    out: list[tuple[str, int, int, bool]] = []
    k = 0
    for seg, group, split in iter_segments(text, tokens):
        out.append((seg, k, k + len(group), split))
        k += len(group)
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
            learnt: Callable[[str], Tokenizer] | None = None) -> list[CompareRow]:
    """Each tokenizer on `text`, as `gptkit train` would build it: char learns the whole text
    (validation must be encodable), bpe the first 90%; or each as `learnt(spec)` builds it (char and
    bpe learnt from --train-file). Held-out tokens per character are counted on the last 10%."""
    from gptkit.data.dataset import split_point

    cut = split_point(text, HELD_OUT)
    held_out = text[cut:]
    data = text.encode("utf-8")
    rows = []
    for spec in specs:
        if learnt is not None:
            tok, trained_on = learnt(spec), "--train-file"
        else:
            learn, trained_on = (text, "all of the text") if spec == "char" else (text[:cut], "first 90%")
            tok = resolve_tokenizer(spec, learn, vocab_size)
        encode = tok.encode_array
        ids = encode(text).astype(np.int64)
        bounds = boundaries(data, ids, token_byte_lengths(tok))
        counts = Counts(len(text), len(data), len(ids))
        held = len(encode(held_out)) / len(held_out) if held_out else float("nan")
        rows.append(CompareRow(spec if spec in TOKENIZER_NAMES else f"{spec} ({tok.name})", tok.vocab_size,
                               counts.tokens, counts.bytes_per_token, counts.tokens_per_char,
                               float(bounds.partial.mean()) if len(ids) else 0.0, held,
                               trained_on if spec in ("char", "bpe") else ""))
    return rows
