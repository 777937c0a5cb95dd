"""Recipe -> Composition (validated specs with provenance) -> Pipeline (built torch modules)."""

from __future__ import annotations

from pathlib import Path
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
    wanted = den.extra.get("latent_space")
    if wanted and wanted != enc.latent_space:
        raise UsageError(
            f"denoiser '{den.name}' works in latent space {wanted}, but autoencoder '{enc.name}' uses {enc.latent_space}"
        )
    for spec in specs.values():
        spec.load_factory()  # a factory that does not import fails here, naming its plugin, not at build time
    return Composition(recipe=recipe, specs=specs)


def build(composition: Composition, model: str | Path | None = None, meta: bool = False):
    """Build the torch pipeline: random weights, weights from a model folder, or on the meta device."""
    from movie_core.pipeline import Pipeline

    return Pipeline.build(composition, model=Path(model) if model else None, meta=meta)
