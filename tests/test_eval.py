"""`movie eval` and movie_core.evaluate.

Metrics, known cases (ground truth > identity > random model), CLIP, sweeps, videos.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from movie_core import evaluate as ev
from movie_core.errors import MovieError, UsageError

from cli_helpers import run_cli


@pytest.fixture(scope="module")
def nano_data(tmp_path_factory):
    from movie_core.data.writer import write_nano

    out = tmp_path_factory.mktemp("evaldata") / "nano"
    write_nano(out, count=16, videos=4, frames=4, size=32, test_fraction=0.5)
    return out


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """A saved random-init `movie` nano model folder."""
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import preset

    folder = tmp_path_factory.mktemp("evalmodel") / "movie-nano"
    build(compose(preset("movie").replace(size="nano"))).save_pretrained(folder)
    return folder


def test_evaluation_reads_its_data_without_the_training_package(nano_data):
    """Inference and evaluation import movie_core.data, never movie_core.training (the loop and distillers)."""
    import subprocess
    import sys

    code = ("import sys; from movie_core import evaluate as ev; "
            f"images = ev.open_image_data({str(nano_data)!r}, 'test'); "
            f"videos = ev.open_video_data({str(nano_data)!r}, 'test'); "
            "assert len(images) and len(videos), 'no samples read'; "
            "assert ev.edit_type(images[0]['instruction']) != 'other', 'edit not found'; "
            "loaded = sorted(m for m in sys.modules if m.startswith('movie_core.training')); "
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _image(seed: int, shape=(40, 48, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ------------------------------------------------------------------------------------------- metrics


def test_psnr_closed_form():
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    b = np.full((8, 8, 3), 10, dtype=np.uint8)  # MSE = 100
    assert ev.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    c = a.copy()
    c[0, 0, 0] = 1  # MSE = 1 / 192
    assert ev.psnr(a, c) == pytest.approx(10 * math.log10(255**2 * 192))
    assert ev.psnr(a, a) == ev.PSNR_CAP == 100.0
    with pytest.raises(MovieError):
        ev.psnr(a, np.zeros((4, 4, 3), dtype=np.uint8))


def test_ssim_properties():
    x = _image(0)
    assert ev.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    noise = np.random.default_rng(1).normal(0, 20, x.shape)
    noisy = np.clip(x + noise, 0, 255).astype(np.uint8)
    very_noisy = np.clip(x + 4 * noise, 0, 255).astype(np.uint8)
    s1, s2 = ev.ssim(noisy, x), ev.ssim(very_noisy, x)
    assert 0 < s2 < s1 < 1
    assert ev.ssim(x, noisy) == pytest.approx(s1, abs=1e-12)  # symmetric
    # a constant shift keeps structure: only the luminance term drops
    flat = np.full((32, 32, 3), 100, dtype=np.uint8)
    assert ev.ssim(flat, flat + 5) == pytest.approx((2 * 100 * 105 + 6.5025) / (100**2 + 105**2 + 6.5025))
    assert -1 <= ev.ssim(x, 255 - x) < 0.2
    assert ev.ssim(x[:6, :6], noisy[:6, :6]) <= 1  # window cut to small images


def test_structure_kept_sees_edges_not_colours():
    """1 for colour maps that keep every edge (grey, inversion, a uniform tint), lower for a blurred copy, near 0
    for an unrelated image and 0 for a flat one."""
    from movie_core.data.procedural import make_sample

    x = make_sample(3, size=64)["source"]
    grey = np.repeat(np.round(x @ [0.299, 0.587, 0.114]).astype(np.uint8)[..., None], 3, -1)
    assert ev.structure_kept(x, x) == pytest.approx(1.0)
    assert ev.structure_kept(255 - x, x) == pytest.approx(1.0)
    assert ev.structure_kept(grey, x) > 0.99
    assert ev.structure_kept(np.clip(x.astype(int) + [30, 0, -20], 0, 255).astype(np.uint8), x) > 0.95
    blur = x.astype(np.float64)
    for _ in range(3):
        blur = (blur + np.roll(blur, 1, 0) + np.roll(blur, -1, 0) + np.roll(blur, 1, 1) + np.roll(blur, -1, 1)) / 5
    blurred = ev.structure_kept(blur.astype(np.uint8), x)
    assert 0.2 < blurred < 0.95
    assert abs(ev.structure_kept(make_sample(4, size=64)["source"], x)) < blurred
    assert ev.structure_kept(np.full_like(x, 90), x) == 0.0
    with pytest.raises(MovieError):
        ev.structure_kept(x, x[:32])


def test_spearman_and_edit_types():
    assert ev.spearman([1, 2, 3, 4], [10, 20, 25, 40]) == pytest.approx(1.0)
    assert ev.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert ev.spearman([1, 2, 3], [5, 5, 5]) is None
    assert -1 <= ev.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 3]) <= 1
    assert ev.edit_type("Make it sepia.") == "sepia"
    assert ev.edit_type("make it a dark blue night scene") == "night"
    assert ev.edit_type("add a hat") == "other"


# --------------------------------------------------------------------------------------- known cases


def test_ground_truth_perfect_identity_lower(nano_data):
    truth = ev.evaluate("ground-truth", nano_data, split="test")
    assert truth["count"] == 8
    assert truth["psnr"] == ev.PSNR_CAP and truth["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert all(row["psnr"] == ev.PSNR_CAP for row in truth["per_edit"].values())
    assert sum(row["count"] for row in truth["per_edit"].values()) == 8
    assert "other" not in truth["per_edit"]  # every nano instruction maps to its procedural edit
    ident = ev.evaluate("identity", nano_data, split="test", batch_size=3)
    assert ident["psnr"] == pytest.approx(truth["identity"]["psnr"])
    assert ident["psnr"] < 40 and ident["ssim"] < 0.95
    # any callable works as a predictor
    same = ev.evaluate(lambda sources, instructions: sources, nano_data, split="test", limit=3)
    assert same["count"] == 3 and same["psnr"] == pytest.approx(same["identity"]["psnr"])


def test_cli_ranks_truth_identity_random(nano_data, random_model, capsys, tmp_path):
    scores = {}
    for model in ("ground-truth", "identity", str(random_model)):
        out_file = tmp_path / "result.json"
        code, out, err = run_cli(capsys, "eval", model, "--data", str(nano_data), "--json", "--no-progress",
                                 "--out", str(out_file))
        assert code == 0, err
        result = json.loads(out)
        assert json.loads(out_file.read_text()) == result
        for key in ("model", "recipe", "data", "split", "count", "psnr", "ssim", "per_edit", "identity"):
            assert key in result
        scores[model] = result
    truth, ident, rand = scores["ground-truth"], scores["identity"], scores[str(random_model)]
    assert truth["psnr"] == 100.0 and truth["ssim"] == pytest.approx(1.0)
    assert truth["psnr"] > ident["psnr"] > rand["psnr"]
    assert truth["ssim"] > ident["ssim"] > rand["ssim"]
    assert rand["recipe"]["denoiser"] == "mobile-pix2pix-1step" and rand["recipe"]["size"] == "nano"
    assert rand["identity"]["psnr"] == pytest.approx(ident["psnr"])  # the reference, computed in the same run
    code, out, err = run_cli(capsys, "eval", "identity", "--data", str(nano_data), "--limit", "2", "--no-progress")
    assert code == 0 and "PSNR" in out and "identity (ref)" in out and "2 samples" in out


# ------------------------------------------------------------------------------------------------ CLIP


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    from movie_plugins.denoisers._tokenizer import byte_vocab, write_byte_tokenizer

    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    vocab = byte_vocab()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=16,
    )
    import torch

    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    write_byte_tokenizer(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "image_mean": list(ev.CLIP_MEAN), "image_std": list(ev.CLIP_STD),
        "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
    }))
    return folder


def test_clip_scores(nano_data, tiny_clip, capsys):
    scorer = ev.ClipScorer(tiny_clip)
    x = _image(3, (40, 56, 3))
    img, direction = scorer.score([x, x], [x, 255 - x], ["make it sepia", "invert the colors"])
    assert img[0] == pytest.approx(1.0, abs=1e-5) and -1 <= img[1] <= 1
    assert direction[0] == pytest.approx(0.0, abs=1e-5) and -1 <= direction[1] <= 1
    _, with_captions = scorer.score([x], [255 - x], ["invert"], [("a photo", "a negative photo")])
    assert -1 <= with_captions[0] <= 1
    code, out, err = run_cli(capsys, "eval", "ground-truth", "--data", str(nano_data), "--clip", str(tiny_clip),
                             "--json", "--no-progress")
    assert code == 0, err
    clip = json.loads(out)["clip"]
    for value in (clip["clip_image"], clip["clip_direction"], *clip["ground_truth"].values()):
        assert -1 <= value <= 1
    assert clip["clip_image"] == pytest.approx(clip["ground_truth"]["clip_image"])
    assert "InstructPix2Pix" in clip["text_direction"]


# ------------------------------------------------------------------------------ controllability, videos


def test_controllability_grid(nano_data):
    from movie_core.composer import compose
    from movie_core.data.datasets import open_dataset
    from movie_core.loading import build
    from movie_core.recipe import preset

    pipe = build(compose(preset("mobile").replace(size="nano", steps=2)))  # three-pass CFG: the scales act
    result = ev.controllability(ev.PipelinePredictor(pipe), open_dataset(nano_data, "test"), limit=2)
    text, image = result["text_guidance"], result["image_guidance"]
    assert [p["scale"] for p in text["points"]] == [2.0, 4.0, 7.5, 10.0, 14.0]
    assert [p["scale"] for p in image["points"]] == [1.0, 1.5, 2.0, 3.0]
    assert text["expected_sign"] == 1 and image["expected_sign"] == -1
    for series in (text, image):
        assert series["spearman"] is not None and -1 <= series["spearman"] <= 1
        assert all(0 <= p["strength"] <= 1 and 0 <= p["gt_distance"] <= 1 for p in series["points"])
        assert len({p["strength"] for p in series["points"]}) > 1  # the scales change the edit
    with pytest.raises(UsageError):
        ev.controllability(ev.IdentityPredictor(), open_dataset(nano_data, "test"))


def test_temporal_consistency(nano_data, random_model, capsys):
    from movie_core.data.datasets import VideoDataset

    code, out, err = run_cli(capsys, "eval", str(random_model), "--data", str(nano_data), "--videos", "--limit", "2",
                             "--controllability", "--control-samples", "1", "--json", "--no-progress")
    assert code == 0, err
    result = json.loads(out)
    temporal = result["temporal"]
    assert temporal["count"] == 2 and temporal["frames"] == 8 and temporal["anchor"] == "middle"
    assert temporal["ratio"] >= 0 and temporal["psnr"] < 100
    ctl = result["controllability"]  # random-init guidance embeddings are zero: the scales do nothing yet
    assert ctl["guidance"] == "embedded" and ctl["text_guidance"]["spearman"] is None
    truth = ev.evaluate("ground-truth", nano_data, videos=True)["temporal"]
    assert truth["psnr"] == 100.0 and truth["ratio"] == pytest.approx(truth["ground_truth_ratio"])
    ident = ev.temporal_consistency(ev.IdentityPredictor(), VideoDataset(nano_data, "test"))
    assert ident["ratio"] == pytest.approx(1.0)
    assert ident["psnr"] == pytest.approx(ident["identity"]["psnr"]) == pytest.approx(temporal["identity"]["psnr"])


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("args, message", [
    (["identity", "--data", "{missing}"], "no such dataset"),
    (["identity", "--data", "{data}", "--split", "nope"], "no split"),
    (["{empty}", "--data", "{data}"], "empty"),  # the loader names what is missing
    (["{missing}", "--data", "{data}"], "no such model"),
    (["identity", "--data", "{data}", "--controllability"], "needs a model"),
    (["identity", "--data", "{data}", "--clip", "{missing}"], "no such CLIP model folder"),
])
def test_errors_are_one_line(nano_data, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    values = {"data": str(nano_data), "missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty")}
    code, out, err = run_cli(capsys, "eval", *[a.format(**values) for a in args], "--no-progress")
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("movie: error:") and message in lines[0], err
