"""Captioned procedural scenes (movie_core.data.captions): determinism, the held-out split, the dataset folder that
`movie distill` reads, and the prompt-following measure (ground truth near 1, shuffled specs near chance)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from movie_core.data import captions as c
from movie_core.errors import UsageError
from tests.cli_helpers import run_cli


def test_samples_are_deterministic_and_captions_say_the_spec():
    a, b = c.make_sample(7), c.make_sample(7)
    assert np.array_equal(a["image"], b["image"]) and a["caption"] == b["caption"] and a["spec"] == b["spec"]
    assert not np.array_equal(c.make_sample(8)["image"], a["image"])
    for seed in range(40):
        spec = c.make_spec(seed)
        text = c.caption(spec)
        assert spec["background"] in text and len(spec["shapes"]) in (1, 2)
        for s in spec["shapes"]:
            assert f"{s['colour']} {s['shape']} {c.PLACE[s['position']]}" in text
            assert s["colour"] != spec["background"]
        if len(spec["shapes"]) == 2:
            first, second = spec["shapes"]
            assert (first["position"], second["position"]) in c.PAIRS and first["colour"] != second["colour"]
    assert len({c.caption(c.make_spec(0), k) for k in range(len(c.PHRASINGS))}) == len(c.PHRASINGS)


def test_shapes_stay_inside_their_named_region():
    """The region a position names holds the whole shape (its pixels), so the measure can look there."""
    for seed in range(60):
        spec = c.make_spec(seed)
        spec = spec | {"shapes": spec["shapes"][:1]}
        image = c.render(spec, 64)
        shape = c.classify(image) == c.COLOURS.index(spec["shapes"][0]["colour"])
        outside = shape & ~c._region_mask(spec["shapes"][0]["position"], 64, 64)
        assert shape.sum() > 40 and outside.sum() == 0, spec


def test_held_out_combinations_are_disjoint_from_training_and_every_pair_still_trains():
    held, train = set(c.HELD_OUT), set(c.TRAIN_COMBOS)
    assert held and not held & train and held | train == set(c.COMBOS) and len(held) == len(c.COMBOS) // 5
    for i, j in itertools.combinations(range(3), 2):  # (colour, shape), (colour, position), (shape, position)
        assert {(x[i], x[j]) for x in train} == {(x[i], x[j]) for x in c.COMBOS}
    train_seen = {(s["colour"], s["shape"], s["position"]) for seed in range(600)
                  for s in c.make_spec(seed, "train")["shapes"]}
    test_seen = {(s["colour"], s["shape"], s["position"]) for seed in range(200)
                 for s in c.make_spec(seed, "test")["shapes"]}
    assert train_seen <= train and test_seen <= held and len(test_seen) > len(held) // 2


def test_written_dataset_reads_as_image_and_caption(tmp_path):
    from movie_core.data.datasets import open_dataset

    out = tmp_path / "captions"
    info = c.write_captions(out, count=20, size=32, seed=3, test_fraction=0.25)
    assert info["format"] == c.FORMAT and info["images"] == {"train": 15, "test": 5}
    assert json.loads((out / "dataset.json").read_text())["held_out"] == [list(x) for x in c.HELD_OUT]
    train = open_dataset(out, "train")
    sample = train[2]
    assert sample["source"] is sample["edited"] and sample["source"].shape == (32, 32, 3)
    rows = c.read_split(out, "test")
    assert len(rows) == 5
    for row in rows:  # the test split: held-out combinations, and what the generator makes of its seed
        expected = c.make_sample(row["seed"], 32, "test")
        assert row["text"] == expected["caption"] and row["spec"] == expected["spec"]
        assert all((s["colour"], s["shape"], s["position"]) in c.HELD_OUT for s in row["spec"]["shapes"])
    assert np.array_equal(open_dataset(out, "test")[0]["edited"], c.make_sample(rows[0]["seed"], 32, "test")["image"])
    with pytest.raises(UsageError, match="exists"):
        c.write_captions(out, count=20, size=32)


def test_cli_writes_and_refuses_bad_input_in_one_line(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "data", "captions", "--out", str(tmp_path / "d"), "--count", "6", "--size", "32")
    assert code == 0 and "5 train + 1 test" in out
    code, _, err = run_cli(capsys, "data", "captions", "--out", str(tmp_path / "d"), "--count", "6")
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UsageError, match="movie data captions"):
        c.read_split(tmp_path)


@pytest.mark.parametrize("size", [64, 128])
def test_measure_scores_ground_truth_near_one_and_shuffled_specs_near_chance(size):
    samples = [c.make_sample(seed, size, "test") for seed in range(120)]
    images, specs = [s["image"] for s in samples], [s["spec"] for s in samples]
    truth = c.rates(images, specs)
    assert all(v >= 0.98 for v in truth.values()), truth
    chance = c.rates(images, c.shuffled(specs, seed=1))
    assert chance["follows"] < 0.1 and chance["all"] < 0.05 and chance["background"] < 0.35, chance


def test_measure_fails_images_that_ignore_the_prompt():
    spec = {"background": "blue", "shapes": [{"colour": "red", "shape": "circle", "position": "left",
                                              "x": 0.25, "y": 0.5, "r": 0.17}]}
    assert c.score(c.render(spec), spec)["all"]
    moved = {**spec, "shapes": [{**spec["shapes"][0], "position": "right", "x": 0.75}]}
    recoloured = {**spec, "shapes": [{**spec["shapes"][0], "colour": "yellow"}]}
    squared = {**spec, "shapes": [{**spec["shapes"][0], "shape": "square"}]}
    empty = {**spec, "shapes": []}
    assert not c.score(c.render(moved), spec)["follows"]
    assert not c.score(c.render(recoloured), spec)["colour"]
    assert not c.score(c.render(empty), spec)["colour"]
    assert not c.score(np.full((64, 64, 3), 128, np.uint8), spec)["background"]
    result = c.score(c.render(squared), spec)
    assert result["follows"] and not result["shape"]
    with pytest.raises(UsageError):
        c.shuffled([spec])
