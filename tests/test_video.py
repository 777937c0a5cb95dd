"""Streaming video/image I/O: round trips, streaming memory, rotation, odd sizes, atomic output, errors."""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from movie_core.errors import MovieError, UsageError
from movie_core.video import (
    TEMP_TAG,
    CorruptVideoError,
    MediaError,
    check_output,
    make_test_video,
    open_sink,
    open_source,
    probe,
)

from media_helpers import cut_in_half, digest, faststart_copy, zero_frame_video


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a sink left behind."""
    return [p.name for p in folder.iterdir() if TEMP_TAG in p.name]


def copy_frames(source_path: Path, output: Path, **kwargs) -> None:
    """Run the identity transform: every frame of the source into a sink at its own pts."""
    with open_source(source_path) as source, open_sink(output, source, **kwargs) as sink:
        for frame, pts in source.frames(with_pts=True):
            sink.write(frame, pts)


def audio_packets(path: Path) -> list[bytes]:
    """The bytes of every audio packet in a file."""
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10 s, 24 fps, 64x48 H.264 MP4 with AAC audio."""
    return make_test_video(tmp_path_factory.mktemp("clip") / "clip.mp4")


def test_make_test_video_is_fast_and_real(tmp_path: Path) -> None:
    import time

    start = time.perf_counter()
    path = make_test_video(tmp_path / "v.mp4")
    assert time.perf_counter() - start < 3.0
    info = probe(path)
    assert info["frame_count"] == 240 and info["fps"] == 24
    assert (info["width"], info["height"]) == (64, 48)
    assert abs(info["audio_duration_s"] - 10.0) < 0.05
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"


def test_round_trip_keeps_frames_timing_size_and_audio(clip: Path, tmp_path: Path) -> None:
    before = digest(clip)
    out = tmp_path / "out.mp4"
    with open_source(clip) as source:
        assert source.kind == "video" and source.is_seekable and source.has_audio
        assert (source.width, source.height, source.fps, source.frame_count) == (64, 48, 24, 240)
        assert source.rotation == 0 and abs(source.duration_s - 10.0) < 0.05
    copy_frames(clip, out)
    src, dst = probe(clip), probe(out)
    assert dst["frame_count"] == 240
    assert dst["fps"] == src["fps"] == 24
    assert dst["time_base"] == src["time_base"]
    assert (dst["width"], dst["height"]) == (64, 48)
    assert abs(dst["audio_duration_s"] - src["audio_duration_s"]) <= 1024 / 48000
    assert audio_packets(out) == audio_packets(clip)  # copied, not re-encoded
    assert digest(clip) == before
    assert leftovers(tmp_path) == []
    with open_source(clip) as a, open_source(out) as b:
        for i, (fa, fb) in enumerate(zip(a.frames(), b.frames())):
            if i % 40 == 0:
                assert mean_abs_diff(fa, fb) < 6


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to read resident memory")
def test_frames_stream_without_growing_memory(tmp_path: Path) -> None:
    width, height, seconds = 256, 192, 20
    path = make_test_video(tmp_path / "long.mp4", seconds=seconds, width=width, height=height, audio=False)
    warm_up = make_test_video(tmp_path / "short.mp4", seconds=1, width=width, height=height, audio=False)
    all_frames = seconds * 24 * width * height * 3  # 70 MB if the frames were kept
    with open_source(warm_up) as source:  # warm up the codec libraries and the allocator
        assert sum(1 for _ in source.frames()) == 24
    with open_source(path) as source:
        frames = source.frames()
        assert inspect.isgenerator(frames)
        start = peak = resident_bytes()
        count = 0
        for _ in frames:
            count += 1
            peak = max(peak, resident_bytes())
    assert count == 480
    assert peak - start < all_frames / 4, f"memory grew by {(peak - start) / 1e6:.1f} MB while streaming"


def test_frame_by_index_matches_the_stream(clip: Path) -> None:
    with open_source(clip) as source:
        middle = source.frame(120)
        last = source.frame(239)
        frames = list(source.frames())
        assert np.array_equal(middle, frames[120])
        assert np.array_equal(last, frames[239])
        assert np.array_equal(source.frame(0), frames[0])
        with pytest.raises(IndexError):
            source.frame(240)


@pytest.mark.parametrize("ext", [".mkv", ".mov"])
def test_other_containers(clip: Path, tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"out{ext}"
    copy_frames(clip, out)
    info = probe(out)
    assert info["frame_count"] == 240 and info["fps"] == 24
    assert abs(info["audio_duration_s"] - probe(clip)["audio_duration_s"]) <= 1024 / 48000


def test_frames_without_pts_follow_source_timing(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with open_source(clip) as source, open_sink(out, source) as sink:
        for frame in source.frames():
            sink.write(255 - frame)
    info = probe(out)
    assert info["frame_count"] == 240 and info["fps"] == 24 and info["time_base"] == probe(clip)["time_base"]


def test_odd_size_is_kept_exactly(tmp_path: Path) -> None:
    src = make_test_video(tmp_path / "odd.mp4", seconds=1, width=65, height=49)
    out = tmp_path / "out.mp4"
    with open_source(src) as source:
        assert (source.width, source.height) == (65, 49)
        first = source.frame(0)
    copy_frames(src, out)
    info = probe(out)
    assert (info["width"], info["height"]) == (65, 49) and info["frame_count"] == 24
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"  # 4:2:0 cannot hold odd sizes
    with open_source(out) as result:
        assert mean_abs_diff(result.frame(0), first) < 6


def test_rotation_is_read_applied_and_kept(tmp_path: Path) -> None:
    src = make_test_video(tmp_path / "rot.mp4", seconds=1, width=64, height=48, rotation=90)
    with av.open(str(src)) as c:
        coded = next(c.decode(video=0)).to_ndarray(format="rgb24")
    with open_source(src) as source:
        assert source.rotation == 90
        assert (source.width, source.height) == (48, 64)
        upright = source.frame(0)
    assert upright.shape == (64, 48, 3)
    assert np.array_equal(upright, np.rot90(coded, 1))
    out = tmp_path / "out.mp4"
    copy_frames(src, out)
    info = probe(out)
    assert (info["rotation"], info["width"], info["height"]) == (90, 48, 64)
    with open_source(out) as result:
        assert mean_abs_diff(result.frame(0), upright) < 6


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_image_in_image_out(tmp_path: Path, ext: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    src = tmp_path / f"in{ext}"
    Image.fromarray(pixels).save(src)
    before = digest(src)
    out = tmp_path / f"out{ext}"
    with open_source(src) as source:
        assert (source.kind, source.width, source.height, source.frame_count) == ("image", 53, 37, 1)
        original = source.frame(0)
        with open_sink(out, source) as sink:
            for frame in source.frames():
                sink.write(frame)
    written = np.asarray(Image.open(out).convert("RGB"))
    assert written.shape == (37, 53, 3)
    if ext == ".png":
        assert np.array_equal(written, original)
    assert digest(src) == before and leftovers(tmp_path) == []


def test_frames_folder_in_frames_folder_out(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (20, 30, 3), dtype=np.uint8) for _ in range(12)]
    for i, frame in enumerate(frames, start=1):  # frame_2 must come before frame_10
        Image.fromarray(frame).save(folder / f"frame_{i}.png")
    (folder / "notes.txt").write_text("not a frame")
    before = digest(folder)
    out = tmp_path / "edited"
    with open_source(folder, fps=30) as source:
        assert (source.kind, source.frame_count, source.fps) == ("frames", 12, 30)
        assert (source.width, source.height) == (30, 20)
        read = list(source.frames())
        assert np.array_equal(source.frame(9), frames[9])
        with open_sink(out, source) as sink:
            for frame in read:
                sink.write(frame)
    assert all(np.array_equal(a, b) for a, b in zip(read, frames))
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"frame_{i:06d}.png" for i in range(1, 13)]
    assert all(np.array_equal(np.asarray(Image.open(out / n)), f) for n, f in zip(names, frames))
    assert digest(folder) == before and leftovers(tmp_path) == []


def test_frames_folder_to_video(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((16, 16, 3), i * 40, np.uint8)).save(folder / f"{i:04d}.jpg")
    out = tmp_path / "out.mp4"
    copy_frames(folder, out)
    info = probe(out)
    assert (info["frame_count"], info["fps"], info["audio_duration_s"]) == (5, 24, None)


def test_overwrite_replaces_existing_output(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    out.write_text("old")
    copy_frames(clip, out, overwrite=True)
    assert probe(out)["frame_count"] == 240 and leftovers(tmp_path) == []


def test_output_is_not_world_private(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    copy_frames(clip, out)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_non_seekable_pipe_streams_once(tmp_path: Path) -> None:
    src = make_test_video(tmp_path / "v.mkv", seconds=1, audio=False)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_bytes(src.read_bytes()))
    feeder.start()
    try:
        with open_source(fifo) as source:
            assert not source.is_seekable and source.frame_count is None
            first = source.frame(0)
            frames = list(source.frames())
            assert len(frames) == 24 and np.array_equal(frames[0], first)
            with pytest.raises(UsageError):
                next(source.frames())
            with pytest.raises(UsageError):
                source.frame(5)
    finally:
        feeder.join(timeout=10)


# --- errors: right class, one line, input untouched, nothing left behind ------------------------


def run_identity(src: Path, out: Path) -> None:
    with open_source(src) as source, open_sink(out, source) as sink:
        for frame, pts in source.frames(with_pts=True):
            sink.write(frame, pts)


def text_named_mp4(folder: Path) -> Path:
    path = folder / "x.mp4"
    path.write_text("hello, not a video\n")
    return path


def empty_folder(folder: Path) -> Path:
    path = folder / "frames"
    path.mkdir()
    (path / "readme.txt").write_text("no frames here")
    return path


INPUT_ERRORS: dict[str, tuple[Callable[[Path], Path], type[MovieError], str]] = {
    "missing": (lambda d: d / "missing.mp4", MediaError, "no such file"),
    "not-a-video": (text_named_mp4, MediaError, "not a video or image"),
    "zero-frames": (lambda d: zero_frame_video(d / "zero.mkv"), MediaError, "no frames in video"),
    "truncated-mp4": (lambda d: cut_in_half(make_test_video(d / "t.mp4")), CorruptVideoError, "truncated or"),
    "truncated-mkv": (lambda d: cut_in_half(make_test_video(d / "t.mkv")), CorruptVideoError, "truncated"),
    "truncated-mid-stream": (
        lambda d: cut_in_half(faststart_copy(make_test_video(d / "a.mp4"), d / "t.mp4")),
        CorruptVideoError,
        "truncated video",
    ),
    "empty-folder": (empty_folder, MediaError, "no numbered frames"),
}


@pytest.mark.parametrize("case", list(INPUT_ERRORS))
def test_bad_input_fails_cleanly(tmp_path: Path, case: str) -> None:
    make, error, text = INPUT_ERRORS[case]
    src = make(tmp_path)
    before = digest(src) if src.exists() else None
    out = tmp_path / "out.mp4"
    with pytest.raises(error) as info:
        run_identity(src, out)
    message = str(info.value)
    assert text in message and str(src) in message and "\n" not in message
    assert (digest(src) if src.exists() else None) == before
    assert not out.exists() and leftovers(tmp_path) == []


def test_mid_stream_truncation_names_the_frame_reached(tmp_path: Path) -> None:
    src = cut_in_half(faststart_copy(make_test_video(tmp_path / "a.mp4"), tmp_path / "t.mp4"))
    with open_source(src) as source:
        assert source.frame_count == 240  # the index still claims every frame
    with pytest.raises(CorruptVideoError, match=r"stream ends at frame \d+ of 240"):
        run_identity(src, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


def output_errors(clip: Path, d: Path) -> dict[str, tuple[Path, Path, str]]:
    """case -> (input, output, message fragment) for outputs that must be refused up front."""
    local = d / "in.mp4"
    local.write_bytes(clip.read_bytes())
    existing = d / "exists.mp4"
    existing.write_text("keep me")
    a_file = d / "plain-file"
    a_file.write_text("x")
    (d / "link.mp4").symlink_to(local)
    return {
        "folder-is-a-file": (local, a_file / "out.mp4", "cannot write to folder"),
        "folder-missing": (local, d / "nope" / "out.mp4", "cannot write to folder"),
        "same-as-input": (local, local, "is the input"),
        "same-via-symlink": (local, d / "link.mp4", "is the input"),
        "exists": (local, existing, "exists; pass --overwrite"),
        "holds-the-input": (local, d, "contains the input"),
    }


OUTPUT_CASES = [
    "folder-is-a-file", "folder-missing", "same-as-input", "same-via-symlink", "exists", "holds-the-input"
]


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_bad_output_is_refused_before_any_work(clip: Path, tmp_path: Path, case: str) -> None:
    src, out, text = output_errors(clip, tmp_path)[case]
    before = {p.name: digest(p) for p in tmp_path.iterdir()}
    with pytest.raises(UsageError) as info:
        check_output(out, src, overwrite=False)
    assert text in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UsageError):
        run_identity(src, out)
    assert {p.name: digest(p) for p in tmp_path.iterdir()} == before
    assert leftovers(tmp_path) == []


def test_same_as_input_is_refused_even_with_overwrite(clip: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.mp4"
    src.write_bytes(clip.read_bytes())
    with open_source(src) as source, pytest.raises(UsageError, match="is the input"):
        open_sink(src, source, overwrite=True)
    assert src.read_bytes() == clip.read_bytes()


def test_output_inside_input_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "0001.png")
    with pytest.raises(UsageError, match="inside the input folder"):
        check_output(folder / "out", folder, overwrite=True)


def test_read_only_folder_is_refused(clip: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user (root) that can write to a 0o555 folder")
        with pytest.raises(UsageError, match="cannot write to folder .*permission denied"):
            check_output(locked / "out.mp4", clip)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_image_output_for_a_video_is_refused(clip: Path, tmp_path: Path) -> None:
    with open_source(clip) as source, pytest.raises(UsageError, match="is an image"):
        open_sink(tmp_path / "out.png", source)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("output", ["out.mp4", "out.mkv", "out-frames"])
def test_exception_mid_write_leaves_nothing(
    clip: Path, tmp_path: Path, error: type[BaseException], output: str
) -> None:
    before = digest(clip)
    out = tmp_path / output
    with pytest.raises(error):
        with open_source(clip) as source, open_sink(out, source) as sink:
            for frame in source.frames():
                if sink.frames_written == 10:
                    raise error("transform failed after 10 frames")
                sink.write(frame)
    assert not out.exists() and leftovers(tmp_path) == []
    assert digest(clip) == before


def test_exception_after_image_write_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    out = tmp_path / "out.png"
    with pytest.raises(KeyboardInterrupt):
        with open_source(src) as source, open_sink(out, source) as sink:
            sink.write(source.frame(0))
            raise KeyboardInterrupt
    assert not out.exists() and leftovers(tmp_path) == []


def test_empty_sink_writes_nothing(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with open_source(clip) as source, pytest.raises(MovieError, match="no frames"):
        with open_sink(out, source):
            pass
    assert not out.exists() and leftovers(tmp_path) == []
