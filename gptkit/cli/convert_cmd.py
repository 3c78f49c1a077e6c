"""`gptkit convert SRC DST`: Hugging Face GPT-2 folder <-> gptkit checkpoint (the work is in convert.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Optional

import typer

from gptkit.cli.app import Store, command, handle_errors


@command("convert", "Convert to and from Hugging Face GPT-2.")
def convert_command(
    src: str = typer.Argument(..., metavar="SRC", help="a Hugging Face GPT-2 folder (config.json + model.safetensors), "
                              "or a gptkit checkpoint file, run folder or run name", show_default=False),
    dst: str = typer.Argument(..., metavar="DST", help="output: a folder (gets last.safetensors) or FILE.safetensors for a "
                              "gptkit checkpoint; a folder for a Hugging Face model", show_default=False),
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = typer.Option(
        None, "--dtype", help="precision of the output [default: the source's]", show_default=False),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output"),
    store: Store = None,
) -> None:
    """Convert a Hugging Face GPT-2 model to a gptkit checkpoint, or back; the direction comes from SRC.

    A folder with config.json is read as Hugging Face's (safetensors only: a pickled pytorch_model.bin is
    refused, never opened) and becomes a gptkit checkpoint with the gpt2 tokenizer. A gptkit checkpoint
    becomes a folder that transformers' AutoModelForCausalLM.from_pretrained loads.
    """
    with handle_errors():
        from gptkit.fsio import removed_on_error
        from gptkit.hf.convert import HF_TO_GPTKIT, convert

        with removed_on_error(Path(dst)):  # a failed conversion leaves no empty output folder
            r = convert(src, dst, dtype, overwrite, store)
        c = r.config
        shape = (f"{c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, context {c.block_size}, "
                 f"vocab {c.vocab_size}; {r.params / 1e6:.2f}M params, {r.dtype}")
        prog = "gptkit" if Path(sys.argv[0]).name == "gptkit" else "python -m gptkit"
        if r.direction == HF_TO_GPTKIT:
            typer.echo(f"converted Hugging Face GPT-2 ({shape}) -> {r.dst} with the {r.tokenizer} tokenizer", err=True)
            typer.echo(f"sample: {prog} sample -c {r.dst} --prompt \"...\"", err=True)
        else:
            typer.echo(f"converted {r.src} ({shape}) -> {r.dst}/ ({', '.join(r.files)})", err=True)
            typer.echo(f"load: AutoModelForCausalLM.from_pretrained({str(r.dst)!r})", err=True)
