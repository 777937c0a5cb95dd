"""Registers the `t2i-train` distiller: text-to-image training (diffusion loss, caption dropout) on captioned images."""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_plugins.distillers import distiller_spec
from movie_plugins.distillers._options import T2ITrainOptions

NAME = "t2i-train"
SUMMARY = ("text-to-image training on (image, caption) data: diffusion loss, caption dropout for CFG; from a "
           "text-to-image folder or a random UNet with a folder's text tower and autoencoders")


@hookimpl
def movie_register_distillers(registry):
    registry.register(distiller_spec(NAME, "_t2i_train", "T2ITrain", SUMMARY, T2ITrainOptions))
