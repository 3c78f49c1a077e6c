"""Training for real on tinyshakespeare: loss falls, checkpoints and metrics are written, resume is exact."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal

import pytest
import torch

from gptkit import checkpoint
from gptkit.config import resolve_config
from gptkit.errors import TrainingError, UsageError
from gptkit.optim import lr_at
from gptkit.train import train
from tests.conftest import SHAKESPEARE, reference_losses


def test_held_out_loss_falls_far_below_ln_vocab(trained_run):
    """Far below what a model that sees no context can reach on the same split: the add-one bigram
    (2.48 nats; the unigram is 3.35, chance ln 65 = 4.17), computed here from the run's own data."""
    result = trained_run["result"]
    assert result.step == 400
    ref = reference_losses(trained_run["run_dir"] / "data")
    assert ref["bigram"] < ref["unigram"] < math.log(65)
    assert result.val_loss < ref["bigram"] - 0.1, (result.val_loss, ref)
    assert result.val_bpc == pytest.approx(result.val_loss / math.log(2), rel=1e-6)  # char: 1 token = 1 char
    evals = [e for e in trained_run["events"] if e["event"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]


def test_metrics_jsonl_is_valid_json_lines(trained_run):
    lines = (trained_run["run_dir"] / "metrics.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert {e["event"] for e in events} >= {"start", "eval", "done"}
    assert (trained_run["run_dir"] / checkpoint.BEST).is_file()


def test_warmup_then_cosine_schedule():
    _, tc = resolve_config(None, None, dict(max_iters=1000, warmup_iters=100, learning_rate=1e-3, min_lr=1e-4))
    assert lr_at(tc, 0, 0.0) < lr_at(tc, 50, 0.0) < lr_at(tc, 99, 0.0) <= 1e-3
    assert lr_at(tc, 100, 0.0) == pytest.approx(1e-3)
    assert lr_at(tc, 550, 0.5) == pytest.approx(5.5e-4)
    assert lr_at(tc, 1000, 1.0) == pytest.approx(1e-4)


def _tiny(**kw):
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, eval_interval=10, eval_iters=2,
                warmup_iters=5)
    return resolve_config("tiny", None, {**base, **kw})


def _weights(run_dir):
    info = checkpoint.read_info(run_dir / checkpoint.LAST)
    return checkpoint.load_tensors(info, "model."), checkpoint.load_tensors(info, "optim.")


def _assert_bit_identical(run_a, run_b):
    """The two runs' last checkpoints hold the same weights and optimizer state, bit for bit."""
    (a, oa), (b, ob) = _weights(run_a), _weights(run_b)
    assert a.keys() == b.keys() and oa.keys() == ob.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k


def interrupt_at(step: int, sig: int = signal.SIGINT):
    """An event callback that presses Ctrl-C (SIGINT to ourselves; or sends SIGTERM) once `step` is done."""
    def on_event(e):
        if e["event"] == "step" and e["step"] == step:
            os.kill(os.getpid(), sig)
    return on_event


# _tiny's steps are 24 sequences of --tokens-per-step in micro-batches of 4: 6 accumulated each
@pytest.mark.parametrize("case", [
    dict(optimizer="adamw"),
    dict(optimizer="muon"),
    dict(optimizer="adamw", dropout=0.2, signal=signal.SIGTERM),  # the torch RNG restored, or dropout differs
    dict(optimizer="adamw", dropout=0.1, batch_size=12, max_time=15.0),  # 2 micro-batches; lr by a fake clock
    dict(optimizer="adamw", init_from=True),  # a fine-tuning run resumed
], ids=["adamw", "muon", "dropout-sigterm", "dropout-accum2-max-time", "init-from"])
def test_resume_is_bit_identical_to_a_straight_run(tmp_path, monkeypatch, case):
    case = dict(case)
    sig, init = case.pop("signal", signal.SIGINT), case.pop("init_from", False)
    mc, tc = _tiny(max_iters=20, **case)
    kw = {}
    if init:
        base_mc, base_tc = _tiny(max_iters=8)
        train(base_mc, base_tc, str(SHAKESPEARE), tmp_path / "base", tmp_path)
        kw["init_from"] = str(tmp_path / "base")
    clock = FakeClock(monkeypatch, lambda step: 1.0, 0.5) if tc.max_time else None  # 1 s a step, 0.5 an eval
    events: list[dict] = []
    straight = train(mc, tc, str(SHAKESPEARE), tmp_path / "straight", tmp_path, clock=clock, on_event=events.append,
                     **kw)
    first = train(mc, tc, str(SHAKESPEARE), tmp_path / "split", tmp_path, clock=clock,
                  on_event=interrupt_at(13, sig), **kw)
    assert first.interrupted and first.step == 13  # the signal finished the step, saved, and stopped
    done = train(mc, tc, str(tmp_path / "split" / "data"), tmp_path / "split", tmp_path, resume=True, clock=clock)
    assert done.step == straight.step
    _assert_bit_identical(tmp_path / "straight", tmp_path / "split")
    if tc.max_time:  # the time budget, not --max-iters, ended both, annealed by time
        assert straight.step < 20 and not straight.interrupted and straight.more == "--max-time 30s"
        start = next(e for e in events if e["event"] == "start")
        assert start["grad_accum"] == 2 and start["max_time"] == 15.0


def test_a_resume_keeps_the_precision_its_run_measured(tmp_path, monkeypatch):
    """`--dtype auto` on a CPU is measured. Measured again on resume, a close call could flip with the
    machine's load, and the resumed run then differed from the straight one (the Korean guide's did, in
    the 4th decimal). Here the measurement favours bf16 when the runs start and fp32 when one resumes:
    the resume keeps bf16 and ends bit-identical to the straight run; `--dtype` still chooses again."""
    from gptkit import runtime

    verdict = [torch.bfloat16]
    monkeypatch.setattr(runtime, "faster_cpu_dtype", lambda step: (verdict[0], 0.4 if verdict[0] == torch.bfloat16 else 1.1))
    monkeypatch.setattr(runtime, "_CPU_DTYPES", {})
    mc, tc = _tiny(max_iters=20, dtype="auto", optimizer="adamw")
    train(mc, tc, str(SHAKESPEARE), tmp_path / "straight", tmp_path)
    train(mc, tc, str(SHAKESPEARE), tmp_path / "split", tmp_path, on_event=interrupt_at(13))
    verdict[0] = torch.float32  # the machine now measures the other way (and nothing is cached)
    monkeypatch.setattr(runtime, "_CPU_DTYPES", {})
    events: list[dict] = []
    train(mc, tc, str(tmp_path / "split" / "data"), tmp_path / "split", tmp_path, resume=True, on_event=events.append)
    start = next(e for e in events if e["event"] == "start")
    assert start["dtype"] == "bfloat16" and "as this run measured" in start["dtype_note"]
    _assert_bit_identical(tmp_path / "straight", tmp_path / "split")
    assert checkpoint.read_info(tmp_path / "split" / checkpoint.LAST).state["precision"] == {
        "device": "cpu", "dtype": "bfloat16", "measured": True}
    mc, tc = _tiny(max_iters=22, dtype="float32", optimizer="adamw")  # a flag chooses again
    events.clear()
    train(mc, tc, str(tmp_path / "split" / "data"), tmp_path / "split", tmp_path, resume=True, on_event=events.append,
          explicit={"max_iters", "dtype"})
    assert next(e for e in events if e["event"] == "start")["dtype"] == "float32"


def test_resume_alone_takes_the_runs_own_settings(tmp_path):
    """`--resume` with no other flag: the run's batch size, learning rates, warmup, optimizer and budget
    come from its checkpoint, not from today's defaults, so it still ends bit-identical to a straight run."""
    mc, tc = _tiny(max_iters=20, learning_rate=2e-3, warmup_iters=3, optimizer="adamw", batch_size=3)
    straight: list[dict] = []
    train(mc, tc, str(SHAKESPEARE), tmp_path / "straight", tmp_path, on_event=straight.append)
    train(mc, tc, str(SHAKESPEARE), tmp_path / "split", tmp_path, on_event=interrupt_at(7))
    default_mc, default_tc = resolve_config(None, None, {})  # what the command line holds with no flags
    assert (default_tc.batch_size, default_tc.max_iters, default_tc.optimizer) != (3, 20, "adamw")
    done = train(default_mc, default_tc, str(tmp_path / "split" / "data"), tmp_path / "split", tmp_path,
                 resume=True, explicit=set())
    assert done.step == 20
    _assert_bit_identical(tmp_path / "straight", tmp_path / "split")
    saved = checkpoint.read_info(tmp_path / "split" / checkpoint.LAST).meta["train_config"]
    assert (saved["batch_size"], saved["learning_rate"], saved["max_iters"]) == (3, 2e-3, 20)

    # its budget is spent: one line saying how to go on, and the checkpoint stays as it was
    before = (tmp_path / "split" / checkpoint.LAST).read_bytes()
    with pytest.raises(UsageError, match=r"has run 20 of its --max-iters 20 .*raise --max-iters"):
        train(default_mc, default_tc, None, tmp_path / "split", tmp_path, resume=True, explicit=set())
    assert (tmp_path / "split" / checkpoint.LAST).read_bytes() == before
    more = dataclasses.replace(default_tc, max_iters=23)  # a flag on the command line wins
    events: list[dict] = []
    assert train(default_mc, more, str(tmp_path / "split" / "data"), tmp_path / "split", tmp_path, resume=True,
                 explicit={"max_iters"}, on_event=events.append).step == 23

    # the longer budget stretches the cosine (README): the rate rises again, to where a 23-step run is at step 20
    def cosine(step, total):  # warmup 3, then from 2e-3 down to the run's min_lr over the rest of the steps
        return saved["min_lr"] + 0.5 * (1 + math.cos(math.pi * (step - 3) / (total - 3))) * (2e-3 - saved["min_lr"])

    ended = [e["lr"] for e in straight if e["event"] == "step"]
    again = [e["lr"] for e in events if e["event"] == "step"]
    assert ended[-1] == pytest.approx(cosine(19, 20), rel=1e-9)
    assert again == pytest.approx([cosine(s, 23) for s in (20, 21, 22)], rel=1e-9)
    assert again[0] > ended[-1]


def test_a_spent_time_budget_is_named():
    from gptkit.train import _check_budget_left

    _, tc = _tiny(max_iters=100, max_time="20s")
    _check_budget_left(tc, {"step": 50, "elapsed": 18.5}, "r")  # time left: trains on
    with pytest.raises(UsageError, match=r"trained 21s of its --max-time 20s .*raise --max-time"):
        _check_budget_left(tc, {"step": 50, "elapsed": 21.0}, "r")


def _poison_a_weight(path):
    """The checkpoint at `path` rewritten with one weight NaN, everything else (metadata, moments) as saved."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    tensors["model.transformer.wte.weight"][0, 0] = float("nan")
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("how", ["diverging-lr", "nan-weight"])
def test_a_diverging_run_stops_and_keeps_the_last_checkpoint(tmp_path, how):
    """A real divergence, not a patched forward: resumed at a learning rate of 1e4 without clipping,
    the weights overflow through the optimizer within a few steps; or a checkpoint holds a NaN weight.
    The non-finite loss stops the run with one line before anything is saved over the last checkpoint."""
    mc, tc = _tiny(max_iters=10)
    train(mc, tc, str(SHAKESPEARE), tmp_path / "r", tmp_path)
    last = tmp_path / "r" / checkpoint.LAST
    if how == "nan-weight":
        _poison_a_weight(last)
    before = last.read_bytes()
    changes = dict(max_iters=40, eval_interval=1000)  # no evaluation before the end: a run that never diverges saves
    if how == "diverging-lr":
        changes.update(learning_rate=1e4, min_lr=1e4, grad_clip=0.0)
    mc, tc = _tiny(**changes)
    events: list[dict] = []
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) .*lower --learning-rate"):
        train(mc, tc, str(tmp_path / "r" / "data"), tmp_path / "r", tmp_path, resume=True, explicit=set(changes),
              on_event=events.append)
    assert last.read_bytes() == before
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert not steps or steps[-1] < 40, steps  # it stopped at the divergence, not at its budget


def test_best_keeps_the_lowest_evaluation_without_moments_and_sample_reads_it(tmp_path, capsys):
    """best.safetensors is written only when validation improves, and without optimizer moments; a
    later, worse evaluation (a learning-rate spike) leaves it as it was. `sample` and `inspect` read
    it, `--resume` continues from last."""
    from gptkit.generate import generate
    from tests.conftest import run_here

    run = tmp_path / "r"
    events: list[dict] = []
    mc, tc = _tiny(max_iters=10)
    train(mc, tc, str(SHAKESPEARE), run, tmp_path, on_event=events.append)
    before = (run / checkpoint.BEST).read_bytes()
    spike = dict(max_iters=20, learning_rate=1.0, min_lr=1.0)
    mc, tc = _tiny(**spike)
    train(mc, tc, str(run / "data"), run, tmp_path, resume=True, explicit=set(spike), on_event=events.append)
    evals = {e["step"]: e["val_loss"] for e in events if e["event"] == "eval"}
    assert sorted(evals) == [10, 20] and math.isfinite(evals[20]) and evals[20] > evals[10] + 0.5, evals
    best, last = checkpoint.read_info(run / checkpoint.BEST), checkpoint.read_info(run / checkpoint.LAST)
    assert best.state["step"] == min(evals, key=evals.get) == 10 and last.state["step"] == 20
    assert (run / checkpoint.BEST).read_bytes() == before  # not written again by the worse evaluation
    assert not any(k.startswith("optim.") for k in best.tensors)
    assert any(k.startswith("optim.") for k in last.tensors)

    greedy = {}
    for name in (checkpoint.BEST, checkpoint.LAST):
        model, tok, _ = checkpoint.load_for_inference(run / name)
        greedy[name] = list(generate(model, tok.encode("ROMEO:"), 12, temperature=0))
    assert greedy[checkpoint.BEST] != greedy[checkpoint.LAST]
    proc = run_here(capsys, "sample", "-c", str(run), "-p", "ROMEO:", "-n", "12", "--temperature", "0", "--no-echo",
                    "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["token_ids"] == greedy[checkpoint.BEST]
    proc = run_here(capsys, "inspect", str(run), "--json")
    assert json.loads(proc.stdout)["summary"]["path"] == str(run / checkpoint.BEST), proc.stderr

    resumed: list[dict] = []
    mc, tc = _tiny(max_iters=21)
    train(mc, tc, str(run / "data"), run, tmp_path, resume=True, explicit={"max_iters"}, on_event=resumed.append)
    assert next(e for e in resumed if e["event"] == "start")["step"] == 20  # from last, not from best's 10


class FakeClock:
    """The loop's clock, moved only by the loop's own work: `step_s(step)` seconds for each training
    step and `eval_s` for each evaluation. The timed-run rules are checked on it, never on a wall
    clock (a threshold in real seconds fails on a machine faster or slower than the one it was tuned on)."""

    def __init__(self, monkeypatch, step_s, eval_s: float):
        import gptkit.loop

        self.now = 0.0
        real_step, real_eval = gptkit.loop.Loop.train_step, gptkit.loop.Loop.evaluate_and_save

        def train_step(loop, elapsed):
            self.now += step_s(loop.state.step)  # the step's time has passed when its loss is read
            return real_step(loop, elapsed)

        def evaluate_and_save(loop, *args):
            self.now += eval_s
            return real_eval(loop, *args)

        monkeypatch.setattr(gptkit.loop.Loop, "train_step", train_step)
        monkeypatch.setattr(gptkit.loop.Loop, "evaluate_and_save", evaluate_and_save)

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """tinyshakespeare tokenized once for this file's short runs (a dataset folder)."""
    root = tmp_path_factory.mktemp("data")
    mc, tc = _tiny(max_iters=1, eval_interval=1)
    train(mc, tc, str(SHAKESPEARE), root / "r", root)
    return str(root / "r" / "data")


def _timed(tmp_path, monkeypatch, small_data, step_s, eval_s, **kw):
    clock = FakeClock(monkeypatch, step_s, eval_s)
    mc, tc = _tiny(**{"max_iters": 10**6, "max_time": 60.0, "eval_interval": 10**6, "tokens_per_step": 4 * 32, **kw})
    events: list[dict] = []
    result = train(mc, tc, small_data, tmp_path / "t", tmp_path, on_event=events.append, clock=clock)
    return result, events


def test_a_timed_run_reserves_its_estimated_final_evaluation(tmp_path, monkeypatch, small_data):
    """No evaluation before the budget runs out: the final one's cost is estimated from the step time
    (2 splits x 15 forwards, a forward a third of a 1-s step: 10 s, as it really costs here), so the
    run ends within one step of its 60 s, not 10 s past it."""
    result, events = _timed(tmp_path, monkeypatch, small_data, lambda step: 1.0, 10.0, eval_iters=15)
    evals = [e for e in events if e["event"] == "eval"]
    assert len(evals) == 1 and evals[0]["step"] == result.step  # the one evaluation came at the end
    assert 60.0 - 1.0 < result.elapsed <= 60.0, result.elapsed
    assert not result.interrupted and result.more == "--max-time 120s"


def test_a_timed_run_reserves_the_measured_cost_of_its_evaluations(tmp_path, monkeypatch, small_data):
    """Evaluations every 10 steps cost 8 s, far more than 1 forward per split suggests: once one
    has been timed, its cost is the reserve, so the budget holds; a periodic evaluation that lands
    in the reserve is the last one (no further step, no second evaluation of the same weights)."""
    result, events = _timed(tmp_path, monkeypatch, small_data, lambda step: 1.0, 8.0, eval_iters=1,
                            eval_interval=10)
    assert result.elapsed <= 60.0, result.elapsed
    assert 60.0 - 8.0 - 1.0 < result.elapsed, result.elapsed  # and no more than a step and an eval early
    steps = [e["step"] for e in events if e["event"] == "eval"]
    assert steps == sorted(set(steps)) and steps[-1] == result.step


def test_a_slow_first_step_does_not_end_a_timed_run(tmp_path, monkeypatch, small_data):
    """The first step of a process is slow (allocation, lazy init; more so on a busy machine). Timed
    into the reserve for the final evaluation (150 forwards a split at 30 s a step), it once ended the
    quick start's 60-s run after its first step. Two guards keep it training through its budget: the
    first step is not timed, and a reserve guessed before any evaluation is at most a quarter of the
    budget (here the guess, 12.5 s from the 0.125-s steps, is the evaluation's real cost)."""
    result, _ = _timed(tmp_path, monkeypatch, small_data, lambda step: 30.0 if step == 0 else 0.125, 12.5,
                       eval_iters=150)
    assert result.step > 100, result.step
    assert 60.0 - 0.125 < result.elapsed <= 60.0, result.elapsed


def test_a_pessimistic_guess_of_the_final_evaluation_does_not_end_a_timed_run(tmp_path, monkeypatch, small_data):
    """1-s steps and 150 forwards a split guess a 100-s final evaluation, more than the whole 60-s
    budget; it really takes 5 s. The guess is capped at a quarter of the budget (15 s), so the run
    trains until 45 s and ends at 50 s instead of stopping after its second step."""
    result, _ = _timed(tmp_path, monkeypatch, small_data, lambda step: 1.0, 5.0, eval_iters=150)
    assert result.step == 45 and result.elapsed == 50.0, (result.step, result.elapsed)


def test_a_timed_run_ends_annealed(tmp_path, monkeypatch, small_data):
    """The learning-rate decay follows the time budget when it runs out first (README): the last
    step's rate is near --min-lr, far from where --max-iters alone would put it."""
    result, events = _timed(tmp_path, monkeypatch, small_data, lambda step: 1.0, 1.5, eval_iters=2,
                            learning_rate=1e-3, min_lr=1e-4, warmup_iters=2)
    lrs = [e["lr"] for e in events if e["event"] == "step"]
    assert len(lrs) == result.step  # every step reported
    assert lrs[-1] < 1e-4 + 0.01 * (1e-3 - 1e-4), lrs[-1]
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))  # decaying all the way


def test_precision_flags_on_a_cpu():
    """auto is fp32 until a run has measured bf16 at its model's shapes (test_train_runtime.py);
    explicit choices are kept; fp16 is for GPUs."""
    from gptkit import runtime

    cpu = torch.device("cpu")
    assert runtime.pick_dtype("auto", cpu) == torch.float32
    assert runtime.pick_dtype("bfloat16", cpu) == torch.bfloat16 and runtime.pick_dtype("float32", cpu) == torch.float32
    with pytest.raises(UsageError):
        runtime.pick_dtype("float16", cpu)
