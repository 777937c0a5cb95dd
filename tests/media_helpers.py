"""Media helpers shared by the video and edit tests: hashes, empty and damaged files."""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def digest(path: Path) -> str:
    """sha256 of a file, or of every file (name and bytes) under a folder."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def zero_frame_video(path: Path) -> Path:
    """A Matroska file with a declared H.264 video stream that holds no frames (plus audio)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream("aac", rate=48000)
        sound.layout = "mono"
        for i in range(3):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 48000, i * 1024
            out.mux(sound.encode(frame))
        out.mux(sound.encode())
        out.mux(video.encode())
    return path


def faststart_copy(src: Path, dst: Path) -> Path:
    """Remux with the index (moov) first, so a cut file still opens and claims all its frames."""
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"}) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for packet in i.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream_index]
                o.mux(packet)
    return dst


def cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def png16(path: Path, array: np.ndarray) -> Path:
    """Write a 16-bit PNG (HxW greyscale, HxWx3 RGB or HxWx4 RGBA uint16) with the standard library."""
    import struct
    import zlib

    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = array.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def with_subtitles(video: Path, dst: Path) -> Path:
    """Remux `video`'s video stream into a Matroska file beside a SubRip subtitle stream (no re-encoding)."""
    srt = dst.with_suffix(".srt")
    srt.write_text("1\n00:00:00,000 --> 00:00:00,100\nhello\n\n2\n00:00:00,100 --> 00:00:00,200\nworld\n")
    with av.open(str(video)) as v, av.open(str(srt)) as s, av.open(str(dst), "w") as out:
        streams = {id(v.streams.video[0]): out.add_stream_from_template(v.streams.video[0]),
                   id(s.streams.subtitles[0]): out.add_stream_from_template(s.streams.subtitles[0])}
        for container, stream in ((v, v.streams.video[0]), (s, s.streams.subtitles[0])):
            for packet in container.demux(stream):
                if packet.dts is not None:
                    packet.stream = streams[id(stream)]
                    out.mux(packet)
    srt.unlink()
    return dst


def vfr_mkv(path: Path, gaps_ms: list[int], size: int = 16) -> Path:
    """A complete variable-frame-rate Matroska file: one frame per gap (ms to the next frame), declared at 30 fps,
    so its duration suggests more frames than it holds."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = size, size, "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i, gap in enumerate(gaps_ms):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), (i * 37) % 256, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            out.mux(video.encode(frame))
            t += gap
        out.mux(video.encode())
    return path
