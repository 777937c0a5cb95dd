"""Paper Table 1 at nano scale: base -> mobile -> mmg -> movie, per-frame TFLOPs, CPU ms/frame and quality.

Each preset runs on the shipped nano weights of its stage; TFLOPs are the full-size architecture's at 480x480
(the paper's setting) and the nano model's at 64x64, ms/frame is `movie bench` on this CPU at 128x128, quality is
PSNR/SSIM on held-out procedural edits. Writes docs/results/ablations/table1_ladder/ by default.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import movie_core as movie

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "ablations" / "table1_ladder"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (table, charts, finished cells)")
parser.add_argument("--limit", type=int, default=48, help="held-out images to score")
parser.add_argument("--bench-size", type=int, default=128, help="square frame size for the CPU timing")
args = parser.parse_args()

started = time.perf_counter()
args.out.mkdir(parents=True, exist_ok=True)
with tempfile.TemporaryDirectory() as tmp:
    data = Path(tmp) / "heldout"
    movie.make_data(data, count=2 * args.limit, size=64, seed=1, test_fraction=0.5)
    result = movie.ablate("base", {"preset": ["base", "mobile", "mmg", "movie"]}, measure=["flops", "bench", "eval"],
                          data=data, limit=args.limit, bench_size=args.bench_size, bench_repeats=3, out=args.out,
                          log=print,
                          title="Table 1 at nano scale: base -> Mobile-Pix2Pix -> guidance distillation -> 1 step")
if result["run"]["computed"]:
    (args.out / "run.json").write_text(json.dumps({
        "command": " ".join(["python", "examples/table1_ladder.py", *sys.argv[1:]]),
        "wall_seconds": round(time.perf_counter() - started, 1), **result["run"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
                   f"load average {os.getloadavg()[0]:.1f} at the end"}, indent=2) + "\n")
print(open(result["files"]["markdown"]).read())
