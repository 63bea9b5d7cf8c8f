"""One exception type for bad user input, and one way to report it."""

from __future__ import annotations

import sys


class UserError(Exception):
    """Bad input the user can fix (missing file, malformed line, unknown role, ...).

    The message must be one self-contained paragraph that names the file (and line, where
    there is one) and says what to do.  CLIs catch it, print it and exit with status 2,
    before any training or generation starts.
    """


class RunStopped(UserError):
    """A run stopped part-way for a reason the user can act on; the message says what was kept and how to go on.

    Exit statuses (docs/GUARANTEES.md): 2 bad input, 3 CUDA out of memory (sftbench/train/oom.py), 4 non-finite
    loss or gradients, 5 a write failed (disk full, read-only, directory gone), 130 SIGINT / 143 SIGTERM."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class NonFiniteTraining(RunStopped):
    exit_code = 4


class DiskWriteError(RunStopped, OSError):
    """A write that failed for lack of space or permission, or because its directory is gone (also an OSError,
    so code that handles OSError still does)."""

    exit_code = 5

    def __init__(self, message: str, errno_: int | None = None):
        OSError.__init__(self, errno_, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Interrupted(RunStopped):
    """SIGINT (exit 130) or SIGTERM (exit 143), turned into one message instead of a traceback."""


def exit_with_user_error(err: UserError, prog: str) -> "NoReturn":  # noqa: F821
    print(f"{prog}: error: {err}", file=sys.stderr)
    raise SystemExit(getattr(err, "exit_code", 2))
