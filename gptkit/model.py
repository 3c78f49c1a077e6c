"""The decoder-only transformer: GPT, Block, CausalSelfAttention, MLP, and the KVCache.

Owns the network and its initialisation, nothing else: no tokenizer (the model sees ids), no
device choice, no training loop. Names follow GPT-2 (`wte`, `wpe`, `ln_1`, `attn.c_attn`, `ln_2`,
`mlp.c_fc`, `ln_f`, `lm_head`) so weights map one-to-one onto GPT-2 checkpoints.

Differences from GPT-2 are switches in `ModelConfig`, all off by default: rotary positions
(`pos_encoding="rope"`), RMSNorm (`norm="rmsnorm"`) and a SwiGLU feed-forward (`mlp="swiglu"`).
Dropout is applied to the embeddings and the residual branches but never to the attention
probabilities, so PyTorch's fused (flash) SDPA kernel stays usable on CPU and GPU alike.
The projections are `linear.Linear`: `nn.Linear` plus a path that spreads a decode step's
matrix-vector products over the CPU's threads.

Each module has `forward` (any length: training, prefill, the no-cache reference) and
`decode_step`: the same arithmetic for one new token per row, attending over the KV cache, which
is what generation runs once per token (see `GPT.decode_step`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.config import ModelConfig
from gptkit.linear import Linear


class KVCache:
    """Pre-allocated keys and values: one (B, n_head, max_len, head_dim) tensor per layer.

    `pos` counts the positions already filled. In a forward (a prefill) or an eager decode step
    (`GPT.decode_step`) each layer writes its new keys/values at [pos, pos+T) and attends over
    [0, pos+T); the model then calls `advance(T)`. A batch-1 write fills every row of a B-row
    cache, so one prefill of a shared prompt serves all samples.

    A compiled decode step needs shapes and addresses that never change (CUDA graphs replay fixed
    pointers): inside `static_step()` the position lives in the tensor `step_pos` (1,), each layer
    writes with `index_copy_` there and attends over the whole buffer through the additive `mask`
    (1, max_len): 0 at the filled positions, -inf at the others.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.max_len = max_len or cfg.block_size
        shape = (batch_size, cfg.n_head, self.max_len, cfg.head_dim)
        # a tensor per layer: a compiled step writes each in place, where writing one slot of an
        # (n_layer, ...) tensor compiled into a copy of whole layers at every step (2x slower on CPU)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.mask = torch.full((1, self.max_len), float("-inf"), device=device, dtype=dtype)
        self.step_pos = torch.zeros(1, dtype=torch.long, device=device)
        self.static = False
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store k, v (B or 1, nh, T, hs) of `layer`; return (keys, values, mask) to attend over."""
        if self.static:  # T == 1; (B, nh, max_len, hs) buffers and the (1, max_len) mask
            self.k[layer].index_copy_(2, self.step_pos, k)
            self.v[layer].index_copy_(2, self.step_pos, v)
            return self.k[layer], self.v[layer], self.mask
        B, end = k.size(0), self.pos + k.size(2)
        assert end <= self.max_len, "KV cache overflow: the caller must slide the window"
        keys, values = self.k[layer], self.v[layer]  # (B_max, nh, max_len, hs)
        # narrow: one view op where keys[:, :, a:b] is three (this runs twice per layer and token)
        keys.narrow(2, self.pos, end - self.pos).copy_(k)  # broadcasts a batch-1 prefill over every row
        values.narrow(2, self.pos, end - self.pos).copy_(v)
        if B < keys.size(0):
            keys, values = keys[:B], values[:B]
        return keys.narrow(2, 0, end), values.narrow(2, 0, end), None

    def advance(self, n: int) -> None:
        self.mask[:, self.pos:self.pos + n] = 0.0
        self.pos += n

    def reset(self) -> None:
        self.mask.fill_(float("-inf"))
        self.pos = 0

    @contextmanager
    def static_step(self) -> Iterator[None]:
        """One decode step at `pos` with fixed shapes (see the class docstring); advances by one."""
        assert self.pos < self.max_len, "KV cache overflow: the caller must slide the window"
        self.step_pos.fill_(self.pos)
        self.mask[:, self.pos] = 0.0
        self.static = True
        try:
            yield
        finally:
            self.static = False
        self.pos += 1


def rope_tables(head_dim: int, length: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the rotary angles, each (length, head_dim/2)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) of each head's features by position-dependent angles. x: (B, nh, T, hs)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (T, hs/2), broadcast over B, nh
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


def manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int = 0,
                     scale: float | None = None, causal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook path: softmax(Q·Kᵀ/√d + causal mask)·V. Returns (output, attention weights).

    q: (B, nh, T, hs); k, v: (B, nh, S, hs) with S = offset + T. Query i sits at position offset+i
    and may look at keys 0..offset+i. Weights: (B, nh, T, S), each row sums to 1.
    """
    T, S = q.size(-2), k.size(-2)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    att = (q @ k.transpose(-2, -1)) * scale  # (B, nh, T, S) similarity of every query to every key
    if causal:
        future = torch.ones(T, S, dtype=torch.bool, device=q.device).triu(diagonal=offset + 1)
        att = att.masked_fill(future, float("-inf"))  # a token must not see the tokens after it
    weights = F.softmax(att.float(), dim=-1).to(q.dtype)
    return weights @ v, weights  # (B, nh, T, hs), (B, nh, T, S)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with fused Q/K/V projections."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_embd = cfg.n_head, cfg.n_embd
        self.rope = cfg.pos_encoding == "rope"
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # Q, K, V projections
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # output projection
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.use_manual = False  # True: masked-softmax path (slower; for teaching and checks)
        self.last_weights: torch.Tensor | None = None  # set when called with keep_weights=True

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                kv_cache: KVCache | None = None, keep_weights: bool = False) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # split the width into heads: (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.rope:
            assert rope is not None
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        offset, mask = 0, None
        if kv_cache is not None:
            offset = 0 if kv_cache.static else kv_cache.pos  # static: the position is a tensor
            k, v, mask = kv_cache.update(self.layer_idx, k, v)  # (B, nh, offset+T or max_len, hs)
        if mask is not None:  # static decode step: one query over the whole buffer, filled slots only
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif self.use_manual or keep_weights:
            y, w = manual_attention(q, k, v, offset=offset)
            self.last_weights = w.detach() if keep_weights else None
        elif offset == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:  # one new token attends to everything before it: no mask needed
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # a chunk appended to a filled cache: causal mask shifted by the offset
            allowed = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=offset)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        y = self.c_proj(y)
        return self.resid_dropout(y) if self.training else y  # dropout only while training

    def decode_step(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                    kv_cache: KVCache) -> torch.Tensor:
        """`forward` for one new position per row, x (B, C) -> (B, C), attending over the cache.

        With one position the heads need no transposes: (B, 3C) is already (B, 3, nh, 1, hs).
        """
        B, C = x.size()
        q, k, v = self.c_attn.forward(x).view(B, 3, self.n_head, 1, C // self.n_head).unbind(1)
        if self.rope:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        k, v, mask = kv_cache.update(self.layer_idx, k, v)  # (B, nh, pos+1 or max_len, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, 1, hs)
        return self.c_proj.forward(y.view(B, C))


class MLP(nn.Module):
    """The feed-forward network (FFN) applied to each position: expand, non-linearity, project back."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        # SwiGLU has three matrices, so ~8/3 width keeps the parameter count of GPT-2's 4x MLP
        hidden = 4 * cfg.n_embd if not self.swiglu else 8 * ((8 * cfg.n_embd // 3 + 7) // 8)
        self.c_fc = Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.c_gate = Linear(cfg.n_embd, hidden, bias=cfg.bias) if self.swiglu else None
        self.c_proj = Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.c_gate is not None:
            h = F.silu(self.c_gate(x)) * self.c_fc(x)
        else:
            h = F.gelu(self.c_fc(x), approximate="tanh")  # GPT-2's GELU
        h = self.c_proj(h)
        return self.dropout(h) if self.training else h

    def decode_step(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` at inference, as plain method calls (see `GPT.decode_step`)."""
        if self.c_gate is not None:
            return self.c_proj.forward(F.silu(self.c_gate.forward(x)) * self.c_fc.forward(x))
        return self.c_proj.forward(F.gelu(self.c_fc.forward(x), approximate="tanh"))


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd, eps=1e-5)
    return nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=cfg.bias)


class Block(nn.Module):
    """A pre-LN transformer block: x + attention(norm(x)), then x + FFN(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope=None, kv_cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope=rope, kv_cache=kv_cache)  # residual connection
        x = x + self.mlp(self.ln_2(x))  # residual connection
        return x

    def decode_step(self, x: torch.Tensor, rope, kv_cache: KVCache) -> torch.Tensor:
        """`forward` for one new position per row, x (B, C)."""
        x = x + self.attn.decode_step(self.ln_1.forward(x), rope, kv_cache)
        return x + self.mlp.decode_step(self.ln_2.forward(x))


class GPT(nn.Module):
    """Token (+ learned position) embeddings -> n_layer Blocks -> final norm -> lm_head (tied to wte)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.vocab_size > 0, "vocab_size must be set from the tokenizer before building the model"
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),  # token embeddings
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_encoding == "learned" else None,
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
            ln_f=make_norm(cfg),
        ))
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one matrix reads and writes tokens
        if cfg.pos_encoding == "rope":
            cos, sin = rope_tables(cfg.head_dim, cfg.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by 1/sqrt(2*n_layer)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # the tied lm_head is counted once
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if self.transformer.wpe is not None:
                n -= self.transformer.wpe.weight.numel()
        return n

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token embedding plus (learned) positional embedding: (B, T) ids -> (B, T, n_embd)."""
        x = self.transformer.wte(idx)
        if self.transformer.wpe is not None:
            pos = torch.arange(start, start + idx.size(1), device=idx.device)
            x = x + self.transformer.wpe(pos)
        return self.transformer.drop(x) if self.training else x

    def rope_for(self, start: int, length: int):
        if self.config.pos_encoding != "rope":
            return None
        return self.rope_cos[start:start + length], self.rope_sin[start:start + length]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, last_only: bool = False):
        """idx: (B, T) token ids. Returns (logits (B, T or 1, vocab), loss or None)."""
        B, T = idx.size()
        start = kv_cache.pos if kv_cache is not None else 0
        assert start + T <= self.config.block_size, f"sequence of {start + T} exceeds block_size"
        x = self.embed(idx, start)
        rope = self.rope_for(start, T)
        for block in self.transformer.h:
            x = block(x, rope=rope, kv_cache=kv_cache)
        x = self.transformer.ln_f(x)
        if kv_cache is not None:
            kv_cache.advance(T)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            return logits, loss
        if last_only:
            x = x[:, [-1], :]  # generation needs only the last position's prediction
        return self.lm_head(x), None

    def decode_step(self, idx: torch.Tensor, kv_cache: KVCache) -> torch.Tensor:
        """`forward` for one new token per row: idx (B,) at position kv_cache.pos -> logits (B, V).

        What generation runs once per token, eager and compiled alike: the arithmetic of `forward`
        with the cache, written for a single position. At batch 1 a step is 24 matrix-vector
        products (6 layers of `baby`) and ~200 small operators, so on a CPU the Python around them
        counts: here the heads need no transposes, and every module is called as a plain method
        (`.forward`, `decode_step`), since nn.Module's `__call__` costs a few µs, ~60 times a step.
        Eager steps attend over the filled slots; inside `kv_cache.static_step()` (a compiled
        step: fixed shapes) the position is the tensor `step_pos` and attention goes through the mask.
        """
        t = self.transformer
        if kv_cache.static:
            pos = kv_cache.step_pos  # (1,)
        else:
            assert kv_cache.pos < self.config.block_size, "the caller must slide the window"
            pos = slice(kv_cache.pos, kv_cache.pos + 1)
        # either way, indexing by `pos` keeps a (1, ...) axis that broadcasts over the rows
        x = t.wte.forward(idx)  # (B, C)
        if t.wpe is not None:
            x = x + t.wpe.weight[pos]  # learned position
        rope = (self.rope_cos[pos], self.rope_sin[pos]) if self.config.pos_encoding == "rope" else None
        for block in t.h:
            x = block.decode_step(x, rope, kv_cache)
        if not kv_cache.static:  # a static step advances when it ends
            kv_cache.advance(1)
        return self.lm_head.forward(t.ln_f.forward(x))

    def set_manual_attention(self, on: bool = True) -> None:
        """Route every layer through the plain masked-softmax path (for teaching and checks)."""
        for block in self.transformer.h:
            block.attn.use_manual = on

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay matrices and embeddings, not biases or norm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
