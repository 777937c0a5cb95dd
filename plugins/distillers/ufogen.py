"""Registers the `ufogen` distiller: UFOGen one-step diffusion-GAN fine-tuning (MobileDiffusion Sec. 4, Eq. 1-3)."""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_plugins.distillers import distiller_spec
from movie_plugins.distillers._options import UFOGenOptions

NAME = "ufogen"
SUMMARY = ("UFOGen one-step fine-tuning (MobileDiffusion Sec. 4): x0 generator + UNet discriminator on x_{t-1}; "
           "recon=diffusion|distill|ema, lora=RANK")


@hookimpl
def movie_register_distillers(registry):
    registry.register(distiller_spec(NAME, "_ufogen", "UFOGenDistiller", SUMMARY, UFOGenOptions))
