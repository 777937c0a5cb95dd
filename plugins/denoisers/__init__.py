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


# The latent spaces the MobileDiffusion denoisers build for: SD's (4 channels) and md-vae's (8 channels, Sec. 3.5)
MD_LATENT_SPACES = ("sd1", "md8")
LATENT_CHANNELS = {"sd1": 4, "md8": 8}


def _latent_space_field():
    return attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.in_(MD_LATENT_SPACES)))


@attrs.frozen(kw_only=True)
class MobileDiffusionConfig(TextToImageConfig):
    """The MobileDiffusion denoisers' options: softmax or relu attention (None keeps the weights' own);
    `latent_space` sd1 (4 channels) or md8 (md-vae's 8 channels): the composer sets it to the autoencoder's."""

    attention: str | None = attrs.field(default=None,
                                        validator=attrs.validators.optional(attrs.validators.in_(("softmax", "relu"))))
    latent_space: str | None = _latent_space_field()


@attrs.frozen(kw_only=True)
class MDEditConfig(DenoiserConfig):
    """The MobileDiffusion editing denoisers' options: `latent_space` sd1 (4 latent channels, 8 UNet inputs) or md8
    (md-vae's 8 channels, 16 UNet inputs); the composer sets it to the autoencoder's."""

    latent_space: str | None = _latent_space_field()


def denoiser_spec(name: str, module: str, summary: str, config: type = DenoiserConfig,
                  latent_spaces: tuple[str, ...] = ()):
    """The spec every built-in stage registers: its module's `build` is the factory. `latent_spaces`: the spaces a
    denoiser builds for (its config's `latent_space` option; the composer picks the autoencoder's)."""
    from movie_core.registry import ComponentSpec

    extra: dict = {"latent_space": "sd1", "stage": name}
    if latent_spaces:
        extra["latent_spaces"] = list(latent_spaces)
    return ComponentSpec(
        family="denoiser",
        name=name,
        summary=summary,
        factory=f"{module}:build",
        config=config,
        extra=extra,
    )
