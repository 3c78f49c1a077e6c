"""Atomic file writes: a temporary file in the same folder, flushed and fsynced, then `os.replace`d;
and locks, so that two processes never write one run.

Owns the one rule that keeps data safe: a reader sees the old file or the new one, never half of
either, and a crash leaves at worst a stray `.NAME.tmp-PID` file that later writes clean up; a
command that fails before it has anything to keep removes the folders it created; and a command can
ask, before its work, whether an output file could be written at all. A lock (`file_lock`) is a
file holding its owner's PID and host, locked with `flock`: the kernel releases it when the owner
dies however it dies, so a lock left by a killed process is simply taken over (where `fcntl` does not
exist, as on Windows, locks are not taken).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gptkit.errors import CheckpointError, GptkitError, UsageError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

RUN_LOCK = ".lock"  # in a run folder while a training writes to it


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


def _try_lock(path: Path) -> int | None:
    """An fd holding the flock of `path` (created if missing), or None while another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # its last holder may have removed the file between our open and our flock: lock the new one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def lock_holder(path: Path) -> str | None:
    """Who holds the lock at `path` ("process 123 on host"), or None if nobody does (a file left by a
    killed process counts as free)."""
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        words = os.read(fd, 200).decode("utf-8", "replace").split()
        return f"process {words[0]} on {words[1]}" if len(words) >= 2 else "another process"
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path, wait: float = 0.0,
              busy: Callable[[str], GptkitError] | None = None) -> Iterator[None]:
    """Hold the lock at `path` for the block, waiting up to `wait` seconds for another holder; then
    raise busy(who holds it). The file holds this process's PID and host, and is removed on release."""
    if fcntl is None:
        yield
        return
    deadline = time.monotonic() + wait
    try:
        while (fd := _try_lock(path)) is None:
            if time.monotonic() >= deadline:
                who = lock_holder(path) or "another process"
                raise (busy or _busy(path))(who)
            time.sleep(0.5)
    except OSError as e:
        raise CheckpointError(f"cannot lock {str(path)!r} ({e.strerror or e}); choose a writable folder") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        try:
            os.unlink(path)  # while still held: a waiter that opened it locks the next file instead
        except OSError:
            pass
        os.close(fd)


def _busy(path: Path) -> Callable[[str], GptkitError]:
    return lambda who: CheckpointError(f"{str(path)!r} is locked by {who}; wait for it to finish")


def run_busy(run_dir: Path) -> Callable[[str], GptkitError]:
    return lambda who: CheckpointError(f"run {run_dir.name!r} is being written by {who}; wait for it to "
                                       "finish, or choose another --run")


def run_lock(run_dir: Path):
    """The lock a training holds on its run folder while it writes there."""
    return file_lock(run_dir / RUN_LOCK, busy=run_busy(run_dir))


def check_run_free(run_dir: Path) -> None:
    """Fail before changing a run (--overwrite) if a training is writing to it."""
    who = lock_holder(run_dir / RUN_LOCK)
    if who is not None:
        raise run_busy(run_dir)(who)
