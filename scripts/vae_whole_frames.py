"""The nano SD VAE trained on crops, with and without whole-image steps: reconstruction PSNR on crops and on
whole images.

The chain trains its autoencoders on 32-px crops of 64-px pool images (4x cheaper steps). A VAE trained on the
crops alone reconstructs held-out crops well and whole images badly; `train_autoencoders(whole_every=N)` makes
every N-th VAE step see whole images (as many as hold the same pixels). This script trains the VAE alone (no
TAESD) with the chain's settings and a given `whole_every`, then scores it:

    python scripts/vae_whole_frames.py --whole-every 4 --out work/vae-w4      # ~40 min on 2 CPU cores
    python scripts/vae_whole_frames.py --whole-every 0 --out work/vae-w0      # crops only

It prints and writes OUT.json: the training summary, PSNR of decode(encode(x)) on 64 held-out procedural scenes
as 32-px crops and whole at 64 px, and train_autoencoders' own PSNR and colour figures (procedural, photos).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from movie_plugins.nano import train as nano_train
from movie_plugins.nano.chain import ChainBudget


def crop_and_whole_psnr(vae, count: int = 64, size: int = 64, crop: int = 32, seed: int = 0) -> dict[str, float]:
    """Mean PSNR of the VAE's round trip on held-out scenes, cut to `crop` px and whole (the chain's own scoring)."""
    from movie_plugins.autoencoders._sd1 import SDVAE

    wrapper, images = SDVAE(vae).eval(), nano_train.heldout_scenes(count, size, seed)
    return {f"crops_{crop}": nano_train._psnr(wrapper, wrapper, images[:, :crop, :crop], "cpu"),
            f"whole_{size}": nano_train._psnr(wrapper, wrapper, images, "cpu")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    b = ChainBudget()  # the chain's autoencoder settings, so the VAE is the one `movie nano-train` would train
    parser.add_argument("--whole-every", type=int, default=b.ae_whole_every)
    parser.add_argument("--steps", type=int, default=b.vae_steps)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    metrics = nano_train.train_autoencoders(
        args.out, vae_steps=args.steps, taesd_steps=0, batch_size=b.ae_batch_size, resolution=b.resolution,
        crop=min(b.ae_crop, b.resolution), whole_every=args.whole_every, pool_size=b.ae_pool, seed=b.seed)
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(args.out / "vae", use_safetensors=True).eval()
    result = {"whole_every": args.whole_every, "wall_seconds": round(time.perf_counter() - started, 1),
              "vae": metrics["vae"], "psnr_heldout": crop_and_whole_psnr(vae),
              "psnr_vae_pair": {k: v["sd-vae+sd-vae"] for k, v in metrics["psnr"].items()},
              "colour_vae_pair": {k: v["sd-vae+sd-vae"] for k, v in metrics["colour"].items()}}
    print(json.dumps(result, indent=1))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
