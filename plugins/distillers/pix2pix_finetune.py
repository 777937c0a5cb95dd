"""Registers the `pix2pix-finetune` distiller: InstructPix2Pix training with conditioning dropout."""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_plugins.distillers import distiller_spec
from movie_plugins.distillers._options import Pix2PixFinetuneOptions

NAME = "pix2pix-finetune"
SUMMARY = "InstructPix2Pix training with conditioning dropout (finetune a stage, or after the attention removal)"


@hookimpl
def movie_register_distillers(registry):
    registry.register(distiller_spec(NAME, "_pix2pix_finetune", "Pix2PixFinetuneDistiller", SUMMARY,
                                     Pix2PixFinetuneOptions))
