"""What `gptkit train` shows as it runs, fed synthetic events (the view computes nothing, it formats):
the settings and start lines, a log line every 50 steps with its ETA in a pipe, evaluations, the
warning a quiet run still shows, the loss curve at the end, and the live bar on a terminal."""

from __future__ import annotations

import io

from gptkit.cli.views.train_view import TrainView

START = {"event": "start", "step": 0, "params": 1_234_567, "device": "cpu", "dtype": "float32", "world_size": 1,
         "run_dir": "checkpoints/r", "tokens_per_step": 768, "grad_accum": 1, "batch_size": 12, "compiled": False,
         "dtype_note": None, "max_iters": 200, "max_time": None, "train_tokens": 1_003_854, "val_tokens": 111_540,
         "vocab_size": 65, "tokenizer": "char", "resumed": False}


def step(n: int, **kw) -> dict:
    """Step n of a run at 0.5 s a step."""
    return {"event": "step", "step": n, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.75, "tokens_per_sec": 12_345.6,
            "step_time": 0.5, "mfu": None, "elapsed": 0.5 * n, "max_iters": 200, "max_time": None, **kw}


def evaluation(n: int, val: float, best: bool) -> dict:
    return {"event": "eval", "step": n, "train_loss": val - 0.1, "val_loss": val, "val_bpc": val / 0.6931471805599453,
            "elapsed": 0.5 * n, "best": best, "tokens_seen": 768 * n}


def lines_of(events, **kw) -> list[str]:
    out = io.StringIO()
    view = TrainView(out, **kw)
    for e in events:
        view(e)
    return out.getvalue().splitlines()


def test_in_a_pipe_a_line_every_50_steps_with_the_eta_of_the_nearer_budget():
    events = [START, *(step(n) for n in range(1, 101)), evaluation(100, 2.2, True)]
    lines = lines_of(events, first_line="settings: preset tiny, unchanged")
    assert lines[0] == "settings: preset tiny, unchanged"
    assert lines[1] == ("training 1.23M parameters on cpu (float32) | tokenizer char (65 ids) | 1,003,854 train / "
                        "111,540 val tokens | 200 steps")
    # 150 steps left at 0.5 s: 75 s; 100 left: 50 s
    assert lines[2] == "step     50 | loss 2.5000 | lr 1.00e-03 | 12,346 tok/s | grad 0.75 | 0:25 | ETA 1:15"
    assert lines[3] == "step    100 | loss 2.5000 | lr 1.00e-03 | 12,346 tok/s | grad 0.75 | 0:50 | ETA 0:50"
    assert lines[4] == "step    100 | train loss 2.1000 | val loss 2.2000 | 3.174 bits/char | 0:50  *best"
    assert len(lines) == 5

    timed = {**START, "max_time": 60.0, "world_size": 2, "resumed": True, "params": 85_000_000}
    lines = lines_of([timed, step(50, max_time=60.0, mfu=0.125)])
    assert lines[0].startswith("resuming 85.00M parameters on cpu (float32, 2 processes) |")
    assert lines[0].endswith("| 200 steps or 1:00")
    # 75 s by steps, but the 60-s budget ends 35 s from now; MFU shown when known
    assert lines[1] == "step     50 | loss 2.5000 | lr 1.00e-03 | 12,346 tok/s | MFU 12.5% | grad 0.75 | 0:25 | ETA 0:35"
    assert lines_of([{**START, "step": 0}, step(50, elapsed=7325.0)])[1].endswith("| 2:02:05 | ETA 6:06:15")  # 150 x 7325 / 50 s


def test_a_quiet_run_shows_its_warnings_only_and_the_end_shows_the_curve():
    warning = {"event": "warning", "message": "torch.compile failed; training continues eager"}
    quiet = lines_of([START, step(50), warning, evaluation(100, 2.2, True), {"event": "done"}], quiet=True,
                     first_line="settings: preset tiny, unchanged")
    assert quiet == ["warning: torch.compile failed; training continues eager"]

    evals = [evaluation(100, 2.2, True), evaluation(200, 2.4, False), evaluation(300, 1.8, True)]
    lines = lines_of([START, *evals, {"event": "done"}])
    assert lines[2] == "step    200 | train loss 2.3000 | val loss 2.4000 | 3.462 bits/char | 1:40"  # not best
    curve = lines[4:]
    assert curve[0] == "val loss"
    rows = curve[1:9]  # 8 rows from the highest loss down to the lowest
    assert [r.split("│")[0].strip() for r in (rows[0], rows[-1])] == ["2.400", "1.800"]
    first, middle, last = (min(i for i, r in enumerate(rows) if r.split("│")[1][c:c + 1] == "•") for c in (0, 30, 59))
    # the first evaluation, 2.2, is 4/6 of the way up from 1.8 to 2.4: 4.67 rows of 7 up, the third row from the
    # top; a third of the way along the second is still near 2.4 (the top row); the last, 1.8, the bottom row
    assert (first, middle, last) == (2, 0, 7), "\n".join(curve)
    assert curve[9].strip().startswith("└") and curve[10].split() == ["step", "100", "step", "300"]


def test_on_a_terminal_a_live_bar_sized_by_the_nearer_budget(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    out = Terminal()
    view = TrainView(out)
    view({**START, "max_iters": 10_000, "max_time": 60.0})
    assert view.progress is not None
    view(step(10, max_iters=10_000, max_time=60.0, elapsed=5.0))  # 10 steps in 5 s of 60: about 120 steps in all
    task = view.progress.tasks[0]
    assert (task.completed, task.total) == (10, 120)
    assert task.fields["info"] == "loss 2.5000 | lr 1.00e-03 | 12,346 tok/s | grad 0.75"
    view(step(20, max_iters=10_000, max_time=None, elapsed=10.0))  # no time budget: the step budget
    assert view.progress.tasks[0].total == 10_000
    view(evaluation(20, 2.2, True))
    view({"event": "done"})
    assert view.progress is None  # stopped, the terminal given back
    assert "step     20 | train loss 2.1000 | val loss 2.2000" in out.getvalue()  # printed above the bar
