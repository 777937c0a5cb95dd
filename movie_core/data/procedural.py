"""Procedural (source image, instruction, edited image) triplets with exact ground truth.

Scenes are rendered from a seeded random description: a background (linear or radial gradient,
smooth value noise, stripes or checkers, optionally overlaid with a second texture), 2-7
overlapping shapes (circles, ellipses, rectangles, star-shaped polygons) filled with solid colours,
gradients or textures, some translucent, some with drop shadows and sphere shading, then a soft
global light and vignette. Rendering is 2x supersampled, so edges are anti-aliased and motion is
sub-pixel. Videos render the same kind of scene over N frames while the camera pans and some
objects move and spin.

Edits are global, closed-form functions of each pixel's float RGB in [0, 1] (see EDITS); the
ground truth for a uint8 image is `round(255 * clip(edit(image / 255), 0, 1))`, computed by
`apply_edit`. Each edit has at least five phrasings; the last one is held out of the training
split and is the only one used for the test split (`Edit.held_out`).

Everything is deterministic in its seed: `make_sample(seed)` and `make_video(seed)` return the
same bytes on every run (NumPy's PCG64 stream; GENERATOR_VERSION changes when the output for a
given seed changes). Across machines, vectorised sin/hypot in NumPy builds may differ in the last
bit, which can flip a rare rounding; the written dataset, not the seed, is the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from movie_core.errors import UsageError

GENERATOR_VERSION = 2  # 2: scene exposure (EXPOSED_FRACTION, EXPOSURE_RANGE)
FPS = 8
# A fraction of the scenes is exposed darker or brighter than the rest, a log-uniform gain over EXPOSURE_RANGE
# (1 = as rendered). Without it the scenes' mean luma never went below 0.26 and a "make it darker" model learnt a
# target brightness instead of a change: on a night photo (luma 0.24) it brightened the image.
EXPOSED_FRACTION = 0.35
EXPOSURE_RANGE = (0.3, 1.3)
SUPERSAMPLE = 2
SEED_STRIDE = 10_000_000  # dataset seed s uses sample seeds [s * SEED_STRIDE, (s + 1) * SEED_STRIDE)
TEST_SEED_OFFSET = 5_000_000  # test samples: s * SEED_STRIDE + TEST_SEED_OFFSET + i; train: s * SEED_STRIDE + i
_VIDEO_SALT = 0x56494445  # keeps video scenes apart from image scenes with the same seed

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma weights
SEPIA = np.array([  # the classic sepia matrix: out = SEPIA @ rgb, then clipped
    [0.393, 0.769, 0.189],
    [0.349, 0.686, 0.168],
    [0.272, 0.534, 0.131],
])
TINT_STRENGTH = 0.3  # tint: (1 - s) * x + s * colour
BRIGHTER_KEEP = 0.6  # brighter: 1 - 0.6 * (1 - x)
DARKER_GAIN = 0.6  # darker: 0.6 * x
MORE_CONTRAST = 1.6  # contrast: (x - 0.5) * k + 0.5
LESS_CONTRAST = 0.5
POSTERIZE_LEVELS = 4  # posterize: round(x * 3) / 3 -> 4 levels per channel
NIGHT_SATURATION = 0.4  # night: keep 40% of the saturation,
NIGHT_GAIN = np.array([0.30, 0.40, 0.65])  # darken with a blue bias,
NIGHT_LIFT = np.array([0.00, 0.02, 0.08])  # and lift the blue shadows


# ----------------------------------------------------------------------------------------------- edits


def _luma(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * LUMA[0] + x[..., 1] * LUMA[1] + x[..., 2] * LUMA[2]  # not `@`: no BLAS threads


def grayscale(x: np.ndarray) -> np.ndarray:
    return np.repeat(_luma(x)[..., None], 3, axis=-1)


def sepia(x: np.ndarray) -> np.ndarray:
    return x[..., 0, None] * SEPIA[:, 0] + x[..., 1, None] * SEPIA[:, 1] + x[..., 2, None] * SEPIA[:, 2]


def invert(x: np.ndarray) -> np.ndarray:
    return 1.0 - x


def _tint(colour: tuple[float, float, float]) -> Callable[[np.ndarray], np.ndarray]:
    target = np.array(colour, dtype=np.float64)

    def tint(x: np.ndarray) -> np.ndarray:
        return (1.0 - TINT_STRENGTH) * x + TINT_STRENGTH * target

    return tint


def brighter(x: np.ndarray) -> np.ndarray:
    return 1.0 - BRIGHTER_KEEP * (1.0 - x)


def darker(x: np.ndarray) -> np.ndarray:
    return DARKER_GAIN * x


def more_contrast(x: np.ndarray) -> np.ndarray:
    return (x - 0.5) * MORE_CONTRAST + 0.5


def less_contrast(x: np.ndarray) -> np.ndarray:
    return (x - 0.5) * LESS_CONTRAST + 0.5


def posterize(x: np.ndarray) -> np.ndarray:
    steps = POSTERIZE_LEVELS - 1
    return np.round(x * steps) / steps


def night(x: np.ndarray) -> np.ndarray:
    gray = _luma(x)[..., None]
    desaturated = gray + NIGHT_SATURATION * (x - gray)
    return desaturated * NIGHT_GAIN + NIGHT_LIFT


@dataclass(frozen=True)
class Edit:
    """A global edit: a closed-form function on float RGB in [0, 1] and the ways to ask for it."""

    name: str
    function: Callable[[np.ndarray], np.ndarray]
    phrasings: tuple[str, ...]

    @property
    def held_out(self) -> str:
        """The phrasing kept out of the training split (the test split uses only this one)."""
        return self.phrasings[-1]

    @property
    def train_phrasings(self) -> tuple[str, ...]:
        return self.phrasings[:-1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.function(x)


_EDIT_LIST = [
    Edit("grayscale", grayscale, (
        "make it grayscale", "turn it black and white", "remove the color", "convert to monochrome",
        "drain all the color out of it", "make it look like a black-and-white photo",
    )),
    Edit("sepia", sepia, (
        "apply a sepia filter", "make it sepia", "give it a sepia tone", "make it look like an antique photograph",
        "give it a warm brownish vintage look", "make it look like an old sepia print",
    )),
    Edit("invert", invert, (
        "invert the colors", "make it a negative", "turn it into a photo negative", "reverse all the colors",
        "swap every color for its opposite", "make it look like a film negative",
    )),
    Edit("red_tint", _tint((1.0, 0.0, 0.0)), (
        "tint it red", "give it a red tint", "make it reddish", "add a red color cast",
        "bathe it in red light", "make everything look a bit red",
    )),
    Edit("green_tint", _tint((0.0, 1.0, 0.0)), (
        "tint it green", "give it a green tint", "make it greenish", "add a green color cast",
        "bathe it in green light", "make everything look a bit green",
    )),
    Edit("blue_tint", _tint((0.0, 0.0, 1.0)), (
        "tint it blue", "give it a blue tint", "make it bluish", "add a blue color cast",
        "bathe it in blue light", "make everything look a bit blue",
    )),
    Edit("brighter", brighter, (
        "make it brighter", "brighten it", "increase the brightness", "lighten the image",
        "turn up the brightness", "make it look more brightly lit",
    )),
    Edit("darker", darker, (
        "make it darker", "darken it", "decrease the brightness", "dim the image",
        "turn down the brightness", "make it look more dimly lit",
    )),
    Edit("more_contrast", more_contrast, (
        "increase the contrast", "add more contrast", "boost the contrast", "make it more contrasty",
        "make the darks darker and the lights lighter", "give it punchier contrast",
    )),
    Edit("less_contrast", less_contrast, (
        "decrease the contrast", "reduce the contrast", "lower the contrast", "make it look washed out",
        "flatten the contrast", "make it look faded and flat",
    )),
    Edit("posterize", posterize, (
        "posterize it", "reduce the number of colors", "make it look like a poster", "quantize the colors",
        "use only a few flat color levels", "make the colors flat and banded",
    )),
    Edit("night", night, (
        "make it night", "turn day into night", "make it look like nighttime",
        "make it look like it was taken at night",
        "set the scene at night", "make it a dark blue night scene",
    )),
]

EDITS: dict[str, Edit] = {edit.name: edit for edit in _EDIT_LIST}
EDIT_NAMES: tuple[str, ...] = tuple(EDITS)
SPLITS = ("train", "test")


def _edit(name: str) -> Edit:
    try:
        return EDITS[name]
    except KeyError:
        raise UsageError(f"unknown edit {name!r}: choose from {', '.join(EDIT_NAMES)}") from None


def phrasings(name: str, split: str | None = None) -> tuple[str, ...]:
    """The phrasings of edit `name` for `split`: train (all but the held-out one), test (only it), None (all)."""
    edit = _edit(name)
    if split is None:
        return edit.phrasings
    if split == "train":
        return edit.train_phrasings
    if split == "test":
        return (edit.held_out,)
    raise UsageError(f"unknown split {split!r}: use train, test or None")


def quantize(x: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] (clipped) -> uint8, rounding to nearest."""
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def apply_edit(name: str, image: np.ndarray) -> np.ndarray:
    """The exact ground truth of edit `name` on a uint8 RGB image (or a T x H x W x 3 stack of frames)."""
    edit = _edit(name)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim < 3 or image.shape[-1] != 3:
        raise UsageError(f"apply_edit takes uint8 RGB arrays (..., H, W, 3), got {image.dtype} {image.shape}")
    return quantize(edit(image.astype(np.float64) / 255.0))


# ---------------------------------------------------------------------------------------------- scenes

Pattern = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (X, Y) -> (..., 3) float RGB


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random colour: mostly saturated, sometimes pastel or near-gray, never all the same brightness."""
    return _hsv(rng.random(), rng.uniform(0.15, 1.0) ** 0.7, rng.uniform(0.15, 1.0) ** 0.6).astype(np.float32)


def _lerp(c1: np.ndarray, c2: np.ndarray, t: np.ndarray) -> np.ndarray:
    return c1 + (c2 - c1) * t[..., None]


def _noise(rng: np.random.Generator, cell: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Smooth periodic value noise in [0, 1]: a random 16x16 grid, smoothstep-interpolated."""
    grid = rng.random(256, dtype=np.float32)  # 16 x 16, flattened
    ox, oy = rng.uniform(0, 16, size=2).tolist()

    def sample(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        gx, gy = x / cell + ox, y / cell + oy
        x0, y0 = np.floor(gx), np.floor(gy)
        fx, fy = gx - x0, gy - y0
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        x0, y0 = x0.astype(np.intp) & 15, (y0.astype(np.intp) & 15) * 16
        x1, y1 = (x0 + 1) & 15, (y0 + 16) & 255
        top = grid[y0 + x0] * (1 - fx) + grid[y0 + x1] * fx
        bottom = grid[y1 + x0] * (1 - fx) + grid[y1 + x1] * fx
        return top * (1 - fy) + bottom * fy

    return sample


def _pattern(rng: np.random.Generator, scale: float, kinds: dict[str, float]) -> Pattern:
    """A random fill: solid, linear/radial gradient, stripes, checkers or value noise, `scale` pixels across."""
    names = list(kinds)
    weights = np.array([kinds[name] for name in names])
    kind = names[rng.choice(len(names), p=weights / weights.sum())]
    c1, c2, c3 = _colour(rng), _colour(rng), _colour(rng)
    angle = rng.uniform(0, 2 * np.pi)
    ca, sa = math.cos(angle), math.sin(angle)
    if kind == "solid":
        return lambda x, y: np.broadcast_to(c1, x.shape + (3,))
    if kind == "linear":
        offset = rng.uniform(-0.3, 0.3) * scale
        mid = rng.uniform(0.3, 0.7)

        def linear(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            t = np.clip(0.5 + (x * ca + y * sa - offset) / scale, 0.0, 1.0)
            return np.where(
                (t < mid)[..., None], _lerp(c1, c2, t / mid), _lerp(c2, c3, (t - mid) / (1 - mid))
            )

        return linear
    if kind == "radial":
        cx, cy = (rng.uniform(-0.4, 0.4, size=2) * scale).tolist()
        radius = rng.uniform(0.5, 1.2) * scale
        return lambda x, y: _lerp(c1, c2, np.clip(np.hypot(x - cx, y - cy) / radius, 0.0, 1.0))
    if kind == "stripes":
        period = rng.uniform(0.08, 0.35) * scale
        sharp = rng.uniform(1.0, 6.0)
        phase = rng.uniform(0, 2 * np.pi)

        def stripes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            wave = np.sin(2 * np.pi * (x * ca + y * sa) / period + phase)
            return _lerp(c1, c2, np.clip(0.5 + 0.5 * sharp * wave, 0.0, 1.0))

        return stripes
    if kind == "checkers":
        period = rng.uniform(0.1, 0.3) * scale

        def checkers(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            u, v = (x * ca + y * sa) / period, (-x * sa + y * ca) / period
            return _lerp(c1, c2, ((np.floor(u) + np.floor(v)) % 2).astype(np.float32))

        return checkers
    coarse, fine = _noise(rng, rng.uniform(0.15, 0.5) * scale), _noise(rng, rng.uniform(0.04, 0.12) * scale)
    weight = rng.uniform(0.1, 0.4)
    return lambda x, y: _lerp(c1, c2, (1 - weight) * coarse(x, y) + weight * fine(x, y))


_BACKGROUNDS = {"linear": 0.35, "radial": 0.2, "noise": 0.25, "stripes": 0.1, "checkers": 0.1}
_TEXTURES = {"noise": 0.5, "stripes": 0.3, "checkers": 0.2}
_FILLS = {"solid": 0.45, "linear": 0.2, "radial": 0.1, "stripes": 0.1, "checkers": 0.07, "noise": 0.08}


@dataclass
class _Shape:
    kind: str  # ellipse, rect, polygon
    centre: np.ndarray  # world position at t = 0
    velocity: np.ndarray  # pixels per frame
    angle: float
    spin: float  # radians per frame
    half: tuple[float, float]  # half-axes (ellipse, rect) or the polygon's radius
    vertices: np.ndarray | None  # polygon vertices in local coordinates, (n, 2)
    fill: Pattern
    alpha: float
    sphere: float  # sphere-shading strength (0: flat)
    shadow: float  # shadow darkening (0: none)


@dataclass
class _Scene:
    height: int
    width: int
    background: Pattern
    shapes: list[_Shape]
    pan: np.ndarray  # camera velocity, pixels per frame
    light: tuple[float, float, float]  # (strength, direction cos, direction sin)
    vignette: float
    shadow_offset: np.ndarray
    exposure: float = 1.0  # a gain on the rendered light (clipped at white)


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if int(height) < 8 or int(width) < 8:
        raise UsageError(f"scenes are at least 8x8 pixels, got {width}x{height}")
    return int(height), int(width)


def _random_scene(rng: np.random.Generator, height: int, width: int, frames: int = 1) -> _Scene:
    extent = float(max(height, width))
    small = float(min(height, width))
    background = _pattern(rng, extent, _BACKGROUNDS)
    if rng.random() < 0.5:  # a texture overlaid on the background
        base, texture, opacity = background, _pattern(rng, extent, _TEXTURES), rng.uniform(0.15, 0.45)
        background = lambda x, y: (1 - opacity) * base(x, y) + opacity * texture(x, y)  # noqa: E731
    moving = frames > 1
    pan = np.zeros(2)
    if moving:
        heading = rng.uniform(0, 2 * np.pi)
        pan = rng.uniform(0.015, 0.04) * extent * np.array([math.cos(heading), math.sin(heading)])
    light_angle = rng.uniform(0, 2 * np.pi)
    shapes = []
    for index in range(int(rng.integers(2, 8))):
        kind = ("ellipse", "ellipse", "rect", "polygon")[int(rng.integers(4))]
        radius = rng.uniform(0.08, 0.3) * small
        half = (radius, radius if rng.random() < 0.5 else radius * rng.uniform(0.4, 1.0))
        vertices = None
        if kind == "polygon":
            n = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * np.pi / n, size=n) * 0.6 + np.arange(n) * 2 * np.pi / n)
            radii = radius * rng.uniform(0.55, 1.0, size=n) if rng.random() < 0.6 else np.full(n, radius)
            vertices = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        centre = rng.uniform(-0.1, 1.1, size=2) * np.array([width, height]) + pan * (frames - 1) * rng.random()
        velocity = np.zeros(2)
        spin = 0.0
        if moving and (index == 0 or rng.random() < 0.6):
            heading = rng.uniform(0, 2 * np.pi)
            velocity = rng.uniform(0.01, 0.05) * extent * np.array([math.cos(heading), math.sin(heading)])
            spin = rng.uniform(-0.12, 0.12) if rng.random() < 0.5 else 0.0
        shapes.append(_Shape(
            kind=kind, centre=centre, velocity=velocity, angle=rng.uniform(0, 2 * np.pi), spin=spin,
            half=half, vertices=vertices, fill=_pattern(rng, 2 * radius, _FILLS),
            alpha=1.0 if rng.random() < 0.75 else rng.uniform(0.5, 0.9),
            sphere=rng.uniform(0.3, 0.7) if kind == "ellipse" and rng.random() < 0.4 else 0.0,
            shadow=rng.uniform(0.2, 0.45) if rng.random() < 0.4 else 0.0,
        ))
    return _Scene(
        height=height, width=width, background=background, shapes=shapes, pan=pan,
        light=(rng.uniform(0.0, 0.5), math.cos(light_angle), math.sin(light_angle)),
        vignette=rng.uniform(0.0, 0.8) if rng.random() < 0.6 else 0.0,
        shadow_offset=0.04 * small * np.array([-math.cos(light_angle), -math.sin(light_angle)]),
        exposure=(math.exp(rng.uniform(*np.log(EXPOSURE_RANGE))) if rng.random() < EXPOSED_FRACTION else 1.0),
    )


def _inside(shape: _Shape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether local points (u, v) are inside the shape: a boolean mask."""
    a, b = shape.half
    if shape.kind == "ellipse":
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if shape.kind == "rect":
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    inside = np.zeros(u.shape, dtype=bool)  # even-odd crossing test over the polygon's edges
    verts = shape.vertices
    assert verts is not None, "a polygon has vertices"
    for (x1, y1), (x2, y2) in zip(verts.tolist(), np.roll(verts, -1, axis=0).tolist()):
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        inside ^= crosses & (u < (x2 - x1) * (v - y1) / (y2 - y1) + x1)
    return inside


def _local(shape: _Shape, x: np.ndarray, y: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    cx, cy = (shape.centre + shape.velocity * t).tolist()
    angle = shape.angle + shape.spin * t
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    return dx * ca + dy * sa, -dx * sa + dy * ca


def _reach(shape: _Shape) -> float:
    """A radius around the centre that contains the whole shape."""
    a, b = shape.half
    if shape.kind == "ellipse":
        return max(a, b)
    if shape.kind == "rect":
        return math.hypot(a, b)
    assert shape.vertices is not None, "a polygon has vertices"
    return float(np.hypot(shape.vertices[:, 0], shape.vertices[:, 1]).max())


def _window(xs: np.ndarray, ys: np.ndarray, centre: np.ndarray, reach: float) -> tuple[slice, slice]:
    """The rows and columns of the sample grid (sorted world coordinates xs, ys) within `reach` of `centre`."""
    cols = slice(int(np.searchsorted(xs, centre[0] - reach)), int(np.searchsorted(xs, centre[0] + reach, "right")))
    rows = slice(int(np.searchsorted(ys, centre[1] - reach)), int(np.searchsorted(ys, centre[1] + reach, "right")))
    return rows, cols


def _render(scene: _Scene, t: float = 0.0) -> np.ndarray:
    """Frame `t` of the scene as uint8 H x W x 3 (supersampled, then box-filtered).

    Shapes are only evaluated in the window of the sample grid that can contain them.
    """
    h, w, ss = scene.height, scene.width, SUPERSAMPLE
    fx = (np.arange(w * ss) + 0.5) / ss
    fy = (np.arange(h * ss) + 0.5) / ss
    # world coordinates seen by the camera; float32 throughout the render for speed
    xs, ys = (fx + scene.pan[0] * t).astype(np.float32), (fy + scene.pan[1] * t).astype(np.float32)
    x, y = np.meshgrid(xs, ys)
    image: np.ndarray = np.array(scene.background(x, y), dtype=np.float32)
    for shape in scene.shapes:
        centre, reach = shape.centre + shape.velocity * t, _reach(shape)
        if shape.shadow:
            rows, cols = _window(xs, ys, centre + scene.shadow_offset, reach)
            if rows.stop > rows.start and cols.stop > cols.start:
                sx, sy = x[rows, cols], y[rows, cols]
                ox, oy = scene.shadow_offset.tolist()
                su, sv = _local(shape, sx - ox, sy - oy, t)
                image[rows, cols] *= 1.0 - shape.shadow * _inside(shape, su, sv)[..., None]
        rows, cols = _window(xs, ys, centre, reach)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            continue
        u, v = _local(shape, x[rows, cols], y[rows, cols], t)
        mask = _inside(shape, u, v)
        if not mask.any():
            continue
        fill: np.ndarray = np.array(shape.fill(u, v), dtype=np.float32)
        if shape.sphere:
            a, b = shape.half
            # highlight towards the light: brighter near (-0.4, -0.4) of the unit disc, darker at the rim
            d = np.hypot(u / a + 0.4 * scene.light[1], v / b + 0.4 * scene.light[2])
            fill = fill * (1.0 + shape.sphere * (0.6 - d))[..., None]
        alpha = shape.alpha * mask[..., None]
        image[rows, cols] = image[rows, cols] * (1.0 - alpha) + fill * alpha
    strength, lc, ls = scene.light
    nx, ny = fx / w - 0.5, fy / h - 0.5
    nx, ny = nx.astype(np.float32), ny.astype(np.float32)
    nx, ny = nx[None, :], ny[:, None]
    shade = 1.0 + strength * (nx * lc + ny * ls) - scene.vignette * (nx * nx + ny * ny)
    image = image * (scene.exposure * shade)[..., None]
    tiles = sum(image[i::ss, j::ss] for i in range(ss) for j in range(ss))
    image = np.asarray(tiles) * (1.0 / (ss * ss))  # box filter
    return quantize(image)


def make_scene(rng: np.random.Generator, size: int | tuple[int, int] = 64) -> np.ndarray:
    """A random still scene, uint8 H x W x 3; `size` is an int (square) or (height, width)."""
    height, width = _size(size)
    return _render(_random_scene(rng, height, width))


def _pick(rng: np.random.Generator, split: str | None) -> tuple[str, str]:
    name = EDIT_NAMES[int(rng.integers(len(EDIT_NAMES)))]
    pool = phrasings(name, split)
    return name, pool[int(rng.integers(len(pool)))]


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"seeds are non-negative integers, got {seed!r}")
    return int(seed)


def make_sample(seed: int, size: int | tuple[int, int] = 64, split: str | None = None) -> dict[str, Any]:
    """One triplet: dict(source, edited (uint8 H x W x 3), instruction, edit (its name)).

    `split` picks the phrasing pool: "train" never uses an edit's held-out phrasing, "test" uses only
    it, None uses any. The scene and the edit depend only on the seed.
    """
    rng = np.random.default_rng(_check_seed(seed))
    source = make_scene(rng, size)
    name, instruction = _pick(rng, split)
    return {"source": source, "edited": apply_edit(name, source), "instruction": instruction, "edit": name}


def make_video(
    seed: int, frames: int = 16, size: int | tuple[int, int] = 64, split: str | None = None
) -> dict[str, Any]:
    """A panning scene with moving objects: dict(source_frames, edited_frames (uint8 T x H x W x 3),
    instruction, edit); the same edit on every frame."""
    if int(frames) < 1:
        raise UsageError(f"a video has at least 1 frame, got {frames}")
    rng = np.random.default_rng([_check_seed(seed), _VIDEO_SALT])
    height, width = _size(size)
    scene = _random_scene(rng, height, width, frames=int(frames))
    source = np.stack([_render(scene, float(t)) for t in range(int(frames))])
    name, instruction = _pick(rng, split)
    return {
        "source_frames": source, "edited_frames": apply_edit(name, source), "instruction": instruction, "edit": name,
    }


# ------------------------------------------------------------------------------------------ the writer


def sample_seeds(seed: int, split: str, count: int) -> range:
    """The sample seeds of a dataset's split: train and test come from disjoint ranges of one dataset seed."""
    base = _check_seed(seed) * SEED_STRIDE + (TEST_SEED_OFFSET if split == "test" else 0)
    return range(base, base + count)


def split_counts(count: int, test_fraction: float) -> tuple[int, int]:
    """(train, test) counts: at least one of each when count >= 2 and the fraction is positive."""
    test = round(count * test_fraction)
    if test_fraction > 0 and count >= 2:
        test = min(max(test, 1), count - 1)
    return count - test, test
