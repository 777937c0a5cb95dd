"""MobileDiffusion rows on the nano Table 1 ladder (issue 23, item 3a and the results' item 4).

Scores the nano MobileDiffusion-UNet editing line (`movie nano-train -B stage_order=paper -B
editing_unet=mobile-diffusion`, or the same stages run one by one) beside the shipped nano family on one held-out
dataset, in one run, with nano_results.py's own measures: PSNR/SSIM against the exact ground truth on held-out
images (held-out phrasings) and videos, frame change, the ratio to the shipped base model (instruct-pix2pix,
the ladder's 1.0), TFLOPs per frame (nano at the data's size, full size at 480x480, the paper's convention), CPU
frames/s at 128x128, and for the one-step models the edit strength's response to s_T and s_I.

    OMP_NUM_THREADS=2 python scripts/md_edit_ladder.py --md-stage mmg=WORK/mobile-pix2pix-mmg \\
        --md-stage 1step=WORK/mobile-pix2pix-1step [--md-stage cfg3=WORK/mobile-pix2pix] \\
        --out docs/results/md_edit_ladder.json

Prints a table and saves JSON. The paper's per-stage bar is a ratio to base of at least 0.95.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nano_results as nr  # noqa: E402

MD_PRESETS = {"cfg3": "base", "mmg": "mmg", "1step": "movie"}  # the role's scales and steps come from its preset
PAPER_STAGE_RATIO = 0.95


def _recipe(folder: Path):
    from movie_core.recipe import make_recipe
    from movie_core.weights import read_manifest

    manifest = read_manifest(folder) or {}
    if "recipe" not in manifest:
        raise SystemExit(f"error: {folder} is not a model folder with a recipe (no movie.json recipe)")
    return make_recipe(manifest["recipe"]).replace(size="nano")


def _pipe(recipe, folder: Path):
    from movie_core.composer import compose
    from movie_core.loading import build

    return build(compose(recipe), model=folder)


def _cost(recipe, nano_size: int) -> dict[str, Any]:
    from movie_core import flops
    from movie_core.composer import compose

    nano = flops.count(compose(recipe), nano_size, nano_size)
    full = flops.count(compose(recipe.replace(size="full")), nr.FULL_SIZE, nr.FULL_SIZE)
    return {"nano_tflops_paper": nano["tflops_paper"], "full_tflops_paper_480": full["tflops_paper"],
            "steps": nano["steps"], "unet_passes_per_step": nano["unet_passes_per_step"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", type=Path, default=None, help="The SD-UNet nano family (default: the built-in one).")
    p.add_argument("--md-stage", action="append", default=[], metavar="ROLE=FOLDER",
                   help="A MobileDiffusion editing stage to score: ROLE one of cfg3, mmg, 1step (repeatable).")
    p.add_argument("--data", type=Path, help="Held-out `movie data nano` dataset (default: generated, seed 1).")
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--control-samples", type=int, default=48)
    p.add_argument("--out", type=Path, default=Path("docs/results/md_edit_ladder.json"))
    args = p.parse_args(argv)
    import torch

    from movie_core.weights import builtin_root

    family = args.family or builtin_root()
    md: list[tuple[str, Path]] = []
    for item in args.md_stage:
        role, _, folder = item.partition("=")
        if role not in MD_PRESETS or not folder:
            raise SystemExit(f"error: --md-stage expects ROLE=FOLDER with ROLE one of {', '.join(MD_PRESETS)}; "
                             f"got '{item}'")
        md.append((role, Path(folder)))
    sizes = nr.Sizes(images=args.images, videos=args.videos, control_samples=args.control_samples)
    rows: dict[str, dict[str, Any]] = {}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        data = nr.heldout_data(args.data, sizes, Path(tmp))
        splits = {"test": "held-out scenes, held-out phrasings"}
        candidates = [(f"{stage} (shipped, SD UNet)", preset, family / stage, None)
                      for preset, stage in (("base", "instruct-pix2pix"), ("movie", "mobile-pix2pix-1step"))]
        candidates += [(f"{_recipe(folder).denoiser} (MobileDiffusion UNet)", MD_PRESETS[role], folder, role)
                       for role, folder in md]
        for label, preset_name, folder, role in candidates:
            from movie_core.recipe import preset

            recipe = _recipe(folder) if role else preset(preset_name).replace(size="nano")
            if role:  # the preset's scales and steps on the folder's own denoiser and autoencoders
                base = preset(preset_name)
                recipe = recipe.replace(steps=base.steps, text_guidance=base.text_guidance,
                                        image_guidance=base.image_guidance)
            nr.log(f"scoring {label} ({folder})")
            pipe = _pipe(recipe, folder)
            row: dict[str, Any] = {"folder": str(folder), "preset": preset_name,
                                   "recipe": {k: getattr(recipe, k) for k in ("encoder", "decoder", "denoiser",
                                                                             "steps")}}
            row.update(nr.evaluate_stage(pipe, Path(data["path"]), splits, sizes))
            row["cost"] = _cost(recipe, sizes.data_size)
            row["speed_128"] = nr.speed(pipe, sizes.bench_size, sizes)
            if pipe.steps == 1 or preset_name == "movie":
                from movie_core import evaluate as ev

                images = ev.open_image_data(Path(data["path"]), "test")
                row["controllability"] = nr.controllability_curves(pipe, images, sizes)
            rows[label] = row
    base = next(iter(rows.values()))
    for row in rows.values():
        row["ratio_to_base"] = {
            "psnr_img": row["images"]["test"]["psnr"] / base["images"]["test"]["psnr"],
            "ssim_img": row["images"]["test"]["ssim"] / base["images"]["test"]["ssim"],
            "psnr_video": row["videos"]["psnr"] / base["videos"]["psnr"],
            "ssim_video": row["videos"]["ssim"] / base["videos"]["ssim"],
        }
        row["within_paper_stage_ratio"] = all(v >= PAPER_STAGE_RATIO for v in row["ratio_to_base"].values())
    result = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "family": str(family), "data": data, "sizes": nr.asdict(sizes), "paper_stage_ratio": PAPER_STAGE_RATIO,
              "machine": {"cpu": platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__}, "seconds": round(time.time() - started, 1), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(nr._jsonable(result), indent=2) + "\n")
    print(f"{'model':58s} {'PSNR':>6s} {'SSIM':>6s} {'ratio':>6s} {'vid PSNR':>8s} {'TFLOPs nano':>11s} "
          f"{'TFLOPs 480':>10s} {'fps128':>7s}")
    for label, r in rows.items():
        print(f"{label:58s} {r['images']['test']['psnr']:6.2f} {r['images']['test']['ssim']:6.3f} "
              f"{r['ratio_to_base']['psnr_img']:6.3f} {r['videos']['psnr']:8.2f} "
              f"{r['cost']['nano_tflops_paper']:11.5f} {r['cost']['full_tflops_paper_480']:10.3f} "
              f"{r['speed_128']['frames_per_s']:7.1f}")
        if "controllability" in r:
            c = r["controllability"]
            print(f"    s_T: {c['text_guidance']['direction']} (spearman {c['text_guidance']['spearman']:.2f}), "
                  f"s_I: {c['image_guidance']['direction']} (spearman {c['image_guidance']['spearman']:.2f})")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
