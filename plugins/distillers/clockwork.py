"""Registers the `clockwork` distiller: a Clockwork adaptor for a frozen model (step or frame clock)."""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_plugins.distillers import distiller_spec
from movie_plugins.distillers._options import ClockworkOptions

NAME = "clockwork"
SUMMARY = "Clockwork adaptor for a frozen model (step clock: unrolled trajectories; frame clock: video frames)"


@hookimpl
def movie_register_distillers(registry):
    registry.register(distiller_spec(NAME, "_clockwork", "ClockworkDistiller", SUMMARY, ClockworkOptions))
