"""How `gptkit tokenize` draws its results: rich views for a terminal, plain text for everything else.

Owns the colours (alternating token backgrounds; a character split across tokens underlined on
underlined), the token and comparison tables, the plain forms scripts read (pieces joined by
`|`, the --json document, tab-separated tables); a dataset build's progress is `data_view`'s. It
computes nothing (`gptkit.introspect.tokens` does) and imports rich only when drawing for a terminal.
The plain view and the --json document come as an iterator of parts of about CHUNK_TOKENS tokens
each, so a text of tens of millions of tokens is written as it is made, never held as one string.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from gptkit.introspect import tokens as token_pieces
from gptkit.introspect.tokens import CompareRow, Counts, Pieces, Token, iter_segments, segments, visible_char

PALETTE = ("black on #a8dadc", "black on #f1c0e8", "black on #fde4cf", "black on #b9fbc0", "black on #cfbaf0")
MAX_ROWS = 1000  # the terminal table stops here; --json lists every token
MAX_COLOURED = 5000  # tokens drawn in colour; a whole book would flood the terminal and take minutes
SHOWN = max(MAX_ROWS, MAX_COLOURED)  # the tokens the terminal view needs; the rest are only counted


def counts_line(tok: Any, counts: Counts) -> str:
    return (f"{counts.chars:,} characters, {counts.bytes:,} bytes, {counts.tokens:,} tokens, "
            f"{counts.bytes_per_token:.2f} bytes per token ({tok.name}, {tok.vocab_size:,} ids)")


def plain_view(tok: Any, text: str, tokens: Iterable[Token], counts: Counts) -> Iterator[str]:
    """Token labels joined by `|`; characters split across tokens as {안=<0xEC>|<0x95>|<0x88>}; a new
    line after each token that ends a line; then the counts. Yielded in parts of about CHUNK_TOKENS
    tokens, read from `tokens` as they come."""
    parts: list[str] = []
    bar, ended_line, n = "", False, 0  # bar: what goes before the next segment ("" at a line's start)
    for seg, group, split in iter_segments(text, tokens):
        labels = "|".join([t.label for t in group])
        if split:
            labels = "{" + "".join(map(visible_char, seg)) + "=" + labels + "}"
        ended_line = seg.endswith("\n")
        parts.append(bar + labels + ("\n" if ended_line else ""))
        bar = "" if ended_line else "|"
        n += len(group)
        if n >= token_pieces.CHUNK_TOKENS:
            yield "".join(parts)
            parts, n = [], 0
    parts.append(("" if ended_line else "\n") + counts_line(tok, counts) + "\n")
    yield "".join(parts)


def joined_ids(ids: np.ndarray, sep: str) -> Iterator[str]:
    """`sep.join` of the ids as decimal text, in parts of CHUNK_TOKENS ids (--ids, and --json's list)."""
    size = token_pieces.CHUNK_TOKENS
    for first in range(0, len(ids), size):
        yield (sep if first else "") + sep.join(map(str, ids[first:first + size].tolist()))


class JsonFields(dict):
    """Token id -> the fields of its --json entry that depend on the id alone, as JSON text: (its text,
    '"bytes": [...], "label": "..."'), made once per id and shared by every document."""

    def __init__(self, pieces: Pieces) -> None:
        super().__init__()
        self.pieces = pieces

    def __missing__(self, token_id: int) -> tuple[str, str]:
        p = self.pieces[token_id]
        fields = self[token_id] = (json.dumps(p.text, ensure_ascii=False),
                                   f'"bytes": {json.dumps(list(p.bytes))}, "label": {json.dumps(p.label, ensure_ascii=False)}')
        return fields


def json_document(tok: Any, text: str, ids: np.ndarray, fields: JsonFields | None = None) -> Iterator[str]:
    """The --json document of `text` (encoded as `ids`), in parts: tokenizer, vocab_size, chars, bytes,
    count, ids, then every token's fields (see `token_pieces.Token`) -- the bytes `json.dumps` gives for
    the whole document at once (`ensure_ascii=False`), without ever holding it."""
    fields = JsonFields(Pieces(tok)) if fields is None else fields
    head = {"tokenizer": tok.name, "vocab_size": tok.vocab_size, "chars": len(text),
            "bytes": len(text.encode("utf-8")), "count": len(ids)}
    yield json.dumps(head, ensure_ascii=False)[:-1] + ', "ids": ['
    yield from joined_ids(ids, ", ")
    yield '], "tokens": ['
    size = token_pieces.CHUNK_TOKENS
    parts: list[str] = []
    sep = ""  # between one part's tokens and the next part's
    for t in token_pieces.iter_tokens(tok, text, ids, fields.pieces):
        text_json, bytes_label = fields[t.id]
        parts.append(f'{{"id": {t.id}, "text": {"null" if t.text is None else text_json}, {bytes_label}, '
                     f'"start": {t.start}, "end": {t.end}, "byte_start": {t.byte_start}, "byte_end": {t.byte_end}}}')
        if len(parts) >= size:
            yield sep + ", ".join(parts)
            sep, parts = ", ", []
    yield (sep if parts else "") + ", ".join(parts) + "]}"


def rich_view(tok: Any, text: str, tokens: list[Token], counts: Counts) -> None:
    """The text on alternating colours, one per token, then a table of id / piece / bytes, then counts.
    `tokens` need only be the first SHOWN of them; `counts` has the total."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    view = Text()
    any_split = False
    for n, (seg, _first, _stop, split) in enumerate(segments(text, tokens[:MAX_COLOURED])):
        any_split = any_split or split
        shown = "".join("↵\n" if c == "\n" else visible_char(c) for c in seg)
        view.append(shown, style=PALETTE[n % len(PALETTE)] + (" underline" if split else ""))
    console.print(view)
    if counts.tokens > MAX_COLOURED:
        console.print(Text(f"… the first {MAX_COLOURED:,} of {counts.tokens:,} tokens; --json or --ids give all",
                           style="dim"))
    if any_split:
        console.print(Text("underlined: characters split across tokens (their bytes are shown as <0x..> below)",
                           style="dim"))
    table = Table(show_edge=False, header_style="bold")
    for name, justify in (("#", "right"), ("id", "right"), ("piece", "left"), ("bytes", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for k, t in enumerate(tokens[:MAX_ROWS]):
        piece = Text(t.label)
        if t.text is None:
            piece.append(f"  part of {text[t.start:t.end]!r}", style="dim")
        table.add_row(str(k), str(t.id), piece, " ".join(f"{b:02x}" for b in t.bytes))
    if counts.tokens > MAX_ROWS:
        table.caption = f"first {MAX_ROWS:,} of {counts.tokens:,} tokens; --json lists them all"
    console.print(table)
    console.print(counts_line(tok, counts))


_COLUMNS = ("tokenizer", "vocab", "tokens", "bytes/token", "tokens/char", "split chars", "held-out tokens/char",
            "char/bpe learnt from")
_SHORT = ("tokenizer", "vocab", "tokens", "bytes/\ntoken", "tokens/\nchar", "split\nchars", "held-out\ntokens/char")


def _cells(r: CompareRow) -> tuple[str, ...]:
    held = "-" if math.isnan(r.held_out_tokens_per_char) else f"{r.held_out_tokens_per_char:.3f}"
    return (r.tokenizer, f"{r.vocab_size:,}", f"{r.tokens:,}", f"{r.bytes_per_token:.2f}", f"{r.tokens_per_char:.3f}",
            f"{100 * r.split_share:.1f}%", held)


def plain_compare(rows: list[CompareRow]) -> str:
    """Tab-separated, with a header line; numbers without thousands separators."""
    lines = ["\t".join(c.replace(" ", "_") for c in _COLUMNS)]
    for r in rows:
        lines.append("\t".join((r.tokenizer, str(r.vocab_size), str(r.tokens), f"{r.bytes_per_token:.4f}",
                                f"{r.tokens_per_char:.4f}", f"{r.split_share:.4f}", f"{r.held_out_tokens_per_char:.4f}",
                                r.trained_on.replace(" ", "_") or "-")))
    return "\n".join(lines) + "\n"


def rich_compare(rows: list[CompareRow]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(header_style="bold", caption="held-out: the last 10% of the text (bpe learnt from the rest, char from all); "
                  "split chars: tokens that start or end inside a multi-byte character")
    for i, name in enumerate(_SHORT):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for r in rows:
        table.add_row(*_cells(r))
    Console(highlight=False).print(table)
