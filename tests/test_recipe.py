"""Recipe: the shipped presets, TOML round trips, and bad keys and values as one-line UsageErrors."""

from __future__ import annotations

import attrs
import pytest

from movie_core.errors import UsageError
from movie_core.recipe import PRESETS, Recipe, from_toml, load, make_recipe, preset

TABLE_1 = {
    "base": ("sd-vae", "sd-vae", "instruct-pix2pix", 10),
    "mobile": ("taesd", "taesd", "mobile-pix2pix", 10),
    "mmg": ("taesd", "taesd", "mobile-pix2pix-mmg", 10),
    "movie": ("taesd", "taesd", "mobile-pix2pix-1step", 1),
}

CUSTOM = Recipe(encoder="sd-vae", decoder="taesd", denoiser="mobile-pix2pix", backend="eager", steps=3,
                text_guidance=5.5, image_guidance=1.25, seed=42, size="nano", resolution="max-side:512",
                anchor="0", device="cuda:1", dtype="float16", scheduler="euler-ancestral")


@pytest.mark.parametrize("name", PRESETS)
def test_presets_match_table_1(name):
    from movie_core.composer import compose
    from movie_core.loading import build

    r = preset(name)
    assert r.steps is None  # the presets leave steps to the denoiser: its own default applies
    steps = build(compose(r), meta=True).steps
    assert (r.encoder, r.decoder, r.denoiser, steps) == TABLE_1[name]
    assert r.backend == "eager"
    assert (r.text_guidance, r.image_guidance) == (7.5, 1.5)


def test_presets_are_the_four_rows():
    assert set(PRESETS) == set(TABLE_1)


@pytest.mark.parametrize("recipe", [CUSTOM, Recipe(), *(preset(p) for p in PRESETS)],
                         ids=["custom", "default", *PRESETS])
def test_toml_round_trip(recipe, tmp_path):
    path = tmp_path / "r.toml"
    recipe.save(path)
    assert load(path) == recipe
    assert from_toml(recipe.to_toml()) == recipe


def test_toml_layout():
    text = CUSTOM.to_toml()
    assert text.startswith("[components]\n")
    assert 'encoder = "sd-vae"\ndecoder = "taesd"' in text
    assert "[options]" in text and "steps = 3" in text
    assert "steps" not in Recipe().to_toml()


@pytest.mark.parametrize(
    "text, key",
    [
        ('vae = "taesd"\n[components]\nencoder = "taesd"\n', "vae"),
        ('[components]\nencoder = "taesd"\n[extras]\nx = 1\n', "extras"),
        ('[components]\nvae = "taesd"\n', "components.vae"),
        ("[options]\nstepz = 3\n", "stepz"),
    ],
)
def test_unknown_keys_are_named(text, key):
    with pytest.raises(UsageError, match=f"unknown recipe key '{key}'"):
        from_toml(text, source="r.toml")


def test_slot_in_options_table_is_rejected():
    with pytest.raises(UsageError, match=r"'encoder' belongs in \[components\]"):
        from_toml('[options]\nencoder = "taesd"\n')


def test_unknown_key_in_flat_values():
    with pytest.raises(UsageError, match="unknown recipe key 'guidance'"):
        make_recipe({"guidance": 3})


@pytest.mark.parametrize(
    "options, field",
    [
        ("text_guidance = -1.0", "text_guidance"),
        ("image_guidance = -0.5", "image_guidance"),
        ("text_guidance = nan", "text_guidance"),
        ('size = "huge"', "size"),
        ('anchor = "last"', "anchor"),
        ("steps = 0", "steps"),
        ('resolution = "big"', "resolution"),
        ('device = "tpu"', "device"),
        ('dtype = "float8"', "dtype"),
        ('scheduler = "DDIM sampler"', "scheduler"),
    ],
)
def test_bad_values_are_usage_errors(options, field):
    with pytest.raises(UsageError, match=field) as info:
        from_toml(f"[options]\n{options}\n", source="r.toml")
    assert str(info.value).startswith("r.toml: bad recipe value")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("change", [{"text_guidance": -2}, {"size": "huge"}, {"anchor": "-1"}])
def test_bad_values_via_replace(change):
    with pytest.raises(UsageError, match=next(iter(change))):
        Recipe().replace(**change)


@pytest.mark.parametrize(
    "table, line, field",
    [
        ("components", "encoder = 5", "encoder"),
        ("components", "denoiser = true", "denoiser"),
        ("options", "steps = 2.5", "steps"),
        ("options", 'steps = "ten"', "steps"),
        ("options", "steps = true", "steps"),
        ("options", "seed = 1.7", "seed"),
        ("options", 'seed = "3"', "seed"),
        ("options", 'text_guidance = "high"', "text_guidance"),
        ("options", "image_guidance = false", "image_guidance"),
        ("options", "anchor = 1.5", "anchor"),
        ("options", "scheduler = 3", "scheduler"),
        ("options", "size = 1", "size"),
        ("options", "dtype = 16", "dtype"),
        ("options", "device = 0", "device"),
    ],
)
def test_wrong_types_are_one_line_naming_the_key(table, line, field):
    """Issue 20 item 12: a value of the wrong type is refused at once by name, not after the model loads."""
    with pytest.raises(UsageError) as info:
        from_toml(f"[{table}]\n{line}\n", source="r.toml")
    message = str(info.value)
    assert message.startswith("r.toml: bad recipe value: " + field), message
    assert "\n" not in message and "not supported between" not in message


@pytest.mark.parametrize("change", [{"encoder": 5}, {"steps": 2.5}, {"steps": "ten"}, {"seed": 1.7}, {"vae": 3}])
def test_wrong_types_via_api(change):
    with pytest.raises(UsageError, match=next(iter(change)).replace("vae", "encoder")):
        Recipe().replace(**change)


def test_right_types_still_accepted():
    import numpy as np

    r = from_toml("[options]\nsteps = 3\nseed = 2\ntext_guidance = 7\nanchor = 4\n")
    assert (r.steps, r.seed, r.text_guidance, r.anchor) == (3, 2, 7.0, "4")
    assert isinstance(r.text_guidance, float)
    assert Recipe().replace(seed=np.int64(5), steps=np.int32(2)).seed == 5


def test_wrong_types_through_the_cli(capsys, tmp_path):
    from cli_helpers import run_cli

    path = tmp_path / "r.toml"
    for line, field in (("seed = 1.7", "seed"), ("steps = 2.5", "steps")):
        path.write_text(f"[options]\n{line}\n")
        code, out, err = run_cli(capsys, "compose", "--recipe", str(path), "--json")
        assert code != 0 and out == ""
        assert len(err.strip().splitlines()) == 1 and field in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "compose", "--steps", "2.5")
    assert code != 0 and "--steps" in err and "Traceback" not in err


def test_invalid_toml_is_a_usage_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[components\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load(path)


def test_recipe_is_frozen():
    r = Recipe()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        r.steps = 5
    assert r.steps is None


def test_replace_vae_sets_both_and_leaves_original():
    r = preset("base")
    hybrid = r.replace(vae="taesd")
    assert (hybrid.encoder, hybrid.decoder) == ("taesd", "taesd")
    assert (r.encoder, r.decoder) == ("sd-vae", "sd-vae")
    assert hybrid.replace(encoder="sd-vae") == attrs.evolve(hybrid, encoder="sd-vae")
    assert hybrid.denoiser == "instruct-pix2pix" and hybrid.steps is None


@pytest.mark.parametrize("scheduler, expected",
                         [(None, "ddim"), ("euler-ancestral", "euler-ancestral"), ("euler", "euler")])
def test_recipe_scheduler_reaches_the_denoiser(scheduler, expected):
    """The multi-step stages default to DDIM; the recipe's `scheduler` picks another sampler."""
    from movie_core.composer import compose
    from movie_core.loading import build

    pipe = build(compose(preset("base").replace(size="nano", scheduler=scheduler)), meta=True)
    assert pipe.denoiser.scheduler_name == expected
    assert type(pipe.denoiser.make_scheduler()).__name__.lower().startswith(expected.replace("-", ""))


def test_unknown_scheduler_is_one_line_from_the_denoiser():
    from movie_core.composer import compose
    from movie_core.loading import build

    with pytest.raises(UsageError, match=r"^bad option for denoiser 'mobile-pix2pix': 'scheduler' must be in") as info:
        build(compose(preset("mobile").replace(size="nano", scheduler="heun")), meta=True)
    assert "\n" not in str(info.value) and "Attribute(" not in str(info.value)
