"""Registers the `md-vae` autoencoder: MobileDiffusion's f = 8, c = 8 VAE with a lightweight decoder (Sec. 3.5)."""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_core.registry import ComponentSpec


@hookimpl
def movie_register_autoencoders(registry):
    registry.register(
        ComponentSpec(
            family="autoencoder",
            name="md-vae",
            summary="MobileDiffusion VAE (Sec. 3.5): 8x downsampling, 8 latent channels, width/depth-pruned decoder",
            factory="movie_plugins.autoencoders._md_vae:build_md_vae",
            latent_space="md8",
        )
    )
