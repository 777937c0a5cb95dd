"""The weights side of issue 20's battery: every bad model input through `movie edit`, `movie compose --json` and
`movie convert`, run as the CLI in a child process with its own TMPDIR.

Each run must exit non-zero with exactly one stderr line, naming the file, and no traceback; leave nothing in the
output folder, nothing in TMPDIR, nothing anywhere else; and leave its input byte for byte as it was. The damaged
folders are tests/test_diffusers_folders.py's, the crafted single files tests/test_security.py's, the LDM files
tests/ldm_files.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers_folders import tiny_pipeline, write_ip2p  # noqa: E402
from ldm_files import write_config_folder, write_ldm  # noqa: E402
from test_diffusers_folders import DAMAGE, _truncate  # noqa: E402
from test_security import ATTACKS, crafted  # noqa: E402

COMMANDS = ("edit", "compose", "convert")

# runs `movie` in-process once per (case, command), capturing file descriptors 1 and 2 of each run
DRIVER = r"""
import json, os, sys, tempfile, traceback
from pathlib import Path
from movie_core.cli import main

runs, results_path, captures = json.load(open(sys.argv[1])), sys.argv[2], Path(sys.argv[3])
results = []
for run in runs:
    saved_env = dict(os.environ)
    os.environ.update(run["env"])
    out_f, err_f = open(captures / "out", "w+b"), open(captures / "err", "w+b")
    sys.stdout.flush(); sys.stderr.flush()
    keep = os.dup(1), os.dup(2)
    os.dup2(out_f.fileno(), 1); os.dup2(err_f.fileno(), 2)
    try:
        main(run["args"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 99
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(keep[0], 1); os.dup2(keep[1], 2)
    os.environ.clear(); os.environ.update(saved_env)
    out_f.seek(0); err_f.seek(0)
    results.append({"code": code, "out": out_f.read().decode(errors="replace"),
                    "err": err_f.read().decode(errors="replace"),
                    "outputs": sorted(os.listdir(run["outdir"])), "temp": sorted(os.listdir(tempfile.gettempdir()))})
json.dump(results, open(results_path, "w"))
"""


def digest(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of the file), links recorded as their targets."""
    items = [path] if path.is_file() else sorted(path.rglob("*"))
    found = {}
    for p in items:
        rel = p.relative_to(path.parent).as_posix()
        if p.is_symlink():
            found[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def make_cases(root: Path) -> dict[str, dict]:
    """case -> {"model": path given to --model / convert, "named": what the error line must name, "env": {...}}."""
    plain = write_ip2p(root / "plain" / "ip2p")
    cases: dict[str, dict] = {}
    for name, (named, damage) in DAMAGE.items():
        folder = root / "inputs" / name.replace(" ", "-") / "model"
        shutil.copytree(plain, folder)
        damage(folder)
        cases[name] = {"model": folder, "named": str(folder / named)}

    absolute = root / "abs-target.txt"
    for name, (files, keys, _named) in ATTACKS.items():
        work = root / "inputs" / name
        work.mkdir(parents=True)
        files = {k.replace("@ABS@", str(absolute)): v for k, v in files.items()}
        bad = crafted(work / "bad.safetensors", files, keys)
        cases[f"single file {name}"] = {"model": bad, "named": str(bad)}

    folder = root / "inputs" / "symlink" / "model"
    shutil.copytree(plain, folder)
    outside = root / "outside"
    outside.mkdir()
    (folder / "vae").rename(outside / "vae")
    (folder / "vae").symlink_to(outside / "vae", target_is_directory=True)
    cases["symlinked component folder"] = {"model": folder, "named": str(folder / "vae")}

    ckpt = root / "inputs" / "pickle" / "model.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
    cases["pickle ckpt"] = {"model": ckpt, "named": str(ckpt), "needle": "MOVIE_ALLOW_PICKLE"}

    pipe = tiny_pipeline("ddim")
    configs = write_config_folder(root / "ldm-configs", pipe)
    env = {"MOVIE_LDM_CONFIG": str(configs)}
    missing = write_ldm(root / "inputs" / "ldm-missing" / "ip2p.safetensors", pipe,
                        drop=("model.diffusion_model.out.2.weight", "first_stage_model.decoder.conv_in.bias"))
    cases["LDM file with missing keys"] = {"model": missing, "named": str(missing), "needle": "missing", "env": env}
    cut = write_ldm(root / "inputs" / "ldm-truncated" / "ip2p.safetensors", pipe)
    _truncate(cut)
    cases["truncated LDM file"] = {"model": cut, "named": str(cut), "env": env}
    return cases


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    """Every case through every command, in one child process; (cases, results, checks around the run)."""
    root = tmp_path_factory.mktemp("battery")
    cases = make_cases(root)
    frame = root / "frame.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (120, 60, 30)).save(frame)
    outdir, temp, captures = root / "out", root / "tmp", tmp_path_factory.mktemp("captures")
    outdir.mkdir()
    temp.mkdir()
    runs = []
    for name, case in cases.items():
        tag = name.replace(" ", "-")
        model = str(case["model"])
        for command in COMMANDS:
            args = {
                "edit": ["edit", str(frame), "-p", "make it snow", "-o", str(outdir / f"{tag}.png"), "--model", model,
                         "--no-progress"],
                "compose": ["compose", "--model", model, "--json"],
                "convert": ["convert", model, "--to", "mobile-pix2pix", "--out", str(outdir / f"{tag}-converted")],
            }[command]
            runs.append({"case": name, "command": command, "args": args, "env": case.get("env", {}),
                         "outdir": str(outdir)})
    before_inputs = {name: digest(Path(case["model"]).parent) for name, case in cases.items()}
    before_all = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    (captures / "runs.json").write_text(json.dumps(runs))
    env = {k: v for k, v in os.environ.items() if k != "MOVIE_ALLOW_PICKLE"} | {"TMPDIR": str(temp)}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(captures / "runs.json"), str(captures / "results.json"),
                           str(captures)], capture_output=True, text=True, timeout=900, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((captures / "results.json").read_text())
    by_run = {(run["case"], run["command"]): result for run, result in zip(runs, results, strict=True)}
    return {
        "cases": cases,
        "results": by_run,
        "inputs_unchanged": {name: digest(Path(case["model"]).parent) == before_inputs[name]
                             for name, case in cases.items()},
        "tree_unchanged": sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before_all,
        "temp_after_exit": sorted(os.listdir(temp)),
        "absolute_target": (root / "abs-target.txt").exists(),
    }


CASE_NAMES = sorted([*DAMAGE, *(f"single file {a}" for a in ATTACKS), "symlinked component folder", "pickle ckpt",
                     "LDM file with missing keys", "truncated LDM file"])


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_model_input_is_one_line_and_leaves_nothing(case, command, battery):
    result = battery["results"][(case, command)]
    spec = battery["cases"][case]
    err = result["err"]
    lines = [line for line in err.splitlines() if line.strip()]
    assert result["code"] not in (0, 99), (result["code"], err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("movie: error:"), err
    assert spec["named"] in lines[0], lines[0]
    if "needle" in spec:
        assert spec["needle"] in lines[0], lines[0]
    assert result["outputs"] == [], result["outputs"]  # nothing (half-)written in the output folder
    assert result["temp"] == [], result["temp"]  # nothing left in TMPDIR after the run
    assert battery["inputs_unchanged"][case]


def test_battery_writes_nothing_anywhere(battery):
    """After all runs and the process's exit: the whole tree as it was, TMPDIR empty, no file at an absolute name."""
    assert battery["tree_unchanged"]
    assert battery["temp_after_exit"] == []
    assert not battery["absolute_target"]
    assert len(battery["results"]) == len(CASE_NAMES) * len(COMMANDS)
