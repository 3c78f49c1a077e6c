"""Crash safety: `gptkit train` killed with SIGKILL at random moments, and in the middle of writing a
checkpoint, loses nothing it had saved: the last completed checkpoint loads, a stray temporary file
is ignored and later cleaned up, and `--resume` continues from that checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptkit import checkpoint
from tests.conftest import SHAKESPEARE, run_here

EVAL = 2  # a checkpoint every 2 steps: many writes, so kills land near them


def train_args(store: Path, text: Path, *, resume: bool, max_iters: int, big: bool = False) -> list[str]:
    shape = ["--n-layer", "2", "--n-embd", "256"] if big else ["--n-layer", "1", "--n-embd", "32"]
    data = [] if resume else [str(text)]
    return [sys.executable, "-m", "gptkit", "train", *data, "--checkpoints", str(store), "--run", "r",
            *(["--resume"] if resume else shape + ["--n-head", "2", "--block-size", "32"]),
            "--batch-size", "8", "--eval-interval", str(EVAL), "--eval-iters", "1", "--max-iters", str(max_iters),
            "--device", "cpu", "--no-compile", "-q"]


def spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "NO_COLOR": "1", "GPTKIT_PEAK_FLOPS": "1e12"}  # skip the MFU matmul probe
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def saved_step(run: Path) -> int | None:
    """The step of the run's last checkpoint after a crash, checking that everything in it loads."""
    last = run / checkpoint.LAST
    if not last.exists():
        assert not (run / checkpoint.BEST).exists()
        return None
    model, tok, info = checkpoint.load_for_inference(last)
    assert checkpoint.load_tensors(info, "optim.")  # the optimizer moments --resume needs
    assert tok.decode(tok.encode("ROMEO")) == "ROMEO" and model.config.n_layer >= 1
    if (run / checkpoint.BEST).exists():  # written just after last: a kill between them leaves none yet
        checkpoint.load_for_inference(run / checkpoint.BEST)
    step = info.state["step"]
    assert step % EVAL == 0
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    for line in lines[:-1]:  # only a line being appended at the kill may be cut short
        json.loads(line)
    return step


def resume_to(capsys, store: Path, text: Path, step: int, big: bool = False) -> None:
    """`--resume` (in this process: nothing about it needs a fresh one) runs from the saved step one
    checkpoint further, and then no temporary file is left."""
    proc = run_here(capsys, *train_args(store, text, resume=True, max_iters=step + EVAL, big=big)[3:])
    assert proc.returncode == 0, proc.stderr
    run = store / "r"
    start = [e for e in logged(run) if e.get("event") == "start"][-1]
    assert start["resumed"] and start["step"] == step  # it continued from the checkpoint, not from zero
    assert saved_step(run) == step + EVAL
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]


def logged(run: Path) -> list[dict]:
    """The complete lines of the run's metrics.jsonl (a line being appended may be cut short)."""
    try:
        lines = (run / "metrics.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines]


def wait_for(seen, proc: subprocess.Popen, what: str) -> None:
    """Poll until `seen()`; a run that ends first fails the test. No deadline here: pytest-timeout ends
    a run that never gets there."""
    while not seen():
        assert proc.poll() is None, f"train ended before {what}: {proc.stderr.read()}"
        time.sleep(0.001)


@pytest.fixture()
def text(tmp_path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    return path


def test_sigkill_at_observed_moments(tmp_path, text, capsys, request):
    """Each kill is triggered by what the run is seen doing, so it lands in the phase it is meant for
    on a fast machine and a slow one (a kill after a random sleep could land in the torch import on a
    busy one), and the phase it hit is read back from the disk and recorded (the report's kill_phases):
    1. the moment the dataset folder appears (it is being tokenized: meta.json comes last), then a
       fresh run in the same folder;
    2. the moment the k-th evaluation is logged: the checkpoint before it is complete then, and the
       k-th is about to be written. That one must survive whole, or the k-th must."""
    store, run = tmp_path / "store", tmp_path / "store" / "r"
    rng = random.Random(8)
    hit = []
    proc = spawn(train_args(store, text, resume=False, max_iters=100_000))
    wait_for(lambda: (run / "data").is_dir(), proc, "building its dataset")
    os.kill(proc.pid, signal.SIGSTOP)  # frozen as it was seen: what is on disk now is what the kill leaves
    built = (run / "data" / "meta.json").exists()
    kill(proc)
    step = saved_step(run)
    hit.append("after the dataset build" if built else "dataset build")
    if step is not None:
        hit[-1] += f", after checkpoint {step}"

    k = rng.randint(2, 4)
    started = len(logged(run))
    proc = spawn(train_args(store, text, resume=step is not None, max_iters=100_000))

    def evals() -> list[dict]:
        return [e for e in logged(run)[started:] if e["event"] == "eval"]

    wait_for(lambda: len(evals()) >= k, proc, f"evaluation {k}")
    os.kill(proc.pid, signal.SIGSTOP)
    # the last evaluation logged (the k-th, or a later one if this test was slow to look): the checkpoint
    # before it was complete when it was logged, and its own is being written
    writing = evals()[-1]["step"]
    kill(proc)
    new = saved_step(run)
    hit.append(f"writing checkpoint {writing} ({'done' if new == writing else 'killed before it was in place'})")
    request.node.user_properties.append(("kill_phases", hit))  # in a JUnit report
    assert new in (writing - EVAL, writing), (hit, new)  # nothing saved is ever lost
    assert step is None or new >= step, (hit, new)
    resume_to(capsys, store, text, new)
    print("kills hit:", "; ".join(hit))  # shown with -rA


def test_sigkill_during_a_checkpoint_write(tmp_path, text, capsys):
    """A 1.6M-parameter model makes each write take a while; the kill comes the moment the temporary
    file of a second write appears, while the first checkpoint stands."""
    store, run = tmp_path / "store", tmp_path / "store" / "r"
    proc = spawn(train_args(store, text, resume=False, max_iters=100_000, big=True))
    tmp = run / f".{checkpoint.LAST}.tmp-{proc.pid}"
    try:
        while True:  # a run that never writes again is ended by pytest-timeout (pyproject), not a clock here
            while not ((run / checkpoint.LAST).exists() and tmp.exists()):
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.001)
            os.kill(proc.pid, signal.SIGSTOP)  # frozen: the write cannot finish between this check and the kill
            if tmp.exists():
                break
            os.kill(proc.pid, signal.SIGCONT)  # it was renamed in between: wait for the next write
    finally:
        kill(proc)
    before = checkpoint.read_info(run / checkpoint.LAST).state["step"]
    assert tmp.exists()  # killed mid-write: the half-written file is still there ...
    assert saved_step(run) == before  # ... and the checkpoint it was to replace is intact
    assert [r.name for r in checkpoint.list_runs(store)] == ["r"]  # readers ignore the temporary file
    resume_to(capsys, store, text, before, big=True)  # continues from it; the stale temporary file is cleaned up
