"""Probe the built-in path's inference settings on photographs: guidance scales and test-time flips (issue 24).

Each photograph's 256x192 still is edited by the one-step model at the working size (PipelinePredictor: the frame
sized, padded and restored as `movie edit` does, one step, seed 0) for each global edit, at each (s_T, s_I) of the
grid, optionally averaged over flips of the input (1: none; 2: + left-right; 4: + up-down and both). The global
colour map of movie_core.detail is fitted on that pair and applied to the same still, and the result is scored
against the closed-form edit: mean and worst PSNR over the photos, and the worst grey saturation. No pans, no
resize to 320x240: a quick probe, not the acceptance measure (scripts/photo_eval.py is). Settings are to be chosen
on the training photographs (`--photos train`: motorcycle, china, flower, as scripts/detail_tune.py) and only
checked on the evaluation ones. Prints one line per setting and saves JSON.

    python scripts/photo_probe.py --photos train --s-T 3 5 7.5 10 14 --s-I 1 1.5 2 3 \\
        --out docs/results/photo_probe_scales.json
    python scripts/photo_probe.py --photos eval --flips 1 2 4 --out docs/results/photo_probe_flips.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detail_tune import PHOTOS as TRAINING  # noqa: E402
from nano_results import PHOTO_EDITS  # noqa: E402
from photo_eval import DEFAULT_MODEL, PHOTOS, load, still  # noqa: E402

FLIPS = ((slice(None), slice(None)), (slice(None), slice(None, None, -1)), (slice(None, None, -1), slice(None)),
         (slice(None, None, -1), slice(None, None, -1)))  # identity, left-right, up-down, both (their own inverses)


def photographs(which: str, width: int, height: int) -> dict[str, np.ndarray]:
    if which == "eval":
        return {name: still(load(name), width, height) for name in PHOTOS}
    from movie_core.data.photos import TRAINING_PHOTOS

    return {p.key: still(np.asarray(p.load())[..., :3], width, height) for p in TRAINING_PHOTOS
            if p.key.split(":", 1)[1] in TRAINING}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model folder or nano:<stage> (default: the built-in)")
    ap.add_argument("--vae", default="taesd-lite")
    ap.add_argument("--photos", choices=("train", "eval"), default="train")
    ap.add_argument("--s-T", type=float, nargs="+", default=[7.5])
    ap.add_argument("--s-I", type=float, nargs="+", default=[1.5])
    ap.add_argument("--flips", type=int, nargs="+", default=[1], choices=(1, 2, 4))
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    import torch

    from movie_core import detail
    from movie_core.colour import saturation
    from movie_core.composer import compose
    from movie_core.data.procedural import EDITS, apply_edit
    from movie_core.edit import to_frames, to_tensor
    from movie_core.evaluate import PipelinePredictor, psnr
    from movie_core.loading import builtin_default_recipe, load_pipeline
    from movie_core.weights import resolve_model

    recipe = builtin_default_recipe().replace(encoder=args.vae, decoder=args.vae)
    model = str(resolve_model(args.model)) if args.model.startswith("nano:") else args.model
    pipe = load_pipeline(compose(recipe), model)
    photos = photographs(args.photos, args.width, args.height)
    size = (args.height, args.width)
    sources = {name: to_tensor([photo], size, size, "cpu", torch.float32) for name, photo in photos.items()}

    rows = []
    for s_t in args.s_T:
        for s_i in args.s_I:
            predict = PipelinePredictor(pipe, steps=1, seed=0, s_T=s_t, s_I=s_i)
            for flips in args.flips:
                row: dict = {"s_T": s_t, "s_I": s_i, "flips": flips, "edits": {}}
                for edit in PHOTO_EDITS:
                    prompt = EDITS[edit].phrasings[0]
                    scores, sats = [], []
                    for name, photo in photos.items():
                        outs = [predict([photo[f].copy()], [prompt])[0][f].astype(np.float64) for f in FLIPS[:flips]]
                        out = np.mean(outs, 0).round().astype(np.uint8)
                        src = sources[name]
                        mapped = detail.transfer("global", src, src, to_tensor([out], size, size, "cpu", torch.float32))
                        mapped_u8 = to_frames(mapped, size, size)[0]
                        scores.append(psnr(mapped_u8, apply_edit(edit, photo)))
                        if edit == "grayscale":
                            sats.append(saturation(mapped_u8))
                    row["edits"][edit] = {"psnr": float(np.mean(scores)), "worst_psnr": float(np.min(scores))}
                    if sats:
                        row["edits"][edit]["worst_saturation"] = float(np.max(sats))
                rows.append(row)
                print(f"s_T {s_t:g} s_I {s_i:g} flips {flips}: " + ", ".join(
                    f"{e} {r['psnr']:.2f} (worst {r['worst_psnr']:.2f}"
                    + (f", sat {r['worst_saturation']:.3f})" if "worst_saturation" in r else ")")
                    for e, r in row["edits"].items()), flush=True)
    result = {"command": "python scripts/photo_probe.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "model": args.model, "vae": args.vae, "photos": list(photos), "size": [args.width, args.height],
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
