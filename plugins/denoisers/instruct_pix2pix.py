"""Registers the `instruct-pix2pix` denoiser.

SD-1.5 InstructPix2Pix UNet (8 input channels), CLIP-L text encoder, 3-pass CFG, 10 steps.
"""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_plugins.denoisers import denoiser_spec

NAME = "instruct-pix2pix"
SUMMARY = "SD-1.5 InstructPix2Pix UNet (8 input channels), CLIP-L text encoder, 3-pass CFG, 10 steps"


@hookimpl
def movie_register_denoisers(registry):
    registry.register(denoiser_spec(NAME, __name__, SUMMARY))


def build(ctx, config):
    """Build the denoiser (imports torch)."""
    from movie_plugins.denoisers import _pix2pix

    return _pix2pix.build(NAME, ctx, config)
