"""Adds `movie convert`: any model source to a model folder, optionally carrying an InstructPix2Pix UNet into the
Mobile-Pix2Pix architectures or a MobileDiffusion UNet into its editing stages."""

from __future__ import annotations

from pathlib import Path

import click

from movie_core.hookspecs import hookimpl

TARGETS = ("mobile-pix2pix", "mobile-pix2pix-mmg", "mobile-diffusion-pix2pix", "mobile-diffusion-pix2pix-mmg",
           "mobile-diffusion-pix2pix-1step")


@hookimpl
def movie_register_commands(cli):
    @cli.command()
    @click.argument("source")
    @click.option("--to", "target", type=click.Choice(TARGETS), default=None,
                  help="Target architecture (default: keep the source's, only write it as a model folder).")
    @click.option("--out", required=True, type=click.Path(), help="Output model folder.")
    @click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
    @click.option("--guidance-inject", type=click.Choice(("resnet", "time")), default=None,
                  help="How a guidance-embedded target takes s_I, s_T: 'resnet' (paper Sec. 3.3, each ResNet's own "
                  "linear layer; the default for a source without guidance layers) or 'time' (one projection added "
                  "to the time embedding, as the shipped nano family). A source with guidance layers keeps its own.")
    @click.option("--drop-top-attention", is_flag=True,
                  help="Without --to: keep the architecture but remove the top level's self- and cross-attention "
                  "(Sec. 4 Stage 1 on the text-to-image SD UNet, before it is finetuned as text-to-image).")
    def convert(source: str, target: str | None, out: str, overwrite: bool, guidance_inject: str | None,
                drop_top_attention: bool) -> None:
        """Write SOURCE as a model folder, its UNet converted with --to.

        SOURCE: a model folder, a Hugging Face cache snapshot or a repo id in the local cache (never downloaded),
        a .safetensors single file (movie's, or an original LDM-layout checkpoint such as
        instruct-pix2pix-00-22000.safetensors, converted with the SD-1.5 configs that ship with movie). --to drops
        the top-level attention (mobile) or adds zeroed guidance layers (mmg); a text-to-image SD-1.5 UNet also
        gets 4 zeroed image-latent input channels (the paper's Sec. 4 stage order); a MobileDiffusion UNet gets zeroed
        source-latent input channels and guidance layers (mobile-diffusion-pix2pix[-1step]).
        """
        from movie_plugins.denoisers._convert import convert_folder

        dest = convert_folder(source, target, Path(out), overwrite=overwrite, guidance_inject=guidance_inject,
                              drop_top_attention=drop_top_attention)
        done = f"wrote {target} model" if target else "wrote model folder"
        click.echo(f"{done} {dest}" + (" (top attention dropped)" if drop_top_attention else ""))
