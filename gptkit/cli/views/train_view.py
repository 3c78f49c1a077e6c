"""Rendering of training: progress on stderr, the end-of-run loss curve.

Owns how a run looks: a rich progress view when stderr is a terminal, plain log lines otherwise
(so logs in files and CI stay readable); the dataset build before it is drawn by `data_view`. It computes nothing. Streaming generated text is
completion.py's job; inspect and tokenize have their own views.
"""

from __future__ import annotations

import math
import os
import sys
from typing import IO, Any

from gptkit.cli.views.data_view import BuildProgress


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def eta(e: dict[str, Any]) -> float | None:
    """Seconds left: by steps at the current pace, or the time budget if that ends sooner."""
    if e["step"] <= 0:
        return None
    left = (e["max_iters"] - e["step"]) * e["elapsed"] / e["step"]
    if e.get("max_time"):
        left = min(left, e["max_time"] - e["elapsed"])
    return max(0.0, left)


def loss_curve(points: list[tuple[int, float]], width: int = 60, height: int = 8) -> list[str]:
    """A validation-loss curve as text rows (one column per step bucket), for the end of a run."""
    steps = [p[0] for p in points]
    losses = [p[1] for p in points]
    lo, hi = min(losses), max(losses)
    span = (hi - lo) or 1.0
    cols = width
    grid = [[" "] * cols for _ in range(height)]
    for c in range(cols):
        f = c * (len(points) - 1) / max(1, cols - 1)  # interpolate between evaluations
        i = min(int(f), len(points) - 2) if len(points) > 1 else 0
        value = losses[i] + (losses[min(i + 1, len(points) - 1)] - losses[i]) * (f - i)
        r = round((value - lo) / span * (height - 1))
        grid[height - 1 - r][c] = "•"
    rows = ["val loss"]
    for r, cells in enumerate(grid):
        label = hi - r * span / max(1, height - 1)
        rows.append(f"{label:8.3f} │{''.join(cells)}")
    rows.append(" " * 9 + "└" + "─" * cols)
    first, last = f"step {steps[0]}", f"step {steps[-1]}"
    rows.append(" " * 10 + first + last.rjust(cols - len(first)))
    return rows


def settings_line(preset: str | None, default_on: str | None, changed: dict[str, Any]) -> str:
    """train's first line: the preset a new run starts from (`default_on`: the device that chose it)
    and every setting that differs from it; for a resumed run (preset None) what this command changes."""
    pairs = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in changed.items())
    if preset is None:
        return "settings: the resumed run's own" + (f"; changed by this command: {pairs}" if pairs else "")
    head = f"settings: preset {preset}" + (f" (the default on {default_on})" if default_on else "")
    return head + (f"; differs: {pairs}" if pairs else ", unchanged")


class TrainView:
    """Callback for train(): a rich progress bar on a terminal, one line per eval/step interval otherwise."""

    def __init__(self, stream: IO[str] | None = None, log_every: int = 50, quiet: bool = False,
                 first_line: str | None = None) -> None:
        self.stream = stream or sys.stderr
        self.first_line = first_line  # the settings the run uses: printed before anything else
        self.log_every = log_every
        self.quiet = quiet
        self.tty = self.stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        self.progress = None
        self.task = None
        self.evals: list[dict[str, Any]] = []
        self.data = BuildProgress(not quiet, self.stream, self._first)  # the dataset build before the first step

    def _first(self) -> None:
        """The settings line, once, before the first other line (a dataset build's progress included)."""
        if self.first_line and not self.quiet:
            line, self.first_line = self.first_line, None
            self._line(line)

    def _line(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def __call__(self, e: dict[str, Any]) -> None:
        kind = e["event"]
        if kind in ("data", "skipped"):
            self.data(e)
            return
        if kind == "start":
            self.data.report()  # the dataset is ready
        if kind == "eval":
            self.evals.append(e)
        if kind == "warning":  # even when quiet: it says why the run is slower than it should be
            self._first()
            self._line(f"warning: {e['message']}")
        if self.quiet:
            return
        if kind == "start":
            self._start(e)
        elif kind == "step":
            self._step(e)
        elif kind == "eval":
            self._line(f"step {e['step']:>6} | train loss {e['train_loss']:.4f} | val loss {e['val_loss']:.4f} "
                       f"| {e['val_bpc']:.3f} bits/char | {_fmt_time(e['elapsed'])}{'  *best' if e['best'] else ''}")
        elif kind == "sample":
            self._line("  sample: " + e["text"].replace("\n", "\n          ")[:600])
        elif kind == "done":
            self.close()
            if len(self.evals) >= 2:
                for row in loss_curve([(ev["step"], ev["val_loss"]) for ev in self.evals]):
                    self._line(row)

    def _start(self, e: dict[str, Any]) -> None:
        self._first()
        what = "resuming" if e["resumed"] else "training"
        budget = f"{e['max_iters']} steps" + (f" or {_fmt_time(e['max_time'])}" if e.get("max_time") else "")
        self._line(f"{what} {e['params'] / 1e6:.2f}M parameters on {e['device']} ({e['dtype']}"
                   f"{', ' + str(e['world_size']) + ' processes' if e['world_size'] > 1 else ''}) | "
                   f"tokenizer {e['tokenizer']} ({e['vocab_size']} ids) | {e['train_tokens']:,} train / "
                   f"{e['val_tokens']:,} val tokens | {budget}")
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("step {task.completed:>6.0f}"), BarColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=Console(file=self.stream), transient=True)
            self.progress.start()
            self.task = self.progress.add_task("train", total=e["max_iters"], completed=e["step"], info="")

    def _step(self, e: dict[str, Any]) -> None:
        mfu = f" | MFU {100 * e['mfu']:.1f}%" if e.get("mfu") else ""
        info = (f"loss {e['loss']:.4f} | lr {e['lr']:.2e} | {e['tokens_per_sec']:,.0f} tok/s{mfu} | "
                f"grad {e['grad_norm']:.2f}")
        if self.progress is not None:
            total = e["max_iters"]
            if e.get("max_time"):  # show time-bounded runs by the fraction of whichever budget is nearer
                total = min(total, max(e["step"], int(e["step"] * e["max_time"] / max(e["elapsed"], 1e-9))))
            self.progress.update(self.task, completed=e["step"], total=total, info=info)
        elif e["step"] % self.log_every == 0:
            self._line(f"step {e['step']:>6} | {info} | {_fmt_time(e['elapsed'])} | ETA {_fmt_time(eta(e))}")

    def close(self) -> None:
        self.data.close()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
