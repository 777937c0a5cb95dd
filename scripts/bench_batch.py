"""movie batch on a local Ray cluster against the sequential loop, and one long video in sections against one process.

1. CLIPS short clips: the sequential loop (one pipeline, one clip after another, at 1 torch thread as each worker
   runs, and at torch's default threads) against `movie batch --workers W` (Ray start and worker start included);
   every batch output compared byte for byte with the sequential one; a rerun must skip them all.
2. A FRAMES-frame video with audio: `movie edit` in this process (1 thread) against `movie batch --split W`:
   decoded frames compared, audio packets compared with the source's, each worker's peak memory after a short
   (FRAMES/5) and the long video (flat: the long one costs no more).

    python scripts/bench_batch.py --clips 20 --frames 2000 --save docs/results/batch_ray_cpu.json

Prints and saves JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from movie_core.cli import main
from movie_core.loading import resolve_recipe
from movie_core.video import make_test_video, open_source
from movie_plugins.commands._batch import Editor, Job, Pool, start_ray

PROMPT = "make it sepia"


def cli(*args: str) -> None:
    with contextlib.suppress(SystemExit):
        main(list(args))


def audio_packets(path: Path) -> list[bytes]:
    import av

    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def sequential(clips: list[Path], out: Path, threads: int) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    recipe, model, _ = resolve_recipe({}, builtin=True)
    out.mkdir()
    start = time.perf_counter()
    editor = Editor(recipe, model)
    for clip in clips:
        result = editor.edit(Job(str(clip), PROMPT, str(out / clip.name)))
        assert result["status"] == "done", result
    seconds = time.perf_counter() - start
    torch.set_num_threads(before)
    return seconds


def peaks(split_job: Job, workers: int) -> list[float]:
    recipe, model, _ = resolve_recipe({}, builtin=True)
    pool = Pool(workers, 0, (recipe, model), {"batch_size": 4})
    result = pool.edit_split(split_job, workers)
    assert result["status"] == "done", result
    import ray

    return ray.get([a.peak_mb.remote() for a in pool.actors])


def run(clip_count: int, frames: int, workers: int, work: Path) -> dict:
    import ray

    report: dict = {"clips": clip_count, "workers": workers, "torch_default_threads": torch.get_num_threads()}
    folder = work / "clips"
    folder.mkdir()
    clips = [make_test_video(folder / f"clip{i:02d}.mp4", seconds=2, fps=8, width=32, height=32, audio=i % 2 == 0)
             for i in range(clip_count)]
    report["clip"] = "16 frames, 32x32, 8 fps, AAC audio on every other clip"
    report["sequential_1_thread_s"] = sequential(clips, work / "seq1", 1)
    report["sequential_default_threads_s"] = sequential(clips, work / "seqN", torch.get_num_threads())
    start = time.perf_counter()
    cli("batch", str(folder), "-p", PROMPT, "--out-dir", str(work / "ray"), "--workers", str(workers),
        "--no-progress", "--save", str(work / "batch.json"))
    report["batch_s"] = time.perf_counter() - start
    summary = json.loads((work / "batch.json").read_text())
    report["batch_done"] = summary["done"]
    report["batch_equal_to_sequential"] = sum(
        (work / "ray" / c.name).read_bytes() == (work / "seq1" / c.name).read_bytes() for c in clips)
    start = time.perf_counter()
    cli("batch", str(folder), "-p", PROMPT, "--out-dir", str(work / "ray"), "--workers", str(workers),
        "--no-progress", "--save", str(work / "rerun.json"))
    report["rerun_s"] = time.perf_counter() - start
    report["rerun_skipped"] = json.loads((work / "rerun.json").read_text())["skipped"]

    fps = 24
    long = make_test_video(work / "long.mp4", seconds=frames / fps, fps=fps, width=32, height=32)
    short = make_test_video(work / "short.mp4", seconds=frames / 5 / fps, fps=fps, width=32, height=32)
    report["long_video"] = {"frames": frames, "size": "32x32", "fps": fps}
    start = time.perf_counter()
    torch.set_num_threads(1)
    cli("edit", str(long), "-p", PROMPT, "-o", str(work / "long-one.mp4"), "--batch-size", "4", "--no-progress")
    report["long_one_process_s"] = time.perf_counter() - start
    start = time.perf_counter()
    cli("batch", str(long), "-p", PROMPT, "-o", str(work / "long-split.mp4"), "--split", str(workers),
        "--workers", str(workers), "--batch-size", "4", "--no-progress", "--save", str(work / "split.json"))
    report["long_split_s"] = time.perf_counter() - start
    report["long_sections"] = json.loads((work / "split.json").read_text())["rows"][0].get("sections")
    with open_source(work / "long-one.mp4") as a, open_source(work / "long-split.mp4") as b:
        pairs = list(zip(a.frames(), b.frames()))
        report["long_frames_compared"] = len(pairs)
        report["long_frames_identical"] = sum(np.array_equal(x, y) for x, y in pairs)
    report["long_audio_intact"] = audio_packets(work / "long-split.mp4") == audio_packets(long)
    report["long_file_identical"] = (work / "long-one.mp4").read_bytes() == (work / "long-split.mp4").read_bytes()
    report["worker_peak_mb_short"] = peaks(Job(str(short), PROMPT, str(work / "short-split.mp4")), workers)
    report["worker_peak_mb_long"] = peaks(Job(str(long), PROMPT, str(work / "long-split2.mp4")), workers)
    ray.shutdown()
    return report


def entry() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        start_ray(None, args.workers)
        report = run(args.clips, args.frames, args.workers, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.save:
        args.save.write_text(text + "\n")


if __name__ == "__main__":
    entry()
