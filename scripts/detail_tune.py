"""Choose `--detail`'s mode and regulariser on training photographs (never the evaluation ones).

The built-in default model edits 320x240 crops of colour training photographs (scikit-image's stereo motorcycle,
scikit-learn's china and flower: movie_core.data.photos.TRAINING_PHOTOS) at its working size, once per edit; the
output is then rebuilt at 320x240 by plain resizing (`--detail none`) and by the colour-map transfer
(movie_core.detail: one map per frame, 'global', or one per window, 'local', for each radius), for each
regulariser. Reported per setting: mean PSNR against the closed-form edit over photos and edits, the worst edit's
margin over identity, the colour-only edits' luma SSIM against the source, and the mean PSNR on the darkened copies
(--dark: each photo also at 0.3 of its exposure, as night footage is). The built-in model's four other edits (more
and less contrast, posterize, night) are scored too, resized back against the default ('global', 1e-3), not tuned
on. Prints and saves JSON.

    python scripts/detail_tune.py --out docs/results/detail_tune.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_eval import COLOUR_ONLY, _luma3, still  # noqa: E402

PHOTOS = ("stereo_motorcycle[left]", "china.jpg", "flower.jpg")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--radius", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64],
                    help="'local' window radii at the working size ('global' is always tried)")
    ap.add_argument("--eps", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    ap.add_argument("--relative-eps", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1],
                    help="'global' regularisers relative to the frame's mean colour variance")
    ap.add_argument("--dark", type=float, default=0.3,
                    help="also each photo at this exposure (its pixel values times it): footage can be dark")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch
    from nano_results import PHOTO_EDITS, _quiet_libraries

    from movie_core import detail
    from movie_core import evaluate as ev
    from movie_core.composer import compose
    from movie_core.data.photos import TRAINING_PHOTOS
    from movie_core.data.procedural import EDITS, apply_edit
    from movie_core.edit import FrameEditor, size_policy, to_frames, working_side
    from movie_core.loading import builtin_default_recipe, load_pipeline
    from movie_core.weights import resolve_model

    _quiet_libraries()
    recipe = builtin_default_recipe()
    pipe = load_pipeline(compose(recipe), str(resolve_model("nano:mobile-pix2pix-1step")))
    policy, _ = size_policy(recipe.resolution, working_side(pipe), multiple=int(pipe.encoder.downscale))
    size = policy.target(args.height, args.width)
    padded = policy.padded(*size)
    by_name = {p.name: p for p in TRAINING_PHOTOS}
    settings = [("none", None, None, None)] + [("global", None, e, False) for e in args.eps] + [
        ("global", None, e, True) for e in args.relative_eps] + [
        ("local", r, e, False) for r, e in itertools.product(args.radius, args.eps)]
    scores: dict[tuple, list[dict]] = {s: [] for s in settings}
    others = [e for e in EDITS if e not in PHOTO_EDITS]
    other: dict[str, dict[str, list[float]]] = {e: {"none": [], "global": [], "identity": []} for e in others}
    def edited(source: np.ndarray, edit: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The model's input and output for `source` (working size, padding cropped) and its exact edit."""
        editor = FrameEditor(pipe, EDITS[edit].phrasings[0], size=size, padded=padded)
        x = editor.tensor([source])
        with torch.no_grad():
            y = editor.run(x)
        return x[:, :, :size[0], :size[1]], y[:, :, :size[0], :size[1]], apply_edit(edit, source[None])[0]

    for name, exposure in itertools.product(PHOTOS, (1.0, args.dark)):
        photo = np.asarray(by_name[name].load())[..., :3]
        source = still(photo, args.width, args.height)
        if exposure != 1.0:
            source = np.round(source * exposure).astype(np.uint8)
        full = torch.from_numpy(np.array(source)).permute(2, 0, 1)[None].float() / 127.5 - 1
        for edit in PHOTO_EDITS:
            small_x, small_y, reference = edited(source, edit)
            for mode, r, e, rel in settings:
                if mode == "none":
                    out = to_frames(small_y, size, (args.height, args.width))[0]
                else:
                    q = detail.transfer(mode, full, small_x, small_y, radius=r or 0, eps=e, relative=rel)
                    out = to_frames(q, (args.height, args.width), (args.height, args.width))[0]
                row = {"photo": name, "exposure": exposure, "edit": edit, "psnr": ev.psnr(out, reference),
                       "identity_psnr": ev.psnr(source, reference)}
                if edit in COLOUR_ONLY:
                    row["luma_ssim"] = ev.ssim(_luma3(out), _luma3(source))
                scores[(mode, r, e, rel)].append(row)
        for edit in others:  # the built-in model's other edits: plain resizing against the default only
            small_x, small_y, reference = edited(source, edit)
            q = detail.transfer("global", full, small_x, small_y)
            other[edit]["none"].append(ev.psnr(to_frames(small_y, size, (args.height, args.width))[0], reference))
            other[edit]["global"].append(ev.psnr(to_frames(q, (args.height, args.width),
                                                           (args.height, args.width))[0], reference))
            other[edit]["identity"].append(ev.psnr(source, reference))
        print(f"{name} at exposure {exposure}: done", file=sys.stderr, flush=True)
    rows = []
    for (mode, r, e, rel), per in scores.items():
        dark = [x for x in per if x["exposure"] != 1.0]
        rows.append({"detail": mode, "radius": r, "eps": e, "relative": rel,
                     "dark_mean_psnr": round(float(np.mean([x["psnr"] for x in dark])), 3),
                     "mean_psnr": round(float(np.mean([x["psnr"] for x in per])), 3),
                     "worst_margin_db": round(float(min(x["psnr"] - x["identity_psnr"] for x in per)), 3),
                     "mean_luma_ssim": round(float(np.mean([x["luma_ssim"] for x in per if "luma_ssim" in x])), 4),
                     "min_luma_ssim": round(float(min(x["luma_ssim"] for x in per if "luma_ssim" in x)), 4)})
        print(f"{mode:6s} r={r} eps={e}{' relative' if rel else ''}: PSNR {rows[-1]['mean_psnr']:.2f} dB "
              f"(dark {rows[-1]['dark_mean_psnr']:.2f}), worst margin "
              f"{rows[-1]['worst_margin_db']:+.2f} dB, luma SSIM mean {rows[-1]['mean_luma_ssim']:.3f} "
              f"min {rows[-1]['min_luma_ssim']:.3f}")
    result = {"what": __doc__.strip().splitlines()[0], "command": "python " + shlex.join(sys.argv),
              "photos": list(PHOTOS), "exposures": [1.0, args.dark],
              "size": [args.width, args.height], "processed": [size[1], size[0]],
              "edits": list(PHOTO_EDITS), "rows": rows,
              "other_edits": {e: {k: round(float(np.mean(v)), 3) for k, v in m.items()} for e, m in other.items()}}
    for e, m in result["other_edits"].items():
        print(f"{e}: mean PSNR resized back {m['none']:.2f} dB, global {m['global']:.2f}, identity {m['identity']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
