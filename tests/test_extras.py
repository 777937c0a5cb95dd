"""A plain install (no extras): every command's --help works, and a command that needs an extra says which one in
one line and writes nothing. The extras' modules are hidden from a subprocess by a meta-path finder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HIDDEN = ("accelerate", "peft", "ray", "gradio")

HIDER = '''
import os, sys

class HideExtras:
    """Refuse the modules in MOVIE_TEST_HIDE as if they were not installed."""
    names = set(os.environ.get("MOVIE_TEST_HIDE", "").split(","))

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None

sys.meta_path.insert(0, HideExtras())
'''

# every command and subcommand, `--help` of each, run in one process
ALL_HELP = '''
import json, sys
import click
from movie_core import cli as cli_mod

cli_mod._add_plugin_commands()
def walk(group, prefix):
    for name, command in sorted(group.commands.items()):
        yield prefix + [name]
        if isinstance(command, click.Group):
            yield from walk(command, prefix + [name])
results = {}
for argv in [[]] + list(walk(cli_mod.cli, [])):
    try:
        cli_mod.cli.main(args=argv + ["--help"], prog_name="movie", standalone_mode=False)
        results[" ".join(argv)] = 0
    except SystemExit as e:
        results[" ".join(argv)] = e.code
    except Exception as e:
        results[" ".join(argv)] = f"{type(e).__name__}: {e}"
hidden = []
for name in ("accelerate", "peft", "ray", "gradio"):
    try:
        __import__(name)
    except ImportError:
        hidden.append(name)
print(json.dumps({"help": results, "hidden": hidden}))
'''


@pytest.fixture
def plain_env(tmp_path: Path) -> dict[str, str]:
    hider = tmp_path / "hider"
    hider.mkdir()
    (hider / "sitecustomize.py").write_text(HIDER)
    env = dict(os.environ, MOVIE_TEST_HIDE=",".join(HIDDEN))
    env["PYTHONPATH"] = os.pathsep.join([str(hider), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_every_command_help_works_without_the_extras(plain_env: dict[str, str]) -> None:
    proc = run(plain_env, "-c", ALL_HELP)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["hidden"] == list(HIDDEN)  # the finder works: none of them imports
    assert {"distill", "nano-train", "batch", "app", "edit"} <= set(report["help"])
    broken = {cmd: code for cmd, code in report["help"].items() if code != 0}
    assert not broken


@pytest.mark.parametrize("args, extra", [
    (["distill", "pix2pix-finetune", "--teacher", "t", "--data", "d", "--out", "student"], "train"),
    (["nano-train", "--out", "work", "--scale", "0.01"], "train"),
    (["batch", "clips", "-p", "make it sepia", "--out-dir", "edited"], "ray"),
    (["app", "--work-dir", "work", "--port", "7861"], "app"),
])
def test_a_missing_extra_is_one_line_and_writes_nothing(plain_env: dict[str, str], tmp_path: Path,
                                                        args: list[str], extra: str) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "clips").mkdir()
    proc = run(plain_env, "-m", "movie_core.cli", *args, cwd=work)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'movie[{extra}]'" in lines[0], proc.stderr
    assert sorted(os.listdir(work)) == ["clips"]  # no partial output folder
