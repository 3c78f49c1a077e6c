"""Where training text comes from: files, folders, globs, stdin, gzip/zstd, JSON lines, http(s) URLs and
the built-in corpus.

Owns turning what the user typed into a list of input files (`list_inputs` for paths: a folder is
walked recursively in name order, hidden files and folders and the store left out, `--glob` to
choose; `open_inputs` adds URLs, downloaded once into the store's cache, `-` for stdin, spooled to
a temporary file, and the built-in corpus of Python's own docstrings, parsed with `ast`, never
imported), and reading one input as checked text documents (`read_documents`: a file is one
document, a JSON-lines file one per record), streamed in blocks whatever its size, with one-line
errors that name the file and the byte offset of the first bad byte. A compressed file is
decompressed as it is read: gzip always, zstd when `compression.zstd` (Python 3.14) or the
`zstandard` module is there. It does not tokenize or split (`build.py`, `chunks.py` do).
Standard library only.
"""

from __future__ import annotations

import ast
import fnmatch
import gzip
import hashlib
import http.client
import io
import json
import os
import shutil
import sysconfig
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from gptkit.data.chunks import DOC_END, HEAD_BYTES, Piece, check_text, decode_stream, decode_utf8
from gptkit.errors import InputError

BUILTIN = "builtin"  # the name recorded for the built-in corpus
BUILTIN_MAX_BYTES = 4_000_000  # enough for a small model; keeps the first build to a few seconds
STDIN = "-"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
ZSTD_SUFFIXES = (".zst", ".zstd")


@dataclass(frozen=True)
class DataSpec:
    """What `gptkit train` / `tokenize --out` was given to learn from."""

    refs: tuple[str, ...] = ()  # paths, folders, URLs, "-"; none: the built-in corpus
    globs: tuple[str, ...] = ()  # which files of a folder to take (all but hidden ones when empty)
    text_field: str = "text"  # the field of a JSON-lines record that holds its text
    skip_bad: bool = False  # skip binary, non-UTF-8 and empty files (counted) instead of stopping
    stdin: BinaryIO | None = field(default=None, compare=False)  # what "-" reads

    @classmethod
    def of(cls, data: DataSpec | str | Sequence[str] | None) -> DataSpec:
        if isinstance(data, DataSpec):
            return data
        if data is None:
            return cls()
        return cls((data,) if isinstance(data, str) else tuple(data))


@dataclass(frozen=True)
class InputFile:
    """One file to read: where it is and how (compression, JSON lines)."""

    path: Path  # the file read (for a URL its download, for stdin its spool)
    name: str  # as the user knows it: the path given (a folder's file below it), the URL, "-", "builtin"
    compression: str | None = None  # "gzip" | "zstd"
    jsonl: bool = False

    @property
    def label(self) -> str:
        return "stdin" if self.name == STDIN else repr(self.name)

    @property
    def record_path(self) -> str:
        """What meta.json records as its path: absolute, or the URL, "-", "builtin"."""
        return self.name if self.name in (STDIN, BUILTIN) or is_url(self.name) else str(self.path.resolve())

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError as e:
            raise InputError(f"cannot read {self.label}: {e.strerror}") from None


def input_file(path: Path, name: str) -> InputFile:
    """An InputFile whose kind comes from its name: .gz / .zst compressed, .jsonl / .ndjson records."""
    low = name.lower()
    compression = "gzip" if low.endswith(".gz") else "zstd" if low.endswith(ZSTD_SUFFIXES) else None
    base = low.rsplit(".", 1)[0] if compression else low
    return InputFile(path, name, compression, base.endswith(JSONL_SUFFIXES))


def is_dataset_folder(path: Path) -> bool:
    return path.is_dir() and (path / "meta.json").is_file()


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    """`*.md` matches a file's name anywhere below; a pattern with a `/` matches its path in the folder."""
    name = rel.rsplit("/", 1)[-1]
    for g in patterns:
        if "/" not in g and fnmatch.fnmatchcase(name, g):
            return True
        if "/" in g and (fnmatch.fnmatchcase(rel, g) or g.startswith("**/") and fnmatch.fnmatchcase(rel, g[3:])):
            return True
    return False


def walk_folder(top: Path, globs: Sequence[str] = (), exclude: Sequence[Path] = ()) -> list[Path]:
    """Every file below `top` (in name order, depth first), hidden ones and `exclude`d folders left out."""
    skip = {p.resolve() for p in exclude}

    def failed(e: OSError) -> None:
        raise InputError(f"cannot read folder {str(e.filename)!r}: {e.strerror}")

    found = []
    for root, dirs, files in os.walk(top, onerror=failed):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() not in skip)
        for name in sorted(files):
            p = here / name
            if name.startswith(".") or (globs and not _matches(p.relative_to(top).as_posix(), globs)):
                continue
            if p.is_file():  # not a dangling link, a pipe or a socket
                found.append(p)
    return found


def list_inputs(refs: Sequence[str], globs: Sequence[str] = (), exclude: Sequence[Path] = ()) -> list[InputFile]:
    """The files named by paths and folders (URLs and "-" are `open_inputs`' job), in the order given."""
    out: list[InputFile] = []
    for ref in refs:
        p = Path(ref)
        if not p.exists():
            raise InputError(f"{ref!r} does not exist; give UTF-8 text files, folders of them, or an http(s) URL")
        if not p.is_dir():
            out.append(input_file(p, ref))
            continue
        if is_dataset_folder(p):
            raise InputError(f"{ref!r} is a dataset folder (it has meta.json): train on it alone, not with other "
                             "inputs or as the input of `gptkit tokenize --out`")
        files = walk_folder(p, globs, exclude)
        if not files:
            what = f"no files matching --glob {' '.join(globs)}" if globs else "no files in it (hidden ones are left out)"
            raise InputError(f"{ref!r} is a directory with {what}; give text files or a folder that holds some")
        out += [input_file(f, os.path.join(ref, str(f.relative_to(p)))) for f in files]
    return out


@contextmanager
def open_inputs(spec: DataSpec, cache_dir: Path, exclude: Sequence[Path] = (), spool_dir: Path | None = None,
                progress: Callable[[int, int | None], None] | None = None) -> Iterator[list[InputFile]]:
    """Every input of `spec` as files on disk: URLs downloaded once into cache_dir/downloads, "-"
    spooled to a temporary file in spool_dir (default cache_dir; removed on leaving), nothing at all
    the built-in corpus. Folders leave out the `exclude`d ones (the store, the output)."""
    spools: list[Path] = []
    try:
        if not spec.refs:
            yield [InputFile(builtin_corpus(cache_dir / "corpus"), BUILTIN)]
            return
        out: list[InputFile] = []
        for ref in spec.refs:
            if ref == BUILTIN:
                out.append(InputFile(builtin_corpus(cache_dir / "corpus"), BUILTIN))
            elif is_url(ref):
                out.append(input_file(download(ref, cache_dir / "downloads", progress), ref))
            elif ref == STDIN:
                if spec.stdin is None:
                    raise InputError("'-' reads the text from stdin, but nothing is piped in")
                spools.append(spool(spec.stdin, spool_dir or cache_dir))
                out.append(InputFile(spools[-1], STDIN))
            else:
                out += list_inputs([ref], spec.globs, exclude)
        if any(i.compression == "zstd" for i in out):
            zstd_module()  # a missing module is one line before any work, not a skipped file
        yield out
    finally:
        for p in spools:
            p.unlink(missing_ok=True)


def spool(stream: BinaryIO, cache_dir: Path) -> Path:
    """Copy a stream that can be read only once (stdin) to a temporary file, in bounded memory."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".stdin-")
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
    except OSError as e:
        raise InputError(f"cannot keep stdin in {str(cache_dir)!r} while it is read ({e.strerror or e})") from None
    return Path(tmp)


def zstd_module():
    """The zstd reader: Python 3.14's own, else the `zstandard` package; a one-line error without either."""
    try:
        from compression import zstd  # type: ignore[import-not-found]

        return zstd
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore[import-not-found]

        return zstandard
    except ImportError:
        raise InputError("reading .zst files needs the zstandard module, which is not installed: pip install "
                         "'gptkit[zstd]', or decompress them first (zstd -d FILE)") from None


class _Counted(io.RawIOBase):
    """A raw file whose every byte read is shown to `seen` (for the sha256 and the progress)."""

    def __init__(self, f: BinaryIO, seen: Callable[[memoryview], None]) -> None:
        self.f, self.seen = f, seen

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001 - a writable buffer
        n = self.f.readinto(b)
        if n:
            self.seen(memoryview(b)[:n])
        return n


class _Zstd(io.RawIOBase):
    """zstd frames decompressed as they are read, with the `zstandard` package (whose own stream reader
    ends quietly where a file is cut short: here a frame that never ends is an error)."""

    def __init__(self, raw: BinaryIO, zstandard) -> None:  # noqa: ANN001 - the module
        self.raw, self.dec = raw, zstandard.ZstdDecompressor()
        self.obj, self.started = self.dec.decompressobj(), False
        self.out, self.pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001 - a writable buffer
        while self.pos == len(self.out):
            chunk = self.raw.read(1 << 16)  # small: a chunk of text decompresses to a few times its size
            if not chunk:
                if self.started and not self.obj.eof:
                    raise EOFError("the file ends inside a zstd frame: it was cut short")
                return 0
            self.out, self.pos = b"", 0
            while chunk:
                self.out += self.obj.decompress(chunk)
                self.started = True
                chunk = b""
                if self.obj.eof:  # the next frame, if any, starts in what this one left
                    chunk, self.obj, self.started = self.obj.unused_data, self.dec.decompressobj(), False
        n = min(len(b), len(self.out) - self.pos)
        b[:n] = self.out[self.pos:self.pos + n]
        self.pos += n
        return n


def _decompressed(raw: BinaryIO, inp: InputFile) -> BinaryIO:
    if inp.compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if inp.compression == "zstd":
        z = zstd_module()
        return z.ZstdFile(raw) if hasattr(z, "ZstdFile") else io.BufferedReader(_Zstd(raw, z), 1 << 20)
    return raw


def read_documents(inp: InputFile, text_field: str = "text",
                   seen: Callable[[memoryview], None] | None = None) -> Iterator[Piece]:
    """The text of one input as checked (text, UTF-8 bytes) pieces, `DOC_END` between documents.

    `seen` gets every byte of the file as read from disk (compressed bytes for a compressed file;
    all of them, when the pieces are read to the end). Any problem is an InputError naming the file."""
    try:
        f = open(inp.path, "rb")  # noqa: SIM115 - closed below, also when the reader stops early
    except OSError as e:
        raise InputError(f"cannot read {inp.label}: {e.strerror}") from None
    name = inp.label + (f" (decompressed, {inp.compression})" if inp.compression else "")
    try:
        raw: BinaryIO = io.BufferedReader(_Counted(f, seen), 1 << 20) if seen else f
        stream = _decompressed(raw, inp)
        yield from (_records(stream, name, text_field) if inp.jsonl else decode_stream(stream, name))
        if seen:
            while raw.read(1 << 20):
                pass  # bytes after the compressed stream: hashed like the rest
    except (OSError, EOFError, zlib.error) as e:
        what = f"a valid {inp.compression} file" if inp.compression else "readable"
        raise InputError(f"{inp.label} is not {what} ({e}); check the file or leave it out") from None
    except Exception as e:  # the zstandard module's own error class
        if inp.compression != "zstd" or isinstance(e, InputError):
            raise
        raise InputError(f"{inp.label} is not a valid zstd file ({e}); check the file or leave it out") from None
    finally:
        f.close()


def _records(stream: BinaryIO, name: str, text_field: str) -> Iterator[Piece]:
    """A JSON-lines stream: the `text_field` string of each record is one document; blank lines and
    empty texts are skipped."""
    offset, first = 0, True
    for lineno, line in enumerate(stream, 1):
        at, offset = offset, offset + len(line)
        raw = check_text(line, name, at=at) if at < HEAD_BYTES or not line.isascii() else line.decode("ascii")
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as e:
            raise InputError(f"{name} line {lineno} (byte offset {at}) is not valid JSON ({e.args[0].split(':')[0]}); "
                             "each line of a .jsonl file must be one JSON object") from None
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            what = "is not a JSON object" if not isinstance(record, dict) else \
                f"has no {text_field!r} field" if text_field not in record else f"has a {text_field!r} that is not a string"
            raise InputError(f"{name} line {lineno} (byte offset {at}) {what}; choose the field with --text-field")
        if not text:
            continue
        try:
            n = len(text) if text.isascii() else len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise InputError(f"{name} line {lineno} (byte offset {at}) holds a lone surrogate (\\ud800-\\udfff), "
                             "which is not text") from None
        if not first:
            yield DOC_END
        first = False
        yield text, n


def existing_file(path: str | Path) -> Path:
    """`path`, checked to be there and not a folder (one file named on its own: `--train-file`, `--data`)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{str(p)!r} does not exist; give a path to a UTF-8 text file")
    if p.is_dir():
        raise InputError(f"{str(p)!r} is a directory; give a text file")  # (train takes dataset folders before this)
    return p


def read_text(path: str | Path) -> str:
    """A small file's whole text (a prompt, a text to view); large inputs stream (`read_documents`)."""
    p = existing_file(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {str(p)!r}: {e.strerror}") from None
    return decode_utf8(data, repr(str(p)))


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
                if total_n is not None and done != total_n:  # http.client returns a cut body as if it were whole
                    raise ConnectionError(f"the connection closed after {done:,} of {total_n:,} bytes")
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
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
