"""Tokenizers by name: `build_tokenizer("char" | "byte" | "bpe" | "gpt2" | ..., text)` and
`resolve_tokenizer`, which also takes a tokenizer `.json` file.

The interface and the char and byte tokenizers are `core.py`; the rustbpe-trained, tiktoken-encoded
BPE is `bpe.py`; tiktoken's named encodings, loaded offline, are `named.py`; the stored JSON form
read back is `stored.py`. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from gptkit.errors import TokenizerError
from gptkit.tokenizers.bpe import DEFAULT_BPE_VOCAB_SIZE, train_bpe
from gptkit.tokenizers.core import ByteTokenizer, CharTokenizer, Tokenizer
from gptkit.tokenizers.named import TIKTOKEN_NAMES, load_tiktoken
from gptkit.tokenizers.stored import load_tokenizer

TOKENIZER_KINDS: tuple[str, ...] = ("char", "byte", "bpe")
TOKENIZER_NAMES: tuple[str, ...] = TOKENIZER_KINDS + TIKTOKEN_NAMES  # every name build_tokenizer takes


def build_tokenizer(name: str, text: str | None = None, vocab_size: int | None = None) -> Tokenizer:
    """Build a tokenizer by name: "char" and "bpe" learn from `text`; "byte" and tiktoken names don't.

    `vocab_size` is only used by "bpe" (DEFAULT_BPE_VOCAB_SIZE when None; at least 256) and ignored
    otherwise. A trained BPE can end up smaller than asked when the text has too few distinct pairs.
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
    raise TokenizerError(f"unknown tokenizer {name!r}; choose one of: {', '.join(TOKENIZER_NAMES)}")


def resolve_tokenizer(spec: str, train_text: str | None = None, vocab_size: int | None = None) -> Tokenizer:
    """A tokenizer from a name (char and bpe learn from `train_text`) or a JSON file saved earlier."""
    if spec in TOKENIZER_NAMES:
        return build_tokenizer(spec, train_text, vocab_size)
    if spec.endswith(".json") or Path(spec).is_file():
        return load_tokenizer(spec)
    raise TokenizerError(f"unknown tokenizer {spec!r}; choose one of: {', '.join(TOKENIZER_NAMES)}, "
                         "or a tokenizer .json file saved with --save-tokenizer")
