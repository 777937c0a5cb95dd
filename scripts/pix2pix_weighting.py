"""Why the nano family's multi-step editing stages score below doing nothing, and pix2pix-finetune's `weighting`.

For each model folder (a cfg3 or guidance-embedded epsilon editing model, e.g. the shipped base and the base trained
further with `-O weighting=uniform` / `-O weighting=v`), on held-out procedural edits (another generator seed than
the chain's data):

* the multi-step edit at the recipe's scales (s_T 7.5, s_I 1.5) and --steps: PSNR / SSIM against the ground truth,
  beside identity (the source left unchanged), and the structure kept (movie_core.evaluate.structure_kept);
* what the model makes of pure noise at t = 999, where every sampler starts: the x0 its prediction implies, its
  latent MSE to the edited image's latents and the correlation of its per-channel means with theirs (the edit's
  colours; 0 = the start does not know them), with the image and the prompt as conditioning (s_I = s_T = 1).

An epsilon model's x0 at t = 999 is its epsilon error over sqrt(alpha_bar_999) ~ 0.068 (SD's schedule): the plain
loss counts that error like any other t, so a small model never learns it, and a sampler starting from pure noise
commits to colours it cannot correct later. Saves JSON; prints a table. With --mmg-teacher and --data, each
guidance-embedded model also gets the mmg stage's objective against that teacher (mmg's `weighting`):

    python scripts/pix2pix_weighting.py --model W/cont2000-v --model W/mmg-uniform --model W/mmg-v \
        --mmg-teacher W/cont2000-v --data D --out docs/results/mmg_weighting.json

    OMP_NUM_THREADS=1 python scripts/pix2pix_weighting.py --model nano:instruct-pix2pix --model W/cont2000-uniform \\
        --model W/cont2000-v --out docs/results/pix2pix_weighting.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def start_colours(pipe, batch: dict) -> dict:
    """The x0 the model implies from pure noise at t = 999: latent MSE and per-channel-mean correlation with the
    target's latents (conditional prediction, s_I = s_T = 1). batch: to_torch_batch's."""
    from movie_plugins.distillers._common import alphas_cumprod, vp_coefficients, x0_from_output

    den = pipe.denoiser
    with torch.no_grad():
        z_src, z_gt = pipe.encode(batch["source"]), pipe.encode(batch["edited"])
        emb = den.encode_prompt(batch["instruction"])
        t = torch.tensor([999])
        alpha, sigma = vp_coefficients(alphas_cumprod(den, torch.device("cpu")), t)
        noise = torch.randn(z_gt.shape, generator=torch.Generator().manual_seed(0))
        x0 = x0_from_output(den.prediction_type, den.predict(noise, t[0], z_src, emb, 1.0, 1.0), noise, alpha, sigma)
    m, mg = x0.mean((2, 3)).numpy(), z_gt.mean((2, 3)).numpy()
    corr = float(np.mean([np.corrcoef(m[:, c], mg[:, c])[0, 1] for c in range(m.shape[1])]))
    return {"t": int(t), "x0_latent_mse": float(((x0 - z_gt) ** 2).mean()), "channel_mean_correlation": corr}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="Model folder or nano:NAME (repeatable).")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--count", type=int, default=48, help="Held-out edits.")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "pix2pix_weighting.json")
    ap.add_argument("--mmg-teacher", help="The 3-pass teacher the guidance-embedded --model folders were distilled "
                    "from: also report the mmg objective (distance to its guidance over the (s_I, s_T) grid).")
    ap.add_argument("--data", type=Path, help="The dataset whose held-out split the mmg objective uses.")
    args = ap.parse_args(argv)
    if (args.mmg_teacher is None) != (args.data is None):
        ap.error("--mmg-teacher and --data go together")

    from movie_core.data import writer
    from movie_core.data.datasets import open_dataset, to_torch_batch
    from movie_core.evaluate import PipelinePredictor, psnr, ssim, structure_kept
    from movie_core.training.distiller import Distiller
    from movie_core.weights import read_manifest, resolve_model

    with tempfile.TemporaryDirectory(prefix="pix2pix-weighting-") as tmp:
        held = Path(tmp) / "held"
        writer.write_nano(held, count=2 * args.count, videos=0, size=64, seed=11, test_fraction=0.5)
        ds = open_dataset(held, "test")
        samples = [ds[i] for i in range(min(args.count, len(ds)))]
    batch = to_torch_batch(samples)
    sources, targets = [s["source"] for s in samples], [s["edited"] for s in samples]
    prompts = [s["instruction"] for s in samples]
    result: dict = {
        "command": "OMP_NUM_THREADS=1 python scripts/pix2pix_weighting.py " + " ".join(argv or sys.argv[1:]),
        "held_out": {"count": len(samples), "data_seed": 11, "size": 64, "scales": {"s_T": 7.5, "s_I": 1.5}},
        "identity": {"psnr": float(np.mean([psnr(s, t) for s, t in zip(sources, targets)])),
                     "ssim": float(np.mean([ssim(s, t) for s, t in zip(sources, targets)]))},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "rows": {}}
    for name in args.model:
        folder = resolve_model(name)
        pipe = Distiller().load_teacher(Path(folder), torch.device("cpu"))
        manifest = read_manifest(Path(folder)) or {}
        row: dict = {"stage": manifest.get("stage"), "training": manifest.get("training", {}).get("options"),
                     "start": start_colours(pipe, batch)}
        if args.mmg_teacher and pipe.denoiser.stage_info.embedded:
            from movie_plugins.distillers._mmg import MMGDistiller
            row["mmg_objective"] = MMGDistiller.objective(Path(folder), resolve_model(args.mmg_teacher), args.data)
        for steps in args.steps:
            edits = PipelinePredictor(pipe, steps=steps, seed=0).at(s_T=7.5, s_I=1.5)(sources, prompts)
            row[f"steps_{steps}"] = {
                "psnr": float(np.mean([psnr(e, t) for e, t in zip(edits, targets)])),
                "ssim": float(np.mean([ssim(e, t) for e, t in zip(edits, targets)])),
                "structure_kept": float(np.mean([structure_kept(e, s) for e, s in zip(edits, sources)]))}
        result["rows"][name] = row
        print(name, json.dumps(row), flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    ident = result["identity"]["psnr"]
    print(f"identity {ident:.2f} dB")
    print(f"{'model':48s} {'t=999 corr':>10s} {'x0 MSE':>7s}  " + "  ".join(f"PSNR@{k:<3d}" for k in args.steps)
          + "  mmg ratio")
    for name, row in result["rows"].items():
        cells = "  ".join(f"{row[f'steps_{k}']['psnr']:8.2f}" for k in args.steps)
        ratio = f"{row['mmg_objective']['ratio']:9.3f}" if "mmg_objective" in row else ""
        print(f"{name:48s} {row['start']['channel_mean_correlation']:10.2f} {row['start']['x0_latent_mse']:7.2f}  "
              f"{cells}  {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
