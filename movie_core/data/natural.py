"""Synthetic images with the statistics of photographs, in NumPy (float RGB H x W x 3, roughly in [0, 1]).

The nano family's autoencoder image pool (movie_plugins.nano.train.make_pool) draws from the first four: fractal
colour noise with a 1/f spectrum, dead leaves (occluding discs with power-law radii), textured gradients. The rest
add what footage has and procedural shapes lack: faces at several scales (`draw_face`, a drawn head with eyes,
brows, nose, mouth and hair; `paste_face`, one of scikit-image's LFW face crops, colourised), soft directional
light, depth-of-field blur and sensor noise (`photographic_scene`). movie_core.data.photos mixes these with crops
of real photographs for `movie data nano --source photos`.

Everything is deterministic in the generator passed in. Nothing here needs torch.
"""

from __future__ import annotations

import math

import numpy as np


def fractal_field(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Gaussian noise with a 1/f^beta amplitude spectrum (natural images: beta ~ 1), zero mean, unit std."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f**beta
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(size, size))
    return (field - field.mean()) / (field.std() + 1e-8)


def opponent_to_rgb(lum: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Luminance and two colour-opponent channels (red-green, yellow-blue) -> RGB."""
    return np.stack([lum + 0.6 * c1 + 0.3 * c2, lum - 0.4 * c1 + 0.3 * c2, lum - 0.6 * c2], axis=-1)


def fractal_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """Multi-octave colour noise with natural statistics: strong luminance, weaker and smoother chroma."""
    lum = fractal_field(rng, size, rng.uniform(1.0, 1.8))
    c1 = fractal_field(rng, size, rng.uniform(1.2, 2.0)) * rng.uniform(0.1, 0.5)
    c2 = fractal_field(rng, size, rng.uniform(1.2, 2.0)) * rng.uniform(0.1, 0.5)
    image = opponent_to_rgb(lum, c1, c2) * rng.uniform(0.08, 0.25)
    return image + rng.uniform(0.15, 0.85) + rng.normal(0, 0.08, size=3)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur through the FFT (periodic borders)."""
    if sigma <= 0:
        return image
    size = image.shape[0]
    f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    kernel = np.exp(-2 * (np.pi * sigma * f) ** 2)[..., None]
    return np.real(np.fft.ifft2(np.fft.fft2(image, axes=(0, 1)) * kernel, axes=(0, 1)))


def dead_leaves(rng: np.random.Generator, size: int) -> np.ndarray:
    """Occluding discs and ellipses with power-law radii and textured fills, rendered 2x, blurred a little."""
    big = 2 * size
    palette = np.clip(0.5 + 2.5 * (fractal_image(rng, 8).reshape(-1, 3) - 0.5), 0, 1)
    image = np.broadcast_to(palette[0], (big, big, 3)).copy()
    texture = fractal_field(rng, big, rng.uniform(0.6, 1.2))[..., None] * rng.uniform(0.0, 0.08)
    r_min, r_max = 0.03 * big, 0.7 * big
    for _ in range(int(rng.integers(100, 300))):
        u = rng.random()  # radius with density ~ r^-3 between r_min and r_max: scale-invariant coverage
        r = 1.0 / math.sqrt(u / r_max**2 + (1 - u) / r_min**2)
        cx, cy = rng.uniform(-0.1, 1.1, size=2) * big
        aspect, angle, light = rng.uniform(0.4, 1.0), rng.uniform(0, math.pi), rng.uniform(-0.3, 0.3)
        colour = palette[int(rng.integers(len(palette)))] + rng.normal(0, 0.05, size=3)
        top, bottom = max(0, int(cy - r)), min(big, int(cy + r) + 1)
        left, right = max(0, int(cx - r)), min(big, int(cx + r) + 1)
        if top >= bottom or left >= right:
            continue
        y, x = np.mgrid[top:bottom, left:right].astype(np.float32)
        ca, sa = math.cos(angle), math.sin(angle)
        du, dv = (x - cx) * ca + (y - cy) * sa, (-(x - cx) * sa + (y - cy) * ca) / aspect
        inside = (du * du + dv * dv) <= r * r
        window = image[top:bottom, left:right]
        shade = 1.0 + light * du[inside, None] / r  # a soft light gradient across the leaf
        window[inside] = colour * shade + texture[top:bottom, left:right][inside]
    image = image.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    return blur(image, rng.uniform(0.0, 1.5) if rng.random() < 0.6 else 0.0)


def textured_gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """A two-colour gradient (sky, wall, table) with multiplicative fractal texture and soft blobs."""
    t = np.linspace(0, 1, size)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.clip(0.5 + (np.cos(angle) * (t[None, :] - 0.5) + np.sin(angle) * (t[:, None] - 0.5)), 0, 1)
    a, b = np.clip(fractal_image(rng, 4).reshape(-1, 3)[:2], 0, 1)
    image = a + (b - a) * ramp[..., None]
    image = image * (1 + fractal_field(rng, size, rng.uniform(0.9, 1.8))[..., None] * rng.uniform(0.03, 0.2))
    y, x = np.mgrid[0:size, 0:size] / size
    for _ in range(int(rng.integers(0, 6))):
        cx, cy, s = rng.random(), rng.random(), rng.uniform(0.03, 0.25)
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))[..., None]
        image = image + weight * (rng.random(3) - image) * rng.uniform(0.3, 1.0)
    return image



# ------------------------------------------------------------------------------------------------ faces

SKIN_TONES = np.array([  # light to dark, linear-ish RGB in [0, 1]
    [0.96, 0.80, 0.69], [0.92, 0.71, 0.56], [0.80, 0.58, 0.42], [0.62, 0.42, 0.30], [0.45, 0.30, 0.20],
    [0.30, 0.20, 0.14],
])
HAIR_COLOURS = np.array([
    [0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.45, 0.30, 0.15], [0.75, 0.60, 0.35], [0.55, 0.55, 0.55],
    [0.50, 0.20, 0.08],
])
IRIS_COLOURS = np.array([[0.25, 0.15, 0.08], [0.10, 0.07, 0.05], [0.30, 0.45, 0.60], [0.30, 0.45, 0.30]])


def _soft_ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float = 0.0,
                  feather: float = 1.0) -> np.ndarray:
    """Coverage in [0, 1] of an ellipse (half-axes a, b, rotated by `angle`), its edge `feather` pixels soft."""
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = ((x - cx) * ca + (y - cy) * sa) / a, (-(x - cx) * sa + (y - cy) * ca) / b
    return np.clip(0.5 - (np.sqrt(u * u + v * v) - 1.0) * min(a, b) / feather, 0.0, 1.0)


def _over(window: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-composite `colour` (an RGB triple or an image) over `window`, in place."""
    window *= 1.0 - alpha[..., None]
    window += alpha[..., None] * colour


def _tone(rng: np.random.Generator, palette: np.ndarray, spread: float = 0.08) -> np.ndarray:
    return np.clip(palette[int(rng.integers(len(palette)))] * rng.uniform(1 - spread, 1 + spread, size=3), 0, 1)


def draw_face(image: np.ndarray, rng: np.random.Generator, cx: float, cy: float, radius: float,
              light: tuple[float, float] = (-0.5, -0.5)) -> None:
    """Draw a lit head and shoulders centred at (cx, cy) with half-height `radius` pixels into `image`, in place.

    Skin, hair, eyes (whites, iris, pupil), brows, nose shadow and mouth, lit from `light` (a direction in the image
    plane), slightly tilted; edges are feathered, so a face a few pixels high is a soft blob with the right layout."""
    height, width = image.shape[:2]
    a, b = radius * rng.uniform(0.70, 0.85), radius
    reach = 2.6 * radius
    top, bottom = max(0, int(cy - 1.2 * radius)), min(height, int(cy + reach) + 1)
    left, right = max(0, int(cx - reach)), min(width, int(cx + reach) + 1)
    if top >= bottom or left >= right:
        return
    y, x = (np.mgrid[top:bottom, left:right] + 0.5).astype(np.float32)
    window = image[top:bottom, left:right]
    feather = max(0.7, radius / 30)
    tilt = rng.uniform(-0.25, 0.25)
    ct, st = math.cos(tilt), math.sin(tilt)
    lx, ly = light

    def at(fu: float, fv: float) -> tuple[float, float]:  # face coordinates (units of a, b) -> pixels
        return cx + fu * a * ct - fv * b * st, cy + fu * a * st + fv * b * ct

    def ellipse(fu: float, fv: float, ea: float, eb: float, angle: float = 0.0) -> np.ndarray:
        px, py = at(fu, fv)
        return _soft_ellipse(x, y, px, py, max(ea * a, 0.3), max(eb * b, 0.3), tilt + angle, feather)

    skin, hair = _tone(rng, SKIN_TONES), _tone(rng, HAIR_COLOURS)
    clothes = np.clip(rng.random(3) ** 1.5, 0.03, 1.0)
    shoulders = ellipse(0.0, 2.35, 2.1, 1.25)
    _over(window, shoulders, clothes * (1.0 + 0.25 * np.clip(-(x - cx) * lx / (2 * a), -1, 1))[..., None])
    _over(window, ellipse(0.0, 1.0, 0.42, 0.6), skin * 0.78)  # neck
    if rng.random() < 0.5:  # long hair behind the head
        _over(window, ellipse(0.0, 0.2, 1.15, 1.12), hair * 0.8)
    for side in (-1.0, 1.0):  # ears
        _over(window, ellipse(side * 0.98, 0.02, 0.13, 0.2), skin * 0.85)
    u, v = ((x - cx) * ct + (y - cy) * st) / a, (-(x - cx) * st + (y - cy) * ct) / b
    nz = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
    shade = 0.5 + 0.5 * np.clip(-0.7 * (u * lx + v * ly) + 0.7 * nz, 0.0, 1.2)
    _over(window, ellipse(0.0, 0.0, 1.0, 1.0), skin * shade[..., None])
    hairline = -0.42 + 0.08 * np.sin(3.0 * u + rng.uniform(0, 2 * math.pi))
    cap = ellipse(0.0, -0.02, 1.07, 1.06) * np.clip((hairline - v) * b / feather + 0.5, 0.0, 1.0)
    _over(window, cap, hair * (0.75 + 0.35 * shade)[..., None])
    open_ = rng.uniform(0.55, 1.0)
    iris = _tone(rng, IRIS_COLOURS, 0.15)
    gaze = rng.uniform(-0.04, 0.04)
    for side in (-1.0, 1.0):
        _over(window, ellipse(side * 0.36, -0.23, 0.2, 0.035, -side * 0.1), hair * 0.7)  # brow
        whites = ellipse(side * 0.36, -0.08, 0.17, 0.075 * open_)
        _over(window, whites, np.array([0.92, 0.9, 0.88]) * (0.7 + 0.3 * shade)[..., None])
        _over(window, whites * ellipse(side * 0.36 + gaze, -0.08, 0.075, 0.075 * a / b), iris)
        _over(window, whites * ellipse(side * 0.36 + gaze, -0.08, 0.032, 0.032 * a / b), np.zeros(3))
        _over(window, 0.45 * ellipse(side * 0.36, -0.13, 0.19, 0.03), skin * 0.55)  # upper lid shadow
    _over(window, 0.45 * ellipse(0.07 * math.copysign(1.0, lx), 0.14, 0.07, 0.2), skin * 0.65)  # nose shadow
    _over(window, 0.5 * ellipse(0.0, 0.3, 0.13, 0.045), skin * 0.5)  # nostrils
    lips = np.clip(skin * np.array([0.85, 0.5, 0.5]), 0, 1)
    _over(window, ellipse(0.0, 0.52, rng.uniform(0.2, 0.3), 0.05 + 0.04 * rng.random()), lips)
    np.clip(window, 0.0, 1.5, out=window)


def paste_face(image: np.ndarray, rng: np.random.Generator, face: np.ndarray, cx: float, cy: float,
               radius: float) -> None:
    """Paste a grey face crop (2-D, values in [0, 1]) scaled to half-height `radius`, in a skin tone, in place."""
    from PIL import Image

    height, width = image.shape[:2]
    side = max(2, round(2 * radius))
    top, left = round(cy - side / 2), round(cx - side / 2)
    t0, l0 = max(0, top), max(0, left)
    t1, l1 = min(height, top + side), min(width, left + side)
    if t0 >= t1 or l0 >= l1:
        return
    grey = Image.fromarray(np.round(np.clip(face, 0, 1) * 255).astype(np.uint8))
    scaled = np.asarray(grey.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    skin = _tone(rng, SKIN_TONES)
    colour = skin * (0.25 + 0.9 * scaled[..., None])
    y, x = (np.mgrid[0:side, 0:side] + 0.5).astype(np.float32)
    alpha = _soft_ellipse(x, y, side / 2, side / 2, 0.42 * side, 0.5 * side, 0.0, max(0.7, side / 12))
    rows, cols = slice(t0 - top, t1 - top), slice(l0 - left, l1 - left)
    _over(image[t0:t1, l0:l1], alpha[rows, cols], colour[rows, cols])


# --------------------------------------------------------------------------------------------- scenes


def _light(image: np.ndarray, rng: np.random.Generator, direction: tuple[float, float]) -> np.ndarray:
    """A soft directional light gradient and a vignette over the whole frame."""
    height, width = image.shape[:2]
    ny = (np.arange(height, dtype=np.float32) + 0.5)[:, None] / height - 0.5
    nx = (np.arange(width, dtype=np.float32) + 0.5)[None, :] / width - 0.5
    strength, vignette = rng.uniform(0.0, 0.6), rng.uniform(0.0, 0.9) if rng.random() < 0.6 else 0.0
    shade = 1.0 - strength * (nx * direction[0] + ny * direction[1]) - vignette * (nx * nx + ny * ny)
    return image * shade[..., None]


def photographic_scene(rng: np.random.Generator, size: int, faces: np.ndarray | None = None) -> np.ndarray:
    """A square scene with photographic statistics: a textured backdrop (gradient, dead leaves or fractal noise), up
    to four faces at scales from a few pixels to most of the frame (drawn, or `faces` crops pasted), soft light,
    vignette, sometimes depth-of-field blur and an exposure change. Float RGB, not yet clipped or quantised."""
    kind = rng.random()
    if kind < 0.45:
        image = textured_gradient(rng, size)
    elif kind < 0.85:
        image = dead_leaves(rng, size)
    else:
        image = fractal_image(rng, size)
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    angle = rng.uniform(0, 2 * math.pi)
    direction = (math.cos(angle), math.sin(angle))
    count = int(rng.choice([0, 1, 1, 1, 2, 2, 3, 4]))
    radii = np.sort(size * np.exp(rng.uniform(math.log(0.04), math.log(0.5), size=count)))  # far ones first
    for radius in radii.tolist():
        cx, cy = rng.uniform(0.1, 0.9) * size, rng.uniform(0.25, 0.8) * size
        if faces is not None and len(faces) and rng.random() < 0.35:
            paste_face(image, rng, faces[int(rng.integers(len(faces)))], cx, cy, radius)
        else:
            draw_face(image, rng, cx, cy, radius, direction)
    image = _light(image, rng, direction)
    if rng.random() < 0.4:
        image = blur(image, rng.uniform(0.3, 1.5))
    if rng.random() < 0.3:
        image = image * math.exp(rng.uniform(math.log(0.35), math.log(1.3)))
    return image
