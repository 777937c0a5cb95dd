"""Streaming video and image I/O on PyAV: frames in one at a time, frames out with audio passthrough.

Reading: `open_source` takes a video file, a single image, or a folder of numbered frames and
yields upright HxWx3 uint8 RGB arrays one at a time (memory does not grow with video length).

Writing: `open_sink` writes to a temporary file beside the output and renames it onto the output
only when the `with` block ends without an exception; on any exception (KeyboardInterrupt too)
the temporary file is removed and no output exists. Videos are H.264 (libx264, yuv420p) at the
source's frame timing, and the source's audio and subtitle packets are copied.

Conventions (documented here once):
- `rotation` is the counter-clockwise angle (0, 90, 180 or 270) that turns the coded picture
  upright, read from the display matrix (PyAV's `VideoFrame.rotation`) or the legacy 'rotate'
  tag. Frames are yielded upright; a video sink turns them back and writes the same display
  matrix, so the output has the input's coded size and rotation.
- yuv420p needs even sizes: an odd coded width or height is encoded as yuv444p (full-resolution
  colour; H.264 High 4:4:4, which some players and browsers do not play), so sizes stay exact.
- Matroska stores time in milliseconds, so an .mkv output has a 1/1000 time base; MP4 and MOV
  keep the source's time base (a Matroska source's 1/1000 too) and its timestamps.
- A frame count is trusted only from an MP4/MOV index (a stream that ends clearly short of it is
  truncated); a Matroska header states a duration, and the frame count it suggests is only an
  estimate (wrong for a variable frame rate), so there the decoded timestamps must reach it.
- A frames-folder output holds `frame_000001.png`, `frame_000002.png`, ... (numbered from 1).
- Images are read with their EXIF orientation applied and written without it.
- Audio is copied only from seekable (regular file) video sources; a pipe's audio is dropped
  with a warning, and so is the audio of a source written as a folder of frames or an image.
  Subtitle streams are copied where the output container takes them: .mkv takes text and bitmap
  subtitles, .mp4/.mov take mov_text (SubRip text is rewrapped to it, and back for .mkv); the
  others, and all of them in a folder of frames or an image, are dropped with a warning.
- 16-bit images are scaled to 8 bits; transparency is dropped with a warning (the stored
  colour of each pixel is kept).
- The temporary path is `.NAME.movie-tmp-PID-RANDOM[.ext]` beside the output; opening a sink
  removes those of the same output whose process is gone (killed by SIGKILL or out of memory).
  Without `overwrite` the final rename never replaces a file or folder that appeared meanwhile
  (another run writing the same path): that run's output is kept and this one fails.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import re
import secrets
import shutil
import stat
import warnings
from collections.abc import Callable, Generator, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
from PIL import Image, ImageOps

from movie_core.cleanup import pid_alive
from movie_core.errors import MovieError, MovieWarning, UsageError

try:
    import av
except ImportError:  # video files need PyAV; images and folders of frames do not

    class _NoPyAV:
        class FFmpegError(Exception):
            """Never raised: PyAV is not installed."""

        @staticmethod
        def open(*args: Any, **kwargs: Any) -> Any:
            raise MediaError("reading or writing video files needs PyAV, which is not installed (pip install av)")

    av = _NoPyAV()  # type: ignore[assignment]

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
VIDEO_EXTS = frozenset({".mp4", ".mkv", ".mov"})
DEFAULT_FPS = Fraction(24)
TEMP_TAG = ".movie-tmp-"

_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")
_MAGIC = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")  # ISO BMFF box types at byte 4
_EBML = b"\x1a\x45\xdf\xa3"  # Matroska / WebM


class MediaError(MovieError):
    """An input that cannot be read: missing, not a video or image, empty, or no numbered frames."""


class CorruptVideoError(MediaError):
    """A video that is truncated or fails to decode (possibly after some frames were read)."""


def _reason(error: BaseException) -> str:
    """A one-line reason for an exception, without PyAV's errno and file name decorations."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())


def _rgb(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    """An upright HxWx3 uint8 RGB array from a decoded frame."""
    array = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(array, rotation // 90)) if rotation else array


def _read_image(path: Path) -> tuple[np.ndarray, bool]:
    """Read an image file as HxWx3 uint8 RGB, EXIF orientation applied; and whether transparency was dropped."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit greyscale: scale, do not clip at 255
                grey = np.asarray(image, dtype=np.float32) / 257
                return np.repeat(np.clip(grey.round(), 0, 255).astype(np.uint8)[..., None], 3, axis=2), False
            has_alpha = {"A", "a"} & set(image.getbands()) or "transparency" in image.info
            transparent = bool(has_alpha) and int(np.asarray(image.convert("RGBA"))[..., 3].min()) < 255
            return np.asarray(image.convert("RGB")), transparent
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MediaError(f"not a video or image: {path} ({_reason(e)})") from None


def _warn_transparency(path: Path) -> None:
    warnings.warn(f"{path} has transparent pixels: transparency is dropped (the output is opaque)", MovieWarning,
                  stacklevel=3)


def _hms_seconds(text: str | None) -> float | None:
    """Seconds from a Matroska 'HH:MM:SS.fffffffff' DURATION tag."""
    try:
        hours, minutes, seconds = (text or "").split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


class Source:
    """A stream of upright RGB frames with the timing needed to write them back."""

    kind: str
    path: Path
    width: int
    height: int
    fps: Fraction
    time_base: Fraction
    frame_count: int | None
    rotation: int = 0
    has_audio: bool = False
    subtitle_streams: int = 0
    duration_s: float | None = None
    is_seekable: bool = True
    start_pts: int = 0

    @overload
    def frames(self, with_pts: Literal[False] = ...) -> Iterator[np.ndarray]: ...
    @overload
    def frames(self, with_pts: Literal[True]) -> Iterator[tuple[np.ndarray, int]]: ...

    def frames(self, with_pts: bool = False) -> Iterator[Any]:
        """Yield HxWx3 uint8 RGB frames one at a time, or (frame, pts in time_base) pairs."""
        for array, pts in self._frames():
            yield (array, pts) if with_pts else array

    def frame(self, index: int) -> np.ndarray:
        """Return frame `index` (0-based) as HxWx3 uint8 RGB."""
        raise NotImplementedError

    def pts_for(self, index: int) -> int:
        """The pts (in time_base) of frame `index` on a constant-rate timeline from start_pts."""
        return self.start_pts + round(index / (self.fps * self.time_base))

    def close(self) -> None:
        """Release open files."""

    def _frames(self) -> Iterator[tuple[np.ndarray, int]]:
        raise NotImplementedError

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {str(self.path)!r} {self.width}x{self.height} "
            f"{self.fps} fps, {self.frame_count} frames>"
        )


class ImageSource(Source):
    """A single image as a one-frame source."""

    kind = "image"

    def __init__(self, path: Path, fps: Fraction | int | None = None) -> None:
        self.path = path
        self._array, transparent = _read_image(path)
        if transparent:
            _warn_transparency(path)
        self.height, self.width = self._array.shape[:2]
        self.fps = Fraction(fps or DEFAULT_FPS)
        self.time_base = 1 / self.fps
        self.frame_count = 1
        self.duration_s = float(1 / self.fps)

    def frame(self, index: int) -> np.ndarray:
        """Return the image (index must be 0)."""
        if index != 0:
            raise IndexError(f"frame {index} out of range: {self.path} has 1 frame")
        return self._array.copy()

    def _frames(self) -> Iterator[tuple[np.ndarray, int]]:
        yield self._array.copy(), 0


class FramesSource(Source):
    """A folder of numbered image frames, ordered by the last number in each file name."""

    kind = "frames"

    def __init__(self, folder: Path, fps: Fraction | int | None = None) -> None:
        self.path = folder
        numbered = [
            (int(match.group(1)), entry.name, entry)
            for entry in folder.iterdir()
            if entry.suffix.lower() in IMAGE_EXTS
            and not entry.name.startswith(".")
            and (match := _LAST_NUMBER.search(entry.stem))
            and entry.is_file()
        ]
        if not numbered:
            raise MediaError(f"no numbered frames in folder: {folder} (expected files like frame_0001.png)")
        self._files = [entry for _, _, entry in sorted(numbered)]
        self.height, self.width = _read_image(self._files[0])[0].shape[:2]
        self._transparency_said = False
        self.fps = Fraction(fps or DEFAULT_FPS)
        self.time_base = 1 / self.fps
        self.frame_count = len(self._files)
        self.duration_s = float(self.frame_count / self.fps)

    def frame(self, index: int) -> np.ndarray:
        """Read frame `index` from its file."""
        if not 0 <= index < len(self._files):
            raise IndexError(f"frame {index} out of range: {self.path} has {len(self._files)} frames")
        array, transparent = _read_image(self._files[index])
        if transparent and not self._transparency_said:
            self._transparency_said = True
            _warn_transparency(self._files[index])
        if array.shape[:2] != (self.height, self.width):
            raise MediaError(
                f"frame size mismatch in {self.path}: {self._files[index].name} is "
                f"{array.shape[1]}x{array.shape[0]}, expected {self.width}x{self.height}"
            )
        return array

    def _frames(self) -> Iterator[tuple[np.ndarray, int]]:
        for index in range(len(self._files)):
            yield self.frame(index), index


class VideoSource(Source):
    """A video file (or pipe) decoded one frame at a time."""

    kind = "video"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.is_seekable = stat.S_ISREG(path.stat().st_mode)
        self._container = self._open()
        try:
            self._setup()
        except BaseException:
            self._container.close()
            raise

    def _open(self) -> av.container.InputContainer:
        """Open the file with PyAV, mapping failures to one-line MediaErrors."""
        try:
            container = av.open(str(self.path), metadata_errors="replace")
        except av.FFmpegError as e:
            if self.is_seekable and self._looks_like_video():
                raise CorruptVideoError(f"truncated or corrupt video: {self.path} ({_reason(e)})") from None
            raise MediaError(f"not a video or image: {self.path} ({_reason(e)})") from None
        if not container.streams.video:
            container.close()
            raise MediaError(f"not a video or image: {self.path} (no video stream)")
        container.streams.video[0].thread_type = "AUTO"
        return container

    def _looks_like_video(self) -> bool:
        """Whether the file starts like an MP4/MOV or Matroska container."""
        with open(self.path, "rb") as f:
            head = f.read(12)
        return head[4:8] in _MAGIC or head.startswith(_EBML)

    def _setup(self) -> None:
        """Read the stream's timing, size and rotation; decode the first frame to check it."""
        stream = self._container.streams.video[0]
        self.time_base = stream.time_base or Fraction(1, 90000)
        self.fps = stream.average_rate or stream.guessed_rate or stream.base_rate or DEFAULT_FPS
        self.start_pts = stream.start_time or 0
        self.has_audio = bool(self._container.streams.audio)
        self.subtitle_streams = len(self._container.streams.subtitles)
        pix_fmt = stream.codec_context.pix_fmt
        if pix_fmt and any(c.is_alpha for c in av.VideoFormat(pix_fmt).components):
            warnings.warn(f"{self.path} has an alpha channel ({pix_fmt}): transparency is dropped", MovieWarning,
                          stacklevel=3)
        if stream.duration:
            stream_seconds: float | None = float(stream.duration * self.time_base)
        else:
            stream_seconds = _hms_seconds(stream.metadata.get("DURATION"))
        container_seconds = self._container.duration / av.time_base if self._container.duration else None
        self.duration_s = stream_seconds or container_seconds
        # an MP4/MOV index counts its frames exactly; a Matroska header states only a duration (the frame count
        # it suggests is an estimate, wrong for a variable frame rate), so there the timeline must reach that end
        self._expected = stream.frames or None
        self._stream_seconds = stream_seconds

        decoded = self._decoded(self._container, check_count=False)
        first = next(decoded, None)
        if first is None:
            raise MediaError(f"no frames in video: {self.path}")
        degrees = first.rotation or -float(stream.metadata.get("rotate", 0) or 0)
        self.rotation = round(degrees / 90) * 90 % 360
        self.width, self.height = first.width, first.height
        if self.rotation % 180:
            self.width, self.height = self.height, self.width

        self._pts_index: list[int] | None = None
        self._indexed = False
        self._live: Iterator[av.VideoFrame] | None = None
        if not self.is_seekable:
            self._live = itertools.chain([first], decoded)
            self.frame_count = stream.frames or None
            self._first = _rgb(first, self.rotation)
            return
        decoded.close()
        if stream.frames:
            self.frame_count = stream.frames
        else:
            self.frame_count = self._count_frames()

    def _count_frames(self) -> int:
        """Count video packets by demuxing (no decoding); build the pts index on the way."""
        container = self._open()
        try:
            stream = container.streams.video[0]
            packets = [(p.pts, p.duration) for p in container.demux(stream) if p.size and not p.is_discard]
        except av.FFmpegError as e:
            raise CorruptVideoError(f"corrupt video: {self.path} ({_reason(e)})") from None
        finally:
            container.close()
        known = [p for p, _ in packets if p is not None]
        self._pts_index = sorted(known) if len(known) == len(packets) else None
        self._indexed = True
        ends = [p + (d or 0) for p, d in packets if p is not None]
        self._check_end(len(packets), max(ends, default=None), any(d for _, d in packets))
        return len(packets)

    def _decoded(self, container: av.container.InputContainer,
                 check_count: bool) -> Generator[av.VideoFrame, None, None]:
        """Decode the video stream, raising CorruptVideoError on decode errors or a short stream."""
        stream = container.streams.video[0]
        count = 0
        end: int | None = None
        timed = False
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    yield frame
                    count += 1
                    if frame.pts is not None:
                        end = max(end or frame.pts, frame.pts + (frame.duration or 0))
                        timed = timed or bool(frame.duration)
        except av.FFmpegError as e:
            raise CorruptVideoError(
                f"corrupt video: {self.path} (decoding failed after frame {count}: {_reason(e)})"
            ) from None
        if check_count:
            self._check_end(count, end, timed)

    def _check_end(self, count: int, end_pts: int | None, timed: bool) -> None:
        """Raise CorruptVideoError when the stream falls clearly short of what the container states: the frame
        count of an MP4/MOV index, else (Matroska) the stated duration, by the timestamps reached (`end_pts`: the
        end of the last frame, `timed`: whether frames carried their duration)."""
        if self._expected is not None:
            if count < self._expected - max(2, self._expected // 50):
                raise CorruptVideoError(
                    f"truncated video: {self.path} (stream ends at frame {count} of {self._expected})"
                )
            return
        if not self._stream_seconds or end_pts is None:
            return
        frame_s = 1 / float(self.fps)
        reached = float((end_pts - self.start_pts) * self.time_base) + (0 if timed else frame_s)
        if reached < self._stream_seconds - max(3 * frame_s, 0.03 * self._stream_seconds):
            raise CorruptVideoError(
                f"truncated video: {self.path} (stream ends at {reached:.2f} s of {self._stream_seconds:.2f} s, "
                f"after frame {count})"
            )

    def _frames(self) -> Iterator[tuple[np.ndarray, int]]:
        if self.is_seekable:
            container = self._open()
            frames: Iterator[av.VideoFrame] = self._decoded(container, check_count=True)
        elif self._live is not None:
            container, frames, self._live = self._container, self._live, None
        else:
            raise UsageError(f"{self.path} is not seekable: its frames can be read only once")
        try:
            for index, frame in enumerate(frames):
                yield _rgb(frame, self.rotation), self.pts_for(index) if frame.pts is None else frame.pts
        finally:
            container.close()

    def frame(self, index: int) -> np.ndarray:
        """Return frame `index`: seek to the keyframe before it and decode forward."""
        if not self.is_seekable:
            if index == 0 and self._first is not None:
                return self._first.copy()
            raise UsageError(f"{self.path} is not seekable: only frame 0 can be fetched before streaming")
        if not self._indexed:
            self._count_frames()
        if self._pts_index is None:
            return next(itertools.islice(self.frames(), index, None))
        if not 0 <= index < len(self._pts_index):
            raise IndexError(f"frame {index} out of range: {self.path} has {len(self._pts_index)} frames")
        target = self._pts_index[index]
        stream = self._container.streams.video[0]
        self._container.seek(target, stream=stream, backward=True, any_frame=False)
        decoded = self._decoded(self._container, check_count=False)
        try:
            for frame in decoded:
                if frame.pts is not None and frame.pts >= target:
                    return _rgb(frame, self.rotation)
        finally:
            decoded.close()
        raise CorruptVideoError(f"corrupt video: {self.path} (frame {index} does not decode)")

    def close(self) -> None:
        """Close the container."""
        self._container.close()


def open_source(path: str | os.PathLike, *, fps: Fraction | int | None = None) -> Source:
    """Open a video file, an image, or a folder of numbered frames (`fps` is for frames and images)."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"no such file: {path}")
    if not os.access(path, os.R_OK):
        raise MediaError(f"cannot read: {path} (permission denied)")
    if path.is_dir():
        return FramesSource(path, fps)
    if path.suffix.lower() in IMAGE_EXTS:
        return ImageSource(path, fps)
    return VideoSource(path)


def check_output(
    output_path: str | os.PathLike, input_path: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Refuse (UsageError) an output that is or holds the input, exists, or has no writable folder."""
    output = Path(os.path.abspath(output_path))
    source = Path(os.path.abspath(input_path))
    real_output, real_source = output.resolve(), source.resolve()
    same_file = output.exists() and source.exists() and os.path.samefile(output, source)
    if same_file or real_output == real_source:
        raise UsageError(f"output {output} is the input; choose another output path")
    if real_source.is_relative_to(real_output):
        raise UsageError(f"output {output} contains the input {source}; choose another output path")
    if source.is_dir() and real_output.is_relative_to(real_source):
        raise UsageError(f"output {output} is inside the input folder {source}; choose another output path")
    folder = output.parent
    if not folder.is_dir():
        why = "not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"cannot write to folder {folder} ({why})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to folder {folder} (permission denied)")
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite")
    return output


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _renameat2() -> Any:
    """Linux's renameat2(2) from the C library, or None where it does not exist."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def rename_no_replace(src: Path, dst: Path) -> None:
    """Rename `src` (a file or folder) to `dst` in one step; FileExistsError when `dst` exists, which is never replaced.

    Uses renameat2(RENAME_NOREPLACE); where the system or file system lacks it, a file is hard-linked then
    unlinked (link(2) never replaces), and as a last resort (no hard links, or a folder) the rename follows a check."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(dst))
    if not src.is_dir():
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError:
            pass  # no hard links on this file system (FAT, some network shares)
        else:
            os.unlink(src)
            return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def _temp_pattern(output: Path) -> re.Pattern[str]:
    """Matches the temporary names of `output` (`old` is set on a replaced output moved aside); group 1 is the pid."""
    name, tag = re.escape(output.name), re.escape(TEMP_TAG)
    return re.compile(rf"\.{name}{tag}(\d+)-[0-9a-f]{{8}}(?P<old>-old)?(?:{re.escape(output.suffix)})?")


def remove_stale_temps(output: Path) -> list[Path]:
    """Remove the temporary files and folders of `output` that runs killed outright left beside it."""
    pattern, removed = _temp_pattern(output), []
    for entry in output.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match is None or pid_alive(int(match[1])):
            continue
        if match["old"] and not os.path.lexists(output):
            continue  # the run died between moving the old output aside and renaming the new one: keep it
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


class Sink:
    """Writes frames to a temporary path beside the output; renames it onto the output on success."""

    is_folder = False
    keeps_audio = False

    def __init__(self, output: Path, source: Source, overwrite: bool = False) -> None:
        self.path = output
        self.source = source
        self.overwrite = overwrite
        self.frames_written = 0
        self._last_pts: int | None = None
        self._done = False
        remove_stale_temps(output)
        name = f".{output.name}{TEMP_TAG}{os.getpid()}-{secrets.token_hex(4)}{'' if self.is_folder else output.suffix}"
        self.temp_path = output.with_name(name)
        try:
            if self.is_folder:
                os.mkdir(self.temp_path, 0o777)
            else:
                os.close(os.open(self.temp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except OSError as e:
            raise UsageError(f"cannot write to folder {output.parent} ({_reason(e)})") from None
        try:
            self._start()
        except BaseException as e:
            self.abort()
            if isinstance(e, av.FFmpegError):
                raise MovieError(f"cannot write {output}: {_reason(e)}") from None
            raise
        if source.has_audio and not self.keeps_audio:
            what = "a folder of frames" if self.is_folder else "an image"
            warnings.warn(f"{output} is {what}: the audio of {source.path} is not kept", MovieWarning, stacklevel=3)
        if source.subtitle_streams and not self.keeps_audio:
            warnings.warn(f"{source.subtitle_streams} subtitle stream(s) of {source.path} are not copied to {output}",
                          MovieWarning, stacklevel=3)

    def write(self, frame: np.ndarray, pts: int | None = None) -> None:
        """Append one HxWx3 uint8 RGB frame; `pts` (in the source's time_base) defaults to its slot."""
        if self._done:
            raise ValueError(f"sink for {self.path} is closed")
        expected = (self.source.height, self.source.width, 3)
        if frame.shape != expected or frame.dtype != np.uint8:
            raise ValueError(f"frame is {frame.shape} {frame.dtype}, sink expects {expected} uint8")
        pts = self.source.pts_for(self.frames_written) if pts is None else int(pts)
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"frame pts {pts} does not follow the previous pts {self._last_pts}")
        try:
            self._write(frame, pts)
        except (av.FFmpegError, OSError) as e:
            raise MovieError(f"cannot write {self.path}: {_reason(e)}") from None
        self._last_pts = pts
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file and rename it onto the output (replacing an existing one)."""
        if self._done:
            return
        try:
            if not self.frames_written:
                raise MovieError(f"nothing written to {self.path}: no frames were given")
            try:
                self._finish()
                self._replace_output()
            except (av.FFmpegError, OSError) as e:
                raise MovieError(f"cannot write {self.path}: {_reason(e)}") from None
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        """Drop everything written so far: no output and no temporary file remain."""
        self._done = True
        try:
            self._discard()
        finally:
            if self.temp_path.is_dir() and not self.temp_path.is_symlink():
                shutil.rmtree(self.temp_path, ignore_errors=True)
            elif os.path.lexists(self.temp_path):
                os.unlink(self.temp_path)

    def _replace_output(self) -> None:
        """Atomically move the temporary path onto the output: never over one that appeared meanwhile unless
        overwriting (a folder is then swapped via a side name)."""
        if not self.overwrite:
            try:
                rename_no_replace(self.temp_path, self.path)
            except FileExistsError:
                raise MovieError(
                    f"{self.path} appeared while this run was writing it (another run?); it is kept and this "
                    "result is discarded (pass --overwrite to replace it)"
                ) from None
        elif self.path.is_dir() and not self.path.is_symlink():
            aside = self.path.with_name(f".{self.path.name}{TEMP_TAG}{os.getpid()}-{secrets.token_hex(4)}-old")
            os.rename(self.path, aside)
            os.rename(self.temp_path, self.path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(self.temp_path, self.path)

    def _start(self) -> None:
        """Open the temporary file for writing."""

    def _write(self, frame: np.ndarray, pts: int) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Flush and close the temporary file."""

    def _discard(self) -> None:
        """Release resources after a failure."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ImageSink(Sink):
    """Writes the single frame as an image, format from the output extension."""

    def _write(self, frame: np.ndarray, pts: int) -> None:
        if self.frames_written:
            raise UsageError(f"{self.path} is an image: it takes one frame")
        Image.fromarray(frame).save(self.temp_path, quality=95)


class FramesSink(Sink):
    """Writes numbered PNG frames (frame_000001.png, ...) into a folder."""

    is_folder = True

    def _write(self, frame: np.ndarray, pts: int) -> None:
        Image.fromarray(frame).save(self.temp_path / f"frame_{self.frames_written + 1:06d}.png")


class VideoSink(Sink):
    """Encodes H.264 (libx264; yuv420p, yuv444p for odd sizes) at the source's timing and copies its audio and
    subtitle packets."""

    keeps_audio = True

    def __init__(self, output: Path, source: Source, crf: int = 18, overwrite: bool = False) -> None:
        self._crf = crf
        self._out: av.container.OutputContainer | None = None
        self._copy_in: av.container.InputContainer | None = None
        super().__init__(output, source, overwrite)

    def _start(self) -> None:
        source = self.source
        width, height = source.width, source.height
        if source.rotation % 180:  # frames arrive upright; encode them in the coded orientation
            width, height = height, width
        options = {}
        if self.path.suffix.lower() in (".mp4", ".mov") and source.time_base.numerator == 1:
            # the MP4 muxer raises a time scale under 10000 (Matroska's 1/1000) unless told to keep it
            options["video_track_timescale"] = str(source.time_base.denominator)
        self._out = av.open(str(self.temp_path), "w", options=options)
        video = self._out.add_stream("libx264", rate=source.fps)
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"  # 4:2:0 needs even sizes
        video.time_base = source.time_base
        video.codec_context.time_base = source.time_base
        # mbtree off: with it, the libx264 in PyAV's wheels (av 18) encodes the same frames into other bitstreams
        # depending on what the process encoded before (single-threaded too; mbtree=0 or rc-lookahead=0 cure it), so
        # a second edit in one process (movie batch's workers, movie app, --split sections) differed from `movie edit`.
        # The cost, measured on a 320x240 pan at crf 18: files 1.5x as large for the same PSNR (raise --crf for less)
        video.options = {"crf": str(self._crf), "x264-params": "mbtree=0"}
        if source.rotation:
            video.set_display_rotation(source.rotation)
        self._video = video
        self._copy_map: dict[int, tuple[av.stream.Stream, Any]] = {}
        self._copy_packets: Iterator[av.Packet] = iter(())
        self._held: av.Packet | None = None
        if source.kind == "video" and (source.has_audio or source.subtitle_streams):
            if source.is_seekable:
                self._open_copies()
            else:
                warnings.warn(f"{source.path} is not seekable: its audio and subtitles are not copied", MovieWarning,
                              stacklevel=3)
        self._out.start_encoding()

    def _open_copies(self) -> None:
        """Map the source's audio and subtitle streams to output streams that take their packets (unchanged, or
        text subtitles rewrapped for the output container)."""
        self._copy_in = av.open(str(self.source.path))
        audio = list(self._copy_in.streams.audio)
        for stream in audio:
            try:
                self._copy_map[stream.index] = (self._container.add_stream_from_template(stream), None)
            except ValueError:
                raise UsageError(
                    f"cannot copy {stream.codec_context.name} audio into {self.path.suffix} files; use .mkv"
                ) from None
        subtitles: list[av.stream.Stream] = []
        refused: list[str] = []
        for text_stream in self._copy_in.streams.subtitles:
            mapped = _subtitle_stream(self._container, text_stream, self.path.suffix.lower())
            if mapped is None:
                refused.append(_subtitle_codec(text_stream))
            else:
                self._copy_map[text_stream.index] = mapped
                subtitles.append(text_stream)
        if refused:
            takes = "mov_text" if self.path.suffix.lower() in (".mp4", ".mov") else "text or bitmap"
            warnings.warn(
                f"{len(refused)} subtitle stream(s) of {self.source.path} ({', '.join(refused)}) are not copied: "
                f"{self.path.suffix} files take {takes} subtitles (.mkv takes most kinds)", MovieWarning, stacklevel=4)
        if audio or subtitles:  # (demux() of no streams would read them all)
            self._copy_packets = self._copy_in.demux(*audio, *subtitles)

    def _copy_audio(self, until_s: float | None) -> None:
        """Mux the source's audio and subtitle packets that start before `until_s` seconds (all when None)."""
        while True:
            packet = self._held or next(self._copy_packets, None)
            self._held = None
            if packet is None:
                return
            if packet.dts is None or not packet.size:  # the demuxer's empty end-of-stream packets
                continue
            if until_s is not None and packet.dts * packet.time_base > until_s:
                self._held = packet
                return
            stream, rewrap = self._copy_map[packet.stream.index]
            if rewrap is not None:
                packet = rewrap(packet)
            packet.stream = stream
            self._container.mux(packet)

    def _write(self, frame: np.ndarray, pts: int) -> None:
        if self.source.rotation:
            frame = np.rot90(frame, -(self.source.rotation // 90))
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = pts
        video_frame.time_base = self.source.time_base
        self._container.mux(self._video.encode(video_frame))
        self._copy_audio(float(pts * self.source.time_base))

    @property
    def _container(self) -> av.container.OutputContainer:
        """The output container, open between _start and _finish."""
        assert self._out is not None, "the sink is not open"
        return self._out

    def _finish(self) -> None:
        self._container.mux(self._video.encode())
        self._copy_audio(None)
        out, self._out = self._container, None
        out.close()
        self._discard()

    def _discard(self) -> None:
        for container in (self._out, self._copy_in):
            if container is not None:
                try:
                    container.close()
                except av.FFmpegError:
                    pass
        self._out = self._copy_in = None


# subtitle codecs each output container takes as they are
_SUBTITLES_IN = {
    ".mkv": frozenset({"subrip", "ass", "ssa", "webvtt", "dvd_subtitle", "hdmv_pgs_subtitle", "dvb_subtitle"}),
    ".mp4": frozenset({"mov_text"}),
    ".mov": frozenset({"mov_text"}),
}
# a minimal ASS header: the text subtitle encoders want one to open (the packets themselves are rewrapped, not encoded)
_ASS_HEADER = (
    b"[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\n\n[V4+ Styles]\n"
    b"Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, "
    b"Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, "
    b"MarginR, MarginV, Encoding\n"
    b"Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n\n"
    b"[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
)


def _rewrapped(packet: av.Packet, data: bytes) -> av.Packet:
    """A packet holding `data` at `packet`'s timing."""
    out = av.Packet(data)
    out.pts, out.dts, out.duration, out.time_base = packet.pts, packet.dts, packet.duration, packet.time_base
    return out


def _srt_to_mov_text(packet: av.Packet) -> av.Packet:
    """A SubRip packet (plain UTF-8 text) as a 3GPP timed-text sample: a 16-bit length, then the text."""
    text = bytes(packet)[:0xFFFF]
    return _rewrapped(packet, len(text).to_bytes(2, "big") + text)


def _mov_text_to_srt(packet: av.Packet) -> av.Packet:
    """A 3GPP timed-text sample as SubRip text (its style boxes after the text are dropped)."""
    data = bytes(packet)
    length = int.from_bytes(data[:2], "big") if len(data) >= 2 else 0
    return _rewrapped(packet, data[2 : 2 + length])


def _subtitle_codec(stream: av.stream.Stream) -> str:
    """The codec's name (the decoders of SubRip and ASS call themselves 'srt' and 'ssa')."""
    name = stream.codec_context.name
    return {"srt": "subrip", "ssa": "ass"}.get(name, name)


def _subtitle_stream(out: av.container.OutputContainer, stream: av.stream.Stream,
                     suffix: str) -> tuple[av.stream.Stream, Any] | None:
    """An output stream for a source subtitle stream and how its packets are rewrapped (None: copied as
    they are); None when the container takes no such subtitles."""
    codec = _subtitle_codec(stream)
    takes = _SUBTITLES_IN.get(suffix, frozenset())
    if codec in takes:
        return out.add_stream_from_template(stream), None
    rewrap = {("subrip", "mov_text"): _srt_to_mov_text, ("text", "mov_text"): _srt_to_mov_text,
              ("mov_text", "subrip"): _mov_text_to_srt}
    for (source_codec, target), function in rewrap.items():
        if codec == source_codec and target in takes:
            made = out.add_stream(target)
            made.codec_context.subtitle_header = _ASS_HEADER  # type: ignore[union-attr]
            made.time_base = stream.time_base
            if stream.language:
                made.metadata["language"] = stream.language
            return made, function
    return None


def _output_kind(output: Path) -> str:
    """'video', 'image' or 'frames' from the output path's extension (none or a folder: frames)."""
    suffix = output.suffix.lower()
    if suffix in VIDEO_EXTS:
        return "video"
    if suffix in IMAGE_EXTS:
        return "image"
    if not suffix or output.is_dir():
        return "frames"
    raise UsageError(
        f"unsupported output type {suffix!r} for {output}: "
        "use .mp4, .mkv, .mov, an image extension, or a folder"
    )


def open_sink(
    output_path: str | os.PathLike, source: Source, *, crf: int = 18, overwrite: bool = False
) -> Sink:
    """A context-managed sink for `source`'s frames: a video, an image, or a folder of PNG frames."""
    output = check_output(output_path, source.path, overwrite)
    kind = _output_kind(output)
    if kind == "image" and source.frame_count != 1:
        raise UsageError(
            f"{output} is an image but {source.path} has {source.frame_count or 'many'} frames; "
            "write a video (.mp4, .mkv, .mov) or a folder"
        )
    if kind == "video":
        return VideoSink(output, source, crf=crf, overwrite=overwrite)
    return ImageSink(output, source, overwrite) if kind == "image" else FramesSink(output, source, overwrite)


def probe(path: str | os.PathLike) -> dict[str, Any]:
    """Exact facts about a video file: decoded frame count, fps, display size, rotation, audio duration."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise MediaError(f"not a video: {path} (no video stream)")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        frame_count, rotation, size = 0, 0, (0, 0)
        audio_start: int | None = None
        audio_end: int | None = None
        for packet in container.demux(*(s for s in (video, audio) if s is not None)):
            if packet.stream.type == "video":
                for frame in packet.decode():
                    if not frame_count:
                        rotation = round(frame.rotation / 90) * 90 % 360
                        size = (frame.width, frame.height)
                    frame_count += 1
            elif packet.pts is not None:
                audio_start = packet.pts if audio_start is None else min(audio_start, packet.pts)
                end = packet.pts + (packet.duration or 0)
                audio_end = end if audio_end is None else max(audio_end, end)
        width, height = (size[1], size[0]) if rotation % 180 else size
        audio_duration_s = None
        if audio is not None and audio_start is not None and audio_end is not None:
            audio_duration_s = float((audio_end - audio_start) * audio.time_base)
        return {
            "frame_count": frame_count,
            "fps": video.average_rate,
            "time_base": video.time_base,
            "width": width,
            "height": height,
            "rotation": rotation,
            "audio_codec": audio.codec_context.name if audio is not None else None,
            "audio_duration_s": audio_duration_s,
        }


def _test_background(width: int, height: int) -> np.ndarray:
    """A colour gradient two widths wide that repeats every `width` columns (so a pan can wrap)."""
    x = (np.arange(2 * width) % width) / width
    y = np.arange(height) / max(height - 1, 1)
    red = np.broadcast_to(x[None, :], (height, 2 * width))
    green = np.broadcast_to(y[:, None], (height, 2 * width))
    blue = 0.5 + 0.5 * np.sin(2 * np.pi * (x[None, :] + y[:, None]))
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def _test_frame(background: np.ndarray, index: int, fps: float, moving: bool) -> np.ndarray:
    """The background panned left by a quarter width per second, with a white square crossing it."""
    height, width = background.shape[0], background.shape[1] // 2
    t = index / fps if moving else 0.0
    offset = int(t * width / 4) % width
    frame = background[:, offset : offset + width].copy()
    side = max(2, min(width, height) // 4)
    x = int((t / 2 % 1) * max(width - side, 1))
    y = (height - side) // 2
    frame[y : y + side, x : x + side] = 255
    return frame


def make_test_video(
    path: str | os.PathLike,
    *,
    seconds: float = 10.0,
    fps: int = 24,
    width: int = 64,
    height: int = 48,
    audio: bool = True,
    moving: bool = True,
    sample_rate: int = 48000,
    rotation: int = 0,
    frame_fn: Callable[[int], np.ndarray] | None = None,
) -> Path:
    """Write a real H.264 video (moving square over a panning gradient, or frame_fn(index): uint8 height x width x 3)
    with a sine-wave audio track."""
    path = Path(path)
    n_frames = round(seconds * fps)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        video.options = {"preset": "ultrafast", "crf": "18"}
        if rotation:
            video.set_display_rotation(rotation)
        sound = None
        if audio:
            codec = next(c for c in ("aac", "libopus", "libmp3lame") if c in av.codecs_available)
            sound = out.add_stream(codec, rate=sample_rate)
            sound.layout = "mono"
        out.start_encoding()
        chunk = (sound.codec_context.frame_size or 1024) if sound else 0
        samples_done, total_samples = 0, round(seconds * sample_rate)
        background = _test_background(width, height)
        for index in range(n_frames):
            pixels = frame_fn(index) if frame_fn is not None else _test_frame(background, index, fps, moving)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels, dtype=np.uint8), format="rgb24")
            frame.pts = index
            out.mux(video.encode(frame))
            while sound is not None and samples_done < min(total_samples, (index + 1) * sample_rate / fps):
                count = min(chunk, total_samples - samples_done)
                t = np.arange(samples_done, samples_done + count) / sample_rate
                tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
                samples = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                samples.sample_rate, samples.pts = sample_rate, samples_done
                out.mux(sound.encode(samples))
                samples_done += count
        out.mux(video.encode())
        if sound is not None:
            out.mux(sound.encode())
    return path
