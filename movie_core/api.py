"""The public Python API: plugins, recipes, FLOPs / bench / eval, training stages and ablations, as plain data.

These names are re-exported by `movie_core` (`import movie_core as movie; movie.run_flops(...)`) and are the
stable surface for scripts; importing them stays cheap, torch loads when a function runs. Every function
returns dicts, lists, numbers and strings (JSON-able), and raises movie_core.errors.MovieError (a
UsageError for a bad name or value) with a one-line message for user errors. Reference: docs/ablations.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from movie_core.ablation import SkipCell, run_grid
from movie_core.errors import MovieError, UsageError
from movie_core.loading import load_pipeline, resolve_weights
from movie_core.recipe import Recipe, load_recipe, preset

__all__ = [
    "load_plugins", "preset", "load_recipe", "Recipe", "compose", "run_flops", "run_bench", "run_eval", "ablate",
    "run_grid", "SkipCell", "fingerprint", "make_data", "distill", "objective",
]

RecipeLike = Recipe | str | Path


def load_plugins() -> dict[str, Any]:
    """Load the built-in and installed plugins; returns {"plugins": [names], "components": {family: [names]}}."""
    from movie_core.plugins import get_registry, plugin_info
    from movie_core.registry import FAMILIES

    registry = get_registry()
    return {"plugins": [row["name"] for row in plugin_info()],
            "components": {family: registry.names(family) for family in FAMILIES}}


def compose(recipe: RecipeLike) -> dict[str, Any]:
    """Validate a recipe (every slot resolves, autoencoders share a latent space); returns its description:
    each slot's component, plugin and version, the latent space, the options, and whether the backend runs here."""
    from movie_core.composer import compose as do_compose

    comp = do_compose(load_recipe(recipe))
    ok, reason = comp.backend_available()
    return comp.describe() | {"backend_available": {"ok": ok, "reason": reason}}


def run_flops(recipe: RecipeLike, *, height: int = 480, width: int = 480, size: str | None = None) -> dict[str, Any]:
    """Per-frame TFLOPs (paper and all conventions, per component) on the meta device, as `movie flops --json`.

    `size` overrides the recipe's model size ("full": the real SD-1.5 shapes; "nano")."""
    from movie_core import flops
    from movie_core.composer import compose as do_compose

    r = load_recipe(recipe)
    return flops.count(do_compose(r.replace(size=size) if size else r), height=height, width=width)


def run_bench(recipe: RecipeLike, *, model: str | Path | None = None, height: int = 128, width: int = 128,
              frames: int = 4, batch_size: int = 4, repeats: int = 3) -> dict[str, Any]:
    """Latency per frame and per component, frames/s and peak memory, as `movie bench --json`
    (median of `repeats` after a warm-up; the recipe's backend, device and dtype)."""
    from movie_core.bench import bench_pipeline

    r = load_recipe(recipe)
    pipe = load_pipeline(r, resolve_weights(r, model))
    return bench_pipeline(pipe, height=height, width=width, frames=frames, batch_size=batch_size, repeats=repeats)


def run_eval(recipe: RecipeLike, *, data: str | Path, model: str | Path | None = None, split: str = "test",
             limit: int | None = None, batch_size: int = 8) -> dict[str, Any]:
    """PSNR and SSIM against the ground truth of a dataset split (overall, per edit, and the do-nothing reference),
    as `movie eval --json`."""
    from movie_core import evaluate as ev

    r = load_recipe(recipe)
    if not Path(data).exists():
        raise MovieError(f"no such dataset: {data}")
    ev.open_image_data(data, split)  # a bad folder or split fails before the model loads
    weights = resolve_weights(r, model)
    pipe = load_pipeline(r, weights)
    return ev.evaluate(ev.PipelinePredictor(pipe, name=str(weights) if weights else "random"), data, split=split,
                       limit=limit, batch_size=batch_size)


def ablate(base: RecipeLike, vary: Mapping[str, Sequence[Any]] | None = None, *, one_at_a_time: bool = False,
           measure: Sequence[str] | str = ("flops",), data: str | Path | None = None, out: str | Path | None = None,
           size: str | None = None, model: str | Path | None = None, split: str = "test", limit: int | None = None,
           batch_size: int = 8, height: int = 480, width: int = 480, bench_size: int = 128, bench_frames: int = 4,
           bench_repeats: int = 2, title: str | None = None, log: Callable[[str], None] | None = None,
           options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Vary slots and options of a recipe and measure every cell; `movie ablate` is this function.

    base: preset name, recipe TOML or Recipe. vary: {key: [values]} with keys the recipe slots (encoder, decoder,
    denoiser, backend), `vae` (both autoencoders), `preset` (replaces the starting recipe) and recipe options
    (steps, text_guidance, image_guidance, seed, anchor, dtype, ...). All combinations, or with one_at_a_time the
    base plus one change at a time. measure: any of flops, bench, eval (eval needs `data`). size: run every cell
    at this model size; bench and eval without `model` use the built-in nano weights of each cell's denoiser
    stage (and run at nano size). With `out`, finished cells are saved to out/cells/ and reused by a rerun with
    the same settings, and out/ gets ablation.csv, .json, .md and charts. A cell that does not compose is a
    skipped row with the reason. options: component options of every cell, {slot: {key: value}} (as `-O`).
    Returns {"rows": [...], "columns": [...], "cells": [...], ...}.
    """
    from movie_core import ablation

    measures = [m.strip() for m in measure.split(",")] if isinstance(measure, str) else list(measure)
    if size is None and model is None and {"bench", "eval"} & set(measures):
        size = "nano"  # as `movie bench` / `movie edit` do without --model: the built-in nano models
    return ablation.ablate(base, vary, one_at_a_time=one_at_a_time, measure=measures, data=data, out=out, size=size,
                           model=model, split=split, limit=limit, batch_size=batch_size, height=height, width=width,
                           bench_size=bench_size, bench_frames=bench_frames, bench_repeats=bench_repeats, title=title,
                           log=log, options=options)


def fingerprint(target: str | Path) -> str:
    """A short content hash of a model (folder, .safetensors file, `nano:<stage>`) or a dataset folder; put it in a
    run_grid config so that cells are measured again when the weights or the data change."""
    from movie_core.ablation import data_fingerprint, model_fingerprint
    from movie_core.weights import MANIFEST, resolve_model

    path = Path(target)
    if path.is_dir() and not (path / MANIFEST).is_file():
        return data_fingerprint(path)
    return model_fingerprint(resolve_model(target))


def make_data(out: str | Path, *, count: int = 2000, videos: int = 0, size: int = 64, seed: int = 0,
              test_fraction: float = 0.1, frames: int = 16, overwrite: bool = False,
              source: str = "procedural") -> dict[str, Any]:
    """Write the nano dataset (`movie data nano`): train/test triplets with exact ground truth; `source` is
    procedural, photos (packaged photographs and photographic scenes) or mixed."""
    from movie_core.data.writer import write_nano

    return write_nano(out, count=count, videos=videos, size=size, seed=seed, test_fraction=test_fraction,
                      frames=frames, overwrite=overwrite, source=source)


def distill(strategy: str, *, teacher: str | Path, data: str | Path, out: str | Path, steps: int,
            batch_size: int = 8, lr: float | None = None, warmup_steps: int | None = None, resolution: int = 64,
            seed: int = 0, ema_decay: float | None = None, cache_latents: bool = False, checkpoint_every: int = 200,
            options: Mapping[str, Any] | None = None, resume: bool = False, overwrite: bool = False,
            progress: bool = False) -> dict[str, Any]:
    """Run one training stage (`movie distill STRATEGY`): the student model folder goes to `out`.

    teacher: a model folder or `nano:<stage>`. options: the strategy's options (`movie list distiller`).
    resume: continue from the run's last checkpoint when there is one (else start). Returns the run summary."""
    from movie_core.plugins import get_registry
    from movie_core.training.loop import run, train_config
    from movie_core.weights import resolve_model

    spec = get_registry().get("distiller", strategy)
    cls = spec.load_factory()
    cfg = train_config(cls, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                       resolution=resolution, seed=seed, ema_decay=ema_decay, cache_latents=cache_latents,
                       checkpoint_every=checkpoint_every, log_every=max(1, min(50, steps // 10)))
    out = Path(out)
    work = out.parent / f"{out.name}.train"
    can_resume = resume and any((work / "checkpoints").glob("step-*"))
    return run(cls(spec.make_config(**dict(options or {}))), resolve_model(teacher), Path(data), out, cfg,
               resume=can_resume, overwrite=overwrite or (resume and not can_resume and not out.exists()),
               progress=progress)


def objective(strategy: str, *, student: str | Path, teacher: str | Path, data: str | Path) -> dict[str, float]:
    """A training strategy's own objective on the test split of `data`: the student model against its teacher
    (e.g. adversarial: MSE at one step to the teacher's 5-step output, beside the teacher's own at one step)."""
    from movie_core.plugins import get_registry
    from movie_core.weights import resolve_model

    cls = get_registry().get("distiller", strategy).load_factory()
    result = cls.objective(resolve_model(student), resolve_model(teacher), Path(data))
    if result is None:
        raise UsageError(f"distiller '{strategy}' defines no objective")
    return result
