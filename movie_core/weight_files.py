"""Reading weight files without trusting them: safetensors headers checked against the file, configs read as
one-line errors, pickles refused without the user's opt-in. The layer below movie_core.weights and movie_core.ldm
(both import from here; neither is imported here)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from movie_core.errors import MovieError

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


class PickleRefused(MovieError):
    """A pickle checkpoint met without the user's opt-in."""


def allow_pickle() -> bool:
    """Whether the user opted in to loading pickle checkpoints (MOVIE_ALLOW_PICKLE=1 or --allow-pickle)."""
    return os.environ.get("MOVIE_ALLOW_PICKLE", "") == "1"


_MAX_HEADER = 100 << 20  # a safetensors JSON header larger than this is damage, not a model
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def check_safetensors(path: Path) -> dict[str, tuple[int, ...]]:
    """Read a .safetensors header without loading tensors; a damaged file is one MovieError naming it.

    Checks the header length against the file, the JSON, and that every tensor's bytes (dtype x shape) are the
    byte range it claims and lie inside the file. Returns tensor name -> shape."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise MovieError(f"{path}: damaged weights file: {size} bytes, too short for a safetensors header")
            n = int.from_bytes(head, "little")
            if n > min(_MAX_HEADER, size - 8):
                raise MovieError(f"{path}: damaged weights file: its header claims {n} bytes but the file has {size}")
            raw = f.read(n)
    except OSError as exc:
        raise MovieError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise MovieError(f"{path}: damaged weights file: unreadable safetensors header ({exc})") from None
    data = size - 8 - n
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
            width = _DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise MovieError(f"{path}: damaged weights file: tensor {name!r} has a malformed entry") from None
        count = 1
        for d in shape:
            count *= d
        if min(shape, default=0) < 0 or not 0 <= start <= end or end - start != count * width:
            raise MovieError(f"{path}: damaged weights file: tensor {name!r} claims shape {list(shape)} "
                             f"in bytes {start}..{end}")
        if end > data:
            raise MovieError(f"{path}: damaged or truncated weights file: tensor {name!r} needs bytes up to {end}, "
                             f"the file holds {data} (incomplete download?)")
        shapes[name] = shape
    return shapes


def read_config(path: Path) -> dict[str, Any]:
    """A component's config.json as a dict; a missing or broken one is one MovieError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MovieError(f"{path.parent} has no config.json: not a diffusers-format component folder") from None
    except OSError as exc:
        raise MovieError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MovieError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MovieError(f"{path}: not a JSON object")
    return data
