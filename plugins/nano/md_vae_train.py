"""Training md-vae (MobileDiffusion Sec. 3.5) in the paper's two stages, at any size (the nano family uses nano).

stage 1  `train_vae`: the encoder with a full-width decoder (SD's decoder shape, `_md_vae.make_decoder(full=True)`),
         L2 reconstruction + a small KL term; then `calibrate` sets the scaling factor (1 / std of the latents).
stage 2  `train_decoder`: the lightweight decoder with the encoder FROZEN (no gradient reaches it, its weights stay
         bit-identical), L2 reconstruction, no KL ("we remove the unnecessary KL regularization").

The paper also uses a perceptual and an adversarial loss (the latter reduced in stage 2); neither is here: a perceptual
loss needs pretrained feature weights that this project cannot download, and at nano size L2 alone is what the nano
SD VAE is trained with (plugins/nano/train.py). Batches are drawn by (seed, step), so a run is reproducible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from movie_plugins.autoencoders._md_vae import MDVAE, make_decoder


def _batch(images: torch.Tensor, step: int, batch_size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    idx = torch.randint(0, images.shape[0], (batch_size,), generator=g)
    x = images[idx]
    flip = torch.rand(batch_size, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _params(modules: list[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def train_vae(ae: MDVAE, images: torch.Tensor, steps: int, *, lr: float = 1e-3, batch_size: int = 16,
              kl_weight: float = 1e-6, seed: int = 0, full_decoder: nn.Module | None = None
              ) -> tuple[nn.Module, list[dict[str, float]]]:
    """Stage 1: encoder + full-width decoder. Returns that decoder (not part of md-vae) and the per-step losses."""
    device = next(ae.parameters()).device
    decoder = full_decoder if full_decoder is not None else make_decoder(ae.config, full=True).to(device)
    modules = [*ae.encoder_modules(), ae.post_quant_conv, decoder]
    for m in modules:
        m.train().requires_grad_(True)
    opt = torch.optim.AdamW(_params(modules), lr=lr, weight_decay=0.0)
    log = []
    for step in range(steps):
        x = _batch(images, step, batch_size, seed).to(device)
        mean, logvar = ae.moments(x)
        g = torch.Generator(device="cpu").manual_seed(seed + step)
        z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g).to(device)
        rec = F.mse_loss(ae.decode_unscaled(z, decoder), x)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()
        loss = rec + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append({"step": step + 1, "rec": rec.item(), "kl": kl.item()})
    for m in modules:
        m.eval().requires_grad_(False)
    return decoder, log


@torch.no_grad()
def calibrate(ae: MDVAE, images: torch.Tensor, batch_size: int = 64) -> float:
    """Set md-vae's scaling factor to 1 / the standard deviation of its (unscaled) latents on `images`; returns it."""
    device = next(ae.parameters()).device
    means = torch.cat([ae.moments(chunk.to(device))[0].cpu() for chunk in images.split(batch_size)])
    factor = float(1.0 / means.double().std().clamp_min(1e-6))
    ae.set_scaling_factor(factor)
    return factor


@torch.no_grad()
def reconstruction_loss(ae: MDVAE, images: torch.Tensor, batch_size: int = 64) -> float:
    """Mean squared error of decode(encode(x)) against x (images in [-1, 1])."""
    device = next(ae.parameters()).device
    total, count = 0.0, 0
    for chunk in images.split(batch_size):
        chunk = chunk.to(device)
        total += F.mse_loss(ae.decode_unscaled(ae.moments(chunk)[0]), chunk, reduction="sum").item()
        count += chunk.numel()
    return total / count


def train_decoder(ae: MDVAE, images: torch.Tensor, steps: int, *, lr: float = 1e-3, batch_size: int = 16,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Stage 2: the lightweight decoder learns to reconstruct from the frozen encoder's latents (the posterior mode,
    what a diffusion model's output stands for). Only the decoder and its post-quant conv receive gradients."""
    device = next(ae.parameters()).device
    for m in ae.encoder_modules():
        m.eval().requires_grad_(False)
    trainable = ae.decoder_modules()
    for m in trainable:
        m.train().requires_grad_(True)
    opt = torch.optim.AdamW(_params(trainable), lr=lr, weight_decay=0.0)
    log: list[dict[str, Any]] = []
    for step in range(steps):
        x = _batch(images, step, batch_size, seed).to(device)
        with torch.no_grad():
            z = ae.moments(x)[0]
        loss = F.mse_loss(ae.decode_unscaled(z), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append({"step": step + 1, "rec": loss.item()})
    for m in trainable:
        m.eval().requires_grad_(False)
    return log


# ------------------------------------------------------------------------------ the nano-train stage

class Stage1(nn.Module):
    """md-vae's encoder with the full-width stage-1 decoder, trained as one module."""

    def __init__(self, ae: MDVAE) -> None:
        super().__init__()
        self.ae = ae
        self.full_decoder = make_decoder(ae.config, full=True)

    def loss(self, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """The chain's VAE loss (nano train._vae_loss): L1 + MSE of a posterior sample's reconstruction + SD's KL."""
        from movie_plugins.nano.train import KL_WEIGHT, _reconstruction

        mean, logvar = self.ae.moments(x)
        z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g).to(mean)
        rec = _reconstruction(self.ae.decode_unscaled(z, self.full_decoder), x)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean() / x[0].numel()
        return rec + KL_WEIGHT * kl, {"rec": rec.item(), "kl": kl.item()}


def decoder_loss(ae: MDVAE, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 2: the light decoder's reconstruction (L1 + MSE) from the frozen encoder's posterior mode."""
    from movie_plugins.nano.train import _reconstruction

    with torch.no_grad():
        z = ae.moments(x)[0]
    rec = _reconstruction(ae.decode_unscaled(z), x)
    return rec, {"rec": rec.item()}


@torch.no_grad()
def _psnr(ae: MDVAE, images: torch.Tensor) -> float:
    values = []
    for chunk in images.split(16):
        y = ae.decode(ae.encode(chunk)).clamp(-1, 1)
        values += (-10 * torch.log10(((y - chunk) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10))).tolist()
    return round(sum(values) / len(values), 3)


def train_nano(out: Path, *, steps: int, decoder_steps: int, batch_size: int = 64, resolution: int = 64,
               crop: int = 32, whole_every: int = 4, pool_size: int = 4096, size: str = "nano", device: str = "cpu",
               seed: int = 0, checkpoint_seconds: float = 120.0, log=print, source: str = "procedural"
               ) -> dict[str, Any]:
    """md-vae for the nano family, the paper's two stages on the chain's autoencoder pool and batches (the pool of
    `movie nano-train`'s autoencoders stage, `source` as its data): stage 1 trains the encoder with the full-width
    decoder for `steps`, the scaling factor is calibrated on the pool, stage 2 trains the light decoder on the
    frozen encoder for `decoder_steps`. Writes out/md_vae (as build_md_vae loads it). Checkpointed in
    out/.md_vae.ckpt (every `checkpoint_seconds` and after stage 1): calling again with the same settings resumes;
    the folder goes once out/md_vae is in place. Returns the metrics (PSNR on held-out scenes and photos, at the
    training resolution and twice it)."""
    import json
    import shutil

    from movie_core.weights import replace_folder
    from movie_plugins.autoencoders._md_vae import SUBFOLDER, config_for, load_md_vae
    from movie_plugins.nano import train as nano_train

    out = Path(out)
    ckpt = out / ".md_vae.ckpt"
    config = {"steps": steps, "decoder_steps": decoder_steps, "batch_size": batch_size, "resolution": resolution,
              "crop": crop, "whole_every": whole_every, "pool_size": pool_size, "size": size, "seed": seed,
              "source": source}
    nano_train._check_config(ckpt, config)
    pool = nano_train._load_pool(ckpt, pool_size, resolution, seed, log, source)
    batches = dict(batch_size=batch_size, crop=min(crop, resolution), whole_every=whole_every, seed=seed,
                   device=device)
    train = dict(lr=5e-4, checkpoint_seconds=checkpoint_seconds, log=log)
    metrics: dict[str, Any] = {"config": config}
    stage1_done = ckpt / "stage1"
    if (stage1_done / SUBFOLDER / "config.json").is_file():
        log("md-vae: stage 1 already trained, loading it")
        ae = load_md_vae(stage1_done / SUBFOLDER).to(device)
        metrics.update(json.loads((ckpt / "stage1_metrics.json").read_text()))
    else:
        torch.manual_seed(seed + 2)
        ae = MDVAE(config_for(size))
        model = Stage1(ae).to(device)
        state = nano_train._train("md-vae stage 1", model, nano_train.vae_batches(pool, model.loss, **batches),
                                  steps=steps, state_file=ckpt / "stage1_state.pt", **train)
        ae.eval()
        images = nano_train.to_tensor(pool.numpy())
        factor = calibrate(ae, images.to(device))
        log(f"md-vae: scaling factor {factor:.4f} (1 / std of the pool's latents)")
        metrics["stage1"] = {"seconds": round(state["seconds"], 1), "scaling_factor": round(factor, 6),
                             "final_rec": state["history"][-1]["rec"] if state["history"] else None}
        tmp = ckpt / "stage1.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        ae.save_pretrained(tmp)
        (ckpt / "stage1_metrics.json").write_text(json.dumps({"stage1": metrics["stage1"]}, indent=2) + "\n")
        tmp.replace(stage1_done)
        (ckpt / "stage1_state.pt").unlink(missing_ok=True)
    for m in ae.encoder_modules():
        m.eval().requires_grad_(False)
    light = nn.ModuleList(ae.decoder_modules())
    light.requires_grad_(True)
    state = nano_train._train("md-vae stage 2", light, nano_train.vae_batches(pool, lambda x, g: decoder_loss(ae, x, g),
                                                                     **batches),
                              steps=decoder_steps, state_file=ckpt / "stage2_state.pt", **train)
    ae.eval().requires_grad_(False)
    metrics["stage2"] = {"seconds": round(state["seconds"], 1),
                         "final_rec": state["history"][-1]["rec"] if state["history"] else None}
    metrics["psnr"] = {name: _psnr(ae.cpu(), nano_train.to_tensor(images))
                       for name, images in nano_train._evaluation_sets(resolution, seed, 64,
                                                                       (resolution, 2 * resolution)).items()}
    log("md-vae PSNR: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics["psnr"].items()))
    tmp = out / ".md_vae.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ae.save_pretrained(tmp)
    replace_folder(tmp / SUBFOLDER, out / SUBFOLDER)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(ckpt)
    return metrics
