"""Byte-level BPE: trained on the user's text by rustbpe, encoded by tiktoken (as nanochat does).

Owns `TiktokenTokenizer`, a tiktoken `Encoding` built from explicit ranks, which serves both a
trained ``bpe`` and tiktoken's named encodings (`named.py` loads those), and `train_bpe` /
`train_bpe_from_chunks` (the GPT-4 split pattern, trained on text streamed in chunks cut where no
pre-token spans the cut, so the merges equal those of the whole text). Special tokens inside text
are ordinary text. tiktoken and rustbpe are imported only when used; never torch.
"""

from __future__ import annotations

import base64
import functools
import numbers
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gptkit.data.chunks import split_text
from gptkit.errors import TokenizerError
from gptkit.tokenizers.core import Tokenizer, bad_id

if TYPE_CHECKING:  # tiktoken is imported lazily at run time
    import tiktoken

DEFAULT_BPE_VOCAB_SIZE = 1024  # a bpe's vocabulary when none is asked for
TRAIN_CHUNK_CHARS = 1 << 16  # characters per piece handed to rustbpe
EOT = "<|endoftext|>"


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
        # one encode on the building thread: pool threads that are tiktoken's first callers encode slower
        self.enc.encode_ordinary("warm up")
        self.eot_id = self.special_tokens.get(EOT)

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        # special-token text stays ordinary text, exactly as encode_ordinary
        return self.enc.encode_to_numpy(text, disallowed_special=())

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "pat_str": self.pat_str, "mergeable_ranks": list(self._ranks_b64),
                "special_tokens": dict(self.special_tokens)}

    @functools.cached_property
    def _ranks_b64(self) -> list[str]:
        """The ranks as to_dict stores them: base64 token bytes, list index = rank (ranks are
        0..n-1, which stored.py checks). Encoded once: gpt2's 50k ranks take a while."""
        by_rank = sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])
        assert all(rank == i for i, (_, rank) in enumerate(by_rank)), "ranks not contiguous"
        return [base64.b64encode(piece).decode("ascii") for piece, _ in by_rank]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts)  # multi-threaded in tiktoken

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        try:
            return self.enc.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError):
            bad = next((i for i in ids if not self._known(i)), ids)
            raise bad_id(bad, self.vocab_size) from None

    def token_bytes(self, token_id: int) -> bytes:
        try:
            return self.enc.decode_single_token_bytes(token_id)
        except (KeyError, OverflowError, TypeError):
            raise bad_id(token_id, self.vocab_size) from None

    def _known(self, token_id: Any) -> bool:
        try:
            self.enc.decode_single_token_bytes(token_id)
        except (KeyError, OverflowError, TypeError):
            return False
        return True


def train_bpe(text: str, vocab_size: int = DEFAULT_BPE_VOCAB_SIZE) -> TiktokenTokenizer:
    """Train a byte-level BPE on `text` with rustbpe; encode with tiktoken."""
    # rustbpe trains in parallel over pieces; cutting only where no pre-token can span the cut
    # makes the result identical to streaming the same text in any other pieces (data.build).
    return train_bpe_from_chunks(split_text(text, TRAIN_CHUNK_CHARS), vocab_size)


def train_bpe_from_chunks(chunks: Iterable[str], vocab_size: int = DEFAULT_BPE_VOCAB_SIZE) -> TiktokenTokenizer:
    """Train a byte-level BPE on text streamed as `chunks` (rustbpe holds 64 of them at a time).

    Chunks must be cut where no pre-token spans the cut (`data.chunks.find_cut`) for the merges to
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


