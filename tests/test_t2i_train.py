"""`t2i-train`: a text-to-image model trained from captioned scenes, teacher-less. Tiny runs at 32 px: from the shipped
nano family's text tower and autoencoders with a random MobileDiffusion UNet, then continued from its own folder;
caption dropout; option errors; and scripts/t2i_prompt_following.py end to end on the result."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from movie_core.training.loop import TrainConfig, run
from tests.cli_helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

RES = 32
ROOT = Path(__file__).resolve().parent.parent
TEACHER = Path("nano:instruct-pix2pix")


def distiller(**options):
    from movie_core.plugins import get_registry

    spec = get_registry().get("distiller", "t2i-train")
    return spec.load_factory()(spec.make_config(**options))


def config(steps: int = 3, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=4, lr=1e-3, resolution=RES, log_every=1, checkpoint_every=10_000,
                       seed=0, **kw)


def load(folder: Path):
    from movie_core.training.distiller import Distiller

    return Distiller().load_teacher(folder, torch.device("cpu"))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("t2i")


@pytest.fixture(scope="module")
def data(work) -> Path:
    from movie_core.data.captions import write_captions

    out = work / "captions"
    write_captions(out, count=16, size=RES, seed=0, test_fraction=0.25)
    return out


@pytest.fixture(scope="module")
def trained(work, data) -> Path:
    """3 steps from random init: the nano family's text tower and SD VAE, a random MobileDiffusion UNet, trained to
    predict v (with Min-SNR weights and offset noise)."""
    out = work / "t2i"
    summary = run(distiller(snr_gamma=5.0, offset_noise=0.1, steps=4, prediction="v_prediction"), TEACHER, data, out,
                  config(),
                  progress=False)
    assert summary["steps"] == 3 and summary["final_losses"]["loss"] == summary["final_losses"]["loss"]
    return out


def test_random_init_writes_a_loadable_text_to_image_model(trained):
    manifest = json.loads((trained / "movie.json").read_text())
    assert manifest["recipe"]["denoiser"] == "mobile-diffusion" and manifest["started_from"] == "random"
    assert manifest["recipe"]["steps"] == 4 and manifest["training"]["strategy"] == "t2i-train"
    pipe = load(trained)
    den = pipe.denoiser
    assert den.describe()["task"] == "text-to-image" and den.is_md and pipe.steps == 4
    assert den.prediction_type == "v_prediction" == den.make_scheduler().config.prediction_type
    from movie_core.loading import load_pipeline

    lcm = load_pipeline(pipe.recipe.replace(scheduler="lcm"), trained).denoiser  # another sampler: still v
    assert lcm.prediction_type == "v_prediction" == lcm.make_scheduler().config.prediction_type
    start = load(TEACHER)
    # the folder's tokenizer and autoencoders, its text tower trained on (train_text), the UNet new
    assert den.tokenizer.get_vocab() == start.denoiser.tokenizer.get_vocab()
    assert pipe.recipe.encoder == start.recipe.encoder == "sd-vae"
    enc_a, enc_b = pipe.encoder.state_dict(), start.encoder.state_dict()
    assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    text_a, text_b = den.text_encoder.state_dict(), start.denoiser.text_encoder.state_dict()
    assert any(not torch.equal(text_a[k], text_b[k]) for k in text_a)
    emb = den.encode_prompt(["a red circle on the left, blue background"])
    latents = den.sample(torch.zeros(1, 4, RES // 8, RES // 8), emb, steps=2,
                         generator=torch.Generator().manual_seed(0))
    assert latents.shape == (1, 4, RES // 8, RES // 8) and torch.isfinite(latents).all()


def test_continues_its_own_folder_and_keeps_a_frozen_text_tower(work, data, trained):
    out = work / "t2i-more"
    run(distiller(train_text=False), trained, data, out, config(steps=2), progress=False)
    manifest = json.loads((out / "movie.json").read_text())
    assert manifest["started_from"] == "model" and manifest["recipe"]["denoiser"] == "mobile-diffusion"
    before, after = load(trained).denoiser, load(out).denoiser
    assert after.prediction_type == "v_prediction"  # a continued model keeps its own
    ta, tb = before.text_encoder.state_dict(), after.text_encoder.state_dict()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    ua, ub = before.unet.state_dict(), after.unet.state_dict()
    assert any(not torch.equal(ua[k], ub[k]) for k in ua)


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_caption_dropout_trains_on_the_empty_prompt(work, data, trained, dropout):
    d = distiller(caption_dropout=dropout)
    seen: list[str] = []
    run_cfg = config(steps=1)

    real_setup = d.setup

    def setup(teacher_dir, accelerator, cfg):
        real_setup(teacher_dir, accelerator, cfg)
        tokenize = d.student.tokenize

        def spy(prompts):
            seen.extend(prompts)
            return tokenize(prompts)
        d.student.tokenize = spy

    d.setup = setup
    run(d, trained, data, work / f"drop-{dropout}", run_cfg, progress=False)
    assert len(seen) == 4
    assert all(p == "" for p in seen) if dropout else all(p for p in seen)


@pytest.fixture
def no_loading_bars():
    """`movie` turns transformers' loading bars off before importing it; in this process it is imported already."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield
    logging.enable_progress_bar()


@pytest.mark.usefixtures("no_loading_bars")
def test_option_errors_are_one_line(capsys, work, data):
    for opts, what in ((("init=model",), "edits images"), (("denoiser=mobile-pix2pix",), "text-to-image"),
                       (("init=fresh",), "init"), (("caption_dropout=2",), "caption_dropout")):
        args = [a for o in opts for a in ("-O", o)]
        code, _, err = run_cli(capsys, "distill", "t2i-train", "--teacher", str(TEACHER), "--data", str(data),
                               "--out", str(work / "never"), "--steps", "1", "--resolution", str(RES),
                               "--no-progress", *args)
        assert code == 2 and what in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert not (work / "never").exists() and not (work / "never.train").exists()


def test_prompt_following_script_runs_on_the_model(work, data, trained):
    spec = importlib.util.spec_from_file_location("t2i_prompt_following", ROOT / "scripts" / "t2i_prompt_following.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = work / "pf.json"
    result = module.main(["--model", str(trained), "--data", str(data), "--count", "4", "--steps", "2",
                          "--steps", "1", "--guidance", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["ground_truth"]["follows"] == 1.0 and result["prompts"] == 4
    runs = result["models"][0]["runs"]
    assert [(r["steps"], r["sampler"], r["text_guidance"]) for r in runs] == [(2, "ddim", 3.0), (1, "ddim", 3.0)]
    default = module.main(["--model", str(trained), "--data", str(data), "--count", "2", "--out", str(out)])
    assert [(r["steps"], r["sampler"]) for r in default["models"][0]["runs"]] == [(4, "ddim"), (1, "lcm")]
    assert all(0 <= r["follows"] <= 1 and 0 <= r["chance"]["follows"] <= 1 for r in runs)
    with pytest.raises(SystemExit, match="not a text-to-image"):
        module.main(["--model", str(TEACHER), "--data", str(data), "--count", "4", "--out", str(out)])
    # --loss --no-sampling: the held-out denoising loss alone; the same whatever the batch; a UNet whose output is
    # zero scores the target's mean square (epsilon: the noise's, about 1)
    only = module.main(["--model", str(trained), "--data", str(data), "--count", "4", "--no-sampling", "--out",
                        str(out)])
    loss = only["models"][0]["heldout_loss"]
    assert only["models"][0]["runs"] == [] and set(loss["by_timestep"]) == {"100", "300", "500", "700", "900"}
    pipe = module.load(str(trained))
    images = module.round_trip(pipe, np.zeros((4, 32, 32, 3), np.uint8) + 128)
    prompts = ["a red circle"] * 4
    assert module.heldout_loss(pipe, images, prompts, 0, batch=1) == module.heldout_loss(pipe, images, prompts, 0)
    assert loss["mean"] > 0 and loss["prediction_type"] == pipe.denoiser.prediction_type

    def zero(_module, _inputs, out):
        if isinstance(out, tuple):
            return (torch.zeros_like(out[0]), *out[1:])
        return torch.zeros_like(out) if torch.is_tensor(out) else type(out)(torch.zeros_like(out.sample))

    pipe.denoiser.unet.register_forward_hook(zero)
    x0_ms = pipe.encode(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).float().pow(2).mean()
    acp = pipe.denoiser.make_scheduler().alphas_cumprod.float()[list(module.LOSS_TIMESTEPS)]
    # E[target^2]: epsilon 1; v = alpha noise - sigma x0: alpha^2 + sigma^2 E[x0^2]
    expected = 1.0 if pipe.denoiser.prediction_type == "epsilon" else float((acp + (1 - acp) * x0_ms).mean())
    assert module.heldout_loss(pipe, images, prompts, 0)["mean"] == pytest.approx(expected, rel=0.2)
