"""The `gptkit` command line: one Typer app, one module per subcommand (each registers itself)."""

from gptkit.cli import convert_cmd, inspect_cmd, sample_cmd, tokenize_cmd, train_cmd  # noqa: F401,E402  (registration order = help order)
from gptkit.cli.app import app, main

__all__ = ["app", "main"]
