"""What the default model's autoencoders alone keep of the evaluation photographs (issue 24): decode(encode(x)) of
each photo's 4:3 still at the processing sizes, PSNR and the luma SSIM against the photo. No edit can keep more
of the subject than its autoencoder does, so this is the ceiling of the issue's luma-SSIM bar (0.7) for every
denoiser trained on these latents. Prints and saves JSON.

    python scripts/ae_photo_ceiling.py [--out docs/results/ae_photo_ceiling.json] [--vae taesd sd-vae]
        [--folder AUTOENCODERS]   # also a trained SD VAE in diffusers format (AUTOENCODERS/vae, as nano-train writes)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_eval import LUMA_SSIM, _luma3, load, still  # noqa: E402

from movie_core import evaluate as ev  # noqa: E402
from movie_core.data.photos import EVALUATION_PHOTOS  # noqa: E402
from movie_core.loading import builtin_weights, load_pipeline  # noqa: E402
from movie_core.recipe import preset  # noqa: E402


@torch.no_grad()
def measure(round_trip, width: int, height: int) -> dict:
    """decode(encode(x)) of each evaluation photo's 4:3 still at width x height: per-photo PSNR and luma SSIM
    against the photo, and their means."""
    per_photo = {}
    for name in EVALUATION_PHOTOS:
        image = still(load(name), width, height)
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        out = ((round_trip(x)[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        mse = float(np.mean((out.astype(np.float64) - image) ** 2))
        per_photo[name] = {"psnr": float(10 * np.log10(255.0**2 / mse)),
                           "luma_ssim": float(ev.ssim(_luma3(out), _luma3(image)))}
    return {"photos": per_photo, "mean_psnr": float(np.mean([p["psnr"] for p in per_photo.values()])),
            "mean_luma_ssim": float(np.mean([p["luma_ssim"] for p in per_photo.values()]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/ae_photo_ceiling.json"))
    parser.add_argument("--vae", nargs="+", default=["taesd", "sd-vae"])
    parser.add_argument("--sizes", nargs="+", default=["256x192", "128x96"], help="WxH")
    parser.add_argument("--folder", type=Path, help="an autoencoders folder whose vae/ (diffusers) is measured too")
    args = parser.parse_args()
    rows = []
    pipes = []
    for vae in args.vae:
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
    result = {"command": "python " + " ".join(sys.argv), "photos": list(EVALUATION_PHOTOS), "bar_luma_ssim": LUMA_SSIM,
              "machine": {"platform": platform.platform(), "torch": torch.__version__}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
