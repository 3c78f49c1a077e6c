"""`gptkit tokenize`: see how text becomes tokens, compare tokenizers, build token datasets.

Parses and checks flags with the standard library, picks one mode (view, --ids, --json, --count,
--decode, --compare, --out), imports the library lazily and renders. Colour and tables only when
stdout is a terminal and NO_COLOR is unset; every other output is plain text for scripts.
The numbers come from `gptkit.introspect.tokens` and `gptkit.data.build`; the drawing is in
`gptkit.cli.views.tokenize_view`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from gptkit.cli.app import CheckpointRef, Glob, Json, Quiet, SkipBad, Store, TextField, command, handle_errors
from gptkit.config import TrainConfig, check_bpe_vocab
from gptkit.errors import InputError, UsageError
from gptkit.fsio import check_output_file

if TYPE_CHECKING:  # imported when used: the builder is not needed for --help
    from gptkit.data.build import Scanned

_MODES = ("ids", "json", "count", "decode", "compare", "out")
_TRAINED = ("char", "bpe")  # tokenizers that learn from text


def rich_output() -> bool:
    """Colour and tables on stdout only for a person at a terminal who has not asked for NO_COLOR."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def check_flags(modes: dict[str, bool], text: str | None, file: Path | None, lines: bool,
                tokenizer: str | None, checkpoint: str | None, save_tokenizer: Path | None,
                val_fraction: float, vocab_size: int | None = None) -> str:
    """The one mode asked for ("view" if none); bad combinations are one-line usage errors."""
    chosen = [m for m in _MODES if modes[m]]
    if len(chosen) > 1:
        raise UsageError(f"choose one of --ids, --json, --count, --decode, --compare, --out (got {', '.join(chosen)})")
    mode = chosen[0] if chosen else "view"
    if lines and mode not in ("ids", "json", "count", "decode"):
        raise UsageError("--lines goes with --ids, --json, --count or --decode")
    if text is not None and file is not None:
        raise UsageError("give the text as an argument or with --file, not both")
    if tokenizer is not None and checkpoint is not None:
        raise UsageError("--checkpoint brings its own tokenizer; drop --tokenizer")
    if mode == "compare" and (checkpoint is not None or tokenizer is not None or save_tokenizer is not None):
        raise UsageError("--compare takes its tokenizers (names or .json files) in its own list; drop "
                         "--tokenizer, --checkpoint and --save-tokenizer")
    if mode == "out" and text is None and file is None:
        raise UsageError("--out needs the inputs to tokenize: gptkit tokenize FILE|FOLDER... --out DIR")
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    check_bpe_vocab(vocab_size)
    return mode


def read_input(text: str | None, file: Path | None, as_path: bool) -> str:
    """The text to work on: the argument (a path when `as_path`), --file, `-` or a pipe on stdin."""
    from gptkit.data.chunks import argument_text, decode_utf8
    from gptkit.data.sources import read_text

    if file is not None or (as_path and text not in (None, "-")):
        return read_text(file if file is not None else text)
    if text is not None and text != "-":
        text = argument_text(text, "the TEXT argument")
        if not text:
            raise InputError("the TEXT argument is empty; give some text")
        return text
    if text is None and sys.stdin.isatty():
        raise UsageError("no text: give TEXT, --file FILE, or pipe text in (see `gptkit tokenize --help`)")
    return decode_utf8(sys.stdin.buffer.read(), "stdin")


def parse_ids(line: str, where: str) -> list[int]:
    """Token ids written as integers separated by spaces or commas (a JSON list works too)."""
    out = []
    for word in re.split(r"[\s,\[\]]+", line):
        if not word:
            continue
        try:
            out.append(int(word))
        except ValueError:
            raise InputError(f"{word[:20]!r} {where} is not a token id; --decode reads integers separated "
                             "by spaces") from None
    return out


def train_source(train_file: Path | None) -> list[Scanned] | None:
    """--train-file, checked and read once now (streamed, as any input: a bad file fails before any
    work); char and bpe stream it again to learn from it, so it is never one string in memory."""
    if train_file is None:
        return None
    from gptkit.data.build import scan_inputs
    from gptkit.data.sources import existing_file, input_file

    return scan_inputs([input_file(existing_file(train_file), str(train_file))])[0]


def load_tokenizer_for(spec: str | None, checkpoint: str | None, store: Path | None,
                       train_text: str | None, vocab_size: int | None, decoding: bool = False,
                       train_from: list[Scanned] | None = None):
    """The tokenizer asked for: a checkpoint's own, a saved JSON file, or a name (char and bpe learn
    from `train_from`, the scanned --train-file, else from `train_text`)."""
    if checkpoint is not None:
        from gptkit.checkpoint import read_info, resolve  # imports torch: only for this flag
        from gptkit.tokenizers.stored import tokenizer_from_dict

        return tokenizer_from_dict(read_info(resolve(checkpoint, store)).meta["tokenizer"])
    from gptkit.tokenizers import resolve_tokenizer

    name = spec or TrainConfig.tokenizer
    if decoding and name in _TRAINED and train_text is None and train_from is None:
        raise UsageError(f"--decode with {name} needs the tokenizer that made the ids: pass --tokenizer FILE.json "
                         "(saved with --save-tokenizer), --checkpoint, or --train-file")
    if train_from is not None and name in _TRAINED:
        from gptkit.data.build import tokenizer_for

        return tokenizer_for(train_from, name, vocab_size, val_fraction=0.0)  # all of it, as one text would
    return resolve_tokenizer(name, train_text, vocab_size)


File = Annotated[Optional[Path], typer.Option("--file", metavar="<file>", help="read the text from this file")]
TokenizerName = Annotated[Optional[str], typer.Option(
    "--tokenizer", "-t", metavar="<name>", show_default=False,
    help="char | byte | bpe | gpt2 | r50k_base | cl100k_base | o200k_base | … | a tokenizer .json file "
         "[default: char]")]
VocabSize = Annotated[Optional[int], typer.Option("--vocab-size", show_default=False,
                                                  help="bpe vocabulary size [default: 1024]")]
TrainFile = Annotated[Optional[Path], typer.Option("--train-file", metavar="<file>", show_default=False,
                                                   help="text that char and bpe learn from [default: the input text]")]
SaveTokenizer = Annotated[Optional[Path], typer.Option("--save-tokenizer", metavar="<file>",
                                                       help="write the tokenizer to this .json")]
Ids = Annotated[bool, typer.Option("--ids", help="print token ids separated by spaces")]
Lines = Annotated[bool, typer.Option("--lines", help="with --ids/--json/--count/--decode: one line per input line")]
Count = Annotated[bool, typer.Option("--count", help="print just the number of tokens")]
Decode = Annotated[bool, typer.Option("--decode", help="read token ids, print the text they stand for")]
Compare = Annotated[Optional[str], typer.Option("--compare", metavar="<names>", help="tokenizers to compare side by "
                                                "side on FILE, e.g. byte,gpt2,bpe")]
Out = Annotated[Optional[Path], typer.Option("--out", "-o", metavar="<dir>", help="build a dataset folder from "
                                             "the inputs: train.bin, val.bin, meta.json (with --glob, --text-field, "
                                             "--skip-bad)")]
ValFraction = Annotated[float, typer.Option("--val-fraction", help="with --out: the last fraction of each input "
                                            "held out")]


@command("tokenize", "See how text becomes tokens; build datasets.")
def tokenize_command(
    text: Optional[list[str]] = typer.Argument(None, metavar="TEXT", help="text to tokenize (`-` = stdin); the "
                                                "FILE for --compare; ids for --decode; for --out, the inputs: files, "
                                                "folders, .gz/.zst, .jsonl, `-`, URLs", show_default=False),
    file: File = None,
    tokenizer: TokenizerName = None,
    vocab_size: VocabSize = None,
    train_file: TrainFile = None,
    save_tokenizer: SaveTokenizer = None,
    checkpoint: CheckpointRef = None,
    store: Store = None,
    ids: Ids = False,
    lines: Lines = False,
    json_out: Json = False,
    count: Count = False,
    decode: Decode = False,
    compare: Compare = None,
    out: Out = None,
    val_fraction: ValFraction = 0.1,
    glob: Glob = None,
    text_field: TextField = None,
    skip_bad: SkipBad = False,
    quiet: Quiet = False,
) -> None:
    """Show how text becomes tokens; compare tokenizers; build token datasets.

    \b
    gptkit tokenize "안녕하세요 저는 ChatGPT입니다" -t gpt2
    echo hello | gptkit tokenize --ids -t gpt2 | gptkit tokenize --decode -t gpt2
    gptkit tokenize --compare byte,gpt2,bpe novel.txt
    gptkit tokenize novel.txt --out data/novel -t bpe --vocab-size 4096
    gptkit tokenize chapters/ more.jsonl.gz --out data/all -t gpt2
    """
    with handle_errors():
        texts, text = text, _one_text(text, out, glob, text_field, skip_bad)
        modes = {"ids": ids, "json": json_out, "count": count, "decode": decode,
                 "compare": compare is not None, "out": out is not None}
        mode = check_flags(modes, text, file, lines, tokenizer, checkpoint, save_tokenizer, val_fraction, vocab_size)
        if save_tokenizer is not None:  # before a bpe is trained or a corpus encoded, not after
            check_output_file(save_tokenizer, "--save-tokenizer FILE")
        train_from = train_source(train_file)
        if mode == "out":
            _build(_inputs(texts, file, glob, text_field, skip_bad), out, tokenizer, checkpoint, store,
                   train_from, vocab_size, val_fraction, save_tokenizer, quiet)
        elif mode == "compare":
            _compare(read_input(text, file, as_path=True), compare, vocab_size, train_from)
        else:
            _show(mode, read_input(text, file, as_path=False), tokenizer, checkpoint, store, train_from, vocab_size,
                  save_tokenizer, lines)


def _show(mode: str, source: str, spec: str | None, checkpoint: str | None, store: Path | None,
          train_from: list[Scanned] | None, vocab_size: int | None, save_tokenizer: Path | None, lines: bool) -> None:
    """The modes that read one text with one tokenizer: the view, --ids, --json, --count, --decode."""
    tok = load_tokenizer_for(spec, checkpoint, store, None if mode == "decode" else source, vocab_size,
                             decoding=mode == "decode", train_from=train_from)
    if save_tokenizer is not None:
        from gptkit.tokenizers.stored import save_tokenizer as save

        save(tok, save_tokenizer)
    if mode == "decode":
        _decode(tok, source, lines)
    elif mode == "view":
        _view(tok, source)
    else:
        _script_output(tok, source, mode, lines)


def _one_text(texts: list[str] | None, out: Path | None, glob: list[str] | None, text_field: str | None,
              skip_bad: bool) -> str | None:
    """The TEXT argument of every mode but --out (which takes several inputs, and the flags that choose them)."""
    if out is None and (glob or text_field is not None or skip_bad):
        raise UsageError("--glob, --text-field and --skip-bad go with --out")
    if out is None and texts and len(texts) > 1:
        raise UsageError(f"got {len(texts)} TEXT arguments; quote a text that has spaces (several inputs go "
                         "with --out)")
    return texts[0] if texts else None


def _inputs(texts: list[str] | None, file: Path | None, glob: list[str] | None, text_field: str | None,
            skip_bad: bool):
    """--out's inputs: the FILE of --file, or every argument; `-` reads a pipe."""
    from gptkit.data.sources import DataSpec

    refs = (str(file),) if file is not None else tuple(texts or ())
    if "-" in refs and sys.stdin.isatty():
        raise UsageError("'-' reads the text from stdin: pipe it in, e.g. `cat *.txt | gptkit tokenize - --out DIR`")
    return DataSpec(refs, tuple(glob or ()), text_field or "text", skip_bad, sys.stdin.buffer if "-" in refs else None)


def _decode(tok, source: str, lines: bool) -> None:
    out = sys.stdout.buffer
    if lines:
        for n, line in enumerate(source.splitlines(), 1):
            out.write(tok.decode_bytes(parse_ids(line, f"on line {n}")) + b"\n")
    else:
        out.write(tok.decode_bytes(parse_ids(source, "in the input")))
    out.flush()


def _script_output(tok, source: str, mode: str, lines: bool) -> None:
    """--ids, --json, --count: for the whole text, or one line of output per input line."""
    from gptkit.cli.views import tokenize_view as render
    from gptkit.introspect.tokens import Pieces

    parts = source.split("\n") if lines else [source]
    if lines and source.endswith("\n"):
        parts.pop()  # the final newline ends the last line; it does not start another
    encoded = [tok.encode_array(part) for part in parts]  # text that cannot be encoded fails before any output
    fields = render.JsonFields(Pieces(tok))  # shared by the documents of --lines
    for part, part_ids in zip(parts, encoded, strict=True):
        if mode == "ids":
            _write(render.joined_ids(part_ids, " "))
            _write(["\n"])
        elif mode == "count":
            _write([f"{len(part_ids)}\n"])
        else:
            _write(render.json_document(tok, part, part_ids, fields))
            _write(["\n"])
    sys.stdout.flush()


def _view(tok, source: str) -> None:
    """The text as tokens: coloured with a table at a terminal (drawing only the first tokens),
    else the plain view written part by part as it is made."""
    from itertools import islice

    from gptkit.cli.views import tokenize_view as render
    from gptkit.introspect.tokens import Counts, iter_tokens

    token_ids = tok.encode_array(source)
    counts = Counts(len(source), len(source.encode("utf-8")), len(token_ids))
    tokens = iter_tokens(tok, source, token_ids)  # made as they are read: only the shown ones are made
    if rich_output():
        render.rich_view(tok, source, list(islice(tokens, render.SHOWN)), counts)
    else:
        _write(render.plain_view(tok, source, tokens, counts))
        sys.stdout.flush()


def _write(parts: Iterable[str]) -> None:
    """Write output parts to stdout as they come. A reader that went away (`| head`) or a failed
    write reaches `handle_errors`, as a single write would."""
    for part in parts:
        sys.stdout.write(part)


def _compare(source: str, spec: str, vocab_size: int | None, train_from: list[Scanned] | None) -> None:
    from gptkit.cli.views import tokenize_view as render
    from gptkit.introspect.tokens import compare

    specs = [s.strip() for s in spec.split(",") if s.strip()]
    if not specs:
        raise UsageError("--compare needs a comma-separated list of tokenizers, e.g. byte,gpt2,bpe")
    learnt = None if train_from is None else (  # each tokenizer as --train-file makes it
        lambda one: load_tokenizer_for(one, None, None, None, vocab_size, train_from=train_from))
    rows = compare(source, specs, vocab_size, learnt)
    if rich_output():
        render.rich_compare(rows)
    else:
        sys.stdout.write(render.plain_compare(rows))
        sys.stdout.flush()


def _build(data, out: Path, spec: str | None, checkpoint: str | None, store: Path | None,
           train_from: list[Scanned] | None, vocab_size: int | None, val_fraction: float, save_tokenizer: Path | None,
           quiet: bool) -> None:
    """--out: stream the inputs into a dataset folder, with progress on stderr."""
    from gptkit.cli.views.data_view import BuildProgress, build_summary
    from gptkit.data.build import build_dataset
    from gptkit.data.sources import open_inputs
    from gptkit.fsio import removed_on_error
    from gptkit.tokenizers import TOKENIZER_NAMES

    name = spec or TrainConfig.tokenizer
    given = None  # a ready tokenizer (checkpoint, JSON file, or learnt from --train-file)
    if checkpoint is not None or train_from is not None or name not in TOKENIZER_NAMES:
        given = load_tokenizer_for(spec, checkpoint, store, None, vocab_size, train_from=train_from)
    from gptkit.checkpoint import default_store

    store = store or default_store()
    progress = BuildProgress(enabled=not quiet)
    try:  # stdin is kept beside the output while it is read: on that disk, not in a RAM-backed /tmp
        with removed_on_error(out), open_inputs(data, store / ".cache", exclude=[out],
                                                spool_dir=out.resolve().parent) as inputs:
            ds = build_dataset(inputs, out, None if given else name, vocab_size, val_fraction, given,
                               source={"refs": list(data.refs)}, on_event=progress, text_field=data.text_field,
                               skip_bad=data.skip_bad)
    finally:
        progress.close()
    progress.report()
    if save_tokenizer is not None:
        from gptkit.tokenizers.stored import save_tokenizer as save

        save(ds.tokenizer, save_tokenizer)
    if not quiet:
        typer.echo(build_summary(ds), err=True)
