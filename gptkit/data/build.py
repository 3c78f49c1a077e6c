"""Building a token dataset folder from a text of any size: streamed, in bounded memory, on all cores.

Owns `build_dataset`, the one code path behind both `gptkit tokenize FILE --out DIR` and
`gptkit train FILE.txt` (which caches the folder under `checkpoints/<run>/data/` through
`prepare_dataset`, the reuse-or-build front door). Chunks are encoded by `Tokenizer.encode_array`
on a thread pool (tiktoken's native `encode_to_numpy` releases the GIL).

How it stays exact and bounded:
1. the validation split is one byte offset of the whole file (`chunks.split_offset`);
2. a ``char`` vocabulary is collected in a first pass over the file, a ``bpe`` is trained by
   rustbpe streaming the training part;
3. each side is read in blocks, cut into chunks where tokenization cannot change
   (`chunks.find_cut`), encoded a few chunks at a time and appended to temporary ``.bin``
   files, which are renamed at the end, `meta.json` last. The result is byte-identical whatever
   the chunk size and equals encoding each side of the split whole.

It does not read the folder back for training (`dataset.py` does) and never prints.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gptkit.data.chunks import TextFile, open_text, read_blocks, rechunk, split_offset
from gptkit.data.dataset import DATASET_FORMAT, TokenDataset, load_dataset, token_dtype
from gptkit.data.sources import Source
from gptkit.errors import InputError
from gptkit.fsio import atomic_write_bytes, clean_stale_temps, removed_on_error, temp_path
from gptkit.tokenizers import build_tokenizer
from gptkit.tokenizers.bpe import DEFAULT_BPE_VOCAB_SIZE, TRAIN_CHUNK_CHARS, train_bpe_from_chunks
from gptkit.tokenizers.core import UNICODE_SIZE, CharTokenizer, Tokenizer, code_points

CHUNK_CHARS = 1 << 18  # characters encoded per task (small enough that the last tasks do not idle a core)
Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes total)


def collect_chars(blocks: Iterator[str]) -> str:
    """The sorted distinct characters of the text streamed as `blocks` (the char vocabulary)."""
    seen = np.zeros(UNICODE_SIZE, dtype=bool)
    for block in blocks:
        seen[code_points(block)] = True
    return "".join(map(chr, np.flatnonzero(seen)))


def tokenizer_for_file(tf: TextFile, split: int, name: str, vocab_size: int | None,
                       progress: Progress | None = None) -> Tokenizer:
    """Build the tokenizer `name` for a file: char learns from all of it (validation must be
    encodable), bpe from the training part [start, split) only; the others need no text."""
    def bytes_seen(phase: str, lo: int, hi: int) -> Callable[[bytes], None] | None:
        if progress is None:
            return None
        done = [0]

        def tick(raw: bytes) -> None:
            done[0] += len(raw)
            progress(phase, done[0], hi - lo)

        return tick

    if name == "char":
        chars = collect_chars(read_blocks(tf, tf.start, tf.end, on_bytes=bytes_seen("vocabulary", tf.start, tf.end)))
        if not chars.strip():
            raise InputError(f"{tf.name} is only whitespace; give a file with some text in it")
        return CharTokenizer(chars)
    if name == "bpe":
        if split <= tf.start:
            raise InputError(f"{tf.name} leaves no training text before the validation split; use more text")
        blocks = read_blocks(tf, tf.start, split, on_bytes=bytes_seen("training bpe", tf.start, split))
        return train_bpe_from_chunks(rechunk(blocks, TRAIN_CHUNK_CHARS),
                                     DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size)
    return build_tokenizer(name, vocab_size=vocab_size)


def _encode_sides(tf: TextFile, split: int, encode: Callable[[str], np.ndarray], exact: bool, outs: dict[str, Any],
                  dtype: np.dtype, on_bytes: Callable[[bytes], None], chunk_chars: int, pool: ThreadPoolExecutor,
                  in_flight: int) -> tuple[dict[str, list[int]], bool]:
    """Encode the training part, then validation, chunk by chunk into the open files `outs`, with a
    few chunks in flight on the pool (one queue for both, so no pause at the split).
    Returns ({side: [tokens, characters]}, whether any character was not whitespace)."""
    counts = {"train": [0, 0], "val": [0, 0]}
    nonblank = False
    pending: deque = deque()  # (side, future) in text order

    def write_one() -> None:
        side, future = pending.popleft()
        ids = future.result()
        ids.astype(dtype, copy=False).tofile(outs[side])
        counts[side][0] += len(ids)

    for side, lo, hi in (("train", tf.start, split), ("val", split, tf.end)):
        for chunk in rechunk(read_blocks(tf, lo, hi, chunk_chars, on_bytes), chunk_chars, exact):
            counts[side][1] += len(chunk)
            nonblank = nonblank or not chunk.isspace()
            pending.append((side, pool.submit(encode, chunk)))
            if len(pending) >= in_flight:
                write_one()  # keep only a few chunks in memory; results are written in order
    while pending:
        write_one()
    return counts, nonblank


def build_dataset(tf: TextFile, out_dir: Path, tokenizer_name: str | None = None, vocab_size: int | None = None,
                  val_fraction: float = 0.1, tokenizer: Tokenizer | None = None,
                  source: dict[str, Any] | None = None, key: dict[str, Any] | None = None,
                  chunk_chars: int = CHUNK_CHARS, workers: int | None = None,
                  progress: Progress | None = None) -> TokenDataset:
    """Tokenize the text of `tf` into out_dir/train.bin, val.bin and meta.json (written last).

    `tokenizer` is used as is when given, else `tokenizer_name` (+ `vocab_size` for bpe) is built
    from the file. `source` (path, origin) and `key` (what a cache must match) go into meta.json.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    if chunk_chars < 1:
        raise InputError(f"chunk size must be positive, got {chunk_chars}")
    split = split_offset(tf, val_fraction)
    if tokenizer is None:
        if tokenizer_name is None:
            raise InputError("build_dataset needs a tokenizer or a tokenizer name")
        tokenizer = tokenizer_for_file(tf, split, tokenizer_name, vocab_size, progress)
    out_dir = Path(out_dir)
    with removed_on_error(out_dir):  # a build that fails leaves no half-made folder behind
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create dataset folder {str(out_dir)!r}: {e.strerror}") from None
        clean_stale_temps(out_dir)  # left by a build that was killed
        counts, sha = _write_bins(tf, split, tokenizer, out_dir, chunk_chars, workers, progress)
        meta = {
            "format": DATASET_FORMAT,
            "dtype": token_dtype(tokenizer.vocab_size).name,
            "train_tokens": counts["train"][0],
            "val_tokens": counts["val"][0],
            "key": key if key is not None else dataset_key(sha, tokenizer_name or tokenizer.name, vocab_size,
                                                           val_fraction),
            "source": {**(source or {}), "sha256": sha, "bytes": tf.n_bytes},
            "val_fraction": val_fraction,
            "split_byte": split - tf.start,  # validation starts at this offset of the text's UTF-8 bytes
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


def _write_bins(tf: TextFile, split: int, tok: Tokenizer, out_dir: Path, chunk_chars: int, workers: int | None,
                progress: Progress | None) -> tuple[dict[str, list[int]], str]:
    """Encode both sides into temporary files, then rename them into place; (counts, sha256 of the text)."""
    encode = tok.encode_array
    dtype = token_dtype(tok.vocab_size)
    exact = tok.kind not in ("char", "byte")  # regex pre-tokenizers need cuts no piece spans
    workers = workers or os.cpu_count() or 1
    sha = hashlib.sha256()
    done = [0]

    def seen(raw: bytes) -> None:
        sha.update(raw)
        done[0] += len(raw)
        if progress is not None:
            progress("encoding", done[0], tf.n_bytes)

    temps = {side: temp_path(out_dir / f"{side}.bin") for side in ("train", "val")}
    try:
        with ThreadPoolExecutor(workers) as pool, open(temps["train"], "wb") as train, \
                open(temps["val"], "wb") as val:
            outs = {"train": train, "val": val}
            counts, nonblank = _encode_sides(tf, split, encode, exact, outs, dtype, seen, chunk_chars, pool,
                                             2 * workers)
            for f in outs.values():
                f.flush()
                os.fsync(f.fileno())
        if not nonblank:
            raise InputError(f"{tf.name} is only whitespace; give a file with some text in it")
        (out_dir / "meta.json").unlink(missing_ok=True)  # the folder is incomplete until the new meta.json lands
        for side, tmp in temps.items():
            os.replace(tmp, out_dir / f"{side}.bin")
    except OSError as e:
        raise InputError(f"cannot write dataset folder {str(out_dir)!r} ({e.strerror or e}); free space or "
                         "choose another --out") from None
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return counts, sha.hexdigest()


def dataset_key(sha256: str, tokenizer_name: str, vocab_size: int | None, val_fraction: float) -> dict[str, Any]:
    """What a cached dataset must match to be reused."""
    return {"source_sha256": sha256, "tokenizer_name": tokenizer_name,
            "bpe_vocab_size": vocab_size, "val_fraction": val_fraction}


def prepare_dataset(source: Source, tokenizer_name: str, vocab_size: int | None, val_fraction: float,
                    out_dir: Path, tokenizer: Tokenizer | None = None) -> TokenDataset:
    """Tokenize `source` once into out_dir, or reuse what is there if it was built the same way.

    `tokenizer`, when given (fine-tuning, resuming), is used as is instead of building one.
    """
    key = dataset_key(source.sha256, tokenizer_name, vocab_size, val_fraction)
    if tokenizer is not None:
        key["tokenizer_fingerprint"] = tokenizer.fingerprint
    if (out_dir / "meta.json").is_file():
        try:
            ds = load_dataset(out_dir)
            if ds.meta.get("key") == key:
                return ds
        except InputError:
            pass  # damaged cache: rebuild below
    tf = open_text(io.BytesIO(source.text.encode("utf-8")), repr(source.origin))
    return build_dataset(tf, out_dir, tokenizer_name, vocab_size, val_fraction, tokenizer,
                         source={"path": source.path, "origin": source.origin}, key=key)
