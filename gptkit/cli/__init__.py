"""The `gptkit` command line: one Typer app, one module per subcommand (each registers itself)."""

from importlib import import_module

from gptkit.cli.app import app, main

# registration order is the order `gptkit --help` lists them: the order a user works in
for _name in ("tokenize", "train", "sample", "inspect", "runs", "convert"):
    import_module(f"gptkit.cli.{_name}_cmd")

__all__ = ["app", "main"]
