"""Peak memory of one frame batch on the CPU, per frame and per pixel: the figures behind
movie_core.edit's batch-size estimate (PEAK_BYTES_PER_PIXEL).

Each (preset, size, batch) runs in a fresh process: build the pipeline, warm it up on one small frame, then
reset the peak (Linux VmHWM) and edit one batch at HEIGHTxWIDTH; what the peak rose above the resident memory
before the batch is that batch's cost. Per frame = cost(batch 2) - cost(batch 1).

    python scripts/measure_memory.py --size nano --height 256 --width 256 --save mem-nano.json
    python scripts/measure_memory.py --size full --steps 1 --height 256 --width 256 --save mem-full.json

Prints and saves JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def one(preset: str, size: str, height: int, width: int, batch: int, steps: int | None) -> dict:
    """Run in this process: the resident memory a batch adds at its peak, in bytes."""
    import torch

    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import preset as load_preset

    torch.set_num_threads(1)
    recipe = load_preset(preset).replace(size=size, anchor="none", steps=steps)
    pipe = build(compose(recipe))  # random weights: memory depends on shapes only
    prompt = pipe.prompt("make it sepia")
    with torch.no_grad():
        pipe.edit_batch(torch.zeros(1, 3, 64, 64), prompt)
        x = torch.zeros(batch, 3, height, width)
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kb("VmRSS")
        pipe.edit_batch(x, prompt)
        peak = _status_kb("VmHWM")
    return {"added_bytes": (peak - before) * 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="base,movie")
    parser.add_argument("--size", default="nano", choices=["nano", "full"])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="Sampling steps (memory does not grow with them).")
    parser.add_argument("--save", help="Also write the JSON here.")
    parser.add_argument("--one", nargs=2, metavar=("PRESET", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.size, args.height, args.width, int(args.one[1]), args.steps)))
        return
    results = {}
    for name in args.presets.split(","):
        added = {}
        for batch in (1, 2):
            cmd = [sys.executable, __file__, "--size", args.size, "--height", str(args.height),
                   "--width", str(args.width), "--one", name, str(batch)]
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            added[batch] = json.loads(out.strip().splitlines()[-1])["added_bytes"]
        per_frame = added[2] - added[1]
        results[name] = {"batch1_mb": added[1] / 2**20, "batch2_mb": added[2] / 2**20,
                         "per_frame_mb": per_frame / 2**20,
                         "bytes_per_pixel": per_frame / (args.height * args.width)}
    report = {"size": args.size, "height": args.height, "width": args.width, "steps": args.steps,
              "dtype": "float32", "device": "cpu", "presets": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.save:
        Path(args.save).write_text(text + "\n")


if __name__ == "__main__":
    main()
