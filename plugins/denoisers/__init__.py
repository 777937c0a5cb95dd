"""Built-in denoisers: the four stages of the MoViE recipe, and the text-to-image ones (SD-1.5, MobileDiffusion)."""

from __future__ import annotations

import attrs

SCHEDULERS = ("euler-ancestral", "euler", "ddim", "lcm")


@attrs.frozen(kw_only=True)
class DenoiserConfig:
    """Options shared by the built-in denoisers; None keeps the stage's default."""

    scheduler: str | None = attrs.field(default=None,
                                        validator=attrs.validators.optional(attrs.validators.in_(SCHEDULERS)))


@attrs.frozen(kw_only=True)
class GuidedConfig(DenoiserConfig):
    """The guidance-embedded Pix2Pix stages' options: guidance_inject 'resnet' (paper Sec. 3.3: each ResNet block's
    own linear layer) or 'time' (one projection added to the time embedding; the shipped nano family) for a random
    init; a loaded model keeps its weights' own (None)."""

    guidance_inject: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(("resnet", "time"))))


def _strength(instance, attribute, value) -> None:
    if value is not None and not 0 < value <= 1:
        raise ValueError(f"strength must be in (0, 1], got {value}")


@attrs.frozen(kw_only=True)
class TextToImageConfig(DenoiserConfig):
    """Text-to-image denoisers' options: `strength` makes `movie edit` an img2img (SDEdit) stylization: the source
    latents are noised to that fraction of the schedule and denoised with the prompt (None: from pure noise)."""

    strength: float | None = attrs.field(default=None, validator=_strength)


@attrs.frozen(kw_only=True)
class MobileDiffusionConfig(TextToImageConfig):
    """The MobileDiffusion denoisers' options: softmax or relu attention (None keeps the weights' own)."""

    attention: str | None = attrs.field(default=None,
                                        validator=attrs.validators.optional(attrs.validators.in_(("softmax", "relu"))))


def denoiser_spec(name: str, module: str, summary: str, config: type = DenoiserConfig):
    """The spec every built-in stage registers: its module's `build` is the factory."""
    from movie_core.registry import ComponentSpec

    return ComponentSpec(
        family="denoiser",
        name=name,
        summary=summary,
        factory=f"{module}:build",
        config=config,
        extra={"latent_space": "sd1", "stage": name},
    )
