"""Paper Fig. 7 at nano scale: the four encoder/decoder pairs of SD VAE and TAESD, TFLOPs against quality.

The MoViE recipe (1-step denoiser) on the shipped nano weights, each pair scored on held-out procedural edits;
FLOPs are the full-size architecture's at 480x480. Writes docs/results/ablations/fig7_autoencoders/ by default.
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

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "ablations" / "fig7_autoencoders"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (table, charts, finished cells)")
parser.add_argument("--limit", type=int, default=48, help="held-out images to score")
args = parser.parse_args()

started = time.perf_counter()
args.out.mkdir(parents=True, exist_ok=True)
with tempfile.TemporaryDirectory() as tmp:
    data = Path(tmp) / "heldout"  # deterministic: a rerun makes the same files, so finished cells are reused
    movie.make_data(data, count=2 * args.limit, size=64, seed=1, test_fraction=0.5)
    result = movie.ablate("movie", {"encoder": ["sd-vae", "taesd"], "decoder": ["sd-vae", "taesd"]},
                          measure=["flops", "eval"], data=data, limit=args.limit, out=args.out, log=print,
                          title="Fig. 7 at nano scale: SD VAE / TAESD as encoder and decoder (MoViE recipe)")
if result["run"]["computed"]:  # the wall time of a run that measured something, for the results page
    (args.out / "run.json").write_text(json.dumps({
        "command": " ".join(["python", "examples/fig7_autoencoders.py", *sys.argv[1:]]),
        "wall_seconds": round(time.perf_counter() - started, 1), **result["run"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
                   f"load average {os.getloadavg()[0]:.1f} at the end"}, indent=2) + "\n")
print(open(result["files"]["markdown"]).read())
