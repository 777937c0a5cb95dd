"""Training data that looks like footage: crops of, and camera moves over, photographs that ship inside installed
packages, mixed with synthetic photographic scenes (movie_core.data.natural), each with an exact closed-form edit.

Photographs: scikit-image's bundled samples (no download: the ones that need pooch are not listed) and
scikit-learn's two sample images, each with its licence as the package states it (TRAINING_PHOTOS). One that is not
installed is skipped, and the manifest says so. Grey photographs are colourised by a random two-colour map most of
the time, so their texture comes in every colour.

**Evaluation photographs are never training data.** scikit-image's astronaut, coffee, chelsea (also served as
`cat`), rocket and camera (EVALUATION_PHOTOS) are what the model is judged on; `training_photos` refuses any photo
whose name is one of them or whose pixels equal one of them, so adding one to TRAINING_PHOTOS by mistake fails.

Samples (`make_photo_sample`, `make_photo_video`) mirror procedural.make_sample / make_video and are deterministic in
their seed: a still is a random crop of a photo (random scale, position, flip, colour jitter: gains, contrast,
saturation, gamma, exposure; sometimes blur and sensor noise) or a photographic scene; a video is a camera move
(pan, with a zoom in or out half of the time) over a photo or a scene rendered larger, at sub-pixel steps.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from movie_core.data import natural, procedural
from movie_core.errors import UsageError

PHOTO_GENERATOR_VERSION = 1
SOURCES = ("procedural", "photos", "mixed")  # `movie data nano --source`
# scikit-image's sample photographs that the evaluation uses (movie_plugins.nano.train.PHOTOS, scripts/photo_eval.py):
# never in a training set. `cat` is scikit-image's other name for chelsea.
EVALUATION_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")
EVALUATION_ALIASES = {"cat": "chelsea"}
PHOTO_FRACTION = 0.65  # of the `photos` source's samples: crops of real photographs; the rest photographic scenes
COLOURISE_GREY = 0.75  # grey photographs shown through a random two-colour map this often
_SALT = 0x50484F54  # keeps photo samples apart from procedural ones with the same seed
_MIX_SALT = 0x4D495844


@dataclass(frozen=True)
class Photo:
    """A photograph shipped inside a package: where it comes from and its licence, as the package states them."""

    package: str  # the distribution that ships it
    name: str  # its name there
    licence: str
    source: str
    load: Callable[[], np.ndarray]

    @property
    def key(self) -> str:
        return f"{self.package}:{self.name}"


def _skimage(name: str, index: int | None = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return np.asarray(image[index] if index is not None else image)

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(name))

    return load


_CC0 = "CC0 1.0"
TRAINING_PHOTOS: tuple[Photo, ...] = (
    Photo("scikit-image", "stereo_motorcycle[left]", "Middlebury 2014 stereo benchmark (no licence stated)",
          "Middlebury College stereo dataset, downsampled 4x", _skimage("stereo_motorcycle", 0)),
    Photo("scikit-image", "stereo_motorcycle[right]", "Middlebury 2014 stereo benchmark (no licence stated)",
          "Middlebury College stereo dataset, downsampled 4x", _skimage("stereo_motorcycle", 1)),
    Photo("scikit-image", "brick", _CC0, "CC0Textures Bricks25", _skimage("brick")),
    Photo("scikit-image", "grass", _CC0, "DeviantArt linolafett Grass-01", _skimage("grass")),
    Photo("scikit-image", "gravel", _CC0, "CC0Textures Gravel04", _skimage("gravel")),
    Photo("scikit-image", "colorwheel", "none stated", "scikit-image", _skimage("colorwheel")),
    Photo("scikit-image", "hubble_deep_field", "public domain (NASA)", "HubbleSite release 2012-37",
          _skimage("hubble_deep_field")),
    Photo("scikit-image", "retina", _CC0, "Wikimedia Commons, Mikael Haggstrom", _skimage("retina")),
    Photo("scikit-image", "immunohistochemistry", "no known copyright restrictions",
          "Center for Microscopy And Molecular Imaging (CMMI)", _skimage("immunohistochemistry")),
    Photo("scikit-image", "coins", "no known copyright restrictions", "Brooklyn Museum Collection",
          _skimage("coins")),
    Photo("scikit-image", "moon", "none stated", "scikit-image", _skimage("moon")),
    Photo("scikit-image", "clock", "public domain (released by the photographer, Stefan van der Walt)",
          "scikit-image", _skimage("clock")),
    Photo("scikit-image", "page", "none stated", "scikit-image", _skimage("page")),
    Photo("scikit-image", "text", "public domain", "Wikipedia File:Corner.png", _skimage("text")),
    Photo("scikit-image", "cell", _CC0, "qpformat hologram (Mueller et al.)", _skimage("cell")),
    Photo("scikit-learn", "china.jpg", "CC BY 2.0", "Flickr, danielbuechele", _sklearn("china.jpg")),
    Photo("scikit-learn", "flower.jpg", "CC BY 2.0", "Flickr, vultilion", _sklearn("flower.jpg")),
)
FACES = Photo("scikit-image", "lfw_subset[:100]", "Labeled Faces in the Wild (no licence stated)",
              "LFW, 100 face crops of 25x25 (pasted into photographic scenes)", _skimage("lfw_subset"))


def _rgb(image: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 from grey, RGB or RGBA, uint8 or float in [0, 1]."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(np.clip(image.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(_rgb(image).tobytes() + str(_rgb(image).shape).encode()).hexdigest()


@functools.cache
def evaluation_digests() -> frozenset[str]:
    """Digests of the evaluation photographs' pixels (empty without scikit-image)."""
    try:
        import skimage.data
    except ImportError:
        return frozenset()
    return frozenset(_digest(getattr(skimage.data, name)()) for name in EVALUATION_PHOTOS)


def check_not_evaluation(photo: Photo, image: np.ndarray) -> None:
    """Refuse a training photo that is one of the evaluation photographs, by name or by pixels."""
    bare = photo.name.split("[")[0]
    if photo.package == "scikit-image" and EVALUATION_ALIASES.get(bare, bare) in EVALUATION_PHOTOS:
        raise UsageError(f"{photo.key} is an evaluation photograph: it cannot be training data")
    if _digest(image) in evaluation_digests():
        raise UsageError(f"{photo.key} has the pixels of an evaluation photograph: it cannot be training data")


@dataclass(frozen=True)
class PhotoPool:
    photos: tuple[tuple[Photo, np.ndarray], ...]  # (photo, uint8 H x W x 3)
    grey: tuple[bool, ...]
    faces: np.ndarray | None  # (N, 25, 25) float in [0, 1]
    skipped: tuple[tuple[str, str], ...]  # (key, why)

    def manifest(self) -> dict[str, Any]:
        """Which photographs train (package, name, licence, source, size) and which are held out."""
        from importlib.metadata import PackageNotFoundError, version

        def package_version(name: str) -> str | None:
            try:
                return version(name)
            except PackageNotFoundError:
                return None

        rows = [{"package": p.package, "version": package_version(p.package), "name": p.name, "licence": p.licence,
                 "source": p.source, "height": int(a.shape[0]), "width": int(a.shape[1]), "grey": g}
                for (p, a), g in zip(self.photos, self.grey)]
        if self.faces is not None:
            rows.append({"package": FACES.package, "version": package_version(FACES.package), "name": FACES.name,
                         "licence": FACES.licence, "source": FACES.source, "height": 25, "width": 25, "grey": True})
        return {
            "train": rows,
            "held_out": [{"package": "scikit-image", "name": n, "why": "evaluation photograph"}
                         for n in EVALUATION_PHOTOS]
            + [{"package": "scikit-image", "name": alias, "why": f"the same image as {name}"}
               for alias, name in EVALUATION_ALIASES.items()],
            "skipped": [{"name": key, "why": why} for key, why in self.skipped],
        }


@functools.cache
def training_photos() -> PhotoPool:
    """The training photographs that are installed (uint8 RGB), the LFW faces, and what was skipped and why."""
    loaded, grey, skipped = [], [], []
    for photo in TRAINING_PHOTOS:
        try:
            raw = photo.load()
        except ImportError as exc:
            skipped.append((photo.key, f"{photo.package} is not installed ({exc.name})"))
            continue
        except (OSError, ValueError, AttributeError) as exc:  # a sample missing from this version of the package
            skipped.append((photo.key, f"not available offline: {' '.join(str(exc).split())[:120]}"))
            continue
        image = _rgb(raw)
        check_not_evaluation(photo, image)
        loaded.append((photo, image))
        grey.append(bool(raw.ndim == 2 or (np.array_equal(image[..., 0], image[..., 1])
                                           and np.array_equal(image[..., 1], image[..., 2]))))
    faces = None
    try:
        faces = np.asarray(FACES.load()[:100], dtype=np.float32)
    except (ImportError, OSError, ValueError, AttributeError) as exc:
        skipped.append((FACES.key, " ".join(str(exc).split())[:120]))
    return PhotoPool(tuple(loaded), tuple(grey), faces, tuple(skipped))


def _pool(require_photos: bool = True) -> PhotoPool:
    pool = training_photos()
    if require_photos and not pool.photos:
        raise UsageError("no training photographs are installed: pip install 'movie[data]' "
                         "(or use --source procedural)")
    return pool


# ------------------------------------------------------------------------------------------- looks


def _colourise(rng: np.random.Generator, grey: np.ndarray) -> np.ndarray:
    """A grey float image through a random dark-to-light two-colour map."""
    dark = procedural._hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.0, 0.35))
    light = procedural._hsv(rng.random(), rng.uniform(0.05, 0.6), rng.uniform(0.65, 1.0))
    g = grey[..., :1]
    return dark + (light - dark) * g


def _jitter(rng: np.random.Generator, image: np.ndarray, grey: bool) -> np.ndarray:
    """Colour jitter of a float RGB image: per-channel gains, contrast, saturation, gamma, sometimes exposure."""
    if grey and rng.random() < COLOURISE_GREY:
        image = _colourise(rng, image)
    luma = procedural._luma(image)[..., None]
    image = luma + rng.uniform(0.4, 1.4) * (image - luma)  # saturation
    image = image * rng.uniform(0.85, 1.15, size=3)  # white balance
    mean = float(luma.mean())
    image = (image - mean) * rng.uniform(0.7, 1.3) + mean  # contrast
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.8, 1.25)  # gamma
    if rng.random() < 0.3:
        image = image * math.exp(rng.uniform(math.log(0.35), math.log(1.3)))
    return image


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Sometimes sensor noise; clipped and quantised to uint8."""
    if rng.random() < 0.3:
        image = image + rng.normal(0, rng.uniform(0.004, 0.025), size=image.shape)
    return procedural.quantize(image)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def _pick_photo(rng: np.random.Generator, pool: PhotoPool) -> tuple[np.ndarray, bool]:
    index = int(rng.integers(len(pool.photos)))
    return pool.photos[index][1], pool.grey[index]


def _scene(rng: np.random.Generator, pool: PhotoPool, height: int, width: int) -> np.ndarray:
    """A photographic scene as uint8 H x W x 3 (rendered square at the long side, cropped)."""
    side = max(height, width)
    image = procedural.quantize(natural.photographic_scene(rng, side, pool.faces))
    top, left = int(rng.integers(side - height + 1)), int(rng.integers(side - width + 1))
    return image[top:top + height, left:left + width]


def photo_image(rng: np.random.Generator, size: int | tuple[int, int] = 64) -> np.ndarray:
    """A still: a random crop of a training photograph (or a photographic scene), uint8 H x W x 3."""
    height, width = procedural._size(size)
    pool = _pool()
    if rng.random() >= PHOTO_FRACTION:
        return _finish(rng, _scene(rng, pool, height, width).astype(np.float64) / 255.0)
    photo, grey = _pick_photo(rng, pool)
    h, w = photo.shape[:2]
    fit = min(h / height, w / width)  # the largest window of the output's aspect that fits
    scale = math.exp(rng.uniform(math.log(min(1.0, fit)), math.log(fit))) if fit > 1 else fit
    ch, cw = max(1, min(h, round(height * scale))), max(1, min(w, round(width * scale)))
    top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    crop = photo[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    image = _resize(np.ascontiguousarray(crop), width, height).astype(np.float64) / 255.0
    image = _jitter(rng, image, grey)
    if rng.random() < 0.2:
        image = natural.blur(image, rng.uniform(0.3, 1.0)) if height == width else image
    return _finish(rng, image)


def camera_move(rng: np.random.Generator, photo: np.ndarray, frames: int, height: int, width: int) -> np.ndarray:
    """Consecutive frames (uint8 T x H x W x 3) of a camera panning over `photo`, zooming in or out half the time.

    The window keeps the output's aspect; its centre moves 1-4% of its width per frame in a random direction (less
    where the photo is too small), at sub-pixel positions (bicubic sampling of a copy resized so the window is about
    the output's size, so a zoomed-out view is filtered, not aliased)."""
    from PIL import Image

    h, w = photo.shape[:2]
    fit = min(h / height, w / width)
    start_scale = math.exp(rng.uniform(math.log(min(1.0, fit)), math.log(fit))) * rng.uniform(0.7, 0.95)
    zoom = math.exp(rng.uniform(-0.25, 0.25)) if rng.random() < 0.5 else 1.0
    scales = start_scale * zoom ** np.linspace(0.0, 1.0, frames)
    scales = np.minimum(scales, fit)
    heading = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(0.01, 0.04) * width * float(scales.min())
    steps = np.arange(frames) - (frames - 1) / 2
    cx = w / 2 + rng.uniform(-0.5, 0.5) * w + speed * math.cos(heading) * steps
    cy = h / 2 + rng.uniform(-0.5, 0.5) * h + speed * math.sin(heading) * steps
    half_w, half_h = width * scales / 2, height * scales / 2
    # keep every window inside the photo: a path longer than the room there is is shortened, then shifted in
    for centre, half, extent in ((cx, half_w, w), (cy, half_h, h)):
        room, span = extent - 2 * float(half.max()), float(np.ptp(centre))
        if span > room:
            centre[:] = centre.mean() + (centre - centre.mean()) * max(0.0, room) / span
        low, high = float((centre - half).min()), float((centre + half).max())
        centre += max(0.0, -low) - max(0.0, high - extent)
        np.clip(centre, half, extent - half, out=centre)
    factor = min(1.0, 1.25 / float(scales.min()))  # the copy in which the smallest window is ~1.25x the output
    big = Image.fromarray(np.ascontiguousarray(photo))
    if factor < 1.0:
        big = big.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.LANCZOS)
    fx, fy = big.width / w, big.height / h
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        box = ((cx[t] - half_w[t]) * fx, (cy[t] - half_h[t]) * fy, (cx[t] + half_w[t]) * fx,
               (cy[t] + half_h[t]) * fy)
        out[t] = np.asarray(big.transform((width, height), Image.Transform.EXTENT, box, Image.Resampling.BICUBIC))
    return out


def photo_video(rng: np.random.Generator, frames: int = 16, size: int | tuple[int, int] = 64) -> np.ndarray:
    """A camera move over a training photograph (or a photographic scene rendered 3x larger), uint8 T x H x W x 3,
    with one colour jitter and one noise level for the whole clip."""
    height, width = procedural._size(size)
    pool = _pool()
    if rng.random() < PHOTO_FRACTION:
        photo, grey = _pick_photo(rng, pool)
    else:
        photo, grey = _scene(rng, pool, 3 * height, 3 * width), False
    if rng.random() < 0.5:
        photo = photo[:, ::-1]
    clip = camera_move(rng, photo, frames, height, width).astype(np.float64) / 255.0
    looks = np.random.default_rng(int(rng.integers(2**63)))
    state = looks.bit_generator.state
    graded = []
    for frame in clip:  # the same jitter on every frame: one generator state replayed
        looks.bit_generator.state = state
        graded.append(_jitter(looks, frame, grey))
    noisy = rng.random() < 0.3
    sigma = rng.uniform(0.004, 0.02)
    return np.stack([procedural.quantize(g + (rng.normal(0, sigma, size=g.shape) if noisy else 0.0))
                     for g in graded])


# ------------------------------------------------------------------------------------------ samples


def _use_photos(seed: int, source: str) -> bool:
    if source not in SOURCES:
        raise UsageError(f"unknown data source {source!r}: choose from {', '.join(SOURCES)}")
    if source == "mixed":
        return bool(np.random.default_rng([seed, _MIX_SALT]).random() < 0.5)
    return source == "photos"


def make_photo_sample(seed: int, size: int | tuple[int, int] = 64, split: str | None = None) -> dict[str, Any]:
    """Like procedural.make_sample, on a photo crop or photographic scene; `origin` says which."""
    rng = np.random.default_rng([procedural._check_seed(seed), _SALT])
    source = photo_image(rng, size)
    name, instruction = procedural._pick(rng, split)
    return {"source": source, "edited": procedural.apply_edit(name, source), "instruction": instruction,
            "edit": name}


def make_photo_video(seed: int, frames: int = 16, size: int | tuple[int, int] = 64,
                     split: str | None = None) -> dict[str, Any]:
    """Like procedural.make_video, a camera move over a photo or photographic scene."""
    if int(frames) < 1:
        raise UsageError(f"a video has at least 1 frame, got {frames}")
    rng = np.random.default_rng([procedural._check_seed(seed), _SALT, procedural._VIDEO_SALT])
    source = photo_video(rng, int(frames), size)
    name, instruction = procedural._pick(rng, split)
    return {"source_frames": source, "edited_frames": procedural.apply_edit(name, source),
            "instruction": instruction, "edit": name}


def sample(seed: int, size: int | tuple[int, int], split: str | None, source: str) -> dict[str, Any]:
    """Sample `seed` of a dataset with data source `source` (procedural, photos or mixed)."""
    if _use_photos(seed, source):
        return make_photo_sample(seed, size, split) | {"origin": "photos"}
    return procedural.make_sample(seed, size, split) | {"origin": "procedural"}


def video(seed: int, frames: int, size: int | tuple[int, int], split: str | None, source: str) -> dict[str, Any]:
    if _use_photos(seed, source):
        return make_photo_video(seed, frames, size, split) | {"origin": "photos"}
    return procedural.make_video(seed, frames, size, split) | {"origin": "procedural"}
