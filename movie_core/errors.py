"""User-facing errors: the CLI prints them as one line and exits non-zero, no traceback."""

from __future__ import annotations


class MovieError(Exception):
    """A user error (bad name, bad file, bad value). Carries the exit status."""

    exit_code = 1


class UsageError(MovieError):
    """A bad name or value on the command line or in a recipe."""

    exit_code = 2
