"""Measurements of `movie edit` (not a test): streaming memory and the anchor's temporal consistency.

(a) Peak memory: process peak RSS (VmHWM from /proc/self/status) of `movie edit` on a 100-frame and
    a 1000-frame video of the same size, each in a fresh subprocess so the peaks do not mix.
(b) Temporal consistency: on a moving test video, the mean absolute difference between consecutive
    edited frames, relative to the source's, with the default anchor (middle) and with anchor none.
    Run through the library's edit_video (what `movie edit` runs) so frames are compared before any
    encoding, and the sampled latents too: a random-init decoder (TAESD nano especially) saturates
    most pixels, which hides differences in pixels that the latents still show.

Models are nano at random init: the numbers describe the machinery, not edit quality.

    python scripts/measure_edit.py [--out docs/results/edit_measurements.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEIGHT, WIDTH, FPS = 48, 64, 24
NANO = ["--size", "nano", "--init", "random", "--no-progress"]


def proc_status_kb(field: str) -> int:
    """A memory field (kB) of this process from /proc/self/status, e.g. VmHWM (peak RSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_cli(args: list[str]) -> int:
    """`movie ARGS...` in this process; returns the exit status."""
    from movie_core.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def child(args: list[str]) -> None:
    """Subprocess body: run one edit, then print its exit status, time and peak RSS as one JSON line."""
    start = time.perf_counter()
    code = run_cli(args)
    print(json.dumps({
        "exit_status": code,
        "wall_s": time.perf_counter() - start,
        "peak_rss_mb": proc_status_kb("VmHWM") / 1024,
        "final_rss_mb": proc_status_kb("VmRSS") / 1024,
    }))


def measure_in_subprocess(args: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if result["exit_status"]:
        raise RuntimeError(f"edit failed: {proc.stderr[-2000:]}")
    summary = [line for line in proc.stdout.splitlines() if line.startswith("edited ")]
    result["summary"] = summary[-1] if summary else None
    return result


def memory(work: Path, batch_size: int) -> dict:
    from movie_core.video import make_test_video, probe

    runs = {}
    for frames in (100, 1000):
        src = make_test_video(work / f"mem_{frames}.mp4", seconds=frames / FPS, fps=FPS, width=WIDTH, height=HEIGHT,
                              audio=True, moving=True)
        assert probe(src)["frame_count"] == frames
        out = work / f"mem_{frames}_out.mp4"
        print(f"(a) editing {frames} frames in a subprocess ...", file=sys.stderr)
        runs[frames] = measure_in_subprocess(
            ["edit", str(src), "-p", "make it sepia", "-o", str(out), "--preset", "movie", *NANO,
             "--batch-size", str(batch_size)]
        )
        runs[frames]["frames_written"] = probe(out)["frame_count"]
    return {
        "setup": f"{WIDTH}x{HEIGHT}, {FPS} fps with AAC audio, preset movie, nano, random init, batch {batch_size}; "
                 "peak RSS = VmHWM of a fresh subprocess per run",
        "frames_100": runs[100],
        "frames_1000": runs[1000],
        "peak_ratio_1000_over_100": runs[1000]["peak_rss_mb"] / runs[100]["peak_rss_mb"],
        "peak_growth_mb": runs[1000]["peak_rss_mb"] - runs[100]["peak_rss_mb"],
    }


def consecutive_mad(frames) -> float | None:
    """Mean over t of mean |frame[t+1] - frame[t]| (uint8 frames or latent tensors)."""
    import numpy as np

    frames = [np.asarray(f, dtype=np.float64) for f in frames]
    if len(frames) < 2:
        return None
    return float(np.mean([np.abs(b - a).mean() for a, b in zip(frames, frames[1:])]))


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


class ListSink:
    """Keeps the edited frames in memory (the clip is short)."""

    def __init__(self) -> None:
        self.frames: list = []

    def write(self, frame, pts=None) -> None:
        self.frames.append(frame)


def edit_and_capture(recipe, src: Path, prompt: str) -> dict:
    """Edit through the library (what `movie edit` runs) and keep pixels and latents of every frame.

    Latents are the encoder's output for the source and the sampled latents handed to the decoder for
    the edit; the anchor's own record pass (the first call, batch 1) is left out.
    """
    import numpy as np

    from movie_core.composer import compose
    from movie_core.edit import SizePolicy, edit_video
    from movie_core.loading import build
    from movie_core.video import open_source

    pipe = build(compose(recipe))
    src_z, out_z = [], []
    encode, decode = pipe.encoder.encode, pipe.decoder.decode

    def keep_encode(x):
        z = encode(x)
        src_z.append(z.detach().cpu().numpy())
        return z

    def keep_decode(z):
        out_z.append(z.detach().cpu().numpy())
        return decode(z)

    pipe.encoder.encode, pipe.decoder.decode = keep_encode, keep_decode
    sink = ListSink()
    with open_source(src) as source:
        summary = edit_video(pipe, source, sink, prompt, policy=SizePolicy(), progress=False)
    if recipe.anchor != "none":
        assert src_z[0].shape[0] == out_z[0].shape[0] == 1
        src_z, out_z = src_z[1:], out_z[1:]
    src_z, out_z = np.concatenate(src_z), np.concatenate(out_z)
    pixels = np.stack(sink.frames)
    return {"summary": summary, "pixels": pixels, "src_latents": src_z, "out_latents": out_z}


def temporal(work: Path, n_frames: int) -> dict:
    from movie_core.recipe import preset
    from movie_core.video import make_test_video, open_source

    src = make_test_video(work / "moving.mp4", seconds=n_frames / FPS, fps=FPS, width=WIDTH, height=HEIGHT,
                          audio=False, moving=True)
    with open_source(src) as source:
        source_mad = consecutive_mad(source.frames())
    configs = {
        "base_steps4": preset("base").replace(size="nano", steps=4),
        "movie": preset("movie").replace(size="nano"),
    }
    results: dict = {
        "setup": f"{n_frames} frames {WIDTH}x{HEIGHT} moving test video (decoded from H.264), nano, random init; "
                 "pixel ratio = edited consecutive-frame MAD / source's (uint8 units); latent ratio = the same "
                 "on the sampled latents vs the encoder's latents of the source frames",
        "source_consecutive_mad": source_mad,
        "runs": {},
    }
    for name, base in configs.items():
        for seed in (0, 1):
            row: dict = {}
            for anchor in ("middle", "none"):
                print(f"(b) {name} seed {seed} anchor {anchor} ...", file=sys.stderr)
                start = time.perf_counter()
                got = edit_and_capture(base.replace(seed=seed, anchor=anchor), src, "make it sepia")
                pixels = got["pixels"]
                pix_mad = consecutive_mad(pixels)
                src_lat_mad = consecutive_mad(got["src_latents"])
                lat_mad = consecutive_mad(got["out_latents"])
                row[anchor] = {
                    "frames": int(pixels.shape[0]),
                    "pixel_consecutive_mad": pix_mad,
                    "pixel_ratio_to_source": ratio(pix_mad, source_mad),
                    "latent_consecutive_mad": lat_mad,
                    "latent_ratio_to_source": ratio(lat_mad, src_lat_mad),
                    "edited_pixel_mean": float(pixels.mean()),
                    "edited_pixel_std": float(pixels.std()),
                    "wall_s": time.perf_counter() - start,
                }
            middle, none = row["middle"], row["none"]
            row["anchor_over_none_pixel"] = ratio(middle["pixel_consecutive_mad"], none["pixel_consecutive_mad"])
            row["anchor_over_none_latent"] = ratio(middle["latent_consecutive_mad"], none["latent_consecutive_mad"])
            results["runs"][f"{name}_seed{seed}"] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "edit_measurements.json"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--temporal-frames", type=int, default=48)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child(opts.rest)
        return

    import torch

    result = {
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result["memory"] = memory(work, opts.batch_size)
        result["temporal"] = temporal(work, opts.temporal_frames)
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
