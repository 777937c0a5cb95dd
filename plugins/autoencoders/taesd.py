"""Registers the `taesd` autoencoder (the Tiny AutoEncoder for Stable Diffusion) and `taesd-lite` (TAESD without its
full-resolution blocks, distilled into the same latent space)."""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_core.registry import ComponentSpec


@hookimpl
def movie_register_autoencoders(registry):
    registry.register(
        ComponentSpec(
            family="autoencoder",
            name="taesd",
            summary="Tiny AutoEncoder for SD (diffusers AutoencoderTiny): ~7% of the SD VAE's FLOPs, same latent space",
            factory="movie_plugins.autoencoders._sd1:build_taesd",
            latent_space="sd1",
        )
    )
    registry.register(
        ComponentSpec(
            family="autoencoder",
            name="taesd-lite",
            summary="TAESD without its full-resolution blocks (~1/3 of its CPU time), distilled into its latent space",
            factory="movie_plugins.autoencoders._sd1:build_taesd_lite",
            latent_space="sd1",
        )
    )
