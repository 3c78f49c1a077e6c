"""`gptkit sample`: read prompts, load a checkpoint, stream samples to stdout as text or JSON lines.

Owns the flags, where prompts come from (--prompt, --prompt-file or stdin; one per line with
--lines) and how results look: streamed text, one escaped line per result (--lines), or one JSON
object per sample (--json). Stats go to stderr. Generation itself is `gptkit.completion`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from gptkit.cli.app import app, handle_errors
from gptkit.cli.interactive import wants_interactive
from gptkit.cli.views.sample_view import Printer, stats_line
from gptkit.config import check_seed
from gptkit.errors import InputError, TokenizerError, UsageError


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float, min_p: float,
                   repetition_penalty: float, num_samples: int, stops: list[str]) -> None:
    """Reject values that cannot work, before anything heavy is imported."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UsageError(msg)

    need(max_new_tokens >= 0, f"--max-new-tokens must be 0 or more, got {max_new_tokens}")
    need(math.isfinite(temperature) and temperature >= 0, f"--temperature must be 0 (greedy) or more, got {temperature}")
    need(top_k is None or top_k >= 0, f"--top-k must be 0 (off) or more, got {top_k}")
    need(0 < top_p <= 1, f"--top-p must be in (0, 1] (1 = off), got {top_p}")
    need(0 <= min_p <= 1, f"--min-p must be in [0, 1] (0 = off), got {min_p}")
    need(math.isfinite(repetition_penalty) and repetition_penalty > 0,
         f"--repetition-penalty must be positive (1 = off), got {repetition_penalty}")
    need(num_samples >= 1, f"--num-samples must be at least 1, got {num_samples}")
    need(all(stops), "--stop needs a non-empty string")


def read_prompt_text(prompt: str | None, prompt_file: Path | None, lines: bool = False) -> str:
    """The prompt text from --prompt, --prompt-file (`-`: stdin), or stdin (empty when stdin is a terminal)."""
    from gptkit.data.chunks import argument_text, decode_utf8

    if prompt is not None:
        return argument_text(prompt, "--prompt")
    if prompt_file is not None and str(prompt_file) != "-":  # `-f -` reads stdin, as elsewhere
        try:
            data, name = prompt_file.read_bytes(), repr(str(prompt_file))
        except OSError as e:
            raise InputError(f"cannot read prompt file {str(prompt_file)!r}: {e.strerror}") from None
    elif sys.stdin is None or sys.stdin.isatty():
        if lines:
            raise UsageError("--lines reads prompts from a pipe, --prompt-file or --prompt; stdin is a terminal")
        return ""
    else:
        data, name = sys.stdin.buffer.read(), "the prompt on stdin"
    return decode_utf8(data, name, empty_ok=True)  # an empty or whitespace-only prompt is valid


def split_lines(text: str) -> list[str]:
    """One prompt per line (\\n or \\r\\n); a final newline does not start another prompt."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def encode_prompt(tokenizer: Any, text: str, where: str) -> list[int]:
    """Prompt ids; a character the checkpoint's vocabulary lacks is a one-line error."""
    try:
        ids = tokenizer.encode(text) if text else []
    except TokenizerError as e:
        if tokenizer.kind != "char":
            raise InputError(f"{where} cannot be encoded by this checkpoint's tokenizer: {e}") from None
        unknown = sorted(set(text) - set(tokenizer.chars))
        shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise InputError(f"{where} has {len(unknown)} character(s) this checkpoint's vocabulary lacks ({shown}); "
                         "its char tokenizer knows only the characters of its training text") from None
    if ids:
        return ids
    if tokenizer.eot_id is not None:  # no prompt: start from end-of-text, or a newline, as a neutral beginning
        return [tokenizer.eot_id]
    try:
        return tokenizer.encode("\n") or [0]
    except TokenizerError:  # a char vocabulary without "\n"
        return [0]


@app.command("sample")
def sample_command(
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="text to continue [default: stdin if piped]"),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", "-f", help="read the prompt from a file (- for stdin)"),
    lines: bool = typer.Option(False, "--lines", help="one prompt per input line, one result per output line"),
    interactive: Optional[bool] = typer.Option(None, "--interactive/--no-interactive", show_default=False,
                                               help="load once, then each line typed is a prompt "
                                               "[default: on at a terminal when no prompt is given]"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per sample: text, ids, logprobs, finish reason, timing"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "-c",
                                             help="checkpoint file, run folder or run name [default: newest run]"),
    checkpoints: Optional[Path] = typer.Option(None, "--checkpoints", envvar="GPTKIT_CHECKPOINTS",
                                               help="checkpoint store folder [default: ./checkpoints]"),
    max_new_tokens: int = typer.Option(500, "--max-new-tokens", "-n", help="tokens to generate per sample"),
    temperature: float = typer.Option(0.8, "--temperature", "-t", help="softmax temperature; 0 = greedy"),
    top_k: Optional[int] = typer.Option(200, "--top-k", help="sample among the k most likely tokens (0 = off)"),
    top_p: float = typer.Option(1.0, "--top-p", help="nucleus: the most likely tokens holding this mass (1 = off)"),
    min_p: float = typer.Option(0.0, "--min-p", help="drop tokens below this fraction of the top one's probability"),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help=">1 discourages repeating tokens (1 = off)"),
    seed: Optional[int] = typer.Option(None, "--seed", "-s", help="seed for reproducible output"),
    num_samples: int = typer.Option(1, "--num-samples", help="samples per prompt, decoded together as one batch"),
    stop: Optional[list[str]] = typer.Option(None, "--stop", metavar="TEXT", help="end a sample at this text (not printed); repeatable"),
    echo: bool = typer.Option(True, "--echo/--no-echo", help="print the prompt before the continuation"),
    allow_invalid_utf8: bool = typer.Option(False, "--allow-invalid-utf8", help="let a byte-level model choose "
                                            "tokens that break a character (shown as U+FFFD); by default they are masked"),
    no_cache: bool = typer.Option(False, "--no-cache", help="recompute the full context every token (reference path)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | mps"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on CUDA, else float32) | float32 | bfloat16"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                           help="torch.compile the decode step, sampling included [default: on CUDA "
                                           "for jobs of 20,000+ tokens, which repay the compile]"),
    threads: Optional[int] = typer.Option(None, "--threads", show_default=False,
                                          help="CPU threads [default: torch's, or OMP_NUM_THREADS]"),
    cpu_split: str = typer.Option("auto", "--cpu-split", help="auto: on a CPU, time at start whether splitting "
                                  "each projection across the threads decodes faster, and do so if it does | off"),
    stats: bool = typer.Option(False, "--stats", help="print prompt/generated tokens, tokens/s, time to first token on stderr"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="--stats, plus which checkpoint and device"),
) -> None:
    """Generate text from a trained checkpoint, streamed to stdout (JSON lines with --json)."""
    with handle_errors():
        stops = stop or []
        if prompt is not None and prompt_file is not None:
            raise UsageError("give --prompt or --prompt-file, not both")
        if compile and no_cache:
            raise UsageError("--compile compiles the KV-cache decode step, which --no-cache does not use; drop one")
        check_sampling(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, num_samples, stops)
        repl = wants_interactive(interactive, prompt, prompt_file, lines, as_json,
                                 sys.stdin is not None and sys.stdin.isatty(), sys.stdout.isatty())
        if threads is not None and not 1 <= threads <= 1024:
            raise UsageError(f"--threads must be from 1 to 1024, got {threads}")
        check_seed(seed)
        if dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UsageError(f"--dtype must be auto, float32 or bfloat16; got {dtype!r}")
        if cpu_split not in ("auto", "off"):
            raise UsageError(f"--cpu-split must be auto or off; got {cpu_split!r}")
        import torch

        from gptkit import checkpoint as ckpt
        from gptkit.completion import complete, utf8_constraint
        from gptkit.generate import Engine, row_seed
        from gptkit.runtime import check_sampling_memory, pick_device, pick_dtype, want_compile_decode
        from gptkit.sampling import SamplingParams

        dev = pick_device(device)
        # auto on a CPU: fp32, as the help says (bf16 weights would change the text, not only its speed)
        precision = torch.float32 if dtype == "auto" and dev.type == "cpu" else pick_dtype(dtype, dev)
        model, tokenizer, info = ckpt.load_for_inference(checkpoint, checkpoints, dev)
        model.to(precision)
        if dev.type == "cpu" and threads is not None:
            torch.set_num_threads(threads)
        text = "" if repl else read_prompt_text(prompt, prompt_file, lines)
        prompts = split_lines(text) if lines else [text]
        encoded = [encode_prompt(tokenizer, p, f"line {i + 1} of the prompts" if lines else "the prompt")
                   for i, p in enumerate(prompts)]
        check_sampling_memory(model.config, num_samples, max(map(len, encoded), default=0), max_new_tokens, dev, precision)
        steps = len(prompts) * max_new_tokens
        use_compile = want_compile_decode(compile, dev, steps) and not no_cache
        if use_compile and compile is None:  # the stall before the first token needs a reason
            typer.echo(f"compiling the decode step: {steps:,} tokens to generate repay its compile "
                       "(--no-compile skips it)", err=True)
        plan = "off"
        if dev.type == "cpu" and cpu_split == "auto" and not (no_cache or use_compile):
            from gptkit.split_linear import use_fastest

            plan = use_fastest(model)[0]
        if verbose:
            typer.echo(f"checkpoint {info.path} | {model.num_params() / 1e6:.2f}M parameters | {dev} "
                       f"{str(precision).removeprefix('torch.')} | compile {'on' if use_compile else 'off'}"
                       + (f" | {torch.get_num_threads()} thread(s), cpu split {plan}" if dev.type == "cpu" else ""),
                       err=True)
        engine = Engine(model, num_samples, use_cache=not no_cache, compile_step=use_compile)
        if repl:
            from gptkit.cli.interactive import Session, Settings

            settings = Settings(temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens, seed, stops,
                                allow_invalid_utf8)
            return Session(engine, tokenizer, settings, check_sampling, encode_prompt, stats or verbose).run()
        params = SamplingParams(temperature=temperature, top_k=top_k or None, top_p=top_p, min_p=min_p,
                                repetition_penalty=repetition_penalty)
        utf8 = None if allow_invalid_utf8 else utf8_constraint(tokenizer, model.config.vocab_size)
        engine.warm_up(params, utf8=utf8 is not None)  # compiled: built and recorded here, so no stat counts the compile
        printer = Printer("json" if as_json else "lines" if lines else "text", echo)
        for i, (p, ids) in enumerate(zip(prompts, encoded, strict=True)):
            printer.begin(p)
            # every sample of the job its own seed (see row_seed): lines are independent, each reproducible alone
            line_seed = None if seed is None else row_seed(seed, i * num_samples)
            result = complete(engine, tokenizer, p, ids, max_new_tokens, params, line_seed, stops,
                              tokenizer.eot_id, printer.on_text, utf8)
            printer.end(result, i)
            if stats or verbose:
                typer.echo(stats_line(result), err=True)
