"""Reading text in bounded pieces, where a text may be cut, and where its validation part begins.

Owns the rules that let a dataset be built in pieces yet come out identical to encoding each side
whole, whatever the piece size:

- **The train/validation split** of an input is one byte offset of its whole text: `1 - val_fraction`
  of its bytes, moved forward to the next line start (after a newline, or where a document starts)
  when one comes within `LOOKAHEAD` bytes, else left there at a character boundary (`Splitter`, which
  finds it while the text streams past, so a compressed file need not be seekable).
- **Chunk cuts** are made only where every pre-tokenizer regex we ship (GPT-2/r50k/p50k, cl100k,
  o200k, rustbpe's GPT-4 pattern) is certain to end a piece: after a newline that follows a
  non-space character and precedes a letter or digit (a line boundary), or, in a text with no such
  line over a long stretch, before the space in "letter space letter" (`find_cut`). A piece never
  spans such a cut, so encoding the chunks one by one gives exactly the ids of the whole text.
  `Chunker` regroups one side's pieces into encoding tasks by that rule, and joins documents: with
  the tokenizer's end-of-text id where it has one, else with a blank line.

It also owns the one check of bytes that should be text (`check_text`: a NUL byte means a binary
file, invalid UTF-8 is named by its first bad byte and that byte's offset in the file), which every
reader uses (`decode_stream` for a stream of any length, `decode_utf8` for bytes in memory,
`argument_text` for the command line); a byte-order mark is skipped. Standard library only; it
does not tokenize (`build.py` does) and never holds more than a few blocks in memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO, Optional

from gptkit.errors import InputError

BOM = b"\xef\xbb\xbf"
BLOCK_BYTES = 1 << 18  # how much of a file is read at a time (about one chunk)
LOOKAHEAD = 1 << 20  # how far past the cut the split looks for a line start
DOC_END = None  # in a stream of pieces: one document ends, the next begins
Piece = Optional[tuple[str, int]]  # (text, its length in UTF-8 bytes), or DOC_END
Task = list  # what one encoding call gets: texts to encode one by one, and ids (end-of-text) between
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


def check_binary(head: bytes, name: str, at: int = 0) -> None:
    """A NUL byte in the first MiB of a file means it is binary: UTF-8 text has none. `head` holds
    the file's bytes from offset `at`."""
    nul = head.find(b"\x00", 0, max(0, HEAD_BYTES - at))
    if nul != -1:
        raise InputError(f"{name} looks like a binary file (a NUL byte at byte offset {at + nul}); give a UTF-8 "
                         "text file")


def check_text(data: bytes, name: str, at: int = 0, cut: bool = False) -> str:
    """`data`, the bytes of the file `name` from byte offset `at`, as text; or a one-line InputError:
    a NUL byte within the file's first MiB (`check_binary`), or invalid UTF-8, named by the first bad
    byte and its offset in the file. With `cut` (`data` stops before the file does), a character cut
    off at the end is left out instead of being called invalid."""
    if at < HEAD_BYTES:
        check_binary(data, name, at)
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


def _incomplete_tail(data: bytes) -> int:
    """How many bytes at the end of `data` are the start of a character cut off by the block end."""
    for i in range(1, min(4, len(data)) + 1):
        b = data[-i]
        if b & 0xC0 == 0x80:
            continue  # continuation byte: look further back for the lead byte
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        return i if need > i else 0
    return 0


def decode_stream(f: BinaryIO, name: str, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[str, int]]:
    """The text of a binary stream as checked (text, UTF-8 bytes) blocks, each ending on a character
    boundary; a leading byte-order mark is skipped. Errors name `name` and the byte offset in the
    stream of the first bad byte (a NUL within the first MiB, invalid UTF-8, a character cut off)."""
    pos, tail, first = 0, b"", True
    while raw := f.read(block_bytes):
        data_at = pos - len(tail)
        pos += len(raw)
        data = tail + raw
        if first:
            if len(data) < len(BOM) and BOM.startswith(data):
                tail = data  # too short to tell yet
                continue
            first = False
            if data.startswith(BOM):
                data, data_at = data[len(BOM):], data_at + len(BOM)
        keep = _incomplete_tail(data)
        data, tail = (data[:-keep], data[-keep:]) if keep else (data, b"")
        text = check_text(data, name, at=data_at)
        if text:
            yield text, len(data)
    if tail and not (first and BOM.startswith(tail)):
        text = check_text(tail, name, at=pos - len(tail))  # a character cut off at the end: raises
        yield text, len(tail)


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class Splitter:
    """Sends one input's pieces to "train" until its validation part begins, then to "val".

    The split is `1 - val_fraction` of the input's `total` text bytes, moved past the next newline
    (or to the next document's start) if that comes within LOOKAHEAD bytes and before the end; else
    it stays there, moved to a character boundary. Text after the cut is held until that is known,
    so at most LOOKAHEAD bytes and one piece wait. `split` is the byte offset once found."""

    def __init__(self, total: int, val_fraction: float) -> None:
        self.total, self.cut = total, int(total * (1.0 - val_fraction))
        self.pos = 0  # text bytes fed so far
        self.state = "train"  # then "search" (past the cut, looking for a line start), then "val"
        self.pending: list[Piece] = []
        self.pending_bytes = 0
        self.split: int | None = None
        self._fallback_at = 0

    def feed(self, piece: Piece) -> list[tuple[str, Piece]]:
        if self.state == "val":
            self.pos += 0 if piece is DOC_END else piece[1]
            return [("val", piece)]
        if piece is DOC_END:
            if self.state == "train":
                return [("train", piece)]
            if self.pos < self.total:  # the next document starts a line after the cut
                return self._split_at(self.pos, [])
            self.pending.append(piece)
            return []
        text, n = piece
        start = self.pos
        self.pos += n
        if self.state == "train":
            if self.pos <= self.cut:
                return [("train", piece)]
            j = self.cut - start  # the cut falls in this piece: train keeps what lies before it
            data = text.encode("utf-8") if not text.isascii() else None
            while data is not None and j < n and data[j] & 0xC0 == 0x80:
                j += 1  # to the start of the character the cut falls in
            k = j if data is None else len(data[:j].decode("utf-8"))
            self.state, self._fallback_at = "search", start + j
            out = [("train", (text[:k], j))] if k else []
            return out + self._search((text[k:], n - j), start + j) if k < len(text) else out
        return self._search(piece, start)

    def _search(self, piece: tuple[str, int], start: int) -> list[tuple[str, Piece]]:
        text, n = piece
        i = text.find("\n")
        if i != -1:
            head = text[:i + 1]
            split = start + utf8_len(head)
            if split < self.total:
                b = split - start
                return self._split_at(split, [("train", (head, b))] + ([("val", (text[i + 1:], n - b))]
                                                                       if i + 1 < len(text) else []))
        self.pending.append(piece)
        self.pending_bytes += n
        if i != -1 or self.pending_bytes > LOOKAHEAD:  # the newline ends the input, or none came soon enough
            return self._give_up()
        return []

    def _split_at(self, split: int, tail: list[tuple[str, Piece]]) -> list[tuple[str, Piece]]:
        out = [("train", p) for p in self.pending] + tail
        self.pending, self.state, self.split = [], "val", split
        return out

    def _give_up(self) -> list[tuple[str, Piece]]:
        out = [("val", p) for p in self.pending]
        self.pending, self.state, self.split = [], "val", self._fallback_at
        return out

    def finish(self) -> list[tuple[str, Piece]]:
        """Call after the last piece: what was still held, and `split` set."""
        if self.state == "search":
            return self._give_up()
        if self.split is None:
            self.split = self.pos if self.state == "train" else self.split
        return []


class Chunker:
    """One side's pieces (train or val, input after input) regrouped into encoding tasks of about
    `size` characters, cut by `find_cut` when `exact` (needed by regex pre-tokenizers; char and byte
    need not). Documents are joined with the id `eot` where the tokenizer has one (each document
    encoded apart), else with a blank line: a newline ends a document's last line where it lacks one,
    then an empty line follows. `chars` counts the characters of the joined text."""

    def __init__(self, size: int, exact: bool, eot: int | None = None) -> None:
        self.size, self.exact, self.eot = size, exact, eot
        self.buf = ""  # text not yet cut (for eot, of the current document only)
        self.task: Task = []
        self.task_chars = 0
        self.chars = 0
        self.open = False  # text came since the last document end
        self.sep_due = False
        self.ends_line = False

    def feed(self, piece: Piece) -> list[Task]:
        if piece is DOC_END:
            if self.open:
                self.open, self.sep_due = False, True
                if self.eot is not None:
                    self._take(self.buf)  # the document ends: its tail needs no cut
                    self.buf = ""
            return self._ready()
        text = piece[0]
        if not text:
            return []
        if self.sep_due:
            self.sep_due = False
            if self.eot is not None:
                self.task.append(self.eot)
            else:
                sep = "\n" if self.ends_line else "\n\n"
                self.buf += sep
                self.chars += len(sep)
        self.open = True
        self.ends_line = text.endswith("\n")
        self.chars += len(text)
        buf, start, out = self.buf + text if self.buf else text, 0, []
        while len(buf) - start > self.size:
            cut = find_cut(buf, start + self.size) if self.exact else len(buf)
            if cut is None:
                break  # no safe cut yet: wait for more text (only text without lines or spaces gets here)
            self._take(buf[start:cut])
            start = cut
            out += self._ready()  # one task per chunk: a block's chunks go to different threads
        self.buf = buf[start:] if start else buf
        return out + self._ready()

    def _take(self, text: str) -> None:
        if text:
            self.task.append(text)
            self.task_chars += len(text)

    def _ready(self) -> list[Task]:
        if self.task_chars < self.size:
            return []
        task, self.task, self.task_chars = self.task, [], 0
        return [task]

    def finish(self) -> list[Task]:
        self._take(self.buf)
        self.buf = ""
        task, self.task, self.task_chars = self.task, [], 0
        return [task] if task else []
