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
