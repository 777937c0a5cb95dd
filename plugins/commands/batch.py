"""Adds `movie batch`: many videos (a folder, a glob or a CSV/JSONL manifest), or long videos in sections, edited on
a pool of Ray workers, one pipeline each; resumable, one line per failed video, a summary at the end."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from movie_core.errors import MovieError
from movie_core.hookspecs import hookimpl
from movie_core.options import recipe_options


def _table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        what = r.get("error") if r["status"] == "failed" else r["output"]
        frames = f"{r['frames']:6d}" if "frames" in r else "     -"
        lines.append(f"{r['status']:8} {frames} frames {r.get('seconds', 0.0):7.1f} s  {r['input']} -> {what}")
    return "\n".join(lines)


@hookimpl
def movie_register_commands(cli):
    @cli.command()
    @click.argument("inputs", metavar="INPUT")
    @click.option("-p", "--prompt", help="Edit instruction for a folder or glob (a manifest row's 'instruction' wins).")
    @click.option("--out-dir", type=click.Path(file_okay=False),
                  help="Folder for the outputs of a folder or glob (each named as its input).")
    @click.option("-o", "--output", type=click.Path(dir_okay=False),
                  help="With one input video and --split: the output file.")
    @click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
                  help="Ray workers (actors), each with its own pipeline.")
    @click.option("--cpus-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
                  help="CPU cores (and torch threads) each worker reserves.")
    @click.option("--address",
                  help="Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT (default: start a local one).")
    @click.option("--gpus-per-worker", type=click.FloatRange(min=0),
                  help="GPUs each worker reserves (default: 1 when the cluster has GPUs and --device is not cpu).")
    @click.option("--split", type=click.IntRange(min=1), default=1, show_default=True,
                  help="Edit each video in this many time sections on several workers, sharing one anchor "
                  "recording and the same noise; joined into one output (audio copied once).")
    @recipe_options
    @click.option("--max-side", type=click.IntRange(min=8), help="As for movie edit.")
    @click.option("--batch-size", type=click.IntRange(min=1), help="Frames per batch (as for movie edit).")
    @click.option("--crf", type=click.IntRange(0, 51), default=18, show_default=True, help="H.264 quality.")
    @click.option("--overwrite", is_flag=True, help="Edit again the videos whose output exists (default: skip them).")
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @click.option("--save", type=click.Path(dir_okay=False), help="Also write the JSON summary to this file.")
    @click.option("--progress/--no-progress", default=True, help="Show a progress bar for the whole job.")
    def batch(inputs: str, prompt: str | None, out_dir: str | None, output: str | None, workers: int,
              cpus_per_worker: int, address: str | None, gpus_per_worker: float | None, split: int,
              max_side: int | None, batch_size: int | None, crf: int, overwrite: bool, as_json: bool,
              save: str | None, progress: bool, **kw: Any) -> None:
        """Edit many videos (INPUT: a folder, a quoted glob, or a .csv/.jsonl manifest with columns input,
        instruction, output and optional steps, seed, text_guidance, image_guidance, anchor, resolution) on Ray.

        Finished outputs are skipped on a rerun; a failing video is reported and the others go on."""
        from movie_core.extras import require

        require("ray", "batch")
        from tqdm import tqdm

        from movie_core.loading import resolve_recipe
        from movie_core.video import check_output
        from movie_plugins.commands._batch import Job, Pool, list_jobs, start_ray

        if output:
            if out_dir or not os.path.isfile(inputs):
                raise MovieError("-o/--output takes one input video (use --out-dir for many)")
            if not prompt or not prompt.strip():
                raise MovieError("the prompt is empty: say what the edit should do, e.g. -p 'make it sepia'")
            jobs = [Job(inputs, prompt, output)]
        else:
            jobs = list_jobs(inputs, prompt, out_dir)
        recipe, model, _ = resolve_recipe(kw, builtin=True)
        for job in jobs:
            if job.overrides:
                try:
                    recipe.replace(**job.overrides)
                except (TypeError, ValueError) as e:
                    raise MovieError(f"{job.input}: bad recipe override ({e})") from None
        made = out_dir is not None and not os.path.isdir(out_dir)
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        rows: list[dict[str, Any]] = []
        todo: list[Job] = []
        for job in jobs:
            row = {"input": job.input, "output": job.output}
            if os.path.lexists(job.output) and not overwrite:
                rows.append(row | {"status": "skipped"})
                continue
            try:
                check_output(job.output, job.input, overwrite=True)
            except MovieError as e:
                rows.append(row | {"status": "failed", "error": str(e)})
                continue
            todo.append(job)
        start = time.perf_counter()
        try:
            if todo:
                import ray

                start_ray(address, workers * cpus_per_worker)
                if gpus_per_worker is None:
                    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
                    gpus_per_worker = 1.0 if has_gpu and recipe.device != "cpu" else 0.0
                pool = Pool(workers, gpus_per_worker, (recipe, model),
                            {"max_side": max_side, "batch_size": batch_size, "crf": crf, "overwrite": overwrite},
                            cpus_per_worker=cpus_per_worker)
                if split > 1:
                    for job in todo:
                        with tqdm(unit="frame", disable=not progress, desc=Path(job.input).name,
                                  dynamic_ncols=True) as bar:
                            result = pool.edit_split(job, split, on_frames=bar.update, crf=crf, overwrite=overwrite)
                        rows.append({"input": job.input, "output": job.output} | result)
                else:
                    with tqdm(total=len(todo), unit="video", disable=not progress, desc="batch",
                              dynamic_ncols=True) as bar:
                        def done(job: Job, result: dict[str, Any]) -> None:
                            rows.append({"input": job.input, "output": job.output} | result)
                            if result["status"] == "failed":
                                bar.write(f"failed: {job.input}: {result['error']}", file=sys.stderr)
                            bar.update(1)
                        pool.run(todo, done)
        finally:
            if made and out_dir and not os.listdir(out_dir):  # nothing came of it: leave no empty folder behind
                os.rmdir(out_dir)
        order = {job.output: i for i, job in enumerate(jobs)}
        rows.sort(key=lambda r: order.get(r["output"], 0))
        counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
        summary = {"videos": len(rows), **counts, "workers": workers, "split": split,
                   "seconds": time.perf_counter() - start, "rows": rows}
        if save:
            Path(save).write_text(json.dumps(summary, indent=2) + "\n")
        if as_json:
            click.echo(json.dumps(summary, indent=2))
        else:
            click.echo(_table(rows))
            click.echo(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
                       f"in {summary['seconds']:.1f} s on {workers} worker(s)")
        if counts["failed"]:
            raise SystemExit(1)
