"""The FFN-neighbour method over many positions: `gptkit inspect --neighbors --eval N`.

The claim under test: the tokens that followed the training positions whose FFN output looks most
like a position's own (cosine, per block) approximate what each block, and the model, predicts
there. N positions are drawn with a seed from the held-out text; at each, every block's k nearest
training positions give an approximate next-token distribution (and all blocks' together the
combined one), set against the model's own distribution: top-1 agreement, KL(approx ‖ model) and
Hellinger distance. Two baselines on the same positions say what agreement costs nothing: the
training text's unigram distribution, and what followed the longest suffix of the context that
occurs in the training text (an n-gram model backing off to its longest match).

Contexts are like for like: the training text is run in windows of `block_size` tokens that overlap
by half, and each position's FFN output is taken from the window where it has between half a block
and a whole block of context; each drawn position is run with a context length drawn from that same
range. Those FFN outputs (unit length, fp16) are kept in a cache file in the run folder, keyed by
the checkpoint file (name, size, mtime) and the text's sha256, so a second run only searches:
neighbours come from chunked matrix products against all queries at once.

Owns the pool, its cache, the queries, the search and the metrics. It does not render or print;
progress goes to a callback. The one-prompt view is `neighbors.py`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gptkit.checkpoint import CheckpointInfo
from gptkit.errors import InputError, UsageError
from gptkit.introspect.neighbors import TrainingText, encode_prefix, read_source
from gptkit.introspect.trace import read_out, run_blocks
from gptkit.model import GPT
from gptkit.tokenizers.core import Tokenizer

Progress = Callable[[str, int, int], None]  # (what, done, total)
CACHE_FORMAT = "1"
QUERY_CHUNK = 256  # queries scored at a time: bounds the (queries, V) and (queries, pool rows) tensors
POOL_CHUNK = 16384  # pool rows per matrix product
POOL_BYTES = 1 << 30  # the default pool: the whole training split, or as much of it as 1 GiB of fp16 holds


@dataclass
class EvalTexts:
    train: TrainingText  # the neighbours' and baselines' text
    held_out: TrainingText  # where the positions are drawn from
    digest: str  # sha256 of the whole file


def eval_texts(info: CheckpointInfo, data: str | Path | None) -> EvalTexts:
    """The recorded text (or `data`) cut where training cut it: neighbours and baselines from the
    training part, the positions from the validation part, so no position is its own neighbour.
    Both are streamed from the file as far as they are read."""
    scanned, path, warnings = read_source(info, data)
    val_fraction = (info.meta.get("train_config") or {}).get("val_fraction") or 0.1
    scope = "training split" if not warnings else "training split of the file as it is now"
    return EvalTexts(TrainingText(scanned, path, scope, warnings, "train", val_fraction),
                     TrainingText(scanned, path, "held-out part", [], "val", val_fraction), scanned.sha256)


# ------------------------------------------------------------------------------------------------
# The pool: every training position's FFN outputs, once per run


def context_range(block_size: int) -> tuple[int, int]:
    """(least, most) tokens of context a position is run with: half a block to a whole one."""
    return block_size // 2 + 1, block_size


@torch.no_grad()
def ffn_pool(model: GPT, ids: torch.Tensor, progress: Progress | None = None,
             batch_tokens: int = 16384) -> torch.Tensor:
    """Unit-length FFN outputs (n_layer, n, C) fp16 at positions 0 .. n-1 of ids (n + 1,) (each has a
    follower). Window i covers [iS, iS + W) with W = block_size, S = W - keep; it contributes its rows
    keep .. W-1 (the first window all of them), so the kept rows tile the text exactly once."""
    W = model.config.block_size
    keep = context_range(W)[0] - 1
    S, n = W - keep, ids.numel() - 1
    n_windows = 1 + max(0, math.ceil((n - W) / S))
    padded = torch.zeros((n_windows - 1) * S + W, dtype=torch.long)  # tokens past the end change no earlier row
    padded[:n] = ids[:n]
    windows = padded.unfold(0, W, S)  # (n_windows, W)
    cfg, device = model.config, next(model.parameters()).device
    out = torch.empty(cfg.n_layer, n, cfg.n_embd, dtype=torch.float16)
    step = max(1, batch_tokens // W)
    for start in range(0, n_windows, step):
        idx = windows[start:start + step].to(device)  # (b, W)
        for layer, (_, m, _, _) in enumerate(run_blocks(model, idx, with_weights=False)):
            m = F.normalize(m.float(), dim=-1).half().cpu()  # (b, W, C)
            rows = m[:, keep:].reshape(-1, cfg.n_embd)  # positions start*S + keep onwards, in order
            if start == 0:
                rows = torch.cat([m[0, :keep], rows])
            first = 0 if start == 0 else start * S + keep
            stop = min(n, first + rows.size(0))
            out[layer, first:stop] = rows[:stop - first]
        if progress is not None:
            progress("FFN outputs of the training text", min(n, (start + step) * S + keep), n)
    return out


def cache_key(info: CheckpointInfo, digest: str, n: int, block_size: int) -> dict[str, str]:
    st = info.path.stat()
    return {"format": CACHE_FORMAT, "checkpoint": info.path.name, "checkpoint_size": str(st.st_size),
            "checkpoint_mtime_ns": str(st.st_mtime_ns), "text_sha256": digest, "positions": str(n),
            "block_size": str(block_size)}


def cache_path(info: CheckpointInfo) -> Path:
    return info.path.parent / "neighbors" / f"{info.path.stem}.ffn.safetensors"


def load_or_build_pool(model: GPT, info: CheckpointInfo, ids: torch.Tensor, digest: str,
                       progress: Progress | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The pool from the cache when its key matches, else built and written there (atomically).
    Returns (vectors, what happened: path, whether built, seconds, a warning if it could not be kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from gptkit.fsio import atomic_write

    path, t0 = cache_path(info), time.perf_counter()
    key = cache_key(info, digest, ids.numel() - 1, model.config.block_size)
    shape = (model.config.n_layer, ids.numel() - 1, model.config.n_embd)
    try:
        with safe_open(str(path), "pt") as f:
            if f.metadata() == key and tuple(f.get_slice("ffn").get_shape()) == shape:
                vectors = f.get_tensor("ffn")
                return vectors, {"path": str(path), "built": False, "seconds": time.perf_counter() - t0}
    except Exception:  # noqa: BLE001 - missing, unreadable or damaged (safetensors' own error type): rebuild
        pass
    vectors = ffn_pool(model, ids, progress)
    status: dict[str, Any] = {"path": str(path), "built": True, "seconds": time.perf_counter() - t0}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file({"ffn": vectors}, str(tmp), metadata=key))
    except OSError as e:
        status["warning"] = f"could not keep the FFN cache at {str(path)!r} ({e.strerror}); it was used in memory"
    return vectors, status


# ------------------------------------------------------------------------------------------------
# Queries, search, baselines, metrics


@torch.no_grad()
def queries(model: GPT, ids: np.ndarray, n: int, seed: int) -> dict[str, Any]:
    """n positions of the held-out ids, each with a context length drawn from `context_range`: their
    unit FFN outputs (n_layer, n, C), the model's log-probabilities (n, V), the contexts and the
    tokens that actually came next."""
    lo, hi = context_range(model.config.block_size)
    last = np.arange(lo - 1, len(ids) - 1)  # a position needs `lo` tokens of context and a next token
    if len(last) < n:
        raise UsageError(f"the held-out text has {max(0, len(last))} positions to draw from, fewer than --eval {n}; "
                         "lower --eval")
    rng = np.random.default_rng(seed)
    t = np.sort(rng.choice(last, size=n, replace=False))
    lengths = rng.integers(lo, hi + 1, size=n).clip(max=t + 1)  # (n,) context lengths
    device, W = next(model.parameters()).device, model.config.block_size
    vecs, logps = [], []
    for a in range(0, n, QUERY_CHUNK):
        rows = range(a, min(n, a + QUERY_CHUNK))
        idx = torch.zeros(len(rows), W, dtype=torch.long)
        for r, i in enumerate(rows):  # each context left-aligned; what follows it is ignored (causal)
            idx[r, :lengths[i]] = torch.from_numpy(ids[t[i] - lengths[i] + 1:t[i] + 1].astype(np.int64))
        at = torch.as_tensor(lengths[list(rows)] - 1)
        pick = torch.arange(len(rows))
        resid = None
        layer_vecs = []
        for _, m, x, _ in run_blocks(model, idx.to(device), with_weights=False):
            layer_vecs.append(F.normalize(m[pick, at].float(), dim=-1).cpu())
            resid = x[pick, at]
        vecs.append(torch.stack(layer_vecs))  # (n_layer, rows, C)
        logps.append(torch.log_softmax(read_out(model, resid).float(), dim=-1).cpu())
    contexts = [ids[ti - li + 1:ti + 1] for ti, li in zip(t, lengths, strict=True)]
    return {"positions": t, "lengths": lengths, "vectors": torch.cat(vecs, 1), "logp": torch.cat(logps),
            "contexts": contexts, "actual": torch.as_tensor(ids[t + 1].astype(np.int64))}


def nearest(pool: torch.Tensor, q: torch.Tensor, k: int, progress: Progress | None = None) -> torch.Tensor:
    """For each block, the k pool rows with the largest cosine to each query: (n_layer, n, k), best first.
    pool (n_layer, P, C) and q (n_layer, n, C) are unit length; a chunk of rows at a time."""
    L, P, _ = pool.shape
    k = min(k, P)
    out = torch.empty(L, q.size(1), k, dtype=torch.long)
    for layer in range(L):
        best_s = torch.full((q.size(1), 0), -math.inf)
        best_i = torch.zeros((q.size(1), 0), dtype=torch.long)
        for start in range(0, P, POOL_CHUNK):
            sims = q[layer] @ pool[layer, start:start + POOL_CHUNK].float().T  # (n, chunk)
            s, i = sims.topk(min(k, sims.size(1)), dim=1)
            best_s, j = torch.cat([best_s, s], 1).topk(min(k, best_s.size(1) + s.size(1)), dim=1)
            best_i = torch.cat([best_i, i + start], 1).gather(1, j)
            if progress is not None:
                progress("searching neighbours", layer * P + min(P, start + POOL_CHUNK), L * P)
        out[layer] = best_i
    return out


def follower_counts(followers: torch.Tensor, V: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """followers (n, m): per query the next tokens of m = blocks x k neighbours, block by block, each
    block's nearest first -> (their distribution (n, V), the counts plus a tie-break under one count:
    its argmax is the most frequent follower and, among equals, the one with the nearest neighbour
    (by rank, then by block))."""
    n, m = followers.shape
    counts = torch.zeros(n, V).scatter_add_(1, followers, torch.ones(n, m))
    col = torch.arange(m)
    order = (col % k) * (m // k) + col // k  # rank first, then block: 0 = block 0's nearest
    weight = ((m - order) / (m + 1)).float().expand(n, m).contiguous()  # in (0, 1)
    bonus = torch.zeros(n, V).scatter_reduce_(1, followers, weight, reduce="amax")
    return counts / m, counts + bonus


def longest_suffix(pool_ids: np.ndarray, by_token: np.ndarray, starts: np.ndarray,
                   context: np.ndarray) -> tuple[np.ndarray, int]:
    """The followers of every pool position where the longest suffix of `context` that occurs ends,
    and that suffix's length (0: not even its last token occurs; then all followers, the unigram)."""
    last = int(context[-1])
    cand = by_token[starts[last]:starts[last + 1]]  # positions e holding the last token (each has a follower)
    if cand.size == 0:
        return pool_ids[1:], 0
    m = 1
    while m < len(context):
        ok = cand[cand >= m]
        ok = ok[pool_ids[ok - m] == context[-1 - m]]
        if ok.size == 0:
            break
        cand, m = ok, m + 1
    return pool_ids[cand + 1], m


def metrics(q: torch.Tensor, argmax_of: torch.Tensor, logp: torch.Tensor, actual: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per query: top-1 agreement with the model, KL(q ‖ model) in nats, Hellinger distance, and
    whether q's top-1 is the token that came next. q (n, V) sums to 1; logp (n, V) the model's."""
    top = argmax_of.argmax(-1)
    kl = torch.where(q > 0, q * (torch.log(q.clamp_min(1e-30)) - logp), torch.zeros(())).sum(-1)
    bc = (q.sqrt() * (0.5 * logp).exp()).sum(-1)  # Bhattacharyya coefficient
    return {"top1_agree": (top == logp.argmax(-1)).float(), "kl": kl, "hellinger": (1 - bc).clamp_min(0).sqrt(),
            "top1_actual": (top == actual).float()}


def evaluate(model: GPT, tokenizer: Tokenizer, info: CheckpointInfo, texts: EvalTexts, n: int, k: int = 20,
             max_positions: int | None = None, seed: int = 0, progress: Progress | None = None,
             max_held_out: int = 1_000_000) -> dict[str, Any]:
    """The experiment: per block, all blocks together, and the two baselines, each predictor's mean
    metrics over n held-out positions (drawn from the first `max_held_out` held-out tokens).
    The pool: the first `max_positions` training positions (default: as many as POOL_BYTES holds)."""
    src, t0 = texts.train, time.perf_counter()
    if max_positions is None:
        max_positions = max(1, POOL_BYTES // (2 * model.config.n_layer * model.config.n_embd))
    pool_ids = np.asarray(encode_prefix(tokenizer, src, max_positions + 1)[:max_positions + 1], dtype=np.int64)
    if pool_ids.size < 2:
        raise InputError(f"the training part of {src.path!r} is {pool_ids.size} tokens; it needs at least 2")
    held = np.asarray(encode_prefix(tokenizer, texts.held_out, max_held_out)[:max_held_out], dtype=np.int64)
    Q = queries(model, held, n, seed)  # first: too few positions is an error before the pool's work
    vectors, cache = load_or_build_pool(model, info, torch.from_numpy(pool_ids), texts.digest, progress)
    t1 = time.perf_counter()
    idx = nearest(vectors, Q["vectors"], k, progress)  # (n_layer, n, k)
    k = idx.size(-1)
    followers = torch.from_numpy(pool_ids[1:])[idx]  # (n_layer, n, k)
    V, L = model.config.vocab_size, model.config.n_layer
    by_token = np.argsort(pool_ids[:-1], kind="stable")  # pool positions grouped by their token
    starts = np.searchsorted(pool_ids[:-1][by_token], np.arange(V + 1))
    unigram = torch.bincount(torch.from_numpy(pool_ids[1:]), minlength=V).float()
    unigram /= unigram.sum()
    names = [f"block {i}" for i in range(L)] + ["all blocks", "unigram", "longest suffix"]
    sums = {name: dict.fromkeys(("top1_agree", "kl", "hellinger", "top1_actual"), 0.0) for name in names}
    matched = []
    for a in range(0, n, QUERY_CHUNK):
        rows = slice(a, min(n, a + QUERY_CHUNK))
        logp, actual = Q["logp"][rows], Q["actual"][rows]
        c = logp.size(0)
        preds = [follower_counts(followers[i, rows], V, k) for i in range(L)]
        preds.append(follower_counts(followers[:, rows].permute(1, 0, 2).reshape(c, L * k), V, k))
        preds.append((unigram.expand(c, V), unigram.expand(c, V)))
        suffix = torch.zeros(c, V)
        for r, context in enumerate(Q["contexts"][rows]):
            f, m = longest_suffix(pool_ids, by_token, starts, context)
            suffix[r] = torch.bincount(torch.from_numpy(f), minlength=V).float() / f.size
            matched.append(m)
        preds.append((suffix, suffix))
        for name, (q, argmax_of) in zip(names, preds, strict=True):
            for key, v in metrics(q, argmax_of, logp, actual).items():
                sums[name][key] += float(v.sum())
    kinds = ["block"] * L + ["combined", "baseline", "baseline"]
    table = [{"name": name, "kind": kind, "layer": i if kind == "block" else None,
              **{key: v / n for key, v in sums[name].items()}} for i, (name, kind) in enumerate(zip(names, kinds, strict=True))]
    model_actual = float((Q["logp"].argmax(-1) == Q["actual"]).float().mean())
    lo, hi = context_range(model.config.block_size)
    return {"source": {"path": src.path, "scope": src.scope}, "positions": n, "seed": seed, "k": k,
            "pool_positions": int(pool_ids.size - 1), "held_out_tokens": int(held.size), "context": [lo, hi],
            "rows": table, "model": {"top1_actual": model_actual},
            "suffix_mean_length": float(np.mean(matched)), "cache": cache,
            "seconds": {"pool": t1 - t0, "search": time.perf_counter() - t1}}
