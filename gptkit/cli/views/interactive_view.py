"""How `gptkit sample --interactive` talks to the terminal: the input line (readline editing and
history), the banner, /help, /show, errors and "stopped" notes on stderr. The continuations
themselves stream through `sample_view.Printer` to stdout. It computes nothing."""

from __future__ import annotations

import sys
from typing import Any

PROMPT = ">>> "
COMMANDS = (
    ("/set NAME VALUE", "change a setting for the next prompts, e.g. /set temperature 0.7"),
    ("/show", "the current settings"),
    ("/help", "this list"),
    ("/quit", "leave (or Ctrl-D)"),
)
SETTINGS_HELP = {
    "temperature": "softmax temperature; 0 = greedy",
    "top_k": "sample among the k most likely tokens (0 or none = off)",
    "top_p": "nucleus: the most likely tokens holding this mass (1 = off)",
    "min_p": "drop tokens below this fraction of the top one's probability",
    "repetition_penalty": ">1 discourages repeating tokens (1 = off)",
    "max_new_tokens": "tokens to generate per prompt",
    "seed": "every prompt starts from this seed (none = a fresh one each time)",
    "stop": "add a stop text (\\n for a newline); /set stop none clears them",
    "allow_invalid_utf8": "on: let a byte-level model break characters",
}


def enable_line_editing() -> None:
    """Importing readline gives input() line editing and a history (up/down arrows) for the session."""
    try:
        import readline  # noqa: F401
    except ImportError:  # e.g. Windows without pyreadline: plain input() still works
        pass


def read_line() -> str | None:
    """One line typed at the prompt, or None at end of input (Ctrl-D)."""
    try:  # no prompt when reading a pipe: stdout then holds only the continuations
        return input(PROMPT if sys.stdin.isatty() else "")
    except EOFError:
        new_line()
        return None


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def new_line() -> None:
    sys.stdout.write("\n")
    sys.stdout.flush()


def banner() -> None:
    _err("Type a prompt and press Enter; its continuation streams below. Ctrl-C stops it, /help lists "
         "the commands, Ctrl-D or /quit leaves.")


def help_text(settings: dict[str, Any]) -> None:
    width = max(len(c) for c, _ in COMMANDS)
    lines = [f"  {c:{width}}  {d}" for c, d in COMMANDS] + ["settings (/set NAME VALUE; - or _ alike):"]
    lines += [f"  {k.replace('_', '-'):20} {_shown(settings[k]):>8}  {SETTINGS_HELP[k]}" for k in SETTINGS_HELP]
    _err("\n".join(lines))


def show_settings(settings: dict[str, Any]) -> None:
    _err("  ".join(f"{k.replace('_', '-')}={_shown(v)}" for k, v in settings.items()))


def setting_changed(key: str, value: Any) -> None:
    _err(f"{key} = {_shown(value)}")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(repr(v) for v in value) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def error(message: str) -> None:
    _err(f"error: {message}")


def stopped() -> None:
    sys.stdout.write("\n")
    sys.stdout.flush()
    _err("(stopped)")


def stats(line: str) -> None:
    _err(line)
