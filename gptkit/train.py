"""Training, set up: `train(...)` resolves what a run starts from and hands it to `loop.Loop`.

Owns the steps before the first one: torch.distributed under torchrun, the precision, the data
(a dataset folder, or a text tokenized once under the run), a prior checkpoint (`--resume` keeps
its shape, tokenizer and settings; `--init-from` its weights), the memory check, the micro-batch
plan, and one-line errors for what cannot work (a spent budget, a conflicting flag, running out
of device memory). The loop itself, evaluation and checkpoints are `loop.py`. It never prints.
"""

from __future__ import annotations

import dataclasses
import datetime
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from gptkit import checkpoint, hardware, memory, runtime
from gptkit.config import ModelConfig, TrainConfig, field_names, validate
from gptkit.data.build import BUILD_WAIT_S, prepare_dataset
from gptkit.data.dataset import TokenDataset, check_lengths, load_dataset
from gptkit.data.sources import DataSpec, is_dataset_folder, open_inputs
from gptkit.errors import CheckpointError, InputError, TrainingError, UsageError
from gptkit.fsio import removed_on_error, run_lock
from gptkit.loop import DEFAULT_BATCH, Event, Loop, TrainResult, batch_plan, flops_per_token
from gptkit.tokenizers.core import Tokenizer
from gptkit.tokenizers.stored import tokenizer_from_dict

__all__ = ["train", "load_data", "batch_plan", "flops_per_token", "TrainResult", "check_writable"]
# flags that must match a resumed checkpoint (--vocab-size is the bpe target: _check_tokenizer checks it)
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "pos_encoding", "norm", "mlp")


def load_data(data: DataSpec | str | None, tc: TrainConfig, run_dir: Path, store: Path,
              tokenizer: Tokenizer | None, dist_info: runtime.DistInfo,
              on_event: Callable[[Event], None] | None = None) -> TokenDataset:
    """A dataset folder is used as is. Other inputs (files, folders, URLs, stdin, the built-in corpus)
    are tokenized once into run_dir/data (or reused from there): under torchrun by every node's
    local rank 0, into its own store (node-local, or shared and built once under a lock), while all
    other processes wait at a CPU barrier whose timeout is as long as a build may take."""
    spec = DataSpec.of(data)
    if len(spec.refs) == 1 and is_dataset_folder(Path(spec.refs[0])):
        run_dir.mkdir(parents=True, exist_ok=True)  # no cache is written under it, so create it here
        ds = load_dataset(spec.refs[0])
        if tokenizer is not None and ds.meta["tokenizer"] != tokenizer.to_dict():
            raise UsageError(f"dataset {spec.refs[0]!r} was built with another tokenizer than the checkpoint's; "
                             "rebuild it with `gptkit tokenize --checkpoint ...`")
        return ds
    group = _data_group(dist_info)
    ds = None
    if dist_info.local_rank == 0:
        with open_inputs(spec, store / ".cache", exclude=[store]) as inputs:
            ds = prepare_dataset(inputs, tc.tokenizer, tc.vocab_size, tc.val_fraction, run_dir / "data", tokenizer,
                                 spec.text_field, spec.skip_bad, {"refs": list(spec.refs)}, on_event)
    if group is None:
        return ds
    try:
        torch.distributed.barrier(group=group)  # every node's builder is done
        ds = ds or load_dataset(run_dir / "data")
        seen = [None] * dist_info.world_size
        torch.distributed.all_gather_object(seen, (ds.tokenizer.fingerprint, len(ds.train), len(ds.val)), group=group)
    except RuntimeError:
        raise TrainingError("another process stopped while the dataset was being built (its error says why)") from None
    # the group is left to teardown_distributed: destroyed here, a rank could close it while another's last
    # all-gather transfer is still in flight
    if any(s != seen[0] for s in seen):
        rank = next(r for r, s in enumerate(seen) if s != seen[0])
        raise InputError(f"rank {rank}'s dataset differs from rank 0's (tokenizer, train and val tokens: {seen[rank]} "
                         f"vs {seen[0]}); give every node the same inputs, or build it once with `gptkit tokenize "
                         "--out DIR` on a shared filesystem and train on DIR")
    return ds


def _data_group(dist_info: runtime.DistInfo):
    """A gloo group for waiting on the dataset: a CPU barrier with its own long timeout, so a long
    build outlasts neither NCCL's timeout nor the default group's."""
    if not dist_info.enabled:
        return None
    return torch.distributed.new_group(backend="gloo", timeout=datetime.timedelta(seconds=BUILD_WAIT_S))


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


def train(mc: ModelConfig, tc: TrainConfig, data: DataSpec | str | None, run_dir: Path, store: Path,
          on_event: Callable[[Event], None] = lambda e: None, resume: bool = False,
          init_from: str | None = None, explicit: set[str] | None = None,
          clock: Callable[[], float] | None = None) -> TrainResult:
    """Train a model and return where it was saved. `explicit` names the config fields the user set:
    a resumed or fine-tuned run rejects those that conflict with the checkpoint's shape, and a
    resumed run takes every other training setting from its checkpoint. `clock` (seconds) times the
    budget and the steps; tests pass a fake one."""
    dist_info, device = runtime.setup_distributed(tc.device)
    dtype = runtime.pick_dtype(tc.dtype, device)  # on a CPU, `auto` is measured once the model exists
    hardware.enable_fast_math(device)
    micro = tc.batch_size or DEFAULT_BATCH
    held = ExitStack()  # the run folder's lock, from before the data is built until the loop ends
    finished = False
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
                held.enter_context(run_lock(run_dir))  # a second training of this run stops here, in one line

            def plan(mc: ModelConfig) -> tuple[int, int]:  # every rank takes the smallest fit: one batch order
                return batch_plan(tc, mc, dist_info.world_size, lambda n: runtime.agree_min(
                    memory.fit_micro_batch(mc, n, device, dtype), dist_info, device))

            memory.check_training_memory(mc, plan(mc)[0], device, dtype)  # before tokenizing: vocab not counted yet
            ds = load_data(data, tc, run_dir, store, tokenizer, dist_info, on_event if dist_info.is_main else None)
            if mc.vocab_size == 0:
                mc = dataclasses.replace(mc, vocab_size=ds.tokenizer.vocab_size)
            check_lengths(ds, mc.block_size)
            micro, accum = plan(mc)
            memory.check_training_memory(mc, micro, device, dtype)
            loop = Loop(mc, tc, ds, run_dir, device, dtype, dist_info, on_event, (micro, accum),
                        clock or time.monotonic)
            loop.setup(prior, resume)
        result = loop.run()
        finished = True
        return result
    except Exception as e:
        if runtime.out_of_memory(e):
            raise TrainingError(f"out of {device.type} memory training micro-batches of {micro} x {mc.block_size} "
                                "tokens; lower --batch-size (the tokens per step stay: more micro-batches), "
                                "--block-size or the model size") from None
        raise
    finally:
        held.close()
        runtime.teardown_distributed(finished)


def check_writable(run_dir: Path) -> None:
    """Fail before any work if checkpoints cannot be written here (a read-only or misplaced store)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):  # unnamed where the OS allows: nothing is left behind
            pass
    except OSError as e:
        raise CheckpointError(f"cannot write to checkpoint folder {str(run_dir)!r} ({e.strerror or e}); "
                              "choose a writable --store DIR") from None


