"""Adds `movie eval`: PSNR/SSIM against ground truth, CLIP scores, controllability and temporal consistency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from movie_core.hookspecs import hookimpl

MODEL_HELP = (
    "MODEL is a model folder (or .safetensors file / cached repo id), `random` (the recipe flags at random "
    "init), or a reference: `identity` (source unchanged) or `ground-truth` (the data's own edits)."
)


def _load(model_arg: str, kw: dict[str, Any]):
    """MODEL + recipe flags -> (predictor, model label, recipe dict or None)."""
    from movie_core import evaluate as ev
    from movie_core.errors import UsageError
    from movie_core.loading import RECIPE_FLAGS, load_pipeline, resolve_recipe

    kw = {name: kw.pop(name, None) for name in RECIPE_FLAGS}

    if model_arg in ev.BUILTIN_PREDICTORS:
        resolve_recipe(kw)  # validates and drops the recipe flags; the references have no recipe
        return ev.builtin_predictor(model_arg), model_arg, None
    if kw.get("model"):
        raise UsageError("MODEL and --model both name weights: pass the model once, as MODEL")
    if model_arg == "random":
        if kw.get("init") is None:
            kw["init"] = "random"
    else:
        if kw.get("init"):
            raise UsageError(f"--init random and MODEL {model_arg} are exclusive: "
                             "use MODEL `random` for random weights")
        kw["model"] = model_arg
    recipe, model, init = resolve_recipe(kw)
    pipe = load_pipeline(recipe, model)
    label = "random" if model is None else str(model)
    return ev.PipelinePredictor(pipe, name=label), label, recipe.components() | recipe.options()


@hookimpl
def movie_register_commands(cli):
    from movie_core.options import recipe_options

    @cli.command("eval", epilog=MODEL_HELP)
    @click.argument("model_arg", metavar="MODEL")
    @click.option("--data", required=True, type=click.Path(),
                  help="Dataset with ground truth (imagefolder, parquet, `movie data nano` folder).")
    @click.option("--split", default="test", show_default=True, help="Split to evaluate.")
    @click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N samples (and N videos).")
    @click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                  help="Images (or frames) per batch.")
    @click.option("--clip", "clip_path", type=click.Path(),
                  help="Local CLIP model folder: CLIP-image and directional CLIP similarity.")
    @click.option("--controllability", is_flag=True,
                  help="Edit strength as a function of s_T and of s_I (paper Fig. 4).")
    @click.option("--control-samples", type=click.IntRange(min=1), default=8, show_default=True,
                  help="Samples the controllability sweeps use.")
    @click.option("--videos", is_flag=True, help="Temporal consistency and per-frame PSNR/SSIM on the split's videos.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("--out", type=click.Path(dir_okay=False), help="Also write the JSON result to this file.")
    @click.option("--progress/--no-progress", default=True, help="Show progress bars.")
    @recipe_options
    def eval_(model_arg: str, data: str, split: str, limit: int | None, batch_size: int, clip_path: str | None,
              controllability: bool, control_samples: int, videos: bool, as_json: bool, out: str | None,
              progress: bool, **kw: Any) -> None:
        """Score MODEL's edits against the ground truth of a dataset split: PSNR, SSIM (and more on request)."""
        from movie_core import evaluate as ev
        from movie_core.data.datasets import VideoDataset, open_dataset
        from movie_core.errors import MovieError, UsageError

        data_path = Path(data)
        if not data_path.exists():
            raise MovieError(f"no such dataset: {data}")
        if out and Path(out).is_dir():
            raise UsageError(f"--out {out} is a folder: give a file name")
        # open the data before building any model, so a bad folder or split fails fast
        images = open_dataset(data_path, split)
        if videos:
            VideoDataset(data_path, split)
        elif isinstance(images, VideoDataset):
            raise UsageError(f"{data} holds videos: evaluate them with --videos")
        scorer = ev.ClipScorer(clip_path) if clip_path else None
        predictor, label, recipe = _load(model_arg, kw)
        if controllability and not isinstance(predictor, ev.PipelinePredictor):
            raise UsageError("--controllability needs a model: "
                             "guidance scales mean nothing to identity or ground-truth")
        result = ev.evaluate(
            predictor, data_path, split=split, limit=limit, batch_size=batch_size, clip=scorer,
            controllability_samples=control_samples if controllability else None, videos=videos,
            progress=progress, model=label, recipe=recipe,
        )
        if isinstance(predictor, ev.PipelinePredictor):
            result["backend"] = predictor.pipe.backend_info()
        if out:
            Path(out).write_text(json.dumps(result, indent=2) + "\n")
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            click.echo(ev.summary(result))
            if out:
                click.echo(f"wrote {out}")
