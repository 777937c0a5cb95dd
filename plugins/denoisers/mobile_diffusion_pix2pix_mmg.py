"""Registers the `mobile-diffusion-pix2pix-mmg` denoiser (the MobileDiffusion UNet as an editing backbone).

MobileDiffusion UNet, 8 input channels + guidance embeddings, epsilon, DDIM 10 steps (guidance-distilled).
"""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_plugins.denoisers import MD_LATENT_SPACES, MDEditConfig, denoiser_spec

NAME = "mobile-diffusion-pix2pix-mmg"
SUMMARY = "MobileDiffusion UNet, 8 input channels + guidance embeddings, epsilon, DDIM 10 steps (guidance-distilled)"


@hookimpl
def movie_register_denoisers(registry):
    registry.register(denoiser_spec(NAME, __name__, SUMMARY, config=MDEditConfig, latent_spaces=MD_LATENT_SPACES))


def build(ctx, config):
    """Build the denoiser (imports torch)."""
    from movie_plugins.denoisers import _md_edit

    return _md_edit.build(NAME, ctx, config)
