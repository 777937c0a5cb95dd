"""What the default model's autoencoders alone keep of the evaluation photographs (issue 24): decode(encode(x)) of
each photo's 4:3 still at the processing sizes, PSNR and the luma SSIM against the photo. No edit can keep more
of the subject than its autoencoder does, so this is the ceiling of the issue's luma-SSIM bar (0.7) for every
denoiser trained on these latents. Prints and saves JSON.

    python scripts/ae_photo_ceiling.py [--out docs/results/ae_photo_ceiling.json] [--vae taesd sd-vae]
        [--folder AUTOENCODERS]   # also a trained SD VAE in diffusers format (AUTOENCODERS/vae, as nano-train writes)

--edits: also the ceiling of each global edit through the default path with a perfect denoiser: the working-size
still's closed-form edit through the autoencoder (decode(encode(edit(x)))) as the model's output, the detail
transfer (`--detail`, default global as the built-in model) onto the 320x240 still, measured as
scripts/photo_eval.py measures the default model's stills (its bars: invert 20 dB, grayscale saturation 0.05, ...).
What fails here no denoiser on these latents can pass. --family ROOT takes the autoencoders of another chain (a
`movie nano-train` work folder: ROOT/autoencoders, laid out as plugins/nano's):

    python scripts/ae_photo_ceiling.py --edits --vae taesd-lite --sizes 256x192 [--family WORK] --out JSON
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_eval import LUMA_SSIM, _luma3, load, still  # noqa: E402

from movie_core import evaluate as ev  # noqa: E402
from movie_core.data.photos import EVALUATION_PHOTOS  # noqa: E402
from movie_core.edit import to_frames  # noqa: E402
from movie_core.loading import builtin_weights, load_pipeline  # noqa: E402
from movie_core.recipe import preset  # noqa: E402


def _tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> 1x3xHxW in [-1, 1]."""
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def _frame(x: torch.Tensor, out_size: tuple[int, int]) -> np.ndarray:
    """1x3xHxW in [-1, 1] -> a uint8 frame at out_size (H, W), as movie edit resizes its output back."""
    return to_frames(x, tuple(x.shape[-2:]), out_size)[0]


@torch.no_grad()
def measure(round_trip, width: int, height: int) -> dict:
    """decode(encode(x)) of each evaluation photo's 4:3 still at width x height: per-photo PSNR and luma SSIM
    against the photo, and their means."""
    per_photo = {}
    for name in EVALUATION_PHOTOS:
        image = still(load(name), width, height)
        out = _frame(round_trip(_tensor(image)), (height, width))
        mse = float(np.mean((out.astype(np.float64) - image) ** 2))
        per_photo[name] = {"psnr": float(10 * np.log10(255.0**2 / mse)),
                           "luma_ssim": float(ev.ssim(_luma3(out), _luma3(image)))}
    return {"photos": per_photo, "mean_psnr": float(np.mean([p["psnr"] for p in per_photo.values()])),
            "mean_luma_ssim": float(np.mean([p["luma_ssim"] for p in per_photo.values()]))}


@torch.no_grad()
def edit_ceiling(round_trip, width: int, height: int, detail_mode: str, out_size=(320, 240)) -> dict:
    """Per photo and global edit: the default path's output with the closed-form edit as the model's latent
    target (see --edits), measured with photo_eval.measure; and photo_eval.summarise's means over the photos."""
    from nano_results import PHOTO_EDITS
    from photo_eval import PHOTOS, summarise
    from photo_eval import measure as edit_measures

    from movie_core.data.procedural import apply_edit
    from movie_core.detail import transfer

    rows: dict = {}
    for name in PHOTOS:
        photo = load(name)
        small, full = still(photo, width, height), still(photo, *out_size)
        rows[name] = {}
        for edit in PHOTO_EDITS:
            y = round_trip(_tensor(apply_edit(edit, small))).clamp(-1, 1)
            out = y if detail_mode == "none" else transfer(detail_mode, _tensor(full), _tensor(small), y)
            frame = _frame(out, (out_size[1], out_size[0]))
            rows[name][edit] = edit_measures(edit, full[None], frame[None], apply_edit(edit, full)[None])
    return {"photos": rows, "summary": summarise(rows)}


def _family_pipes(root: Path, vaes: list[str], tmp: Path) -> list:
    """Round trips of `vaes` loaded from root/autoencoders (another chain's), through a temporary copy of the
    built-in one-step model folder whose shared components point there."""
    import shutil

    from movie_core.weights import builtin_model

    base = builtin_model("mobile-pix2pix-1step")
    shutil.copytree(root / "autoencoders", tmp / "autoencoders")
    shutil.copytree(base.parent / "text", tmp / "text")
    shutil.copytree(base, tmp / "model")
    pipes = []
    for vae in vaes:
        recipe = preset("movie").replace(size="nano", vae=vae)
        pipes.append((f"{root}:{vae}", load_pipeline(recipe, tmp / "model").round_trip))
    return pipes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/ae_photo_ceiling.json"))
    parser.add_argument("--vae", nargs="+", default=["taesd", "sd-vae"])
    parser.add_argument("--sizes", nargs="+", default=["256x192", "128x96"], help="WxH")
    parser.add_argument("--folder", type=Path, help="an autoencoders folder whose vae/ (diffusers) is measured too")
    parser.add_argument("--edits", action="store_true", help="also each global edit's ceiling (see above)")
    parser.add_argument("--detail", choices=("global", "local", "none"), default="global")
    parser.add_argument("--family", type=Path, help="the --vae autoencoders of this chain work folder instead")
    args = parser.parse_args()
    rows = []
    pipes = []
    tmp = None
    if args.family is not None:
        if not (args.family / "autoencoders").is_dir():
            parser.error(f"--family {args.family}: no autoencoders/ folder there (a movie nano-train work folder)")
        tmp = tempfile.TemporaryDirectory(prefix="ae-ceiling-")
        pipes = _family_pipes(args.family, args.vae, Path(tmp.name))
    for vae in args.vae if args.family is None else ():
        recipe = preset("movie").replace(size="nano", vae=vae)
        pipes.append((vae, load_pipeline(recipe, builtin_weights(recipe)).round_trip))
    if args.folder is not None:
        from diffusers import AutoencoderKL

        model = AutoencoderKL.from_pretrained(args.folder / "vae", use_safetensors=True).eval()
        pipes.append((f"{args.folder}/vae", lambda x: model.decode(model.encode(x).latent_dist.mode()).sample))
    for vae, round_trip in pipes:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            row = {"vae": vae, "size": [width, height], **measure(round_trip, width, height)}
            rows.append(row)
            print(f"{vae:7} {width}x{height}: PSNR {row['mean_psnr']:.2f} dB, luma SSIM {row['mean_luma_ssim']:.3f} "
                  f"(bar {LUMA_SSIM}); per photo " + ", ".join(f"{n} {p['luma_ssim']:.3f}"
                                                                for n, p in row["photos"].items()))
            if args.edits:
                row["edits"] = edit_ceiling(round_trip, width, height, args.detail)
                row["edits"]["detail"] = args.detail
                for edit, m in row["edits"]["summary"].items():
                    extra = f", saturation {m['saturation']:.3f}" if "saturation" in m else ""
                    print(f"    {edit:10} PSNR {m['psnr']:.2f} (identity {m['identity_psnr']:.2f}){extra}, right "
                          f"{m['right']}/{m['photos']}, every bar {m['passes_all']}/{m['photos']}")
    if tmp is not None:
        tmp.cleanup()
    result = {"command": "python " + " ".join(sys.argv), "photos": list(EVALUATION_PHOTOS), "bar_luma_ssim": LUMA_SSIM,
              "machine": {"platform": platform.platform(), "torch": torch.__version__}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
