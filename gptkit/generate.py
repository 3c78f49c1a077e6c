"""Token generation: sampling functions, prefill and decode with the KV cache, `generate()`.

Owns turning a model and prompt ids into new ids, one at a time, as an iterator. Like nanochat's
engine it knows nothing about tokenization: the caller encodes the prompt and decodes what comes
out (incrementally, so a Hangul syllable split across byte tokens is printed whole).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from gptkit.model import GPT, KVCache


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next ids (B,). temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # keep the k most likely
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@torch.no_grad()
def prefill(model: GPT, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run the prompt (B, T) through the model, filling the cache; returns last logits (B, V)."""
    cache.reset()
    logits, _ = model(ids, kv_cache=cache, last_only=True)
    return logits[:, -1, :]


@torch.no_grad()
def decode_step(model: GPT, next_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One new token per row (B,) at position cache.pos; returns its logits (B, V)."""
    logits, _ = model(next_ids.view(-1, 1), kv_cache=cache, last_only=True)
    return logits[:, -1, :]


@torch.no_grad()
def generate(model: GPT, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, seed: int | None = None, use_cache: bool = True) -> Iterator[int]:
    """Yield up to max_new_tokens ids continuing prompt_ids (batch of one).

    The context is the last `block_size` tokens. With the cache, when it fills up, the window slides
    by re-running (prefilling) the most recent half block, so each token still sees at least half a
    block of context and the cost per token stays flat.
    """
    device = next(model.parameters()).device
    block = model.config.block_size
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    tokens = list(prompt_ids)
    if not tokens:
        raise ValueError("generate needs at least one prompt token")
    cache = KVCache(model.config, 1, device=device, dtype=next(model.parameters()).dtype) if use_cache else None
    logits = None
    for _ in range(max_new_tokens):
        if cache is None:
            ctx = torch.tensor([tokens[-block:]], device=device)
            logits = model(ctx, last_only=True)[0][:, -1, :]
        elif logits is None or cache.pos >= block:
            keep = tokens[-block:] if logits is None else tokens[-(block // 2):]
            logits = prefill(model, torch.tensor([keep], device=device), cache)
        nxt = sample_next_token(logits, temperature, top_k, generator)
        tokens.append(int(nxt.item()))
        yield tokens[-1]
        if cache is not None and cache.pos < block:
            logits = decode_step(model, nxt, cache)
