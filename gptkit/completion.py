"""Text in, text out: a prompt's samples as streamed text, cut at stop strings, with finish reasons.

Owns the text side of sampling that the id-level `Engine` deliberately knows nothing about:
incremental UTF-8 decoding of token bytes (a Hangul syllable split across byte-level tokens is
released whole, never as `�`), stop strings (cut exactly, even when one spans several tokens, and
holding back only as much text as could still begin one), the end-of-text token, per-sample results
(text, ids, log-probabilities, finish reason) and timing. It does not parse flags or print: the
caller passes `on_text` to receive each sample's text as it becomes final.
"""

from __future__ import annotations

import codecs
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gptkit.errors import TokenizerError
from gptkit.generate import Engine, row_seed
from gptkit.sampling import SamplingParams, Utf8Constraint
from gptkit.tokenizers.core import Tokenizer

BYTE_LEVEL = ("byte", "bpe", "tiktoken")  # tokenizer kinds whose tokens are bytes, not characters


class TextStream:
    """One sample's output text: token bytes in, final text out, stop strings cut exactly."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = [s for s in stops if s]
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # decoded, but could still be the start of a stop string
        self.released: list[str] = []
        self.stopped = False

    @property
    def text(self) -> str:
        return "".join(self.released)

    def feed(self, data: bytes) -> str:
        """Add one token's bytes; return the text that became final (maybe ""). After a stop string
        has been found, everything else is ignored."""
        if self.stopped:
            return ""
        self.pending += self.decoder.decode(data)  # only whole characters come out
        cuts = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped = True
            return self._release(min(cuts))
        return self._release(len(self.pending) - self._hold())

    def finish(self) -> str:
        """The text still held back. A character left incomplete by the last token is dropped."""
        return "" if self.stopped else self._release(len(self.pending))

    def _hold(self) -> int:
        """Length of the longest end of `pending` that begins some stop string."""
        for k in range(min(len(self.pending), max((len(s) for s in self.stops), default=1) - 1), 0, -1):
            tail = self.pending[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def _release(self, n: int) -> str:
        out, self.pending = self.pending[:n], self.pending[n:]
        if out:
            self.released.append(out)
        return out


@dataclass
class Sample:
    """One generated continuation of a prompt."""

    index: int  # which of the prompt's samples
    seed: int  # its own (`generate.row_seed`): `--seed` with it and one sample reproduces it alone
    text: str = ""  # the continuation (without the prompt, a stop string or end-of-text)
    token_ids: list[int] = field(default_factory=list)  # every generated id, incl. a final stop/eos token
    logprobs: list[float] = field(default_factory=list)  # the model's log-probability of each id
    finish_reason: str = "length"  # length | stop | eos


@dataclass
class Result:
    """A prompt's samples and how long they took (one batched decode for all of them)."""

    prompt: str
    prompt_tokens: int
    samples: list[Sample]
    seconds: float = 0.0
    first_token_seconds: float | None = None

    @property
    def generated_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.samples)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def complete(engine: Engine, tokenizer: Tokenizer, prompt: str, prompt_ids: Sequence[int], max_new_tokens: int,
             params: SamplingParams, seed: int | None = None, stops: Sequence[str] = (),
             eos_id: int | None = None, on_text: Callable[[int, str], None] | None = None,
             utf8: Utf8Constraint | None = None) -> Result:
    """Sample `engine.num_samples` continuations of one prompt; stop when every sample has finished.

    on_text(sample index, text) is called as each piece of a sample's text becomes final.
    utf8 (`utf8_constraint`): sample only tokens that keep each sample's bytes valid UTF-8.
    """
    seed = secrets.randbits(63) if seed is None else seed  # drawn here, so each sample can report its own
    samples = [Sample(i, row_seed(seed, i)) for i in range(engine.num_samples)]
    streams = [TextStream(stops) for _ in samples]
    live = set(range(len(samples)))
    result = Result(prompt, len(prompt_ids), samples)
    t0 = time.perf_counter()
    for step in engine.generate(prompt_ids, max_new_tokens, params, seed, utf8):
        ids, logprobs = step.ids.tolist(), step.logprobs.tolist()  # the one wait for the device per token
        if result.first_token_seconds is None:  # stamped once the token is on the host, not when it was queued
            result.first_token_seconds = time.perf_counter() - t0
        for r in sorted(live):
            samples[r].token_ids.append(ids[r])
            samples[r].logprobs.append(logprobs[r])
            if ids[r] == eos_id:
                samples[r].finish_reason = "eos"
                live.discard(r)
                continue
            _emit(on_text, r, streams[r].feed(tokenizer.token_bytes(ids[r])))
            if streams[r].stopped:
                samples[r].finish_reason = "stop"
                live.discard(r)
        if not live:
            break
    for r, sample in enumerate(samples):
        _emit(on_text, r, streams[r].finish())
        sample.text = streams[r].text
    result.seconds = time.perf_counter() - t0
    return result


def utf8_constraint(tokenizer: Tokenizer, vocab_size: int) -> Utf8Constraint | None:
    """The UTF-8 mask for a byte-level tokenizer over the model's `vocab_size` ids (None for a char
    tokenizer, whose every token is whole characters). Ids the tokenizer lacks are never sampled."""
    if tokenizer.kind not in BYTE_LEVEL:
        return None

    def piece(i: int) -> bytes | None:
        try:
            return tokenizer.token_bytes(i) if i < tokenizer.vocab_size else None
        except TokenizerError:  # a hole between a named encoding's ranks and its special tokens
            return None

    return Utf8Constraint([piece(i) for i in range(vocab_size)])


def _emit(on_text: Callable[[int, str], None] | None, row: int, text: str) -> None:
    if text and on_text is not None:
        on_text(row, text)
