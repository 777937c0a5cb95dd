"""The recipe flags (click options) shared by the core commands and plugin commands.

Plugin commands import these from here, never from movie_core.cli (the CLI module imports the plugins)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from movie_core.recipe import FRAME_BLENDS


def _guidance(ctx, param, value):
    if value is None:
        return None
    if not value >= 0 or value > 100:
        raise click.BadParameter(f"must be between 0 and 100, got {value}")
    return value


def recipe_options(fn: Callable) -> Callable:
    """The recipe flags every command takes, the same way."""
    opts = [
        click.option("--preset", help="Start from a shipped recipe: base, mobile, mmg, movie (paper Table 1)."),
        click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False), help="Start from a recipe TOML file."),
        click.option("--vae", help="Autoencoder for both encoder and decoder."),
        click.option("--encoder", help="Autoencoder that encodes frames (hybrids need one latent space)."),
        click.option("--decoder", help="Autoencoder that decodes frames."),
        click.option("--denoiser", help="Denoiser (see `movie list denoiser`)."),
        click.option("--backend", help="Execution backend (see `movie list backend`)."),
        click.option("--size", type=click.Choice(["full", "nano"]), help="Model size: full (SD-1.5 shapes) or nano."),
        click.option("--init", type=click.Choice(["random"]), help="Build with random weights (no --model needed)."),
        click.option("--model", help="Model folder, single .safetensors file, or a repo id in the local HF cache."),
        click.option("--steps", type=click.IntRange(min=1), help="Sampling steps (default: the denoiser's)."),
        click.option("--scheduler", help="Sampler: ddim, euler, euler-ancestral or lcm (default: the denoiser's)."),
        click.option("--text-guidance", type=float, callback=_guidance, help="Text guidance scale s_T."),
        click.option("--image-guidance", type=float, callback=_guidance, help="Image guidance scale s_I."),
        click.option("--seed", type=int, help="Random seed (weights at --init random, and noise)."),
        click.option("--device", help="cpu, cuda, cuda:N, mps or auto."),
        click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Compute precision."),
        click.option(
            "--variant",
            help="Weights variant of the model folder (fp16: *.fp16.safetensors); "
            "default: the plain weights, else the only variant present.",
        ),
        click.option("--anchor", help="Cross-frame attention anchor: middle, first, none or a frame index."),
        click.option(
            "--clock",
            type=click.IntRange(min=1),
            help="Clockwork: the full UNet runs every N-th step, the adaptor stands in for its "
            "low-resolution core on the others (1: off).",
        ),
        click.option(
            "--clock-schedule",
            metavar="I,J,...",
            help="Clockwork: the steps that run the full UNet, e.g. 0,1,3,5 (instead of --clock; starts at 0).",
        ),
        click.option(
            "--adaptor",
            help="Clockwork: what replaces the low-resolution core: identity (reuse the last full evaluation's "
            "features), trained (the model folder's adaptor/, from `movie distill clockwork`) or a path to one.",
        ),
        click.option(
            "--frame-clock",
            type=click.IntRange(min=1),
            help="Clockwork across video frames: the full UNet runs on every N-th frame (and the anchor), the "
            "adaptor on the others from the last full frame's features (1: off; not with --clock).",
        ),
        click.option(
            "--frame-blend",
            type=click.Choice(list(FRAME_BLENDS)),
            help="Frame clock: what the adaptor of a frame between full frames starts from: linear (the full "
            "frames' features on either side, blended by distance; the last full frame's where no later one is "
            "known; default) or previous (the last full frame's always).",
        ),
        click.option(
            "-O",
            "--option",
            "options",
            multiple=True,
            metavar="SLOT.KEY=VALUE",
            help="A component's option, e.g. -O backend.dynamic_batch=false, -O denoiser.scheduler=ddim "
            "(a bare KEY=VALUE is the backend's; see `movie list FAMILY`).",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def resolve_recipe(kw: dict[str, Any], builtin: bool = False):
    """Recipe flags -> (Recipe, model folder or None, init), popping the flags from kw (movie_core.loading
    resolves them; its notes go to stderr)."""
    from movie_core.loading import RECIPE_FLAGS
    from movie_core.loading import resolve_recipe as resolve

    flags = {name: kw.pop(name, None) for name in RECIPE_FLAGS}
    return resolve(flags, builtin=builtin, note=lambda text: click.echo(f"note: {text}", err=True))
