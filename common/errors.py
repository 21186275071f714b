"""One base class for every error a user can cause, and the one place entry points handle it.

A domain error that means "fix your input" (a bad flag, a missing file, a checkpoint of another
model, a folder in use) subclasses `UserError`. Each `python -m` entry point wraps its body in
`run_cli`, which prints such an error as one line on stderr and exits 2; anything else is a bug
and keeps its traceback. No entry point keeps a list of error classes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """An error the person running the command can fix; the message says how."""


def one_line(exc: BaseException) -> str:
    """The error message on one line, whatever the library wrote."""
    return " ".join(str(exc).split())


def run_cli(body: Callable[[], int | None], interrupted: str = "interrupted") -> int:
    """Run an entry point's body: 0 (or what it returns), 2 on a UserError, 130 on Ctrl-C."""
    try:
        code = body()
    except UserError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if code is None else int(code)
