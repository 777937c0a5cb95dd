"""The work of `movie batch`: the job list (folder, glob, CSV/JSONL manifest), one edit as `movie edit` runs it, the
section edit of a long video, and the Ray driver that spreads them over an actor pool.

Built on the public pipeline API only (movie_core.loading, movie_core.edit, movie_core.video); Ray is imported
where the driver starts, so listing jobs and editing one file work without it.
"""

from __future__ import annotations

import csv
import glob
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from movie_core.errors import MovieError, UsageError

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
# the recipe fields a manifest row may override: they change how the one pipeline runs, not which one is built
ROW_OVERRIDES = ("steps", "seed", "text_guidance", "image_guidance", "anchor", "resolution", "detail")


@attrs.frozen
class Job:
    """One video to edit: input path, instruction, output path and recipe overrides for this video."""

    input: str
    prompt: str
    output: str
    overrides: dict[str, Any] = attrs.field(factory=dict)


def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                return [dict(row) for row in csv.DictReader(f)]
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise UsageError(f"{path}:{number}: a manifest line is a JSON object")
                rows.append(row)
        return rows
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not JSON lines ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"cannot read manifest {path}: {e}") from None


def _row_job(row: dict[str, Any], where: str, base: Path, prompt: str | None, out_dir: Path | None) -> Job:
    from movie_core.loading import parse_value

    row = {str(k).strip(): v for k, v in row.items() if k is not None}
    source = str(row.pop("input", "") or "").strip()
    if not source:
        raise UsageError(f"{where}: no 'input'")
    instruction = str(row.pop("instruction", "") or row.pop("prompt", "") or prompt or "").strip()
    if not instruction:
        raise UsageError(f"{where}: no 'instruction' (and no --prompt)")
    output = str(row.pop("output", "") or "").strip()

    def resolve(p: str) -> str:
        return p if os.path.isabs(p) else str(base / p)

    if output:
        output = resolve(output)
    elif out_dir is None:
        raise UsageError(f"{where}: no 'output' (and no --out-dir)")
    else:
        output = str(out_dir / Path(source).name)
    overrides = {}
    for key, value in row.items():
        if value in (None, ""):
            continue
        if key not in ROW_OVERRIDES:
            known = ", ".join(("input", "instruction", "output", *ROW_OVERRIDES))
            raise UsageError(f"{where}: unknown column '{key}' ({known})")
        overrides[key] = parse_value(value) if isinstance(value, str) else value
    return Job(resolve(source), instruction, output, overrides)


def list_jobs(spec: str, prompt: str | None, out_dir: str | None) -> list[Job]:
    """Jobs from a folder of videos, a glob, or a CSV/JSONL manifest (paths in it relative to its folder)."""
    path = Path(spec)
    out = Path(out_dir) if out_dir else None
    if path.is_file() and path.suffix.lower() in (".csv", ".jsonl"):
        rows = _manifest_rows(path)
        if not rows:
            raise UsageError(f"{path}: no rows")
        jobs = [_row_job(row, f"{path}:{i + 1 + (path.suffix.lower() == '.csv')}", path.parent, prompt, out)
                for i, row in enumerate(rows)]
    else:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)
        elif glob.has_magic(spec):
            files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        else:
            raise UsageError(f"{spec}: not a folder, a glob, or a .csv/.jsonl manifest")
        if not files:
            raise UsageError(f"{spec}: no videos ({', '.join(VIDEO_EXTS)})")
        if not prompt or not prompt.strip():
            raise UsageError("a folder or glob needs --prompt (a manifest gives one per row)")
        if out is None:
            raise UsageError("a folder or glob needs --out-dir")
        jobs = [Job(str(f), prompt, str(out / f.name)) for f in files]
    outputs = [os.path.abspath(j.output) for j in jobs]
    dupes = sorted({o for o in outputs if outputs.count(o) > 1})
    if dupes:
        raise UsageError(f"two jobs write {dupes[0]}: give each its own output")
    return jobs


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, MovieError):
        return " ".join(str(exc).split())
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def _written_since(path: str, since: float) -> bool:
    """Whether `path` exists and was last written at or after `since` (time.time(); outputs are renamed into
    place whole, so one that exists is complete)."""
    try:
        return os.lstat(path).st_mtime >= since
    except OSError:
        return False


class Editor:
    """One pipeline, loaded once, that edits files as `movie edit` does (the worker of an actor pool)."""

    def __init__(self, recipe: Any, model: Path | None, *, max_side: int | None = None, batch_size: int | None = None,
                 crf: int = 18, overwrite: bool = False, threads: int | None = None) -> None:
        from movie_core.composer import compose
        from movie_core.loading import load_pipeline

        if threads:  # torch's CPU threads: results match a single process run at the same count, bit for bit
            import torch

            torch.set_num_threads(threads)
        self.pipe = load_pipeline(compose(recipe), model)
        self.base = self.pipe.recipe
        self.max_side, self.batch_size, self.crf, self.overwrite = max_side, batch_size, crf, overwrite

    def pid(self) -> int:
        return os.getpid()

    def peak_mb(self) -> float:
        """This worker's peak resident memory so far, in MB."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _recipe(self, job: Job) -> None:
        self.pipe.recipe = self.base.replace(**job.overrides) if job.overrides else self.base

    def plan(self, source: Any) -> dict[str, Any]:
        """Size, padded size and frames per batch for a source, chosen as `movie edit` chooses them."""
        from movie_core import edit as edit_mod

        pipe = self.pipe
        policy, _ = edit_mod.size_policy(pipe.recipe.resolution, edit_mod.working_side(pipe),
                                         max_side=self.max_side, multiple=int(pipe.encoder.downscale))
        size = policy.target(source.height, source.width)
        per_frame = edit_mod.frame_bytes(pipe.recipe.size, pipe.dtype, policy.padded(*size),
                                         (source.height, source.width))
        batch, _ = edit_mod.choose_batch(per_frame, edit_mod.available_memory(pipe.device), self.batch_size)
        return {"policy": policy, "size": size, "padded": policy.padded(*size), "batch": batch}

    def edit(self, job: Job, on_progress: Callable[[int, int | None], None] | None = None,
             queued_at: float | None = None) -> dict[str, Any]:
        """Edit one file into its output (atomic); a failure is returned as its one-line error, not raised.
        on_progress(frames edited, total or None): after each batch (see edit_video). queued_at (time.time() when
        the pool first sent this job, the same on every retry): an output written since then is this job's own,
        finished by an attempt whose worker was lost before it reported, and counts as done."""
        from movie_core import edit as edit_mod
        from movie_core import video

        start = time.perf_counter()
        try:
            if queued_at is not None and not self.overwrite and _written_since(job.output, queued_at):
                with video.open_source(job.output) as written:
                    frames = written.frame_count
                return {"status": "done", "frames": frames, "seconds": time.perf_counter() - start,
                        "worker": os.getpid(), "note": "written by an earlier attempt whose worker was lost "
                                                       "before it reported"}
            self._recipe(job)
            with video.open_source(job.input) as source:
                plan = self.plan(source)
                with video.open_sink(job.output, source, crf=self.crf, overwrite=self.overwrite) as sink:
                    summary = edit_mod.edit_video(self.pipe, source, sink, job.prompt, policy=plan["policy"],
                                                  batch_size=plan["batch"], progress=False,
                                                  on_progress=on_progress)
            return {"status": "done", "frames": summary["frames"], "seconds": time.perf_counter() - start,
                    "worker": os.getpid()}
        except Exception as exc:  # one video's failure is its row in the summary; the others go on
            return {"status": "failed", "error": _one_line(exc), "seconds": time.perf_counter() - start,
                    "worker": os.getpid()}
        finally:
            self.pipe.recipe = self.base

    # --- one long video in sections -------------------------------------------------------

    def section_plan(self, job: Job) -> dict[str, Any]:
        """What every section of `job` must agree on: size, batch, frame count and the anchor frame's index."""
        from movie_core import edit as edit_mod
        from movie_core import video

        self._recipe(job)
        try:
            if self.pipe.frame_clock is not None:
                raise UsageError("--split does not run a frame clock (its reuse crosses section starts): drop "
                                 "--frame-clock or --split")
            with video.open_source(job.input) as source:
                if source.kind != "video" or not source.is_seekable or not source.frame_count:
                    raise UsageError(f"--split needs a video file with a known frame count: {job.input}")
                plan = self.plan(source)
                anchor = edit_mod.anchor_index(self.pipe.recipe.anchor, source.frame_count, source.is_seekable)
                return {**plan, "frames": source.frame_count, "anchor": anchor}
        finally:
            self.pipe.recipe = self.base

    def record_anchor(self, job: Job, plan: dict[str, Any]) -> dict[Any, Any] | None:
        """The anchor frame's K/V for every step (CPU tensors), recorded once for all sections."""
        from movie_core import edit as edit_mod
        from movie_core import video

        if plan["anchor"] is None:
            return None
        self._recipe(job)
        try:
            editor = edit_mod.FrameEditor(self.pipe, job.prompt, size=plan["size"], padded=plan["padded"])
            with video.open_source(job.input) as source:
                editor.record_anchor(source.frame(plan["anchor"]), plan["anchor"])
            assert editor.anchor is not None
            store = {k: (key.cpu(), value.cpu()) for k, (key, value) in editor.anchor.store.items()}
            editor.close()
            return store
        finally:
            self.pipe.recipe = self.base

    def edit_section(self, job: Job, plan: dict[str, Any], store: dict[Any, Any] | None, start: int,
                     stop: int) -> Iterator[tuple[Any, list[int]]]:
        """Edit frames [start, stop) of `job` with the shared anchor K/V; yields (uint8 frames, pts) per batch."""
        import numpy as np

        from movie_core import crossframe, video
        from movie_core import edit as edit_mod

        self._recipe(job)
        try:
            editor = edit_mod.FrameEditor(self.pipe, job.prompt, size=plan["size"], padded=plan["padded"])
            if store is not None:
                editor.anchor = crossframe.AnchorController()
                editor.anchor.store = {k: (key.to(self.pipe.device), value.to(self.pipe.device))
                                       for k, (key, value) in store.items()}
                editor.anchor.replay()
            editor.next_frame = start
            with video.open_source(job.input) as source:
                out_size = (source.height, source.width)
                frames = itertools.islice(source.frames(with_pts=True), start, stop)
                for batch in edit_mod.batched(frames, plan["batch"]):
                    sources = [f for f, _ in batch]
                    x = editor.tensor(sources)
                    yield np.stack(editor.output(sources, x, editor.run(x), out_size)), [pts for _, pts in batch]
            editor.close()
        finally:
            self.pipe.recipe = self.base


def sections(frames: int, batch: int, count: int) -> list[tuple[int, int]]:
    """[start, stop) frame ranges for `count` sections, each starting on a batch boundary (so every batch holds the
    frames it holds in one process: the same results frame for frame)."""
    batches = math.ceil(frames / batch)
    per = math.ceil(batches / count) * batch
    return [(s, min(s + per, frames)) for s in range(0, frames, per)]


# --- the Ray driver ------------------------------------------------------------------------------


def start_ray(address: str | None, cpus: int) -> None:
    """Join the cluster at `address` (auto, ray://HOST:PORT), or start a local one sized for the workers."""
    import ray

    if address and address != "auto":  # Ray retries an unreachable address for minutes: a quick look first
        import socket

        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise MovieError(f"cannot reach a Ray cluster at {address} ({_one_line(e)}): give auto, HOST:PORT "
                             "or ray://HOST:PORT of a running one") from None
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR", "include_dashboard": False}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = max(cpus, os.cpu_count() or 1)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise MovieError(f"cannot start or join a Ray cluster ({address or 'local'}): {_one_line(e)}") from None


class Pool:
    """`workers` Editor actors (GPUs per worker from Ray's resources); a killed worker is restarted and its
    video retried."""

    def __init__(self, workers: int, gpus_per_worker: float, editor_args: tuple, editor_kwargs: dict[str, Any],
                 retries: int = 2, cpus_per_worker: int = 1) -> None:
        import ray

        options: dict[str, Any] = {"num_cpus": cpus_per_worker, "max_restarts": retries, "max_task_retries": retries}
        editor_kwargs = editor_kwargs | {"threads": cpus_per_worker}
        if gpus_per_worker:
            options["num_gpus"] = gpus_per_worker
        self.cls = ray.remote(Editor).options(**options)
        self.args, self.kwargs = editor_args, editor_kwargs
        self.retries = retries
        self.actors = [self.cls.remote(*editor_args, **editor_kwargs) for _ in range(workers)]

    def pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def run(self, jobs: list[Job], on_result: Callable[[Job, dict[str, Any]], None]) -> None:
        """Edit every job, each worker taking the next as it finishes one."""
        import ray

        queue = list(enumerate(jobs))
        running: dict[Any, tuple[int, int, Job]] = {}
        lost: dict[int, int] = {}  # job index -> how often its worker was lost under it
        queued: dict[int, float] = {}  # job index -> when it was first sent (a retry finds its own finished output)
        idle = list(range(len(self.actors)))
        while queue or running:
            while queue and idle:
                slot = idle.pop()
                index, job = queue.pop(0)
                queued.setdefault(index, time.time())
                running[self.actors[slot].edit.remote(job, queued_at=queued[index])] = (slot, index, job)
            done, _ = ray.wait(list(running), num_returns=1)
            slot, index, job = running.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as e:
                # Editor.edit turns a video's own errors into its row, so this is the worker lost past Ray's restarts
                # and task retries (a kill, out of memory, a busy machine's lost connection): a fresh worker takes
                # its place, and the video goes back to the front of the queue a few times before it counts as failed
                self.actors[slot] = self.cls.remote(*self.args, **self.kwargs)
                idle.append(slot)
                lost[index] = lost.get(index, 0) + 1
                if lost[index] <= self.retries:
                    queue.insert(0, (index, job))
                    continue
                result = {"status": "failed", "error": f"worker lost: {_one_line(e)}".splitlines()[0][:300]}
            else:
                idle.append(slot)
            on_result(job, result)

    def edit_split(self, job: Job, count: int, on_frames: Callable[[int], None] | None = None,
                   crf: int = 18, overwrite: bool = False) -> dict[str, Any]:
        """Edit one long video as `count` sections on the pool's workers with one anchor recording, joined into
        one output (audio and subtitles copied once, by the one sink)."""
        import ray

        from movie_core import video

        start = time.perf_counter()
        try:
            plan = ray.get(self.actors[0].section_plan.remote(job))
            store_ref = self.actors[0].record_anchor.remote(job, plan)  # stays in the object store; every section
            ranges = sections(plan["frames"], plan["batch"], count)       # reads the same recording
            streams = [self.actors[i % len(self.actors)].edit_section.options(num_returns="streaming").remote(
                job, plan, store_ref, a, b) for i, (a, b) in enumerate(ranges)]
            written = 0
            with video.open_source(job.input) as source, \
                    video.open_sink(job.output, source, crf=crf, overwrite=overwrite) as sink:
                for stream in streams:
                    for ref in stream:
                        frames, pts = ray.get(ref)
                        for frame, p in zip(frames, pts):
                            sink.write(frame, p)
                        written += len(pts)
                        if on_frames:
                            on_frames(len(pts))
            return {"status": "done", "frames": written, "sections": [list(r) for r in ranges],
                    "seconds": time.perf_counter() - start}
        except Exception as exc:
            if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, MovieError):
                exc = exc.cause
            return {"status": "failed", "error": _one_line(exc), "seconds": time.perf_counter() - start}
