"""Evaluation during training: held-out loss (and bits per character), and short samples.

Owns measuring the model without changing it: the same validation batches every time (a fixed
seed), so two evaluations differ only because the model changed. Not the training step itself.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gptkit import runtime
from gptkit.config import ModelConfig, TrainConfig
from gptkit.data.dataset import TokenDataset, get_batch

EVAL_SEED_OFFSET = 7919  # evaluation batches draw from their own stream, never the training batches


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, ds: TokenDataset, mc: ModelConfig, tc: TrainConfig,
                  device: torch.device, dtype: torch.dtype, dist_info: runtime.DistInfo,
                  batch_size: int | None = None) -> dict[str, float]:
    """Mean loss over `eval_iters` batches of `batch_size` (default the run's) of each split, averaged
    over ranks under DDP."""
    batch_size = batch_size or tc.batch_size or 12
    was_training = model.training
    model.eval()
    shard = (dist_info.rank, dist_info.world_size)
    out = {}
    for split, arr in (("train", ds.train), ("val", ds.val)):
        rng = np.random.default_rng(tc.seed + EVAL_SEED_OFFSET)
        total = torch.zeros((), device=device)
        for _ in range(tc.eval_iters):
            x, y = get_batch(arr, batch_size, mc.block_size, rng, shard)
            with runtime.autocast(device, dtype):
                _, loss = model(runtime.to_device(x, device), runtime.to_device(y, device))
            total += loss.detach().float()  # summed on the device: one sync per split, not per batch
        out[split] = runtime.all_reduce_mean(total.item() / tc.eval_iters, dist_info, device)
    model.train(was_training)
    return out


def bits_per_char(loss_nats_per_token: float, tokens_per_char: float) -> float:
    """nats/token -> bits/char, the unit that compares runs with different tokenizers."""
    return loss_nats_per_token * tokens_per_char / math.log(2)


@torch.no_grad()
def sample_text(model: torch.nn.Module, ds: TokenDataset, max_new_tokens: int = 120, seed: int = 0) -> str:
    """A short continuation of the start of the validation text, to watch the model learn."""
    from gptkit.generate import generate

    tok = ds.tokenizer
    prompt = [int(t) for t in ds.val[: min(8, len(ds.val))]]
    was_training = model.training
    model.eval()  # no dropout: the sample shows the model as `gptkit sample` will run it
    try:
        ids = list(generate(model, prompt, max_new_tokens=max_new_tokens, temperature=0.8, top_k=50, seed=seed))
    finally:
        model.train(was_training)
    return tok.decode(prompt + ids)
