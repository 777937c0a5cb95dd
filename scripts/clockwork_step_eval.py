"""The step clock on the nano `mmg` stage (10 steps): PSNR/SSIM against the ground-truth edit and PSNR against the
unclocked model on held-out procedural images, TFLOPs per frame and CPU frames/s, for no clock, the identity
adaptor and a trained adaptor, at clocks 2 and 3, and the adaptor on every step but the first (the paper's
collapse case); prints and saves JSON.

    python scripts/clockwork_step_eval.py [--model DIR] [--images 24] [--out docs/results/clockwork_nano_step.json]

DIR: an mmg model folder whose adaptor/ was trained for the step clock (`movie distill clockwork -O kind=step`);
default: the shipped nano mmg model (its adaptor/ when it ships one). Images: the test split's seeds of
`movie data nano` (movie_core.data.procedural: seeds and phrasings no training run sees), 64x64, edited one batch
at a time with the recipe's seed.
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
from movie_core.data.procedural import make_sample, sample_seeds
from movie_core.edit import to_frames, to_tensor
from movie_core.evaluate import psnr, ssim
from movie_core.loading import builtin_weights, load_pipeline
from movie_core.recipe import preset


def run(pipe, samples: list[dict], batch: int = 8) -> np.ndarray:
    """Edit the samples in batches, one instruction per image."""
    out: list[np.ndarray] = []
    size = samples[0]["source"].shape[:2]
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        x = to_tensor([s["source"] for s in chunk], size, size, pipe.device, pipe.dtype)
        out.extend(to_frames(pipe.edit_batch(x, [s["instruction"] for s in chunk]), size, size))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="mmg model folder with a trained adaptor/ (step clock)")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("docs/results/clockwork_nano_step.json"))
    args = parser.parse_args()
    base = preset("mmg").replace(size="nano")
    folder = args.model or builtin_weights(base)
    trained = (folder / "adaptor" / "adaptor.json").is_file()
    samples = [make_sample(s, args.size, split="test") for s in sample_seeds(0, "test", args.images)]
    configs = [("no clock", base)]
    for clock in (2, 3):
        configs.append((f"clock {clock}, identity", base.replace(clock=clock)))
        if trained and clock == 2:
            configs.append((f"clock {clock}, trained", base.replace(clock=clock, adaptor="trained")))
    configs.append(("adaptor on every step, identity", base.replace(clock_schedule=(0,))))
    if trained:
        configs.append(("adaptor on every step, trained", base.replace(clock_schedule=(0,), adaptor="trained")))
    rows, reference = [], None
    truth = np.stack([s["edited"] for s in samples])
    for name, recipe in configs:
        pipe = load_pipeline(recipe, folder)
        run(pipe, samples[:1])  # warm-up
        start = time.perf_counter()
        out = run(pipe, samples)
        seconds = time.perf_counter() - start
        if reference is None:
            reference = out
        counted = flops.count(compose(recipe), height=args.size, width=args.size, model=folder)
        rows.append({
            "config": name, "clock": recipe.clock, "clock_schedule": recipe.clock_schedule, "adaptor": recipe.adaptor,
            "psnr_vs_truth": float(np.mean([psnr(o, t) for o, t in zip(out, truth)])),
            "ssim_vs_truth": float(np.mean([ssim(o, t) for o, t in zip(out, truth)])),
            "psnr_vs_no_clock": float(np.mean([psnr(o, r) for o, r in zip(out, reference)])),
            "tflops_per_frame": counted["tflops_paper"],
            "unet_saving": (counted.get("clock") or {}).get("unet_saving_paper", 0.0),
            "cpu_frames_per_s": len(samples) / seconds,
        })
        r = rows[-1]
        print(f"{name:34} PSNR vs truth {r['psnr_vs_truth']:.2f} dB, SSIM {r['ssim_vs_truth']:.4f}, vs no clock "
              f"{r['psnr_vs_no_clock']:.2f} dB, {1e3 * r['tflops_per_frame']:.3f} GFLOPs/frame (UNet "
              f"-{100 * r['unet_saving']:.1f}%), {r['cpu_frames_per_s']:.1f} frames/s "
              f"(CPU, {torch.get_num_threads()} thread(s))")
    result = {"model": str(folder), "images": args.images, "size": args.size, "steps": 10,
              "threads": torch.get_num_threads(), "rows": rows}
    if trained:
        adaptor_config = json.loads((folder / "adaptor" / "adaptor.json").read_text())
        result["trained_for"] = adaptor_config["trained_for"]
        result["adaptor_use_r_out"] = adaptor_config.get("use_r_out", True)  # false: the r_in-only ablation
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
