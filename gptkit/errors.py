"""The project's own exceptions (standard library only).

Every user-facing failure is a `GptkitError` whose message is one line that says what is wrong and
what to do. `cli.py` turns it into `error: <message>` on stderr and exits with `exit_code`.
Internal invariants use `assert`, never these classes.
"""

from __future__ import annotations


class GptkitError(Exception):
    """A mistake the user can fix; the message is one line naming the fix."""

    exit_code = 1


class UsageError(GptkitError):
    """A flag, option value or config file entry is invalid."""

    exit_code = 2


class InputError(GptkitError):
    """An input file or text cannot be used (missing, empty, binary, not UTF-8, too short)."""

    exit_code = 3


class TokenizerError(GptkitError):
    """A tokenizer cannot be built, loaded, or cannot encode the given text."""

    exit_code = 3


class CheckpointError(GptkitError):
    """A checkpoint or run cannot be found, read, or written."""

    exit_code = 4


class TrainingError(GptkitError):
    """Training had to stop (e.g. the loss became NaN); the last good checkpoint is kept."""

    exit_code = 5


EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM: the run saved and stopped
