"""FFN-output neighbours: explain a next-token prediction by look-alikes in the training text.

For each block, the positions of the training text whose FFN output is most similar (cosine) to the
prompt's last-position FFN output, the tokens that followed them, and those followers counted over all
blocks as an approximate next-token distribution, compared with the model's own (top-1 agreement, KL).
Every candidate position is run with exactly as many preceding tokens as the prompt has (a window of
the prompt's length ending there), so the comparison is like for like: a prompt copied from the
training text matches its own position with similarity 1.

Owns finding the training text (the path recorded in the checkpoint, checked against its sha256, or
a file the user names) and the chunked scan with a bounded top-k per block. The file is read as
training read it (`data.sources.read_documents`), streamed: one pass for its sha256 and size, then
only as much of its start as the scan encodes (`TrainingText.read`), never the whole text at once.
It does not render and never prints: warnings are returned, progress goes to a callback.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gptkit.checkpoint import CheckpointInfo
from gptkit.data.build import Scanned, scan_one
from gptkit.data.chunks import DOC_END, Piece, Splitter
from gptkit.data.sources import BUILTIN, builtin_corpus, existing_file, input_file, read_documents
from gptkit.errors import InputError, TokenizerError
from gptkit.introspect.tokens import label
from gptkit.introspect.trace import Trace, piece, run_blocks
from gptkit.model import GPT
from gptkit.tokenizers.core import Tokenizer

Progress = Callable[[int, int], None]


class TrainingText:
    """One part of a text file (`side`: "train" or "val" of the split training made, None: all of it),
    read from disk only as far as asked: `read(chars)` streams the file until it has that many."""

    def __init__(self, scanned: Scanned, path: str, scope: str, warnings: list[str] | None = None,
                 side: str | None = None, val_fraction: float = 0.0) -> None:
        self.scanned, self.path, self.scope = scanned, path, scope  # scope: "training split", "whole file", ...
        self.warnings = warnings or []
        self.side, self.val_fraction = side, val_fraction
        self._text, self._pieces, self._done = "", None, False

    def read(self, chars: int) -> tuple[str, bool]:
        """Its first `chars` characters (fewer where it ends first), and whether they are all of it."""
        parts, n = [self._text], len(self._text)
        self._pieces = self._pieces or self._stream()
        while n <= chars and not self._done:  # one character past `chars` tells whether more follows
            piece = next(self._pieces, None)
            if piece is None:
                self._done = True
            else:
                parts.append(piece)
                n += len(piece)
        self._text = "".join(parts)
        return self._text[:chars], self._done and n <= chars

    def _stream(self) -> Iterator[str]:
        """Its text in pieces, documents joined as training joins them without an end-of-text id
        (`chunks.Chunker`: a blank line, or one newline after a document that ends a line)."""
        want, started, sep_due, ends_line = self.side or "train", False, False, True
        with closing(read_documents(self.scanned.inp)) as pieces:
            for side, part in self._sided(pieces):
                if side != want:
                    if want == "train":
                        return  # the validation part has begun: nothing of the training part follows
                    continue
                if part is DOC_END:
                    sep_due = started
                elif part[0]:
                    if sep_due:
                        yield "\n" if ends_line else "\n\n"
                    started, sep_due, ends_line = True, False, part[0].endswith("\n")
                    yield part[0]

    def _sided(self, pieces: Iterator[Piece]) -> Iterator[tuple[str, Piece]]:
        """(side, piece): the file's pieces sent to "train" or "val" by training's split (all to "train"
        for the whole file)."""
        if self.side is None:
            yield from (("train", p) for p in pieces)
            return
        split = Splitter(self.scanned.text_bytes, self.val_fraction)
        for p in pieces:
            yield from split.feed(p)
        yield from split.finish()


def read_source(info: CheckpointInfo, data: str | Path | None = None) -> tuple[Scanned, str, list[str]]:
    """(the file, read once for its sha256 and size; its path; warnings): `data` if given, else the
    file the checkpoint's metadata records; a warning when it is not the one the checkpoint records
    (sha256 differs)."""
    record = info.state.get("data") or {}
    if data is None:
        path = record.get("path")
        if not path:
            raise InputError(f"{str(info.path)!r} records no training text; pass --data FILE with the text "
                             "it was trained on")
        if path == BUILTIN:
            # the store's copy (STORE/RUN/last.safetensors -> STORE/.cache/corpus), else made again from this
            # Python's stdlib; the sha256 check below says if it differs
            cache = Path(info.path).resolve().parent.parent / ".cache" / "corpus"
            path = str(builtin_corpus(cache if cache.is_dir() else None))
        elif (record.get("files") or 1) > 1:
            raise InputError(f"{str(info.path)!r} was trained on {record['files']} files; pass --data FILE with "
                             "the one to search")
        elif not Path(path).is_file():
            raise InputError(f"the training text recorded in the checkpoint, {path!r}, is not there; "
                             "pass --data FILE")
    else:
        path = str(data)
    scanned = scan_one(input_file(existing_file(path), path))
    digest, recorded = scanned.sha256, record.get("sha256")
    warnings = []
    if recorded and digest != recorded:
        warnings.append(f"{path!r} differs from the text this checkpoint was trained on (sha256 {digest[:12]}, "
                        f"recorded {recorded[:12]}); neighbours come from the file as it is now")
    return scanned, path, warnings


def training_text(info: CheckpointInfo, data: str | Path | None = None) -> TrainingText:
    """The text the checkpoint was trained on: `data` if given, else the path its metadata records.
    When the text's sha256 matches the record, only the training split is used (validation was never
    trained on); when it differs, a warning is returned and the whole file is used as it is."""
    scanned, path, warnings = read_source(info, data)
    recorded = (info.state.get("data") or {}).get("sha256")
    val_fraction = (info.meta.get("train_config") or {}).get("val_fraction")
    if recorded and scanned.sha256 == recorded and val_fraction:
        return TrainingText(scanned, path, "training split", warnings, "train", val_fraction)
    return TrainingText(scanned, path, "whole file", warnings)


def encode_prefix(tokenizer: Tokenizer, source: TrainingText, n_tokens: int) -> list[int]:
    """At least n_tokens ids from the start of the text (all of it if shorter), reading and encoding
    no more of it than needed: a 100 MB corpus costs nothing when only its first 100k positions are scanned."""
    chars = n_tokens * 4
    while True:
        text, whole = source.read(chars)
        try:
            ids = tokenizer.encode(text)
        except TokenizerError as e:
            raise InputError(f"{source.path!r} cannot be encoded with this checkpoint's tokenizer: {e}") from None
        if whole:
            return ids
        if len(ids) > n_tokens:
            return ids[:-1]  # the last token may be cut by the prefix boundary
        chars *= 4


@torch.no_grad()
def scan(model: GPT, tokens: torch.Tensor, query: torch.Tensor, k: int, progress: Progress | None = None,
         batch_tokens: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine similarity per block between `query` (n_layer, C), the prompt's last-position FFN
    outputs, and the FFN output at the end of every window `tokens`' rows (n, L) end with.

    Windows run in batches of about batch_tokens tokens; a running top-k per block keeps memory bounded.
    Returns (scores, window indices), each (n_layer, k), best first.
    """
    n, L = tokens.shape
    q = F.normalize(query.float(), dim=-1)  # (n_layer, C)
    best_s = torch.full((q.size(0), 0), -math.inf)
    best_i = torch.zeros((q.size(0), 0), dtype=torch.long)
    step = max(1, batch_tokens // L)
    for start in range(0, n, step):
        idx = tokens[start:start + step]  # (b, L)
        sims = torch.stack([F.normalize(m[:, -1].float(), dim=-1) @ q[i]
                            for i, (_, m, _, _) in enumerate(run_blocks(model, idx, with_weights=False))])  # (n_layer, b)
        where = torch.arange(start, start + idx.size(0)).expand_as(sims)
        all_s, all_i = torch.cat([best_s, sims.cpu()], 1), torch.cat([best_i, where], 1)
        best_s, j = all_s.topk(min(k, all_s.size(1)), dim=1)
        best_i = all_i.gather(1, j)
        if progress is not None:
            progress(min(start + step, n), n)
    return best_s, best_i


def neighbours(model: GPT, tokenizer: Tokenizer, tr: Trace, source: TrainingText, k: int = 20,
               max_positions: int = 100_000, progress: Progress | None = None) -> dict[str, Any]:
    """The `--neighbors` view for a traced prompt: per block its k nearest training positions, and the
    followers of all of them as an approximate next-token distribution set against the model's."""
    L = len(tr.ids)
    ids = encode_prefix(tokenizer, source, max_positions + L)
    n = min(len(ids) - L, max_positions)  # windows ending at L-1 .. L-2+n; each needs a follower
    if n < 1:
        raise InputError(f"{source.path!r} is {len(ids)} tokens, too short to compare with a {L}-token prompt")
    device = next(model.parameters()).device
    seq = torch.tensor(ids[:n + L], dtype=torch.long)
    windows = seq.unfold(0, L, 1)[:n]  # (n, L) row i = tokens i .. i+L-1, followed by token i+L
    query = torch.stack([m[-1] for m in tr.mlp_out])  # (n_layer, C)
    scores, rows = scan(model, windows.to(device), query, k, progress)
    blocks, counts = [], Counter()
    for layer in range(scores.size(0)):
        found = []
        for s, i in zip(scores[layer].tolist(), rows[layer].tolist(), strict=True):
            follower = ids[i + L]
            counts[follower] += 1
            found.append({"position": i + L - 1, "score": s, "context": tokenizer.decode(ids[i:i + L]),
                          "context_label": label(tokenizer.decode_bytes(ids[i:i + L])),  # <0xEB> at a cut character
                          "next": piece(tokenizer, follower)})
        blocks.append({"layer": layer, "neighbors": found})
    return {"source": {"path": source.path, "scope": source.scope}, "window": L, "positions_scanned": n,
            "k": k, "blocks": blocks, **compare(tokenizer, counts, tr.logits[-1])}


def compare(tokenizer: Tokenizer, counts: Counter, logits: torch.Tensor) -> dict[str, Any]:
    """The followers' distribution q against the model's p: top-1 agreement and KL(q ‖ p) in nats
    (q has zeros where no neighbour's follower went, so this direction stays finite)."""
    p = torch.softmax(logits.float(), dim=-1)
    total = sum(counts.values())
    approx = [{**piece(tokenizer, t), "count": c, "prob": c / total, "model_prob": float(p[t])}
              for t, c in counts.most_common()]
    kl = sum(a["prob"] * math.log(a["prob"] / max(a["model_prob"], 1e-30)) for a in approx)
    top = int(p.argmax())
    return {"approx": approx, "model_top": {**piece(tokenizer, top), "prob": float(p[top])},
            "top1_agree": approx[0]["id"] == top, "kl_approx_model": kl}
