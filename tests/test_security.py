"""Security and data loss (issue 20, items 1-4): crafted single files and linked component folders stay inside
the model, two runs to one output never lose a result, SIGTERM and killed runs leave nothing behind, and what an
output cannot keep (16-bit depth, transparency, audio, subtitles) is read right or said."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings as warnings_module
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from movie_core import video
from movie_core.cli import main, resolve_recipe
from movie_core.composer import compose
from movie_core.errors import MovieError, MovieWarning
from movie_core.loading import build
from movie_core.video import TEMP_TAG, make_test_video, open_sink, open_source, probe, rename_no_replace
from movie_core.weights import builtin_root, component_folder, remove_stale_unpacked

from media_helpers import png16, with_subtitles

MODEL = ["--model", "nano:mobile-pix2pix-1step", "--no-progress"]
CLI = [sys.executable, "-c", "import sys; from movie_core.cli import main; main(sys.argv[1:])"]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if TEMP_TAG in p.name]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("movie: error:")]


def run_cli(capfd, *args: object) -> tuple[int, str, str]:
    """`movie ARGS` in this process: (exit status, stdout, stderr)."""
    capfd.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capfd.readouterr()
    return code, out, err


def dead_pid() -> int:
    """The id of a process that has just ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 frames, 32x24, with audio: an edit with the shipped nano model takes a few seconds."""
    return make_test_video(tmp_path_factory.mktemp("tiny") / "tiny.mp4", seconds=0.25, fps=8, width=32, height=24)


# --- 1. single files and linked folders stay inside the model ---------------------------------------------------


def crafted(path: Path, files: dict[str, str], keys: list[str]) -> Path:
    from safetensors.torch import save_file

    save_file({key: torch.zeros(2) for key in keys}, str(path),
              metadata={"format": "pt", "movie.files": json.dumps(files)})
    return path


ATTACKS = {
    "dotdot-name": ({"movie.json": "{}", "../../escaped.txt": "x"}, ["unet/w"], "'../../escaped.txt'"),
    "absolute-name": ({"movie.json": "{}", "@ABS@": "x"}, ["unet/w"], "@ABS@"),
    "dotdot-key": ({"movie.json": "{}"}, ["unet/w", "../escaped/w"], "'..'"),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_crafted_single_file_writes_nothing_outside_a_removed_temp_folder(attack: str, tmp_path: Path) -> None:
    work, temp = tmp_path / "work", tmp_path / "temp" / "t"
    temp.mkdir(parents=True)
    work.mkdir()
    absolute = tmp_path / "abs-target.txt"
    files, keys, named = ATTACKS[attack]
    files = {k.replace("@ABS@", str(absolute)): v for k, v in files.items()}
    bad = crafted(work / "bad.safetensors", files, keys)
    before = {p for p in tmp_path.rglob("*")}
    proc = subprocess.run([*CLI, "compose", "--model", str(bad), "--json"], capture_output=True, text=True,
                          timeout=120, env=os.environ | {"TMPDIR": str(temp)}, cwd=work)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert str(bad) in lines[0] and named.replace("@ABS@", str(absolute)) in lines[0], lines[0]
    assert not absolute.exists()
    assert {p for p in tmp_path.rglob("*")} == before  # nothing anywhere, and nothing left in TMPDIR
    assert list(temp.iterdir()) == []


def test_single_file_temp_folder_is_removed_at_exit(tmp_path: Path, capfd) -> None:
    model = tmp_path / "m.safetensors"
    code, _, err = run_cli(capfd, "compose", "--preset", "movie", "--size", "nano", "--init", "random",
                           "--save-model", model)
    assert code == 0, err
    temp = tmp_path / "temp"
    temp.mkdir()
    stale = temp / f"movie-model-{dead_pid()}-abcd1234"
    live = temp / f"movie-model-{os.getpid()}-abcd1234"
    for folder in (stale, live):
        (folder / "unet").mkdir(parents=True)
    proc = subprocess.run([*CLI, "compose", "--model", str(model), "--json"], capture_output=True, text=True,
                          timeout=120, env=os.environ | {"TMPDIR": str(temp)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["denoiser"]["name"] == "mobile-pix2pix-1step"
    assert sorted(p.name for p in temp.iterdir()) == [live.name]  # its own folder gone, a killed run's too


def test_stale_unpacked_folders_of_dead_processes_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, alive = tmp_path / f"movie-model-{dead_pid()}-x1", tmp_path / f"movie-model-{os.getpid()}-x2"
    other = tmp_path / "movie-model-notapid-x3"
    for folder in (dead, alive, other):
        folder.mkdir()
    remove_stale_unpacked()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])


@pytest.fixture
def model_tree(tmp_path: Path) -> Path:
    """A copy of the shipped nano mobile-pix2pix-1step model and the shared folders its manifest points to."""
    models = tmp_path / "models"
    for name in ("mobile-pix2pix-1step", "autoencoders", "text"):
        shutil.copytree(builtin_root() / name, models / name)
    return models / "mobile-pix2pix-1step"


def load(folder: Path):
    recipe, model, _ = resolve_recipe({"model": str(folder)})
    return build(compose(recipe), model=model)


def test_linked_component_folder_leaving_the_model_is_refused(model_tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (model_tree / "unet").rename(outside / "unet")
    (model_tree / "unet").symlink_to(outside / "unet", target_is_directory=True)
    with pytest.raises(MovieError, match="is a link to a folder outside"):
        component_folder(model_tree, "unet")
    with pytest.raises(MovieError, match="is a link to a folder outside"):
        load(model_tree)


def test_linked_component_folder_inside_the_parent_loads(model_tree: Path) -> None:
    shared = model_tree.parent / "shared-unet"
    (model_tree / "unet").rename(shared)
    (model_tree / "unet").symlink_to(Path("..") / shared.name, target_is_directory=True)
    assert component_folder(model_tree, "unet") == model_tree / "unet"
    assert load(model_tree).denoiser is not None


# --- 2. two runs, one output -------------------------------------------------------------------------------------


@pytest.mark.parametrize("way", ["renameat2", "link", "check"])
def test_no_clobber_rename(way: str, tmp_path: Path, monkeypatch) -> None:
    if way != "renameat2":
        monkeypatch.setattr(video, "_renameat2", lambda: None)
    if way == "check":
        monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(PermissionError("no hard links")))
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_text("new")
    dst.write_text("theirs")
    with pytest.raises(FileExistsError):
        rename_no_replace(src, dst)
    assert dst.read_text() == "theirs" and src.read_text() == "new"
    dst.unlink()
    rename_no_replace(src, dst)
    assert dst.read_text() == "new" and not src.exists()
    folder, taken = tmp_path / "folder", tmp_path / "taken"
    folder.mkdir()
    taken.mkdir()
    (taken / "keep").write_text("theirs")
    with pytest.raises(FileExistsError):
        rename_no_replace(folder, taken)
    assert (taken / "keep").read_text() == "theirs" and folder.is_dir()


@pytest.mark.parametrize("name", ["out.mp4", "frames"])
def test_output_appearing_during_the_run_is_kept(name: str, tiny_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / name
    with open_source(tiny_clip) as source:
        sink = open_sink(out, source)
        for frame in source.frames():
            sink.write(frame)
        if name == "frames":
            out.mkdir()
            (out / "theirs.png").write_bytes(b"theirs")
        else:
            out.write_bytes(b"theirs")
        with pytest.raises(MovieError, match="appeared while this run was writing it"):
            sink.close()
    if name == "frames":
        assert [p.name for p in out.iterdir()] == ["theirs.png"]
    assert (out / "theirs.png" if name == "frames" else out).read_bytes() == b"theirs"
    assert leftovers(tmp_path) == []


def test_overwrite_still_replaces_an_output_that_appeared(tiny_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with open_source(tiny_clip) as source, open_sink(out, source, overwrite=True) as sink:
        out.write_bytes(b"theirs")
        for frame in source.frames():
            sink.write(frame)
    assert probe(out)["frame_count"] == 2 and leftovers(tmp_path) == []


def temps_by_pid(folder: Path) -> set[int]:
    return {int(p.name.split(TEMP_TAG)[1].split("-")[0]) for p in folder.iterdir() if TEMP_TAG in p.name}


def test_two_concurrent_edits_to_one_output(tiny_clip: Path, tmp_path: Path) -> None:
    """Both runs pass the start-up check (the first to open its temporary file is paused until the other has
    opened its own), then race to the final rename: exactly one wins, the other fails with one line."""
    out = tmp_path / "out.mp4"
    cmd = [*CLI, "edit", str(tiny_clip), "-p", "make it sepia", "-o", str(out), "--max-side", "64", *MODEL]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    paused: set[int] = set()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            started = temps_by_pid(tmp_path)
            if len(started & {p.pid for p in procs}) == 2:
                break
            for pid in started - paused:
                os.kill(pid, signal.SIGSTOP)
                paused.add(pid)
            time.sleep(0.02)
        assert len(temps_by_pid(tmp_path)) == 2, "both runs should have opened their temporary files"
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    loser_err = next(err for code, _, err in results if code == 1)
    assert "Traceback" not in loser_err
    lines = error_lines(loser_err)
    assert len(lines) == 1 and "appeared while this run was writing it" in lines[0], loser_err
    assert leftovers(tmp_path) == []
    assert probe(out)["frame_count"] == 2


# --- 3. SIGTERM and killed runs --------------------------------------------------------------------------------


def test_sigterm_ends_cleanly(tmp_path: Path) -> None:
    clip = make_test_video(tmp_path / "clip.mp4", seconds=3, fps=8, width=32, height=24)
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen([*CLI, "edit", str(clip), "-p", "make it sepia", "-o", str(out), *MODEL],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not leftovers(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the edit ended before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("movie:")] == ["movie: terminated"], err
    assert leftovers(tmp_path) == [] and not out.exists()


def test_next_run_removes_temps_of_dead_runs_only(tmp_path: Path, capfd) -> None:
    image = tmp_path / "in.png"
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(image)
    dead, alive = dead_pid(), os.getpid()
    names = [
        f".out.png{TEMP_TAG}{dead}-0123abcd.png",  # a killed run: removed
        f".out.png{TEMP_TAG}{alive}-0123abcd.png",  # a run still going: kept
        f".other.png{TEMP_TAG}{dead}-0123abcd.png",  # another output's: kept
        f".out.png{TEMP_TAG}{dead}-0123abcd-old.png",  # an overwrite cut short, output missing: kept
        f"out.png{TEMP_TAG}{dead}-0123abcd.png",  # not our pattern: kept
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    code, _, err = run_cli(capfd, "edit", image, "-p", "make it sepia", "-o", tmp_path / "out.png", *MODEL)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.png", "out.png", *names[1:]])


# --- 4. what the output cannot keep ----------------------------------------------------------------------------


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey = (np.arange(24 * 32).reshape(24, 32) * 85).astype(np.uint16)  # 0 .. 65195
    path = png16(tmp_path / "grey16.png", grey)
    with open_source(path) as source:
        frame = source.frame(0)
    want = np.round(grey / 257).astype(np.uint8)
    assert frame.shape == (24, 32, 3)
    for channel in range(3):
        np.testing.assert_array_equal(frame[..., channel], want)


def test_16_bit_rgb_png_is_scaled(tmp_path: Path) -> None:
    ramp = (np.arange(24 * 32).reshape(24, 32) * 85).astype(np.uint16)
    rgb = np.stack([ramp, ramp // 3, 65535 - ramp], axis=-1)
    folder = tmp_path / "frames"
    folder.mkdir()
    png16(folder / "frame_1.png", rgb)
    with open_source(folder) as source:
        frame = source.frame(0)
    assert np.abs(frame.astype(int) - np.round(rgb / 257)).max() <= 1  # the top byte, or the rounded value


def test_transparency_is_dropped_with_a_warning(tmp_path: Path, capfd) -> None:
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    rgba[:4, :4, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    with open_source(tmp_path / "opaque.png") as source:  # an alpha channel that hides nothing: no warning
        assert source.frame(0)[0, 0].tolist() == [200, 0, 0]
    with pytest.warns(MovieWarning, match="transparency is dropped"):
        open_source(tmp_path / "clear.png").close()
    code, _, err = run_cli(capfd, "edit", tmp_path / "clear.png", "-p", "make it sepia", "-o", tmp_path / "o.png",
                           *MODEL)
    assert code == 0, err
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        f"warning: {tmp_path / 'clear.png'} has transparent pixels: transparency is dropped (the output is opaque)"
    ]


def test_audio_dropped_for_frames_output_is_said(tiny_clip: Path, tmp_path: Path, capfd) -> None:
    code, _, err = run_cli(capfd, "edit", tiny_clip, "-p", "make it sepia", "-o", tmp_path / "frames", *MODEL)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {tmp_path / 'frames'} is a folder of frames: the audio of {tiny_clip} is not kept"]
    with open_source(tiny_clip) as source, warnings_module.catch_warnings(record=True) as caught:
        warnings_module.simplefilter("always")
        open_sink(tmp_path / "out.mp4", source).abort()
    assert [str(w.message) for w in caught] == []  # a video output keeps the audio


def test_subtitles_dropped_are_said(tiny_clip: Path, tmp_path: Path) -> None:
    source_path = with_subtitles(tiny_clip, tmp_path / "subbed.mkv")
    with open_source(source_path) as source:
        assert source.subtitle_streams == 1
        with pytest.warns(MovieWarning, match=r"1 subtitle stream\(s\) of .*subbed.mkv are not copied"):
            sink = open_sink(tmp_path / "frames", source)  # a video output keeps them (tests/test_media_policy.py)
        sink.abort()
    with open_source(tiny_clip) as source:
        assert source.subtitle_streams == 0
