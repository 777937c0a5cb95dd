"""Registers the `mobile-pix2pix` denoiser.

InstructPix2Pix without attention at the highest UNet resolution (-12% UNet FLOPs), 3-pass CFG.
"""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_plugins.denoisers import denoiser_spec

NAME = "mobile-pix2pix"
SUMMARY = "InstructPix2Pix without attention at the highest UNet resolution (-12% UNet FLOPs), 3-pass CFG"


@hookimpl
def movie_register_denoisers(registry):
    registry.register(denoiser_spec(NAME, __name__, SUMMARY))


def build(ctx, config):
    """Build the denoiser (imports torch)."""
    from movie_plugins.denoisers import _pix2pix

    return _pix2pix.build(NAME, ctx, config)
