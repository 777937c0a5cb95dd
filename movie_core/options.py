"""The recipe flags and -O option parsing shared by the core commands and plugin commands.

Plugin commands import these from here, never from movie_core.cli (the CLI module imports the plugins)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from movie_core.errors import UsageError

RECIPE_FLAGS = (
    "preset", "recipe_file", "vae", "encoder", "decoder", "denoiser", "backend", "size", "init", "model",
    "steps", "scheduler", "text_guidance", "image_guidance", "seed", "device", "dtype", "anchor",
)


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
        click.option("--anchor", help="Cross-frame attention anchor: middle, first, none or a frame index."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def resolve_recipe(kw: dict[str, Any], builtin: bool = False):
    """Recipe flags -> (Recipe, model folder or None, init). Pops the flags from kw.

    builtin: with neither --model nor --init, run the recipe at nano size on the shipped nano weights of its
    denoiser stage (the default model), and say so on stderr."""
    from movie_core import recipe as recipes
    from movie_core.weights import BUILTIN_PREFIX, builtin_model, read_manifest, resolve_model

    flags = {name: kw.pop(name, None) for name in RECIPE_FLAGS}
    if flags["preset"] and flags["recipe_file"]:
        raise UsageError("--preset and --recipe are exclusive: pick one starting point")
    if flags["vae"] and (flags["encoder"] or flags["decoder"]):
        raise UsageError("--vae sets both encoder and decoder; use either --vae or --encoder/--decoder")
    if flags["init"] and flags["model"]:
        raise UsageError("--init random and --model are exclusive: random weights or loaded ones")
    model = resolve_model(flags["model"]) if flags["model"] else None
    if flags["preset"]:
        base = recipes.preset(flags["preset"])
    elif flags["recipe_file"]:
        base = recipes.load(flags["recipe_file"])
    else:
        manifest = read_manifest(model) if model else None
        base = recipes.make_recipe(manifest["recipe"]) if manifest and "recipe" in manifest else recipes.preset("movie")
    changes = {
        key: flags[key]
        for key in ("encoder", "decoder", "denoiser", "backend", "size", "steps", "scheduler", "text_guidance",
                    "image_guidance", "seed", "device", "dtype", "anchor", "vae")
        if flags[key] is not None
    }
    recipe = base.replace(**changes)
    if builtin and model is None and not flags["init"]:
        if recipe.size != "nano" and flags["size"]:
            raise UsageError(f"no built-in {recipe.size}-size weights: pass --model DIR (or --init random)")
        recipe = recipe.replace(size="nano")
        model = builtin_model(recipe.denoiser)
        if model is None:
            raise UsageError(f"no weights: the built-in nano '{recipe.denoiser}' model is not installed; "
                             "pass --model DIR (or --init random to run the recipe with random weights)")
        click.echo(f"note: no --model given: using the built-in nano model {BUILTIN_PREFIX}{recipe.denoiser} "
                   f"({recipe.encoder} encoder, {recipe.decoder} decoder, {recipe.steps or 'default'} steps)", err=True)
    return recipe, model, flags["init"]


def parse_options(pairs: tuple[str, ...], spec) -> Any:
    """-O key=value pairs -> a component's attrs options from its spec (values parsed as TOML scalars)."""
    from movie_core.recipe import tomllib

    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"-O takes key=value, got {pair!r}")
        try:
            values[key.replace("-", "_")] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.replace("-", "_")] = raw
    return spec.make_config(**values)
