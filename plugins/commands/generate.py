"""Adds `movie generate`: one image from a prompt with any text-to-image denoiser.

A denoiser is text-to-image when its describe() says `"task": "text-to-image"` (docs/plugin_hooks.md); its
`sample` then starts from noise and takes the latents it is given for their shape only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import click

from movie_core.hookspecs import hookimpl

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
DEFAULT_DENOISER = "stable-diffusion"


def generate_image(prompt: str, output: Path, *, height: int | None, width: int | None, overwrite: bool,
                   kw: dict[str, Any]) -> dict[str, Any]:
    """Build the recipe's pipeline, sample one latent for the prompt, decode and write it (atomically)."""
    import numpy as np
    import torch
    from PIL import Image

    from movie_core.errors import UsageError
    from movie_core.loading import RECIPE_FLAGS, load_pipeline, resolve_recipe

    if output.suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"{output}: the output must be an image ({', '.join(IMAGE_SUFFIXES)})")
    if output.exists() and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent} is not a folder")
    flags = {name: kw.get(name) for name in RECIPE_FLAGS}
    if not flags["model"] and not flags["init"]:
        raise UsageError("no weights: pass --model DIR (a diffusers text-to-image folder) or --init random")
    recipe, model, _ = resolve_recipe(flags)
    recipe = _folder_defaults(recipe, model, flags)
    pipe = load_pipeline(recipe, model)
    den = pipe.denoiser
    if den.describe().get("task") != "text-to-image":
        raise UsageError(f"denoiser '{recipe.denoiser}' edits images; `movie generate` needs a text-to-image one "
                         f"(e.g. {DEFAULT_DENOISER}, mobile-diffusion)")
    if den.describe().get("strength") is not None:
        raise UsageError("strength is for `movie edit` (img2img); `movie generate` starts from noise: drop it")
    down = pipe.decoder.downscale
    side = 512 if recipe.size == "full" else 128
    height, width = height or side, width or side
    if height % down or width % down:
        raise UsageError(f"height and width must be multiples of {down}, got {height}x{width}")
    steps = pipe.steps
    s_T = recipe.text_guidance
    device = pipe.device
    shape = torch.zeros(1, pipe.decoder.latent_channels, height // down, width // down, device=device,
                        dtype=pipe.dtype)
    with torch.no_grad():
        prompt_emb = pipe.prompt(prompt)
        latents = den.sample(shape, prompt_emb.text_emb, steps=steps, s_T=s_T, null_emb=prompt_emb.null_emb,
                             generator=pipe.generators(1)[0])
        image = pipe.decode(latents)[0]
    pixels = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    fd, tmp = tempfile.mkstemp(prefix=".movie-", suffix=output.suffix, dir=output.parent)
    os.close(fd)
    try:
        Image.fromarray(np.ascontiguousarray(pixels)).save(tmp)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"output": str(output), "denoiser": recipe.denoiser, "steps": steps, "text_guidance": s_T,
            "seed": recipe.seed, "height": height, "width": width, "model": str(model) if model else "random"}


def _folder_defaults(recipe, model: Path | None, flags: dict[str, Any]):
    """What a model folder without a movie.json implies when no flag says: the denoiser from unet/config.json's
    class (the MobileDiffusion UNet, else SD's) and the autoencoder from model_index.json's vae entry."""
    from movie_core.weights import MANIFEST, VAE_CLASSES, read_config

    if model is not None and (model / MANIFEST).is_file():
        return recipe
    changes: dict[str, Any] = {}
    if flags["denoiser"] is None:
        unet_config = model / "unet" / "config.json" if model is not None else None
        md = unet_config is not None and unet_config.is_file() and \
            read_config(unet_config).get("_class_name") == "MobileDiffusionUNet"
        changes["denoiser"] = "mobile-diffusion" if md else DEFAULT_DENOISER
    if model is not None and not (flags["vae"] or flags["encoder"] or flags["decoder"]):
        index = model / "model_index.json"
        vae = read_config(index).get("vae") if index.is_file() else None
        if isinstance(vae, list) and len(vae) == 2 and vae[1] in VAE_CLASSES:
            changes["vae"] = VAE_CLASSES[vae[1]]
    return recipe.replace(**changes) if changes else recipe


@hookimpl
def movie_register_commands(cli):
    from movie_core.options import recipe_options

    @cli.command()
    @click.option("-p", "--prompt", required=True, help="What to draw.")
    @click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output image (.png, .jpg).")
    @recipe_options
    @click.option("--height", type=click.IntRange(min=8), help="Image height (default 512 at full size, 128 nano).")
    @click.option("--width", type=click.IntRange(min=8), help="Image width (default as height).")
    @click.option("--overwrite", is_flag=True, help="Replace an existing output.")
    def generate(prompt: str, output: str, height: int | None, width: int | None, overwrite: bool, **kw: Any) -> None:
        """Generate an image from a prompt with a text-to-image denoiser (default stable-diffusion)."""
        info = generate_image(prompt, Path(output), height=height, width=width, overwrite=overwrite, kw=kw)
        click.echo(f"wrote {info['output']} ({info['width']}x{info['height']}, {info['denoiser']}, "
                   f"{info['steps']} steps, s_T {info['text_guidance']}, seed {info['seed']})")
