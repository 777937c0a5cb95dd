"""Captioned procedural scenes for text-to-image training, and the prompt-following score that reads them back.

A scene is a spec: a background colour and one or two solid shapes, each a (colour, shape, position) *combo*:

    colours    the eight corners of the RGB cube (PALETTE), as far apart as colours get, so that the nearest palette
               colour of a pixel names it without doubt
    shapes     circle, square, triangle (upright)
    positions  left, right, top, bottom, centre: a shape's centre sits at its position's anchor (+- JITTER), and the
               whole shape stays inside the position's REGION (the left / right / top / bottom half, the central
               square), so a region names where a shape is

Two shapes stand at opposite positions (left and right, or top and bottom) in different colours; the background's
colour is neither shape's. The caption is written from the spec in one of a few phrasings ("a red circle on the
left, blue background"); the spec is kept beside it so a measure can check an image against what its caption asks.

Held-out split: a fifth of the 120 combos (HELD_OUT, a fixed Latin-square pattern) never appear in a training scene;
every test scene is made of held-out combos only. Every colour, shape and position, and every pair of them, still
appears in training: only the three-way combination is new.

Everything is deterministic in its seed (NumPy's PCG64); rendering is 4x supersampled (anti-aliased edges).
`score(image, spec)` is the prompt-following measure (see its docstring); `write_captions` writes a dataset folder
that `movie distill` reads (an imagefolder of image + caption; metadata.jsonl keeps each sample's spec).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from movie_core.data.procedural import SPLITS, _check_seed, sample_seeds, split_counts
from movie_core.errors import UsageError

GENERATOR_VERSION = 1
FORMAT = "movie-captioned-scenes"

PALETTE: dict[str, tuple[int, int, int]] = {  # the RGB cube's corners, pulled in a little from the gamut's edge
    "black": (20, 20, 20),
    "white": (235, 235, 235),
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 50, 220),
    "yellow": (235, 220, 30),
    "cyan": (30, 210, 220),
    "magenta": (210, 40, 200),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "centre")
# where a shape's centre sits (x, y as fractions of the width and height) and the region it stays inside
# (x0, y0, x1, y1), for the measure
ANCHORS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
           "centre": (0.5, 0.5)}
REGIONS = {"left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0), "top": (0.0, 0.0, 1.0, 0.5),
           "bottom": (0.0, 0.5, 1.0, 1.0), "centre": (0.25, 0.25, 0.75, 0.75)}
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "centre": "border"}
PAIRS = (("left", "right"), ("top", "bottom"))  # the positions two shapes take
JITTER = 0.05  # of the size, each way
RADIUS = (0.13, 0.19)  # a shape's radius (circle), half-side / 0.8 (square), circumradius / 1.1 (triangle)
SQUARE_HALF = 0.8
TRIANGLE_CIRCUM = 1.1
TWO_SHAPES = 0.3  # share of scenes with two shapes
SUPERSAMPLE = 4
PLACE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "centre": "in the centre"}
# {things}: "a red circle on the left" (and "a blue square on the right"); {bg}: the background's colour
PHRASINGS = (
    "{things}, {bg} background",
    "{things} on a {bg} background",
    "a {bg} background with {things}",
    "a picture of {things}, the background is {bg}",
)


def _held_out(colour: str, shape: str, position: str) -> bool:
    # one position per (colour, shape), at most one shape per (colour, position), at most two colours per
    # (shape, position): every pair of attributes still trains
    return (COLOURS.index(colour) + 3 * SHAPES.index(shape) + POSITIONS.index(position)) % 5 == 0


COMBOS = tuple((c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS)
HELD_OUT = tuple(combo for combo in COMBOS if _held_out(*combo))
TRAIN_COMBOS = tuple(combo for combo in COMBOS if not _held_out(*combo))


def combos(split: str) -> tuple[tuple[str, str, str], ...]:
    """The (colour, shape, position) combos a split's scenes are made of: test the held-out ones, train the rest."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    return HELD_OUT if split == "test" else TRAIN_COMBOS


# ------------------------------------------------------------------------------------------------ specs


def make_spec(seed: int, split: str = "train", two_shapes: float = TWO_SHAPES) -> dict[str, Any]:
    """The scene spec of a sample seed: {"background", "shapes": [{"colour", "shape", "position", "x", "y", "r"}]},
    x, y, r as fractions of the image size; its caption is caption(spec, phrasing)."""
    rng = np.random.default_rng([_check_seed(seed), 0xCA97])
    pool = combos(split)
    if rng.random() < two_shapes:
        pair = PAIRS[int(rng.integers(len(PAIRS)))]
        while True:
            chosen = []
            for position in pair:
                options = [c for c in pool if c[2] == position]
                chosen.append(options[int(rng.integers(len(options)))])
            if chosen[0][0] != chosen[1][0]:
                break
    else:
        chosen = [pool[int(rng.integers(len(pool)))]]
    used = {c[0] for c in chosen}
    backgrounds = [c for c in COLOURS if c not in used]
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    shapes = []
    for colour, shape, position in chosen:
        ax, ay = ANCHORS[position]
        x, y = rng.uniform(-JITTER, JITTER, 2) + (ax, ay)
        r = rng.uniform(*RADIUS)
        shapes.append({"colour": colour, "shape": shape, "position": position,
                       "x": round(float(x), 4), "y": round(float(y), 4), "r": round(float(r), 4)})
    return {"background": background, "shapes": shapes, "phrasing": int(rng.integers(len(PHRASINGS)))}


def caption(spec: dict[str, Any], phrasing: int | None = None) -> str:
    """The caption of a spec in one of PHRASINGS (default: the spec's own)."""
    k = spec.get("phrasing", 0) if phrasing is None else phrasing
    things = " and ".join(f"a {s['colour']} {s['shape']} {PLACE[s['position']]}" for s in spec["shapes"])
    return PHRASINGS[k % len(PHRASINGS)].format(things=things, bg=spec["background"])


# ------------------------------------------------------------------------------------------------ render


def _inside(shape: dict[str, Any], u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    """Whether pixel-centre points (u, v) in pixels lie inside the shape."""
    cx, cy, r = shape["x"] * size, shape["y"] * size, shape["r"] * size
    du, dv = u - cx, v - cy
    if shape["shape"] == "circle":
        return du * du + dv * dv <= r * r
    if shape["shape"] == "square":
        h = SQUARE_HALF * r
        return (np.abs(du) <= h) & (np.abs(dv) <= h)
    # upright equilateral triangle of circumradius R, its bounding box centred at (cx, cy): apex up, base below
    big = TRIANGLE_CIRCUM * r
    top, base = cy - 0.75 * big, cy + 0.75 * big
    half_width = (v - top) / (1.5 * big) * (big * np.sqrt(3) / 2)
    return (v >= top) & (v <= base) & (np.abs(du) <= half_width)


def render(spec: dict[str, Any], size: int = 64) -> np.ndarray:
    """The uint8 (size, size, 3) image of a spec (4x supersampled, box-filtered). Only the pixels around each shape
    are supersampled: everywhere else is the background's colour exactly."""
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = PALETTE[spec["background"]]
    for shape in spec["shapes"]:
        reach = TRIANGLE_CIRCUM * shape["r"] * size + 1  # covers every shape kind
        x0, x1 = (int(np.clip(np.floor(shape["x"] * size + d * reach), 0, size)) for d in (-1, 1))
        y0, y1 = (int(np.clip(np.floor(shape["y"] * size + d * reach), 0, size)) for d in (-1, 1))
        x1, y1 = min(x1 + 1, size), min(y1 + 1, size)
        if x1 <= x0 or y1 <= y0:
            continue
        u, v = np.meshgrid(x0 + (np.arange((x1 - x0) * SUPERSAMPLE) + 0.5) / SUPERSAMPLE,
                           y0 + (np.arange((y1 - y0) * SUPERSAMPLE) + 0.5) / SUPERSAMPLE)
        window = np.empty(u.shape + (3,), dtype=np.float64)
        window[:] = PALETTE[spec["background"]]
        for other in spec["shapes"]:  # in order, as if the whole image were drawn at once
            window[_inside(other, u, v, size)] = PALETTE[other["colour"]]
        image[y0:y1, x0:x1] = window.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def make_sample(seed: int, size: int = 64, split: str = "train", two_shapes: float = TWO_SHAPES) -> dict[str, Any]:
    """{"image": uint8 HxWx3, "caption": str, "spec": dict} of a sample seed."""
    spec = make_spec(seed, split, two_shapes)
    return {"image": render(spec, size), "caption": caption(spec), "spec": spec}


# ------------------------------------------------------------------------------------------------ measure


def classify(image: np.ndarray) -> np.ndarray:
    """Each pixel's nearest palette colour (index into COLOURS), (H, W)."""
    pixels = np.asarray(image, dtype=np.float32)[..., :3]
    palette = np.asarray([PALETTE[c] for c in COLOURS], dtype=np.float32)
    d = ((pixels[..., None, :] - palette) ** 2).sum(-1)
    return d.argmin(-1)


def _region_mask(position: str, h: int, w: int) -> np.ndarray:
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    if position == "border":
        return ~_region_mask("centre", h, w)
    x0, y0, x1, y1 = REGIONS[position]
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def min_pixels(shape: str, size: int) -> float:
    """The fewest pixels of its colour a region must hold for a shape to count as there: 30% of the area of the
    smallest shape of that kind the generator draws at this size."""
    r = RADIUS[0] * size
    area = {"circle": np.pi * r * r, "square": (2 * SQUARE_HALF * r) ** 2,
            "triangle": 3 * np.sqrt(3) / 4 * (TRIANGLE_CIRCUM * r) ** 2}[shape]
    return 0.3 * float(area)


# Two features tell the shapes apart, each thresholded halfway between its ideal values: how much of its bounding box
# a shape fills (square 1, circle pi / 4) and how far below the box's middle its mass sits, over the box's height
# (an upright triangle 1/6, circle and square 0). Both survive a blur better than a pixel-exact outline would.
FILL_SQUARE = (1 + np.pi / 4) / 2
LOW_TRIANGLE = 1 / 12


def shape_of(mask: np.ndarray) -> str | None:
    """circle, square or triangle from a mask of one shape's pixels (None: empty)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    height = ys.max() - ys.min() + 1
    fill = len(ys) / (height * (xs.max() - xs.min() + 1))
    low = (ys.mean() - (ys.max() + ys.min()) / 2) / height
    return "triangle" if low > LOW_TRIANGLE else "square" if fill >= FILL_SQUARE else "circle"


def score(image: np.ndarray, spec: dict[str, Any]) -> dict[str, bool]:
    """Does an image show what its spec's caption asks? Every pixel takes its nearest palette colour; then

    background  the most frequent colour of the whole image is the named background
    colour      for every named shape, in its named position's region: the named colour is the most frequent
                colour other than the background, covers at least min_pixels(shape), and covers more of this
                region than of the opposite one (left / right, top / bottom, centre / the border around it):
                the named colour is where the caption puts it
    shape       for every named shape: the pixels of its region nearer its colour than the background's have the
                named shape (shape_of: bounding-box fill and where the mass sits)
    follows     background and colour: the prompt-following measure
    all         follows and shape
    """
    classes = classify(image)
    pixels = np.asarray(image, dtype=np.float32)[..., :3]
    h, w = classes.shape
    bg = COLOURS.index(spec["background"])
    counts = np.bincount(classes.ravel(), minlength=len(COLOURS))
    background = int(counts.argmax()) == bg
    colour_ok, shape_ok = True, True
    for s in spec["shapes"]:
        c = COLOURS.index(s["colour"])
        region = _region_mask(s["position"], h, w)
        inside = np.bincount(classes[region], minlength=len(COLOURS))
        others = inside.copy()
        others[bg] = -1
        opposite = int((classes[_region_mask(OPPOSITE[s["position"]], h, w)] == c).sum())
        colour_ok &= bool(int(others.argmax()) == c and inside[c] >= min_pixels(s["shape"], min(h, w))
                          and inside[c] > opposite)
        to_shape = ((pixels - np.asarray(PALETTE[s["colour"]], np.float32)) ** 2).sum(-1)
        nearer = to_shape < ((pixels - np.asarray(PALETTE[spec["background"]], np.float32)) ** 2).sum(-1)
        shape_ok &= shape_of(nearer & region) == s["shape"]
    return {"background": background, "colour": colour_ok, "shape": shape_ok, "follows": background and colour_ok,
            "all": background and colour_ok and shape_ok}


MEASURES = ("follows", "background", "colour", "shape", "all")


def rates(images: Iterable[np.ndarray], specs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The share of images that pass each of score()'s checks against their specs."""
    scores = [score(image, spec) for image, spec in zip(images, specs, strict=True)]
    return {k: float(np.mean([s[k] for s in scores])) if scores else 0.0 for k in MEASURES}


def shuffled(specs: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """The specs in a random order with no spec in its own place (a derangement): scoring images against them is
    the measure's chance level for this set of prompts."""
    n = len(specs)
    if n < 2:
        raise UsageError("shuffling needs at least two specs")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        if not np.any(order == np.arange(n)):
            return [specs[int(i)] for i in order]


# ------------------------------------------------------------------------------------------------ writer


def write_captions(out: str | Path, *, count: int = 20000, size: int = 64, seed: int = 0,
                   test_fraction: float = 0.05, two_shapes: float = TWO_SHAPES,
                   overwrite: bool = False) -> dict[str, Any]:
    """Write a captioned-scenes dataset to `out` atomically; returns its dataset.json.

    Layout: out/train/, out/test/ imagefolders (NNNNNN.png and metadata.jsonl with the text-to-image columns
    file_name, text, plus spec and seed per line); out/dataset.json: counts, seeds, palette, regions, shapes, the
    held-out combos and the phrasings. The test split's scenes are made of held-out combos only."""
    from PIL import Image

    from movie_core.data.writer import staged_dataset

    out = Path(out)
    if count < 2:
        raise UsageError(f"--count must be at least 2 (a train and a test sample), got {count}")
    if not 0 < test_fraction < 1:
        raise UsageError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    if not 0 <= two_shapes <= 1:
        raise UsageError(f"--two-shapes must be in [0, 1], got {two_shapes}")
    if size < 16:
        raise UsageError(f"--size must be at least 16, got {size}")
    _check_seed(seed)
    started = time.perf_counter()
    counts = dict(zip(SPLITS, split_counts(count, test_fraction)))
    with staged_dataset(out, overwrite) as temp:
        for split in SPLITS:
            folder = temp / split
            folder.mkdir()
            with open(folder / "metadata.jsonl", "w", encoding="utf-8") as meta:
                for index, sample_seed in enumerate(sample_seeds(seed, split, counts[split])):
                    sample = make_sample(sample_seed, size, split, two_shapes)
                    name = f"{index:06d}.png"
                    Image.fromarray(sample["image"]).save(folder / name, compress_level=1)
                    meta.write(json.dumps({"file_name": name, "text": sample["caption"], "spec": sample["spec"],
                                           "seed": sample_seed}) + "\n")
        summary = {
            "format": FORMAT,
            "generator": "movie_core.data.captions",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "size": [size, size],
            "test_fraction": test_fraction,
            "two_shapes": two_shapes,
            "images": counts,
            "seeds": {s: [r.start, r.stop] for s in SPLITS for r in [sample_seeds(seed, s, counts[s])]},
            "palette": {k: list(v) for k, v in PALETTE.items()},
            "shapes": list(SHAPES),
            "positions": {p: {"anchor": list(ANCHORS[p]), "region": list(REGIONS[p]), "phrase": PLACE[p]}
                          for p in POSITIONS},
            "held_out": [list(c) for c in HELD_OUT],
            "phrasings": list(PHRASINGS),
            "seconds": round(time.perf_counter() - started, 3),
        }
        (temp / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def read_split(root: str | Path, split: str = "test") -> list[dict[str, Any]]:
    """The metadata lines (file_name, text, spec, seed) of a captioned-scenes dataset's split."""
    root = Path(root)
    info = root / "dataset.json"
    if not info.is_file() or json.loads(info.read_text()).get("format") != FORMAT:
        raise UsageError(f"{root} is not a captioned-scenes dataset (write one with `movie data captions`)")
    path = root / split / "metadata.jsonl"
    if not path.is_file():
        raise UsageError(f"{root} has no {split} split")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
