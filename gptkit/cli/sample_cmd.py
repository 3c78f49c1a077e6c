"""`gptkit sample`: read prompts, load a checkpoint, stream samples to stdout as text or JSON lines.

Owns the flags, where prompts come from (--prompt, --prompt-file or stdin; one per line with
--lines) and how results look: streamed text, one escaped line per result (--lines), or one JSON
object per sample (--json). Stats go to stderr. Generation itself is `gptkit.completion`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from gptkit.cli.app import CheckpointRef, Device, Json, Prompt, Store, Verbose, command, handle_errors
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


# sample's own options, declared once here (the shared ones are in cli/app.py)
PromptFile = Annotated[Optional[Path], typer.Option("--prompt-file", "-f", metavar="<file>",
                                                    help="read the prompt from a file (- for stdin)")]
Lines = Annotated[bool, typer.Option("--lines", help="one prompt per input line, one result per output line")]
Interactive = Annotated[Optional[bool], typer.Option(
    "--interactive/--no-interactive", show_default=False,
    help="load once, then each line typed is a prompt [default: on at a terminal when no prompt is given]")]
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", "-n", help="tokens to generate per sample")]
Temperature = Annotated[float, typer.Option("--temperature", help="softmax temperature; 0 = greedy")]
TopK = Annotated[int, typer.Option("--top-k", help="sample among the k most likely tokens (0 = off)")]
TopP = Annotated[float, typer.Option("--top-p", help="nucleus: the most likely tokens holding this mass (1 = off)")]
MinP = Annotated[float, typer.Option("--min-p", help="drop tokens below this fraction of the top one's probability")]
RepetitionPenalty = Annotated[float, typer.Option("--repetition-penalty",
                                                  help=">1 discourages repeating tokens (1 = off)")]
Seed = Annotated[Optional[int], typer.Option("--seed", "-s", show_default=False,
                                             help="seed for reproducible output [default: a random one]")]
NumSamples = Annotated[int, typer.Option("--num-samples", help="samples per prompt, decoded together as one batch")]
Stop = Annotated[Optional[list[str]], typer.Option("--stop", metavar="<text>", show_default=False,
                                                   help="end a sample at this text (not printed); repeatable")]
Echo = Annotated[bool, typer.Option("--echo/--no-echo", help="print the prompt before the continuation")]
AllowInvalidUtf8 = Annotated[bool, typer.Option(
    "--allow-invalid-utf8", help="let a byte-level model choose tokens that break a character (shown as U+FFFD); "
    "by default they are masked")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="recompute the full context every token (reference path)")]
Dtype = Annotated[Literal["auto", "float32", "bfloat16", "float16"], typer.Option(
    "--dtype", help="precision; auto: bfloat16 on CUDA, float32 elsewhere")]
Compile = Annotated[Optional[bool], typer.Option(
    "--compile/--no-compile", show_default=False, help="torch.compile the decode step, sampling included "
    "[default: on CUDA for jobs of 20,000+ tokens, which repay the compile]")]
Threads = Annotated[Optional[int], typer.Option("--threads", show_default=False,
                                                help="CPU threads [default: torch's, or OMP_NUM_THREADS]")]
CpuSplit = Annotated[Literal["auto", "off"], typer.Option(
    "--cpu-split", help="auto: on a CPU, time at start whether splitting each projection across the threads "
    "decodes faster, and do so if it does; off: never")]
Stats = Annotated[bool, typer.Option("--stats", help="print prompt/generated tokens, tokens/s, time to first token "
                                                     "on stderr")]


@command("sample", "Generate text from a checkpoint, streamed.")
def sample_command(
    prompt: Prompt = None,
    prompt_file: PromptFile = None,
    lines: Lines = False,
    interactive: Interactive = None,
    as_json: Json = False,
    checkpoint: CheckpointRef = None,
    store: Store = None,
    max_new_tokens: MaxNewTokens = 500,
    temperature: Temperature = 0.8,
    top_k: TopK = 200,
    top_p: TopP = 1.0,
    min_p: MinP = 0.0,
    repetition_penalty: RepetitionPenalty = 1.0,
    seed: Seed = None,
    num_samples: NumSamples = 1,
    stop: Stop = None,
    echo: Echo = True,
    allow_invalid_utf8: AllowInvalidUtf8 = False,
    no_cache: NoCache = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    compile: Compile = None,
    threads: Threads = None,
    cpu_split: CpuSplit = "auto",
    stats: Stats = False,
    verbose: Verbose = False,
) -> None:
    """Generate text from a trained checkpoint, streamed to stdout (JSON lines with --json).

    Without -c, the newest run in the store, its best checkpoint.
    """
    with handle_errors():
        stops = stop or []
        check_flags(prompt, prompt_file, compile, no_cache, threads, seed)
        check_sampling(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, num_samples, stops)
        repl = wants_interactive(interactive, prompt, prompt_file, lines, as_json,
                                 sys.stdin is not None and sys.stdin.isatty(), sys.stdout.isatty())
        model, tokenizer, info, dev = load(checkpoint, store, device, dtype, threads)
        prompts = [""] if repl else read_prompts(prompt, prompt_file, lines)
        encoded = [encode_prompt(tokenizer, p, f"line {i + 1} of the prompts" if lines else "the prompt")
                   for i, p in enumerate(prompts)]
        engine, plan = make_engine(model, dev, num_samples, encoded, max_new_tokens, compile, no_cache, cpu_split)
        if verbose:
            typer.echo(describe(info, model, dev, engine, plan), err=True)
        if repl:
            from gptkit.cli.interactive import Session, Settings

            settings = Settings(temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens, seed, stops,
                                allow_invalid_utf8)
            return Session(engine, tokenizer, settings, check_sampling, encode_prompt, stats or verbose).run()
        params, utf8 = ready(engine, tokenizer, temperature, top_k, top_p, min_p, repetition_penalty,
                             allow_invalid_utf8)
        printer = Printer("json" if as_json else "lines" if lines else "text", echo)
        for i, (p, ids) in enumerate(zip(prompts, encoded, strict=True)):
            result = run_one(engine, tokenizer, printer, i, p, ids, max_new_tokens, params, seed, stops, utf8)
            if stats or verbose:
                typer.echo(stats_line(result), err=True)


def ready(engine: Any, tokenizer: Any, temperature: float, top_k: int | None, top_p: float, min_p: float,
          repetition_penalty: float, allow_invalid_utf8: bool) -> tuple[Any, Any]:
    """The sampling parameters and the valid-UTF-8 mask (None if allowed), the engine warmed up with them."""
    from gptkit.completion import utf8_constraint
    from gptkit.sampling import SamplingParams

    params = SamplingParams(temperature=temperature, top_k=top_k or None, top_p=top_p, min_p=min_p,
                            repetition_penalty=repetition_penalty)
    utf8 = None if allow_invalid_utf8 else utf8_constraint(tokenizer, engine.model.config.vocab_size)
    engine.warm_up(params, utf8=utf8 is not None)  # compiled: built and recorded here, so no stat counts the compile
    return params, utf8


def check_flags(prompt: str | None, prompt_file: Path | None, compile: bool | None, no_cache: bool,
                threads: int | None, seed: int | None) -> None:
    """Combinations and ranges that cannot work, before anything heavy is imported."""
    if prompt is not None and prompt_file is not None:
        raise UsageError("give --prompt or --prompt-file, not both")
    if compile and no_cache:
        raise UsageError("--compile compiles the KV-cache decode step, which --no-cache does not use; drop one")
    if threads is not None and not 1 <= threads <= 1024:
        raise UsageError(f"--threads must be from 1 to 1024, got {threads}")
    check_seed(seed)


def load(checkpoint: str | None, store: Path | None, device: str, dtype: str, threads: int | None):
    """(model at its precision on the device, tokenizer, checkpoint info, device)."""
    import torch

    from gptkit import checkpoint as ckpt
    from gptkit.runtime import pick_device, pick_dtype

    dev = pick_device(device)
    # auto on a CPU: fp32, as the help says (bf16 weights would change the text, not only its speed)
    precision = torch.float32 if dtype == "auto" and dev.type == "cpu" else pick_dtype(dtype, dev)
    model, tokenizer, info = ckpt.load_for_inference(checkpoint, store, dev)
    model.to(precision)
    if dev.type == "cpu" and threads is not None:
        torch.set_num_threads(threads)
    return model, tokenizer, info, dev


def read_prompts(prompt: str | None, prompt_file: Path | None, lines: bool) -> list[str]:
    text = read_prompt_text(prompt, prompt_file, lines)
    return split_lines(text) if lines else [text]


def make_engine(model: Any, dev: Any, num_samples: int, encoded: list[list[int]], max_new_tokens: int,
                compile: bool | None, no_cache: bool, cpu_split: str):
    """The decoding engine (after the memory check), and the CPU split plan it took ("off" if none)."""
    from gptkit.generate import Engine
    from gptkit.memory import check_sampling_memory
    from gptkit.runtime import want_compile_decode

    precision = next(model.parameters()).dtype
    check_sampling_memory(model.config, num_samples, max(map(len, encoded), default=0), max_new_tokens, dev, precision)
    steps = len(encoded) * max_new_tokens
    use_compile = want_compile_decode(compile, dev, steps) and not no_cache
    if use_compile and compile is None:  # the stall before the first token needs a reason
        typer.echo(f"compiling the decode step: {steps:,} tokens to generate repay its compile "
                   "(--no-compile skips it)", err=True)
    plan = "off"
    if dev.type == "cpu" and cpu_split == "auto" and not (no_cache or use_compile):
        from gptkit.split_linear import use_fastest

        plan = use_fastest(model)[0]
    return Engine(model, num_samples, use_cache=not no_cache, compile_step=use_compile), plan


def describe(info: Any, model: Any, dev: Any, engine: Any, plan: str) -> str:
    """--verbose: which checkpoint, how big, on what, and how it decodes."""
    import torch

    precision = str(next(model.parameters()).dtype).removeprefix("torch.")
    return (f"checkpoint {info.path} | {model.num_params() / 1e6:.2f}M parameters | {dev} {precision} | compile "
            f"{'on' if engine.compiled else 'off'}"
            + (f" | {torch.get_num_threads()} thread(s), cpu split {plan}" if dev.type == "cpu" else ""))


def run_one(engine: Any, tokenizer: Any, printer: Printer, i: int, prompt: str, ids: list[int], max_new_tokens: int,
            params: Any, seed: int | None, stops: list[str], utf8: Any) -> Any:
    """Generate the samples of prompt i, printing as they come; returns the result."""
    from gptkit.completion import complete
    from gptkit.generate import row_seed

    printer.begin(prompt)
    # every sample of the job its own seed (see row_seed): lines are independent, each reproducible alone
    line_seed = None if seed is None else row_seed(seed, i * engine.num_samples)
    result = complete(engine, tokenizer, prompt, ids, max_new_tokens, params, line_seed, stops, tokenizer.eot_id,
                      printer.on_text, utf8)
    printer.end(result, i)
    return result
