"""`movie edit` end to end: the acceptance run, every user error, anchors, size policy, previews, presets.

Runs the command in-process through `movie_core.cli.main` (the console entry point) with nano models
at random init; one test runs a real subprocess to check what a user's terminal shows.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# Import the model libraries while pytest's session-wide capture is in place, so their logging
# handlers bind to a stream that outlives any one test's capfd.
import diffusers  # noqa: F401
import numpy as np
import pytest
import transformers  # noqa: F401
from PIL import Image

from movie_core.cli import main
from movie_core.edit import FrameEditor, SizePolicy, anchor_index, contact_sheet
from movie_core.errors import UsageError
from movie_core.video import make_test_video, open_source, probe

from media_helpers import cut_in_half, digest, faststart_copy, zero_frame_video

NANO = ["--size", "nano", "--init", "random", "--no-progress"]
SUMMARY = re.compile(r"^edited (\d+) frames in ([\d.]+) s \(([\d.]+) frames/s\) at (\d+)x(\d+) -> (.+)$", re.M)
AAC_FRAME_S = 1024 / 48000


# --- helpers -------------------------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders (`.NAME.movie-tmp-*`) left in a folder."""
    return [p.name for p in folder.iterdir() if ".movie-tmp" in p.name]


def edit(capfd, *args: object) -> tuple[int, str, str]:
    """Run `movie edit ARGS...` in-process; returns (exit status, stdout, stderr)."""
    code = 0
    try:
        main(["edit", *map(str, args)])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capfd.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def assert_clean_failure(code: int, err: str, folder: Path, output: Path, message: str) -> None:
    """Non-zero exit, exactly one `movie: error:` line naming the problem, no output, no temp file."""
    assert code != 0
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("movie: error: "), err
    assert message in lines[0], err
    assert not output.exists()
    assert leftovers(folder) == []


def read_frames(path: Path) -> list[np.ndarray]:
    with open_source(path) as source:
        return list(source.frames())


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 s, 8 fps, 64x48 H.264 MP4 with AAC audio (8 frames)."""
    return make_test_video(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=1, fps=8)


# --- acceptance ----------------------------------------------------------------------------------


def test_acceptance_ten_seconds_with_audio(tmp_path: Path, capfd) -> None:
    src = make_test_video(tmp_path / "in.mp4", seconds=10, fps=24, width=64, height=48, audio=True)
    before = digest(src)
    want = probe(src)
    assert want["frame_count"] == 240 and want["audio_codec"] is not None
    out = tmp_path / "out.mp4"
    code, stdout, err = edit(capfd, src, "-p", "make it sepia", "-o", out, "--preset", "movie", *NANO)
    assert code == 0, err
    assert "Traceback" not in err
    got = probe(out)
    assert got["frame_count"] == 240
    assert got["fps"] == want["fps"] == 24
    assert (got["width"], got["height"]) == (64, 48)
    assert got["audio_codec"] == want["audio_codec"]
    assert abs(got["audio_duration_s"] - want["audio_duration_s"]) <= AAC_FRAME_S
    assert abs(got["audio_duration_s"] - 10.0) <= 2 * AAC_FRAME_S
    assert digest(src) == before
    assert leftovers(tmp_path) == []
    summary = SUMMARY.search(stdout)
    assert summary, stdout
    frames, seconds, fps = int(summary[1]), float(summary[2]), float(summary[3])
    assert frames == 240 and seconds > 0 and fps > 0
    assert abs(fps - frames / seconds) <= 0.05 * fps + 0.01


def test_real_process_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    """What a terminal shows: the console entry point in a fresh interpreter."""
    bad = tmp_path / "x.mp4"
    bad.write_text("hello, not a video\n")
    before = digest(bad)
    cmd = [sys.executable, "-c", "import sys; from movie_core.cli import main; main(sys.argv[1:])",
           "edit", str(bad), "-p", "make it sepia", "-o", str(tmp_path / "out.mp4"), *NANO]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("movie: error: not a video or image"), proc.stderr
    assert proc.stdout == ""
    assert digest(bad) == before
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


# --- errors: one line, non-zero, input untouched, no output, no temp file ------------------------


def _missing(d: Path, clip: Path) -> tuple[Path, list]:
    return d / "missing.mp4", []


def _text_named_mp4(d: Path, clip: Path) -> tuple[Path, list]:
    path = d / "x.mp4"
    path.write_text("hello, not a video\n")
    return path, []


def _zero_frames(d: Path, clip: Path) -> tuple[Path, list]:
    return zero_frame_video(d / "zero.mkv"), []


def _truncated_mp4(d: Path, clip: Path) -> tuple[Path, list]:
    return cut_in_half(make_test_video(d / "t.mp4")), []


def _truncated_mkv(d: Path, clip: Path) -> tuple[Path, list]:
    return cut_in_half(make_test_video(d / "t.mkv")), []


def _truncated_mid_stream(d: Path, clip: Path) -> tuple[Path, list]:
    # the index survives, so the file opens claiming 240 frames; the default (middle) anchor is past its end
    return cut_in_half(faststart_copy(make_test_video(d / "a.mp4"), d / "t.mp4")), []


def _truncated_mid_stream_first(d: Path, clip: Path) -> tuple[Path, list]:
    # anchor on frame 0: the error surfaces inside the frame loop, after frames went to the sink
    truncated = cut_in_half(faststart_copy(make_test_video(d / "a.mp4"), d / "t.mp4"))
    return truncated, ["--anchor", "first", "--max-side", "16"]


ERROR_CASES: dict[str, tuple[Callable[[Path, Path], tuple[Path, list]], list, str]] = {
    # name: (make input, extra args, text the error line must contain)
    "missing-input": (_missing, [], "no such file"),
    "not-a-video": (_text_named_mp4, [], "not a video or image"),
    "zero-frames": (_zero_frames, [], "no frames in video"),
    "truncated-mp4": (_truncated_mp4, [], "truncated or corrupt video"),
    "truncated-mkv": (_truncated_mkv, [], "truncated video"),
    "truncated-mid-stream": (_truncated_mid_stream, [], "truncated video"),
    "truncated-mid-stream-anchor-first": (_truncated_mid_stream_first, [], "truncated video"),
    "text-guidance-negative": (lambda d, c: (c, []), ["--text-guidance", "-1"], "--text-guidance"),
    "image-guidance-huge": (lambda d, c: (c, []), ["--image-guidance", "1000"], "--image-guidance"),
    "text-guidance-not-a-number": (lambda d, c: (c, []), ["--text-guidance", "abc"], "'abc' is not a valid float"),
    "image-guidance-nan": (lambda d, c: (c, []), ["--image-guidance", "nan"], "--image-guidance"),
    "anchor-past-the-end": (lambda d, c: (c, []), ["--anchor", "99999"], "--anchor 99999 is past the last frame (7)"),
    "anchor-not-a-policy": (lambda d, c: (c, []), ["--anchor", "last"],
                            "anchor must be middle, first, none or a frame index"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_or_option_fails_cleanly(tmp_path: Path, clip: Path, capfd, case: str) -> None:
    make, extra, message = ERROR_CASES[case]
    src, more = make(tmp_path, clip)
    before = digest(src) if src.exists() else None
    out = tmp_path / "out.mp4"
    code, _, err = edit(capfd, src, "-p", "make it sepia", "-o", out, *NANO, *extra, *more)
    assert_clean_failure(code, err, tmp_path, out, message)
    assert (digest(src) if src.exists() else None) == before


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_refused(tmp_path: Path, clip: Path, capfd, prompt: str) -> None:
    before = digest(clip)
    out = tmp_path / "out.mp4"
    code, _, err = edit(capfd, clip, "-p", prompt, "-o", out, *NANO)
    assert_clean_failure(code, err, tmp_path, out, "the prompt is empty")
    assert digest(clip) == before


def test_unwritable_output_folder_is_refused(tmp_path: Path, clip: Path, capfd) -> None:
    # a regular file used as a folder: fails for every user, root included
    blocker = tmp_path / "afile"
    blocker.write_text("I am a file\n")
    before = digest(clip), digest(blocker)
    out = blocker / "out.mp4"
    code, _, err = edit(capfd, clip, "-p", "make it sepia", "-o", out, *NANO)
    assert_clean_failure(code, err, tmp_path, out, "cannot write to folder")
    assert "not a folder" in err
    assert (digest(clip), digest(blocker)) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_equal_to_input_is_refused(tmp_path: Path, clip: Path, capfd, overwrite: bool) -> None:
    src = tmp_path / "in.mp4"
    src.write_bytes(clip.read_bytes())
    before = digest(src)
    same = tmp_path / "." / "in.mp4"
    code, _, err = edit(capfd, src, "-p", "make it sepia", "-o", same, *NANO, *(["--overwrite"] if overwrite else []))
    assert code != 0 and "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("movie: error: ") and "is the input" in lines[0]
    assert digest(src) == before
    assert leftovers(tmp_path) == []


def test_existing_output_without_overwrite_is_refused(tmp_path: Path, clip: Path, capfd) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier result")
    before = digest(clip), digest(out)
    code, _, err = edit(capfd, clip, "-p", "make it sepia", "-o", out, *NANO)
    assert code != 0 and "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("movie: error: ") and "pass --overwrite" in lines[0]
    assert (digest(clip), digest(out)) == before
    assert leftovers(tmp_path) == []


def test_ctrl_c_mid_run_leaves_nothing(tmp_path: Path, clip: Path, capfd, monkeypatch) -> None:
    calls = {"n": 0}
    real = FrameEditor.run  # the frame loop's device step (decode and encode run in worker threads)

    def interrupted(self, x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(FrameEditor, "run", interrupted)
    before = digest(clip)
    out = tmp_path / "out.mp4"
    code, stdout, err = edit(capfd, clip, "-p", "make it sepia", "-o", out, *NANO, "--batch-size", "2")
    assert calls["n"] == 3
    assert code == 130
    assert "Traceback" not in err
    # click prints an empty line before it turns KeyboardInterrupt into Abort; only one line says something
    assert error_lines(err) == ["movie: interrupted"], err
    assert "edited" not in stdout
    assert not out.exists()
    assert leftovers(tmp_path) == []
    assert digest(clip) == before


# --- prompts, inputs and outputs -----------------------------------------------------------------


def test_over_long_prompt_is_truncated_with_a_warning(tmp_path: Path, clip: Path, capfd) -> None:
    prompt = " ".join(f"word{i}" for i in range(500))
    out = tmp_path / "out.mp4"
    code, stdout, err = edit(capfd, clip, "-p", prompt, "-o", out, *NANO)
    assert code == 0, err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning: prompt truncated")]
    assert len(warnings) == 1, err
    assert "77 tokens" in warnings[0]
    assert probe(out)["frame_count"] == 8
    assert SUMMARY.search(stdout)


def test_image_in_image_out(tmp_path: Path, capfd) -> None:
    src = tmp_path / "in.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(src)
    before = digest(src)
    out = tmp_path / "out.png"
    code, stdout, err = edit(capfd, src, "-p", "make it sepia", "-o", out, *NANO)
    assert code == 0, err
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (64, 48)
        assert image.mode == "RGB"
    assert SUMMARY.search(stdout)[1] == "1"
    assert digest(src) == before
    assert leftovers(tmp_path) == []


def test_frames_folder_in_frames_folder_out(tmp_path: Path, capfd) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(1, 6):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"shot_{i:04d}.png")
    before = digest(folder)
    out = tmp_path / "edited"
    code, stdout, err = edit(capfd, folder, "-p", "make it sepia", "-o", out, *NANO, "--fps", "12")
    assert code == 0, err
    assert out.is_dir()
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"frame_{i:06d}.png" for i in range(1, 6)]
    for name in names:
        with Image.open(out / name) as image:
            assert image.size == (64, 48)
    assert SUMMARY.search(stdout)[1] == "5"
    assert digest(folder) == before
    assert leftovers(tmp_path) == []


def test_preview_contact_sheet(tmp_path: Path, clip: Path, capfd) -> None:
    out, sheet = tmp_path / "out.mp4", tmp_path / "sheet.png"
    code, _, err = edit(capfd, clip, "-p", "make it sepia", "-o", out, *NANO, "--preview", sheet)
    assert code == 0, err
    tile_h = inspect.signature(contact_sheet).parameters["height"].default
    tile_w = round(64 * tile_h / 48)
    with Image.open(sheet) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert height == 2 * tile_h  # source above edited
    assert width % tile_w == 0 and width // tile_w >= 3  # several frames across the video
    # the top-left tile is the first source frame, scaled up
    first = read_frames(clip)[0]
    top = np.asarray(Image.fromarray(pixels[:tile_h, :tile_w]).resize((64, 48), Image.BILINEAR))
    assert np.abs(top.astype(int) - first.astype(int)).mean() < 12
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("anchor", ["first", "5", "none"])
def test_anchor_policies(tmp_path: Path, clip: Path, capfd, anchor: str) -> None:
    out = tmp_path / "out.mp4"
    code, stdout, err = edit(capfd, clip, "-p", "make it sepia", "-o", out, *NANO, "--anchor", anchor)
    assert code == 0, err
    assert probe(out)["frame_count"] == 8
    assert SUMMARY.search(stdout)[1] == "8"


def test_max_side_processes_small_and_writes_source_size(tmp_path: Path, clip: Path, capfd) -> None:
    out = tmp_path / "out.mp4"
    code, stdout, err = edit(capfd, clip, "-p", "make it sepia", "-o", out, *NANO, "--max-side", "32")
    assert code == 0, err
    summary = SUMMARY.search(stdout)
    assert (int(summary[4]), int(summary[5])) == (32, 24)  # processed at 32x24
    got = probe(out)
    assert (got["width"], got["height"], got["frame_count"]) == (64, 48, 8)  # resized back


@pytest.mark.parametrize("args", [["--max-side", "8"], ["--max-side", "16", "--batch-size", "1"]])
def test_tiny_processing_sizes(tmp_path: Path, clip: Path, capfd, args: list[str]) -> None:
    """Sizes the CLI accepts (>= 8) work at batch 1 too: frames are padded up to SizePolicy.min_side."""
    out = tmp_path / "out.mp4"
    code, stdout, err = edit(capfd, clip, "-p", "make it sepia", "-o", out, *NANO, *args)
    assert code == 0, err
    got = probe(out)
    assert (got["width"], got["height"], got["frame_count"]) == (64, 48, 8)


def test_tiny_image(tmp_path: Path, capfd) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(src)
    out = tmp_path / "out.png"
    code, _, err = edit(capfd, src, "-p", "make it sepia", "-o", out, *NANO)
    assert code == 0, err
    with Image.open(out) as image:
        assert image.size == (16, 16)


def test_odd_size_input(tmp_path: Path, capfd) -> None:
    src = make_test_video(tmp_path / "odd.mp4", seconds=1, fps=8, width=65, height=49)
    out = tmp_path / "out.mp4"
    code, stdout, err = edit(capfd, src, "-p", "make it sepia", "-o", out, *NANO)
    assert code == 0, err
    summary = SUMMARY.search(stdout)
    assert (int(summary[4]), int(summary[5])) == (65, 49)
    got = probe(out)
    assert got["frame_count"] == 8
    assert (got["width"], got["height"]) == (65, 49)  # exact: odd sizes are encoded yuv444p (movie_core.video)


@pytest.mark.parametrize("preset", ["base", "mobile", "mmg", "movie"])
def test_every_preset_goes_through_the_frame_loop(tmp_path: Path, clip: Path, capfd, preset: str) -> None:
    out = tmp_path / "out.mp4"
    code, stdout, err = edit(capfd, clip, "-p", "make it sepia", "-o", out, "--preset", preset, *NANO,
                             "--steps", "2", "--batch-size", "3")
    assert code == 0, err
    assert probe(out)["frame_count"] == 8
    assert SUMMARY.search(stdout)[1] == "8"


# --- units: size policy and anchor choice --------------------------------------------------------


def test_size_policy() -> None:
    assert SizePolicy().target(48, 64) == (48, 64)
    assert SizePolicy(max_side=32).target(48, 64) == (24, 32)
    assert SizePolicy(max_side=128).target(48, 64) == (48, 64)  # never enlarged
    assert SizePolicy(height=24).target(48, 64) == (24, 32)
    assert SizePolicy(width=32).target(48, 64) == (24, 32)
    assert SizePolicy(height=40, width=40).target(48, 64) == (40, 40)
    assert SizePolicy().padded(49, 65) == (56, 72)
    assert SizePolicy().padded(48, 64) == (48, 64)
    assert SizePolicy().padded(6, 8) == (32, 32)  # tiny sizes are edge-padded up to min_side


def test_anchor_index() -> None:
    assert anchor_index("middle", 8, True) == 4
    assert anchor_index("middle", None, True) == 0
    assert anchor_index("middle", 8, False) == 0
    assert anchor_index("first", 8, True) == 0
    assert anchor_index("5", 8, True) == 5
    assert anchor_index("none", 8, True) is None
    with pytest.raises(UsageError, match="past the last frame"):
        anchor_index("8", 8, True)
