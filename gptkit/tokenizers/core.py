"""The tokenizer interface and the two tokenizers that need no library: characters and bytes.

Owns `Tokenizer` (text <-> ids: `encode`, `encode_array`, `decode`, raw `decode_bytes` for
incremental UTF-8 streaming, `token_bytes`, and `to_dict`, the complete JSON form each class writes
for itself so a checkpoint carries its tokenizer), `CharTokenizer` (the sorted distinct characters
of the training text; unknown characters are an error) and `ByteTokenizer` (the 256 UTF-8 byte
values). The BPE and tiktoken encodings are `bpe.py` and `named.py`; reading the JSON form back is
`stored.py`. Never imports torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from gptkit.errors import TokenizerError

STORED_FORMAT = 1  # version of the to_dict() layout (stored.py reads it)
UNICODE_SIZE = 0x110000  # code points: a char tokenizer's lookup table has one int32 per code point


def code_points(text: str) -> np.ndarray:
    """The code points of `text` as a (n_chars,) uint32 array."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def bad_id(token_id: Any, vocab_size: int) -> TokenizerError:
    return TokenizerError(
        f"token id {token_id!r} is not in this tokenizer (vocab_size {vocab_size}); "
        "decode ids produced with the same tokenizer"
    )


class Tokenizer(ABC):
    """Text <-> token ids. Subclasses set `kind`, `name`, `vocab_size` and `eot_id`."""

    kind: str  # "char" | "byte" | "bpe" | "tiktoken"
    name: str  # display name: "char", "byte", "bpe", or the encoding name, e.g. "gpt2"
    vocab_size: int  # number of ids the model must embed (ids are 0..vocab_size-1)
    eot_id: int | None  # end-of-text id, None if the tokenizer has none

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens are recognised)."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` applied to each text."""
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Raw bytes of `ids`; may end mid-character (feed an incremental UTF-8 decoder)."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; invalid UTF-8 (e.g. a cut multi-byte character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """Bytes of one token."""

    def encode_array(self, text: str) -> np.ndarray:
        """`encode` as a numpy array of ids (no Python int per token); subclasses do it faster."""
        return np.asarray(self.encode(text), dtype=np.uint32)

    def to_dict(self) -> dict[str, Any]:
        """Complete JSON-serialisable description; `stored.tokenizer_from_dict` rebuilds it offline."""
        return {"format": STORED_FORMAT, "kind": self.kind, "name": self.name}

    @functools.cached_property
    def fingerprint(self) -> str:
        """Short sha256 hex (16 digits) of the canonical JSON of `to_dict()` (a cache key).
        Computed once: a tokenizer never changes after construction."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} vocab_size={self.vocab_size}>"


class CharTokenizer(Tokenizer):
    """One id per character of a fixed alphabet (the sorted distinct characters of the text)."""

    kind = "char"
    name = "char"
    eot_id = None

    def __init__(self, chars: str) -> None:
        if not chars or len(set(chars)) != len(chars):
            raise TokenizerError(
                "a char tokenizer needs a non-empty string of distinct characters; rebuild it from text"
            )
        self.chars = chars
        self.vocab_size = len(chars)
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "chars": self.chars}

    @functools.cached_property
    def _table(self) -> np.ndarray:
        """Code point -> id, -1 where the vocabulary lacks the character: (0x110000,) int32."""
        table = np.full(UNICODE_SIZE, -1, dtype=np.int32)
        table[code_points(self.chars)] = np.arange(len(self.chars), dtype=np.int32)
        return table

    def encode_array(self, text: str) -> np.ndarray:
        ids = self._table[code_points(text)]  # (n_chars,)
        if ids.size and ids.min() < 0:
            self.encode(text)  # raises the error that lists the unknown characters
        return ids

    def encode(self, text: str) -> list[int]:
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - stoi.keys())
            shown = ", ".join(repr(c) for c in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise TokenizerError(
                f"text has {len(unknown)} character(s) not in the char vocabulary ({shown}{more}); "
                "use --tokenizer byte or bpe, which encode any text"
            ) from None

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return "".join(self._char(i) for i in ids).encode("utf-8", errors="surrogatepass")

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self._char(i) for i in ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self._char(token_id).encode("utf-8", errors="surrogatepass")

    def _char(self, i: int) -> str:
        if not 0 <= i < self.vocab_size:
            raise bad_id(i, self.vocab_size)
        return self.chars[i]


class ByteTokenizer(Tokenizer):
    """The 256 byte values of the text's UTF-8 encoding."""

    kind = "byte"
    name = "byte"
    vocab_size = 256
    eot_id = None

    def encode(self, text: str) -> list[int]:
        try:
            return list(text.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise TokenizerError(
                f"text is not valid Unicode at character {e.start} ({text[e.start]!r}); "
                "read the file as UTF-8 without surrogateescape"
            ) from None

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        try:
            # list() first: bytes() of a numpy array would copy its raw int64 buffer instead
            return bytes(ids if isinstance(ids, list) else list(ids))
        except (ValueError, TypeError):
            bad = next((i for i in ids if not (isinstance(i, int) and 0 <= i < 256)), ids)
            raise bad_id(bad, 256) from None

    def token_bytes(self, token_id: int) -> bytes:
        return self.decode_bytes([token_id])


