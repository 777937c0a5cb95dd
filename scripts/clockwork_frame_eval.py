"""The frame clock on held-out procedural videos: PSNR against the ground-truth edit and against the unclocked model,
temporal frame change and CPU frames/s, for no clock, the identity adaptor (frame_blend previous and linear) and a
trained adaptor; prints and saves JSON.

    python scripts/clockwork_frame_eval.py --model DIR [--every 2 3] [--out docs/results/clockwork_nano_frame.json]

DIR is a model folder of the 1-step stage with a trained adaptor/ (`movie distill clockwork -O kind=frame`); without
one only no clock and the identity adaptor are measured (on the shipped nano 1-step model). Videos: the test split's
seeds of `movie data nano` (movie_core.data.procedural, held-out phrasings), edited as `movie edit` does
(FrameEditor, anchor middle, batches of 4 frames).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from movie_core import flops
from movie_core.composer import compose
from movie_core.data.procedural import make_video, sample_seeds
from movie_core.edit import FrameEditor, anchor_index
from movie_core.evaluate import ssim
from movie_core.loading import builtin_weights, load_pipeline
from movie_core.recipe import preset


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / mse) if mse else float("inf")


def frame_change(frames: np.ndarray) -> float:
    """Mean absolute change between consecutive frames (0-255)."""
    return float(np.abs(np.diff(frames.astype(np.float64), axis=0)).mean())


def flicker(frames: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute difference between the output's and the ground truth's frame-to-frame change (0-255): change
    the edit should not have (flicker, judder) or motion it lost."""
    return float(np.abs(np.diff(frames.astype(np.float64), axis=0) - np.diff(truth.astype(np.float64), axis=0)).mean())


def edit(pipe, clip: dict, batch: int = 4) -> np.ndarray:
    frames = clip["source_frames"]
    h, w = frames.shape[1:3]
    editor = FrameEditor(pipe, clip["instruction"], size=(h, w), padded=(h, w))
    index = anchor_index(pipe.recipe.anchor, len(frames), True)
    if index is not None:
        editor.record_anchor(frames[index], index)
    out: list[np.ndarray] = []
    for start in range(0, len(frames), batch):
        out.extend(editor.edit(list(frames[start:start + batch]), (h, w)))
    editor.close()
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="1-step model folder with a trained adaptor/ (frame clock)")
    parser.add_argument("--every", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("docs/results/clockwork_nano_frame.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    base = preset("movie").replace(size="nano")
    folder = args.model or builtin_weights(base)
    adaptor_json = folder / "adaptor" / "adaptor.json"
    trained_for = json.loads(adaptor_json.read_text())["trained_for"] if adaptor_json.is_file() else None
    trained = trained_for is not None
    clips = [make_video(s, frames=args.frames, size=args.size, split="test")
             for s in sample_seeds(0, "test", args.videos)]
    configs = [("no clock", base)]
    blend = trained_for.get("blend", "previous") if trained_for is not None else None
    for every in args.every:
        for b in ("previous", "linear"):
            configs.append((f"frame clock {every}, identity, {b}", base.replace(frame_clock=every, frame_blend=b)))
        if trained:
            configs.append((f"frame clock {every}, trained, {blend}",
                            base.replace(frame_clock=every, adaptor="trained", frame_blend=blend)))
    rows, reference = [], None
    for name, recipe in configs:
        pipe = load_pipeline(recipe, folder)
        edit(pipe, clips[0])  # warm-up
        start = time.perf_counter()
        outputs = [edit(pipe, clip) for clip in clips]
        seconds = time.perf_counter() - start
        if reference is None:
            reference = outputs
        rows.append({
            "config": name, "frame_clock": recipe.frame_clock, "adaptor": recipe.adaptor,
            "frame_blend": recipe.frame_blend if recipe.frame_clock > 1 else None,
            "psnr_vs_truth": float(np.mean([psnr(o, c["edited_frames"]) for o, c in zip(outputs, clips)])),
            "ssim_vs_truth": float(np.mean([ssim(f, t) for o, c in zip(outputs, clips)
                                            for f, t in zip(o, c["edited_frames"])])),
            "psnr_vs_no_clock": float(np.mean([psnr(o, r) for o, r in zip(outputs, reference)])),
            "tflops_per_frame": flops.count(compose(recipe), height=args.size, width=args.size,
                                            model=folder)["tflops_paper"],
            "frame_change": float(np.mean([frame_change(o) for o in outputs])),
            "frame_change_truth": float(np.mean([frame_change(c["edited_frames"]) for c in clips])),
            "flicker_vs_truth": float(np.mean([flicker(o, c["edited_frames"]) for o, c in zip(outputs, clips)])),
            "cpu_frames_per_s": args.videos * args.frames / seconds,
        })
        r = rows[-1]
        print(f"{name:28} PSNR vs truth {r['psnr_vs_truth']:.2f} dB, SSIM {r['ssim_vs_truth']:.4f}, "
              f"{1e3 * r['tflops_per_frame']:.3f} GFLOPs/frame, vs no clock {r['psnr_vs_no_clock']:.2f} dB, "
              f"frame change {r['frame_change']:.2f} (truth {r['frame_change_truth']:.2f}), "
              f"flicker vs truth {r['flicker_vs_truth']:.2f}, "
              f"{r['cpu_frames_per_s']:.1f} frames/s (CPU, {torch.get_num_threads()} thread(s))")
    result = {"model": str(folder), "videos": args.videos, "frames": args.frames, "size": args.size,
              "threads": torch.get_num_threads(), "rows": rows}
    if trained:
        from movie_core.weights import read_manifest

        result["trained_for"] = trained_for
        training = (read_manifest(folder) or {}).get("training", {})
        result["training"] = {k: training.get(k) for k in ("strategy", "steps", "train", "options", "final_losses")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
