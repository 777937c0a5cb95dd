"""Adds `movie convert`: carry an InstructPix2Pix folder's weights into the Mobile-Pix2Pix architectures, and a
MobileDiffusion folder's into its editing stages."""

from __future__ import annotations

from pathlib import Path

import click

from movie_core.hookspecs import hookimpl

TARGETS = ("mobile-pix2pix", "mobile-pix2pix-mmg", "mobile-diffusion-pix2pix", "mobile-diffusion-pix2pix-1step")


@hookimpl
def movie_register_commands(cli):
    @cli.command()
    @click.argument("source", type=click.Path(file_okay=False))
    @click.option("--to", "target", type=click.Choice(TARGETS), required=True, help="Target architecture.")
    @click.option("--out", required=True, type=click.Path(), help="Output model folder.")
    @click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
    def convert(source: str, target: str, out: str, overwrite: bool) -> None:
        """Convert an InstructPix2Pix or MobileDiffusion model folder.

        Drops the top-level attention (mobile), adds zeroed guidance layers (mmg); a MobileDiffusion UNet gets
        zeroed source-latent input channels and guidance layers (mobile-diffusion-pix2pix[-1step]).
        """
        from movie_plugins.denoisers._convert import convert_folder

        dest = convert_folder(Path(source), target, Path(out), overwrite=overwrite)
        click.echo(f"wrote {target} model {dest}")
