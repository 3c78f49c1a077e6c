"""One training run as it runs: the steps, reading their losses, evaluations and checkpoints.

Owns `Loop` (what `train.train` builds and runs): the step plan (tokens per step split into
micro-batches per process, `batch_plan`), gradient accumulation (the same gradient as one big batch;
under DDP the all-reduce happens once, on the last micro-step), clipping, mixed precision (bf16
autocast, or fp16 with a GradScaler), batches drawn one ahead and copied without a wait, the loss
and gradient norm read from the device once per log interval, periodic evaluation, atomic
checkpoints (`last` at every eval, `best` when validation improves) with everything exact resume
needs (optimizer moments, every rank's RNG, data position), a clean stop on Ctrl-C/SIGTERM or when
`max_time` runs out, and MFU counted as torch's flop counter counts. Setting a run up (config,
data, a prior checkpoint) is `train.py`. It reports through a callback and `metrics.jsonl`; it
never prints.
"""

from __future__ import annotations

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

from gptkit import __version__, checkpoint, hardware, runtime
from gptkit.config import ModelConfig, TrainConfig, to_dict
from gptkit.data.dataset import TokenDataset, get_batch
from gptkit.errors import CheckpointError, TrainingError
from gptkit.evaluate import bits_per_char, estimate_loss, sample_text
from gptkit.model import GPT
from gptkit.optim import lr_at, make_optimizer, restore_optimizer, schedule_progress, set_lr

Event = dict[str, Any]
STEP_TIME_DECAY = 0.9  # the step-time average follows the last ~10 steps: a budget's reserve tracks a slowing machine


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
    eval_seconds: float | None = None  # the last evaluation's cost: a timed run's reserve, kept across a resume
    rng: dict[str, Any] = field(default_factory=dict)


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
    """Training FLOPs per token, counted as torch.utils.flop_counter counts them: 6 per weight of every
    matrix multiply (the blocks' and the tied output layer's, its padding rows included, since they are
    computed) plus the attention scores and weighted values over the whole T×T, 12·L·C·T (PaLM,
    appendix B). Embedding lookups, norms and the loss count nothing."""
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6 * matmul_weights + 12 * mc.n_layer * mc.n_embd * mc.block_size


# the CPU dtype probe's 8 forward/backward passes, repaid by a bf16 only just clearly faster than fp32
PROBE_REPAID = round(8 / (1 - runtime.CLEARLY_FASTER))  # 40
DEFAULT_BATCH = 12  # sequences per micro-batch when a run states neither a batch size nor tokens per step


def batch_plan(tc: TrainConfig, mc: ModelConfig, world: int, fit: Callable[[int], int]) -> tuple[int, int]:
    """(sequences per micro-batch, micro-batches per step) in each of `world` processes.

    With tokens per step (every preset states them), the step's sequences are divided among the
    processes, then cut into micro-batches of --batch-size, or into --grad-accum of them, or else into
    as few equal ones as `fit(sequences)` (the most the device holds well) allows: the largest
    divisor, so the tokens per step are exact, unless that is under half the fit (then the step
    rounds up a little). Without them, each process runs --batch-size x --grad-accum."""
    if tc.tokens_per_step is None:
        return tc.batch_size or DEFAULT_BATCH, tc.grad_accum or 1
    sequences = max(1, math.ceil(tc.tokens_per_step / (mc.block_size * world)))
    if tc.batch_size:
        return tc.batch_size, math.ceil(sequences / tc.batch_size)
    if tc.grad_accum:
        return math.ceil(sequences / tc.grad_accum), tc.grad_accum
    most = max(1, min(sequences, fit(sequences)))
    micro = max(d for d in range(1, most + 1) if sequences % d == 0)
    if 2 * micro < most:  # a prime-ish count: equal micro-batches of about `most`
        accum = math.ceil(sequences / most)
        return math.ceil(sequences / accum), accum
    return micro, sequences // micro


class Loop:
    """One training run's moving parts; `run()` is the loop, the methods are its steps."""

    def __init__(self, mc: ModelConfig, tc: TrainConfig, ds: TokenDataset, run_dir: Path, device: torch.device,
                 dtype: torch.dtype, dist_info: runtime.DistInfo, on_event: Callable[[Event], None],
                 plan: tuple[int, int] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.mc, self.tc, self.ds, self.run_dir = mc, tc, ds, run_dir
        self.clock = clock  # seconds for the budget and step times; a test injects a fake one
        self.device, self.dtype, self.dist, self.dtype_measured = device, dtype, dist_info, False
        self.emit = on_event if dist_info.is_main else (lambda e: None)
        self.metrics = run_dir / "metrics.jsonl" if dist_info.is_main else None
        self.shard = (dist_info.rank, dist_info.world_size)
        self.micro, self.accum = plan or batch_plan(tc, mc, dist_info.world_size, lambda n: n)
        self.tokens_per_step = self.micro * self.accum * mc.block_size * dist_info.world_size
        # each read of the loss waits for the device: on a CPU nothing runs ahead, so every step is read
        self.log_interval = tc.log_interval or (1 if device.type == "cpu" else 10)
        self.state = LoopState()
        self.stop: dict[str, Any] = {}
        self.resumed = False
        self.step_time: float | None = None  # moving average of a training step's seconds
        self.warm = False  # the first step in a process (allocation, lazy init, compilation) is not timed
        self.pending: list[tuple[int, float, torch.Tensor]] = []  # (step, lr, [loss, grad norm] on the device)
        self.read_at = clock()
        self.next_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # prefetched; drawn at `batch_rng`
        self.batch_rng: dict[str, Any] | None = None
        self.compiled = False

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
        runtime.seed_everything(self.tc.seed)  # the same initial weights on every rank
        self.model = GPT(self.mc).to(self.device)
        if prior is not None:
            self.model.load_state_dict(checkpoint.load_tensors(prior, "model.", self.device), strict=False)
        if self.tc.dtype == "auto" and self.device.type == "cpu":
            self.dtype = self._cpu_auto_dtype(prior.state if resume and prior else {})
        self.optimizer = make_optimizer(self.model, self.tc, self.device)
        self.scaler = runtime.grad_scaler(self.device, self.dtype)
        self.train_model: torch.nn.Module = self.model
        if runtime.want_compile(self.tc.compile, self.device):
            self.train_model, why_not = runtime.compile_model(self.model, self.device)
            self.compiled = why_not is None
            if why_not:
                self.warn(why_not)
        self._wrap_ddp()
        why = hardware.sdpa_fallback(self.device, self.dtype, (self.micro, self.mc.n_head, self.mc.block_size,
                                                              self.mc.head_dim))
        if why:
            self.warn(why)
        peak, unknown = hardware.mfu_peak(self.device, self.dtype) if self.dist.is_main else (None, None)
        if unknown:
            self.warn(unknown)
        self.peak = peak * self.dist.world_size if peak else None
        self.flops_per_token = flops_per_token(self.model, self.mc)
        runtime.seed_dropout(self.tc.seed, self.dist.rank)
        self.rng = np.random.default_rng(self.tc.seed)  # the same global batch stream on every rank
        if resume:
            restore_optimizer(self.optimizer, self.model, checkpoint.load_tensors(prior, "optim.", self.device))
            self._restore_state(prior.state)
            self.resumed = True

    def _wrap_ddp(self) -> None:
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DDP(self.train_model, device_ids=ids)

    def _cpu_auto_dtype(self, prior: dict[str, Any]) -> torch.dtype:
        """`--dtype auto` on a CPU: measured, but a resume keeps what it measured (a close call could flip)."""
        was = prior.get("precision") or {}
        if was.get("device") == "cpu" and was.get("measured") and was.get("dtype") in ("float32", "bfloat16"):
            self.dtype_measured, self.dtype_note = True, f"auto: {was['dtype']}, as this run measured at its start"
            return getattr(torch, was["dtype"])
        return self._measured_cpu_dtype(prior.get("step", 0))

    def _measured_cpu_dtype(self, step: int) -> torch.dtype:
        """`--dtype auto` on a CPU: bf16 where this model's forward and backward run clearly faster in it
        (`runtime.cpu_training_dtype`); the same on every rank. A run of a known length too short to
        repay the measurement (PROBE_REPAID micro-batches) stays fp32 without measuring."""
        rows = max(1, min(self.micro, math.ceil(1024 / self.mc.block_size)))
        left = (self.tc.max_iters - step) * self.accum * self.micro / rows  # passes of `rows` sequences
        if self.tc.max_time is None and left < PROBE_REPAID:
            self.dtype_note = f"auto: fp32 unmeasured ({self.tc.max_iters - step} steps cannot repay measuring bf16)"
            return torch.float32
        dtype, ratio = runtime.cpu_training_dtype(self.model, rows)
        bf16 = runtime.agree_min(int(dtype == torch.bfloat16), self.dist, self.device)
        self.dtype_measured = True
        self.dtype_note = f"auto: a bf16 step took {ratio:.2f}x fp32's here"
        return torch.bfloat16 if bf16 else torch.float32

    def _restore_state(self, st: dict[str, Any]) -> None:
        self.state = LoopState(step=st.get("step", 0), tokens_seen=st.get("tokens_seen", 0),
                               elapsed=st.get("elapsed", 0.0), best_val_loss=st.get("best_val_loss"),
                               last_val_loss=st.get("val_loss"), last_train_loss=st.get("train_loss"),
                               eval_seconds=st.get("eval_seconds"), rng=st.get("rng", {}))
        rng = self.state.rng
        if "numpy" in rng:
            self.rng.bit_generator.state = rng["numpy"]
        ranks = rng.get("ranks") or []
        if self.dist.rank < len(ranks):  # this rank's own dropout stream (CPU, and GPU when it trained on one)
            runtime.set_rng_state(ranks[self.dist.rank], self.device)
        elif "torch" in rng and not ranks:  # written before per-rank states were kept
            runtime.set_rng_state({"torch": rng["torch"]}, self.device)

    def warn(self, message: str) -> None:
        self.log({"event": "warning", "message": message})

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
                  "batch_size": self.micro, "compiled": self.compiled, "dtype_note": getattr(self, "dtype_note", None),
                  "max_iters": tc.max_iters, "max_time": tc.max_time, "train_tokens": len(self.ds.train),
                  "val_tokens": len(self.ds.val), "vocab_size": self.mc.vocab_size,
                  "tokenizer": self.ds.tokenizer.name, "resumed": self.resumed})
        t0 = self.clock() - st.elapsed
        evaluated_at = st.step if self.resumed else -1  # a resumed checkpoint was evaluated when saved
        last_ckpt = None
        self.read_at = self.clock()
        with stop_on_signals(self.stop):
            while True:
                st.elapsed = self.clock() - t0
                # time the final evaluation needs: as the last one took, else estimated from the steps
                reserve = self.eval_estimate if st.eval_seconds is None else st.eval_seconds
                out_of_time = tc.max_time is not None and st.elapsed + reserve >= tc.max_time
                # under DDP the ranks agree at each read (a collective waits for the device), not every step
                agree = not self.dist.enabled or st.step % self.log_interval == 0
                done = st.step >= tc.max_iters or (agree and self.agree_to_stop(out_of_time))
                if (done or st.step % tc.eval_interval == 0) and st.step > 0 and st.step != evaluated_at:
                    self.read_losses(self.clock() - t0)  # before anything is saved: a NaN must stop the run first
                    te = self.clock()
                    last_ckpt = self.evaluate_and_save(self.clock() - t0, te) or last_ckpt
                    st.eval_seconds = self.clock() - te
                    self.read_at += self.clock() - te  # evaluation time is not step time
                    evaluated_at = st.step
                    if not done:  # an evaluation may have used up the budget: check again before a step
                        continue
                if done:
                    break
                self.train_step(self.clock() - t0)
        self.read_losses(self.clock() - t0)
        interrupted = bool(self.stop)
        self.log({"event": "done", "step": st.step, "val_loss": st.last_val_loss, "best_val_loss": st.best_val_loss,
                  "elapsed": self.clock() - t0, "interrupted": interrupted, "run_dir": str(self.run_dir)})
        bpc = None if st.last_val_loss is None else bits_per_char(st.last_val_loss, self.ds.val_tokens_per_char)
        more = None
        if not interrupted:
            # not interrupted: one of the budgets ended it
            more = f"--max-iters {2 * tc.max_iters}" if st.step >= tc.max_iters \
                else f"--max-time {math.ceil(2 * tc.max_time)}s"
        return TrainResult(self.run_dir, st.step, st.last_val_loss, st.best_val_loss, bpc, self.clock() - t0,
                           interrupted, last_ckpt, more)

    def agree_to_stop(self, out_of_time: bool) -> bool:
        """Stop if any rank wants to. A signal that reached another rank only is this rank's too: it
        ends interrupted (exit 130) like that one, not as if a budget had run out."""
        want = 2 if self.stop else 1 if out_of_time else 0
        reason = -runtime.agree_min(-want, self.dist, self.device)  # the largest: a signal, then the time budget
        if reason == 2 and not self.stop:
            self.stop["signal"] = "another rank's"
        return reason > 0

    def fetch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next micro-batch on the device: the one drawn ahead while the device was busy, or a new one."""
        if self.next_batch is None:
            self.prefetch()
        batch, self.next_batch = self.next_batch, None
        return batch

    def prefetch(self) -> None:
        """Draw the following micro-batch now and start its copy, so it overlaps the work queued on the
        device. A checkpoint records the generator from before this draw: a resumed run draws it again."""
        self.batch_rng = self.rng.bit_generator.state
        x, y = get_batch(self.ds.train, self.micro, self.mc.block_size, self.rng, self.shard)
        self.next_batch = (runtime.to_device(x, self.device), runtime.to_device(y, self.device))

    def accumulate(self) -> torch.Tensor:
        """Forward and backward over the step's micro-batches; returns the step's mean loss (on the device)."""
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum):
            x, y = self.fetch()
            last = micro == self.accum - 1
            # DDP: skip the gradient all-reduce on all but the last micro-step
            sync = nullcontext() if last or not self.dist.enabled else self.train_model.no_sync()
            with sync:
                with runtime.autocast(self.device, self.dtype):
                    _, loss = self.train_model(x, y)
                    loss = loss / self.accum  # the mean over micro-batches, as one big batch would give
                self.scaler.scale(loss).backward()
            self.prefetch()  # the device is busy with this micro-step: draw the next one meanwhile
            loss_sum += loss.detach()
        return loss_sum

    def train_step(self, elapsed: float) -> None:
        tc, st = self.tc, self.state
        lr = lr_at(tc, st.step, schedule_progress(tc, st.step, elapsed))
        set_lr(self.optimizer, lr)
        started = self.batch_rng if self.next_batch is not None else self.rng.bit_generator.state
        try:
            loss = self.accumulate()
        except runtime.compile_errors() as e:
            if not self.compiled:
                raise
            self.eager_fallback(e)
            self.optimizer.zero_grad(set_to_none=True)
            self.rng.bit_generator.state, self.next_batch = started, None  # the same batches again, eager
            loss = self.accumulate()
        grad_norm = torch.zeros((), device=self.device)
        if tc.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        st.tokens_seen += self.tokens_per_step
        self.pending.append((st.step, lr, torch.stack([loss.float(), grad_norm.float()])))
        if st.step % self.log_interval == 0 or not self.warm:
            self.read_losses(elapsed)

    def eager_fallback(self, e: BaseException) -> None:
        """A compilation failed at its first use: train on eager, and say so once."""
        import torch._dynamo

        why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        self.warn(f"torch.compile failed ({why[:160]}); training continues eager (--no-compile skips compiling)")
        torch._dynamo.reset()
        self.train_model, self.compiled = self.model, False
        self._wrap_ddp()

    def read_losses(self, elapsed: float) -> None:
        """Read the steps' losses and gradient norms since the last read from the device in one wait,
        stop on a non-finite loss, and report each step. Timing covers the whole interval."""
        if not self.pending:
            return
        values = runtime.mean_over_ranks(torch.stack([v for _, _, v in self.pending]), self.dist).tolist()
        now = self.clock()
        dt = (now - self.read_at) / len(self.pending)
        self.read_at = now
        for (step, _, _), (loss, _) in zip(self.pending, values, strict=True):
            if not math.isfinite(loss):
                raise TrainingError(f"loss became {loss} at step {step - 1}; stopped without saving "
                                    "(the last good checkpoint is kept); try a lower --learning-rate")
        if self.warm:
            self.step_time = dt if self.step_time is None else STEP_TIME_DECAY * self.step_time + (1 - STEP_TIME_DECAY) * dt
        self.warm = True
        tps = self.tokens_per_step / max(dt, 1e-9)
        tc = self.tc
        for (step, lr, _), (loss, grad_norm) in zip(self.pending, values, strict=True):
            self.state.last_train_loss = loss
            self.emit({"event": "step", "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                       "tokens_per_sec": tps, "step_time": dt,
                       "mfu": (tps * self.flops_per_token / self.peak) if self.peak else None,
                       "elapsed": elapsed + dt, "max_iters": tc.max_iters, "max_time": tc.max_time})
        self.pending = []

    def evaluate_and_save(self, elapsed: float, started: float | None = None) -> Path | None:
        st = self.state
        try:
            losses = estimate_loss(self.train_model, self.ds, self.mc, self.tc, self.device, self.dtype, self.dist,
                                   self.micro)
        except runtime.compile_errors() as e:  # the evaluation graph is compiled at the first evaluation
            if not self.compiled:
                raise
            self.eager_fallback(e)
            losses = estimate_loss(self.train_model, self.ds, self.mc, self.tc, self.device, self.dtype, self.dist,
                                   self.micro)
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
        ranks = runtime.gather_objects(runtime.rng_state(self.device), self.dist)  # every rank's dropout stream
        if not self.dist.is_main:
            return None
        st.elapsed = elapsed
        if started is not None:  # this evaluation's cost so far: what a resumed timed run reserves
            st.eval_seconds = self.clock() - started
        path = self.save(checkpoint.LAST, with_optim=True, ranks=ranks)
        if improved:
            self.save(checkpoint.BEST, with_optim=False, ranks=ranks)
        self.emit({"event": "checkpoint", "step": st.step, "path": str(path)})
        return path

    def save(self, name: str, with_optim: bool, ranks: list[dict[str, Any]]) -> Path:
        st = self.state
        batches = self.batch_rng if self.next_batch is not None else self.rng.bit_generator.state
        meta = {"run": self.run_dir.name, "model_config": to_dict(self.mc), "train_config": to_dict(self.tc),
                "tokenizer": self.ds.tokenizer.to_dict(), "state": {
                    "step": st.step, "tokens_seen": st.tokens_seen, "elapsed": st.elapsed,
                    "eval_seconds": st.eval_seconds,
                    "best_val_loss": st.best_val_loss, "val_loss": st.last_val_loss, "train_loss": st.last_train_loss,
                    "val_bpc": None if st.last_val_loss is None else
                    bits_per_char(st.last_val_loss, self.ds.val_tokens_per_char),
                    "rng": {"numpy": batches, "torch": ranks[0]["torch"], "ranks": ranks},
                    "data": {"dataset": str(self.ds.path), **self.ds.meta.get("source", {})},
                    "precision": {"device": self.device.type, "dtype": str(self.dtype).removeprefix("torch."),
                                  "measured": self.dtype_measured},
                    "versions": {"gptkit": __version__, "torch": torch.__version__}}}
        return checkpoint.save(self.run_dir / name, self.model, meta, self.optimizer if with_optim else None)
