"""Built-in denoisers: the four stages of the MoViE recipe."""

from __future__ import annotations

import attrs

SCHEDULERS = ("euler-ancestral", "euler", "ddim", "lcm")


@attrs.frozen(kw_only=True)
class DenoiserConfig:
    """Options shared by the built-in denoisers; None keeps the stage's default."""

    scheduler: str | None = attrs.field(default=None,
                                        validator=attrs.validators.optional(attrs.validators.in_(SCHEDULERS)))


def denoiser_spec(name: str, module: str, summary: str):
    """The spec every built-in stage registers: its module's `build` is the factory."""
    from movie_core.registry import ComponentSpec

    return ComponentSpec(
        family="denoiser",
        name=name,
        summary=summary,
        factory=f"{module}:build",
        config=DenoiserConfig,
        extra={"latent_space": "sd1", "stage": name},
    )
