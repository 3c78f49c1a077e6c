"""The decoder-only transformer: GPT, Block, CausalSelfAttention, MLP, the KVCache and two helpers.

Owns the network and its initialisation, nothing else: no tokenizer (the model sees ids), no device
choice, no training loop, no generation loop (`generate.py`). Names follow GPT-2 (`wte`, `wpe`,
`ln_1`, `attn.c_attn`, `ln_2`, `mlp.c_fc`, `ln_f`, `lm_head`), so weights map one-to-one onto
GPT-2 checkpoints.

Differences from GPT-2 are switches in `ModelConfig`: rotary positions (`pos_encoding="rope"`),
RMSNorm (`norm="rmsnorm"`) and a SwiGLU feed-forward (`mlp="swiglu"`). Dropout is applied to the
embeddings and the residual branches but never to the attention probabilities, so PyTorch's fused
(flash) SDPA kernel stays usable on CPU and GPU alike.

Attention takes one of two SDPA paths: causal over the input alone (training, the no-cache
reference), or over a KVCache through a mask. `manual_attention` is the textbook masked softmax,
for teaching and for `introspect`, which runs the blocks itself to show the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.config import ModelConfig, mlp_hidden, padded_vocab


class KVCache:
    """Keys and values of every layer, pre-allocated: one (B, n_head, max_len, head_dim) tensor each.

    A forward with the cache writes its T new keys and values at `input_pos` (consecutive positions)
    and attends through a mask that lets the query at position p see keys 0..p. Compiled, or on a
    GPU, it attends over the whole buffer, so the shapes never change and a decode step compiles
    into one graph (CUDA graphs replay fixed addresses); eager on a CPU, where reading the position
    costs nothing, only over the slots filled so far. Slots past the newest position hold stale keys
    that the mask or the slice hides, so starting again at 0 needs no reset.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.max_len = max_len or cfg.block_size
        shape = (batch_size, cfg.n_head, self.max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.slots = torch.arange(self.max_len, device=device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               input_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store k, v (B or 1, nh, T, hs) at input_pos (T,); return (keys, values, mask) to attend over.
        A batch-1 write (a shared prompt's prefill) fills every row."""
        B, T = k.shape[0], k.shape[2]
        keys, values = self.k[layer], self.v[layer]
        if input_pos.device.type == "cpu" and not torch.compiler.is_compiling():
            n = int(input_pos[-1]) + 1  # the slots filled so far
            keys.narrow(2, n - T, T).copy_(k)
            values.narrow(2, n - T, T).copy_(v)
            mask = None if T == 1 else self.slots[:n] <= input_pos[:, None]  # one new query sees them all
            return keys[:B, :, :n], values[:B, :, :n], mask
        keys[:, :, input_pos] = k
        values[:, :, input_pos] = v
        return keys[:B], values[:B], self.slots <= input_pos[:, None]  # (T, max_len): True where it may look


def rope_tables(head_dim: int, length: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the rotary angles, each (length, head_dim/2): position t turns pair i by t·base^(-2i/hs)."""
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


Rope = tuple[torch.Tensor, torch.Tensor] | None  # (cos, sin) at the input's positions, each (T, hs/2)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with fused Q/K/V projections."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_embd = cfg.n_head, cfg.n_embd
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # Q, K, V projections
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # output projection
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def heads(self, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project x (B, T, C) to queries, keys and values split into heads, each (B, nh, T, hs)."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if rope is not None:  # rotary positions turn queries and keys, never values
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """Heads (B, nh, T, hs) side by side again, through the output projection: (B, T, C)."""
        B, _, T, _ = y.size()
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, self.n_embd)))

    def forward(self, x: torch.Tensor, rope: Rope = None, kv_cache: KVCache | None = None,
                input_pos: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.heads(x, rope)
        if kv_cache is None:  # the input alone: each position sees itself and the ones before it
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # the cache's keys, written up to input_pos, through its mask
            k, v, mask = kv_cache.update(self.layer_idx, k, v, input_pos)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.merge(y)


class MLP(nn.Module):
    """The feed-forward network (FFN) applied to each position: expand, non-linearity, project back."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = mlp_hidden(cfg)  # 4C for GELU; ~8/3 C for SwiGLU's three matrices (the same parameters)
        self.c_fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.c_gate = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias) if cfg.mlp == "swiglu" else None
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.c_gate is not None:
            h = F.silu(self.c_gate(x)) * self.c_fc(x)
        else:
            h = F.gelu(self.c_fc(x), approximate="tanh")  # GPT-2's GELU
        return self.dropout(self.c_proj(h))


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

    def forward(self, x: torch.Tensor, rope: Rope = None, kv_cache: KVCache | None = None,
                input_pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, kv_cache, input_pos)  # residual connection
        x = x + self.mlp(self.ln_2(x))  # residual connection
        return x


class GPT(nn.Module):
    """Token (+ learned position) embeddings -> n_layer Blocks -> final norm -> lm_head (tied to wte)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.vocab_size > 0, "vocab_size must be set from the tokenizer before building the model"
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(padded_vocab(cfg.vocab_size), cfg.n_embd),  # token embeddings (+ zero padding rows)
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_encoding == "learned" else None,
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
            ln_f=make_norm(cfg),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, self.transformer.wte.num_embeddings, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one matrix reads and writes tokens
        if cfg.pos_encoding == "rope":
            cos, sin = rope_tables(cfg.head_dim, cfg.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by 1/sqrt(2*n_layer)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        nn.init.zeros_(self.transformer.wte.weight.data[cfg.vocab_size:])  # padding: never an input, cut from logits
        self.register_state_dict_post_hook(GPT._cut_padding)
        self.register_load_state_dict_pre_hook(GPT._add_padding)

    def _cut_padding(self, state: dict, prefix: str, *_) -> None:  # state_dict(): the real vocabulary only
        for key in (prefix + "transformer.wte.weight", prefix + "lm_head.weight"):
            if key in state:
                state[key] = state[key][:self.config.vocab_size]

    def _add_padding(self, state: dict, prefix: str, *_) -> None:  # load_state_dict(): zero rows added back
        pad = self.transformer.wte.num_embeddings - self.config.vocab_size
        for key in (prefix + "transformer.wte.weight", prefix + "lm_head.weight"):
            if pad and key in state and state[key].size(0) == self.config.vocab_size:
                state[key] = F.pad(state[key], (0, 0, 0, pad))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, the tied lm_head once and the vocabulary's padding rows not at all."""
        n = sum(p.numel() for p in self.parameters()) - self.transformer.wte.weight[self.config.vocab_size:].numel()
        if non_embedding:
            n -= self.config.vocab_size * self.config.n_embd
            if self.transformer.wpe is not None:
                n -= self.transformer.wpe.weight.numel()
        return n

    def embed(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None) -> tuple[torch.Tensor, Rope]:
        """(B, T) ids at positions input_pos (T,) [default 0..T-1] -> the residual stream's start
        (B, T, C): token (+ learned position) embeddings; and the rotary angles at those positions."""
        pos = torch.arange(idx.size(1), device=idx.device) if input_pos is None else input_pos
        x = self.transformer.wte(idx)
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe(pos)
        rope = (self.rope_cos[pos], self.rope_sin[pos]) if self.config.pos_encoding == "rope" else None
        return self.transformer.drop(x), rope

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                input_pos: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids; with kv_cache, at positions input_pos (T,) of it [default 0..T-1].
        Returns (logits (B, T, vocab), cross-entropy loss against targets (B, T), or None)."""
        assert idx.size(1) <= self.config.block_size, f"sequence of {idx.size(1)} exceeds block_size"
        x, rope = self.embed(idx, input_pos)
        if kv_cache is not None and input_pos is None:
            input_pos = torch.arange(idx.size(1), device=idx.device)
        for block in self.transformer.h:
            x = block(x, rope, kv_cache, input_pos)
        logits = self.head(x)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream (..., C) -> logits over the real vocabulary (..., V): final norm, lm_head."""
        return self.lm_head(self.transformer.ln_f(x))[..., :self.config.vocab_size]
