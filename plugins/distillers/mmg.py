"""Registers the `mmg` distiller: multimodal guidance distillation (paper Algorithm 1)."""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_plugins.distillers import distiller_spec
from movie_plugins.distillers._options import MMGOptions

NAME = "mmg"
SUMMARY = "Multimodal guidance distillation (Alg. 1): 3-pass CFG teacher -> one pass with s_I, s_T embedded"


@hookimpl
def movie_register_distillers(registry):
    registry.register(distiller_spec(NAME, "_mmg", "MMGDistiller", SUMMARY, MMGOptions))
