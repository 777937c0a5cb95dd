"""MoViE's distillers on the MobileDiffusion UNet (issue 23 item 3a): pix2pix-finetune -> mmg -> vpred ->
adversarial train the MobileDiffusion editing stages through the editing-stage methods both families share
(plugins/distillers/_common.py), so the nano MobileDiffusion-UNet editing chain is the shipped chain's recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from movie_core.errors import UsageError
from movie_core.training.distiller import Distiller
from movie_core.training.loop import TrainConfig, run

pytestmark = pytest.mark.usefixtures("one_thread")

RES = 64


def distiller(name: str, **options):
    from movie_core.plugins import get_registry

    spec = get_registry().get("distiller", name)
    return spec.load_factory()(spec.make_config(**options))


def train(name: str, teacher: Path, data: Path, out: Path, steps: int = 2, **options) -> None:
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-3, resolution=RES, log_every=1, checkpoint_every=10_000,
                      seed=0)
    run(distiller(name, **options), teacher, data, out, cfg, progress=False)


def load(folder: Path):
    return Distiller().load_teacher(folder, torch.device("cpu"))


def manifest(folder: Path) -> dict:
    return json.loads((folder / "movie.json").read_text())


def unet_state(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load(folder).denoiser.unet.state_dict().items()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("md-edit")


@pytest.fixture(scope="module")
def data(work) -> Path:
    from movie_core.data import writer

    out = work / "data"
    writer.write_nano(out, count=16, videos=0, size=RES, seed=0, test_fraction=0.25)
    return out


@pytest.fixture(scope="module")
def md_base(work) -> Path:
    """A random nano mobile-diffusion-pix2pix (3-pass CFG, epsilon) with TAESD."""
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import preset

    out = work / "md-base"
    build(compose(preset("base").replace(size="nano", seed=0, denoiser="mobile-diffusion-pix2pix",
                                         vae="taesd"))).save_pretrained(out)
    return out


def test_the_movie_stages_train_the_md_unet(work, data, md_base):
    """Each MoViE stage's student is the MobileDiffusion stage of its role, trained (its UNet moved), loadable, with
    the role's guidance and prediction type; the one-step model samples in one step."""
    from movie_plugins.denoisers._md_edit import MDEditDenoiser

    folders = {"finetune": work / "md-ft", "mmg": work / "md-mmg", "vpred": work / "md-v", "1step": work / "md-1"}
    train("pix2pix-finetune", md_base, data, folders["finetune"])
    train("mmg", folders["finetune"], data, folders["mmg"])
    train("vpred", folders["mmg"], data, folders["vpred"])
    train("adversarial", folders["vpred"], data, folders["1step"], teacher_sampler_model=str(folders["mmg"]))
    expected = {"finetune": ("mobile-diffusion-pix2pix", "cfg3", "epsilon"),
                "mmg": ("mobile-diffusion-pix2pix-mmg", "embedded", "epsilon"),
                "vpred": ("mobile-diffusion-pix2pix-1step", "embedded", "v_prediction"),
                "1step": ("mobile-diffusion-pix2pix-1step", "embedded", "v_prediction")}
    teachers = {"finetune": md_base, "mmg": folders["finetune"], "vpred": folders["mmg"], "1step": folders["vpred"]}
    for role, folder in folders.items():
        stage, guidance, prediction = expected[role]
        m = manifest(folder)
        assert (m["recipe"]["denoiser"], m["guidance"], m["prediction_type"]) == expected[role], role
        assert m["stage"] == stage
        den = load(folder).denoiser
        assert isinstance(den, MDEditDenoiser) and den.stage == stage and den.guidance == guidance
        assert den.prediction_type == prediction
        before, after = unet_state(teachers[role]), unet_state(folder)
        shared = [k for k in after if k in before]
        assert any(not torch.equal(before[k], after[k]) for k in shared), f"{role}: the UNet did not train"
        if role == "mmg":  # the guidance embedding was added (zeroed) and trained
            assert any(k.startswith("guidance_embed") for k in after) and not any(
                k.startswith("guidance_embed") for k in before)
    one = load(folders["1step"])
    assert one.steps == 1 and one.denoiser.default_steps == 1


def test_a_v_prediction_md_model_keeps_v_and_goes_straight_to_one_step(work, data):
    """A v-prediction MobileDiffusion text-to-image model converted to the editing architecture stays v-prediction
    (its manifest said epsilon before), its guidance-distilled student predicts v too, vpred refuses it with one
    line naming the next step, and adversarial takes it as it is."""
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import preset
    from movie_plugins.denoisers._convert import convert_folder

    t2i = work / "md-t2i-v"
    build(compose(preset("base").replace(size="nano", seed=1, denoiser="mobile-diffusion",
                                         vae="taesd"))).save_pretrained(t2i)
    config = t2i / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"prediction_type": "v_prediction"}))
    edit = convert_folder(t2i, "mobile-diffusion-pix2pix", work / "md-edit-v")
    assert manifest(edit)["prediction_type"] == "v_prediction"
    assert load(edit).denoiser.prediction_type == "v_prediction"
    mmg = work / "md-mmg-v"
    train("mmg", edit, data, mmg)
    assert load(mmg).denoiser.prediction_type == "v_prediction"
    with pytest.raises(UsageError, match="predicts v_prediction already.*adversarial"):
        train("vpred", mmg, data, work / "md-v-refused")
    assert not (work / "md-v-refused").exists()
    one = work / "md-1-v"
    train("adversarial", mmg, data, one, teacher_sampler="student-init")
    assert manifest(one)["stage"] == "mobile-diffusion-pix2pix-1step"


def test_md_discriminator_features_are_the_frozen_encoder_arm(md_base):
    """The adversarial discriminator on an MD teacher reads one map per UNet level (channels as configured), from a
    frozen copy whose outputs are the UNet's own down arm."""
    from movie_plugins.distillers._discriminator import Discriminator, MDFeatureExtractor

    den = load(md_base).denoiser
    unet = den.unet
    disc = Discriminator(unet, text_dim=den.encode_prompt([""]).shape[-1], hidden=16)
    assert isinstance(disc.features, MDFeatureExtractor)
    assert not any(p.requires_grad for p in disc.features.parameters())
    x = torch.randn(2, 8, 8, 8)
    t = torch.tensor([10, 900])
    emb = den.encode_prompt(["make it sepia", ""])
    feats = disc.features(x, t, emb)
    assert [f.shape[1] for f in feats] == list(unet.config.channels)
    own = unet.down_features(x, t, emb)
    assert all(torch.equal(a, b) for a, b in zip(feats, own))
    maps = disc(x[:, :4], x[:, 4:], t, emb, torch.ones(2), torch.full((2,), 7.5))
    assert len(maps) == len(unet.config.channels) and all(m.shape[:2] == (2, 1) for m in maps)


def test_pix2pix_finetune_cannot_turn_an_md_model_into_an_sd_stage(work, data, md_base):
    with pytest.raises(UsageError, match="cannot turn"):
        train("pix2pix-finetune", md_base, data, work / "refused", stage="mobile-pix2pix")
    assert not (work / "refused").exists()


@pytest.mark.parametrize("stage", ["mobile-diffusion-pix2pix", "mobile-diffusion-pix2pix-1step"])
@pytest.mark.parametrize("side", [8, 7])
def test_the_md_unet_splits_where_clockwork_cuts_it(stage, side):
    """Clockwork's cut of the MobileDiffusion UNet: tail(core(head(x))) is the network, at an even and an odd latent
    size, with and without the guidance embedding; the core's output has the top level's height and width."""
    from movie_core.components import BuildContext
    from movie_plugins.denoisers import DenoiserConfig, _md_edit

    torch.manual_seed(0)
    den = _md_edit.build(stage, BuildContext(size="nano", seed=0), DenoiserConfig())
    with torch.no_grad():  # non-zero guidance layers, so the embedding's path counts
        for p in den.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    split = den.network_split()
    x, src = torch.randn(2, 4, side, side), torch.randn(2, 4, side, side)
    emb = den.encode_prompt(["make it sepia", ""])
    inputs = den.graph_inputs(x, torch.tensor([5, 700]), src, emb, torch.tensor([1.5, 2.0]), torch.tensor([7.5, 3.0]))
    with torch.no_grad():
        whole = den.networks()["unet"].module(*inputs)
        r_in, *context = split.head(*inputs)
        r_out = split.core(r_in, *context)
        parts = split.tail(r_out, *context)
    assert r_out.shape[-2:] == context[-1].shape[-2:] and r_in.shape[-1] == (side + 1) // 2
    assert torch.equal(parts, whole)


def test_movie_flops_counts_the_frame_clock_on_the_md_unet(tmp_path):
    """`movie flops --frame-clock` runs on the MobileDiffusion editing recipe: the core runs on every other frame
    and the total falls below the unclocked recipe's (issue 23's full-size figure with TAESD)."""
    from click.testing import CliRunner

    from movie_core import cli

    def total(*extra: str) -> dict:
        result = CliRunner().invoke(cli.cli, ["flops", "--size", "full", "--denoiser", "mobile-diffusion-pix2pix-1step",
                                           "--vae", "taesd", "--json", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    plain, clocked = total(), total("--frame-clock", "2", "--adaptor", "trained")
    assert clocked["components"]["unet_core"]["calls"] == 0.5
    assert clocked["tflops_paper"] < 0.5 < plain["tflops_paper"]
