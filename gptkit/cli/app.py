"""The Typer app and what every command shares: error handling, --version, --debug, config flags.

A command module parses and validates with the standard library, imports the heavy library lazily,
makes one library call and renders the result. `GptkitError`s become one `error: ...` line on
stderr and the error's exit code; click's own usage errors are shortened to one line as well.
Importing this module must not import torch (`gptkit --help` stays fast; a test checks it).
"""

from __future__ import annotations

import errno
import functools
import inspect
import io
import os
import sys
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from gptkit import __version__
from gptkit.errors import EXIT_INTERRUPTED, GptkitError

app = typer.Typer(
    name="gptkit",
    help="Train, sample and look inside small GPTs from the command line.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
DEBUG = {"on": False}
DEBUG_HELP = "show full tracebacks instead of one-line errors"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gptkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP + " (or GPTKIT_DEBUG=1; also after a command)"),
) -> None:
    """Train, sample and look inside small GPTs from the command line."""
    DEBUG["on"] = debug or debug_from_env()


def debug_from_env() -> bool:
    return os.environ.get("GPTKIT_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


# ------------------------------------------------------------------------------------------------
# The options several commands share, declared once. A letter means one thing in every command
# (tests/test_cli_surface.py walks the app to check it): -c checkpoint, -p prompt, -t tokenizer,
# -n max new tokens, -s seed, -o output, -q quiet, -v verbose, -f the prompt file.

Store = Annotated[Optional[Path], typer.Option(
    "--store", envvar="GPTKIT_STORE", metavar="<dir>", show_default=False,
    help="the checkpoint store, a folder with one folder per run [default: ./checkpoints]")]
CheckpointRef = Annotated[Optional[str], typer.Option(
    "--checkpoint", "-c", metavar="<ckpt>", show_default=False,
    help="a checkpoint: a .safetensors file, a run folder, or a run name in the store")]
Prompt = Annotated[Optional[str], typer.Option(
    "--prompt", "-p", metavar="<text>", show_default=False,
    help="the prompt: the text the model reads (and sample continues)")]
Device = Annotated[str, typer.Option(  # not a closed list (cuda:N): runtime.pick_device checks it
    "--device", metavar="<device>", help="auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps")]
Json = Annotated[bool, typer.Option("--json", help="JSON for scripts (one object a line) instead of the view")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress on stderr")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="say more on stderr: what was loaded, and how")]
# how train and `tokenize --out` pick their inputs (gptkit.data.sources)
Glob = Annotated[Optional[list[str]], typer.Option(
    "--glob", metavar="<pattern>", show_default=False,
    help="in folders, take only the files matching this pattern, e.g. '*.md' (repeatable) [default: every "
         "file but hidden ones]")]
TextField = Annotated[Optional[str], typer.Option(
    "--text-field", metavar="<field>", show_default=False,
    help="the field of each .jsonl record that holds its text [default: text]")]
SkipBad = Annotated[bool, typer.Option(
    "--skip-bad", help="skip binary, non-UTF-8 and empty files (counted on stderr) instead of stopping at the first")]

_LEGACY_STORE = inspect.Parameter(  # the store option's old name, kept working (hidden) for one release
    "checkpoints", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
    default=typer.Option(None, "--checkpoints", envvar="GPTKIT_CHECKPOINTS", hidden=True))
_DEBUG_AFTER = inspect.Parameter(
    "debug", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
    default=typer.Option(False, "--debug", envvar="GPTKIT_DEBUG", help=DEBUG_HELP))


def command(name: str, short_help: str):
    """Register a subcommand (`short_help`: its line in `gptkit --help`): `--debug` also works after its
    name, and where it takes `--store`, the hidden `--checkpoints` (and GPTKIT_CHECKPOINTS) of the
    previous release still sets it."""
    def wrap(func):
        sig = inspect.signature(func)  # with_options' generated options are in it, with real annotations
        hints = typing.get_type_hints(func, include_extras=True)  # the command's own, written as strings
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
               if p.kind != inspect.Parameter.VAR_KEYWORD]
        takes_store = "store" in sig.parameters
        extra = [_LEGACY_STORE] if takes_store else []

        @functools.wraps(func)
        def run(*args: Any, debug: bool = False, checkpoints: Path | None = None, **kwargs: Any) -> Any:
            DEBUG["on"] = DEBUG["on"] or debug
            if takes_store:
                kwargs["store"] = pick_store(kwargs.get("store"), checkpoints)
            return func(*args, **kwargs)

        run.__signature__ = sig.replace(parameters=own + extra + [_DEBUG_AFTER])
        return app.command(name, short_help=short_help)(run)
    return wrap


def pick_store(store: Path | None, legacy: Path | None) -> Path | None:
    """--store, else the old --checkpoints, else GPTKIT_STORE, else GPTKIT_CHECKPOINTS (None: the
    library's default, ./checkpoints). A flag beats an environment variable, whatever its name."""
    if legacy is not None and _given("checkpoints") and not _given("store"):
        return legacy
    return store if store is not None else legacy


def _given(param: str) -> bool:
    """Whether the current command's `param` was typed on the command line (not taken from the environment)."""
    try:
        from typer._click import core
        from typer._click import globals as click_globals
    except ImportError:
        from click import core  # type: ignore[no-redef]
        from click import globals as click_globals
    ctx = click_globals.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(param) == core.ParameterSource.COMMANDLINE


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn the project's errors into one line on stderr and a non-zero exit code."""
    try:
        yield
    except GptkitError as e:
        if DEBUG["on"]:
            raise
        raise fail(str(e).splitlines()[0] if str(e) else type(e).__name__, e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # the reader of our stdout went away (e.g. `| head`): stop quietly, like other Unix tools
        _drop_stdout()
        raise typer.Exit(0) from None
    except OSError as e:
        if DEBUG["on"]:
            raise
        raise fail(write_failed(e)) from None


def write_failed(e: OSError) -> str:
    """The one-line message for an OSError that reached the top. Every file gptkit opens turns its
    failures into GptkitErrors; what is left is the output itself: stdout on a full disk
    (`> /dev/full`) or closed (`>&-`, see ClosedOutput)."""
    _drop_stdout()
    return f"{'writing the output' if e.filename is None else repr(e.filename)} failed: {e.strerror or e}"


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so the text it still buffers cannot fail a second time at exit."""
    try:
        sys.stdout = open("/dev/null", "w")  # noqa: SIM115 - kept open until the process ends
    except OSError:
        pass


class ClosedOutput(io.TextIOBase):
    """stdout when the shell closed it (`>&-`), where Python sets sys.stdout to None: writing fails
    as an OSError, which `handle_errors` reports in one line like any other failed write."""

    def write(self, text: Any) -> int:
        raise OSError(errno.EBADF, "stdout is closed")

    @property
    def buffer(self) -> ClosedOutput:  # binary writes fail the same way
        return self


def cpu_default(name: str, default: Any) -> Any:
    """A setting's default as a CPU gets it: without --preset a CPU trains the `quick` preset, so
    `--batch-size [default: 12]` (the dataclass's) would be wrong there. train's help says so once."""
    from gptkit.config import DEVICE_PRESETS, PRESETS

    cpu = PRESETS[DEVICE_PRESETS["cpu"]]
    return {**cpu["model"], **cpu["train"]}.get(name, default)


def config_options(cls: type, panel: str, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword option per dataclass field: `n_layer` -> `--n-layer`, help from the field's doc, a
    closed set of values (config.CHOICES) as a Literal, so --help lists them and click refuses the
    rest. All default to None, meaning "not given", so presets and config files keep their values; a
    field whose default is None says in its own help what that means."""
    from gptkit.config import CHOICES

    params = []
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = cpu_default(f.name, f.default if f.default is not MISSING else None)
        help_text = f.metadata.get("help", "") + ("" if default is None else f" [default: {default}]")
        kind = str(f.type)
        if kind.startswith("bool"):
            annotation: Any = Optional[bool]
            decl = f"{flag}/--no-{f.name.replace('_', '-')}"
        else:
            annotation = {"int": Optional[int], "float": Optional[float]}.get(kind.split(" ")[0], Optional[str])
            if f.name in CHOICES:
                annotation = Optional[Literal[CHOICES[f.name]]]
            if f.name == "max_time":
                annotation = Optional[str]  # a duration: 90s, 10m, 1h30m
            decl = flag
        params.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
            default=typer.Option(None, decl, help=help_text, rich_help_panel=panel, show_default=False),
        ))
    return params


def with_options(extra: list[inspect.Parameter]):
    """Decorator: append generated keyword options to a command's own signature (for Typer)."""
    def wrap(func):
        sig = inspect.signature(func)
        own = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
        func.__signature__ = sig.replace(parameters=own + extra)
        return func
    return wrap


def _click_exceptions() -> tuple[type, type, tuple[type, ...]]:
    """Typer >= 0.20 vendors click as typer._click; older Typer uses click itself."""
    try:
        from typer._click import exceptions as ce
    except ImportError:
        from click import exceptions as ce
    return ce.ClickException, ce.UsageError, tuple({getattr(ce, "Abort", typer.Abort), typer.Abort})


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning click's usage errors into one line."""
    click_error, usage_error, abort = _click_exceptions()
    if sys.stdout is None:
        sys.stdout = ClosedOutput()
    try:
        rv = app(args=argv, prog_name="gptkit", standalone_mode=False)
    except usage_error as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        typer.echo(f"error: {e.format_message().splitlines()[0]}{hint}", err=True)
        sys.exit(e.exit_code)
    except abort:
        typer.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click_error as e:
        typer.echo(f"error: {e.format_message().splitlines()[0]}", err=True)
        sys.exit(e.exit_code)
    except GptkitError as e:  # raised outside a command body (e.g. in a callback)
        if DEBUG["on"]:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:  # --help or --version into `| head`
        _drop_stdout()
        sys.exit(0)
    except OSError as e:  # --help or --version into a full disk or a closed stdout
        if DEBUG["on"]:
            raise
        typer.echo(f"error: {write_failed(e)}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
