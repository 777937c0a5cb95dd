"""Registers the `mobile-diffusion` denoiser (text-to-image, MobileDiffusion Table 6).

MobileDiffusion UNet (320, 640, 1024; SA x3 + CA x3 innermost), CLIP-L text encoder, 2-pass CFG, DDIM 25 steps.
Option `attention=relu` runs the attention with relu instead of softmax (the paper's mobile fine-tune).
"""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_plugins.denoisers import MD_LATENT_SPACES, MobileDiffusionConfig, denoiser_spec

NAME = "mobile-diffusion"
SUMMARY = ("MobileDiffusion UNet (320, 640, 1024; SA x3 + CA x3 innermost), CLIP-L text encoder, "
           "2-pass CFG, DDIM 25 steps")


@hookimpl
def movie_register_denoisers(registry):
    registry.register(denoiser_spec(NAME, __name__, SUMMARY, config=MobileDiffusionConfig,
                                    latent_spaces=MD_LATENT_SPACES))


def build(ctx, config):
    """Build the denoiser (imports torch)."""
    from movie_plugins.denoisers import _t2i

    return _t2i.build(NAME, ctx, config)
