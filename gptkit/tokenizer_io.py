"""A tokenizer's stored form: the JSON description a checkpoint, a dataset or a `.json` file carries.

Owns the layout in both directions and its version: `tokenizer_to_dict` (what `Tokenizer.to_dict`
returns: the characters of a char tokenizer; the pattern, base64 merge ranks and special tokens of a
bpe or tiktoken one) and `tokenizer_from_dict`, which validates every field before rebuilding, so a
damaged description is one `TokenizerError` line, never a Rust panic inside tiktoken; and tokenizer
files (`save_tokenizer`, written atomically, and `load_tokenizer`).
It does not build or train tokenizers (`tokenizer.py`) and needs no network: a description is
complete on its own. Like `tokenizer.py` it imports neither torch nor, until a bpe is rebuilt, tiktoken.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from gptkit.errors import TokenizerError
from gptkit.fsio import atomic_write_bytes
from gptkit.tokenizer import ByteTokenizer, CharTokenizer, TiktokenTokenizer, Tokenizer

FORMAT_VERSION = 1  # version of the tokenizer_to_dict() layout


def tokenizer_to_dict(tok: Tokenizer) -> dict[str, Any]:
    """Complete JSON-serialisable description of `tok`; `tokenizer_from_dict` rebuilds it offline."""
    head = {"format": FORMAT_VERSION, "kind": tok.kind, "name": tok.name}
    if isinstance(tok, CharTokenizer):
        return {**head, "chars": tok.chars}
    if isinstance(tok, ByteTokenizer):
        return head
    assert isinstance(tok, TiktokenTokenizer), type(tok)
    if tok.ranks_b64 is None:  # encoded once per tokenizer: gpt2's 50k ranks take a while
        # Ranks are 0..n-1 (checked in tokenizer_from_dict), so the list index is the rank.
        by_rank = sorted(tok.mergeable_ranks.items(), key=lambda kv: kv[1])
        assert all(rank == i for i, (_, rank) in enumerate(by_rank)), "ranks not contiguous"
        tok.ranks_b64 = [base64.b64encode(piece).decode("ascii") for piece, _ in by_rank]
    return {
        **head,
        "pat_str": tok.pat_str,
        "mergeable_ranks": list(tok.ranks_b64),  # base64 token bytes, index = rank
        "special_tokens": dict(tok.special_tokens),
    }


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.to_dict()` output, with no network and no files."""
    if not isinstance(d, dict):
        raise TokenizerError(f"tokenizer description must be a JSON object, got {type(d).__name__}")
    kind = d.get("kind")
    if d.get("format", FORMAT_VERSION) != FORMAT_VERSION:
        raise TokenizerError(
            f"tokenizer format {d.get('format')!r} is not supported (this gptkit reads "
            f"{FORMAT_VERSION}); upgrade gptkit"
        )
    try:
        if kind == "byte":
            return ByteTokenizer()
        if kind == "char":
            chars = d["chars"]
            if not isinstance(chars, str):
                raise TypeError("chars must be a string")
            return CharTokenizer(chars)
        if kind in ("bpe", "tiktoken"):
            name, pat_str = d["name"], d["pat_str"]
            ranks_b64, specials = d["mergeable_ranks"], d["special_tokens"]
            if not (isinstance(name, str) and isinstance(pat_str, str) and isinstance(ranks_b64, list)
                    and isinstance(specials, dict) and ranks_b64):
                raise TypeError("bad field types")
            ranks = {base64.b64decode(t, validate=True): i for i, t in enumerate(ranks_b64)}
            if len(ranks) != len(ranks_b64):
                raise ValueError("duplicate tokens in mergeable_ranks")
            if not all(isinstance(k, str) and type(v) is int for k, v in specials.items()):
                raise TypeError("bad special_tokens")
            # tiktoken panics (a Rust PanicException, not an Exception) on these: reject them here.
            if any(bytes([b]) not in ranks for b in range(256)):
                raise ValueError("mergeable_ranks lacks some single bytes")
            ids = list(specials.values())
            if len(set(ids)) != len(ids) or any(i < len(ranks) for i in ids):
                raise ValueError("special token ids must be distinct and above the ranks")
            return TiktokenTokenizer(kind, name, pat_str, ranks, specials)
    except TokenizerError:
        raise
    except Exception as e:  # noqa: BLE001  (any malformed field is the same user error)
        detail = str(e).splitlines()[0] if str(e) else ""
        raise TokenizerError(
            f"invalid {kind} tokenizer description ({type(e).__name__}: {detail}); "
            "rebuild the tokenizer or use an intact checkpoint"
        ) from None
    raise TokenizerError(
        f"unknown tokenizer kind {kind!r} in tokenizer description; expected one of: "
        "char, byte, bpe, tiktoken"
    )


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike[str]) -> None:
    """Write `tok.to_dict()` as JSON to `path` (atomically: temp file, then rename)."""
    path = Path(path)
    try:
        atomic_write_bytes(path, json.dumps(tok.to_dict(), separators=(",", ":")).encode("utf-8"))
    except OSError as e:
        raise TokenizerError(f"cannot write tokenizer file {path}: {e.strerror}; check the folder") from None


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Read a tokenizer written by `save_tokenizer`."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer file {path} not found; check the path") from None
    except OSError as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {e.strerror}") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise TokenizerError(
            f"tokenizer file {path} is not valid JSON ({str(e).splitlines()[0]}); "
            "save it again with save_tokenizer"
        ) from None
    return tokenizer_from_dict(d)
