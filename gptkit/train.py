"""The training loop, built from small helpers: data, model, optimizer, schedule, eval, checkpoints.

Owns `train(...)`: gradient accumulation (the same gradient as one big batch; under DDP the
all-reduce happens once, on the last micro-step), clipping, mixed precision (bf16 autocast, or fp16
with a GradScaler), periodic evaluation, atomic checkpoints (`last` at every eval, `best` when
validation improves), exact resume (optimizer moments, RNG, data position), DDP under torchrun,
and a clean stop on Ctrl-C/SIGTERM or when `max_time` runs out. It reports through a callback
(`on_event`) and `metrics.jsonl`; it never prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptkit import __version__, checkpoint, runtime
from gptkit.config import ModelConfig, TrainConfig, field_names, to_dict, validate
from gptkit.data.build import prepare_dataset
from gptkit.data.dataset import TokenDataset, check_lengths, get_batch, load_dataset
from gptkit.data.sources import load_source
from gptkit.errors import CheckpointError, TrainingError, UsageError
from gptkit.evaluate import bits_per_char, estimate_loss, sample_text
from gptkit.fsio import removed_on_error
from gptkit.model import GPT
from gptkit.optim import lr_at, make_optimizer, restore_optimizer, schedule_progress, set_lr
from gptkit.tokenizers.core import Tokenizer
from gptkit.tokenizers.stored import tokenizer_from_dict

Event = dict[str, Any]
# flags that must match a resumed checkpoint (--vocab-size is the bpe target: _check_tokenizer checks it)
STEP_TIME_DECAY = 0.9  # the step-time average follows the last ~10 steps: a budget's reserve tracks a slowing machine
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "pos_encoding", "norm", "mlp")


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
    more: str | None = None  # after a run that used up its budget: the flag that doubles it


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


@contextmanager
def stop_on_signals(flag: dict[str, Any]):
    """Ctrl-C / SIGTERM set a flag: the loop finishes its step, saves, and returns."""
    def handler(signum, frame):  # noqa: ARG001
        flag["signal"] = signum

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in old:
            signal.signal(s, handler)
    except ValueError:  # not the main thread: no signal handling
        old = {}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def flops_per_token(model: GPT, mc: ModelConfig) -> float:
    """Training FLOPs per token: 6N for the matmuls plus the attention scores (PaLM, appendix B)."""
    return 6 * model.num_params(non_embedding=True) + 12 * mc.n_layer * mc.n_embd * mc.block_size


def grad_accum_steps(tc: TrainConfig, mc: ModelConfig, world: int) -> int:
    """--tokens-per-step wins over --grad-accum: micro-batches needed to reach that many tokens."""
    if tc.tokens_per_step is None:
        return tc.grad_accum
    return max(1, math.ceil(tc.tokens_per_step / (tc.batch_size * mc.block_size * world)))


def _prior_checkpoint(run_dir: Path, resume: bool, init_from: str | None, store: Path):
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


def _check_tokenizer(tc: TrainConfig, tokenizer: Tokenizer, explicit: set[str], what: str) -> None:
    """The checkpoint brings its tokenizer: a --tokenizer or bpe --vocab-size that differs is a mistake."""
    if "tokenizer" in explicit and tc.tokenizer != tokenizer.name:
        raise UsageError(f"--tokenizer {tc.tokenizer} conflicts with the {what} checkpoint's {tokenizer.name} "
                         "tokenizer; drop the flag")
    if "vocab_size" in explicit and (tokenizer.kind != "bpe" or tc.vocab_size != tokenizer.vocab_size):
        raise UsageError(f"--vocab-size {tc.vocab_size} conflicts with the {what} checkpoint's {tokenizer.name} "
                         f"tokenizer of {tokenizer.vocab_size} ids; drop the flag")


# how this machine runs, not what the run is: a run resumed elsewhere takes this command's values
MACHINE_FIELDS = ("device", "dtype", "compile")


def _resumed_settings(mc: ModelConfig, tc: TrainConfig, saved: dict[str, Any], explicit: set[str]) -> TrainConfig:
    """A resumed run keeps the settings it was started with (batch, schedule, budgets, seed, ...);
    only a flag given on this command line changes one. Without this, `--resume` alone ran the
    defaults: another learning-rate schedule, batch size and budget than the run it continued."""
    names = set(field_names(TrainConfig))
    kept = {k: v for k, v in saved.items() if k in names and k not in explicit and k not in MACHINE_FIELDS}
    tc = dataclasses.replace(tc, **kept)
    validate(mc, tc)
    return tc


def _check_budget_left(tc: TrainConfig, state: dict[str, Any], name: str) -> None:
    """A resumed run whose budget is spent would stop at once: say so instead of "done"."""
    step, elapsed = state.get("step", 0), state.get("elapsed", 0.0)
    if step >= tc.max_iters:
        raise UsageError(f"--resume: run {name!r} has run {step:,} of its --max-iters {tc.max_iters:,} (the "
                         "budget counts the whole run); raise --max-iters to train on")
    if tc.max_time is not None and elapsed >= tc.max_time:
        raise UsageError(f"--resume: run {name!r} has trained {elapsed:.0f}s of its --max-time {tc.max_time:.0f}s "
                         "(the budget counts the whole run); raise --max-time to train on")


def train(mc: ModelConfig, tc: TrainConfig, data: str | None, run_dir: Path, store: Path,
          on_event: Callable[[Event], None] = lambda e: None, resume: bool = False,
          init_from: str | None = None, explicit: set[str] | None = None) -> TrainResult:
    """Train a model and return where it was saved. `explicit` names the config fields the user set:
    a resumed or fine-tuned run rejects those that conflict with the checkpoint's shape, and a
    resumed run takes every other training setting from its checkpoint."""
    dist_info, device = runtime.setup_distributed(tc.device)
    dtype = runtime.pick_dtype(tc.dtype, device)
    runtime.enable_fast_math(device)
    try:
        with removed_on_error(run_dir):  # a run that fails before its first step leaves no folder behind
            prior = _prior_checkpoint(run_dir, resume, init_from, store)
            tokenizer = tokenizer_from_dict(prior.meta["tokenizer"]) if prior else None
            if prior is not None:
                what = "resumed" if resume else "--init-from"
                mc = _check_shape(mc, prior.model_config, explicit or set(), what)
                _check_tokenizer(tc, tokenizer, explicit or set(), what)
                if resume:
                    tc = _resumed_settings(mc, tc, prior.meta.get("train_config") or {}, explicit or set())
                    _check_budget_left(tc, prior.state, run_dir.name)
            if dist_info.is_main:
                check_writable(run_dir)
            runtime.check_training_memory(mc, tc.batch_size, device, dtype)  # before tokenizing: vocab not counted yet
            barrier = (lambda: torch.distributed.barrier()) if dist_info.enabled else (lambda: None)
            ds = load_data(data, tc, run_dir, store, tokenizer, dist_info.is_main, barrier)
            if mc.vocab_size == 0:
                mc = dataclasses.replace(mc, vocab_size=ds.tokenizer.vocab_size)
            check_lengths(ds, mc.block_size)
            runtime.check_training_memory(mc, tc.batch_size, device, dtype)
            loop = Loop(mc, tc, ds, run_dir, device, dtype, dist_info, on_event)
            loop.setup(prior, resume)
        return loop.run()
    finally:
        runtime.teardown_distributed()


def check_writable(run_dir: Path) -> None:
    """Fail before any work if checkpoints cannot be written here (a read-only or misplaced store)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):  # unnamed where the OS allows: nothing is left behind
            pass
    except OSError as e:
        raise CheckpointError(f"cannot write to checkpoint folder {str(run_dir)!r} ({e.strerror or e}); "
                              "choose a writable --store DIR") from None


class Loop:
    """One training run's moving parts; `run()` is the loop, the methods are its steps."""

    def __init__(self, mc: ModelConfig, tc: TrainConfig, ds: TokenDataset, run_dir: Path, device: torch.device,
                 dtype: torch.dtype, dist_info: runtime.DistInfo, on_event: Callable[[Event], None]) -> None:
        self.mc, self.tc, self.ds, self.run_dir = mc, tc, ds, run_dir
        self.device, self.dtype, self.dist = device, dtype, dist_info
        self.emit = on_event if dist_info.is_main else (lambda e: None)
        self.metrics = run_dir / "metrics.jsonl" if dist_info.is_main else None
        self.shard = (dist_info.rank, dist_info.world_size)
        self.accum = grad_accum_steps(tc, mc, dist_info.world_size)
        self.tokens_per_step = tc.batch_size * self.accum * mc.block_size * dist_info.world_size
        self.state = LoopState()
        self.stop: dict[str, Any] = {}
        self.resumed = False
        self.step_time: float | None = None  # moving average of a training step's seconds
        self.warm = False  # the first step in a process (allocation, lazy init) is not timed

    @property
    def eval_estimate(self) -> float:
        """Seconds an evaluation should take, before one has been timed: 2 splits x eval_iters
        forward passes of one micro-batch, a forward being about a third of forward + backward.
        At most a quarter of a --max-time budget: a guess from a few steps timed on a busy machine
        must not end a timed run before it has trained."""
        if self.step_time is None:
            return 0.0
        guess = 2 * self.tc.eval_iters * self.step_time / (3 * self.accum)
        return guess if self.tc.max_time is None else min(guess, self.tc.max_time / 4)

    def setup(self, prior: checkpoint.CheckpointInfo | None, resume: bool) -> None:
        runtime.seed_everything(self.tc.seed)
        self.model = GPT(self.mc).to(self.device)
        self.optimizer = make_optimizer(self.model, self.tc, self.device)
        self.scaler = runtime.grad_scaler(self.device, self.dtype)
        if prior is not None:
            self.model.load_state_dict(checkpoint.load_tensors(prior, "model.", self.device), strict=False)
        self.rng = np.random.default_rng(self.tc.seed)  # the same global batch stream on every rank
        if resume:
            restore_optimizer(self.optimizer, self.model, checkpoint.load_tensors(prior, "optim.", self.device))
            self._restore_state(prior.state)
            self.resumed = True
        self.train_model: torch.nn.Module = self.model
        if runtime.want_compile(self.tc.compile, self.device):
            self.train_model = runtime.compile_model(self.model)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DDP(self.train_model, device_ids=ids)
        peak = runtime.peak_flops(self.device, self.dtype) if self.dist.is_main else None
        self.peak = peak * self.dist.world_size if peak else None
        self.flops_per_token = flops_per_token(self.model, self.mc)

    def _restore_state(self, st: dict[str, Any]) -> None:
        self.state = LoopState(step=st.get("step", 0), tokens_seen=st.get("tokens_seen", 0),
                               elapsed=st.get("elapsed", 0.0), best_val_loss=st.get("best_val_loss"),
                               last_val_loss=st.get("val_loss"), last_train_loss=st.get("train_loss"),
                               rng=st.get("rng", {}))
        if "numpy" in self.state.rng:
            self.rng.bit_generator.state = self.state.rng["numpy"]
        if "torch" in self.state.rng:
            torch.set_rng_state(torch.tensor(self.state.rng["torch"], dtype=torch.uint8))

    def log(self, event: Event) -> None:
        self.emit(event)
        if self.metrics is not None:
            try:
                with open(self.metrics, "a", encoding="utf-8") as f:
                    f.write(json.dumps({**event, "time": time.time()}) + "\n")
            except OSError as e:  # a full disk: stop cleanly; the last checkpoint is untouched
                raise CheckpointError(f"cannot write {str(self.metrics)!r} ({e.strerror or e}); the last "
                                      "checkpoint is unchanged — free space or choose --store DIR") from None

    def run(self) -> TrainResult:
        tc, st = self.tc, self.state
        self.log({"event": "start", "step": st.step, "params": self.model.num_params(), "device": str(self.device),
                  "dtype": str(self.dtype).replace("torch.", ""), "world_size": self.dist.world_size,
                  "run_dir": str(self.run_dir), "tokens_per_step": self.tokens_per_step, "grad_accum": self.accum,
                  "max_iters": tc.max_iters, "max_time": tc.max_time, "train_tokens": len(self.ds.train),
                  "val_tokens": len(self.ds.val), "vocab_size": self.mc.vocab_size,
                  "tokenizer": self.ds.tokenizer.name, "resumed": self.resumed})
        t0 = time.time() - st.elapsed
        evaluated_at = st.step if self.resumed else -1  # a resumed checkpoint was evaluated when saved
        eval_cost: float | None = None  # measured at the first evaluation, estimated from the steps before it
        last_ckpt = None
        with stop_on_signals(self.stop):
            while True:
                st.elapsed = time.time() - t0
                reserve = self.eval_estimate if eval_cost is None else eval_cost  # time the final eval needs
                out_of_time = tc.max_time is not None and st.elapsed + reserve >= tc.max_time
                done = runtime.agree_to_stop(st.step >= tc.max_iters or out_of_time or bool(self.stop),
                                             self.dist, self.device)
                if (done or st.step % tc.eval_interval == 0) and st.step > 0 and st.step != evaluated_at:
                    te = time.time()
                    last_ckpt = self.evaluate_and_save(time.time() - t0) or last_ckpt
                    eval_cost = time.time() - te  # reserve this much at the end of a timed run
                if done:
                    break
                self.train_step(time.time() - t0)
        interrupted = bool(self.stop)
        self.log({"event": "done", "step": st.step, "val_loss": st.last_val_loss, "best_val_loss": st.best_val_loss,
                  "elapsed": time.time() - t0, "interrupted": interrupted, "run_dir": str(self.run_dir)})
        bpc = None if st.last_val_loss is None else bits_per_char(st.last_val_loss, self.ds.val_tokens_per_char)
        more = None
        if not interrupted:
            # not interrupted: one of the budgets ended it
            more = f"--max-iters {2 * tc.max_iters}" if st.step >= tc.max_iters \
                else f"--max-time {math.ceil(2 * tc.max_time)}s"
        return TrainResult(self.run_dir, st.step, st.last_val_loss, st.best_val_loss, bpc, time.time() - t0,
                           interrupted, last_ckpt, more)

    def train_step(self, elapsed: float) -> None:
        tc, st = self.tc, self.state
        lr = lr_at(tc, st.step, schedule_progress(tc, st.step, elapsed))
        set_lr(self.optimizer, lr)
        ts = time.time()
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum):
            x, y = get_batch(self.ds.train, tc.batch_size, self.mc.block_size, self.rng, self.shard)
            last = micro == self.accum - 1
            # DDP: skip the gradient all-reduce on all but the last micro-step
            sync = nullcontext() if last or not self.dist.enabled else self.train_model.no_sync()
            with sync:
                with runtime.autocast(self.device, self.dtype), runtime.sdpa_context(self.device):
                    _, loss = self.train_model(torch.from_numpy(x).to(self.device),
                                               torch.from_numpy(y).to(self.device))
                    loss = loss / self.accum  # the mean over micro-batches, as one big batch would give
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        loss_value = loss_sum.item()
        if not math.isfinite(loss_value):
            raise TrainingError(f"loss became {loss_value} at step {st.step}; stopped without saving "
                                "(the last good checkpoint is kept); try a lower --learning-rate")
        grad_norm = 0.0
        if tc.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        st.tokens_seen += self.tokens_per_step
        st.last_train_loss = runtime.all_reduce_mean(loss_value, self.dist, self.device)
        dt = time.time() - ts
        if self.warm:
            self.step_time = dt if self.step_time is None else STEP_TIME_DECAY * self.step_time + (1 - STEP_TIME_DECAY) * dt
        self.warm = True
        tps = self.tokens_per_step / max(dt, 1e-9)
        self.emit({"event": "step", "step": st.step, "loss": st.last_train_loss, "lr": lr, "grad_norm": grad_norm,
                   "tokens_per_sec": tps, "step_time": dt, "mfu": (tps * self.flops_per_token / self.peak)
                   if self.peak else None, "elapsed": elapsed + dt,
                   "max_iters": tc.max_iters, "max_time": tc.max_time})

    def evaluate_and_save(self, elapsed: float) -> Path | None:
        st = self.state
        losses = estimate_loss(self.train_model, self.ds, self.mc, self.tc, self.device, self.dtype, self.dist)
        st.last_val_loss = losses["val"]
        improved = st.best_val_loss is None or losses["val"] < st.best_val_loss
        if improved:
            st.best_val_loss = losses["val"]
        self.log({"event": "eval", "step": st.step, "train_loss": losses["train"], "val_loss": losses["val"],
                  "val_bpc": bits_per_char(losses["val"], self.ds.val_tokens_per_char), "elapsed": elapsed,
                  "best": improved, "tokens_seen": st.tokens_seen})
        if self.tc.sample_every and st.step % self.tc.sample_every == 0 and self.dist.is_main:
            self.emit({"event": "sample", "step": st.step,
                       "text": sample_text(self.model, self.ds, seed=self.tc.seed + st.step)})
            self.model.train()
        if not self.dist.is_main:
            return None
        st.elapsed = elapsed
        path = self.save(checkpoint.LAST, with_optim=True)
        if improved:
            self.save(checkpoint.BEST, with_optim=False)
        self.emit({"event": "checkpoint", "step": st.step, "path": str(path)})
        return path

    def save(self, name: str, with_optim: bool) -> Path:
        st = self.state
        meta = {"run": self.run_dir.name, "model_config": to_dict(self.mc), "train_config": to_dict(self.tc),
                "tokenizer": self.ds.tokenizer.to_dict(), "state": {
                    "step": st.step, "tokens_seen": st.tokens_seen, "elapsed": st.elapsed,
                    "best_val_loss": st.best_val_loss, "val_loss": st.last_val_loss, "train_loss": st.last_train_loss,
                    "val_bpc": None if st.last_val_loss is None else
                    bits_per_char(st.last_val_loss, self.ds.val_tokens_per_char),
                    "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state().tolist()},
                    "data": {"dataset": str(self.ds.path), **self.ds.meta.get("source", {})},
                    "versions": {"gptkit": __version__, "torch": torch.__version__}}}
        return checkpoint.save(self.run_dir / name, self.model, meta, self.optimizer if with_optim else None)
