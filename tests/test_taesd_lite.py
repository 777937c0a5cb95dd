"""taesd-lite: TAESD without its full-resolution blocks, distilled from a TAESD into the same latent space (resumable),
loaded through its plugin; and TAESD's channels-last CPU path gives the same numbers as the plain layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderTiny

from movie_core.components import BuildContext
from movie_core.plugins import get_registry
from movie_plugins.autoencoders._sd1 import TAESD, TAESD_LITE_BLOCKS, TAESD_SIZES
from movie_plugins.nano import taesd_lite

SMALL = {"batch_size": 2, "resolution": 32, "crop": 16, "pool_size": 8, "checkpoint_seconds": 0.0, "lr": 1e-3}


class Interrupt(Exception):
    pass


def build(name: str, size: str = "nano", weights: Path | None = None, meta: bool = False):
    spec = get_registry().get("autoencoder", name)
    ctx = BuildContext(size=size, weights=weights, meta=meta)
    return spec.load_factory()(ctx, spec.make_config())


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lite") / "model"
    torch.manual_seed(0)
    TAESD(AutoencoderTiny(**TAESD_SIZES["nano"])).save_pretrained(root)
    return root


def test_student_keeps_every_teacher_layer_but_the_full_resolution_blocks() -> None:
    torch.manual_seed(0)
    teacher = AutoencoderTiny(**TAESD_SIZES["nano"])
    config = taesd_lite.lite_config(teacher)
    assert (tuple(config["num_encoder_blocks"]), tuple(config["num_decoder_blocks"])) == TAESD_LITE_BLOCKS["nano"]
    student = AutoencoderTiny(**config)
    copied = taesd_lite.init_from_teacher(student, teacher)
    assert copied == len(student.state_dict())  # every student tensor came from the teacher
    t_enc, s_enc = list(teacher.encoder.layers), list(student.encoder.layers)
    assert torch.equal(s_enc[0].weight, t_enc[0].weight)  # the first conv, then the teacher's first block is skipped
    assert torch.equal(s_enc[1].weight, t_enc[2].weight)
    t_dec, s_dec = list(teacher.decoder.layers), list(student.decoder.layers)
    assert torch.equal(s_dec[-1].weight, t_dec[-1].weight)  # the output conv, after the skipped last block
    assert torch.equal(s_dec[-2].weight, t_dec[-3].weight)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())


def test_distillation_resumes_and_the_plugin_loads_what_it_wrote(teacher_folder: Path) -> None:
    logs: list[str] = []

    def stop(line: str) -> None:
        logs.append(line)
        if line.startswith("taesd-lite: step 30/30"):  # logged before that step is saved: 29 are
            raise Interrupt(line)

    with torch.backends.mkldnn.flags(enabled=False), pytest.raises(Interrupt):
        taesd_lite.distill_taesd_lite(teacher_folder, steps=30, log=stop, **SMALL)
    assert (teacher_folder / taesd_lite.STATE).is_file()
    assert not (teacher_folder / taesd_lite.LITE_FOLDER).exists()  # nothing half-written
    second: list[str] = []
    with torch.backends.mkldnn.flags(enabled=False):
        metrics = taesd_lite.distill_taesd_lite(teacher_folder, steps=30, log=second.append, **SMALL)
    assert any("resuming at step 29/30" in line for line in second)
    assert not (teacher_folder / taesd_lite.STATE).exists()
    assert metrics["heldout"]["latent_mse"] < metrics["heldout_before"]["latent_mse"]
    assert (metrics["heldout"]["decoder_psnr_vs_taesd_same_latents"]
            > metrics["heldout_before"]["decoder_psnr_vs_taesd_same_latents"])
    lite = build("taesd-lite", weights=teacher_folder)
    assert type(lite).__name__ == "TAESDLite" and lite.latent_space == build("taesd").latent_space
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert lite.encode(x).shape == (2, 4, 4, 4) and lite.decode(lite.encode(x)).shape == x.shape


def test_lite_at_full_size_costs_less_than_taesd() -> None:
    full = build("taesd-lite", size="full", meta=True)
    taesd = build("taesd", size="full", meta=True)
    blocks = (tuple(full.tae.config.num_encoder_blocks), tuple(full.tae.config.num_decoder_blocks))
    assert blocks == TAESD_LITE_BLOCKS["full"]
    assert sum(p.numel() for p in full.parameters()) < sum(p.numel() for p in taesd.parameters())


def test_a_folder_without_lite_weights_is_one_line(tmp_path: Path) -> None:
    from movie_core.errors import MovieError

    with pytest.raises(MovieError, match="no taesd-lite weights"):
        build("taesd-lite", weights=tmp_path)


def test_channels_last_cpu_path_matches_the_plain_layout() -> None:
    torch.manual_seed(1)
    tae = AutoencoderTiny(**TAESD_SIZES["nano"]).eval()
    plain = AutoencoderTiny(**TAESD_SIZES["nano"]).eval()
    plain.load_state_dict(tae.state_dict())
    wrapped = TAESD(tae)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = wrapped.encode(x)
        y = wrapped.decode(z)
        assert tae.decoder.layers[0].weight.is_contiguous(memory_format=torch.channels_last)  # it did switch
        assert z.is_contiguous() and y.is_contiguous()
        assert torch.allclose(z, plain.encoder(x), atol=1e-5)
        assert torch.allclose(y, plain.decoder(z).clamp(-1, 1), atol=1e-5)
