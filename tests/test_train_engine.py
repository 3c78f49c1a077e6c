"""The training engine: gradient accumulation, DDP on CPU with gloo, Ctrl-C + resume,
fine-tuning, and every architecture switch trained and round-tripped through a checkpoint."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch

from gptkit import checkpoint
from gptkit.config import resolve_config
from gptkit.train import train
from tests.conftest import (
    SHAKESPEARE,
    assert_one_line_error,
    cli_env,
    gptkit_argv,
    recorded_eval,
    reference_losses,
    run_here,
)

SMALL = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, eval_iters=2, warmup_iters=2, grad_accum=1)


def _weights(run_dir, name=checkpoint.LAST):
    return checkpoint.load_tensors(checkpoint.read_info(run_dir / name), "model.")


def _assert_close(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol), (k, (a[k] - b[k]).abs().max())


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    mc, tc = resolve_config("tiny", None, {**SMALL, "batch_size": 8, "max_iters": 6, "eval_interval": 6})
    train(mc, tc, str(SHAKESPEARE), tmp_path / "big", tmp_path)
    mc, tc = resolve_config("tiny", None, {**SMALL, "batch_size": 4, "grad_accum": 2, "max_iters": 6,
                                           "eval_interval": 6})
    train(mc, tc, str(SHAKESPEARE), tmp_path / "accum", tmp_path)
    _assert_close(_weights(tmp_path / "big"), _weights(tmp_path / "accum"), atol=2e-6)
    events = []
    mc, tc = resolve_config("tiny", None, {**SMALL, "batch_size": 4, "tokens_per_step": 500, "max_iters": 1,
                                           "eval_interval": 1})
    train(mc, tc, str(SHAKESPEARE), tmp_path / "tps", tmp_path, on_event=events.append)
    start = next(e for e in events if e["event"] == "start")  # after the dataset build's "data" events
    assert start["grad_accum"] == 4 and start["tokens_per_step"] == 512  # ceil(500 / (4*32)) = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, run: str, *args: str, wait: bool = True):
    """`torchrun --nproc_per_node 2 -m gptkit train` on CPU (gloo), one thread a rank. Each rank's own
    stdout and stderr go to files under tmp_path/logs (torchrun --redirects), read by `_ddp_report`.
    The launcher is a fresh interpreter (its children are the ranks); each rank is `python -m gptkit`
    through conftest's gptkit_argv (--no-python: torchrun runs that argv as it is)."""
    (tmp_path / "logs").mkdir(exist_ok=True)
    logs = tempfile.mkdtemp(prefix=f"{run}-", dir=tmp_path / "logs")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "--log-dir", logs, "--redirects", "3", "--no-python",
           *gptkit_argv(), "train", *args, "--run-name", run, "--checkpoints", str(tmp_path),
           "--device", "cpu", "-q", "--dtype", "float32"]  # the data first: torchrun reads an option it can abbreviate until then
    env = cli_env(OMP_NUM_THREADS="1")
    if not wait:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        proc.logs = logs
        return proc
    proc = _run_ddp(lambda: subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path),
                    logs)
    assert proc.returncode == 0, _ddp_report(proc.stderr, logs)
    return proc


def _ranks_stderr(logs) -> dict[int, str]:
    """Each rank's own stderr, from torchrun's --log-dir (LOGS/<run id>/attempt_N/<rank>/stderr.log)."""
    found = sorted(Path(logs).glob("*/attempt_*/*/stderr.log"))
    return {int(f.parent.name): f.read_text(encoding="utf-8", errors="replace") for f in found}


def _ddp_report(launcher_stderr: str, logs, lines: int = 25) -> str:
    """What a failed torchrun left: the launcher's stderr, then the last lines each rank wrote."""
    parts = [f"torchrun: {launcher_stderr[-2000:]}"]
    for rank, text in _ranks_stderr(logs).items():
        tail = "\n".join(text.splitlines()[-lines:])
        parts.append(f"--- rank {rank} stderr (last {lines} lines) ---\n{tail or '(empty)'}")
    return "\n".join(parts)


KNOWN_ABORT = "terminate called without an active exception"


def _run_ddp(run, logs):
    """A rare abort seen on CI only (rank 1, SIGABRT with this message, no Python error; 3 times, before
    runtime.teardown_distributed waited at a final barrier): run again once, with a warning that shows what
    every rank printed, so CI stays green and says so. Any other failure, and any difference in the results,
    still fails the test."""
    proc = run()
    if proc.returncode != 0 and any(KNOWN_ABORT in text for text in _ranks_stderr(logs).values()):
        warnings.warn(f"torchrun rerun after a rank's C++ abort:\n{_ddp_report(proc.stderr, logs)}", stacklevel=2)
        shutil.rmtree(logs)
        os.mkdir(logs)  # the rerun's logs alone
        proc = run()
    return proc


DDP_SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "2",
             "--grad-accum", "2", "--eval-iters", "2", "--eval-interval", "3", "--dropout", "0",
             "--warmup-iters", "0", "--learning-rate", "1e-3", "--min-lr", "1e-3"]  # a flat lr: 3 + 3 steps = 6


def test_ddp_equals_one_process_and_resume_equals_the_straight_run(tmp_path, capsys):
    """2 processes, each step several micro-batches per rank (one all-reduce a step): the same weights
    and held-out loss as one process at twice the batch (the same accumulation), rank 0 alone logging;
    and 3 steps and a resume to 6 end bit-identical to 6 straight steps, weights and Muon/AdamW
    moments: the shared batch stream comes back from the checkpoint. (With --dropout 0.1 the resume
    differs: the issue note says so.)"""
    _torchrun(tmp_path, "straight", str(SHAKESPEARE), *DDP_SMALL, "--max-iters", "6")
    single = run_here(capsys, "train", str(tmp_path / "straight" / "data"), "--run", "one", "--checkpoints",
                      str(tmp_path), *DDP_SMALL, "--batch-size", "4", "--max-iters", "6", "--device", "cpu",
                      "-q", "--dtype", "float32")
    assert single.returncode == 0, single.stderr
    _assert_close(_weights(tmp_path / "straight"), _weights(tmp_path / "one"), atol=1e-5)
    ddp_state, one_state = (checkpoint.read_info(tmp_path / r / checkpoint.LAST).state for r in ("straight", "one"))
    assert ddp_state["val_loss"] == pytest.approx(one_state["val_loss"], abs=1e-5)
    assert ddp_state["tokens_seen"] == one_state["tokens_seen"]
    events = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2  # rank 0 alone logs
    # the same batches (the weights above), but each rank its own dropout stream, seeded seed + rank, and
    # each rank's generators kept for resume (dropout is 0 here, so neither has drawn since its seeding)
    expected = [torch.manual_seed(1337 + r).get_state().tolist() for r in range(2)]
    assert [r["torch"] for r in ddp_state["rng"]["ranks"]] == expected and expected[0] != expected[1]

    _torchrun(tmp_path, "split", str(SHAKESPEARE), *DDP_SMALL, "--max-iters", "3")
    _torchrun(tmp_path, "split", "--resume", "--max-iters", "6")
    a, b = (checkpoint.read_info(tmp_path / r / checkpoint.LAST) for r in ("straight", "split"))
    assert a.state["step"] == b.state["step"] == 6 and a.state["tokens_seen"] == b.state["tokens_seen"]
    for prefix in ("model.", "optim."):  # weights and optimizer moments, bit for bit
        ta, tb = checkpoint.load_tensors(a, prefix), checkpoint.load_tensors(b, prefix)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), prefix
    assert len(b.state["rng"]["ranks"]) == 2


def test_ddp_ranks_stop_together_on_a_signal_to_one(tmp_path):
    """Ctrl-C reaching one rank only (here the one that does not save): the ranks agree to stop at the
    same step, rank 0 saves it, and nobody waits forever in an all-reduce the other left."""
    proc = _torchrun(tmp_path, "r", str(SHAKESPEARE), *DDP_SMALL, "--max-iters", "100000", wait=False)
    last = tmp_path / "r" / checkpoint.LAST
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.exists(), _ddp_report(proc.communicate()[1], proc.logs) if proc.poll() is not None else \
        "no checkpoint in 120 s"
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    rank1 = max(map(int, workers))  # torchrun starts rank 0 first
    os.kill(rank1, signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # a rank left alone in a collective would hang here
    events = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    done = next((e for e in events if e["event"] == "done"), None)
    assert done is not None and done["interrupted"], _ddp_report(err, proc.logs)
    assert checkpoint.read_info(last).state["step"] == done["step"] > 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_exits_130_and_resume_continues(tmp_path, sig, capsys):
    """A real signal to a real `gptkit train`: Ctrl-C (SIGINT) or a scheduler's SIGTERM finishes the
    step, saves, exits 130; the resume (checked after SIGINT) continues from the saved step."""
    store = tmp_path / "store"
    args = ["train", str(SHAKESPEARE), "--run", "r", "--checkpoints", str(store), "--n-layer", "1", "--n-embd", "32",
            "--n-head", "2", "--block-size", "32", "--eval-interval", "10", "--eval-iters", "2", "--max-iters", "100000"]
    proc = subprocess.Popen([*gptkit_argv(), *args], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = store / "r" / checkpoint.LAST
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert last.exists(), "no checkpoint within 120 s"
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    info = checkpoint.read_info(last)
    step = info.state["step"]
    assert step >= 10
    events = [json.loads(x) for x in (store / "r" / "metrics.jsonl").read_text().splitlines()]
    done = next(e for e in events if e["event"] == "done")
    assert done["interrupted"] and done["step"] == step  # saved at the step it stopped, not at the last eval
    if sig == signal.SIGTERM:
        return
    # the resume is the CLI's, not the process's: run in this process
    resumed = run_here(capsys, "train", "--run", "r", "--checkpoints", str(store), "--resume", "--max-iters",
                       str(step + 5))
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.read_info(last).state["step"] == step + 5
    conflict = run_here(capsys, "train", "--run", "r", "--checkpoints", str(store), "--resume", "--n-embd", "64")
    assert conflict.returncode == 2 and "conflicts" in conflict.stderr


def test_a_finished_run_says_how_to_train_on_and_that_command_works(tmp_path, capsys, monkeypatch):
    """In this process (the hint and the resumes are the CLI's); the program name comes from argv."""
    monkeypatch.chdir(tmp_path)
    store = str(tmp_path / "store")
    first = run_here(capsys, "train", str(SHAKESPEARE), "--run", "r", "--checkpoints", store, "--n-layer", "1",
                     "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--eval-iters", "2", "--max-iters", "6",
                     "--eval-interval", "3", "--batch-size", "5")
    assert first.returncode == 0, first.stderr
    hint = first.stderr.strip().splitlines()[-1]
    assert hint.endswith("| train on: python -m gptkit train --run r --resume --max-iters 12"), hint
    # the bare --resume would stop at once: one line instead of a silent "done"
    assert_one_line_error(run_here(capsys, "train", "--run", "r", "--checkpoints", store, "--resume"),
                          "has run 6 of its --max-iters 6", "raise --max-iters")
    more = run_here(capsys, "train", "--run", "r", "--checkpoints", store, "--resume", "--max-iters", "12")
    assert more.returncode == 0, more.stderr
    info = checkpoint.read_info(tmp_path / "store" / "r" / checkpoint.LAST)
    assert info.state["step"] == 12
    assert info.meta["train_config"]["batch_size"] == 5  # the run's own batch size, not the preset's 32
    (tmp_path / "more.toml").write_text("[train]\nmax_iters = 15\n", encoding="utf-8")  # a --config key counts too
    by_file = run_here(capsys, "train", "--run", "r", "--checkpoints", store, "--resume", "--config", "more.toml")
    assert by_file.returncode == 0, by_file.stderr
    assert checkpoint.read_info(tmp_path / "store" / "r" / checkpoint.LAST).state["step"] == 15


def test_init_from_starts_where_the_other_run_ended(tmp_path, trained_run):
    events = []
    mc, tc = resolve_config("tiny", None, dict(max_iters=1, eval_interval=1, eval_iters=20, learning_rate=1e-6,
                                               min_lr=0.0, warmup_iters=0))
    train(mc, tc, str(SHAKESPEARE), tmp_path / "ft", tmp_path, on_event=events.append,
          init_from=str(trained_run["run_dir"]))
    first = next(e for e in events if e["event"] == "eval")
    assert first["val_loss"] == pytest.approx(trained_run["result"].val_loss, abs=0.05)
    assert first["val_loss"] < 0.65 * math.log(65)


ROPE = dict(pos_encoding="rope")  # the CPU default (quick); learned positions: trained_run beats the bigram


@pytest.mark.parametrize("switch", [{**ROPE, "norm": "rmsnorm"}, {**ROPE, "mlp": "swiglu"},  # RoPE in each
                                    {**ROPE, "norm": "rmsnorm", "mlp": "swiglu", "bias": False}])
def test_architecture_switches_train_and_round_trip(tmp_path, switch):
    """Each switch trains a model that uses its context: 0.1 nats below the add-one bigram of the same
    split, the best a model that sees only the current token does (the same run with attention
    removed ends above it: planted, such a model fails here). Its checkpoint, saved again, gives the
    same logits."""
    mc, tc = resolve_config("tiny", None, {**SMALL, **switch, "n_embd": 64, "block_size": 64, "max_iters": 200,
                                           "eval_interval": 200, "eval_iters": 10, "batch_size": 16,
                                           "tokens_per_step": 16 * 64, "learning_rate": 3e-3, "warmup_iters": 10})
    result = train(mc, tc, str(SHAKESPEARE), tmp_path / "r", tmp_path)
    ref = reference_losses(tmp_path / "r" / "data")
    assert result.val_loss < ref["bigram"] - 0.1, (result.val_loss, ref)
    model, _, info = checkpoint.load_for_inference(tmp_path / "r" / checkpoint.LAST)
    for key, value in switch.items():
        assert info.meta["model_config"][key] == value
    recorded, measured = recorded_eval(model, tmp_path / "r")
    assert measured == pytest.approx(recorded, abs=1e-5)  # the trained weights came back
    again = checkpoint.save(tmp_path / "again.safetensors", model, {k: info.meta[k] for k in ("model_config", "tokenizer")})
    x = torch.randint(0, 65, (2, 64))
    assert torch.equal(model(x)[0], checkpoint.load_for_inference(again)[0](x)[0])


def test_compiled_training_on_cpu_saves_plain_names_and_samples_at_evals(tmp_path):
    """torch.compile (inductor) runs on CPU too; the checkpoint holds the plain module's names."""
    events = []
    mc, tc = resolve_config("tiny", None, {**SMALL, "n_layer": 1, "max_iters": 4, "eval_interval": 2,
                                           "compile": True, "sample_every": 2})
    train(mc, tc, str(SHAKESPEARE), tmp_path / "c", tmp_path, on_event=events.append)
    info = checkpoint.read_info(tmp_path / "c" / checkpoint.LAST)
    assert not any("_orig_mod" in k for k in info.tensors)
    samples = [e for e in events if e["event"] == "sample"]
    assert [e["step"] for e in samples] == [2, 4] and all(len(e["text"]) > 20 for e in samples)
    # and it computes what eager training computes: the same 4 steps without compiling
    eager = resolve_config("tiny", None, {**SMALL, "n_layer": 1, "max_iters": 4, "eval_interval": 2,
                                          "compile": False})
    train(*eager, str(tmp_path / "c" / "data"), tmp_path / "e", tmp_path)
    _assert_close(_weights(tmp_path / "c"), _weights(tmp_path / "e"), atol=1e-5)
    c_state, e_state = (checkpoint.read_info(tmp_path / r / checkpoint.LAST).state for r in ("c", "e"))
    assert c_state["val_loss"] == pytest.approx(e_state["val_loss"], abs=1e-5)
