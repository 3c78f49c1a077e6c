"""Optimisation: AdamW with weight-decay groups, Muon for the hidden matrices, the learning-rate
schedule, and optimizer state restored by parameter name.

Muon (Keller Jordan, 2024) updates each hidden weight matrix with the orthogonalised momentum of its
gradient: the same direction as SGD-momentum but with every singular value set to one, so rare
directions learn as fast as common ones. It reaches a given loss in fewer steps than AdamW on small
transformers; embeddings, the output head, biases and norm gains stay on AdamW.

Owns how parameters are updated and how fast; not when to step (train.py) nor where state is
stored (checkpoint.py, which keys AdamW moments by parameter name so order never matters).
"""

from __future__ import annotations

import math

import torch
from torch.optim.adamw import adamw

from gptkit.config import TrainConfig
from gptkit.model import GPT


def make_optimizer(model: GPT, tc: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """`tc.optimizer`: AdamW, or Muon for the blocks' matrices with AdamW for the rest.

    Fused kernels (CUDA, and CPU since torch 2.4) update every parameter in one call: on a small
    model the per-parameter loop costs more than the forward pass."""
    fused = device.type in ("cuda", "cpu")
    if tc.optimizer == "muon":
        return Muon(muon_groups(model, tc), lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), fused=fused)
    return torch.optim.AdamW(adamw_groups(list(model.parameters()), tc.weight_decay), lr=tc.learning_rate,
                             betas=(tc.beta1, tc.beta2), **({"fused": True} if fused else {}))


def adamw_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW's two groups: matrices and embeddings decay, biases and norm gains (1-D) do not."""
    params = [p for p in params if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def muon_groups(model: GPT, tc: TrainConfig) -> list[dict]:
    """Muon takes every 2-D weight inside the blocks (the fused Q/K/V matrix as its three parts);
    AdamW keeps the rest: the embeddings and the (tied) output head, decayed, and the biases and
    norm gains, not decayed (`adamw_groups`)."""
    qkv, hidden, rest = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("transformer.h.") and p.dim() == 2:
            (qkv if ".attn.c_attn." in name else hidden).append(p)
        else:
            rest.append(p)
    scale = tc.muon_lr / tc.learning_rate  # set_lr scales the one schedule per group
    return [{"params": qkv, "muon": True, "split": 3, "lr_scale": scale, "weight_decay": 0.0},
            {"params": hidden, "muon": True, "split": 1, "lr_scale": scale, "weight_decay": 0.0},
            *[{**g, "muon": False} for g in adamw_groups(rest, tc.weight_decay) if g["params"]]]


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to g (U·Vᵀ of its SVD), approximately, by a quintic
    Newton–Schulz iteration tuned to push every singular value towards 1 in a few steps.
    Batched over leading dimensions; works on the short side (X·Xᵀ is the small Gram matrix)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values now <= 1
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for groups marked ``muon`` (Nesterov momentum, orthogonalised, scaled so the update's
    RMS does not depend on the matrix's aspect ratio), AdamW for the others, in one optimizer so
    its state is saved and restored by parameter name like AdamW's (same ``exp_avg``/``exp_avg_sq``/
    ``step`` keys, ``step`` on the parameter's device when ``fused`` and on the CPU otherwise, as
    torch's AdamW keeps it; ``momentum_buffer`` for Muon's matrices)."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.99),
                 momentum: float = 0.95, ns_steps: int = 5, eps: float = 1e-8, fused: bool = False) -> None:
        super().__init__(groups, dict(lr=lr, betas=betas, momentum=momentum, ns_steps=ns_steps, eps=eps,
                                      weight_decay=0.0, muon=False, split=1, lr_scale=1.0, fused=fused))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ARG002 (torch's signature)
        for group in self.param_groups:
            (self._muon if group["muon"] else self._adamw)(group)

    def _muon(self, group: dict) -> None:
        lr, mom, split = group["lr"], group["momentum"], group["split"]
        for p in group["params"]:
            if p.grad is None:
                continue
            st = self.state[p]
            if "momentum_buffer" not in st:  # setdefault would allocate and fill a new buffer at every step
                st["momentum_buffer"] = torch.zeros_like(p)
            buf = st["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mom)
            g = p.grad.lerp(buf, mom)  # Nesterov: look one momentum step ahead
            rows, cols = p.size(0) // split, p.size(1)
            update = orthogonalize(g.view(split, rows, cols), group["ns_steps"]).view_as(p)
            if group["weight_decay"]:
                p.mul_(1 - lr * group["weight_decay"])
            p.add_(update, alpha=-lr * max(1.0, rows / cols) ** 0.5)

    def _adamw(self, group: dict) -> None:
        """torch's functional AdamW (decoupled weight decay) over the group's parameters that have
        gradients, with their moments created on first use."""
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            st = self.state[p]
            if "step" not in st:
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device if group["fused"] else "cpu")
                st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adamw(params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
              [], [s["step"] for s in states], fused=group["fused"], amsgrad=False, beta1=beta1, beta2=beta2,
              lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)


def lr_at(tc: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_iters`, then cosine decay to `min_lr` as progress goes 0 -> 1."""
    if step < tc.warmup_iters:
        return tc.learning_rate * (step + 1) / (tc.warmup_iters + 1)
    progress = min(1.0, max(0.0, progress))
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.learning_rate - tc.min_lr)


def schedule_progress(tc: TrainConfig, step: int, elapsed: float) -> float:
    """How far through the decay we are: by steps, or by the time budget if that runs out sooner."""
    span = max(1, tc.max_iters - tc.warmup_iters)
    p = (step - tc.warmup_iters) / span
    if tc.max_time:
        p = max(p, elapsed / tc.max_time)
    return p


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group follows the one schedule; a group's ``lr_scale`` (Muon's) multiplies it."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def restore_optimizer(optimizer: torch.optim.Optimizer, model: GPT, saved: dict[str, torch.Tensor]) -> int:
    """Put AdamW moments saved as `<param name>.<key>` back on the matching parameters.
    Returns how many parameters got state (0 for a checkpoint saved without optimizer state)."""
    by_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in saved.items():
        name, field = key.rsplit(".", 1)
        by_param.setdefault(name, {})[field] = value
    restored = 0
    for name, p in model.named_parameters():
        entries = by_param.get(name)
        if entries:
            if "step" in entries and not getattr(optimizer, "defaults", {}).get("fused"):
                entries["step"] = entries["step"].cpu()  # non-fused AdamW keeps its step counter on the CPU
            for key, t in entries.items():  # the embedding's moments are saved without its zero padding rows
                if t.dim() and t.shape[0] < p.shape[0]:
                    entries[key] = torch.cat([t, t.new_zeros(p.shape[0] - t.shape[0], *p.shape[1:])])
            optimizer.state[p] = entries
            restored += 1
    return restored
