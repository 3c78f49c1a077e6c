"""tiktoken's named encodings (gpt2, cl100k_base, ...), loaded strictly offline.

Owns the table of files each named encoding needs (URL and pinned sha256, as tiktoken_ext pins
them), the lookup in tiktoken's cache folder, so a missing or corrupt file is one clear
`TokenizerError` before tiktoken could try a download, and `load_tiktoken`, which builds the
encoding as a `bpe.TiktokenTokenizer`. Never downloads anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from gptkit.errors import TokenizerError
from gptkit.tokenizers.bpe import TiktokenTokenizer

_BLOB = "https://openaipublic.blob.core.windows.net"
# The files tiktoken fetches for each named encoding, with the sha256 it pins (copied from
# tiktoken_ext/openai_public.py; tests check the two agree). We look for them in the cache
# ourselves so that a missing file is one clear error instead of a network attempt.
TIKTOKEN_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "gpt2": (
        (f"{_BLOB}/gpt-2/encodings/main/vocab.bpe",
         "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
        (f"{_BLOB}/gpt-2/encodings/main/encoder.json",
         "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    ),
    "r50k_base": ((f"{_BLOB}/encodings/r50k_base.tiktoken",
                   "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"),),
    "p50k_base": ((f"{_BLOB}/encodings/p50k_base.tiktoken",
                   "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069"),),
    "p50k_edit": ((f"{_BLOB}/encodings/p50k_base.tiktoken",
                   "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069"),),
    "cl100k_base": ((f"{_BLOB}/encodings/cl100k_base.tiktoken",
                     "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),),
    "o200k_base": ((f"{_BLOB}/encodings/o200k_base.tiktoken",
                    "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),),
    "o200k_harmony": ((f"{_BLOB}/encodings/o200k_base.tiktoken",
                       "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),),
}
TIKTOKEN_NAMES: tuple[str, ...] = tuple(TIKTOKEN_FILES)


def cache_dir() -> tuple[str, str]:
    """(directory tiktoken reads its cache from, how it was chosen) — mirrors tiktoken.load."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"], "TIKTOKEN_CACHE_DIR"
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"], "DATA_GYM_CACHE_DIR (TIKTOKEN_CACHE_DIR unset)"
    return os.path.join(tempfile.gettempdir(), "data-gym-cache"), "default, TIKTOKEN_CACHE_DIR unset"


def check_cached(name: str) -> dict[str, bytes]:
    """Raise unless every file `name` needs is cached with the right hash (else tiktoken downloads);
    return their contents, by URL."""
    folder, how = cache_dir()
    contents = {}
    for url, sha256 in TIKTOKEN_FILES[name]:
        cache_file = os.path.join(folder, hashlib.sha1(url.encode()).hexdigest())
        where = f"cache file {cache_file} (folder from {how}; the file is {url})"
        if not folder or not os.path.isfile(cache_file):
            raise TokenizerError(
                f"tiktoken encoding {name!r} is not available offline: missing {where}; "
                "set TIKTOKEN_CACHE_DIR to a folder holding it, or use byte, bpe or a cached encoding"
            )
        try:
            data = Path(cache_file).read_bytes()
        except OSError as e:
            raise TokenizerError(f"cannot read {where}: {e.strerror}; check its permissions") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise TokenizerError(
                f"tiktoken encoding {name!r}: {where} is corrupt (sha256 mismatch); "
                "replace it with the original file"
            )
        contents[url] = data
    return contents


def gpt2_ranks(files: dict[str, bytes]) -> dict[bytes, int]:
    """gpt2's mergeable ranks from its encoder.json (`files`: what check_cached("gpt2") returned).

    tiktoken's loader (`data_gym_to_mergeable_bpe_ranks`) rebuilds the 50,000 merges of vocab.bpe in
    Python and checks them against encoder.json at every start of a gpt2 command. Both files'
    sha256 are pinned and checked above, so that check can only pass; here encoder.json alone is read,
    its keys turned back into bytes (data gym spells the 68 unprintable bytes and space as the
    characters 256 onwards). A test checks the result equals tiktoken's own."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {256 + n: b for n, b in enumerate(b for b in range(256) if b not in printable)}
    encoder = json.loads(files[TIKTOKEN_FILES["gpt2"][1][0]])
    ranks = {key.translate(table).encode("latin-1"): rank for key, rank in encoder.items()}
    for special in (b"<|endoftext|>", b"<|startoftext|>"):  # not mergeable: tiktoken drops them too
        ranks.pop(special, None)
    return ranks


def load_tiktoken(name: str) -> TiktokenTokenizer:
    """A tiktoken named encoding, read offline from the tiktoken cache (never downloaded)."""
    if name not in TIKTOKEN_NAMES:
        raise TokenizerError(
            f"unknown tiktoken encoding {name!r}; choose one of: {', '.join(TIKTOKEN_NAMES)}"
        )
    files = check_cached(name)
    from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS, ENDOFTEXT, r50k_pat_str

    try:
        if name == "gpt2":  # faster than tiktoken's own loader (see gpt2_ranks)
            params = {"pat_str": r50k_pat_str, "mergeable_ranks": gpt2_ranks(files), "special_tokens": {ENDOFTEXT: 50256}}
        else:
            params = ENCODING_CONSTRUCTORS[name]()
    # A race with the check above, or a tiktoken change: still one line, never a traceback.
    except Exception as e:  # noqa: BLE001
        raise TokenizerError(
            f"tiktoken encoding {name!r} could not be loaded from TIKTOKEN_CACHE_DIR "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check the cache folder"
        ) from None
    return TiktokenTokenizer(
        "tiktoken", name, params["pat_str"], params["mergeable_ranks"], params["special_tokens"]
    )
