"""Adds `movie data`: training datasets; `movie data nano` writes the procedural nano dataset (edits), `movie data
captions` captioned procedural scenes (text-to-image)."""

from __future__ import annotations

import click

from movie_core.hookspecs import hookimpl


@hookimpl
def movie_register_commands(cli):
    @cli.group()
    def data() -> None:
        """Training datasets: (source image, instruction, edited image) triplets, or captioned images."""

    @data.command()
    @click.option("--out", required=True, type=click.Path(), help="Dataset folder to write.")
    @click.option("--count", type=click.IntRange(min=0), default=2000, show_default=True,
                  help="Image triplets (train + test).")
    @click.option("--videos", type=click.IntRange(min=0), default=16, show_default=True,
                  help="Video triplets (train + test).")
    @click.option("--frames", type=click.IntRange(min=2, max=1000), default=16, show_default=True,
                  help="Frames per video.")
    @click.option("--size", type=click.IntRange(min=8, max=2048), default=64, show_default=True,
                  help="Image and frame size in pixels (square).")
    @click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Dataset seed.")
    @click.option("--test-fraction", type=click.FloatRange(min=0, max=1, max_open=True), default=0.1,
                  show_default=True, help="Share held out for the test split (disjoint seeds, held-out phrasings).")
    @click.option("--source", type=click.Choice(["procedural", "photos", "mixed"]), default="procedural",
                  show_default=True,
                  help="procedural scenes; photos: crops of and camera moves over photographs shipped in scikit-image "
                       "and scikit-learn, and photographic scenes with faces (never the evaluation photographs); "
                       "mixed: half each.")
    @click.option("--overwrite", is_flag=True, help="Replace an existing dataset folder.")
    def nano(out: str, count: int, videos: int, frames: int, size: int, seed: int, test_fraction: float,
             source: str, overwrite: bool) -> None:
        """Render procedural scenes and global edits (grayscale, sepia, tints, ...) with exact ground truth.

        Writes OUT/train and OUT/test imagefolders (metadata.jsonl: input_image, edited_image,
        edit_prompt), OUT/videos/{train,test}/NNNN (PNG frames, H.264 previews, meta.json) and
        OUT/dataset.json. The test split uses seeds and phrasings that the train split never sees.
        With --source photos or mixed, dataset.json lists the photographs that train (package, name,
        licence) and the ones held out for evaluation.
        """
        from movie_core.data.writer import write_nano

        summary = write_nano(out, count=count, videos=videos, frames=frames, size=size, seed=seed,
                             test_fraction=test_fraction, overwrite=overwrite, source=source)
        images, vids = summary["images"], summary["videos"]
        click.echo(
            f"wrote {out}: {images['train']} train + {images['test']} test images, "
            f"{vids['train']} + {vids['test']} videos of {frames} frames, {size}x{size}, "
            f"{len(summary['edits'])} edits, {source}, seed {seed} ({summary['seconds']:.1f} s)"
        )

    @data.command()
    @click.option("--out", required=True, type=click.Path(), help="Dataset folder to write.")
    @click.option("--count", type=click.IntRange(min=2), default=20000, show_default=True,
                  help="Captioned images (train + test).")
    @click.option("--size", type=click.IntRange(min=16, max=2048), default=64, show_default=True,
                  help="Image size in pixels (square).")
    @click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Dataset seed.")
    @click.option("--test-fraction", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=0.05,
                  show_default=True, help="Share held out for the test split (held-out colour x shape x position "
                                          "combinations only).")
    @click.option("--two-shapes", type=click.FloatRange(min=0, max=1), default=0.3, show_default=True,
                  help="Share of scenes with two shapes.")
    @click.option("--overwrite", is_flag=True, help="Replace an existing dataset folder.")
    def captions(out: str, count: int, size: int, seed: int, test_fraction: float, two_shapes: float,
                 overwrite: bool) -> None:
        """Render captioned procedural scenes for text-to-image training: a background colour and one or two
        coloured shapes at named positions, with a caption written from that spec ("a red circle on the left,
        blue background").

        Writes OUT/train and OUT/test imagefolders (NNNNNN.png; metadata.jsonl: file_name, text, spec, seed) and
        OUT/dataset.json (palette, regions, the held-out combinations). The test split's scenes use only colour x
        shape x position combinations that no training scene shows. scripts/t2i_prompt_following.py scores a
        model on it.
        """
        from movie_core.data.captions import write_captions

        summary = write_captions(out, count=count, size=size, seed=seed, test_fraction=test_fraction,
                                 two_shapes=two_shapes, overwrite=overwrite)
        images = summary["images"]
        click.echo(f"wrote {out}: {images['train']} train + {images['test']} test captioned images, {size}x{size}, "
                   f"{len(summary['held_out'])} held-out combinations, seed {seed} ({summary['seconds']:.1f} s)")
