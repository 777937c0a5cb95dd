"""Frames/s of the default model on the CPU with the batch's frames run together vs one per model call.

`movie edit` on the CPU runs one frame per model call so that outputs do not depend on the batch size
(movie_core.edit.FrameEditor.frame_by_frame); this measures what that costs. Alternates the two ways over
`--repeats` rounds of `--frames` frames (anchor replay on, as movie edit runs), prints and saves JSON:

    python scripts/bench_frame_by_frame.py --height 192 --width 256 --out docs/results/frame_by_frame.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from movie_core.edit import FrameEditor
from movie_core.loading import load_pipeline, resolve_weights
from movie_core.recipe import preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    recipe = preset("movie").replace(size="nano")
    pipe = load_pipeline(recipe, resolve_weights(recipe, None))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8) for _ in range(args.frames)]
    editor = FrameEditor(pipe, "make it sepia", size=(args.height, args.width), padded=(args.height, args.width))
    editor.record_anchor(frames[0], 0)
    x = editor.tensor(frames)
    ways = {
        "batched": lambda: [editor.edit_tensor(x[i:i + args.batch]) for i in range(0, len(x), args.batch)],
        "frame_by_frame": lambda: [editor.edit_tensor(x[i:i + 1]) for i in range(len(x))],
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    with torch.no_grad():
        for fn in ways.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in ways.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    result = {
        "size": [args.height, args.width], "frames": args.frames, "batch": args.batch, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),  # other programs on the machine: a loaded machine skews both ways
        "frames_per_s": {name: args.frames / statistics.median(t) for name, t in times.items()},
        "seconds": times,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
