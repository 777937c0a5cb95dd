"""Training data that looks like footage (issue 24): packaged photographs, photographic scenes, camera moves, and the
evaluation photographs kept out of every training set."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from movie_core.data import natural, photos, procedural
from movie_core.data.datasets import VideoDataset, open_dataset
from movie_core.errors import UsageError

skimage_data = pytest.importorskip("skimage.data", reason="the photographs ship in scikit-image (the test extra)")


def _evaluation_arrays() -> list[np.ndarray]:
    out = []
    for name in photos.EVALUATION_PHOTOS:
        image = np.asarray(getattr(skimage_data, name)())
        out.append(np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3])
    return out


def test_the_photo_pool_never_includes_the_evaluation_photos():
    pool = photos.training_photos()
    assert len(pool.photos) >= 10, pool.skipped
    names = {p.name.split("[")[0] for p, _ in pool.photos}
    assert not names & (set(photos.EVALUATION_PHOTOS) | set(photos.EVALUATION_ALIASES))
    evaluation = _evaluation_arrays()
    for photo, image in pool.photos:  # by pixels too, compared here without the module's digests
        assert not any(image.shape == e.shape and np.array_equal(image, e) for e in evaluation), photo.key


@pytest.mark.parametrize("name, loads", [("cat", "chelsea"), ("a_new_sample", "astronaut"), ("rocket", "rocket")])
def test_an_evaluation_photo_is_refused_by_name_or_by_pixels(name, loads):
    photo = photos.Photo("scikit-image", name, "CC0", "test", lambda: getattr(skimage_data, loads)())
    with pytest.raises(UsageError, match="evaluation photograph"):
        photos.check_not_evaluation(photo, photo.load())
    photos.check_not_evaluation(photos.Photo("scikit-image", "brick", "", "", skimage_data.brick),
                                skimage_data.brick())  # a training photo passes


def test_crops_and_videos_are_deterministic_for_a_seed():
    a, b = photos.make_photo_sample(11, (24, 32)), photos.make_photo_sample(11, (24, 32))
    assert a["source"].shape == (24, 32, 3) and a["source"].dtype == np.uint8
    assert np.array_equal(a["source"], b["source"]) and a["instruction"] == b["instruction"]
    assert np.array_equal(a["edited"], procedural.apply_edit(a["edit"], a["source"]))
    others = [photos.make_photo_sample(s, (24, 32))["source"] for s in range(12, 20)]
    assert all(not np.array_equal(a["source"], o) for o in others)
    v1, v2 = photos.make_photo_video(5, 6, 32), photos.make_photo_video(5, 6, 32)
    assert v1["source_frames"].shape == (6, 32, 32, 3)
    assert np.array_equal(v1["source_frames"], v2["source_frames"])
    assert np.array_equal(v1["edited_frames"], procedural.apply_edit(v1["edit"], v1["source_frames"]))
    assert not np.array_equal(v1["source_frames"], photos.make_photo_video(6, 6, 32)["source_frames"])


def test_samples_are_varied_photographs():
    images = [photos.make_photo_sample(s, 32)["source"].astype(float) for s in range(40)]
    means = [im.mean() for im in images]
    assert np.std(means) > 10, "exposure, jitter and photos should vary the brightness"
    chroma = [float((im.max(-1) - im.min(-1)).mean()) for im in images]
    assert min(chroma) < 8 < max(chroma), "both near-grey and colourful samples"


def _shift_error(a: np.ndarray, b: np.ndarray, dx: int, dy: int) -> float:
    h, w = a.shape[:2]
    m = 9
    return float(np.abs(a[m:h - m, m:w - m].astype(float)
                        - b[m + dy:h - m + dy, m + dx:w - m + dx].astype(float)).mean())


def test_a_camera_move_pans_over_the_photo():
    rng = np.random.default_rng(0)
    photo = procedural.quantize(natural.blur(natural.fractal_image(rng, 256), 1.0))
    moved = 0
    for seed in range(6):
        frames = photos.camera_move(np.random.default_rng(seed), photo, 8, 48, 48)
        assert frames.shape == (8, 48, 48, 3)
        assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:])), "every frame moves"
        first, last = frames[0], frames[-1]
        still = _shift_error(first, last, 0, 0)
        best = min(_shift_error(first, last, dx, dy) for dx in range(-8, 9) for dy in range(-8, 9))
        moved += best < 0.7 * still  # some shift explains the last frame better than none: the camera panned
    assert moved >= 4


def test_photographic_scenes_draw_faces_at_several_scales():
    canvas = np.full((64, 64, 3), 0.5, np.float32)
    natural.draw_face(canvas, np.random.default_rng(1), 32, 28, 20)
    changed = np.abs(canvas - 0.5).max(-1) > 0.02
    assert 0.15 < changed.mean() < 0.9
    small = np.full((64, 64, 3), 0.5, np.float32)
    natural.draw_face(small, np.random.default_rng(1), 32, 28, 4)
    assert 0 < (np.abs(small - 0.5).max(-1) > 0.02).mean() < changed.mean()
    scene = natural.photographic_scene(np.random.default_rng(2), 48, photos.training_photos().faces)
    assert scene.shape == (48, 48, 3) and np.isfinite(scene).all()


def test_mixed_source_uses_both_and_procedural_is_unchanged():
    origins = {photos.sample(s, 16, "train", "mixed")["origin"] for s in range(20)}
    assert origins == {"photos", "procedural"}
    same = photos.sample(7, 16, "train", "procedural")
    assert np.array_equal(same["source"], procedural.make_sample(7, 16, split="train")["source"])
    with pytest.raises(UsageError, match="unknown data source"):
        photos.sample(1, 16, None, "webcam")


@pytest.fixture(scope="module")
def photo_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("photos") / "ds"
    cmd = [sys.executable, "-c", "import sys; from movie_core.cli import main; main(sys.argv[1:])",
           "data", "nano", "--out", str(out), "--count", "8", "--videos", "2", "--frames", "4",
           "--size", "32", "--seed", "2", "--test-fraction", "0.25", "--source", "photos"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return out


def test_data_nano_source_photos_writes_a_loadable_dataset_with_a_manifest(photo_dataset):
    out = photo_dataset
    train = open_dataset(out, "train")
    assert len(train) == 6 and train[0]["source"].shape == (32, 32, 3)
    rows = [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    assert {row["origin"] for row in rows} == {"photos"}
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["source"] == "photos"
    trained = {(row["package"], row["name"]) for row in summary["photos"]["train"]}
    pool = photos.training_photos()
    assert {(p.package, p.name) for p, _ in pool.photos} <= trained
    assert all(row["licence"] for row in summary["photos"]["train"])
    held = {row["name"] for row in summary["photos"]["held_out"]}
    assert set(photos.EVALUATION_PHOTOS) <= held and not held & {name for _, name in trained}
    videos = VideoDataset(out, "train")
    frames = videos[0]["source"]
    assert frames.shape == (4, 32, 32, 3)
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:])), "the camera moves every frame"


def test_chain_budget_data_source_defaults_to_the_shipped_data():
    attrs = pytest.importorskip("attrs")
    from movie_plugins.nano.chain import ChainBudget, recorded_budget

    assert ChainBudget().data_source == "procedural"
    assert ChainBudget(data_source="photos").data_source == "photos"
    with pytest.raises(ValueError):
        ChainBudget(data_source="webcam")
    saved = attrs.asdict(ChainBudget())
    del saved["data_source"]  # a work folder started before the field existed resumes with the default
    assert recorded_budget(saved)["data_source"] == "procedural"
    assert recorded_budget(saved) != attrs.asdict(ChainBudget(data_source="mixed"))


def _photo_eval():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "photo_eval.py"
    spec = importlib.util.spec_from_file_location("photo_eval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_photo_eval_measures_tell_the_closed_form_from_doing_nothing():
    pe = _photo_eval()
    assert set(pe.PHOTOS) <= set(photos.EVALUATION_PHOTOS) and len(pe.PHOTOS) == 4
    source = pe.pan(skimage_data.chelsea(), 4, 40, 30)
    assert source.shape == (4, 30, 40, 3) and not np.array_equal(source[0], source[-1])
    for edit in ("grayscale", "sepia", "invert"):
        reference = procedural.apply_edit(edit, source)
        exact = pe.measure(edit, source, reference, reference)
        nothing = pe.measure(edit, source, source, reference)
        assert exact["passes_all"], (edit, exact)
        assert not nothing["passes_all"] and not nothing["passes"]["margin_3db"]
        if edit in pe.COLOUR_ONLY:
            assert exact["luma_ssim"] > 0.9
            blurred = np.repeat(np.repeat(reference[:, ::8, ::8], 8, 1), 8, 2)[:, :30, :40]
            assert pe.measure(edit, source, blurred, reference)["luma_ssim"] < exact["luma_ssim"]


def test_the_edit_ceiling_passes_a_lossless_autoencoder_and_fails_one_that_drops_colour():
    """scripts/ae_photo_ceiling.py --edits: with decode(encode(x)) = x the default path (closed-form edit at the
    working size, global detail transfer to the output size) passes every bar for every global edit on every
    photo; an autoencoder that returns grey cannot make a tint or keep invert's colours."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "ae_photo_ceiling.py"
    spec = importlib.util.spec_from_file_location("ae_photo_ceiling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lossless = module.edit_ceiling(lambda x: x, 64, 48, "global", out_size=(80, 60))
    assert all(m["passes_all"] == m["photos"] == 4 for m in lossless["summary"].values()), lossless["summary"]
    assert lossless["summary"]["grayscale"]["saturation"] < 0.01
    grey = module.edit_ceiling(lambda x: x.mean(1, keepdim=True).expand_as(x), 64, 48, "global", out_size=(80, 60))
    for edit in ("invert", "red_tint", "green_tint", "blue_tint", "sepia"):
        assert grey["summary"][edit]["passes_all"] < 4, (edit, grey["summary"][edit])


def test_photo_eval_stills_only_scores_the_stills_as_the_full_run_and_judges_nothing(tmp_path):
    """photo_eval.py --stills-only (the quick comparison of models): the same stills figures as the run with pans,
    no pans, and 'accepted' left unjudged (None), since the issue's bars include the pans."""
    pe = _photo_eval()
    full = pe.main(["--quick", "--out", str(tmp_path / "full.json")])
    stills = pe.main(["--quick", "--stills-only", "--out", str(tmp_path / "stills.json")])
    assert set(full) - set(stills) == {"pans"} and set(stills["summary"]) == {"stills"}
    assert stills["stills"] == full["stills"] and stills["summary"]["stills"] == full["summary"]["stills"]
    assert isinstance(full["accepted"], bool) and stills["accepted"] is None and stills["pan_frames_per_s"] is None
    assert set(stills["stills"]) == set(pe.PHOTOS[:2]) and len(stills["stills"][pe.PHOTOS[0]]) == 8


def test_photo_probe_scores_each_setting_on_the_training_photographs(tmp_path):
    """scripts/photo_probe.py: one row per (s_T, s_I, flips) with all eight edits; the training photographs are
    never the evaluation ones; averaging over flips changes the output (a probe that ignored --flips would not)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "photo_probe.py"
    spec = importlib.util.spec_from_file_location("photo_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--photos", "train", "--width", "64", "--height", "48", "--flips", "1", "2",
                          "--s-T", "7.5", "--out", str(tmp_path / "probe.json")])
    assert len(result["rows"]) == 2 and all(len(r["edits"]) == 8 for r in result["rows"])
    assert len(result["photos"]) == 3 and not {p.split(":", 1)[-1] for p in result["photos"]} & set(
        photos.EVALUATION_PHOTOS)
    one, two = (r["edits"] for r in result["rows"])
    assert one != two and "worst_saturation" in one["grayscale"]
    assert all(r["psnr"] >= r["worst_psnr"] for r in one.values())
