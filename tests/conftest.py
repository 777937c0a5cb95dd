"""Shared fixtures: a clean plugin state, and the `movie` CLI run in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN_ENV = ("MOVIE_DISABLE_PLUGIN_AUTOLOAD", "MOVIE_BLOCK_PLUGINS")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (use with pytest.mark.usefixtures): the CI machine's cores are shared, and
    OpenMP spin-waits stall when they are busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def clean_plugins(monkeypatch):
    """No plugin env vars from the caller's shell, and plugins reloaded before and after the test."""
    from movie_core import plugins

    for name in PLUGIN_ENV:
        monkeypatch.delenv(name, raising=False)
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def run_movie():
    """Run `movie ARGS...` in a fresh interpreter; env adds variables, pythonpath is prepended."""

    def run(*args: str, env: dict[str, str] | None = None, pythonpath: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV}
        full_env.update(env or {})
        if pythonpath is not None:
            full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), full_env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-c", "import sys; from movie_core.cli import main; main(sys.argv[1:])", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)

    return run
