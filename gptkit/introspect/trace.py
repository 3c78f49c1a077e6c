"""What `gptkit inspect` computes: a checkpoint's summary and one forward pass taken apart.

Owns the numbers: parameter counts per part read from the safetensors header (no tensor data), the
training record and loss curve, and for a prompt the blocks run by hand — per layer the attention
weights, the attention output, the FFN output and the residual stream — from which come the
next-token table, the logit lens and the direct logit attribution. Results are plain Python
(lists, floats, strings), so `--json` is a `json.dumps` away. It does not render (`cli/views`)
or scan training text for look-alike FFN outputs (`neighbors.py`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from gptkit.checkpoint import CheckpointInfo, val_curve
from gptkit.config import to_dict
from gptkit.errors import UsageError
from gptkit.introspect.tokens import label
from gptkit.model import GPT, manual_attention
from gptkit.tokenizers.core import Tokenizer
from gptkit.tokenizers.stored import tokenizer_from_dict

# ------------------------------------------------------------------------------------------------
# Summary (header only)

PARTS = ("token embeddings (wte = lm_head)", "position embeddings (wpe)", "attention Q", "attention K",
         "attention V", "attention output (c_proj)", "MLP", "norms", "other")


def param_counts(info: CheckpointInfo) -> dict[str, Any]:
    """Parameters per part from the tensor shapes in the header; the tied lm_head is counted once."""
    parts = dict.fromkeys(PARTS, 0)
    for name, meta in info.tensors.items():
        if not name.startswith("model."):
            continue
        n = math.prod(meta["shape"])
        key = name[len("model."):]
        if key.startswith("transformer.wte."):
            parts[PARTS[0]] += n
        elif key.startswith("transformer.wpe."):
            parts[PARTS[1]] += n
        elif ".attn.c_attn." in key:  # fused Q/K/V: three equal slices of the output rows
            for part in PARTS[2:5]:
                parts[part] += n // 3
        elif ".attn.c_proj." in key:
            parts[PARTS[5]] += n
        elif ".mlp." in key:
            parts["MLP"] += n
        elif ".ln_" in key:
            parts["norms"] += n
        else:
            parts["other"] += n
    total = sum(parts.values())
    embedding = parts[PARTS[0]] + parts[PARTS[1]]
    return {"parts": {k: v for k, v in parts.items() if v or k != "other"}, "total": total,
            "non_embedding": total - embedding}


def loss_curve(info: CheckpointInfo) -> list[dict[str, float]]:
    """The eval points of the run's metrics.jsonl up to this checkpoint's step."""
    return [{k: v for k, v in p.items() if k != "elapsed"} for p in val_curve(info.path.parent, info.state.get("step"))]


def summarize(info: CheckpointInfo) -> dict[str, Any]:
    """Everything the header and the run folder say about a checkpoint; reads no tensor data."""
    tok = tokenizer_from_dict(info.meta["tokenizer"])
    state = {k: v for k, v in info.state.items() if k != "rng"}  # RNG state is bulky and says nothing here
    names = info.tensors
    return {
        "path": str(info.path),
        "run": info.meta.get("run", info.path.parent.name),
        "format_version": info.meta["format_version"],
        "file_bytes": info.path.stat().st_size,
        "dtypes": dict(Counter(m["dtype"] for n, m in names.items() if n.startswith("model."))),
        "has_optimizer_state": any(n.startswith("optim.") for n in names),
        "model_config": to_dict(info.model_config),
        "train_config": info.meta.get("train_config", {}),
        "params": param_counts(info),
        "tokenizer": {"kind": tok.kind, "name": tok.name, "vocab_size": tok.vocab_size},
        "training": state,
        "loss_curve": loss_curve(info),
    }


# ------------------------------------------------------------------------------------------------
# One forward pass, block by block


def piece(tokenizer: Tokenizer, token_id: int) -> dict[str, Any]:
    """A token as `gptkit tokenize --json` shows it: its text (None when its bytes are only part of a
    character, like one byte of a Hangul syllable) and its readable label (`<0xEB>` for such bytes)."""
    data = tokenizer.token_bytes(token_id)
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"id": int(token_id), "text": text, "label": label(data)}


def run_blocks(model: GPT, idx: torch.Tensor, with_weights: bool = True
               ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Yield (attention output, FFN output, residual after the block, attention weights) per block:
    the first three (B, T, C), the weights (B, nh, T, T), query rows x key columns (None unless
    `with_weights`).

    The arithmetic of `Block.forward`, written out so each branch of the residual stream is visible
    (x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))); for the weights, attention goes through the
    textbook `manual_attention`, since the fused SDPA kernel never forms them.
    """
    x, rope = model.embed(idx)  # (B, T, C)
    for block in model.transformer.h:
        weights = None
        if with_weights:
            q, k, v = block.attn.heads(block.ln_1(x), rope)  # (B, nh, T, hs) each
            y, weights = manual_attention(q, k, v)
            a = block.attn.merge(y)
        else:
            a = block.attn(block.ln_1(x), rope)
        x = x + a
        m = block.mlp(block.ln_2(x))
        x = x + m
        yield a, m, x, weights


@dataclass
class Trace:
    """One prompt's forward pass. Tensors are for batch row 0: (T, C) unless noted."""

    ids: list[int]
    embedding: torch.Tensor  # token (+ position) embedding, (T, C)
    attn_out: list[torch.Tensor]  # per layer (T, C)
    mlp_out: list[torch.Tensor]  # per layer (T, C): the FFN output added to the residual stream
    resid: list[torch.Tensor]  # per layer, the residual stream after the block (T, C)
    weights: list[torch.Tensor]  # per layer (nh, T, T), query rows x key columns
    logits: torch.Tensor  # (T, V)


@torch.no_grad()
def trace(model: GPT, ids: list[int]) -> Trace:
    """Run the prompt through the blocks by hand, keeping every intermediate (model in eval mode)."""
    if not ids:
        raise UsageError("--prompt is empty; give some text")
    if len(ids) > model.config.block_size:
        raise UsageError(f"the prompt is {len(ids)} tokens, longer than this model's block_size "
                         f"{model.config.block_size}; shorten it")
    idx = torch.tensor([ids], device=next(model.parameters()).device)
    tr = Trace(ids, model.embed(idx)[0][0], [], [], [], [], torch.empty(0))
    for a, m, x, weights in run_blocks(model, idx):
        tr.attn_out.append(a[0])
        tr.mlp_out.append(m[0])
        tr.resid.append(x[0])
        tr.weights.append(weights[0])
    tr.logits = read_out(model, tr.resid[-1])
    return tr


def read_out(model: GPT, x: torch.Tensor) -> torch.Tensor:
    """Logits of a residual stream (..., C) read through the final norm and lm_head: (..., V)."""
    return model.head(x)


def top_tokens(tokenizer: Tokenizer, logits: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """The k most likely next tokens of one logit vector (V,), with probabilities."""
    probs = torch.softmax(logits.float(), dim=-1)
    p, i = probs.topk(min(k, probs.numel()))
    return [{**piece(tokenizer, int(t)), "prob": float(q), "logit": float(logits[t])}
            for q, t in zip(p, i, strict=True)]


def logit_lens(model: GPT, tokenizer: Tokenizer, tr: Trace, k: int, target: int) -> list[dict[str, Any]]:
    """Read the last position's residual stream after the embedding and after each block as if it were
    the final one. The last row is exactly the model's own prediction."""
    stages = [("embedding", -1, tr.embedding)] + [(f"block {i}", i, r) for i, r in enumerate(tr.resid)]
    rows = []
    for name, layer, x in stages:
        logits = read_out(model, x[-1])
        rows.append({"stage": name, "layer": layer, "top": top_tokens(tokenizer, logits, k),
                     "target_prob": float(torch.softmax(logits.float(), -1)[target])})
    return rows


def final_norm_linearised(norm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool, float]:
    """ln_f at the final residual x (C,) as an affine map of its inputs: (gain/scale, bias, centred, scale).

    LayerNorm: y = (x - mean x) / sqrt(var x + eps) * g + b. Freezing the scale at the value computed on
    the final residual makes y linear in x, so it splits over the parts that were summed into x.
    RMSNorm: y = x / sqrt(mean x² + eps) * g, without centring or bias.
    """
    c = x.size(-1)
    g = norm.weight if norm.weight is not None else torch.ones(c, device=x.device)
    bias = getattr(norm, "bias", None)
    b = bias if bias is not None else torch.zeros(c, device=x.device)
    eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    if isinstance(norm, nn.LayerNorm):
        scale = torch.sqrt(x.var(unbiased=False) + eps)
        return g / scale, b, True, float(scale)
    scale = torch.sqrt(x.pow(2).mean() + eps)
    return g / scale, b, False, float(scale)


@torch.no_grad()
def attribution(model: GPT, tokenizer: Tokenizer, tr: Trace, target: int) -> dict[str, Any]:
    """Direct logit attribution: how much each part written into the residual stream pushes the logit of
    `target` at the last position. The terms (embeddings, each layer's attention and FFN output, and
    ln_f's bias) sum to that logit, because the final residual is their sum and ln_f is linearised at it.
    """
    gain, bias, centred, scale = final_norm_linearised(model.transformer.ln_f, tr.resid[-1][-1])
    u = model.lm_head.weight[target]  # (C,) the unembedding direction of the target token

    def push(v: torch.Tensor) -> float:
        v = v - v.mean() if centred else v
        return float((v * gain) @ u)

    T = len(tr.ids)
    terms = []
    wte = model.transformer.wte.weight[tr.ids[-1]]
    if model.transformer.wpe is not None:
        terms.append({"name": "token embedding", "layer": -1, "kind": "embedding", "value": push(wte)})
        terms.append({"name": "position embedding", "layer": -1, "kind": "embedding",
                      "value": push(model.transformer.wpe.weight[T - 1])})
    else:
        terms.append({"name": "token embedding", "layer": -1, "kind": "embedding", "value": push(tr.embedding[-1])})
    for i, (a, m) in enumerate(zip(tr.attn_out, tr.mlp_out, strict=True)):
        terms.append({"name": f"block {i} attention", "layer": i, "kind": "attention", "value": push(a[-1])})
        terms.append({"name": f"block {i} FFN", "layer": i, "kind": "ffn", "value": push(m[-1])})
    terms.append({"name": "ln_f bias", "layer": len(tr.resid), "kind": "bias", "value": float(bias @ u)})
    return {"token": piece(tokenizer, target), "logit": float(tr.logits[-1, target]),
            "terms": terms, "sum": sum(t["value"] for t in terms), "ln_f_scale": scale}


@torch.no_grad()
def analyze(model: GPT, tokenizer: Tokenizer, prompt: str, k: int = 10) -> tuple[Trace, dict[str, Any]]:
    """The forward-pass views of `inspect --prompt`: tokens, next-token table, attention weights,
    logit lens and attribution of the predicted token. Returns the raw trace and the JSON-able result."""
    ids = tokenizer.encode(prompt)
    tr = trace(model, ids)
    target = int(tr.logits[-1].argmax())
    return tr, {
        "prompt": prompt,
        "tokens": [piece(tokenizer, i) for i in ids],
        "next_token": top_tokens(tokenizer, tr.logits[-1], k),
        "attention": [w.tolist() for w in tr.weights],  # (n_layer, nh, T, T)
        "logit_lens": logit_lens(model, tokenizer, tr, k, target),
        "attribution": attribution(model, tokenizer, tr, target),
    }
