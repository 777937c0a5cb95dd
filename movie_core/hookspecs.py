"""Hook specifications for movie plugins. The full contract is in docs/plugin_hooks.md."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("movie")
hookimpl = pluggy.HookimplMarker("movie")


@hookspec
def movie_register_autoencoders(registry):
    """Register autoencoder ComponentSpecs with registry.register(...)."""


@hookspec
def movie_register_denoisers(registry):
    """Register denoiser ComponentSpecs with registry.register(...)."""


@hookspec
def movie_register_distillers(registry):
    """Register distiller (training strategy) ComponentSpecs with registry.register(...)."""


@hookspec
def movie_register_backends(registry):
    """Register execution backend ComponentSpecs with registry.register(...)."""


@hookspec
def movie_register_commands(cli):
    """Add click commands to the `movie` command group."""
