"""Colour measures of edited RGB images (uint8 HWC arrays, values read in [0, 1] units).

They check edits that have a known direction (grayscale removes colour, brighter raises luma, a tint raises
one channel) without a model or ground truth; the results page and tests use them beside evaluate's
PSNR/SSIM. No torch: numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from movie_core.data.procedural import LUMA


def _float(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def saturation(image: np.ndarray) -> float:
    """Mean HSV saturation (max - min) / max in [0, 1] (0 where max is 0)."""
    x = _float(image)
    hi, lo = x.max(axis=-1), x.min(axis=-1)
    return float(np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-12), 0.0).mean())


def chroma(image: np.ndarray) -> float:
    """Mean max - min over the channels in [0, 1]: HSV saturation without the division by max, which makes a
    near-black pixel with a little colour noise count as strongly coloured."""
    x = _float(image)
    return float((x.max(axis=-1) - x.min(axis=-1)).mean())


def luma(image: np.ndarray) -> float:
    """Mean BT.601 luma in [0, 1]."""
    return float((_float(image) * LUMA).sum(axis=-1).mean())


def channel_shift(source: np.ndarray, edited: np.ndarray, channel: int) -> float:
    """How much more `channel` rose than the other two (mean, [0, 1] units): > 0 is a tint towards it."""
    delta = (_float(edited) - _float(source)).reshape(-1, 3).mean(axis=0)
    others = [c for c in range(3) if c != channel]
    return float(delta[channel] - delta[others].mean())


def change_correlation(source: np.ndarray, edited: np.ndarray, reference: np.ndarray) -> float | None:
    """Pearson correlation of the model's per-pixel change with the reference's (1: same direction everywhere);
    None when either image is unchanged."""
    a = (_float(edited) - _float(source)).ravel()
    b = (_float(reference) - _float(source)).ravel()
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else None
