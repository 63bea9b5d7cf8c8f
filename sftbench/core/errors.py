"""One exception type for bad user input, and one way to report it."""

from __future__ import annotations

import sys


class UserError(Exception):
    """Bad input the user can fix (missing file, malformed line, unknown role, ...).

    The message must be one self-contained paragraph that names the file (and line, where
    there is one) and says what to do.  CLIs catch it, print it and exit with status 2,
    before any training or generation starts.
    """


def exit_with_user_error(err: UserError, prog: str) -> "NoReturn":  # noqa: F821
    print(f"{prog}: error: {err}", file=sys.stderr)
    raise SystemExit(2)
