"""`gptkit train`: resolve the config, check the input cheaply, then call `gptkit.train.train`."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import typer

from gptkit.cli.app import Quiet, Store, command, config_options, handle_errors, with_options
from gptkit.config import (
    PRESETS,
    ModelConfig,
    TrainConfig,
    chosen_preset,
    differences,
    load_toml,
    resolve_config,
    to_dict,
    to_toml,
)
from gptkit.data.chunks import HEAD_BYTES, decode_utf8
from gptkit.errors import EXIT_INTERRUPTED, InputError, UsageError

_OPTIONS = config_options(ModelConfig, "Model", skip=("vocab_size",)) + config_options(TrainConfig, "Training")
Preset = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


def run_name_for(data: str | None) -> str:
    """tinyshakespeare.txt -> 'tinyshakespeare'; a URL -> its file name; nothing -> 'builtin'."""
    if data is None:
        return "builtin"
    stem = Path(data.rstrip("/").split("?")[0]).stem or "run"
    return re.sub(r"[^\w.-]+", "-", stem).strip("-") or "run"


def fresh_run_dir(store: Path, name: str) -> Path:
    """A run folder that holds no checkpoint yet: name, then name-2, name-3, ..."""
    candidate, n = store / name, 1
    while (candidate / "last.safetensors").exists() or (candidate / "best.safetensors").exists():
        n += 1
        candidate = store / f"{name}-{n}"
    return candidate


def check_data_arg(data: str | None) -> None:
    """Cheap checks before importing torch: the path exists and is a file or a dataset folder."""
    if data is None or data.startswith(("http://", "https://")):
        return
    p = Path(data)
    if not p.exists():
        raise InputError(f"{data!r} does not exist; give a UTF-8 text file, a dataset folder, or an http(s) URL")
    if p.is_dir():
        if not (p / "meta.json").is_file():
            raise InputError(f"{data!r} is a directory without meta.json; give a text file or a folder made by "
                             "`gptkit tokenize FILE --out DIR`")
        return
    head = _read_head(p)
    # the first MiB catches empty, binary and non-UTF-8 files before torch is even imported
    decode_utf8(head, repr(data), cut=len(head) == HEAD_BYTES)


def _read_head(p: Path) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(HEAD_BYTES)
    except OSError as e:
        raise InputError(f"cannot read {str(p)!r}: {e.strerror}") from None


@command("train", "Train a GPT on a text; checkpoints go to the store.")
@with_options(_OPTIONS)
def train_command(
    data: Optional[str] = typer.Argument(None, metavar="DATA", help="UTF-8 text file, dataset folder, or http(s) "
                                         "URL [default: the built-in corpus of Python's docstrings]",
                                         show_default=False),
    preset: Optional[Preset] = typer.Option(None, "--preset", show_default=False,
                                            help="the size and recipe to start from [default: quick on CPU, small "
                                                 "on MPS, baby on CUDA]"),
    config: Optional[Path] = typer.Option(None, "--config", metavar="<file>", help="TOML file of settings "
                                          "([model]/[train] tables; --print-config writes one)"),
    print_config: bool = typer.Option(False, "--print-config", help="print the settings this command resolves "
                                      "(preset < --config < flags) as TOML, and exit"),
    run: Optional[str] = typer.Option(None, "--run", "-r", metavar="<name>", show_default=False,
                                      help="run name in the store [default: from the data file name]"),
    run_name: Optional[str] = typer.Option(None, "--run-name", hidden=True),  # --run under torchrun, which claims it
    store: Store = None,
    resume: bool = typer.Option(False, "--resume", help="continue the run from its last.safetensors"),
    init_from: Optional[str] = typer.Option(None, "--init-from", metavar="<ckpt>", help="start from another "
                                            "checkpoint's weights and tokenizer (PATH or RUN)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run named by --run"),
    quiet: Quiet = False,
    **settings: Any,
) -> None:
    """Train a GPT on a text and save checkpoints to checkpoints/<run>/.

    The defaults shown are what a CPU gets: the quick preset's where it sets them. --preset, or a GPU
    (baby) or Apple MPS (small) start from another preset; --print-config shows any run's settings.
    """
    with handle_errors():
        if print_config and resume:
            raise UsageError("--print-config shows a new run's settings; a resumed run keeps its own "
                             "(see `gptkit inspect RUN --json`)")
        device_type = _device_type(settings.get("device"))
        file_values = load_toml(config) if config else {}
        name = chosen_preset(preset, file_values, settings, device_type)
        mc, tc = resolve_config(name, config, settings, device_type=device_type)
        if print_config:
            typer.echo(to_toml(mc, tc, name), nl=False)
            return
        check_data_arg(data)
        # what this command sets (flags, and the --config file): a resumed run keeps its own values for the rest
        explicit = {k for k, v in settings.items() if v is not None} | set(file_values)
        from gptkit.checkpoint import default_store

        store = store or default_store()
        run_dir = _pick_run_dir(store, run or run_name, data, resume, overwrite)
        if resume and data is None:
            data = _recorded_dataset(run_dir)

        from gptkit.cli.views.train_view import TrainView
        from gptkit.train import train

        quiet = quiet or os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 reports
        # the view's first line, once the run has started (a bad input before that stays one error line)
        settings_line = _settings(name, preset is None and "preset" not in file_values, device_type, mc, tc,
                                  explicit, resume)
        view = TrainView(quiet=quiet, first_line=settings_line)
        try:
            result = train(mc, tc, data, run_dir, store, on_event=view, resume=resume, init_from=init_from,
                           explicit=explicit)
        finally:
            view.close()
        if result.step == 0 and result.interrupted:
            typer.echo("interrupted before the first step; nothing saved", err=True)
            raise typer.Exit(EXIT_INTERRUPTED)
        if not quiet:
            _summary(result)
        if result.interrupted:
            raise typer.Exit(EXIT_INTERRUPTED)


def _settings(preset: str, by_device: bool, device_type: str, mc: ModelConfig, tc: TrainConfig, explicit: set[str],
              resume: bool) -> str:
    from gptkit.cli.views.train_view import settings_line

    if resume:  # the checkpoint's settings, but for what this command names
        values = {**to_dict(mc), **to_dict(tc)}
        return settings_line(None, None, {k: values[k] for k in sorted(explicit) if k in values})
    return settings_line(preset, device_type if by_device else None, differences(mc, tc, preset))


def _device_type(device: str | None) -> str:
    """cpu/cuda/mps for choosing the default preset; asks torch only when the flag leaves it open."""
    if device and device != "auto":
        return device.split(":")[0]
    from gptkit.runtime import pick_device

    return pick_device("auto").type


def _pick_run_dir(store: Path, run: str | None, data: str | None, resume: bool, overwrite: bool) -> Path:
    if resume:
        name = run or run_name_for(data)
        if not (store / name).is_dir():
            raise UsageError(f"--resume: no run {name!r} in {str(store)!r}; name it with --run")
        return store / name
    if run is None:
        return fresh_run_dir(store, run_name_for(data))
    run_dir = store / run
    has_ckpt = (run_dir / "last.safetensors").exists() or (run_dir / "best.safetensors").exists()
    if has_ckpt and not overwrite:
        raise UsageError(f"run {run!r} already has checkpoints; pass --resume to continue it, --overwrite to "
                         "replace it, or choose another --run")
    if has_ckpt:
        for name in ("last.safetensors", "best.safetensors", "metrics.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
    return run_dir


def _recorded_dataset(run_dir: Path) -> str | None:
    from gptkit.checkpoint import LAST, read_info

    info = read_info(run_dir / LAST)
    dataset = info.state.get("data", {}).get("dataset")
    if dataset and Path(dataset, "meta.json").is_file():
        return dataset
    return info.state.get("data", {}).get("origin")


def _summary(result) -> None:
    if result.val_loss is not None:
        typer.echo(f"done: step {result.step}, val loss {result.val_loss:.4f} nats/token, "
                   f"{result.val_bpc:.3f} bits/char, {result.elapsed:.0f}s", err=True)
    prog = "gptkit" if Path(sys.argv[0]).name == "gptkit" else "python -m gptkit"
    go_on = (f"resume: {prog} train --run {result.run_dir.name} --resume" if result.more is None
             else f"train on: {prog} train --run {result.run_dir.name} --resume {result.more}")
    typer.echo(f"saved to {result.run_dir}/  — sample: {prog} sample -c {result.run_dir.name} --prompt \"...\"  "
               f"| {go_on}", err=True)
