"""The Typer app and what every command shares: error handling, --version, --debug, config flags.

A command module parses and validates with the standard library, imports the heavy library lazily,
makes one library call and renders the result. `GptkitError`s become one `error: ...` line on
stderr and the error's exit code; click's own usage errors are shortened to one line as well.
Importing this module must not import torch (`gptkit --help` stays fast; a test checks it).
"""

from __future__ import annotations

import errno
import inspect
import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields
from typing import Any, Optional

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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gptkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    """Train, sample and look inside small GPTs from the command line."""
    DEBUG["on"] = debug


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


def preset_default(name: str, default: Any) -> str:
    """A setting's default as --help should state it: a preset overrides the dataclass default, and
    without --preset a CPU gets `quick`, so `--batch-size [default: 12]` would be wrong there."""
    from gptkit.config import DEVICE_PRESETS, PRESETS

    cpu = DEVICE_PRESETS["cpu"]
    setters = [p for p, parts in PRESETS.items() if name in parts["model"] or name in parts["train"]]
    if not setters:
        return str(default)
    if cpu in setters:
        value = {**PRESETS[cpu]["model"], **PRESETS[cpu]["train"]}[name]
        if value == default and len(setters) == 1:
            return str(default)
        others = "other presets set their own" if len(setters) > 1 else f"else {default}"
        return f"{value} on CPU ({cpu} preset); {others}"
    return f"{default}, unless --preset {'/'.join(setters)} sets it"


def config_options(cls: type, panel: str, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword option per dataclass field: `n_layer` -> `--n-layer`, help from the field's doc.
    All default to None, meaning "not given", so presets and config files keep their values."""
    params = []
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = f"{f.metadata.get('help', '')} [default: {preset_default(f.name, default)}]"
        kind = str(f.type)
        if kind.startswith("bool"):
            annotation: Any = Optional[bool]
            decl = f"{flag}/--no-{f.name.replace('_', '-')}"
        else:
            annotation = {"int": Optional[int], "float": Optional[float]}.get(kind.split(" ")[0], Optional[str])
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
