"""A tokenizer's stored form read back: the JSON a checkpoint, a dataset or a `.json` file carries.

Each tokenizer class writes its own form (`Tokenizer.to_dict`: the characters of a char tokenizer;
the pattern, base64 merge ranks and special tokens of a bpe or tiktoken one). This module goes the
one other way: `tokenizer_from_dict` validates every field before rebuilding, so a damaged
description is one `TokenizerError` line, never a Rust panic inside tiktoken; and tokenizer files
(`save_tokenizer`, written atomically, and `load_tokenizer`). It needs no network: a description
is complete on its own. It imports neither torch nor, until a bpe is rebuilt, tiktoken.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from gptkit.errors import TokenizerError
from gptkit.fsio import atomic_write_bytes
from gptkit.tokenizers.bpe import TiktokenTokenizer
from gptkit.tokenizers.core import STORED_FORMAT, ByteTokenizer, CharTokenizer, Tokenizer


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.to_dict()` output, with no network and no files."""
    if not isinstance(d, dict):
        raise TokenizerError(f"tokenizer description must be a JSON object, got {type(d).__name__}")
    kind = d.get("kind")
    if d.get("format", STORED_FORMAT) != STORED_FORMAT:
        raise TokenizerError(
            f"tokenizer format {d.get('format')!r} is not supported (this gptkit reads "
            f"{STORED_FORMAT}); upgrade gptkit"
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
