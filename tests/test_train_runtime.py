"""How a training run uses its machine, on this CPU: a compile that fails at its first step falls
back to eager with one warning, a failed allocation is one line naming the flag to lower, the loss
is read from the device once per log interval, `--dtype auto` is measured (and bf16 trains), and
samples at evaluations run without dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptkit import checkpoint, runtime
from gptkit.config import resolve_config
from gptkit.train import train
from tests.conftest import SHAKESPEARE, assert_one_line_error, run_here

TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, grad_accum=1, eval_iters=2,
            warmup_iters=2, dtype="float32")


def _run(tmp_path, on_event=None, **kw):
    mc, tc = resolve_config("tiny", None, {**TINY, **kw})
    events = []
    result = train(mc, tc, str(SHAKESPEARE), tmp_path / "r", tmp_path, on_event=on_event or events.append)
    return result, events


def test_a_compile_that_fails_at_the_first_step_falls_back_to_eager(tmp_path, monkeypatch):
    """A container without a working compiler crashed at step 1: now one warning, then eager."""
    real = torch.compile

    def broken_backend(gm, example_inputs):
        raise RuntimeError("failed to build the kernel launcher: cc not found")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, backend=broken_backend))
    result, events = _run(tmp_path, compile=True, max_iters=6, eval_interval=3)
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "torch.compile failed" in warnings[0] and "eager" in warnings[0], warnings
    assert result.step == 6 and result.val_loss is not None
    assert not any("_orig_mod" in k for k in checkpoint.read_info(tmp_path / "r" / checkpoint.LAST).tensors)


def test_running_out_of_memory_is_one_line_naming_the_flag(tmp_path, monkeypatch, capsys):
    import gptkit.model

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(gptkit.model.GPT, "forward", oom)
    proc = run_here(capsys, "train", str(SHAKESPEARE), "--checkpoints", str(tmp_path), "--n-layer", "1",
                    "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--batch-size", "6", "--max-iters", "3",
                    "-q")
    assert_one_line_error(proc, "out of cpu memory", "micro-batches of 6 x 32", "lower --batch-size")


def test_loss_and_grad_norm_are_read_once_per_log_interval(tmp_path, monkeypatch):
    """Every step was two waits for the device (loss.item(), float(grad_norm)); now one per interval,
    and every step is still reported, with its own loss."""
    reads = []
    real = runtime.mean_over_ranks
    monkeypatch.setattr(runtime, "mean_over_ranks", lambda t, d: reads.append(len(t)) or real(t, d))
    _, events = _run(tmp_path, max_iters=20, eval_interval=10, log_interval=5)
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 21))
    assert reads == [1, 4, 5, 5, 5]  # the first step alone (not timed), then every 5 steps
    assert len({e["loss"] for e in steps}) > 15  # each step its own loss, not the interval's mean


def test_a_nan_between_reads_still_stops_before_anything_is_saved(tmp_path, monkeypatch):
    import gptkit.model

    _run(tmp_path, max_iters=10, eval_interval=10)
    before = (tmp_path / "r" / checkpoint.LAST).read_bytes()
    original, calls = gptkit.model.GPT.forward, []

    def poisoned(self, idx, targets=None, **kw):  # the third training step's loss on is NaN
        logits, loss = original(self, idx, targets, **kw)
        calls.append(self.training)
        return logits, (loss * float("nan") if self.training and sum(calls) >= 3 else loss)

    monkeypatch.setattr(gptkit.model.GPT, "forward", poisoned)
    mc, tc = resolve_config("tiny", None, {**TINY, "max_iters": 20, "eval_interval": 10, "log_interval": 7})
    from gptkit.errors import TrainingError

    # resumed at 10: read after step 11 (the first in a process), then at 14, which finds step 13's NaN
    with pytest.raises(TrainingError, match="nan at step 12"):
        train(mc, tc, str(tmp_path / "r" / "data"), tmp_path / "r", tmp_path, resume=True,
              explicit={"max_iters", "log_interval"})
    assert (tmp_path / "r" / checkpoint.LAST).read_bytes() == before


def test_cpu_auto_precision_follows_the_measurement_and_bf16_trains(tmp_path, monkeypatch):
    """`--dtype auto` once chose bf16 by AMX alone; now by a measured step at the model's shapes.
    Here the measurement is made to favour bf16: the run trains in bf16 autocast, its loss falls,
    and its checkpoint holds fp32 weights."""
    measured = []
    monkeypatch.setattr(runtime, "faster_cpu_dtype", lambda step: measured.append(step) or (torch.bfloat16, 0.4))
    monkeypatch.setattr(runtime, "_CPU_DTYPES", {})
    result, events = _run(tmp_path, dtype="auto", max_iters=40, eval_interval=40, learning_rate=3e-3)
    start = next(e for e in events if e["event"] == "start")
    assert len(measured) == 1 and start["dtype"] == "bfloat16" and "0.40x" in start["dtype_note"]
    assert result.val_loss < 0.8 * np.log(65)
    info = checkpoint.read_info(tmp_path / "r" / checkpoint.LAST)
    assert info.tensors["model.transformer.wte.weight"]["dtype"] == "F32"
    monkeypatch.setattr(runtime, "faster_cpu_dtype", lambda step: (torch.float32, 1.1))
    monkeypatch.setattr(runtime, "_CPU_DTYPES", {})
    _, events = _run(tmp_path / "again", dtype="auto", max_iters=2, eval_interval=2)
    assert next(e for e in events if e["event"] == "start")["dtype"] == "float32"


def test_the_cpu_measurement_leaves_the_run_reproducible(tmp_path):
    """The probe draws from its own generator and clears its gradients: a run measured and one that
    was not end with the same weights."""
    runtime._CPU_DTYPES.clear()
    _run(tmp_path / "a", dtype="auto", max_iters=40, eval_interval=40)  # long enough to be measured
    (dtype, _), = runtime._CPU_DTYPES.values()
    _run(tmp_path / "b", dtype=str(dtype).removeprefix("torch."), max_iters=40, eval_interval=40)
    a = checkpoint.load_tensors(checkpoint.read_info(tmp_path / "a" / "r" / checkpoint.LAST), "model.")
    b = checkpoint.load_tensors(checkpoint.read_info(tmp_path / "b" / "r" / checkpoint.LAST), "model.")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_samples_at_evaluations_run_without_dropout(tmp_path):
    """`--sample-every` sampled with dropout on: the same seed gave a different text each time."""
    from gptkit.evaluate import sample_text
    from gptkit.model import GPT

    _run(tmp_path, max_iters=20, eval_interval=20, dropout=0.0)
    model, _, info = checkpoint.load_for_inference(tmp_path / "r" / checkpoint.LAST)
    from gptkit.data.dataset import load_dataset

    ds = load_dataset(tmp_path / "r" / "data")
    dropout = GPT(type(model.config)(**{**vars(model.config), "dropout": 0.5}))
    dropout.load_state_dict(model.state_dict(), strict=False)
    dropout.train()
    texts = {sample_text(dropout, ds, max_new_tokens=60, seed=3) for _ in range(3)}
    assert texts == {sample_text(model, ds, max_new_tokens=60, seed=3)}  # the eval-mode model's text
    assert dropout.training  # and training mode is given back


def test_a_run_too_short_to_repay_the_cpu_measurement_trains_fp32_unmeasured(tmp_path, monkeypatch):
    """The probe costs 8 forward/backward passes: a run of known length that a bf16 just clearly
    faster could not repay (loop.PROBE_REPAID passes) trains fp32 without measuring; a timed run is
    measured, and a resume counts only the steps it has left."""
    from gptkit.loop import PROBE_REPAID

    measured = []
    monkeypatch.setattr(runtime, "faster_cpu_dtype", lambda step: measured.append(step) or (torch.bfloat16, 0.4))
    monkeypatch.setattr(runtime, "_CPU_DTYPES", {})
    short = PROBE_REPAID - 1  # TINY: one pass of 4 sequences a step
    _, events = _run(tmp_path, dtype="auto", max_iters=short, eval_interval=short)
    start = next(e for e in events if e["event"] == "start")
    assert not measured and start["dtype"] == "float32" and "unmeasured" in start["dtype_note"]
    _, events = _run(tmp_path / "timed", dtype="auto", max_iters=2, eval_interval=2, max_time=600.0)
    assert len(measured) == 1 and next(e for e in events if e["event"] == "start")["dtype"] == "bfloat16"
    monkeypatch.setattr(runtime, "_CPU_DTYPES", {})
    for until, probed in ((2 * short, 1), (2 * short + PROBE_REPAID, 2)):  # resumed with 39, then 40 steps left
        mc, tc = resolve_config("tiny", None, {**TINY, "dtype": "auto", "max_iters": until, "eval_interval": short})
        train(mc, tc, str(tmp_path / "r" / "data"), tmp_path / "r", tmp_path, resume=True, explicit={"max_iters"})
        assert len(measured) == probed
