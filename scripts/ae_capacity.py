"""Which autoencoder capacity lets the default model keep the evaluation photographs (issue 24's luma-SSIM bar 0.7)?

The nano SD VAE keeps luma SSIM 0.677 of them at 256x192, 0.681 when trained on the mixed photo pool
(ae_photo_ceiling*.json): the pool barely moves it, so the latent or the network is too small. This trains
candidate autoencoders with the chain's own VAE recipe (plugins/nano/train.py: the same pool, crops, whole-image
steps, L1 + MSE + SD's KL weight, AdamW with the same schedule) for the same number of steps, and measures each
as ae_photo_ceiling does, with its size and its CPU decode time at 256x256 (the default model's speed bar):

    sd4         the nano SD VAE as shipped (32/64/64/64, 4 latent channels, f=8): the baseline at this budget
    sd8         the same network with 8 latent channels (the latent of MobileDiffusion's autoencoder)
    sd4-wide    4 latent channels, twice the width (64/128/128/128): keeps the sd1 denoisers, costs decode time
    md-vae      md-vae at nano size (8 channels): stage 1 with the full-width decoder, then stage 2 trains its
                light decoder on the frozen encoder for half as many steps (MobileDiffusion Sec. 3.5)

    OMP_NUM_THREADS=1 python scripts/ae_capacity.py --pool WORK/.autoencoders.ckpt/pool.npy --candidates sd4 sd8 \
        --steps 1000 --out docs/results/ae_capacity_a.json

Prints and saves JSON (one row per candidate). The pool is a nano-train autoencoder pool (pool.npy in the
autoencoders' checkpoint folder, or made here with --source when none is given).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ae_photo_ceiling import measure  # noqa: E402
from photo_eval import LUMA_SSIM  # noqa: E402

from movie_core.data.photos import EVALUATION_PHOTOS  # noqa: E402
from movie_plugins.autoencoders._md_vae import MDVAE, config_for  # noqa: E402
from movie_plugins.autoencoders._sd1 import VAE_SIZES  # noqa: E402
from movie_plugins.nano import md_vae_train  # noqa: E402
from movie_plugins.nano import train as nano_train  # noqa: E402

CANDIDATES = ("sd4", "sd8", "sd4-wide", "md-vae")


def _sd_vae(latent_channels: int, widths: tuple[int, ...]):
    from diffusers import AutoencoderKL

    size = dict(VAE_SIZES["nano"], block_out_channels=widths)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * len(widths),
                         up_block_types=("UpDecoderBlock2D",) * len(widths), sample_size=512, **size)


def _kl_loss(vae):
    def loss(x, g):
        return nano_train._vae_loss(vae, x, g)
    return loss


def photo_ceiling(round_trip, width: int, height: int) -> dict[str, Any]:
    """ae_photo_ceiling's measure, rounded for the JSON."""
    m = measure(round_trip, width, height)
    return {"photos": {n: {k: round(v, 4) for k, v in p.items()} for n, p in m["photos"].items()},
            "mean_psnr": round(m["mean_psnr"], 3), "mean_luma_ssim": round(m["mean_luma_ssim"], 4)}


@torch.no_grad()
def decode_ms(decode, channels: int, factor: int, repeats: int = 5) -> float:
    """Median CPU time of decoding one 256x256 frame's latent (the thread count is the caller's)."""
    z = torch.randn(1, channels, 256 // factor, 256 // factor)
    decode(z)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        decode(z)
        times.append(time.perf_counter() - started)
    return round(1000 * float(np.median(times)), 2)


def params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def run(name: str, pool: torch.Tensor, args: argparse.Namespace, log) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    kw = dict(batch_size=args.batch, crop=args.crop, whole_every=args.whole_every, seed=args.seed)
    train = dict(steps=args.steps, lr=args.lr, state_file=None, checkpoint_seconds=1e9, log=log)
    row: dict[str, Any] = {"candidate": name}
    if name == "md-vae":
        ae = MDVAE(config_for("nano"))
        model = md_vae_train.Stage1(ae)
        state = nano_train._train(name + " stage 1", model, nano_train.vae_batches(pool, model.loss, **kw),
                                  **train)
        row["stage1"] = {"seconds": round(state["seconds"], 1),
                         **photo_ceiling(lambda x: ae.decode_unscaled(ae.moments(x)[0], model.full_decoder),
                                         *args.size)}
        log(f"md-vae stage 1 (full decoder): {row['stage1']['mean_luma_ssim']}")
        for m in ae.encoder_modules():
            m.requires_grad_(False)
        light = torch.nn.ModuleList(ae.decoder_modules())

        state2 = nano_train._train(name + " stage 2", light, nano_train.vae_batches(
            pool, lambda x, g: md_vae_train.decoder_loss(ae, x, g), **kw), **dict(train, steps=max(1, args.steps // 2)))
        row["seconds"] = round(state["seconds"] + state2["seconds"], 1)
        row.update(photo_ceiling(lambda x: ae.decode_unscaled(ae.moments(x)[0]), *args.size))
        row["latent_channels"], row["downscale"] = 8, ae.config.downscale
        row["encoder_params"], row["decoder_params"] = params(ae.encoder_modules()), params(ae.decoder_modules())
        row["decode_ms_256"] = decode_ms(ae.decode_unscaled, 8, ae.config.downscale)
        return row
    channels, widths = {"sd4": (4, (32, 64, 64, 64)), "sd8": (8, (32, 64, 64, 64)),
                        "sd4-wide": (4, (64, 128, 128, 128))}[name]
    vae = _sd_vae(channels, widths)
    if args.init is not None:  # go on training a trained VAE of this shape (a fresh schedule over --steps)
        from diffusers import AutoencoderKL

        trained = AutoencoderKL.from_pretrained(args.init)
        if tuple(trained.config.block_out_channels) != widths or trained.config.latent_channels != channels:
            raise SystemExit(f"{args.init} is not a '{name}' VAE")
        vae.load_state_dict(trained.state_dict())
        row["init"] = str(args.init)
    state = nano_train._train(name, vae, nano_train.vae_batches(pool, _kl_loss(vae), **kw), **train)
    vae.eval()
    row["seconds"] = round(state["seconds"], 1)
    row.update(photo_ceiling(lambda x: vae.decode(vae.encode(x).latent_dist.mode()).sample, *args.size))
    row["latent_channels"], row["downscale"] = channels, 2 ** (len(widths) - 1)
    row["encoder_params"] = params([vae.encoder, vae.quant_conv])
    row["decoder_params"] = params([vae.decoder, vae.post_quant_conv])
    row["decode_ms_256"] = decode_ms(lambda z: vae.decode(z).sample, channels, row["downscale"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", choices=CANDIDATES, default=list(CANDIDATES))
    parser.add_argument("--pool", type=Path, help="a nano-train autoencoder pool (pool.npy)")
    parser.add_argument("--source", default="mixed", help="the pool to make when --pool is not given")
    parser.add_argument("--pool-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--whole-every", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=5e-4, help="the chain's VAE learning rate by default")
    parser.add_argument("--init", type=Path, help="an SD VAE folder (diffusers) to go on training (sd4, sd8, "
                        "sd4-wide: the candidate of its shape), instead of random init")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 192], metavar=("W", "H"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/ae_capacity.json"))
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, flush=True)

    if args.pool is not None:
        pool = torch.from_numpy(np.load(args.pool))
        source = str(args.pool)
    else:
        pool = torch.from_numpy(nano_train.make_pool(args.pool_size, 64, args.seed, args.source))
        source = f"make_pool({args.pool_size}, 64, {args.seed}, {args.source!r})"
    rows = []
    for name in args.candidates:
        rows.append(run(name, pool, args, log))
        r = rows[-1]
        log(f"{name}: luma SSIM {r['mean_luma_ssim']} (bar {LUMA_SSIM}), PSNR {r['mean_psnr']} dB, "
            f"{r['decoder_params']} decoder parameters, decode {r['decode_ms_256']} ms at 256x256, "
            f"trained in {r['seconds']} s")
        result = {"command": "python " + " ".join(sys.argv), "pool": source, "pool_shape": list(pool.shape),
                  "photos": list(EVALUATION_PHOTOS), "size": args.size, "bar_luma_ssim": LUMA_SSIM,
                  "steps": args.steps, "lr": args.lr, "batch": args.batch, "crop": args.crop,
                  "whole_every": args.whole_every,
                  "threads": torch.get_num_threads(),
                  "machine": {"platform": platform.platform(), "torch": torch.__version__}, "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
