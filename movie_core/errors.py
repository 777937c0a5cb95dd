"""User-facing errors: the CLI prints them as one line and exits non-zero, no traceback."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class MovieError(Exception):
    """A user error (bad name, bad file, bad value). Carries the exit status."""

    exit_code = 1


class UsageError(MovieError):
    """A bad name or value on the command line or in a recipe."""

    exit_code = 2


class MovieWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. what the output cannot keep)."""


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """While inside, every MovieWarning prints as one `warning: ...` line on stderr; other warnings as before."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", MovieWarning)
        show = warnings.showwarning

        def show_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: TextIO | None = None, line: str | None = None) -> None:
            if issubclass(category, MovieWarning):
                print(f"warning: {message}", file=sys.stderr)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = show_line
        yield
