"""Atomic file writes: a temporary file in the same folder, flushed and fsynced, then `os.replace`d.

Owns the one rule that keeps data safe: a reader sees the old file or the new one, never half of
either, and a crash leaves at worst a stray `.NAME.tmp-PID` file that later writes clean up; a
command that fails before it has anything to keep removes the folders it created; and a command can
ask, before its work, whether an output file could be written at all.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gptkit.errors import UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) to fill a temporary file, then make it `path` in one step."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # the permissions a plain open() would have given
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def probe_writable(path: Path) -> None:
    """Raise OSError unless a file could be written at `path`; creates and changes nothing (an existing
    file is opened for update, not truncated; a new one is tried as an unnamed file in its folder)."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if path.exists():
        with open(path, "r+b"):
            return
    with tempfile.TemporaryFile(dir=path.parent):
        pass


def check_output_file(path: Path, flag: str) -> None:
    """Fail before any work, not after it, when an output file named by `flag` cannot be written."""
    try:
        probe_writable(path)
    except OSError as e:
        raise cannot_write(path, e, flag) from None


def cannot_write(path: Path, e: OSError, flag: str) -> UsageError:
    return UsageError(f"cannot write {str(path)!r} ({e.strerror or e}); choose another {flag}")


def clean_stale_temps(folder: Path) -> None:
    """Remove temporary files left by a writer that was killed (they never replaced a good file)."""
    for p in folder.glob(".*.tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            os.kill(pid, 0)  # raises if no such process: the writer is gone
        except (ValueError, ProcessLookupError):
            p.unlink(missing_ok=True)
        except PermissionError:
            pass  # another user's live process: leave its file alone


@contextmanager
def removed_on_error(folder: Path) -> Iterator[None]:
    """If the block raises, remove `folder` and any parents it lacked when the block began: a command
    that fails (a text too short, an unknown tokenizer, ...) leaves the disk as it found it."""
    new = None
    for p in (folder, *folder.parents):
        if p.exists():
            break
        new = p  # the highest folder that does not exist yet
    try:
        yield
    except BaseException:
        if new is not None:
            shutil.rmtree(new, ignore_errors=True)
        raise
