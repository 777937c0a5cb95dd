"""Adds `movie export`: a recipe's components prepared by a backend, written with a manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from movie_core.hookspecs import hookimpl
from movie_core.recipe import DETAIL_MODES


@hookimpl
def movie_register_commands(cli):
    from movie_core.options import recipe_options

    @cli.command()
    @recipe_options
    @click.option("--out", required=True, type=click.Path(), help="Folder to write the artifacts and manifest.json to.")
    @click.option("--height", type=click.IntRange(min=8), default=384, show_default=True, help="Frame height.")
    @click.option("--width", type=click.IntRange(min=8), default=512, show_default=True, help="Frame width.")
    @click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Frames per call.")
    @click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
    @click.option("--detail", type=click.Choice(DETAIL_MODES),
                  help="The output rule the manifest gives the app (as `movie edit --detail`): none resizes the "
                  "model's frames back; global / local apply its colour map to the source's own pixels (default: "
                  "the recipe's; the built-in model's is global).")
    @click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
    def export(out: str, height: int, width: int, batch_size: int, overwrite: bool, detail: str | None, as_json: bool,
               **kw: Any) -> None:
        """Export a recipe's text encoder, encoder, UNet and decoder as deployable artifacts for --backend."""
        from movie_core.options import resolve_recipe
        from movie_plugins.backends._export import export_recipe

        recipe, model, _ = resolve_recipe(kw, builtin=True)  # no --model/--init: the built-in nano weights
        if detail is not None:
            recipe = recipe.replace(detail=detail)
        manifest = export_recipe(recipe, model, Path(out), height=height, width=width, batch_size=batch_size,
                                 overwrite=overwrite)
        if as_json:
            click.echo(json.dumps(manifest, indent=2))
            return
        for name, c in manifest["components"].items():
            shapes = ", ".join(f"{k} {'x'.join(map(str, v['shape']))}" for k, v in c["inputs"].items())
            click.echo(f"{name:13} {c['precision']:8} {', '.join(c['files'])}  ({shapes})")
        click.echo(f"wrote {len(manifest['components'])} components for backend {manifest['backend']} -> {out}")
