"""Choosing the next token from logits: small typed free functions, as in gpt-fast.

Owns the sampling controls and their order: repetition penalty on the raw logits, then temperature,
then a mask of forbidden tokens (`Utf8Constraint`: tokens whose bytes cannot continue valid UTF-8),
then temperature, then the top-k, top-p (nucleus) and min-p filters, then one multinomial draw per
row (or argmax at temperature 0). Each filter takes and returns logits of shape (B, V), with removed
tokens set to -inf, so they compose and can be checked on hand-made distributions.
It does not run the model, hold a KV cache or know about text; `generate.py` does the first two, and
the constraint is built from token bytes that the caller reads from its tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each token. The defaults leave every filter off: plain sampling at temperature 1."""

    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float = 1.0  # keep the smallest set of most likely tokens whose mass reaches p (1 = off)
    min_p: float = 0.0  # drop tokens less likely than min_p x the most likely one (0 = off)
    repetition_penalty: float = 1.0  # >1 discourages tokens already in the context (1 = off)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (ties at the k-th value are all kept)."""
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the most likely tokens until their probability mass reaches p (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = mass_before >= p  # the first token always has mass_before 0, so it stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the row's most likely token's."""
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values  # (B, 1)
    return logits.masked_fill(probs < threshold, NEG_INF)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: for tokens already seen, divide positive logits and multiply negative ones.

    seen: (B, V) bool, True where the token occurs in that row's prompt or output so far.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    big = torch.finfo(logits.dtype).max  # an extreme penalty must not overflow a logit to ±inf
    return torch.where(seen, penalised.clamp(-big, big), logits)


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p, on float32 logits (B, V). Needs temperature > 0.

    Each row's largest logit is subtracted first (softmax is unchanged by it): the most likely token
    then sits at 0, so a temperature near 0 sends the others to -inf instead of overflowing every
    logit to ±inf, and the distribution tends to greedy as it should.
    """
    logits = logits.float()
    t = max(params.temperature, torch.finfo(torch.float32).tiny)  # 1e-320 would be 0 in float32: 0/0
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / t
    if params.top_k is not None:
        logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    return min_p_filter(logits, params.min_p)


def sample_next_token(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None,
                      generator: torch.Generator | Sequence[torch.Generator] | None = None,
                      blocked: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) -> (next ids (B,), their log-probabilities under the model (B,)).

    `generator`: one for the whole batch, or one per row (each row then draws from its own random
    stream, so a row's tokens do not depend on how many rows there are).
    `blocked`: (B, V) bool, True for tokens that must not be chosen (`Utf8Constraint.blocked`); it
    applies before temperature and the filters, so they choose among the tokens that remain.
    The log-probability is the model's own (temperature 1, no penalty, filter or mask), so it scores
    the text rather than the sampling settings that produced it.
    """
    raw, shaped = shape_logits(logits, params, seen, blocked)
    if params.temperature == 0:
        ids = shaped.argmax(dim=-1)
    else:
        probs = torch.softmax(filter_logits(shaped, params), dim=-1)
        gens = [generator] if generator is None or isinstance(generator, torch.Generator) else list(generator)
        if len(gens) == 1:  # one stream for the batch (or the only row)
            ids = torch.multinomial(probs, num_samples=1, generator=gens[0]).squeeze(-1)
        else:
            ids = torch.cat([torch.multinomial(probs[r], num_samples=1, generator=g) for r, g in enumerate(gens)])
    return ids, model_logprobs(raw, ids)


def shape_logits(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None,
                 blocked: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the model's logits in fp32, those a token is drawn from: repetition penalty and mask applied)."""
    raw = logits.float()
    shaped = raw if seen is None else apply_repetition_penalty(raw, seen, params.repetition_penalty)
    return raw, shaped if blocked is None else shaped.masked_fill(blocked, NEG_INF)


def model_logprobs(raw: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The chosen ids' log-probabilities under the model's own logits (B,)."""
    return torch.log_softmax(raw, dim=-1).gather(-1, ids[:, None]).squeeze(-1)


# ------------------------------------------------------------------------------------------------
# Valid UTF-8 by construction
#
# The states of a strict UTF-8 decoder between tokens: what the next byte must be (Unicode's table
# of well-formed byte sequences). After the lead bytes E0, ED, F0 and F4 the first continuation byte
# has a narrower range (no overlong forms, no surrogates, nothing past U+10FFFF).
UTF8_START = 0  # no pending bytes: any complete character or a lead byte may come
_CONTINUATION = {  # state -> (lowest, highest byte allowed, state after it)
    1: (0x80, 0xBF, 0),  # one continuation byte to come
    2: (0x80, 0xBF, 1),  # two
    3: (0x80, 0xBF, 2),  # three
    4: (0xA0, 0xBF, 1),  # after E0
    5: (0x80, 0x9F, 1),  # after ED
    6: (0x90, 0xBF, 2),  # after F0
    7: (0x80, 0x8F, 2),  # after F4
}
UTF8_STATES = 1 + len(_CONTINUATION)


def utf8_step(state: int, byte: int) -> int:
    """The decoder state after one byte, or -1 where that byte makes the UTF-8 invalid."""
    if state != UTF8_START:
        lo, hi, after = _CONTINUATION[state]
        return after if lo <= byte <= hi else -1
    if byte < 0x80:
        return UTF8_START
    if 0xC2 <= byte <= 0xDF:
        return 1
    if 0xE0 <= byte <= 0xEF:
        return {0xE0: 4, 0xED: 5}.get(byte, 2)
    if 0xF0 <= byte <= 0xF4:
        return {0xF0: 6, 0xF4: 7}.get(byte, 3)
    return -1  # 80-BF with nothing pending, C0, C1, F5-FF: never valid


class Utf8Constraint:
    """Which tokens may come next so that a byte-level sample stays valid UTF-8, per decoder state.

    Built once from the vocabulary's token bytes: `next_state[s, t]` is the state after token t's
    bytes from state s, -1 where they cannot follow. A step then costs one row lookup and one masked
    fill (`blocked`), and one lookup to advance each row's state (`advance`): plain tensor indexing,
    on the model's device, with no host sync. Ids without bytes (None: padding past the tokenizer's
    vocabulary) are never chosen.
    """

    def __init__(self, pieces: Sequence[bytes | None]) -> None:
        never, whole = [-1] * UTF8_STATES, [UTF8_START] + [-1] * (UTF8_STATES - 1)
        columns = [never if data is None else whole if _whole_characters(data)
                   else [_run(s, data) for s in range(UTF8_STATES)] for data in pieces]
        self.next_state = torch.tensor(columns, dtype=torch.long).T.contiguous()  # (S, V)
        self.forbidden = self.next_state < 0  # (S, V): what a strict decoder rejects
        # what a step applies, both per state, so a step is one row lookup each (see blocked, advance)
        self.mask = self.forbidden & ~self.forbidden.all(dim=-1, keepdim=True)
        self.after = self.next_state.clamp_min(UTF8_START)

    def to(self, device: torch.device) -> Utf8Constraint:
        if self.next_state.device != device:
            for name in ("next_state", "forbidden", "mask", "after"):
                setattr(self, name, getattr(self, name).to(device))
        return self

    def state_after(self, ids: Sequence[int], state: int = UTF8_START) -> int:
        """The state after a sequence of ids (a prompt), read on the host."""
        table = self.after.cpu()
        for t in ids:
            state = int(table[state, t])  # a prompt's invalid bytes: start afresh
        return state

    def blocked(self, states: torch.Tensor) -> torch.Tensor:
        """(B,) states -> (B, V) bool, True for the tokens each row must not choose.

        A row with every token blocked cannot happen when the vocabulary holds the 256 single bytes
        (every state accepts some byte); for another vocabulary such a row is left unmasked, and its
        state restarts after the invalid token (`advance`), as a decoder does after a U+FFFD."""
        return self.mask[states]

    def advance(self, states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B,) states and the (B,) ids just chosen -> the (B,) states after their bytes."""
        return self.after[states, ids]


def _whole_characters(data: bytes) -> bool:
    """Most tokens: complete characters, which follow only a finished one and leave none pending."""
    try:
        return bool(data) and data.decode("utf-8") is not None
    except UnicodeDecodeError:
        return False


def _run(state: int, data: bytes) -> int:
    for b in data:
        state = utf8_step(state, b)
        if state < 0:
            return -1
    return state
