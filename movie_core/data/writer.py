"""Writing a dataset folder of (source, instruction, edited) triplets: `movie data nano` (any data source).

Apart from movie_core.data.procedural (the scenes and the edits) and movie_core.data.photos (which builds on
procedural), so that neither imports the other's writer.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from movie_core.data import photos
from movie_core.data.datasets import ImageFolderWriter, write_video_sample
from movie_core.data.procedural import (
    EDITS,
    FPS,
    GENERATOR_VERSION,
    SPLITS,
    TEST_SEED_OFFSET,
    _check_seed,
    _size,
    sample_seeds,
    split_counts,
)
from movie_core.errors import MovieError, UsageError


def _prepare_output(out: Path, overwrite: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise UsageError(f"{out} exists and is not a folder")
    if not overwrite:
        raise UsageError(f"{out} exists: pass --overwrite to replace it")
    if any(out.iterdir()) and not (out / "dataset.json").is_file():
        raise UsageError(f"refusing to overwrite {out}: it is not a movie dataset (no dataset.json)")


def write_nano(
    out: str | Path,
    *,
    count: int = 2000,
    videos: int = 16,
    size: int = 64,
    seed: int = 0,
    test_fraction: float = 0.1,
    frames: int = 16,
    overwrite: bool = False,
    source: str = "procedural",
) -> dict[str, Any]:
    """Write the nano dataset to `out` atomically (a temp folder beside it, renamed at the end); returns dataset.json.

    Layout:
      out/train/, out/test/          imagefolders: NNNNNN_source.png, NNNNNN_edited.png, metadata.jsonl
                                     (columns input_image, edited_image, edit_prompt, plus edit and seed)
      out/videos/{train,test}/NNNN/  source/ and edited/ (exact PNG frames frame_000001.png ...),
                                     source.mp4 and edited.mp4 (lossless H.264: bit-exact with libx264rgb,
                                     else 4:4:4 qp 0; the readers prefer the PNG frames),
                                     meta.json (instruction, edit, seed, split, frames, fps, width, height)
      out/dataset.json               counts, edits and phrasings per split, size, seed, seed ranges, version,
                                     the data source, and (photos, mixed) which photographs train and which are
                                     held out (movie_core.data.photos)

    `source`: procedural (the scenes above; the default), photos (crops of and camera moves over photographs shipped
    in scikit-image and scikit-learn, and photographic scenes: movie_core.data.photos) or mixed (each sample seed
    picks one of the two, half and half). With photos or mixed, each sample's metadata has its `origin`.
    """

    out = Path(out)
    if count < 0 or videos < 0:
        raise UsageError("--count and --videos cannot be negative")
    if count + videos == 0:
        raise UsageError("nothing to write: --count and --videos are both 0")
    if not 0 <= test_fraction < 1:
        raise UsageError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if max(count, videos) > TEST_SEED_OFFSET:
        raise UsageError(f"at most {TEST_SEED_OFFSET} samples per dataset seed")
    if frames < 2:
        raise UsageError(f"videos need at least 2 frames, got {frames}")
    _size(size)
    _check_seed(seed)
    if source not in photos.SOURCES:
        raise UsageError(f"unknown data source {source!r}: choose from {', '.join(photos.SOURCES)}")
    pool = photos._pool() if source != "procedural" else None  # before anything is written: no photos, no dataset
    started = time.perf_counter()
    image_counts = dict(zip(SPLITS, split_counts(count, test_fraction)))
    video_counts = dict(zip(SPLITS, split_counts(videos, test_fraction)))
    with staged_dataset(out, overwrite) as temp:
        for split in SPLITS:
            with ImageFolderWriter(temp / split) as writer:
                for sample_seed in sample_seeds(seed, split, image_counts[split]):
                    sample = photos.sample(sample_seed, size, split, source)
                    origin = {"origin": sample["origin"]} if pool is not None else {}
                    writer.add(sample["source"], sample["edited"], sample["instruction"],
                               edit=sample["edit"], seed=sample_seed, **origin)
            for index, sample_seed in enumerate(sample_seeds(seed, split, video_counts[split])):
                video = photos.video(sample_seed, frames, size, split, source)
                origin = {"origin": video["origin"]} if pool is not None else {}
                write_video_sample(
                    temp / "videos" / split / f"{index:04d}", video["source_frames"], video["edited_frames"],
                    video["instruction"], fps=FPS, edit=video["edit"], seed=sample_seed, split=split, **origin,
                )
        summary = {
            "format": "movie-procedural-edits",
            "generator": "movie_core.data.procedural",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "size": [size, size] if isinstance(size, int) else list(size),
            "test_fraction": test_fraction,
            "images": image_counts,
            "videos": {**video_counts, "frames": frames, "fps": FPS},
            "seeds": {
                "images": {s: [r.start, r.stop] for s in SPLITS for r in [sample_seeds(seed, s, image_counts[s])]},
                "videos": {s: [r.start, r.stop] for s in SPLITS for r in [sample_seeds(seed, s, video_counts[s])]},
            },
            "edits": {
                name: {"train_phrasings": list(edit.train_phrasings), "test_phrasings": [edit.held_out]}
                for name, edit in EDITS.items()
            },
            "seconds": round(time.perf_counter() - started, 3),
        }
        if pool is not None:
            summary |= {"source": source, "photo_generator_version": photos.PHOTO_GENERATOR_VERSION,
                        "photos": pool.manifest()}
        (temp / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@contextlib.contextmanager
def staged_dataset(out: Path, overwrite: bool) -> Iterator[Path]:
    """A new temporary folder beside `out` to write a dataset into (out checked first: a file, or a folder without
    --overwrite, is refused before anything is written). When the block ends it replaces out; on any exception
    (Ctrl-C too) it goes, and out is as it was."""
    _prepare_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    temp.mkdir()
    try:
        yield temp
        _move_into_place(temp, out, overwrite)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _move_into_place(temp: Path, out: Path, overwrite: bool) -> None:
    _prepare_output(out, overwrite)  # again: it may have appeared while we were writing
    if not out.exists():
        temp.rename(out)
        return
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    out.rename(old)
    try:
        temp.rename(out)
    except OSError as exc:
        old.rename(out)
        raise MovieError(f"cannot move the new dataset into {out}: {exc}") from None
    shutil.rmtree(old, ignore_errors=True)
