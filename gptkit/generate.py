"""Token generation: prefill and decode with the KV cache, the context window, the `Engine`.

Owns turning a model and prompt ids into new ids, one step at a time, for a batch of samples that
share one prompt: the prompt is prefilled once (batch 1) into every row of the cache, then each
step decodes one token per row. Like nanochat's engine it knows nothing about tokenization or text
(`completion.py` does that); choosing a token from logits is `sampling.py`.

The context window. A model only ever sees `block_size` positions. When the sequence outgrows the
window, the window restarts on the last `keep` tokens (default half a block, as llama.cpp's context
shift drops half): with the cache that means one re-prefill of those tokens every `block_size - keep`
new tokens, so every prediction sees between `keep` and `block_size` tokens and the cost per token
stays flat. The no-cache path (`use_cache=False`) runs a full forward over exactly the same window at
every step: it is the reference, and the two agree to fp32 rounding at every step, past
`block_size` too, with learned positions and with RoPE alike (positions always restart at 0, inside
the trained range). Shifting a RoPE cache instead of re-prefilling would be cheaper but not equal to
any full forward: the kept keys were computed while their tokens saw older context.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from gptkit.model import GPT, KVCache
from gptkit.sampling import (
    SamplingParams,
    Utf8Constraint,
    filter_logits,
    model_logprobs,
    sample_next_token,
    shape_logits,
)


@dataclass
class Step:
    """One generated token per sample row."""

    ids: torch.Tensor  # (B,) the chosen tokens
    logprobs: torch.Tensor  # (B,) their log-probabilities under the model (temperature 1)
    logits: torch.Tensor  # (B, V) the model's logits they were chosen from


def row_seed(seed: int, offset: int) -> int:
    """The seed of the sample `offset` places after the one seeded `seed`: every sample of a batch
    (and every line of a `--lines` job) gets its own, so each can be reproduced alone."""
    return (seed + offset) % 2**63  # seeds are 0 ... 2**63 - 1 (`config.check_seed`)


def window_start(start: int, length: int, block_size: int, keep: int) -> int:
    """Where the context begins once the sequence is `length` long (it began at `start`)."""
    return start if length - start <= block_size else length - keep


def decode_one_token(model: GPT, idx: torch.Tensor, cache: KVCache, input_pos: torch.Tensor) -> torch.Tensor:
    """(B, T) ids at input_pos (T,) through the model with the cache -> the last position's logits (B, V).

    GPT.forward's arithmetic; a prefill (T > 1) and a decode step (T = 1) alike. The blocks' parts
    are called through `.forward`: nn.Module.__call__ costs microseconds, four times a block a token.
    """
    x, rope = model.embed(idx, input_pos)
    for block in model.transformer.h:
        x = x + block.attn.forward(block.ln_1.forward(x), rope, cache, input_pos)
        x = x + block.mlp.forward(block.ln_2.forward(x))
    return model.head(x[:, -1])


def sample_with_noise(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None,
                      noise: torch.Tensor, blocked: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_next_token`'s choice made without a generator, so it compiles into the decode step:
    argmax of p / E with E ~ Exp(1) drawn ahead into `noise` (B, V) picks token i with probability p_i
    (the exponential race, as gpt-fast). Same filters, same log-probabilities; another draw than
    torch.multinomial's from the same seed."""
    raw, shaped = shape_logits(logits, params, seen, blocked)
    if params.temperature == 0:
        ids = shaped.argmax(dim=-1)
    else:
        ids = (torch.softmax(filter_logits(shaped, params), dim=-1) / noise).argmax(dim=-1)
    return ids, model_logprobs(raw, ids)


def decode_and_sample(model: GPT, idx: torch.Tensor, cache: KVCache, input_pos: torch.Tensor, noise: torch.Tensor,
                      seen: torch.Tensor | None, params: SamplingParams, blocked: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step and its token choice: (B, 1) ids at input_pos (1,) -> (next ids, their
    log-probabilities, the logits). Compiled whole, a token costs no host sync but reading it."""
    logits = decode_one_token(model, idx, cache, input_pos)
    return (*sample_with_noise(logits, params, seen, noise, blocked), logits)


def compile_decode(model: GPT) -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`decode_and_sample` compiled for one fixed shape (a step: (B, 1) ids at a (1,) position tensor):
    CUDA graphs on a GPU (mode="reduce-overhead"), inductor on CPU."""
    mode = "reduce-overhead" if next(model.parameters()).device.type == "cuda" else None
    return torch.compile(decode_and_sample, mode=mode, fullgraph=True, dynamic=False)


class Engine:
    """Generates for `num_samples` rows at once from one model; reusable across prompts.

    use_cache=False recomputes the whole window at every step (the reference path); compile_step=True
    runs each decode step through `compile_decode` (compiled once, on first use).
    """

    def __init__(self, model: GPT, num_samples: int = 1, use_cache: bool = True, compile_step: bool = False,
                 keep: int | None = None) -> None:
        self.model = model
        self.num_samples = num_samples
        p = next(model.parameters())
        self.device = p.device
        self.block_size = model.config.block_size
        self.keep = max(1, min(self.block_size, keep or self.block_size // 2))
        self.cache = KVCache(model.config, num_samples, device=p.device, dtype=p.dtype) if use_cache else None
        self.step_pos = torch.zeros(1, dtype=torch.long, device=p.device)  # a step's position, filled in place
        self.compiled_step = compile_decode(model) if compile_step and use_cache else None
        if self.compiled:  # the compiled step's other inputs, filled in place: ids, race noise, seen tokens
            V = model.config.vocab_size
            self.step_ids = torch.zeros(num_samples, 1, dtype=torch.long, device=p.device)
            self.noise = torch.ones(num_samples, V, device=p.device)
            self.seen = torch.zeros(num_samples, V, dtype=torch.bool, device=p.device)
            self.blocked = torch.zeros(num_samples, V, dtype=torch.bool, device=p.device)  # the UTF-8 mask
            if p.device.type == "cuda":  # CUDA graphs replay fixed addresses: say these stay put
                for t in (*self.cache.k, *self.cache.v, self.cache.slots, self.step_pos, self.step_ids, self.noise,
                          self.seen, self.blocked):
                    torch._dynamo.mark_static_address(t)

    @property
    def compiled(self) -> bool:
        return self.compiled_step is not None

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """(1 or B, T) ids from position 0 -> last logits (B or 1, V); fills the cache (every row)."""
        if self.cache is None:  # the reference: a full forward, no cache at all
            return self.model(ids)[0][:, -1]
        return decode_one_token(self.model, ids, self.cache, torch.arange(ids.size(1), device=self.device))

    def step(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        """One new token per row, ids (B,) at position `pos` of the window -> logits (B, V) (eager)."""
        self.step_pos.fill_(pos)
        return decode_one_token(self.model, ids[:, None], self.cache, self.step_pos)

    def draw(self, logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None,
             generators: Sequence[torch.Generator], blocked: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ids and their log-probabilities from logits (B, V): eager's multinomial, or the
        compiled step's exponential race (so a compiled job draws every token the same way)."""
        if not self.compiled:
            return sample_next_token(logits, params, seen, generators, blocked)
        return sample_with_noise(logits, params, seen, self.race_noise(params, generators), blocked)

    def race_noise(self, params: SamplingParams, generators: Sequence[torch.Generator]) -> torch.Tensor:
        if params.temperature != 0:  # each row from its own generator: a row's text is its seed's alone
            for row, g in zip(self.noise, generators, strict=True):
                row.exponential_(generator=g)
        return self.noise

    def compiled_next(self, ids: torch.Tensor, pos: int, params: SamplingParams, seen: torch.Tensor | None,
                      generators: Sequence[torch.Generator], blocked: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The compiled step: ids (B,) at `pos` -> (next ids, log-probabilities, logits), copied out of
        the CUDA graph's buffers, which its next replay overwrites."""
        self.step_pos.fill_(pos)
        self.step_ids.copy_(ids[:, None])
        noise = self.race_noise(params, generators)
        if blocked is not None:
            blocked = self.blocked.copy_(blocked)
        out = self.compiled_step(self.model, self.step_ids, self.cache, self.step_pos, noise, seen, params, blocked)
        return tuple(t.clone() for t in out)

    def warm_up(self, params: SamplingParams, utf8: bool = False) -> None:
        """Compile (and record the CUDA graph of) the decode step before anything is timed: the first
        calls compile, the next record. The cache slots they write are overwritten by the next prefill."""
        if not self.compiled:
            return
        ids = torch.zeros(self.num_samples, dtype=torch.long, device=self.device)
        gens = [torch.Generator(device=self.device).manual_seed(r) for r in range(self.num_samples)]
        seen = self.seen if params.repetition_penalty != 1.0 else None
        blocked = self.blocked.zero_() if utf8 else None  # with or without the mask: the graph the job replays
        with torch.inference_mode():
            for pos in range(min(3, self.block_size)):
                self.compiled_next(ids, pos, params, seen, gens, blocked)

    @torch.inference_mode()
    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, params: SamplingParams | None = None,
                 seed: int | None = None, utf8: Utf8Constraint | None = None) -> Iterator[Step]:
        """Yield `max_new_tokens` steps continuing prompt_ids in every row; stop iterating to stop early.

        `utf8`: choose only tokens whose bytes continue valid UTF-8, each row from its own decoder
        state (the state lives here, not in the cache, so window restarts leave it alone).

        Row r samples from its own random stream, seeded `row_seed(seed, r)`: with the same seed a
        row's tokens are those of a one-row run seeded `row_seed(seed, r)` (to the logits' last
        bits, which the batch width may change as the thread count does).
        """
        if not prompt_ids:
            raise ValueError("generate needs at least one prompt token")
        if max_new_tokens <= 0:
            return
        params = params or SamplingParams()
        B, P, V = self.num_samples, len(prompt_ids), self.model.config.vocab_size
        seed = secrets.randbits(63) if seed is None else seed
        generators = [torch.Generator(device=self.device).manual_seed(row_seed(seed, r)) for r in range(B)]
        prompt = torch.tensor(prompt_ids, dtype=torch.long, device=self.device)
        hist = torch.empty(B, P + max_new_tokens, dtype=torch.long, device=self.device)  # every row's sequence
        hist[:, :P] = prompt
        seen = None
        if params.repetition_penalty != 1.0:
            seen = self.seen.zero_() if self.compiled else torch.zeros(B, V, dtype=torch.bool, device=self.device)
            seen[:, prompt] = True
        start = max(0, P - self.block_size)
        # the prompt is the same in every row: run it once (batch 1), share its logits and cache
        logits = self.prefill(prompt[None, start:]).expand(B, V)
        states = None
        if utf8 is not None:
            utf8 = utf8.to(self.device)
            states = torch.full((B,), utf8.state_after(prompt_ids), dtype=torch.long, device=self.device)
        ids, logprobs = self.draw(logits, params, seen, generators, None if utf8 is None else utf8.blocked(states))
        n = P
        for i in range(max_new_tokens):
            if utf8 is not None:
                states = utf8.advance(states, ids)
            hist[:, n] = ids
            n += 1
            if seen is not None:
                seen.scatter_(1, ids[:, None], True)
            yield Step(ids, logprobs, logits)
            if i + 1 == max_new_tokens:
                break
            blocked = None if utf8 is None else utf8.blocked(states)
            new_start = window_start(start, n, self.block_size, self.keep)
            if self.cache is None or new_start != start:  # no cache, or the window moved: positions restart at 0
                logits = self.prefill(hist[:, new_start:n])
                ids, logprobs = self.draw(logits, params, seen, generators, blocked)
            elif self.compiled:
                ids, logprobs, logits = self.compiled_next(hist[:, n - 1], n - 1 - start, params, seen, generators,
                                                           blocked)
            else:
                logits = self.step(hist[:, n - 1], n - 1 - start)
                ids, logprobs = self.draw(logits, params, seen, generators, blocked)
            start = new_start


def generate(model: GPT, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, seed: int | None = None, use_cache: bool = True,
             **sampling: float) -> Iterator[int]:
    """Yield up to max_new_tokens ids continuing prompt_ids: one sample, the simple interface.

    `sampling` takes the other `SamplingParams` fields (top_p, min_p, repetition_penalty).
    """
    params = SamplingParams(temperature=temperature, top_k=top_k, **sampling)
    for step in Engine(model, use_cache=use_cache).generate(prompt_ids, max_new_tokens, params, seed):
        yield int(step.ids[0])
