"""Registers the `vpred` distiller: epsilon- to v-prediction conversion (paper Appendix B, Stage-4)."""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_plugins.distillers import distiller_spec
from movie_plugins.distillers._options import VPredOptions

NAME = "vpred"
SUMMARY = "epsilon -> v-prediction finetune of the guidance-distilled model (Stage-4 prep)"


@hookimpl
def movie_register_distillers(registry):
    registry.register(distiller_spec(NAME, "_vpred", "VPredDistiller", SUMMARY, VPredOptions))
