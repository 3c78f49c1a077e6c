"""The training loop, built from small helpers: data, model, optimizer, schedule, eval, checkpoints.

Owns `train(...)`: AdamW with weight-decay groups, linear warmup + cosine decay (over iterations
or over the `max_time` budget, whichever runs out first), gradient accumulation, clipping, periodic
evaluation, atomic checkpoints (`last` every eval, `best` when validation improves), exact resume
(optimizer moments, RNG and data position), DDP under torchrun, and a clean stop on Ctrl-C/SIGTERM.
It reports through a callback (`on_event`) and `metrics.jsonl`; it never prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptkit import __version__, checkpoint, runtime
from gptkit.config import ModelConfig, TrainConfig, from_dict, to_dict
from gptkit.corpus import load_source
from gptkit.data import TokenDataset, check_lengths, get_batch, load_dataset, prepare_dataset
from gptkit.errors import TrainingError, UsageError
from gptkit.model import GPT
from gptkit.tokenizer import Tokenizer, tokenizer_from_dict

Event = dict[str, Any]
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "pos_encoding", "norm", "mlp")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_loss: float | None
    best_val_loss: float | None
    val_bpc: float | None
    elapsed: float
    interrupted: bool = False
    checkpoint: Path | None = None


@dataclass
class LoopState:
    """Everything that must survive a resume besides weights and optimizer moments."""

    step: int = 0
    tokens_seen: int = 0
    elapsed: float = 0.0
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    last_train_loss: float | None = None
    rng: dict[str, Any] = field(default_factory=dict)


def lr_at(tc: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_iters`, then cosine decay to `min_lr` as progress goes 0 -> 1."""
    if step < tc.warmup_iters:
        return tc.learning_rate * (step + 1) / (tc.warmup_iters + 1)
    progress = min(1.0, max(0.0, progress))
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.learning_rate - tc.min_lr)


def schedule_progress(tc: TrainConfig, step: int, elapsed: float) -> float:
    """How far through the run we are: by steps, or by the time budget if that runs out sooner."""
    span = max(1, tc.max_iters - tc.warmup_iters)
    p = (step - tc.warmup_iters) / span
    if tc.max_time:
        p = max(p, elapsed / tc.max_time)
    return p


def make_optimizer(model: GPT, tc: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    extra = {"fused": True} if device.type == "cuda" else {}  # one fused kernel per step on GPU
    return torch.optim.AdamW(model.optimizer_groups(tc.weight_decay), lr=tc.learning_rate,
                             betas=(tc.beta1, tc.beta2), **extra)


def load_data(data: str | None, tc: TrainConfig, run_dir: Path, store: Path,
              tokenizer: Tokenizer | None, is_main: bool, barrier: Callable[[], None]) -> TokenDataset:
    """A dataset folder is used as is; a text (file, URL, built-in) is tokenized once under the run."""
    if data is not None and Path(data).is_dir() and (Path(data) / "meta.json").is_file():
        run_dir.mkdir(parents=True, exist_ok=True)  # no cache is written under it, so create it here
        ds = load_dataset(data)
        if tokenizer is not None and ds.meta["tokenizer"] != tokenizer.to_dict():
            raise UsageError(f"dataset {data!r} was built with another tokenizer than the checkpoint's; "
                             "rebuild it with `gptkit tokenize --checkpoint ...`")
        return ds
    if is_main:
        source = load_source(data, store / ".cache")
        ds = prepare_dataset(source, tc.tokenizer, tc.vocab_size, tc.val_fraction, run_dir / "data", tokenizer)
    barrier()  # other ranks wait until rank 0 has written the dataset, then map it
    return ds if is_main else load_dataset(run_dir / "data")


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, ds: TokenDataset, mc: ModelConfig, tc: TrainConfig,
                  device: torch.device, dtype: torch.dtype, shard: tuple[int, int]) -> dict[str, float]:
    """Mean loss over `eval_iters` batches of each split. The same batches every time (fixed seed),
    so successive evaluations differ only because the model changed."""
    model.eval()
    out = {}
    for split, arr in (("train", ds.train), ("val", ds.val)):
        rng = np.random.default_rng(tc.seed + 7919)
        losses = []
        for _ in range(tc.eval_iters):
            x, y = get_batch(arr, tc.batch_size, mc.block_size, rng, shard)
            with runtime.autocast(device, dtype):
                _, loss = model(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
            losses.append(loss.item())
        out[split] = _all_reduce_mean(float(np.mean(losses)), shard)
    model.train()
    return out


def _all_reduce_mean(value: float, shard: tuple[int, int]) -> float:
    if shard[1] == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / shard[1]


@contextmanager
def stop_on_signals(flag: dict[str, Any]):
    """Ctrl-C / SIGTERM set a flag: the loop finishes its step, saves, and returns."""
    def handler(signum, frame):  # noqa: ARG001
        flag["signal"] = signum

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in old:
            signal.signal(s, handler)
    except ValueError:  # not the main thread (e.g. tests): no signal handling
        old = {}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _flops_per_token(model: GPT, mc: ModelConfig) -> float:
    """Training FLOPs per token: 6N for the matmuls plus the attention scores (PaLM appendix B)."""
    return 6 * model.num_params(non_embedding=True) + 12 * mc.n_layer * mc.n_embd * mc.block_size


def _resume_source(run_dir: Path, resume: bool, init_from: str | None, store: Path):
    if resume:
        path = run_dir / checkpoint.LAST
        if not path.is_file():
            raise UsageError(f"--resume: run {run_dir.name!r} has no {checkpoint.LAST} to resume from; "
                             "drop --resume to start a new run")
        return checkpoint.read_info(path)
    if init_from:
        return checkpoint.read_info(checkpoint.resolve(init_from, store))
    return None


def _check_shape(mc: ModelConfig, saved: ModelConfig, explicit: set[str], what: str) -> ModelConfig:
    for name in SHAPE_FIELDS:
        if name in explicit and getattr(mc, name) != getattr(saved, name):
            raise UsageError(f"--{name.replace('_', '-')} {getattr(mc, name)} conflicts with the {what} checkpoint's "
                             f"{getattr(saved, name)}; drop the flag")
    return dataclasses.replace(saved, dropout=mc.dropout)


def train(mc: ModelConfig, tc: TrainConfig, data: str | None, run_dir: Path, store: Path,
          on_event: Callable[[Event], None] = lambda e: None, resume: bool = False,
          init_from: str | None = None, explicit: set[str] | None = None) -> TrainResult:
    """Train a model and return where it was saved. `explicit` names the config fields the user set
    (so a resumed run can reject flags that conflict with the checkpoint's shape)."""
    dist_info, device = runtime.setup_distributed(tc.device)
    shard = (dist_info.rank, dist_info.world_size)
    dtype = runtime.pick_dtype(tc.dtype, device)
    runtime.enable_fast_math(device)
    emit = on_event if dist_info.is_main else (lambda e: None)
    try:
        prior = _resume_source(run_dir, resume, init_from, store)
        tokenizer = tokenizer_from_dict(prior.meta["tokenizer"]) if prior else None
        if prior is not None:
            mc = _check_shape(mc, prior.model_config, explicit or set(), "resumed" if resume else "--init-from")
        barrier = (lambda: torch.distributed.barrier()) if dist_info.enabled else (lambda: None)
        ds = load_data(data, tc, run_dir, store, tokenizer, dist_info.is_main, barrier)
        if mc.vocab_size == 0:
            mc = dataclasses.replace(mc, vocab_size=ds.tokenizer.vocab_size)
        if mc.vocab_size < ds.tokenizer.vocab_size:
            raise UsageError(f"--vocab-size {mc.vocab_size} is smaller than the tokenizer's {ds.tokenizer.vocab_size}")
        check_lengths(ds, mc.block_size)
        return _run(mc, tc, ds, run_dir, device, dtype, dist_info, shard, emit, prior, resume)
    finally:
        runtime.teardown_distributed()


def _run(mc, tc, ds, run_dir, device, dtype, dist_info, shard, emit, prior, resume) -> TrainResult:
    runtime.seed_everything(tc.seed)
    model = GPT(mc).to(device)
    optimizer = make_optimizer(model, tc, device)
    state = LoopState()
    if prior is not None:
        model.load_state_dict(checkpoint.load_tensors(prior, "model.", device), strict=False)
    if resume:
        state = _restore(prior, model, optimizer, device)
    rng = np.random.default_rng(tc.seed)  # the same global batch stream on every rank
    if state.rng.get("numpy"):
        rng.bit_generator.state = state.rng["numpy"]
    train_model: torch.nn.Module = model
    if runtime.want_compile(tc.compile, device):
        train_model = runtime.compile_model(model)
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    tokens_per_step = tc.batch_size * tc.grad_accum * mc.block_size * dist_info.world_size
    flops_per_token = _flops_per_token(model, mc)
    base = {"run": run_dir.name, "model_config": to_dict(mc), "train_config": to_dict(tc),
            "tokenizer": ds.tokenizer.to_dict()}
    metrics = (run_dir / "metrics.jsonl") if dist_info.is_main else None

    def log(event: Event) -> None:
        emit(event)
        if metrics is not None:
            with open(metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps({**event, "time": time.time()}) + "\n")

    log({"event": "start", "step": state.step, "params": model.num_params(), "device": str(device),
          "dtype": str(dtype).replace("torch.", ""), "world_size": dist_info.world_size, "run_dir": str(run_dir),
          "tokens_per_step": tokens_per_step, "max_iters": tc.max_iters, "max_time": tc.max_time,
          "train_tokens": len(ds.train), "val_tokens": len(ds.val), "vocab_size": mc.vocab_size,
          "tokenizer": ds.tokenizer.name, "resumed": resume})
    def save(path_name: str, with_optim: bool) -> Path:
        meta = dict(base)
        meta["state"] = _state_meta(state, rng, ds, tc)
        tensors_from = optimizer if with_optim else None
        out = checkpoint.save(run_dir / path_name, model, meta, tensors_from)
        return out

    stop: dict[str, Any] = {}
    t0 = time.time() - state.elapsed
    evaluated_at = state.step if resume else -1  # a resumed checkpoint was evaluated when it was saved
    last_ckpt: Path | None = None
    grad_norm = 0.0
    with stop_on_signals(stop):
        while True:
            state.elapsed = time.time() - t0
            last_step = state.step >= tc.max_iters or (tc.max_time is not None and state.elapsed >= tc.max_time)
            if (state.step % tc.eval_interval == 0 and state.step > 0) or last_step or stop:
                if (state.step > 0 or last_step) and state.step != evaluated_at:
                    losses = estimate_loss(train_model, ds, mc, tc, device, dtype, shard)
                    bpc = losses["val"] * ds.val_tokens_per_char / math.log(2)
                    state.last_val_loss = losses["val"]
                    improved = state.best_val_loss is None or losses["val"] < state.best_val_loss
                    if improved:
                        state.best_val_loss = losses["val"]
                    log({"event": "eval", "step": state.step, "train_loss": losses["train"],
                         "val_loss": losses["val"], "val_bpc": bpc, "elapsed": time.time() - t0,
                         "best": improved})
                    if dist_info.is_main:
                        state.elapsed = time.time() - t0
                        last_ckpt = save(checkpoint.LAST, with_optim=True)
                        if improved:
                            save(checkpoint.BEST, with_optim=False)
                        emit({"event": "checkpoint", "step": state.step, "path": str(last_ckpt)})
            if last_step or stop:
                break
            lr = lr_at(tc, state.step, schedule_progress(tc, state.step, time.time() - t0))
            for group in optimizer.param_groups:
                group["lr"] = lr
            ts = time.time()
            loss_sum = 0.0
            for micro in range(tc.grad_accum):
                x, y = get_batch(ds.train, tc.batch_size, mc.block_size, rng, shard)
                sync = (micro == tc.grad_accum - 1) or not dist_info.enabled
                ctx = nullcontext() if sync else train_model.no_sync()  # DDP: all-reduce once per step
                with ctx, runtime.autocast(device, dtype):
                    _, loss = train_model(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
                    loss = loss / tc.grad_accum  # the mean over micro-batches, as one big batch would give
                loss.backward()
                loss_sum += loss.item()
            if not math.isfinite(loss_sum):
                raise TrainingError(f"loss became {loss_sum} at step {state.step}; stopped without saving "
                                    f"(the last good checkpoint is kept); try a lower --learning-rate")
            if tc.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens_seen += tokens_per_step
            state.last_train_loss = _all_reduce_mean(loss_sum, shard) if dist_info.enabled else loss_sum
            dt = time.time() - ts
            tps = tokens_per_step / max(dt, 1e-9)
            emit({"event": "step", "step": state.step, "loss": state.last_train_loss, "lr": lr,
                  "grad_norm": grad_norm, "tokens_per_sec": tps, "step_time": dt,
                  "flops_per_sec": tps * flops_per_token, "elapsed": time.time() - t0,
                  "max_iters": tc.max_iters, "max_time": tc.max_time})
    interrupted = bool(stop)
    log({"event": "done", "step": state.step, "val_loss": state.last_val_loss,
         "best_val_loss": state.best_val_loss, "elapsed": time.time() - t0, "interrupted": interrupted})
    bpc = None if state.last_val_loss is None else state.last_val_loss * ds.val_tokens_per_char / math.log(2)
    return TrainResult(run_dir, state.step, state.last_val_loss, state.best_val_loss, bpc,
                       time.time() - t0, interrupted, last_ckpt)


def _state_meta(state: LoopState, rng: np.random.Generator, ds: TokenDataset, tc: TrainConfig) -> dict[str, Any]:
    return {
        "step": state.step, "tokens_seen": state.tokens_seen, "elapsed": state.elapsed,
        "best_val_loss": state.best_val_loss, "val_loss": state.last_val_loss, "train_loss": state.last_train_loss,
        "val_bpc": None if state.last_val_loss is None else state.last_val_loss * ds.val_tokens_per_char / math.log(2),
        "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state().tolist()},
        "data": {"dataset": str(ds.path), **ds.meta.get("source", {})},
        "versions": {"gptkit": __version__, "torch": torch.__version__},
    }


def _restore(info: checkpoint.CheckpointInfo, model: GPT, optimizer: torch.optim.Optimizer,
             device: torch.device) -> LoopState:
    """Optimizer moments by parameter name, loop counters and RNG states from a `last` checkpoint."""
    saved = checkpoint.load_tensors(info, "optim.", device)
    for name, p in model.named_parameters():
        entries = {k.rsplit(".", 1)[1]: v for k, v in saved.items() if k.rsplit(".", 1)[0] == name}
        if entries:
            if "step" in entries:
                entries["step"] = entries["step"].cpu()  # AdamW keeps its step counter on the CPU
            optimizer.state[p] = entries
    st = info.state
    state = LoopState(step=st.get("step", 0), tokens_seen=st.get("tokens_seen", 0), elapsed=st.get("elapsed", 0.0),
                      best_val_loss=st.get("best_val_loss"), last_val_loss=st.get("val_loss"),
                      last_train_loss=st.get("train_loss"), rng=st.get("rng", {}))
    if "torch" in state.rng:
        torch.set_rng_state(torch.tensor(state.rng["torch"], dtype=torch.uint8))
    return state


__all__ = ["train", "TrainResult", "lr_at", "from_dict"]
