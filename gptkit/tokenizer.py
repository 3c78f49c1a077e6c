"""Tokenizers: one `Tokenizer` interface over char, byte, trained BPE and tiktoken encodings.

Owns: turning text into token ids and back (`encode`, `decode`, raw `decode_bytes` for incremental
UTF-8 streaming), training a byte-level BPE with rustbpe (encoded with tiktoken, as nanochat does),
and loading tiktoken's named encodings strictly offline. A tokenizer's complete JSON form
(`to_dict`, rebuilt by `tokenizer_from_dict`), which lets a checkpoint carry its tokenizer and
rebuild it with no network and no files, and tokenizer files live in `tokenizer_io.py`.

Kinds:
- ``char``  — the sorted distinct characters of the training text; unknown characters are an error.
- ``byte``  — the 256 UTF-8 byte values.
- ``bpe``   — byte-level BPE trained on the text by rustbpe (GPT-4 split pattern), encoded by tiktoken.
- ``tiktoken`` — a named encoding (``gpt2``, ``cl100k_base``, ...), read from ``TIKTOKEN_CACHE_DIR``.

Does not: download anything (a named encoding whose file is not cached is a `TokenizerError`),
add special tokens to text (``<|endoftext|>`` inside text is just text), cache token arrays
(that is `data.py`), or import torch.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from gptkit.errors import TokenizerError
from gptkit.tiktoken_cache import TIKTOKEN_NAMES, check_cached, gpt2_ranks

if TYPE_CHECKING:  # tiktoken is imported lazily at run time
    import tiktoken

TOKENIZER_KINDS: tuple[str, ...] = ("char", "byte", "bpe")
DEFAULT_BPE_VOCAB_SIZE = 1024  # used when build_tokenizer("bpe", text) gets vocab_size=None

TOKENIZER_NAMES: tuple[str, ...] = TOKENIZER_KINDS + TIKTOKEN_NAMES  # every name build_tokenizer takes
_EOT = "<|endoftext|>"


def _bad_id(token_id: Any, vocab_size: int) -> TokenizerError:
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

    def to_dict(self) -> dict[str, Any]:
        """Complete JSON-serialisable description; `tokenizer_from_dict` rebuilds it offline."""
        from gptkit.tokenizer_io import tokenizer_to_dict  # the stored layout lives there

        return tokenizer_to_dict(self)

    def fingerprint(self) -> str:
        """Short sha256 hex (16 digits) of the canonical JSON of `to_dict()` (a cache key)."""
        cached: str | None = self.__dict__.get("_fingerprint")
        if cached is None:  # tokenizers never change after construction, so compute once
            canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
            cached = hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]
            self.__dict__["_fingerprint"] = cached
        return cached

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
            raise _bad_id(i, self.vocab_size)
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

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        try:
            # list() first: bytes() of a numpy array would copy its raw int64 buffer instead
            return bytes(ids if isinstance(ids, list) else list(ids))
        except (ValueError, TypeError):
            bad = next((i for i in ids if not (isinstance(i, int) and 0 <= i < 256)), ids)
            raise _bad_id(bad, 256) from None

    def token_bytes(self, token_id: int) -> bytes:
        return self.decode_bytes([token_id])


class TiktokenTokenizer(Tokenizer):
    """A tiktoken `Encoding` built from explicit ranks: a trained ``bpe`` or a named encoding."""

    def __init__(
        self,
        kind: str,
        name: str,
        pat_str: str,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int],
    ) -> None:
        import tiktoken

        assert kind in ("bpe", "tiktoken")
        self.kind = kind
        self.name = name
        self.pat_str = pat_str
        self.mergeable_ranks = mergeable_ranks
        self.special_tokens = dict(special_tokens)
        # "gptkit-" keeps these apart from tiktoken's own registry of named encodings.
        self.enc: tiktoken.Encoding = tiktoken.Encoding(
            f"gptkit-{name}",
            pat_str=pat_str,
            mergeable_ranks=mergeable_ranks,
            special_tokens=self.special_tokens,
        )
        self.vocab_size = self.enc.n_vocab
        self.eot_id = self.special_tokens.get(_EOT)
        self.ranks_b64: list[str] | None = None  # the ranks as to_dict stores them, filled by its first call

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts)  # multi-threaded in tiktoken

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        try:
            return self.enc.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError):
            bad = next((i for i in ids if not self._known(i)), ids)
            raise _bad_id(bad, self.vocab_size) from None

    def token_bytes(self, token_id: int) -> bytes:
        try:
            return self.enc.decode_single_token_bytes(token_id)
        except (KeyError, OverflowError, TypeError):
            raise _bad_id(token_id, self.vocab_size) from None

    def _known(self, token_id: Any) -> bool:
        try:
            self.enc.decode_single_token_bytes(token_id)
        except (KeyError, OverflowError, TypeError):
            return False
        return True


# ---------------------------------------------------------------------------------------------
# Building


def build_tokenizer(name: str, text: str | None = None, vocab_size: int | None = None) -> Tokenizer:
    """Build a tokenizer by name: "char" and "bpe" learn from `text`; "byte" and tiktoken names don't.

    `vocab_size` is only used by "bpe" (default 1024 when None; at least 256) and ignored otherwise.
    A trained BPE can end up smaller than asked when the text has too few distinct pairs.
    """
    if name == "byte":
        return ByteTokenizer()
    if name == "char":
        if not text:
            raise TokenizerError("the char tokenizer needs training text; pass a non-empty text file")
        return CharTokenizer.from_text(text)
    if name == "bpe":
        if not text:
            raise TokenizerError("the bpe tokenizer needs training text; pass a non-empty text file")
        return train_bpe(text, DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size)
    if name in TIKTOKEN_NAMES:
        return load_tiktoken(name)
    raise TokenizerError(
        f"unknown tokenizer {name!r}; choose one of: {', '.join(TOKENIZER_NAMES)}"
    )


def train_bpe(text: str, vocab_size: int = DEFAULT_BPE_VOCAB_SIZE) -> TiktokenTokenizer:
    """Train a byte-level BPE on `text` with rustbpe; encode with tiktoken."""
    from gptkit.textchunks import split_text

    # rustbpe trains in parallel over pieces; cutting only where no pre-token can span the cut
    # makes the result identical to streaming the same text in any other pieces (dataset_build).
    return train_bpe_from_chunks(split_text(text, 1 << 16), vocab_size)


def train_bpe_from_chunks(chunks: Iterable[str], vocab_size: int = DEFAULT_BPE_VOCAB_SIZE) -> TiktokenTokenizer:
    """Train a byte-level BPE on text streamed as `chunks` (rustbpe holds 64 of them at a time).

    Chunks must be cut where no pre-token spans the cut (`textchunks.find_cut`) for the merges to
    equal those of the whole text."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral) or not 256 <= vocab_size < 2**32:
        # Checked here because rustbpe panics below 256 (the byte alphabet) and overflows at 2**32.
        raise TokenizerError(
            f"bpe vocab size must be an integer from 256 (the byte values) to 2**32-1, got {vocab_size!r}; "
            "pass e.g. --vocab-size 1024"
        )
    import rustbpe

    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(chunks), int(vocab_size), buffer_size=64)
    ranks = {bytes(tok): rank for tok, rank in trainer.get_mergeable_ranks()}
    return TiktokenTokenizer("bpe", "bpe", trainer.get_pattern(), ranks, {})


def load_tiktoken(name: str) -> TiktokenTokenizer:
    """A tiktoken named encoding, read offline from the tiktoken cache (never downloaded)."""
    if name not in TIKTOKEN_NAMES:
        raise TokenizerError(
            f"unknown tiktoken encoding {name!r}; choose one of: {', '.join(TIKTOKEN_NAMES)}"
        )
    files = check_cached(name)
    from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS, ENDOFTEXT, r50k_pat_str

    try:
        if name == "gpt2":  # tiktoken's own loader takes ~0.35 s here (see gpt2_ranks)
            params = {"pat_str": r50k_pat_str, "mergeable_ranks": gpt2_ranks(files), "special_tokens": {ENDOFTEXT: 50256}}
        else:
            params = ENCODING_CONSTRUCTORS[name]()
    # A race with the check above, or a tiktoken change: still one line, never a traceback.
    except Exception as e:  # noqa: BLE001
        raise TokenizerError(
            f"tiktoken encoding {name!r} could not be loaded from TIKTOKEN_CACHE_DIR "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check the cache folder"
        ) from None
    return TiktokenTokenizer(
        "tiktoken", name, params["pat_str"], params["mergeable_ranks"], params["special_tokens"]
    )
