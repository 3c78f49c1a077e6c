"""`gptkit train`: resolve the config, check the input cheaply, then call `gptkit.train.train`."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from gptkit.cli.app import app, config_options, handle_errors, with_options
from gptkit.config import ModelConfig, TrainConfig, load_toml, resolve_config
from gptkit.data.chunks import HEAD_BYTES, decode_utf8
from gptkit.errors import EXIT_INTERRUPTED, InputError, UsageError

_OPTIONS = config_options(ModelConfig, "Model", skip=("vocab_size",)) + config_options(TrainConfig, "Training")


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


@app.command("train")
@with_options(_OPTIONS)
def train_command(
    data: Optional[str] = typer.Argument(None, help="UTF-8 text file, dataset folder, or http(s) URL "
                                         "[default: the built-in corpus of Python's docstrings]", show_default=False),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="quick | tiny | small | baby | gpt2 "
                                         "[default: quick on CPU, small on MPS, baby on CUDA]"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file of settings ([model]/[train] tables)"),
    run: Optional[str] = typer.Option(None, "--run", "--run-name", "-r",
                                      help="run name under the store (spell it --run-name under torchrun, whose "
                                      "own parser claims --run) [default: from the data file name]"),
    checkpoints: Optional[Path] = typer.Option(None, "--checkpoints", envvar="GPTKIT_CHECKPOINTS",
                                               help="checkpoint store folder [default: ./checkpoints]"),
    resume: bool = typer.Option(False, "--resume", help="continue the run from its last.safetensors"),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="start from another checkpoint's weights "
                                            "and tokenizer (PATH or RUN)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run named by --run"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
    **settings: Any,
) -> None:
    """Train a GPT on a text and save checkpoints to checkpoints/<run>/."""
    with handle_errors():
        check_data_arg(data)
        mc, tc = resolve_config(preset, config, settings, device_type=_device_type(settings.get("device")))
        # what this command sets (flags, and the --config file): a resumed run keeps its own values for the rest
        explicit = {k for k, v in settings.items() if v is not None} | (set(load_toml(config)) if config else set())
        store = checkpoints or Path(os.environ.get("GPTKIT_CHECKPOINTS", "checkpoints"))
        run_dir = _pick_run_dir(store, run, data, resume, overwrite)
        if resume and data is None:
            data = _recorded_dataset(run_dir)

        from gptkit.cli.views.train_view import TrainView
        from gptkit.train import train

        quiet = quiet or os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 reports
        view = TrainView(quiet=quiet)
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
