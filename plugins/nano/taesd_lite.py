"""The nano `taesd-lite`: TAESD without its full-resolution blocks, distilled from the nano TAESD, same latent space.

Why: at 256x256 the default recipe spends ~95% of a frame in its autoencoders (2 threads, this project's 2-core
machine: TAESD encoder 48 ms, decoder 56 ms, the one-step UNet 9 ms), and ~3/4 of each autoencoder's convolutions
run at full resolution (the encoder's first block, the decoder's last: 3 convolutions of 32 channels each at every
pixel). Dropping those two blocks leaves the encoder 15 ms and the decoder 25 ms. The student starts from the
teacher's own weights for every layer it keeps, so it only learns to do without the dropped block.

Losses, per example (a crop of a pool image, flipped at random):
- encoder: MSE to the teacher encoder's latents of the same crop, so every denoiser trained on TAESD's latents
  works unchanged on the lite encoder's;
- decoder: L1 + MSE to the teacher decoder's output, from the teacher's latents, half of the time perturbed
  (z + sigma * noise, sigma ~ U(0, DECODER_NOISE)): a denoiser writes latents a little off the encoder's manifold,
  and the teacher decoder was finetuned for those (its colour and grey passes); matching the teacher there keeps
  what those passes taught, where a reconstruction target could not (the perturbed latents have no ground truth).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny

from movie_core.weights import replace_folder
from movie_plugins.autoencoders._sd1 import TAESD, TAESDLite
from movie_plugins.nano import train as nano_train
from movie_plugins.nano.chain import TAESD_LITE as LITE_FOLDER
from movie_plugins.nano.chain import TAESD_LITE_METRICS as METRICS

DECODER_NOISE = 0.6  # as finetune_taesd_decoder's max_noise: the spread of a denoiser's latents off the manifold
STATE = "taesd_lite_state.pt"


def lite_config(teacher: AutoencoderTiny) -> dict[str, Any]:
    """The teacher's config with its full-resolution blocks dropped (TAESD_LITE_BLOCKS)."""
    config = {k: v for k, v in dict(teacher.config).items() if not k.startswith("_") and k != "block_out_channels"}
    enc, dec = list(config["num_encoder_blocks"]), list(config["num_decoder_blocks"])
    config["num_encoder_blocks"] = [0] + enc[1:]
    config["num_decoder_blocks"] = dec[:-1] + [0]
    return config


def init_from_teacher(student: AutoencoderTiny, teacher: AutoencoderTiny) -> int:
    """Copy every teacher layer the student kept (the layer lists differ by the dropped block only); returns how
    many parameter tensors were copied."""
    copied = 0
    for s_net, t_net, drop_first in ((student.encoder, teacher.encoder, True), (student.decoder, teacher.decoder,
                                                                                 False)):
        t_layers = list(t_net.layers)
        dropped = next(i for i, m in (enumerate(t_layers) if drop_first else reversed(list(enumerate(t_layers))))
                       if type(m).__name__ == "AutoencoderTinyBlock")
        kept = t_layers[:dropped] + t_layers[dropped + 1:]
        s_layers = list(s_net.layers)
        if [type(m).__name__ for m in kept] != [type(m).__name__ for m in s_layers]:
            raise ValueError("taesd-lite: the student's layers are not the teacher's minus one block")
        for s, t in zip(s_layers, kept):
            s.load_state_dict(t.state_dict())
            copied += len(t.state_dict())
    return copied


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return round(float((-10 * torch.log10(mse)).mean()), 3)


@torch.no_grad()
def compare(student: TAESD, teacher: TAESD, images: np.ndarray) -> dict[str, float]:
    """Round-trip PSNR against the images of both, the student's against the teacher's output, and the latent MSE."""
    x = nano_train.to_tensor(images)
    zs, zt = student.encode(x), teacher.encode(x)
    ys, yt = student.decode(zs), teacher.decode(zt)
    return {"psnr_lite": _psnr(ys, x), "psnr_taesd": _psnr(yt, x), "psnr_lite_vs_taesd": _psnr(ys, yt),
            "latent_mse": round(float(F.mse_loss(zs, zt)), 6),
            "decoder_psnr_vs_taesd_same_latents": _psnr(student.decode(zt), yt)}


def distill_taesd_lite(folder: Path, *, steps: int, batch_size: int = 16, resolution: int = 128, crop: int = 64,
                       pool_size: int = 1024, lr: float = 5e-4, device: str = "cpu", seed: int = 0,
                       source: str = "mixed", log: nano_train.Log = print,
                       checkpoint_seconds: float = 120.0) -> dict[str, Any]:
    """Distil folder/taesd into folder/taesd-lite (resumable from folder/taesd_lite_state.pt); returns the metrics
    (also written to folder/METRICS)."""
    folder = Path(folder)
    teacher_tae = AutoencoderTiny.from_pretrained(folder / "taesd", use_safetensors=True).to(device).eval()
    teacher = TAESD(teacher_tae.requires_grad_(False)).eval()
    torch.manual_seed(seed)
    student_tae = AutoencoderTiny(**lite_config(teacher_tae)).to(device)
    copied = init_from_teacher(student_tae, teacher_tae)
    student = TAESDLite(student_tae)
    pool = torch.from_numpy(nano_train.make_pool(pool_size, resolution, seed=seed + 7, source=source))
    heldout = nano_train.heldout_scenes(32, resolution, seed)
    before = compare(student.eval(), teacher, heldout)
    log(f"taesd-lite: {copied} tensors from the teacher; held-out before training {before}")

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        g = torch.Generator().manual_seed(seed * 7919 + step)
        index, flips, offsets = nano_train._draw(step, len(pool), batch_size, resolution, crop, seed + 3)
        x = nano_train._crop(nano_train._images(pool, index, flips), offsets, crop).to(device)
        with torch.no_grad():
            z = teacher_tae.encoder(x)
            noisy = torch.rand(x.shape[0], 1, 1, 1, generator=g) < 0.5
            sigma = torch.rand(x.shape[0], 1, 1, 1, generator=g) * DECODER_NOISE
            z_in = z + torch.where(noisy, sigma, 0.0) * torch.randn(z.shape, generator=g)
            target = teacher_tae.decoder(z_in).clamp(-1, 1)
        enc = F.mse_loss(student_tae.encoder(x), z)
        y = student_tae.decoder(z_in).clamp(-1, 1)
        dec = F.l1_loss(y, target) + F.mse_loss(y, target)
        return enc + dec, {"encoder": enc.item(), "decoder": dec.item()}

    state = nano_train._train("taesd-lite", student_tae, loss_fn, steps=steps, lr=lr, state_file=folder / STATE,
                              checkpoint_seconds=checkpoint_seconds, log=log)
    after = compare(student.eval(), teacher, heldout)
    photos = nano_train.photos(256)
    metrics: dict[str, Any] = {
        "steps": steps, "batch_size": batch_size, "resolution": resolution, "crop": crop, "pool_size": pool_size,
        "lr": lr, "source": source, "seed": seed, "seconds": round(state["seconds"], 1),
        "heldout_before": before, "heldout": after,
        "photos_256": compare(student, teacher, photos) if photos is not None else None,
    }
    staging = folder / ".taesd-lite.tmp"  # TAESDLite.save_pretrained writes <root>/taesd-lite, then swapped in
    shutil.rmtree(staging, ignore_errors=True)
    student.save_pretrained(staging)
    replace_folder(staging / TAESDLite.subfolder, folder / LITE_FOLDER)
    shutil.rmtree(staging)
    (folder / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    (folder / STATE).unlink(missing_ok=True)
    log(f"taesd-lite: held-out {after}; photos {metrics['photos_256']}")
    return metrics
