"""`gptkit inspect`: look inside a checkpoint and one forward pass, in the terminal or as JSON/SVG/HTML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from gptkit.cli.app import CheckpointRef, Device, Json, Prompt, Store, command, handle_errors
from gptkit.config import check_seed
from gptkit.errors import UsageError
from gptkit.fsio import cannot_write, check_output_file

SAVE_KINDS = (".svg", ".html")


def check_options(prompt: str | None, rows: int, layer: int | None, head: int | None, numbers: bool,
                  neighbors: bool, data: Path | None, max_positions: int | None, n_neighbors: int,
                  save: Path | None, n_eval: int | None = None) -> None:
    """Cheap checks before torch is imported; ranges that need the model's shape come later."""
    if n_eval is not None and not neighbors:
        raise UsageError("--eval N measures the --neighbors method over N positions; add --neighbors")
    for flag, value in (("--rows", rows), ("--max-positions", 1 if max_positions is None else max_positions),
                        ("--n-neighbors", n_neighbors), ("--eval", 1 if n_eval is None else n_eval)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    for flag, value in (("--layer", layer), ("--head", head)):
        if value is not None and value < 0:
            raise UsageError(f"{flag} counts from 0, got {value}")
    needs_prompt = [f for f, on in (("--layer", layer is not None), ("--head", head is not None),
                                    ("--numbers", numbers), ("--neighbors", neighbors and n_eval is None)) if on]
    if needs_prompt and prompt is None:
        raise UsageError(f"{needs_prompt[0]} looks inside a forward pass; give it a --prompt TEXT")
    if data is not None and not neighbors:
        raise UsageError("--data is the training text for --neighbors; add --neighbors")
    if save is not None:
        if save.suffix.lower() not in SAVE_KINDS:
            raise UsageError(f"--save writes .svg or .html, not {save.name!r}")
        check_output_file(save, "--save FILE")


def one_checkpoint(argument: str | None, option: str | None) -> str | None:
    """The checkpoint named as the argument or, as `gptkit sample` takes it, with -c/--checkpoint."""
    if argument is not None and option is not None and argument != option:
        raise UsageError(f"two checkpoints given ({argument!r} and --checkpoint {option!r}); name one")
    return argument if argument is not None else option


def check_shape(layer: int | None, head: int | None, n_layer: int, n_head: int) -> None:
    if layer is not None and layer >= n_layer:
        raise UsageError(f"--layer {layer} is out of range: this model has {n_layer} layers (0-{n_layer - 1})")
    if head is not None and head >= n_head:
        raise UsageError(f"--head {head} is out of range: this model has {n_head} heads per layer (0-{n_head - 1})")


@command("inspect", "Look inside a checkpoint and one forward pass.")
def inspect_command(
    checkpoint: Optional[str] = typer.Argument(None, metavar="CHECKPOINT", show_default=False,
                                               help="checkpoint file, run folder or run name [default: the newest run]"),
    checkpoint_option: CheckpointRef = None,
    store: Store = None,
    prompt: Prompt = None,
    rows: int = typer.Option(10, "--rows", help="rows of the next-token and logit-lens tables"),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="attention of this layer only (from 0)"),
    head: Optional[int] = typer.Option(None, "--head", help="attention of this head only (from 0)"),
    numbers: bool = typer.Option(False, "--numbers", help="also print the attention weight matrices"),
    neighbors: bool = typer.Option(False, "--neighbors", help="find training positions whose FFN output "
                                   "is most like the prompt's, and what followed them"),
    data: Optional[Path] = typer.Option(None, "--data", metavar="<file>", show_default=False,
                                        help="training text for --neighbors [default: the file recorded in the "
                                             "checkpoint]"),
    max_positions: Optional[int] = typer.Option(None, "--max-positions", show_default=False,
                                                help="scan at most this many positions [default: 100000; with "
                                                "--eval the whole training split, up to a 1 GiB cache]"),
    n_neighbors: int = typer.Option(20, "--n-neighbors", help="neighbours kept per block"),
    n_eval: Optional[int] = typer.Option(None, "--eval", metavar="<n>", show_default=False,
                                         help="with --neighbors: measure the method over N held-out positions "
                                         "against the model and two baselines (no --prompt needed)"),
    seed: int = typer.Option(0, "--seed", "-s", help="which positions --eval draws"),
    json_out: Json = False,
    save: Optional[Path] = typer.Option(None, "--save", metavar="<file>", help="also write the view as a picture: "
                                        "FILE.svg or FILE.html"),
    device: Device = "auto",
) -> None:
    """Look inside a checkpoint: its summary, and with --prompt the next-token table, attention heatmaps,
    logit lens and direct logit attribution; --neighbors compares FFN outputs with the training text
    (--eval N: over N held-out positions)."""
    with handle_errors():
        check_options(prompt, rows, layer, head, numbers, neighbors, data, max_positions, n_neighbors, save, n_eval)
        check_seed(seed)
        if prompt is not None:
            from gptkit.data.chunks import argument_text

            prompt = argument_text(prompt, "--prompt")
        checkpoint = one_checkpoint(checkpoint, checkpoint_option)
        from gptkit import checkpoint as ckpt
        from gptkit.introspect.trace import summarize

        info = ckpt.read_info(ckpt.resolve(checkpoint, store))
        cfg = info.model_config
        check_shape(layer, head, cfg.n_layer, cfg.n_head)
        out: dict[str, Any] = {"summary": summarize(info), "analysis": None, "neighbors": None, "eval": None}
        if prompt is not None:
            out.update(_forward(info, prompt, rows, neighbors, data, max_positions, n_neighbors, device))
        if n_eval is not None:
            out["eval"] = _evaluate(info, data, n_eval, n_neighbors, max_positions, seed, device)
        if json_out:
            typer.echo(json.dumps(out, ensure_ascii=False))
        view = dict(summary=out["summary"], res=out["analysis"], nb=out["neighbors"], ev=out["eval"], layer=layer,
                    head=head, numbers=numbers, k=rows)
        if not json_out:
            from gptkit.cli.views.inspect_view import StdoutConsole, render

            render(StdoutConsole(), **view)
        if save is not None:
            _save(save, view, len(out["analysis"]["tokens"]) if out["analysis"] else 0)


def _forward(info, prompt: str, top_k: int, neighbors: bool, data: Path | None, max_positions: int | None,
             n_neighbors: int, device: str) -> dict[str, Any]:
    from gptkit.checkpoint import build_model
    from gptkit.introspect.trace import analyze
    from gptkit.runtime import pick_device
    from gptkit.tokenizers.stored import tokenizer_from_dict

    tokenizer = tokenizer_from_dict(info.meta["tokenizer"])
    model = build_model(info, pick_device(device)).float().eval()  # inspect in full precision
    tr, res = analyze(model, tokenizer, prompt, top_k)
    nb = None
    if neighbors:
        from gptkit.cli.views.inspect_view import scan_progress
        from gptkit.introspect.neighbors import neighbours, training_text

        source = training_text(info, data)
        for warning in source.warnings:
            typer.echo(f"warning: {warning}", err=True)
        with scan_progress() as progress:
            nb = neighbours(model, tokenizer, tr, source, n_neighbors, max_positions or 100_000, progress)
    return {"analysis": res, "neighbors": nb}


def _evaluate(info, data: Path | None, n: int, k: int, max_positions: int | None, seed: int,
              device: str) -> dict[str, Any]:
    from gptkit.checkpoint import build_model
    from gptkit.cli.views.inspect_view import phase_progress
    from gptkit.introspect.neighbor_eval import eval_texts, evaluate
    from gptkit.runtime import pick_device
    from gptkit.tokenizers.stored import tokenizer_from_dict

    tokenizer = tokenizer_from_dict(info.meta["tokenizer"])
    model = build_model(info, pick_device(device)).float().eval()
    texts = eval_texts(info, data)
    for warning in texts.train.warnings:
        typer.echo(f"warning: {warning}", err=True)
    with phase_progress() as progress:
        result = evaluate(model, tokenizer, info, texts, n, k, max_positions, seed, progress)
    if "warning" in result["cache"]:
        typer.echo(f"warning: {result['cache']['warning']}", err=True)
    return result


def _save(path: Path, view: dict[str, Any], n_tokens: int) -> None:
    """Render the same view on a recording console (in colour, whatever NO_COLOR says) and export it."""
    import io

    from rich.console import Console

    from gptkit.cli.views.inspect_view import render

    width = max(120, 16 + 5 * n_tokens) if view["numbers"] else 120
    console = Console(file=io.StringIO(), record=True, width=width, force_terminal=True,
                      color_system="truecolor", no_color=False)
    render(console, **view)
    try:
        if path.suffix.lower() == ".svg":
            console.save_svg(str(path), title=f"gptkit inspect {view['summary']['run']}")
        else:
            console.save_html(str(path))
    except OSError as e:
        raise cannot_write(path, e, "--save FILE") from None
