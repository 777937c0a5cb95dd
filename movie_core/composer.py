"""Recipe -> Composition: every slot resolved to a component spec, with provenance and the checks that span slots.

Building the torch pipeline from a composition is movie_core.loading's (Pipeline.build)."""

from __future__ import annotations

from typing import Any

import attrs

from movie_core.errors import UsageError
from movie_core.plugins import get_registry
from movie_core.recipe import SLOTS, Recipe
from movie_core.registry import ComponentSpec, Registry

SLOT_FAMILY = {"encoder": "autoencoder", "decoder": "autoencoder", "denoiser": "denoiser", "backend": "backend"}


@attrs.frozen
class Composition:
    """A recipe whose component names resolved to specs, with the checks that span slots done."""

    recipe: Recipe
    specs: dict[str, ComponentSpec]

    def describe(self) -> dict[str, Any]:
        """Plain data: each slot's component, owning plugin and version, and the options."""
        out: dict[str, Any] = {
            slot: {"name": spec.name, "plugin": spec.plugin, "version": spec.version}
            for slot, spec in self.specs.items()
        }
        out["latent_space"] = self.specs["encoder"].latent_space
        out["options"] = self.recipe.options()
        return out

    def component_options(self, slot: str) -> dict[str, Any]:
        """The options a slot's component is built with: the recipe's sampler (denoiser) and its
        component_options for the slot (the spec's own defaults are applied by make_config)."""
        values: dict[str, Any] = {}
        if slot == "denoiser" and self.recipe.scheduler:
            values["scheduler"] = self.recipe.scheduler
        if slot == "denoiser" and self.specs["denoiser"].extra.get("latent_spaces"):
            values["latent_space"] = self.denoiser_latent_space()  # built for the autoencoder's latent space
        return values | dict(self.recipe.component_options.get(slot, {}))

    def denoiser_latent_space(self) -> str | None:
        """The latent space the denoiser is built for: its `latent_space` option when the recipe sets one, else the
        encoder's when the spec lists it under `extra["latent_spaces"]` (a denoiser that builds for several), else
        the spec's `extra["latent_space"]` (None: the denoiser states none)."""
        den = self.specs["denoiser"]
        asked = self.recipe.component_options.get("denoiser", {}).get("latent_space")
        if asked:
            return str(asked)
        enc = self.specs["encoder"].latent_space
        if enc in den.extra.get("latent_spaces", ()):
            return enc
        return den.extra.get("latent_space")

    def backend_available(self) -> tuple[bool, str]:
        """Whether the backend can run here, and why not."""
        backend_cls = self.specs["backend"].load_factory()
        return backend_cls.available()


def compose(recipe: Recipe, registry: Registry | None = None) -> Composition:
    """Resolve every slot of a recipe, failing with one line on unknown names, mismatched latents or factories
    that do not import."""
    registry = registry or get_registry()
    specs = {slot: registry.get(SLOT_FAMILY[slot], getattr(recipe, slot)) for slot in SLOTS}
    enc, dec = specs["encoder"], specs["decoder"]
    if enc.latent_space != dec.latent_space:
        raise UsageError(
            f"cannot pair encoder '{enc.name}' (latent space {enc.latent_space}) with decoder "
            f"'{dec.name}' (latent space {dec.latent_space}): hybrids need one latent space"
        )
    den = specs["denoiser"]
    composition = Composition(recipe=recipe, specs=specs)
    wanted = composition.denoiser_latent_space()
    if wanted and wanted != enc.latent_space:
        fits = [s.name for s in registry.specs("denoiser")
                if enc.latent_space in (s.extra.get("latent_spaces") or (s.extra.get("latent_space"),))]
        hint = f" (denoisers for {enc.latent_space}: {', '.join(fits)})" if fits else ""
        raise UsageError(
            f"denoiser '{den.name}' works in latent space {wanted}, "
            f"but autoencoder '{enc.name}' uses {enc.latent_space}{hint}"
        )
    for spec in specs.values():
        spec.load_factory()  # a factory that does not import fails here, naming its plugin, not at build time
    for slot, spec in specs.items():
        spec.make_config(**composition.component_options(slot))  # an unknown option: one line naming it, now
    return composition
