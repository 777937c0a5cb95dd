"""Prompt following of a text-to-image model on held-out captions (issue 23, item 3c and its acceptance line).

For each model folder: the first --count captions of a `movie data captions` dataset's test split (colour x shape x
position combinations no training scene shows) are generated at each --steps (default: the model's own and 1) and
--guidance (default: the recipe's s_T), one noise seed per prompt, decoded and scored with
movie_core.data.captions.score against the caption's spec:

  follows     the most frequent colour of the image is the named background, and in every named shape's region the
              named colour is the most frequent one besides the background, covers at least 30% of the smallest
              such shape and covers more of this region than of the opposite one (the measure of the acceptance:
              "the named colour dominates the named region")
  background, colour, shape (its pixels fill their bounding box like the named shape, and a triangle's mass sits
              low), all (follows and shape): the parts
  chance      the same images scored against the specs shuffled (no prompt its own): what an image that ignores
              its prompt scores on this set
  ceiling     the dataset's own images through the model's encoder and decoder: the most the model can score (the
              nano autoencoders blur, and shapes suffer first)

By default each model runs at its own steps and sampler and, if that is more than one step, at 1 LCM step too (its
one-pass x0 estimate from pure noise: the one-step baseline a one-step distillation starts from).

With --loss, also each model's held-out denoising loss: the mean squared error of its prediction (the target of its
own prediction type) on the split's images at timesteps 100, 300, ..., 900, one fixed noise per image and timestep,
conditioned on the caption; the training objective, without sampling's variance (compares two models of one
prediction type, e.g. a model before and after a block is removed).

Rates are also split by the number of shapes. Prints a table and saves JSON (default
docs/results/t2i_prompt_following.json); --sheet writes a contact sheet of the first generated images.

    OMP_NUM_THREADS=1 python scripts/t2i_prompt_following.py --model RUN/t2i --data RUN/captions --steps 25 \
        --steps 1 --model RUN/t2i-1step
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "results" / "t2i_prompt_following.json"


def load(folder: str, scheduler: str | None = None):
    """A model folder's pipeline on the CPU, sampling with `scheduler` instead of its own when given."""
    from movie_core.loading import load_pipeline
    from movie_core.recipe import make_recipe
    from movie_core.weights import read_manifest, resolve_model

    root = resolve_model(folder)
    manifest = read_manifest(root) or {}
    if "recipe" not in manifest:
        raise SystemExit(f"{folder}: no movie.json recipe")
    recipe = make_recipe(manifest["recipe"]).replace(device="cpu")
    if scheduler:
        recipe = recipe.replace(scheduler=scheduler)
    pipe = load_pipeline(recipe, root)
    if pipe.denoiser.describe().get("task") != "text-to-image":
        raise SystemExit(f"{folder}: denoiser '{pipe.recipe.denoiser}' is not a text-to-image one")
    return pipe


def plan(own_steps: int, steps: list[int] | None, schedulers: list[str] | None) -> list[tuple[int, str | None]]:
    """(steps, sampler) runs: as asked, else the model's own steps and sampler, and for a multi-step model also 1 LCM
    step (from t = 999 LCM returns the model's one-pass x0 estimate, what a one-step model is sampled with; DDIM's
    single step would sit at t = 1)."""
    if steps or schedulers:
        return [(s, sched) for s in steps or [own_steps] for sched in schedulers or [None]]
    return [(own_steps, None)] + ([(1, "lcm")] if own_steps > 1 else [])


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(pipe, prompts: list[str], *, size: int, steps: int, s_T: float, seed: int,
             batch: int = 32) -> np.ndarray:
    """One image per prompt; prompt i starts from the noise of seed + i whatever the batch."""
    den = pipe.denoiser
    down = pipe.decoder.downscale
    shape = (1, pipe.decoder.latent_channels, size // down, size // down)
    null = den.encode_prompt([""])
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        noise = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(seed + start + i))
                           for i in range(len(chunk))])
        emb = den.encode_prompt(chunk)
        latents = den.sample(torch.zeros_like(noise), emb, steps=steps, s_T=s_T, null_emb=null, latents=noise,
                             generator=torch.Generator().manual_seed(seed + start))
        out.append(to_uint8(pipe.decode(latents)))
    return np.concatenate(out)


@torch.no_grad()
def round_trip(pipe, images: np.ndarray, batch: int = 64) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
        out.append(to_uint8(pipe.decode(pipe.encode(x))))
    return np.concatenate(out)


def scored(images: np.ndarray, specs: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    from movie_core.data import captions

    row: dict[str, Any] = captions.rates(images, specs)
    row["chance"] = captions.rates(images, captions.shuffled(specs, seed))
    for k in (1, 2):
        idx = [i for i, s in enumerate(specs) if len(s["shapes"]) == k]
        if idx:
            row[f"{k}_shape"] = captions.rates(images[idx], [specs[i] for i in idx]) | {"count": len(idx)}
    return row


LOSS_TIMESTEPS = (100, 300, 500, 700, 900)


@torch.no_grad()
def heldout_loss(pipe, images: np.ndarray, prompts: list[str], seed: int, batch: int = 50) -> dict[str, Any]:
    """Mean squared error of the model's output against its prediction type's target on held-out (image, caption)
    pairs at LOSS_TIMESTEPS; image i at timestep k gets the noise of seed + i + 1000 k whatever the batch."""
    from movie_plugins.distillers._common import model_target, vp_coefficients
    from movie_plugins.distillers._t2i_train import TextToImageNets

    den = pipe.denoiser
    nets = TextToImageNets(den).eval()
    acp = den.make_scheduler().alphas_cumprod.float()
    per_t: dict[int, list[float]] = {t: [] for t in LOSS_TIMESTEPS}
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
        x0 = pipe.encode(x).float()
        ids, _ = den.tokenize(prompts[start:start + batch])
        for k, step in enumerate(LOSS_TIMESTEPS):
            noise = torch.cat([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(
                seed + start + i + 1000 * k))[None] for i in range(len(x0))])
            t = torch.full((len(x0),), step, dtype=torch.long)
            alpha, sigma = vp_coefficients(acp, t)
            out = nets(alpha * x0 + sigma * noise, t, ids)
            target = model_target(den.prediction_type, x0, noise, alpha, sigma)
            per_t[step] += ((out.float() - target) ** 2).flatten(1).mean(1).tolist()
    by_t = {str(t): round(float(np.mean(v)), 5) for t, v in per_t.items()}
    return {"mean": round(float(np.mean(list(by_t.values()))), 5), "by_timestep": by_t,
            "prediction_type": den.prediction_type, "timesteps": list(LOSS_TIMESTEPS)}


def sheet(images: np.ndarray, path: Path, columns: int = 8) -> None:
    from PIL import Image

    n = len(images) // columns * columns or len(images)
    rows = [np.concatenate(list(images[i:i + columns]), axis=1) for i in range(0, n, columns)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from PIL import Image

    from movie_core.data import captions
    from movie_core.weights import read_manifest, resolve_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="A text-to-image model folder (repeatable).")
    p.add_argument("--data", required=True, help="A `movie data captions` dataset (its test split is scored).")
    p.add_argument("--split", default="test")
    p.add_argument("--count", type=int, default=200, help="Held-out prompts (the split's first).")
    p.add_argument("--steps", type=int, action="append",
                   help="Sampling steps (repeatable; default: the model's own, and 1 with LCM).")
    p.add_argument("--scheduler", action="append", help="Sampler (repeatable; default: the model's own).")
    p.add_argument("--guidance", type=float, action="append", help="s_T (repeatable; default the recipe's).")
    p.add_argument("--size", type=int, help="Image size (default: the dataset's).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sheet", help="Write a contact sheet PNG of each run's first 32 images: SHEET-<model>-<run>.png")
    p.add_argument("--loss", action="store_true", help="Also each model's held-out denoising loss (no sampling).")
    p.add_argument("--no-sampling", action="store_true", help="Only the --loss (no generation, no rates).")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result file.")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = captions.read_split(args.data, args.split)[: args.count]
    if len(rows) < 2:
        raise SystemExit(f"{args.data}: fewer than 2 {args.split} prompts")
    info = json.loads((Path(args.data) / "dataset.json").read_text())
    size = args.size or int(info["size"][0])
    specs = [r["spec"] for r in rows]
    prompts = [r["text"] for r in rows]
    truth = np.stack([np.asarray(Image.open(Path(args.data) / args.split / r["file_name"]).convert("RGB"))
                      for r in rows])
    result: dict[str, Any] = {
        "measure": "movie_core.data.captions.score", "data": str(args.data), "split": args.split,
        "prompts": len(rows), "size": size, "seed": args.seed, "threads": args.threads,
        "machine": platform.machine(), "python": sys.version.split()[0], "torch": torch.__version__,
        "ground_truth": scored(truth, specs, args.seed), "models": [],
    }
    print(f"{len(rows)} held-out prompts, {size}x{size}; ground truth: follows {result['ground_truth']['follows']:.3f}"
          f" (chance {result['ground_truth']['chance']['follows']:.3f})")
    for folder in args.model:
        pipes = {None: load(folder)}
        pipe = pipes[None]
        ceiling = scored(round_trip(pipe, truth) if size == truth.shape[1] else truth, specs, args.seed)
        manifest = read_manifest(resolve_model(folder)) or {}
        entry: dict[str, Any] = {"model": str(folder), "recipe": {**pipe.recipe.components(), "steps": pipe.steps},
                                 "training": manifest.get("training", {}), "ceiling": ceiling, "runs": []}
        print(f"\n{folder}: autoencoder ceiling follows {ceiling['follows']:.3f}, shape {ceiling['shape']:.3f}")
        if args.loss or args.no_sampling:
            entry["heldout_loss"] = heldout_loss(pipe, truth, prompts, args.seed)
            loss = entry["heldout_loss"]
            print(f"held-out {loss['prediction_type']} loss {loss['mean']:.4f} (t " + ", ".join(
                f"{t}: {v:.4f}" for t, v in loss["by_timestep"].items()) + ")")
        if args.no_sampling:
            result["models"].append(entry)
            continue
        print(f"{'steps':>5} {'sampler':>8} {'s_T':>5} {'follows':>8} {'chance':>7} {'backgr':>7} {'colour':>7} "
              f"{'shape':>6} {'all':>6} {'1-shape':>8} {'2-shape':>8} {'s':>6}")
        for steps, sampler in plan(pipe.steps, args.steps, args.scheduler):
            if sampler not in pipes:
                pipes[sampler] = load(folder, sampler)
            run_pipe = pipes[sampler]
            name = type(run_pipe.denoiser.make_scheduler()).__name__.removesuffix("Scheduler").lower()
            for s_T in args.guidance or [pipe.recipe.text_guidance]:
                t0 = time.perf_counter()
                images = generate(run_pipe, prompts, size=size, steps=steps, s_T=s_T, seed=args.seed)
                seconds = time.perf_counter() - t0
                row = scored(images, specs, args.seed) | {"steps": steps, "sampler": name, "text_guidance": s_T,
                                                           "seconds": round(seconds, 2)}
                entry["runs"].append(row)
                print(f"{steps:>5} {name:>8} {s_T:>5.1f} {row['follows']:>8.3f} {row['chance']['follows']:>7.3f} "
                      f"{row['background']:>7.3f} {row['colour']:>7.3f} {row['shape']:>6.3f} {row['all']:>6.3f} "
                      f"{row.get('1_shape', {}).get('follows', float('nan')):>8.3f} "
                      f"{row.get('2_shape', {}).get('follows', float('nan')):>8.3f} {seconds:>6.1f}")
                if args.sheet:
                    sheet(images[:32], Path(f"{args.sheet}-{Path(folder).name}-{steps}{name}-sT{s_T:g}.png"))
        result["models"].append(entry)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
