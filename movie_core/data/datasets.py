"""Readers (and writers) of (source image, instruction, edited image) datasets.

Every reader is a map-style dataset (len, indexing, iteration; usable with a torch DataLoader) whose
items are dicts {"source": uint8 H x W x 3, "edited": uint8 H x W x 3, "instruction": str}; the video
reader's source and edited are uint8 T x H x W x 3 stacks. Nothing here needs torch except
`to_torch_batch`, which imports it when called.

Formats:

* ImageFolderDataset: a folder with `metadata.jsonl` (the Hugging Face imagefolder convention), one
  JSON object per line. Columns, with paths relative to the folder:
    - `input_image`, `edited_image`, `edit_prompt` (as in the public InstructPix2Pix datasets; written
      by `movie data nano`), or
    - `file_name`, `edited_file_name`, `text` (the imagefolder style), or
    - `file_name`, `text` (a text-to-image imagefolder, as `movie data captions` writes: the image is both
      source and edited; text-to-image distillers train on the edited one).
  Splits: subfolders `train/`, `test/`, ... each with its own metadata.jsonl, or a `split` field on
  each line of a top-level metadata.jsonl.
* ParquetDataset: parquet files laid out like `timbrooks/instructpix2pix-clip-filtered`: columns
  `original_image` and `edited_image` (structs with `bytes`, or plain binary) and `edit_prompt`
  (`input_image` is accepted for `original_image`). A file, or a folder searched recursively;
  splits are picked by file name prefix (`train-00000-of-00262.parquet`) or folder name. Needs
  pyarrow (`pip install 'movie[data]'`), imported only when a parquet dataset is opened.
* VideoDataset: a folder of sample folders (`0000/`, ...) each with `meta.json` (at least
  `instruction`) and the source and edited videos as PNG frame folders `source/`, `edited/`
  (exact, preferred) or, when those are absent, `source.mp4`, `edited.mp4`. Splits are subfolders.
  `movie data nano` writes both: PNG frames, and lossless H.264 (see `_write_mp4`) for video tools.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from movie_core.errors import MovieError, UsageError

METADATA = "metadata.jsonl"
COLUMN_SETS = (
    ("input_image", "edited_image", "edit_prompt"),
    ("file_name", "edited_file_name", "text"),
    ("file_name", "file_name", "text"),  # a text-to-image imagefolder: the image is both source and target
)
PARQUET_SOURCE_COLUMNS = ("original_image", "input_image")
PARQUET_EDITED_COLUMN = "edited_image"
PARQUET_PROMPT_COLUMN = "edit_prompt"
PYARROW_MISSING = "parquet needs pyarrow: pip install 'movie[data]'"


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _decode_image(data: bytes | Path, what: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise MovieError(f"missing image: {what}") from None
    except Exception as exc:  # PIL raises many kinds
        raise MovieError(f"cannot read image {what}: {_reason(exc)}") from None


def _pair(source: np.ndarray, edited: np.ndarray, instruction: str, what: str) -> dict[str, Any]:
    if source.shape != edited.shape:
        raise MovieError(f"{what}: source is {source.shape} but edited is {edited.shape}")
    return {"source": source, "edited": edited, "instruction": instruction}


class EditDataset(Sequence):
    """Base class: subclasses implement __len__ and _get(index)."""

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        return self._get(index % n)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            yield self._get(index)

    def _get(self, index: int) -> dict[str, Any]:
        raise NotImplementedError


# --------------------------------------------------------------------------------------- imagefolder


def _splits_in(root: Path, marker: str) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / marker).exists())


class ImageFolderDataset(EditDataset):
    """A folder with metadata.jsonl; `split` picks a subfolder or the lines with that `split` field."""

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise MovieError(f"no such dataset folder: {root}")
        if split is not None and (root / split / METADATA).is_file():
            folder, want_split = root / split, None
        elif (root / METADATA).is_file():
            folder, want_split = root, split
        elif split is not None and (root / split).is_dir():
            raise MovieError(f"{root / split} has no {METADATA}")
        else:
            splits = _splits_in(root, METADATA)
            if splits and split is None:
                raise UsageError(f"{root} has splits {', '.join(splits)}: pick one")
            if splits:
                raise MovieError(f"{root} has no split {split!r} (has {', '.join(splits)})")
            raise MovieError(f"{root} has no {METADATA}")
        self.root, self.folder, self.split = root, folder, split
        self.rows = self._read_metadata(folder / METADATA, want_split)
        if not self.rows:
            where = f" with split {split!r}" if want_split else ""
            raise MovieError(f"{folder / METADATA} has no samples{where}")

    def _read_metadata(self, path: Path, want_split: str | None) -> list[tuple[Path, Path, str]]:
        rows: list[tuple[Path, Path, str]] = []
        has_split = False
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MovieError(f"cannot read {path}: {_reason(exc)}") from None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MovieError(f"{where}: bad JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(row, dict):
                raise MovieError(f"{where}: expected a JSON object, got {type(row).__name__}")
            has_split = has_split or "split" in row
            if want_split is not None and row.get("split") != want_split:
                continue
            columns = next((cols for cols in COLUMN_SETS if all(c in row for c in cols)), None)
            if columns is None:
                wanted = " or ".join(", ".join(dict.fromkeys(cols)) for cols in COLUMN_SETS)
                raise MovieError(f"{where}: needs the columns {wanted}")
            src, dst, prompt = (row[c] for c in columns)
            if not all(isinstance(v, str) for v in (src, dst, prompt)):
                raise MovieError(f"{where}: {', '.join(dict.fromkeys(columns))} must be strings")
            files = []
            for name in (src, dst):
                file = self.folder / name
                if not file.is_file():
                    raise MovieError(f"{where}: missing image {file}")
                files.append(file)
            rows.append((files[0], files[1], prompt))
        if want_split is not None and not has_split:
            raise MovieError(f"{path} has no split field and no {want_split}/ subfolder")
        return rows

    def __len__(self) -> int:
        return len(self.rows)

    def _get(self, index: int) -> dict[str, Any]:
        src, dst, prompt = self.rows[index]
        source = _decode_image(src, str(src))
        edited = source if dst == src else _decode_image(dst, str(dst))
        return _pair(source, edited, prompt, f"{self.folder} sample {index}")


class ImageFolderWriter:
    """Writes NNNNNN_source.png, NNNNNN_edited.png and metadata.jsonl (input_image, edited_image, edit_prompt)."""

    def __init__(self, folder: str | Path, compress_level: int = 1) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.compress_level = compress_level
        self._metadata = open(self.folder / METADATA, "w", encoding="utf-8")

    def add(self, source: np.ndarray, edited: np.ndarray, instruction: str, **extra: Any) -> None:
        from PIL import Image

        names = (f"{self.count:06d}_source.png", f"{self.count:06d}_edited.png")
        for name, array in zip(names, (source, edited)):
            Image.fromarray(np.ascontiguousarray(array)).save(self.folder / name, compress_level=self.compress_level)
        row = {"input_image": names[0], "edited_image": names[1], "edit_prompt": instruction, **extra}
        self._metadata.write(json.dumps(row) + "\n")
        self.count += 1

    def close(self) -> None:
        self._metadata.close()

    def __enter__(self) -> ImageFolderWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------- parquet


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MovieError(PYARROW_MISSING) from None
    return pq


def _split_of(path: Path, root: Path) -> set[str]:
    labels = {part for part in path.relative_to(root).parts[:-1]}
    stem = path.name.split(".")[0]
    labels.add(stem.split("-")[0])
    labels.add(stem.split("_")[0])
    return labels


class ParquetDataset(EditDataset):
    """Parquet files in the InstructPix2Pix layout (original_image, edited_image, edit_prompt), read by row group."""

    def __init__(self, path: str | Path, split: str | None = None) -> None:
        path = Path(path)
        pq = _pyarrow_parquet()
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
            if not files:
                raise MovieError(f"no parquet files in {path}")
            if split is not None:
                files = [p for p in files if split in _split_of(p, path)]
                if not files:
                    raise MovieError(
                        f"no {split!r} parquet files in {path} (expected names like {split}-00000-of-00001.parquet)"
                    )
        else:
            raise MovieError(f"no such parquet file or folder: {path}")
        self.path, self.split = path, split
        self._files: list[Any] = []
        self._columns: list[tuple[str, str, str]] = []
        self._index: list[tuple[int, int, int]] = []  # (file, row group, first row) per row group
        self._starts: list[int] = []
        total = 0
        for number, file in enumerate(files):
            try:
                handle = pq.ParquetFile(file)
            except Exception as exc:
                raise MovieError(f"{file}: not a readable parquet file: {_reason(exc)}") from None
            names = set(handle.schema_arrow.names)
            source = next((c for c in PARQUET_SOURCE_COLUMNS if c in names), None)
            missing = [c for c in (source or PARQUET_SOURCE_COLUMNS[0], PARQUET_EDITED_COLUMN, PARQUET_PROMPT_COLUMN)
                       if c not in names]
            if missing or source is None:
                raise MovieError(f"{file}: no column {missing[0]!r} (has {', '.join(sorted(names))})")
            self._files.append((file, handle))
            self._columns.append((source, PARQUET_EDITED_COLUMN, PARQUET_PROMPT_COLUMN))
            for group in range(handle.metadata.num_row_groups):
                rows = handle.metadata.row_group(group).num_rows
                if rows:
                    self._index.append((number, group, rows))
                    self._starts.append(total)
                    total += rows
        self._length = total
        self._cache: tuple[tuple[int, int], dict[str, list[Any]]] | None = None

    def __len__(self) -> int:
        return self._length

    def _group(self, number: int, group: int) -> dict[str, list[Any]]:
        if self._cache is None or self._cache[0] != (number, group):
            file, handle = self._files[number]
            try:
                table = handle.read_row_group(group, columns=list(self._columns[number]))
            except Exception as exc:
                raise MovieError(f"{file}: cannot read row group {group}: {_reason(exc)}") from None
            self._cache = ((number, group), {name: table.column(name).to_pylist() for name in table.column_names})
        return self._cache[1]

    def _get(self, index: int) -> dict[str, Any]:
        slot = int(np.searchsorted(self._starts, index, side="right")) - 1
        number, group, _ = self._index[slot]
        offset = index - self._starts[slot]
        table = self._group(number, group)
        file = self._files[number][0]
        source_col, edited_col, prompt_col = self._columns[number]
        images = []
        for column in (source_col, edited_col):
            value = table[column][offset]
            data = value.get("bytes") if isinstance(value, dict) else value
            where = f"{file} row {self._local_row(number, group, offset)} column {column}"
            if not isinstance(data, (bytes, bytearray)):
                raise MovieError(f"{where}: no image bytes")
            images.append(_decode_image(bytes(data), where))
        prompt = table[prompt_col][offset]
        if not isinstance(prompt, str):
            raise MovieError(f"{file} row {self._local_row(number, group, offset)}: {prompt_col} is not a string")
        return _pair(images[0], images[1], prompt, f"{file} row {self._local_row(number, group, offset)}")

    def _local_row(self, number: int, group: int, offset: int) -> int:
        handle = self._files[number][1]
        return sum(handle.metadata.row_group(g).num_rows for g in range(group)) + offset


# -------------------------------------------------------------------------------------------- videos


def _read_frames(folder: Path) -> np.ndarray:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    if not files:
        raise MovieError(f"no PNG frames in {folder}")
    return np.stack([_decode_image(p, str(p)) for p in files])


def _read_video(path: Path) -> np.ndarray:
    import av

    try:
        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.FFmpegError, OSError, IndexError) as exc:
        raise MovieError(f"cannot read video {path}: {_reason(exc)}") from None
    if not frames:
        raise MovieError(f"no frames in video {path}")
    return np.stack(frames)


class VideoDataset(EditDataset):
    """Sample folders with meta.json and source/edited as PNG frame folders (exact) or .mp4 files."""

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise MovieError(f"no such video dataset folder: {root}")
        if (root / "videos").is_dir() and (root / "dataset.json").is_file():
            root = root / "videos"  # a `movie data nano` folder
        folder = root
        if split is not None:
            folder = root / split
            if not folder.is_dir():
                raise MovieError(f"{root} has no split {split!r}")
        samples = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not samples:
            raise MovieError(f"no video samples in {folder}")
        self.root, self.folder, self.split = root, folder, split
        self.samples: list[tuple[Path, dict[str, Any]]] = []
        for sample in samples:
            meta_path = sample / "meta.json"
            if not meta_path.is_file():
                raise MovieError(f"{sample} has no meta.json")
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise MovieError(f"cannot read {meta_path}: {_reason(exc)}") from None
            except json.JSONDecodeError as exc:
                raise MovieError(f"{meta_path} line {exc.lineno}: bad JSON: {exc.msg}") from None
            if not isinstance(meta, dict) or not isinstance(meta.get("instruction"), str):
                raise MovieError(f"{meta_path}: needs a string 'instruction'")
            for name in ("source", "edited"):
                if not (sample / name).is_dir() and not (sample / f"{name}.mp4").is_file():
                    raise MovieError(f"{sample} has neither {name}/ frames nor {name}.mp4")
            self.samples.append((sample, meta))

    def __len__(self) -> int:
        return len(self.samples)

    def meta(self, index: int) -> dict[str, Any]:
        return dict(self.samples[index][1])

    def _get(self, index: int) -> dict[str, Any]:
        sample, meta = self.samples[index]
        arrays = []
        for name in ("source", "edited"):
            frames = sample / name
            arrays.append(_read_frames(frames) if frames.is_dir() else _read_video(sample / f"{name}.mp4"))
        return _pair(arrays[0], arrays[1], meta["instruction"], str(sample))


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Lossless H.264: libx264rgb at qp 0 (bit-exact RGB) when FFmpeg has it, else libx264 4:4:4 at qp 0 (off by <= 2).

    Lossless RGB H.264 plays in FFmpeg-based tools (PyAV, ffplay, VLC, `movie edit`) but not in every
    browser or phone player; the PNG frame folders beside it are the reference.
    """
    import av

    height, width = frames.shape[1:3]
    rgb = "libx264rgb" in av.codecs_available
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264rgb" if rgb else "libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb24" if rgb else "yuv444p"
        stream.options = {"preset": "veryfast", "qp": "0"}
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def write_video_sample(
    folder: str | Path,
    source_frames: np.ndarray,
    edited_frames: np.ndarray,
    instruction: str,
    *,
    fps: int = 8,
    mp4: bool = True,
    **extra: Any,
) -> None:
    """One video sample: source/, edited/ PNG frames (exact), source.mp4, edited.mp4 (lossless H.264), meta.json."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frames in (("source", source_frames), ("edited", edited_frames)):
        (folder / name).mkdir()
        for index, frame in enumerate(frames, start=1):
            path = folder / name / f"frame_{index:06d}.png"
            Image.fromarray(np.ascontiguousarray(frame)).save(path, compress_level=1)
        if mp4:
            _write_mp4(folder / f"{name}.mp4", np.asarray(frames), fps)
    height, width = np.asarray(source_frames).shape[1:3]
    meta = {"instruction": instruction, "frames": len(source_frames), "fps": fps, "width": width, "height": height,
            **extra}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------- helpers


def open_dataset(path: str | Path, split: str | None = None) -> EditDataset:
    """The right reader for `path`: a .parquet file or folder of them, an imagefolder, or a video folder."""
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        return ParquetDataset(path, split)
    if not path.is_dir():
        raise MovieError(f"no such dataset: {path}")
    if (path / METADATA).is_file() or (split and (path / split / METADATA).is_file()) or _splits_in(path, METADATA):
        return ImageFolderDataset(path, split)
    if next(path.rglob("*.parquet"), None) is not None:
        return ParquetDataset(path, split)
    if next(path.rglob("meta.json"), None) is not None:
        return VideoDataset(path, split)
    raise MovieError(f"{path} is not a dataset: no {METADATA}, parquet files or video samples (meta.json)")


def to_torch_batch(samples: Sequence[dict[str, Any]], device: Any = None, dtype: Any = None) -> dict[str, Any]:
    """Stack samples into {"source", "edited": float tensors (B, [T,] 3, H, W) in [-1, 1], "instruction": list}."""
    import torch

    if not samples:
        raise UsageError("to_torch_batch needs at least one sample")
    batch: dict[str, Any] = {"instruction": [s["instruction"] for s in samples]}
    for key in ("source", "edited"):
        shapes = {np.asarray(s[key]).shape for s in samples}
        if len(shapes) > 1:
            raise MovieError(f"cannot batch samples of different sizes: {sorted(shapes)}")
        array = np.stack([np.asarray(s[key]) for s in samples])
        tensor = torch.from_numpy(np.moveaxis(array, -1, -3).copy()).to(dtype or torch.float32)
        batch[key] = (tensor / 127.5 - 1.0).to(device) if device is not None else tensor / 127.5 - 1.0
    return batch
