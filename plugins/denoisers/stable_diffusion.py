"""Registers the `stable-diffusion` denoiser.

SD-1.5 text-to-image UNet (4 input channels), CLIP-L text encoder, 2-pass CFG, DDIM 25 steps.
"""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_plugins.denoisers import TextToImageConfig, denoiser_spec

NAME = "stable-diffusion"
SUMMARY = "SD-1.5 text-to-image UNet (4 input channels), CLIP-L text encoder, 2-pass CFG, DDIM 25 steps"


@hookimpl
def movie_register_denoisers(registry):
    registry.register(denoiser_spec(NAME, __name__, SUMMARY, config=TextToImageConfig))


def build(ctx, config):
    """Build the denoiser (imports torch)."""
    from movie_plugins.denoisers import _t2i

    return _t2i.build(NAME, ctx, config)
