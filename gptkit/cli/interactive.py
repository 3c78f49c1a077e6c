"""`gptkit sample --interactive`: one loaded model, a prompt per line typed, settings changed in between.

Owns the loop and its commands: each line read (with readline's line editing and history where the
platform has readline) is a prompt whose continuation streams as `gptkit sample` prints it; Ctrl-C
stops the current generation and returns to the prompt; Ctrl-D or `/quit` leaves; `/set NAME VALUE`
changes a sampling setting for the next prompts, checked as the flags are; `/show` and `/help` list
them. It loads no model (sample_cmd hands it a ready engine) and writes nothing to the terminal
itself: `views/interactive_view.py` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gptkit.cli.views import interactive_view as view
from gptkit.errors import GptkitError, UsageError


@dataclass
class Settings:
    """What `/set` changes: the sampling flags of `gptkit sample`, under the same names."""

    temperature: float = 0.8
    top_k: int | None = 200  # 0 or None = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 500
    seed: int | None = None  # None: a fresh one each prompt; else every prompt starts from this one
    stop: list[str] = field(default_factory=list)
    allow_invalid_utf8: bool = False


def parse_value(name: str, text: str, current: Any) -> Any:
    """`/set NAME VALUE`'s value as the setting's type; `none`/`off` for an optional one."""
    if name == "stop":  # /set stop TEXT adds one (\n for a newline); /set stop none clears them
        return [] if text.lower() in ("none", "off", "") else [*current, text.replace("\\n", "\n")]
    if name == "allow_invalid_utf8":
        if text.lower() not in ("on", "off", "true", "false", "1", "0"):
            raise UsageError(f"/set allow-invalid-utf8 takes on or off, got {text!r}")
        return text.lower() in ("on", "true", "1")
    if name in ("top_k", "seed") and text.lower() in ("none", "off"):
        return None
    kind = int if name in ("top_k", "max_new_tokens", "seed") else float
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"/set {name.replace('_', '-')} needs {'an integer' if kind is int else 'a number'}, "
                         f"got {text!r}") from None


class Session:
    """The REPL's state: the engine and tokenizer it was given, the current settings, and the checks
    sample_cmd applies to flags (passed in, so this module does not import the command)."""

    def __init__(self, engine: Any, tokenizer: Any, settings: Settings, check: Callable[..., None],
                 encode: Callable[[Any, str, str], list[int]], stats: bool = False) -> None:
        self.engine, self.tokenizer, self.settings, self.stats = engine, tokenizer, settings, stats
        self.check, self.encode = check, encode
        self._utf8: Any = None

    def run(self) -> None:
        """Read prompts until Ctrl-D or /quit."""
        view.enable_line_editing()
        view.banner()
        while True:
            try:
                line = view.read_line()
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as Python's REPL does
                view.new_line()
                continue
            if line is None or line.strip() in ("/quit", "/exit"):
                return
            try:
                if line.startswith("/"):
                    self.command(line)
                elif line.strip():
                    self.generate(line)
            except GptkitError as e:
                view.error(str(e).splitlines()[0] if str(e) else type(e).__name__)

    def command(self, line: str) -> None:
        name, _, rest = line[1:].strip().partition(" ")
        if name == "help":
            view.help_text(dataclasses.asdict(self.settings))
        elif name in ("show", "settings") or (name == "set" and not rest.strip()):
            view.show_settings(dataclasses.asdict(self.settings))
        elif name == "set":
            self.set(*rest.strip().partition(" ")[::2])
        else:
            raise UsageError(f"unknown command /{name}; /help lists the commands")

    def set(self, key: str, text: str) -> None:
        name = key.replace("-", "_")
        if name not in {f.name for f in dataclasses.fields(Settings)}:
            raise UsageError(f"/set knows no setting {key!r}; /help lists them")
        new = dataclasses.replace(self.settings, **{name: parse_value(name, text.strip(), getattr(self.settings, name))})
        self.check(new.max_new_tokens, new.temperature, new.top_k, new.top_p, new.min_p, new.repetition_penalty,
                   self.engine.num_samples, new.stop)
        if new.seed is not None and not 0 <= new.seed < 2**63:
            raise UsageError(f"/set seed takes 0 to 2**63-1 or none, got {new.seed}")
        self.settings = new
        view.setting_changed(key, getattr(new, name))

    def generate(self, text: str) -> None:
        """One prompt: its continuation streamed; Ctrl-C stops it and keeps what was printed."""
        from gptkit.cli.views.sample_view import Printer, stats_line
        from gptkit.completion import complete
        from gptkit.data.chunks import argument_text
        from gptkit.sampling import SamplingParams

        s = self.settings
        prompt = argument_text(text, "the prompt")
        ids = self.encode(self.tokenizer, prompt, "the prompt")
        params = SamplingParams(temperature=s.temperature, top_k=s.top_k or None, top_p=s.top_p, min_p=s.min_p,
                                repetition_penalty=s.repetition_penalty)
        printer = Printer("text", echo=False)
        try:
            result = complete(self.engine, self.tokenizer, prompt, ids, s.max_new_tokens, params, s.seed, s.stop,
                              self.tokenizer.eot_id, printer.on_text, None if s.allow_invalid_utf8 else self.utf8())
        except KeyboardInterrupt:
            view.stopped()
            return
        printer.end(result, 0)
        if self.stats:
            view.stats(stats_line(result))

    def utf8(self) -> Any:
        if self._utf8 is None:  # built on first use: a byte-level vocabulary's masks take a moment
            from gptkit.completion import utf8_constraint

            self._utf8 = utf8_constraint(self.tokenizer, self.engine.model.config.vocab_size) or False
        return self._utf8 or None


def wants_interactive(flag: bool | None, prompt: str | None, prompt_file: Any, lines: bool, as_json: bool,
                      stdin_tty: bool, stdout_tty: bool) -> bool:
    """--interactive, or by default at a terminal (stdin and stdout) when no prompt is given."""
    given = [f for f, on in (("--prompt", prompt is not None), ("--prompt-file", prompt_file is not None),
                             ("--lines", lines), ("--json", as_json)) if on]
    if flag and given:
        raise UsageError(f"--interactive reads its prompts from the terminal; drop {given[0]}")
    if flag is not None:
        return flag
    return not given and stdin_tty and stdout_tty
