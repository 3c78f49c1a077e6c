"""Text -> token arrays on disk, the train/validation split, and random batches.

Owns the dataset folder format shared by `gptkit train INPUT...` (cached under the run) and
`gptkit tokenize INPUT... --out DIR`:

    DIR/train.bin  DIR/val.bin   raw little-endian token ids (uint16 when the vocabulary fits, else uint32)
    DIR/meta.json                tokenizer (complete), dtype, token and character counts, and every
                                 input: path, size, sha256, documents, bytes in train and in val

Validation is the *last* `val_fraction` of each input, cut at a line boundary, so a held-out score
measures text the model never saw. Building a folder, or reusing a cached one, is `build.py`
(streamed, chunked, parallel); this module reads folders and samples batches.
It does not train models or choose devices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from gptkit.data.chunks import Splitter
from gptkit.errors import InputError
from gptkit.tokenizers.core import Tokenizer
from gptkit.tokenizers.stored import tokenizer_from_dict

DATASET_FORMAT = 2  # 2: several inputs (meta.json lists them); 1 is read too


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def split_point(text: str, val_fraction: float) -> int:
    """Index in `text` where validation starts: the same cut `build_dataset` makes on an input's
    UTF-8 bytes (val_fraction from the end, moved to the next line start)."""
    split = Splitter(len(text.encode("utf-8")), val_fraction)
    parts = split.feed((text, len(text.encode("utf-8")))) + split.finish()
    return sum(len(piece[0]) for side, piece in parts if side == "train" and piece is not None)


@dataclass
class TokenDataset:
    """A dataset folder, memory-mapped: train/val token arrays plus meta.json."""

    path: Path
    train: np.ndarray
    val: np.ndarray
    meta: dict[str, Any]

    known_tokenizer: Tokenizer | None = None  # the builder's own: not rebuilt from meta.json

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """Rebuilt from meta.json once (a tiktoken encoding takes a fraction of a second to build)."""
        return self.known_tokenizer or tokenizer_from_dict(self.meta["tokenizer"])

    @property
    def val_tokens_per_char(self) -> float:
        """Converts nats/token into nats/char, so runs with different tokenizers compare."""
        return self.meta["val_tokens"] / max(1, self.meta["val_chars"])


def load_dataset(path: str | Path, tokenizer: Tokenizer | None = None) -> TokenDataset:
    """Map a dataset folder; `tokenizer`, when the caller holds the one meta.json describes, is used as is."""
    p = Path(path)
    meta_path = p / "meta.json"
    if not meta_path.is_file():
        raise InputError(f"{str(p)!r} is not a dataset folder (no meta.json); build one with `gptkit tokenize FILE --out DIR`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        arrays = [np.memmap(p / f"{s}.bin", dtype=dtype, mode="r") if meta[f"{s}_tokens"] else np.zeros(0, dtype)
                  for s in ("train", "val")]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"dataset folder {str(p)!r} is damaged ({e}); rebuild it with `gptkit tokenize`") from None
    for name, arr in zip(("train", "val"), arrays, strict=True):
        if len(arr) != meta[f"{name}_tokens"]:
            raise InputError(f"dataset folder {str(p)!r}: {name}.bin has {len(arr)} tokens, meta.json says "
                             f"{meta[f'{name}_tokens']}; rebuild it with `gptkit tokenize`")
    return TokenDataset(p, arrays[0], arrays[1], meta, tokenizer)


def check_lengths(ds: TokenDataset, block_size: int) -> None:
    for name, arr in (("training", ds.train), ("validation", ds.val)):
        if len(arr) < block_size + 1:
            raise InputError(
                f"the {name} split has {len(arr)} tokens but --block-size {block_size} needs at least {block_size + 1}; "
                "use more text, a smaller --block-size, or a different --val-fraction"
            )


def get_batch(arr: np.ndarray, batch_size: int, block_size: int, rng: np.random.Generator,
              shard: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray]:
    """Random windows: x = tokens[i:i+T], y = tokens[i+1:i+T+1], each (B, T) int64.

    The generator draws offsets for the global batch (batch_size x world); rank r of w keeps rows
    [r*B, (r+1)*B), so N processes see exactly the batch one process would with N times the rows.
    """
    rank, world = shard
    ix = rng.integers(0, len(arr) - block_size, size=batch_size * world)
    ix = ix[rank * batch_size:(rank + 1) * batch_size]
    x = np.stack([arr[i:i + block_size] for i in ix]).astype(np.int64)
    y = np.stack([arr[i + 1:i + 1 + block_size] for i in ix]).astype(np.int64)
    return x, y
