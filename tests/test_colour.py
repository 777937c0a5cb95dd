"""movie_core.colour: the colour measures on images whose answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from movie_core import colour
from movie_core.data.procedural import apply_edit

RED, GREY, BLACK = [255, 0, 0], [128, 128, 128], [0, 0, 0]


def _image(*pixels) -> np.ndarray:
    return np.array([pixels], dtype=np.uint8)


def test_saturation_and_chroma_of_pure_and_grey_pixels():
    assert colour.saturation(_image(RED, GREY)) == pytest.approx(0.5)  # red 1, grey 0
    assert colour.chroma(_image(RED, GREY)) == pytest.approx(0.5)
    assert colour.saturation(_image(BLACK)) == 0.0  # max 0: no division
    dark = _image([10, 0, 0])  # a near-black pixel with a little red: fully saturated, barely chromatic
    assert colour.saturation(dark) == pytest.approx(1.0) and colour.chroma(dark) == pytest.approx(10 / 255)


def test_luma_uses_bt601_weights():
    assert colour.luma(_image([255, 255, 255])) == pytest.approx(1.0)
    assert colour.luma(_image([0, 255, 0])) == pytest.approx(0.587)


def test_channel_shift_is_positive_towards_the_tinted_channel():
    photo = np.random.default_rng(0).integers(40, 200, size=(8, 8, 3), dtype=np.uint8)
    red = apply_edit("red_tint", photo)
    assert colour.channel_shift(photo, red, 0) > 0 > colour.channel_shift(photo, red, 2)
    assert colour.channel_shift(photo, photo + 10, 1) == pytest.approx(0.0)  # every channel alike: no tint


def test_change_correlation_signs_and_unchanged_images():
    photo = np.random.default_rng(1).integers(40, 200, size=(8, 8, 3), dtype=np.uint8)
    brighter = apply_edit("brighter", photo)
    assert colour.change_correlation(photo, brighter, brighter) == pytest.approx(1.0)
    change = np.random.default_rng(2).integers(0, 30, size=photo.shape).astype(np.uint8)
    up, down = photo + change, photo - change  # the same per-pixel pattern, opposite signs
    assert colour.change_correlation(photo, up, down) == pytest.approx(-1.0)
    assert colour.change_correlation(photo, photo, brighter) is None
