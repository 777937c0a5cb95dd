"""Registers the `adversarial` distiller: adversarial step distillation (paper Algorithm 2)."""

from __future__ import annotations

from movie_core.hookspecs import hookimpl
from movie_plugins.distillers import distiller_spec
from movie_plugins.distillers._options import AdversarialOptions

NAME = "adversarial"
SUMMARY = "Adversarial step distillation (Alg. 2): 5-step LCM teacher -> 1-step student, hinge GAN + MSE"


@hookimpl
def movie_register_distillers(registry):
    registry.register(distiller_spec(NAME, "_adversarial", "AdversarialDistiller", SUMMARY, AdversarialOptions))
