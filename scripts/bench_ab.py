#!/usr/bin/env python3
"""A/B speed check of two checkouts of this project: `movie bench` from each, in interleaved rounds, in one run.

    git worktree add /tmp/before HEAD~1
    python scripts/bench_ab.py --a /tmp/before --b . --out ab.json -- --height 128 --width 128

Each round runs `movie bench --json ARGS` once from each checkout (alternating which goes first), each in a fresh
interpreter whose import path puts that checkout's movie_core and movie_plugins first; load drifts on a shared
machine touch both alike. Reports every round's ms/frame, the medians and b/a, and saves them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def import_root(checkout: Path) -> Path:
    """A folder with movie_core and movie_plugins (the checkout's plugins/) linked, to put first on PYTHONPATH."""
    root = Path(tempfile.mkdtemp(prefix="movie-ab-"))
    (root / "movie_core").symlink_to(checkout.resolve() / "movie_core")
    (root / "movie_plugins").symlink_to(checkout.resolve() / "plugins")
    return root


def bench(root: Path, args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-c", "import sys; from movie_core.cli import main; main(sys.argv[1:])", "bench",
           "--json", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if proc.returncode:
        raise SystemExit(f"bench failed from {root}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, type=Path, help="The reference checkout (e.g. the previous commit).")
    p.add_argument("--b", required=True, type=Path, help="The checkout compared with it.")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, help="Write the result as JSON here.")
    p.add_argument("bench_args", nargs="*", help="Arguments for `movie bench` (after --).")
    args = p.parse_args(argv)
    roots = {"a": import_root(args.a), "b": import_root(args.b)}
    runs: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(args.rounds):
        for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
            r = bench(roots[side], args.bench_args)
            runs[side].append(r["ms_per_frame"])
            print(f"round {i + 1} {side}: {r['ms_per_frame']:.2f} ms/frame", flush=True)
    med = {side: statistics.median(v) for side, v in runs.items()}
    result = {"a": str(args.a), "b": str(args.b), "bench_args": args.bench_args, "rounds": args.rounds,
              "ms_per_frame": runs, "median_ms_per_frame": med, "b_over_a": med["b"] / med["a"]}
    print(f"median ms/frame: a {med['a']:.2f}, b {med['b']:.2f}; b/a = {result['b_over_a']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
