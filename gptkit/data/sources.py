"""Where training text comes from: a local UTF-8 file, an http(s) URL, or the built-in corpus.

Owns reading text safely (one-line errors for missing, binary, empty or non-UTF-8 input, with the
byte offset of the first bad byte; the binary and UTF-8 checks are `chunks.check_text`),
downloading a URL once into the store's cache, and building the built-in default corpus from the
docstrings of Python's own standard library (parsed with `ast`, never imported or executed), so
`gptkit train` works on any machine with nothing downloaded.
It does not tokenize; `build.py` does that. Standard library only.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sysconfig
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gptkit.data.chunks import decode_utf8
from gptkit.errors import InputError

BUILTIN = "builtin"  # the name recorded for the built-in corpus
BUILTIN_MAX_BYTES = 4_000_000  # enough for a small model; keeps the first build to a few seconds


@dataclass
class Source:
    """A training text and where it came from (recorded in the checkpoint for `inspect`)."""

    text: str
    path: str  # absolute path of the file read ("builtin" for the built-in corpus)
    origin: str  # what the user gave: a path, a URL, or "builtin"
    sha256: str  # of the UTF-8 bytes

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


def read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{str(p)!r} does not exist; give a path to a UTF-8 text file")
    if p.is_dir():
        raise InputError(f"{str(p)!r} is a directory; give a text file")  # (train takes dataset folders before this)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {str(p)!r}: {e.strerror}") from None
    return decode_utf8(data, repr(str(p)))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def download(url: str, cache_dir: Path, progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Fetch `url` once into cache_dir (atomically); later calls reuse the file without the network."""
    name = Path(urllib.request.urlparse(url).path).name or "download.txt"
    target = cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            total = resp.headers.get("Content-Length")
            total_n = int(total) if total and total.isdigit() else None
            fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".download-")
            done = 0
            try:
                with os.fdopen(fd, "wb") as out:
                    while chunk := resp.read(1 << 16):
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total_n)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise InputError(f"cannot download {url} ({reason}); check the network or download it and pass the file") from None
    return target


def builtin_corpus(cache_dir: Path | None = None) -> Path:
    """The docstrings of the standard library's modules, classes and functions, as one text file."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.sha256(f"{stdlib}|{BUILTIN_MAX_BYTES}|v1".encode()).hexdigest()[:12]
    cache_dir = cache_dir or Path(tempfile.gettempdir()) / "gptkit-cache"
    target = cache_dir / f"stdlib-docstrings-{key}.txt"
    if target.is_file():
        return target
    parts: list[str] = []
    size = 0
    files = sorted(p for p in stdlib.rglob("*.py")
                   if not {"test", "tests", "idlelib", "site-packages", "lib2to3"} & set(p.relative_to(stdlib).parts))
    for path in files:
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:  # skip one-liners like 'Return self.'
                    parts.append(doc.strip() + "\n\n")
                    size += len(parts[-1])
        if size >= BUILTIN_MAX_BYTES:
            break
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".corpus-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(parts))
    os.replace(tmp, target)
    return target


def load_source(ref: str | None, cache_dir: Path,
                progress: Callable[[int, int | None], None] | None = None) -> Source:
    """Resolve what the user passed to `gptkit train` into text: None/"builtin", a URL, or a path."""
    if ref is None or ref == BUILTIN:
        path = builtin_corpus(cache_dir / "corpus")
        origin = BUILTIN
    elif is_url(ref):
        path = download(ref, cache_dir / "downloads", progress)
        origin = ref
    else:
        path = Path(ref)
        origin = ref
    text = read_text(path)
    return Source(text=text, path=str(Path(path).resolve()), origin=origin,
                  sha256=sha256_bytes(text.encode("utf-8")))
