"""Running `movie` commands inside the test process."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path


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


def pip_install_fixture(fixture: Path, tmp_path_factory) -> Path:
    """A plugin package under tests/fixtures pip-installed (a real distribution, entry points included) into a
    temporary --target folder, built offline when setuptools is importable; returns the folder."""
    src = tmp_path_factory.mktemp("src") / fixture.name
    shutil.copytree(fixture, src)  # the build writes build/ and *.egg-info beside the sources
    target = tmp_path_factory.mktemp("site")
    base = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q",
            "--target", str(target)]
    attempts = [base + [str(src)]]
    if importlib.util.find_spec("setuptools") is not None:
        attempts.insert(0, base + ["--no-build-isolation", "--no-index", str(src)])
    for cmd in attempts:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, proc.stderr
    return target
