"""Registers the `sd-vae` autoencoder: Stable Diffusion 1.5's KL VAE."""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_core.registry import ComponentSpec


@hookimpl
def movie_register_autoencoders(registry):
    registry.register(
        ComponentSpec(
            family="autoencoder",
            name="sd-vae",
            summary="Stable Diffusion 1.5 KL VAE (diffusers AutoencoderKL), 8x downsampling, 4 latent channels",
            factory="movie_plugins.autoencoders._sd1:build_sd_vae",
            latent_space="sd1",
        )
    )
