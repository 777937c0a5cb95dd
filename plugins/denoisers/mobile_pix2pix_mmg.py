"""Registers the `mobile-pix2pix-mmg` denoiser.

Mobile-Pix2Pix with image/text guidance-scale embeddings: one UNet pass per step.
"""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_plugins.denoisers import GuidedConfig, denoiser_spec

NAME = "mobile-pix2pix-mmg"
SUMMARY = "Mobile-Pix2Pix with image/text guidance-scale embeddings: one UNet pass per step"


@hookimpl
def movie_register_denoisers(registry):
    registry.register(denoiser_spec(NAME, __name__, SUMMARY, GuidedConfig))


def build(ctx, config):
    """Build the denoiser (imports torch)."""
    from movie_plugins.denoisers import _pix2pix

    return _pix2pix.build(NAME, ctx, config)
