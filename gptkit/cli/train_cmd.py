"""`gptkit train`: resolve the config, check the input cheaply, then call `gptkit.train.train`."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import typer

from gptkit.cli.app import Glob, Quiet, SkipBad, Store, TextField, command, config_options, handle_errors, with_options
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
from gptkit.fsio import RUN_LOCK, check_run_free, lock_holder

_OPTIONS = config_options(ModelConfig, "Model", skip=("vocab_size",)) + config_options(TrainConfig, "Training")
Preset = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


RUN_NAME = re.compile(r"[\w.-]+")  # letters and digits (any script), "_", "." and "-"
MAX_RUN_NAME = 100


def run_name_for(data: str | None) -> str:
    """tinyshakespeare.txt -> 'tinyshakespeare'; a folder -> its name; a URL -> its file name; nothing ->
    'builtin'; stdin -> 'stdin'."""
    if data is None:
        return "builtin"
    if data == "-":
        return "stdin"
    name = Path(data.rstrip("/").split("?")[0]).name
    for suffix in (".gz", ".zst", ".zstd"):
        name = name[:-len(suffix)] if name.lower().endswith(suffix) else name
    return (re.sub(r"[^\w.-]+", "-", Path(name).stem).strip("-.") or "run")[:MAX_RUN_NAME]


def check_run_name(name: str) -> str:
    """A run is a folder of the store: its name must not climb out of it, nest, or hide."""
    if not 0 < len(name) <= MAX_RUN_NAME or name.startswith(".") or not RUN_NAME.fullmatch(name):
        raise UsageError(f"--run {name!r} is not a run name: use letters, digits, '.', '_' and '-', at most "
                         f"{MAX_RUN_NAME} characters, not starting with '.'")
    return name


def fresh_run_dir(store: Path, name: str) -> Path:
    """A run folder that holds no checkpoint yet and no training is writing: name, then name-2, ..."""
    candidate, n = store / name, 1
    while ((candidate / "last.safetensors").exists() or (candidate / "best.safetensors").exists()
           or lock_holder(candidate / RUN_LOCK) is not None):
        n += 1
        candidate = store / f"{name}-{n}"
    return candidate


def check_data_arg(data: list[str] | None, globs: list[str] | None = None, skip_bad: bool = False,
                   store: Path | None = None) -> None:
    """Cheap checks before importing torch: every path exists, folders hold files, a dataset folder
    comes alone, "-" comes once and has a pipe behind it; a single text file's first MiB is text."""
    from gptkit.data.sources import STDIN, is_dataset_folder, is_url, list_inputs

    refs = list(data or [])
    if refs.count(STDIN) > 1:
        raise UsageError("'-' (stdin) can be given once")
    if STDIN in refs and (sys.stdin is None or sys.stdin.isatty()):
        raise UsageError("'-' reads the text from stdin: pipe it in, e.g. `cat *.txt | gptkit train -`")
    if STDIN in refs and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("'-' (stdin) cannot be read by several processes; under torchrun give files or folders")
    paths = [r for r in refs if r != STDIN and not is_url(r)]
    if len(refs) > 1 and any(is_dataset_folder(Path(r)) for r in paths):
        raise InputError(f"{next(r for r in paths if is_dataset_folder(Path(r)))!r} is a dataset folder (it has "
                         "meta.json): train on it alone, not with other inputs")
    if len(refs) == 1 and paths and is_dataset_folder(Path(paths[0])):
        return
    files = list_inputs(paths, globs or (), [store] if store else ())
    if len(files) == 1 and len(refs) == 1 and not skip_bad and not (files[0].compression or files[0].jsonl):
        head = _read_head(files[0].path)
        # the first MiB catches empty, binary and non-UTF-8 files before torch is even imported
        decode_utf8(head, files[0].label, cut=len(head) == HEAD_BYTES)


def _read_head(p: Path) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(HEAD_BYTES)
    except OSError as e:
        raise InputError(f"cannot read {str(p)!r}: {e.strerror}") from None


@command("train", "Train a GPT on texts; checkpoints go to the store.")
@with_options(_OPTIONS)
def train_command(
    data: Optional[list[str]] = typer.Argument(None, metavar="DATA", help="what to learn from: UTF-8 text "
                                               "files, folders of them (recursive), .gz/.zst, .jsonl, `-` for stdin, "
                                               "http(s) URLs, or one dataset folder [default: the built-in corpus of "
                                               "Python's docstrings]", show_default=False),
    preset: Optional[Preset] = typer.Option(None, "--preset", show_default=False,
                                            help="the size and recipe to start from [default: quick on CPU, small "
                                                 "on MPS, baby on CUDA]"),
    config: Optional[Path] = typer.Option(None, "--config", metavar="<file>", help="TOML file of settings "
                                          "([model]/[train] tables; --print-config writes one)"),
    print_config: bool = typer.Option(False, "--print-config", help="print the settings this command resolves "
                                      "(preset < --config < flags) as TOML, and exit"),
    run: Optional[str] = typer.Option(None, "--run", "-r", metavar="<name>", show_default=False,
                                      help="run name in the store: letters, digits, '.', '_', '-' (spell it "
                                      "--run-name under torchrun, whose own parser claims --run) [default: from the "
                                      "first input's name]"),
    run_name: Optional[str] = typer.Option(None, "--run-name", hidden=True),  # --run under torchrun, which claims it
    store: Store = None,
    resume: bool = typer.Option(False, "--resume", help="continue the run from its last.safetensors"),
    init_from: Optional[str] = typer.Option(None, "--init-from", metavar="<ckpt>", help="start from another "
                                            "checkpoint's weights and tokenizer (PATH or RUN)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run named by --run"),
    glob: Glob = None,
    text_field: TextField = None,
    skip_bad: SkipBad = False,
    quiet: Quiet = False,
    **settings: Any,
) -> None:
    """Train a GPT on texts and save checkpoints to checkpoints/<run>/.

    The defaults shown are what a CPU gets: the quick preset's where it sets them. --preset, or a GPU
    (baby) or Apple MPS (small) start from another preset; --print-config shows any run's settings.
    """
    with handle_errors():
        if print_config and resume:
            raise UsageError("--print-config shows a new run's settings; a resumed run keeps its own "
                             "(see `gptkit inspect RUN --json`)")
        from gptkit.checkpoint import default_store

        store = store or default_store()
        run = run if run is not None else run_name
        if run is not None:
            check_run_name(run)
        check_data_arg(data, glob, skip_bad, store)
        device_type = _device_type(settings.get("device"))
        file_values = load_toml(config) if config else {}
        name = chosen_preset(preset, file_values, settings, device_type)
        mc, tc = resolve_config(name, config, settings, device_type=device_type)
        if print_config:
            typer.echo(to_toml(mc, tc, name), nl=False)
            return
        # what this command sets (flags, and the --config file): a resumed run keeps its own values for the rest
        explicit = {k for k, v in settings.items() if v is not None} | set(file_values)
        run_dir = _pick_run_dir(store, run, data[0] if data else None, resume, overwrite)
        if resume and not data:
            data = _recorded_dataset(run_dir)
        from gptkit.data.sources import DataSpec

        spec = DataSpec(tuple(data or ()), tuple(glob or ()), text_field or "text", skip_bad,
                        sys.stdin.buffer if data and "-" in data else None)

        from gptkit.cli.views.train_view import TrainView
        from gptkit.train import train

        quiet = quiet or os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 reports
        # the view's first line, once the run has started (a bad input before that stays one error line)
        settings_line = _settings(name, preset is None and "preset" not in file_values, device_type, mc, tc,
                                  explicit, resume)
        view = TrainView(quiet=quiet, first_line=settings_line)
        try:
            result = train(mc, tc, spec, run_dir, store, on_event=view, resume=resume, init_from=init_from,
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
        check_run_free(run_dir)  # never delete what a running training is writing
        for name in ("last.safetensors", "best.safetensors", "metrics.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
    return run_dir


def _recorded_dataset(run_dir: Path) -> list[str] | None:
    """What a run was trained on: its dataset folder if still there, else the inputs it was given."""
    from gptkit.checkpoint import LAST, read_info

    info = read_info(run_dir / LAST)
    data = info.state.get("data", {})
    if data.get("dataset") and Path(data["dataset"], "meta.json").is_file():
        return [data["dataset"]]
    if "refs" in data:
        return list(data["refs"]) or None
    return [data["origin"]] if data.get("origin") and data["origin"] != "builtin" else None


def _summary(result) -> None:
    if result.val_loss is not None:
        typer.echo(f"done: step {result.step}, val loss {result.val_loss:.4f} nats/token, "
                   f"{result.val_bpc:.3f} bits/char, {result.elapsed:.0f}s", err=True)
    prog = "gptkit" if Path(sys.argv[0]).name == "gptkit" else "python -m gptkit"
    go_on = (f"resume: {prog} train --run {result.run_dir.name} --resume" if result.more is None
             else f"train on: {prog} train --run {result.run_dir.name} --resume {result.more}")
    typer.echo(f"saved to {result.run_dir}/  — sample: {prog} sample -c {result.run_dir.name} --prompt \"...\"  "
               f"| {go_on}", err=True)
