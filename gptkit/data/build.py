"""Building a token dataset folder from any number of inputs of any size: streamed, in bounded memory,
on all cores.

Owns `build_dataset`, the one code path behind both `gptkit tokenize INPUT... --out DIR` and
`gptkit train INPUT...` (which caches the folder under `checkpoints/<run>/data/` through
`prepare_dataset`, the reuse-or-build front door). Chunks are encoded by `Tokenizer.encode_array`
on a thread pool (tiktoken's native `encode_to_numpy` releases the GIL).

How it stays exact and bounded:
1. `scan_inputs` reads every input once: its sha256, its text bytes, its documents; a binary, non-UTF-8
   or empty file stops the build with one line (or, with `skip_bad`, is left out and reported);
2. each input is split on its own (`chunks.Splitter`): its last `val_fraction`, moved to a line start,
   is validation, so adding a file never moves another file's validation text into training;
3. a ``char`` vocabulary is collected in a pass over all the text, a ``bpe`` is trained by rustbpe
   streaming the training parts;
4. the training parts, input after input, then likewise the validation parts, are joined into two
   texts (documents joined by the tokenizer's end-of-text id, else by a blank line: `chunks.Chunker`),
   cut where tokenization cannot change, encoded a few chunks at a time and appended to temporary
   ``.bin`` files, which are renamed at the end, `meta.json` last. The result is byte-identical
   whatever the chunk size and equals encoding each side's joined text whole.

It does not read the folder back for training (`dataset.py` does) and never prints: progress and
skipped files are events (dicts) sent to `on_event`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptkit.data.chunks import DOC_END, Chunker, Piece, Splitter, Task
from gptkit.data.dataset import DATASET_FORMAT, TokenDataset, load_dataset, token_dtype
from gptkit.data.sources import InputFile, read_documents
from gptkit.errors import InputError
from gptkit.fsio import atomic_write_bytes, clean_stale_temps, file_lock, removed_on_error, temp_path
from gptkit.tokenizers import build_tokenizer
from gptkit.tokenizers.bpe import DEFAULT_BPE_VOCAB_SIZE, TRAIN_CHUNK_CHARS, train_bpe_from_chunks
from gptkit.tokenizers.core import UNICODE_SIZE, CharTokenizer, Tokenizer, code_points

CHUNK_CHARS = 1 << 18  # characters encoded per task (small enough that the last tasks do not idle a core)
BUILDER = 2  # bumped when the same inputs would give other arrays: older caches are rebuilt
BUILD_WAIT_S = 24 * 3600  # how long a builder waits for another one building the same folder (another node)
Event = dict[str, Any]


@dataclass
class Scanned:
    """An input after its first read: what meta.json records about it."""

    inp: InputFile
    size: int  # bytes on disk
    sha256: str  # of the bytes on disk
    text_bytes: int  # UTF-8 bytes of its documents' text
    documents: int
    train_bytes: int = 0  # of text_bytes, known after the split
    val_bytes: int = 0

    def record(self) -> dict[str, Any]:
        return {"name": self.inp.name, "path": self.inp.record_path, "size": self.size, "sha256": self.sha256,
                "documents": self.documents, "train_bytes": self.train_bytes, "val_bytes": self.val_bytes}


class Reporter:
    """Turns bytes read into "data" events: phase, bytes and files done of their totals."""

    def __init__(self, on_event: Callable[[Event], None] | None, phase: str, total_bytes: int, total_files: int):
        self.on_event, self.phase = on_event, phase
        self.total_bytes, self.total_files = total_bytes, total_files
        self.bytes = self.files = 0
        self.last = 0.0

    def seen(self, raw: memoryview | bytes) -> None:
        self.bytes += len(raw)
        self._emit(False)

    def file_done(self, size: int, read: int) -> None:
        self.files += 1
        self.bytes += max(0, size - read)  # a pass that stopped early (bpe reads only the training part)
        self._emit(self.files == self.total_files)

    def _emit(self, final: bool) -> None:
        now = time.monotonic()
        if self.on_event is not None and (final or now - self.last >= 0.1):
            self.last = now
            self.on_event({"event": "data", "phase": self.phase, "bytes": self.bytes, "total_bytes": self.total_bytes,
                           "files": self.files, "total_files": self.total_files})


def scan_one(inp: InputFile, text_field: str = "text",
             seen: Callable[[memoryview], None] = lambda raw: None) -> Scanned:
    """Read one input to its end: sha256, text bytes, documents; one-line errors for bad ones."""
    sha = hashlib.sha256()
    n_bytes = breaks = 0
    blank = True

    def both(raw: memoryview) -> None:
        sha.update(raw)
        seen(raw)

    with closing(read_documents(inp, text_field, both)) as pieces:
        for piece in pieces:
            if piece is DOC_END:
                breaks += 1
                continue
            n_bytes += piece[1]
            blank = blank and piece[0].isspace()
    if n_bytes == 0:
        raise InputError(f"{inp.label} is empty; give a file with some text in it")
    if blank:
        raise InputError(f"{inp.label} is only whitespace; give a file with some text in it")
    return Scanned(inp, inp.size, sha.hexdigest(), n_bytes, breaks + 1)


def scan_inputs(inputs: Sequence[InputFile], text_field: str = "text", skip_bad: bool = False,
                on_event: Callable[[Event], None] | None = None) -> tuple[list[Scanned], list[dict[str, str]]]:
    """Read every input once (`scan_one`). A bad input stops with its one-line error, or, with
    `skip_bad`, is left out, reported as a "skipped" event and listed in the second result."""
    if not inputs:
        raise InputError("no input files; give text files or folders of them")
    report = Reporter(on_event, "checking", sum(i.size for i in inputs), len(inputs))
    good: list[Scanned] = []
    skipped: list[dict[str, str]] = []
    for inp in inputs:
        before = report.bytes
        try:
            good.append(scan_one(inp, text_field, report.seen))
        except InputError as e:
            if not skip_bad:
                hint = "; or pass --skip-bad to leave such files out" if len(inputs) > 1 else ""
                raise InputError(f"{e}{hint}") from None
            skipped.append({"name": inp.name, "reason": str(e)})
            if on_event is not None:
                on_event({"event": "skipped", "name": inp.name, "reason": str(e)})
        report.file_done(inp.size, report.bytes - before)
    if not good:
        raise InputError(f"all {len(inputs)} input files were skipped as bad (the first: {skipped[0]['reason']})")
    return good, skipped


def _sides(scanned: Sequence[Scanned], val_fraction: float, text_field: str, report: Reporter,
           train_only: bool = False, verify: bool = False) -> Iterator[tuple[str, Piece]]:
    """(side, piece) for every input in turn: its training part, then its validation part, and a
    DOC_END on both sides after each input. `train_only` stops reading an input where its validation
    starts; `verify` checks it still has the sha256 and size it had when scanned."""
    for s in scanned:
        split = Splitter(s.text_bytes, val_fraction)
        sha = hashlib.sha256() if verify else None
        read = [0]

        def seen(raw: memoryview, sha=sha, read=read) -> None:
            read[0] += len(raw)
            if sha is not None:
                sha.update(raw)
            report.seen(raw)

        with closing(read_documents(s.inp, text_field, seen)) as pieces:
            for piece in pieces:
                yield from split.feed(piece)
                if train_only and split.state == "val":
                    break
            yield from split.finish()
        if sha is not None and (sha.hexdigest() != s.sha256 or split.pos != s.text_bytes):
            raise InputError(f"{s.inp.label} changed while the dataset was being built; build again once it stays "
                             "the same")
        s.train_bytes, s.val_bytes = split.split or 0, s.text_bytes - (split.split or 0)
        report.file_done(s.size, read[0])
        yield "train", DOC_END
        yield "val", DOC_END


def _tasks(items: Iterator[tuple[str, Piece]], chunkers: dict[str, Chunker]) -> Iterator[tuple[str, Task]]:
    """The pieces of each side regrouped by its Chunker (sides without one are dropped)."""
    for side, piece in items:
        chunker = chunkers.get(side)
        if chunker is not None:
            for task in chunker.feed(piece):
                yield side, task
    for side, chunker in chunkers.items():
        for task in chunker.finish():
            yield side, task


def tokenizer_for(scanned: Sequence[Scanned], name: str, vocab_size: int | None, val_fraction: float = 0.1,
                  text_field: str = "text", on_event: Callable[[Event], None] | None = None) -> Tokenizer:
    """Build the tokenizer `name` for the inputs: char learns from all their text (validation must be
    encodable), bpe from the training parts only; the others need no text."""
    total, n = sum(s.size for s in scanned), len(scanned)
    if name == "char":
        seen = np.zeros(UNICODE_SIZE, dtype=bool)
        chunkers = {side: Chunker(CHUNK_CHARS, exact=False) for side in ("train", "val")}
        report = Reporter(on_event, "vocabulary", total, n)
        for _, task in _tasks(_sides(scanned, val_fraction, text_field, report), chunkers):
            for part in task:
                seen[code_points(part)] = True
        return CharTokenizer("".join(map(chr, np.flatnonzero(seen))))
    if name == "bpe":
        report = Reporter(on_event, "training bpe", total, n)
        items = _sides(scanned, val_fraction, text_field, report, train_only=True)
        chars = [0]

        def texts() -> Iterator[str]:
            for _, task in _tasks(items, {"train": Chunker(TRAIN_CHUNK_CHARS, exact=True)}):
                for part in task:
                    chars[0] += len(part)
                    yield part

        tok = train_bpe_from_chunks(texts(), DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size)
        if not chars[0]:
            raise InputError(f"{scanned[0].inp.label} leaves no training text before the validation split; use more "
                             "text or a smaller --val-fraction")
        return tok
    return build_tokenizer(name, vocab_size=vocab_size)


def _encode_task(encode: Callable[[str], np.ndarray], task: Task) -> np.ndarray:
    """A task's texts encoded one by one, with its end-of-text ids between them, as one array."""
    parts = [encode(part) if isinstance(part, str) else np.array([part], dtype=np.uint32) for part in task]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _write_bins(scanned: Sequence[Scanned], tok: Tokenizer, out_dir: Path, val_fraction: float, text_field: str,
                chunk_chars: int, workers: int | None, on_event: Callable[[Event], None] | None) -> dict[str, list[int]]:
    """Encode both sides into temporary files, then rename them into place; {side: [tokens, chars]}."""
    dtype = token_dtype(tok.vocab_size)
    exact = tok.kind not in ("char", "byte")  # regex pre-tokenizers need cuts no piece spans
    workers = workers or os.cpu_count() or 1
    chunkers = {side: Chunker(chunk_chars, exact, tok.eot_id) for side in ("train", "val")}
    report = Reporter(on_event, "encoding", sum(s.size for s in scanned), len(scanned))
    tokens = {"train": 0, "val": 0}
    temps = {side: temp_path(out_dir / f"{side}.bin") for side in ("train", "val")}
    try:
        with ThreadPoolExecutor(workers) as pool, open(temps["train"], "wb") as train, \
                open(temps["val"], "wb") as val:
            outs = {"train": train, "val": val}
            pending: deque = deque()  # (side, future) in text order: a few chunks in flight, written in order

            def write_one() -> None:
                side, future = pending.popleft()
                ids = future.result()
                ids.astype(dtype, copy=False).tofile(outs[side])
                tokens[side] += len(ids)

            for side, task in _tasks(_sides(scanned, val_fraction, text_field, report, verify=True), chunkers):
                pending.append((side, pool.submit(_encode_task, tok.encode_array, task)))
                if len(pending) >= 2 * workers:
                    write_one()
            while pending:
                write_one()
            for f in outs.values():
                f.flush()
                os.fsync(f.fileno())
        (out_dir / "meta.json").unlink(missing_ok=True)  # the folder is incomplete until the new meta.json lands
        for side, tmp in temps.items():
            os.replace(tmp, out_dir / f"{side}.bin")
    except OSError as e:
        raise InputError(f"cannot write dataset folder {str(out_dir)!r} ({e.strerror or e}); free space or "
                         "choose another --out") from None
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return {side: [tokens[side], chunkers[side].chars] for side in ("train", "val")}


def build_dataset(inputs: Sequence[InputFile], out_dir: Path, tokenizer_name: str | None = None,
                  vocab_size: int | None = None, val_fraction: float = 0.1, tokenizer: Tokenizer | None = None,
                  source: dict[str, Any] | None = None, key: dict[str, Any] | None = None,
                  chunk_chars: int = CHUNK_CHARS, workers: int | None = None,
                  on_event: Callable[[Event], None] | None = None, text_field: str = "text", skip_bad: bool = False,
                  scanned: tuple[list[Scanned], list[dict[str, str]]] | None = None) -> TokenDataset:
    """Tokenize `inputs` into out_dir/train.bin, val.bin and meta.json (written last).

    `tokenizer` is used as is when given, else `tokenizer_name` (+ `vocab_size` for bpe) is built
    from the inputs. `source` (what the user gave) and `key` (what a cache must match) go into
    meta.json; `scanned` is `scan_inputs`' result when the caller has it already.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    if chunk_chars < 1:
        raise InputError(f"chunk size must be positive, got {chunk_chars}")
    if tokenizer is None and tokenizer_name is None:
        raise InputError("build_dataset needs a tokenizer or a tokenizer name")
    good, skipped = scanned if scanned is not None else scan_inputs(inputs, text_field, skip_bad, on_event)
    if tokenizer is None:
        tokenizer = tokenizer_for(good, tokenizer_name, vocab_size, val_fraction, text_field, on_event)
    out_dir = Path(out_dir)
    with removed_on_error(out_dir):  # a build that fails leaves no half-made folder behind
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create dataset folder {str(out_dir)!r}: {e.strerror}") from None
        clean_stale_temps(out_dir)  # left by a build that was killed
        counts = _write_bins(good, tokenizer, out_dir, val_fraction, text_field, chunk_chars, workers, on_event)
        key = key if key is not None else dataset_key(tokenizer_name or tokenizer.name, vocab_size, val_fraction,
                                                      text_field)
        meta = {
            "format": DATASET_FORMAT,
            "dtype": token_dtype(tokenizer.vocab_size).name,
            "train_tokens": counts["train"][0],
            "val_tokens": counts["val"][0],
            "key": key,
            "inputs": [s.record() for s in good],
            "skipped": skipped,
            "join": "end-of-text" if tokenizer.eot_id is not None else "blank line",
            "source": summary(good, (source or {}).get("refs")) | (source or {}),
            "val_fraction": val_fraction,
            "train_chars": counts["train"][1],
            "val_chars": counts["val"][1],
            "tokenizer": tokenizer.to_dict(),
        }
        try:
            atomic_write_bytes(out_dir / "meta.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
        except OSError as e:
            raise InputError(f"cannot write dataset folder {str(out_dir)!r} ({e.strerror or e}); free space or "
                             "choose another --out") from None
    return load_dataset(out_dir, tokenizer)


def summary(scanned: Sequence[Scanned], refs: Sequence[str] | None = None) -> dict[str, Any]:
    """The inputs in one record (a checkpoint keeps it): what the user gave (`refs`), and one input's own
    path and sha256, or, for several, their common folder and the sha256 of their list."""
    origin = " ".join(refs) if refs else scanned[0].inp.name if len(scanned) == 1 else f"{len(scanned)} files"
    if len(scanned) == 1:
        s = scanned[0]
        return {"path": s.inp.record_path, "origin": origin, "sha256": s.sha256, "bytes": s.size, "files": 1}
    listing = "".join(f"{s.sha256} {s.size} {s.inp.record_path}\n" for s in scanned)
    paths = [s.inp.record_path for s in scanned]
    return {"path": os.path.commonpath(paths) if all(os.path.isabs(p) for p in paths) else "", "origin": origin,
            "sha256": hashlib.sha256(listing.encode("utf-8")).hexdigest(), "bytes": sum(s.size for s in scanned),
            "files": len(scanned)}


def dataset_key(tokenizer_name: str, vocab_size: int | None, val_fraction: float, text_field: str = "text",
                tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """What a cached dataset must match to be reused (besides its inputs, compared one by one)."""
    key = {"builder": BUILDER, "tokenizer_name": tokenizer_name, "bpe_vocab_size": vocab_size,
           "val_fraction": val_fraction, "text_field": text_field}
    if tokenizer is not None:
        key["tokenizer_fingerprint"] = tokenizer.fingerprint
    return key


def reusable(out_dir: Path, key: dict[str, Any], scanned: Sequence[Scanned]) -> TokenDataset | None:
    """The dataset in out_dir if it was built the same way from inputs with the same paths, sizes and sha256."""
    if not (out_dir / "meta.json").is_file():
        return None
    try:
        ds = load_dataset(out_dir)
    except InputError:
        return None  # damaged: rebuilt
    recorded = [(i.get("path"), i.get("size"), i.get("sha256")) for i in ds.meta.get("inputs", [])]
    if ds.meta.get("key") == key and recorded == [(s.inp.record_path, s.size, s.sha256) for s in scanned]:
        return ds
    return None


def prepare_dataset(inputs: Sequence[InputFile], tokenizer_name: str, vocab_size: int | None, val_fraction: float,
                    out_dir: Path, tokenizer: Tokenizer | None = None, text_field: str = "text",
                    skip_bad: bool = False, source: dict[str, Any] | None = None,
                    on_event: Callable[[Event], None] | None = None) -> TokenDataset:
    """Tokenize `inputs` once into out_dir, or reuse what is there if it was built the same way from
    the same inputs (every one's path, size and sha256). `tokenizer`, when given (fine-tuning,
    resuming), is used as is instead of building one. A builder on another node writing the same
    folder (a shared store) is waited for, then its dataset reused."""
    scanned = scan_inputs(inputs, text_field, skip_bad, on_event)
    key = dataset_key(tokenizer_name, vocab_size, val_fraction, text_field, tokenizer)
    out_dir = Path(out_dir)
    with removed_on_error(out_dir.parent):
        try:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create dataset folder {str(out_dir)!r}: {e.strerror}") from None
        with file_lock(out_dir.parent / f".{out_dir.name}.lock", wait=BUILD_WAIT_S):
            ds = reusable(out_dir, key, scanned[0])
            if ds is not None:
                return ds
            return build_dataset(inputs, out_dir, tokenizer_name, vocab_size, val_fraction, tokenizer, source=source,
                                 key=key, on_event=on_event, text_field=text_field, scanned=scanned)
