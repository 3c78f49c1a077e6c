"""`gptkit sample`: load a checkpoint, generate, stream UTF-8 text to stdout."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from gptkit.cli.app import app, handle_errors
from gptkit.errors import TokenizerError, UsageError


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens must be 0 or more, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise UsageError(f"--temperature must be 0 (greedy) or more, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")


@app.command("sample")
def sample_command(
    prompt: str = typer.Option("", "--prompt", "-p", help="text to continue"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "-c",
                                             help="checkpoint file, run folder or run name [default: newest run]"),
    checkpoints: Optional[Path] = typer.Option(None, "--checkpoints", envvar="GPTKIT_CHECKPOINTS",
                                               help="checkpoint store folder [default: ./checkpoints]"),
    max_new_tokens: int = typer.Option(500, "--max-new-tokens", "-n", help="tokens to generate"),
    temperature: float = typer.Option(0.8, "--temperature", "-t", help="softmax temperature; 0 = greedy"),
    top_k: Optional[int] = typer.Option(200, "--top-k", help="sample among the k most likely tokens"),
    seed: Optional[int] = typer.Option(None, "--seed", "-s", help="seed for reproducible output"),
    no_cache: bool = typer.Option(False, "--no-cache", help="recompute the full context every token (reference path)"),
    echo: bool = typer.Option(True, "--echo/--no-echo", help="print the prompt before the continuation"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | mps | auto"),
) -> None:
    """Generate text from a trained checkpoint, streamed to stdout."""
    with handle_errors():
        check_sampling(max_new_tokens, temperature, top_k)
        from gptkit import checkpoint as ckpt
        from gptkit.display import Utf8Stream
        from gptkit.generate import generate
        from gptkit.runtime import pick_device

        dev = pick_device(device)
        model, tokenizer, _ = ckpt.load_for_inference(checkpoint, checkpoints, dev)
        ids = tokenizer.encode(prompt) if prompt else []
        if not ids:  # no prompt: start from end-of-text, or a newline, as a neutral beginning
            ids = [tokenizer.eot_id] if tokenizer.eot_id is not None else _newline(tokenizer)
        out = Utf8Stream()
        if echo and prompt:
            out.write(prompt.encode("utf-8"))
        last = prompt
        for token in generate(model, ids, max_new_tokens, temperature, top_k, seed, use_cache=not no_cache):
            last = out.write(tokenizer.token_bytes(token)) or last
        last = out.finish() or last
        if not last.endswith("\n"):
            out.stream.write("\n")
            out.stream.flush()


def _newline(tokenizer) -> list[int]:
    try:
        ids = tokenizer.encode("\n")
    except TokenizerError:  # a char vocabulary without "\n": fall back to the first id
        ids = []
    return ids or [0]
