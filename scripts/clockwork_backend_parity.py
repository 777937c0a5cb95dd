"""Clocked recipes through an exporting backend against eager (not a test): how far the split graphs ('unet' returning
r_out, 'unet_adapt' taking the last full r_out) move the edit; prints and saves JSON.

    python scripts/clockwork_backend_parity.py [--backend hexagon] [--sizes 64x64,256x192] [--anchors middle,none]
        [--out docs/results/clockwork_hexagon_parity.json]

Cases: step clock 2 on the nano `mmg` recipe (identity adaptor, and the shipped trained adaptor) and frame clock 2 on
the nano `movie` recipe (identity; no trained frame adaptor is shipped). Each is edited as
tests/test_clockwork_export.py does: 4 synthetic frames as two batches of a video (frames 0-1, 2-3), with the anchor
(frame 1) recorded first (anchor middle) or without one (anchor none). Per case, size and anchor:
- clocked: the backend's clocked edit against eager's clocked edit: relative error of the edited floats
  (||got - expected|| / ||expected||), their largest difference, and the uint8 frames' largest and mean grey-level
  difference (y -> round((clip(y, -1, 1) + 1) * 127.5), the export's output rule) and share of pixels that differ;
- counts: (full, adapted) evaluations for both (eager on the CPU calls the network frame by frame, a routing backend
  once per batch, so the share adapted is what must agree);
- no_clock: the same figures for the unclocked recipe (the backend's own precision floor, fp16 on hexagon);
- clock_effect: the clocked edit against the unclocked one, eager and through the backend (the adaptor graph is
  not bypassed when these are far above the clocked parity figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from movie_core.bench import synthetic_frames
from movie_core.edit import FrameEditor
from movie_core.loading import builtin_weights, load_pipeline
from movie_core.recipe import preset

PROMPT = "make it sepia"
CASES = {
    "step clock 2 on nano mmg, identity adaptor": ("mmg", {"clock": 2}),
    "step clock 2 on nano mmg, shipped trained adaptor": ("mmg", {"clock": 2, "adaptor": "trained"}),
    "frame clock 2 on nano movie (1 step), identity adaptor": ("movie", {"frame_clock": 2}),
}


def edit(name: str, backend: str, size: tuple[int, int], anchor: str,
         **clock: Any) -> tuple[torch.Tensor, list[int], float]:
    """The edited floats of 4 frames, (full, adapted) evaluations and the seconds it took (graphs prepared included)."""
    start = time.perf_counter()
    recipe = preset(name).replace(size="nano", backend=backend, anchor=anchor, **clock)
    pipe = load_pipeline(recipe, builtin_weights(recipe))
    frames = synthetic_frames(4, *size)
    editor = FrameEditor(pipe, PROMPT, size=size, padded=size)
    try:
        if anchor != "none":
            editor.record_anchor(frames[1], 1)
        out = torch.cat([editor.run(editor.tensor(frames[:2])), editor.run(editor.tensor(frames[2:]))])
    finally:
        editor.close()
    c = pipe.step_clock or pipe.frame_clock
    counts = [0, 0]
    if c is not None:
        counts = [c.core_calls, c.adaptor_calls] if pipe.step_clock is not None else [c.core_frames, c.adaptor_frames]
    return out.float(), counts, time.perf_counter() - start


def grey(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy().astype(np.int16)


def compare(got: torch.Tensor, expected: torch.Tensor) -> dict[str, float]:
    diff = np.abs(grey(got) - grey(expected))
    return {"rel_err": float((got - expected).norm() / expected.norm()),
            "max_abs": float((got - expected).abs().max()),
            "uint8_max": int(diff.max()), "uint8_mean": float(diff.mean()),
            "uint8_share_differing": float((diff > 0).mean())}


def measure(backend: str, size: tuple[int, int], anchor: str) -> list[dict[str, Any]]:
    rows = []
    for case, (name, clock) in CASES.items():
        eager, eager_counts, eager_s = edit(name, "eager", size, anchor, **clock)
        got, counts, got_s = edit(name, backend, size, anchor, **clock)
        plain, _, _ = edit(name, "eager", size, anchor)
        plain_backend, _, plain_backend_s = edit(name, backend, size, anchor)
        share = [c[1] / (c[0] + c[1]) for c in (eager_counts, counts)]
        row = {
            "case": case, "recipe": name, "clock": clock, "anchor": anchor, "height": size[0], "width": size[1],
            "clocked": compare(got, eager),
            "counts": {"eager": eager_counts, backend: counts, "adapted_share_eager": share[0],
                       f"adapted_share_{backend}": share[1]},
            "no_clock": compare(plain_backend, plain),
            "clock_effect": {"eager": compare(eager, plain), backend: compare(got, plain_backend)},
            "seconds": {"eager_clocked": round(eager_s, 2), f"{backend}_clocked": round(got_s, 2),
                        f"{backend}_no_clock": round(plain_backend_s, 2)},
        }
        rows.append(row)
        c, n, e = row["clocked"], row["no_clock"], row["clock_effect"]
        print(f"{case} at {size[1]}x{size[0]}, anchor {anchor}:\n"
              f"  clocked {backend} vs eager: rel {c['rel_err']:.2e}, max {c['max_abs']:.2e}, uint8 max "
              f"{c['uint8_max']} mean {c['uint8_mean']:.3f} ({100 * c['uint8_share_differing']:.1f}% differ)\n"
              f"  unclocked {backend} vs eager: rel {n['rel_err']:.2e}, uint8 max {n['uint8_max']} mean "
              f"{n['uint8_mean']:.3f}\n"
              f"  counts (full, adapted): eager {eager_counts}, {backend} {counts}; adapted share {share[0]:.3f} / "
              f"{share[1]:.3f}\n"
              f"  clock vs no clock: eager rel {e['eager']['rel_err']:.2e} (uint8 mean "
              f"{e['eager']['uint8_mean']:.2f}), {backend} rel {e[backend]['rel_err']:.2e} (uint8 mean "
              f"{e[backend]['uint8_mean']:.2f})", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="hexagon")
    ap.add_argument("--sizes", default="64x64", help="WxH,WxH,... (frames are edited at each)")
    ap.add_argument("--anchors", default="middle,none", help="middle (frame 1 recorded first) and/or none")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: docs/results/"
                                                              "clockwork_<backend>_parity.json)")
    a = ap.parse_args()
    torch.manual_seed(0)
    out = a.out or Path(__file__).resolve().parent.parent / "docs" / "results" / f"clockwork_{a.backend}_parity.json"
    sizes = [(int(h), int(w)) for w, h in (s.lower().split("x") for s in a.sizes.split(","))]
    from movie_core import backends

    backend_info = backends.get_backend(a.backend).available()[1]
    with tempfile.TemporaryDirectory(prefix="movie-parity-") as cache:  # graphs built fresh, removed after
        os.environ.setdefault("MOVIE_CACHE_DIR", cache)
        rows = [r for size in sizes for anchor in a.anchors.split(",") for r in measure(a.backend, size, anchor)]
    import onnxruntime

    result = {
        "what": "clocked recipes through the backend's split graphs against eager, and the unclocked recipe's "
                "parity (the backend's precision floor)",
        "command": f"OMP_NUM_THREADS=1 python scripts/clockwork_backend_parity.py --backend {a.backend} "
                   f"--sizes {a.sizes} --anchors {a.anchors}",
        "backend": a.backend, "backend_info": backend_info,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "threads": os.environ.get("OMP_NUM_THREADS", "unset")},
        "prompt": PROMPT,
        "seconds": "wall seconds of each edit, graphs prepared included (a fresh artifact cache); indicative only on "
                   "a shared machine",
        "cases": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
