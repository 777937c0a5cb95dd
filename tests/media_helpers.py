"""Media helpers shared by the video and edit tests: hashes, empty and damaged files."""

from __future__ import annotations

import hashlib
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
