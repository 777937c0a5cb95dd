"""Adds `movie ablate`: vary recipe slots and options, measure FLOPs / speed / quality per cell, table + charts."""

from __future__ import annotations

import json
from typing import Any

import click

from movie_core.hookspecs import hookimpl

EPILOG = (
    "KEY is a recipe slot (encoder, decoder, vae, denoiser, backend), `preset` (the starting recipe) or a recipe "
    "option (steps, text_guidance, image_guidance, seed, anchor, dtype, ...). A --vary with one value fixes that "
    "setting for every cell. Finished cells are kept in OUT/cells/: running the same command again resumes."
)


@hookimpl
def movie_register_commands(cli):
    @cli.command("ablate", epilog=EPILOG)
    @click.argument("base")
    @click.option("--vary", "varies", multiple=True, metavar="KEY=V1,V2,...",
                  help="A factor and its values (repeatable).")
    @click.option("--one-at-a-time", is_flag=True,
                  help="The base plus one change at a time, instead of every combination.")
    @click.option("--measure", default="flops", show_default=True, help="Comma-separated: flops, bench, eval.")
    @click.option("--data", type=click.Path(),
                  help="Dataset with ground truth for eval (e.g. `movie data nano` output).")
    @click.option("--out", default="ablation", show_default=True, type=click.Path(),
                  help="Folder for the table, charts and finished cells.")
    @click.option("--size", type=click.Choice(["full", "nano"]),
                  help="Model size of every cell (bench and eval without --model: nano, on the built-in weights).")
    @click.option("--model", help="Weights for bench/eval: a model folder, nano:<stage>, or `random` "
                                  "(default: each cell's built-in nano model).")
    @click.option("--split", default="test", show_default=True, help="Dataset split for eval.")
    @click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N samples.")
    @click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                  help="Images per batch (eval).")
    @click.option("--height", type=click.IntRange(min=8), default=480, show_default=True,
                  help="Full-size FLOPs height.")
    @click.option("--width", type=click.IntRange(min=8), default=480, show_default=True, help="Full-size FLOPs width.")
    @click.option("--bench-size", type=click.IntRange(min=8), default=128, show_default=True,
                  help="Square frame size for bench.")
    @click.option("--bench-frames", type=click.IntRange(min=1), default=4, show_default=True,
                  help="Frames per bench batch.")
    @click.option("--bench-repeats", type=click.IntRange(min=1), default=2, show_default=True,
                  help="Timed repeats after a warm-up (the median is kept).")
    @click.option("-O", "--option", "options", multiple=True, metavar="SLOT.KEY=VALUE",
                  help="A component option for every cell, e.g. -O backend.opset=18 (see `movie list FAMILY`).")
    @click.option("--title", help="Title of the table and charts.")
    @click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
    @click.option("--progress/--no-progress", default=True, help="Say what each cell does on stderr.")
    def ablate(base: str, varies: tuple[str, ...], one_at_a_time: bool, measure: str, data: str | None, out: str,
               size: str | None, model: str | None, split: str, limit: int | None, batch_size: int, height: int,
               width: int, bench_size: int, bench_frames: int, bench_repeats: int, options: tuple[str, ...],
               title: str | None, as_json: bool, progress: bool) -> None:
        """Run an ablation of recipe BASE (a preset name or recipe TOML): every combination of the --vary values.

        Writes OUT/ablation.csv, .json, .md and charts (cost vs quality, grouped bars); combinations that do not
        compose (an unknown component, autoencoders of two latent spaces) are rows marked skipped, with the reason.
        """
        from movie_core import api
        from movie_core.ablation import markdown_table, parse_vary
        from movie_core.errors import UsageError
        from movie_core.loading import component_options

        vary: dict[str, Any] = {}
        for text in varies:
            key, values = parse_vary(text)
            if key in vary:
                raise UsageError(f"--vary {key} is given twice: list all its values in one --vary")
            vary[key] = values
        result = api.ablate(base, vary, one_at_a_time=one_at_a_time, measure=measure, data=data, out=out, size=size,
                            model=model, split=split, limit=limit, batch_size=batch_size, height=height, width=width,
                            bench_size=bench_size, bench_frames=bench_frames, bench_repeats=bench_repeats, title=title,
                            log=(lambda m: click.echo(m, err=True)) if progress else None,
                            options=component_options(options))
        if as_json:
            click.echo(json.dumps(result, indent=2))
            return
        click.echo(markdown_table(result["rows"], result["columns"]))
        for note in result["notes"]:
            click.echo(f"note: {note}")
        run = result["run"]
        files = result["files"]
        click.echo(f"{run['cells']} cells: {run['computed']} measured, {run['reused']} reused, "
                   f"{run['skipped']} skipped; "
                   f"wrote {files['csv']}, {files['json']}, {files['markdown']}"
                   + "".join(f", {c}" for c in files["charts"]))
