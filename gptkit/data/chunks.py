"""Reading a UTF-8 text file in bounded pieces, and cutting text where tokenization cannot change.

Owns the two rules that let a dataset be built in chunks yet come out identical to encoding the
whole text at once, whatever the chunk size:

- **The train/validation split** is decided on the whole file, not per chunk: the byte offset at
  `1 - val_fraction` moved to the start of the next line (`split_offset`).
- **Chunk cuts** are made only where every pre-tokenizer regex we ship (GPT-2/r50k/p50k, cl100k,
  o200k, rustbpe's GPT-4 pattern) is certain to end a piece: after a newline that follows a
  non-space character and precedes a letter or digit (a line boundary), or, in a text with no such
  line over a long stretch, before the space in "letter space letter" (`find_cut`). A piece never
  spans such a cut, so encoding the chunks one by one gives exactly the ids of the whole text.

It also owns the one check of bytes that should be text (`check_text`: a NUL byte means a binary
file, invalid UTF-8 is named by its first bad byte and that byte's offset in the file), which
`sources.py` and `gptkit train`'s early look at a file use too (`decode_utf8`, `argument_text`); it streams a file as checked text
blocks, skips a byte-order mark, and rejects empty files in one line. Standard library only; it does
not tokenize (`build.py` does) and never holds more than a few blocks in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gptkit.errors import InputError

BOM = b"\xef\xbb\xbf"
BLOCK_BYTES = 1 << 20  # how much of the file is read at a time
HEAD_BYTES = 1 << 20  # a NUL byte in this much of a file's start means a binary file
# A line boundary: the newline is the whole whitespace run before it (so `\s+(?!\S)` and
# `\s*[\r\n]+` both end exactly there) and a letter or digit follows (never a prefix of a piece
# that starts before it; "/" or punctuation could be, for o200k's `[\r\n/]*`).
# Patterns start with the literal so `re` can skip ahead quickly; the cut is after the newline.
_LINE_CUT = re.compile(r"\n(?=[^\W_])(?<=\S\n)")
# Fallback inside a long line: "a b" -> "a" | " b"; every pattern starts a new piece at " b".
_WORD_CUT = re.compile(r" (?=[^\W\d_])(?<=[^\W\d_] )")


def find_cut(text: str, lo: int) -> int | None:
    """The first position >= lo where `text` can be cut without changing its tokens, or None.

    Line boundaries are preferred; a cut between words is used only when no line boundary follows.
    """
    lo = max(lo, 1)
    m = _LINE_CUT.search(text, lo - 1)
    if m:
        return m.end()
    m = _WORD_CUT.search(text, lo)
    return m.start() if m else None


def split_text(text: str, size: int) -> Iterator[str]:
    """`text` in pieces of at least `size` characters (the last may be shorter), cut by `find_cut`."""
    start = 0
    while start < len(text):
        cut = find_cut(text, start + size) if len(text) - start > size else None
        end = len(text) if cut is None else cut
        yield text[start:end]
        start = end


def rechunk(blocks: Iterable[str], size: int, exact: bool = True) -> Iterator[str]:
    """Regroup text blocks into chunks of about `size` characters, cut by `find_cut` when `exact`
    (needed for regex pre-tokenizers), else at the block ends (enough for char and byte)."""
    buf, start = "", 0
    for block in blocks:
        buf = buf[start:] + block if start < len(buf) else block
        start = 0
        while len(buf) - start > size:
            cut = find_cut(buf, start + size) if exact else len(buf)
            if cut is None:
                break  # no safe cut yet: read more (only a text without lines or spaces gets here)
            yield buf[start:cut]
            start = cut
    if start < len(buf):
        yield buf[start:]


def check_binary(head: bytes, name: str) -> None:
    """A NUL byte in the first MiB of a file means it is binary: UTF-8 text has none."""
    if b"\x00" in head[:HEAD_BYTES]:
        raise InputError(f"{name} looks like a binary file (it contains NUL bytes); give a UTF-8 text file")


def check_text(data: bytes, name: str, at: int = 0, cut: bool = False) -> str:
    """`data`, the bytes of the file `name` from byte offset `at`, as text; or a one-line InputError:
    a NUL byte within the file's first MiB (`check_binary`), or invalid UTF-8, named by the first bad
    byte and its offset in the file. With `cut` (`data` stops before the file does), a character cut
    off at the end is left out instead of being called invalid."""
    if at < HEAD_BYTES:
        check_binary(data[:HEAD_BYTES - at], name)
    if cut:
        data = data[:len(data) - _incomplete_tail(data)]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if not cut and e.reason == "unexpected end of data":  # valid up to a character the file cuts off
            raise InputError(
                f"{name} ends in the middle of a character (its last {len(data) - e.start} byte(s), from byte "
                f"offset {at + e.start}, start one that never finishes): was it cut short, e.g. by `head -c`? "
                "Cut text at a line instead, e.g. with `head -n`"
            ) from None
        raise InputError(
            f"{name} is not valid UTF-8 (bad byte 0x{data[e.start]:02x} at byte offset {at + e.start}); "
            "convert it, e.g. `iconv -f cp949 -t utf-8`"
        ) from None


def decode_utf8(data: bytes, name: str, cut: bool = False, empty_ok: bool = False) -> str:
    """Bytes -> text, rejecting binary files, invalid UTF-8 (with the offset of the first bad byte) and
    (unless `empty_ok`) empty or whitespace-only text. With `cut`, `data` is only the start of a file:
    a character cut off at its end is dropped, and emptiness is not judged (the rest may hold text)."""
    text = check_text(data, name, cut=cut)
    if text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark is not part of the text
    if not (cut or empty_ok) and not text.strip():
        raise InputError(f"{name} is empty or only whitespace; give a file with some text in it")
    return text


def argument_text(text: str, name: str) -> str:
    """A command-line argument as text, or the same one-line error as a file of invalid UTF-8: Python
    decodes the command line with surrogateescape, so each byte that is not UTF-8 arrives as a lone
    surrogate, which would fail later (and far from here) when the text is encoded."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        data = text.encode("utf-8", "surrogateescape")  # the bytes the user typed
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        raise InputError(f"{name} is not valid Unicode text") from None
    return decode_utf8(data, name, empty_ok=True)



@dataclass
class TextFile:
    """An open UTF-8 file: its text lies in bytes [start, end) (start is 3 after a byte-order mark)."""

    f: BinaryIO
    name: str  # for messages: the path as the user gave it, quoted
    start: int
    end: int

    @property
    def n_bytes(self) -> int:
        return self.end - self.start


def open_text(f: BinaryIO, name: str) -> TextFile:
    """Check a seekable binary stream holds text: not empty, no NUL in its first MiB (binary); its
    UTF-8 is checked as it is read (`read_blocks`)."""
    f.seek(0, 2)
    end = f.tell()
    f.seek(0)
    head = f.read(HEAD_BYTES)
    check_binary(head, name)
    start = len(BOM) if head.startswith(BOM) else 0
    if end - start == 0:
        raise InputError(f"{name} is empty; give a file with some text in it")
    return TextFile(f, name, start, end)


def open_path(path: str | Path) -> TextFile:
    """Open a text file by path with one-line errors for a missing file, a folder or no permission."""
    p = Path(path)
    name = repr(str(path))
    if p.is_dir():
        raise InputError(f"{name} is a directory; give a UTF-8 text file")
    try:
        f = open(p, "rb")  # noqa: SIM115 - closed by the caller (TextFile.f)
    except FileNotFoundError:
        raise InputError(f"{name} does not exist; give a path to a UTF-8 text file") from None
    except OSError as e:
        raise InputError(f"cannot read {name}: {e.strerror}") from None
    try:
        return open_text(f, name)
    except BaseException:
        f.close()
        raise


def split_offset(tf: TextFile, val_fraction: float) -> int:
    """Byte offset where validation starts: `1 - val_fraction` of the text, moved to the next line.

    With no newline after that point the cut stays there (moved to a character boundary)."""
    cut = tf.start + int(tf.n_bytes * (1.0 - val_fraction))
    if cut >= tf.end:
        return tf.end
    tf.f.seek(cut)
    pos = cut
    while pos < tf.end:
        block = tf.f.read(min(1 << 16, tf.end - pos))
        if not block:
            break
        nl = block.find(b"\n")
        if nl != -1:
            return pos + nl + 1 if pos + nl + 1 < tf.end else _char_start(tf, cut)
        pos += len(block)
    return _char_start(tf, cut)


def _char_start(tf: TextFile, pos: int) -> int:
    """`pos` moved forward past UTF-8 continuation bytes (0b10xxxxxx) to a character start."""
    tf.f.seek(pos)
    for i, b in enumerate(tf.f.read(4)):
        if b & 0xC0 != 0x80:
            return pos + i
    return min(pos + 4, tf.end)


def _incomplete_tail(data: bytes) -> int:
    """How many bytes at the end of `data` are the start of a character cut off by the block end."""
    for i in range(1, min(4, len(data)) + 1):
        b = data[-i]
        if b & 0xC0 == 0x80:
            continue  # continuation byte: look further back for the lead byte
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        return i if need > i else 0
    return 0


def read_blocks(tf: TextFile, start: int, end: int, block_bytes: int = BLOCK_BYTES,
                on_bytes: Callable[[bytes], None] | None = None) -> Iterator[str]:
    """The text of bytes [start, end) as decoded blocks, each ending on a character boundary.

    `on_bytes` sees every raw block read (for hashing and progress). Invalid UTF-8 is an
    `InputError` naming the byte offset in the file of the first bad byte."""
    tf.f.seek(start)
    pos, tail = start, b""
    while pos < end:
        raw = tf.f.read(min(block_bytes, end - pos))
        if not raw:
            raise InputError(f"{tf.name} became shorter while being read; do not change it during the build")
        if on_bytes is not None:
            on_bytes(raw)
        data_at = pos - len(tail)
        pos += len(raw)
        data = tail + raw
        keep = _incomplete_tail(data) if pos < end else 0
        data, tail = (data[:-keep], data[-keep:]) if keep else (data, b"")
        text = check_text(data, tf.name, at=data_at)
        if text:
            yield text
