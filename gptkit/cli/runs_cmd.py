"""`gptkit runs`: the runs in the checkpoint store, side by side, and their validation curves.

Reads only checkpoint headers (`checkpoint.run_summary`: no tensor, no torch) and each run's
metrics.jsonl (`checkpoint.val_curve`); a checkpoint it cannot read is listed as unreadable, with
the reason, never a crash. The drawing is `cli/views/runs_view.py`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from gptkit.cli.app import Json, Store, command, handle_errors
from gptkit.errors import CheckpointError, UsageError
from gptkit.fsio import atomic_write, cannot_write, check_output_file


@command("runs", "List the runs in the store; plot their curves.")
def runs_command(
    runs: Optional[list[str]] = typer.Argument(None, metavar="RUN", show_default=False,
                                               help="runs to show (names in the store, or run folders) "
                                                    "[default: every run]"),
    plot: bool = typer.Option(False, "--plot", help="draw the runs' validation curves together (bits/char by "
                                                   "step, from each run's metrics.jsonl)"),
    save: Optional[Path] = typer.Option(None, "--save", metavar="<file>", help="write the plot as a picture, "
                                        "FILE.svg (implies --plot)"),
    json_out: Json = False,
    store: Store = None,
) -> None:
    """List the runs in the store, newest first: steps, tokens seen, size, tokenizer, best validation
    loss, training time; --plot draws their validation curves together."""
    with handle_errors():
        if save is not None:
            if save.suffix.lower() != ".svg":
                raise UsageError(f"--save writes an .svg picture, not {save.name!r}")
            check_output_file(save, "--save FILE")
        from gptkit import checkpoint as ckpt

        store = store or ckpt.default_store()
        folders = [_run_folder(r, store) for r in runs] if runs else ckpt.list_runs(store)
        summaries = sorted((ckpt.run_summary(f) for f in folders), key=lambda s: -s["updated"])
        curves = _curves(folders, summaries) if plot or save is not None else None
        if json_out:
            for s in summaries:
                typer.echo(json.dumps({**s, **({"curve": curves.get(s["name"], [])} if curves is not None else {})},
                                      ensure_ascii=False))
        elif not summaries:
            typer.echo(f"no runs in {str(store)!r}; train one with `gptkit train FILE`", err=True)
        else:
            _show(summaries, curves, save)


def _run_folder(ref: str, store: Path) -> Path:
    """A run named on the command line: a folder holding a checkpoint, or a run name in the store."""
    from gptkit.checkpoint import BEST, LAST, list_runs

    for p in (Path(ref), store / ref):
        if (p / LAST).is_file() or (p / BEST).is_file():
            return p
    names = ", ".join(r.name for r in list_runs(store)) or "none"
    raise CheckpointError(f"no run {ref!r} with a checkpoint (runs in {str(store)!r}: {names})")


def _curves(folders: list[Path], summaries: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    from gptkit.checkpoint import val_curve

    by_name = {f.name: f for f in folders}
    return {s["name"]: val_curve(by_name[s["name"]], s.get("step")) for s in summaries}


def _show(summaries: list[dict[str, Any]], curves: dict[str, list[dict[str, float]]] | None,
          save: Path | None) -> None:
    from gptkit.cli.views import runs_view as view

    terminal = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    if curves is None:
        if terminal:
            from rich.console import Console

            view.rich_table(Console(highlight=False), summaries)
        else:
            sys.stdout.write(view.plain_table(summaries))
        return
    drawn = {name: [(p["step"], p["val_bpc"]) for p in pts if "val_bpc" in p] for name, pts in curves.items()}
    drawn = {name: pts for name, pts in drawn.items() if pts}
    if not drawn:
        raise UsageError("no evaluations to plot: these runs' metrics.jsonl hold no eval events yet")
    plot = view.text_plot(drawn, "val bits/char", colour=terminal)
    if terminal:
        from rich.console import Console

        Console(highlight=False).print(plot, end="")
    else:
        sys.stdout.write(plot)
    if save is not None:
        picture = view.svg_plot(drawn, "validation loss (bits/char)")
        try:
            atomic_write(save, lambda tmp: tmp.write_text(picture, encoding="utf-8"))
        except OSError as e:
            raise cannot_write(save, e, "--save FILE") from None
