"""How a dataset build looks on stderr, for `gptkit train` and `gptkit tokenize --out` alike.

Owns the build's progress (phase, bytes and files done, MB/s, ETA): a rich bar at a terminal, else a
plain line every PLAIN_EVERY seconds once a build has run that long (logs of short builds stay
empty); the line that counts and names the files `--skip-bad` left out (shown even with --quiet: a
file is never dropped silently); and the summary `tokenize --out` ends with. It computes nothing:
the builder sends "data" and "skipped" events.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

PLAIN_EVERY = 10.0  # seconds between plain progress lines
NAMED = 3  # skipped files named on the line; meta.json lists them all


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_line(e: dict[str, Any], seconds: float) -> str:
    """'encoding: 512.0 of 1,024.0 MB, 300 of 1,000 files, 31.2 MB/s, ETA 0:16'."""
    mb, total = e["bytes"] / 1e6, e["total_bytes"] / 1e6
    rate = mb / seconds if seconds > 0 else 0.0
    eta = f", ETA {_clock((total - mb) / rate)}" if rate > 0 and total > mb else ""
    files = f", {e['files']:,} of {e['total_files']:,} files" if e["total_files"] > 1 else ""
    return f"{e['phase']}: {mb:,.1f} of {total:,.1f} MB{files}, {rate:,.1f} MB/s{eta}"


def skipped_line(skipped: list[dict[str, Any]]) -> str:
    names = ", ".join(f"{s['name']!r} ({s['reason'].split(';')[0].removeprefix(repr(s['name'])).strip()})"
                      for s in skipped[:NAMED])
    more = f" and {len(skipped) - NAMED} more (meta.json lists them)" if len(skipped) > NAMED else ""
    return f"skipped {len(skipped):,} bad file{'s' * (len(skipped) != 1)} (--skip-bad): {names}{more}"


class BuildProgress:
    """Callback for the builder's events; `close()` ends the bar, `report()` also names skipped files."""

    def __init__(self, enabled: bool = True, stream: IO[str] | None = None,
                 before_output: Callable[[], None] = lambda: None) -> None:
        self.stream = stream or sys.stderr
        self.before_output = before_output  # called before each thing shown (train's settings line goes first)
        self.enabled = enabled
        self.tty = self.stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        self.last_line = 0.0
        self.skipped: list[dict[str, Any]] = []

    def __call__(self, e: dict[str, Any]) -> None:
        if e["event"] == "skipped":
            self.skipped.append(e)
        elif e["event"] == "data" and self.enabled:
            now = time.monotonic()
            start = self.started.setdefault(e["phase"], now)
            if self.tty:
                self._bar(e)
            elif now - min(self.started.values()) >= PLAIN_EVERY and now - self.last_line >= PLAIN_EVERY:
                self.last_line = now
                self.before_output()
                print(progress_line(e, now - start), file=self.stream, flush=True)

    def _bar(self, e: dict[str, Any]) -> None:
        if self.progress is None:
            self.before_output()
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.progress = Progress(TextColumn("{task.description:<13}"), BarColumn(), DownloadColumn(),
                                     TextColumn("{task.fields[files]}"), TransferSpeedColumn(), TimeRemainingColumn(),
                                     console=Console(file=self.stream), transient=True)
            self.progress.start()
        files = f"{e['files']:,}/{e['total_files']:,} files" if e["total_files"] > 1 else ""
        if e["phase"] not in self.tasks:
            self.tasks[e["phase"]] = self.progress.add_task(e["phase"], total=e["total_bytes"], files=files)
        self.progress.update(self.tasks[e["phase"]], completed=e["bytes"], files=files)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def report(self) -> None:
        """After a build that succeeded: the line naming what --skip-bad left out (a failed one has its error)."""
        self.close()
        if self.skipped:
            self.before_output()
            print(skipped_line(self.skipped), file=self.stream, flush=True)
            self.skipped = []


def build_summary(ds: Any) -> str:
    m = ds.meta
    n = len(m.get("inputs", [])) or 1
    return (f"wrote {ds.path}/: {m['train_tokens']:,} train + {m['val_tokens']:,} val tokens from {n:,} "
            f"file{'s' * (n != 1)} ({ds.tokenizer.name}, {ds.tokenizer.vocab_size:,} ids, {m['dtype']}); "
            f"train on it with: gptkit train {ds.path}")
