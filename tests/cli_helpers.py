"""Running `movie` commands inside the test process."""

from __future__ import annotations


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`movie ARGS` in this process (fast); returns (exit status, stdout, stderr)."""
    from movie_core.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
