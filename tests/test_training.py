"""The shared training loop and `movie distill`: resume after a crash, the NaN guard, gradient accumulation,
two real ranks (torchrun, gloo), the model folder and manifest, and one-line CLI errors."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from movie_core import cli
from movie_core.errors import MovieError
from movie_core.training.loop import PARAM_DUMP_ENV, TrainConfig, read_log, run

pytestmark = pytest.mark.usefixtures("one_thread")

RES = 32


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def data(work) -> Path:
    from movie_core.data.writer import write_nano

    out = work / "data"
    write_nano(out, count=24, videos=0, size=RES, seed=1, test_fraction=0.25)
    return out


@pytest.fixture(scope="module")
def teacher(work) -> Path:
    """A random nano Mobile-Pix2Pix model folder (the mmg teacher; pix2pix-finetune finetunes it)."""
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import preset

    out = work / "mobile"
    build(compose(preset("mobile").replace(size="nano", seed=0))).save_pretrained(out)
    return out


def distiller(name: str, **options):
    from movie_core.plugins import get_registry

    spec = get_registry().get("distiller", name)
    return spec.load_factory()(spec.make_config(**options))


def config(**kw) -> TrainConfig:
    base = {"steps": 20, "batch_size": 4, "lr": 1e-3, "resolution": RES, "log_every": 1, "checkpoint_every": 10,
            "seed": 3}
    return TrainConfig(**(base | kw))


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


class Killed(Exception):
    """Stands for the process dying mid-run."""


# --- resume -----------------------------------------------------------------------------------------


def test_killed_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_does(work, data, teacher,
                                                                                          monkeypatch):
    from movie_plugins.distillers._pix2pix_finetune import Pix2PixFinetuneDistiller

    whole = work / "whole"
    run(distiller("pix2pix-finetune"), teacher, data, whole, config(), progress=False)

    crashed = work / "crashed"
    original = Pix2PixFinetuneDistiller.train_step

    def dies_at_15(self, batch, step):
        if step == 15:  # steps 0..14 done: the checkpoint at step 10 is the last one
            raise Killed("killed at step 15")
        return original(self, batch, step)

    monkeypatch.setattr(Pix2PixFinetuneDistiller, "train_step", dies_at_15)
    with pytest.raises(Killed):
        run(distiller("pix2pix-finetune"), teacher, data, crashed, config(), progress=False)
    assert not crashed.exists()
    assert [row["step"] for row in read_log(crashed)] == list(range(1, 16))
    assert [p.name for p in sorted((work / "crashed.train" / "checkpoints").iterdir())] == ["step-10"]
    monkeypatch.setattr(Pix2PixFinetuneDistiller, "train_step", original)

    with pytest.raises(MovieError, match="--resume"):  # the earlier run is not silently overwritten
        run(distiller("pix2pix-finetune"), teacher, data, crashed, config(), progress=False)
    summary = run(distiller("pix2pix-finetune"), teacher, data, crashed, config(), resume=True, progress=False)
    assert summary["resumed_from"] == 10

    # the loss curve continues: rows 11.. of the crashed run were dropped and redone, 1..20 once each,
    # and (per-step seeding: same batches, noise, dropout) every loss equals the uninterrupted run's
    log, ref = read_log(crashed), read_log(whole)
    assert [row["step"] for row in log] == list(range(1, 21))
    assert [row["loss"] for row in log] == [row["loss"] for row in ref]
    # ...and so do the final weights, bit for bit (CPU float32, same kernels)
    a, b = unet_weights(whole), unet_weights(crashed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((crashed / "movie.json").read_text())["training"]["steps"] == 20


def test_resume_without_a_checkpoint_is_a_usage_error(work, data, teacher):
    with pytest.raises(MovieError, match="nothing to resume"):
        run(distiller("mmg"), teacher, data, work / "never-ran", config(steps=2), resume=True, progress=False)


# --- NaN guard, gradient accumulation ---------------------------------------------------------------------


def test_nan_loss_stops_with_one_line_naming_the_step(work, data, teacher):
    from movie_plugins.distillers._pix2pix_finetune import Pix2PixFinetuneDistiller

    class Diverges(Pix2PixFinetuneDistiller):
        def train_step(self, batch, step):
            losses = super().train_step(batch, step)
            return losses | {"loss": math.nan} if step == 3 else losses  # the 4th step

    with pytest.raises(MovieError) as info:
        run(Diverges(), teacher, data, work / "nan", config(steps=6, checkpoint_every=2), progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "loss=nan at step 4" in message and "step-2" in message and "lower --lr" in message
    assert not (work / "nan").exists()


def test_gradient_accumulation_updates_every_k_steps_and_warms_up_per_update(work, data, teacher):
    out = work / "accum"
    run(distiller("pix2pix-finetune"), teacher, data, out,
        config(steps=6, grad_accum=2, warmup_steps=4, lr=1e-3, checkpoint_every=100), progress=False)
    lrs = [row["lr"] for row in read_log(out)]
    # LambdaLR warm-up lr * (k + 1) / 4 after k updates; one update per two micro-batches
    assert lrs == pytest.approx([2.5e-4, 5e-4, 5e-4, 7.5e-4, 7.5e-4, 1e-3])
    state = torch.load(work / "accum.train" / "checkpoints" / "step-6" / "optimizer.bin", weights_only=True)
    assert {int(s["step"]) for s in state["state"].values()} == {3}  # Adam stepped 3 times, not 6


# --- two ranks ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_with_torchrun_end_with_identical_parameters(work, data, teacher):
    out = work / "ddp"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOVIE_", "ACCELERATE_"))}
    env.update(OMP_NUM_THREADS="1", **{PARAM_DUMP_ENV: "1"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "movie_core.cli", "distill", "mmg", "--teacher", str(teacher),
           "--data", str(data), "--out", str(out), "--steps", "4", "--batch-size", "2", "--lr", "1e-3",
           "--resolution", str(RES), "--no-progress", "--json"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "movie.json").read_text())
    assert manifest["training"]["world_size"] == 2
    hashes = sorted((work / "ddp.train").glob("params-rank*.sha256"))
    assert [p.name for p in hashes] == ["params-rank0.sha256", "params-rank1.sha256"]
    digests = {p.read_text().strip() for p in hashes}
    assert len(digests) == 1, "ranks diverged"
    # the ranks drew different batches (seed, step, rank): it was data parallelism, not two copies of one run
    assert (work / "ddp.train" / "checkpoints" / "step-4" / "random_states_1.pkl").is_file()


# --- the command ----------------------------------------------------------------------------------------


def test_distill_command_writes_a_loadable_model_with_stage_and_options(work, data, teacher, capsys):
    out = work / "cli-mmg"
    cli.main(["distill", "mmg", "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--steps", "3",
              "--batch-size", "2", "--resolution", str(RES), "--no-progress", "--json",
              "-O", "text_guidance_max=10", "-O", "loss-weight=2"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and summary["world_size"] == 1 and set(summary["final_losses"]) == {"loss"}
    manifest = json.loads((out / "movie.json").read_text())
    assert manifest["stage"] == "mobile-pix2pix-mmg" and manifest["recipe"]["denoiser"] == "mobile-pix2pix-mmg"
    training = manifest["training"]
    assert training["strategy"] == "mmg" and training["teacher"] == str(teacher)
    assert training["options"]["text_guidance_max"] == 10.0 and training["options"]["loss_weight"] == 2.0
    assert training["train"]["lr"] == 1e-5  # the strategy's default (paper: 1e-5)
    cli.main(["compose", "--model", str(out), "--json"])
    described = json.loads(capsys.readouterr().out)
    assert described["denoiser"]["name"] == "mobile-pix2pix-mmg"


def fail(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        cli.main(list(args))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return info.value.code, err


def test_distill_command_errors_are_one_line(work, data, teacher, capsys):
    common = ["--teacher", str(teacher), "--data", str(data), "--steps", "1", "--no-progress"]
    code, err = fail(capsys, "distill", "mgm", "--out", str(work / "e1"), *common)
    assert code == 2 and "unknown distiller 'mgm'" in err and "did you mean 'mmg'" in err
    code, err = fail(capsys, "distill", "mmg", "--out", str(work / "e2"), *common, "-O", "s_max=3")
    assert code == 2 and "unknown option 's_max'" in err and "text_guidance_max" in err
    code, err = fail(capsys, "distill", "mmg", "--out", str(work / "e3"), *common, "-O", "image_guidance_min=5")
    assert code == 2 and "image_guidance_min (5.0) is above image_guidance_max" in err
    code, err = fail(capsys, "distill", "mmg", "--out", str(teacher), *common)
    assert code == 2 and "exists; pass --overwrite" in err
    code, err = fail(capsys, "distill", "mmg", "--out", str(work / "e4"), "--teacher", str(teacher),
                     "--data", str(work / "nope"), "--steps", "1", "--no-progress")
    assert code != 0 and "nope" in err


def test_latent_cache_encodes_each_sample_once_and_matches_direct_encoding(work, data, teacher, capsys):
    from movie_core.data.datasets import open_dataset, to_torch_batch
    from movie_core.training.distiller import Distiller

    pipe = Distiller().load_teacher(teacher, torch.device("cpu"))
    ds = open_dataset(data, "train")
    batch = to_torch_batch([ds[i] for i in (3, 5, 3)], device="cpu") | {"index": [3, 5, 3]}
    direct, cached = Distiller(), Distiller()
    direct.teacher = cached.teacher = pipe
    direct.latent_cache, cached.latent_cache = None, {}
    want, got = direct.encode_batch(batch), cached.encode_batch(batch)
    assert sorted(cached.latent_cache) == [3, 5]
    for a, b in zip(want[:2], got[:2]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    # a cached sample is not encoded again: different pixels under the same index give the stored latents
    again = cached.encode_batch(batch | {"source": -batch["source"]})
    torch.testing.assert_close(again[0], got[0])
    assert not torch.allclose(direct.encode_batch(batch | {"source": -batch["source"]})[0], got[0])
    # and the flag reaches the loop through `movie distill --cache-latents`
    out = work / "cli-cache"
    cli.main(["distill", "mmg", "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--steps", "2",
              "--batch-size", "2", "--resolution", str(RES), "--cache-latents", "--no-progress", "--json"])
    capsys.readouterr()
    assert json.loads((out / "movie.json").read_text())["training"]["train"]["cache_latents"] is True


def test_extra_resolutions_cycle_per_step_with_the_pixel_count_kept(work, data, teacher, capsys):
    """--extra-resolution: step k trains at (resolution, *extra)[k % n]; a step at 2x the size draws 1/4 the samples,
    and the latent cache keys a sample by (index, size) there, so a sample's 32-px latents never stand in at 64."""
    from movie_core.data.datasets import open_dataset
    from movie_core.training.loop import BatchSource

    source = BatchSource(open_dataset(data, "train"), 8, (RES, 2 * RES), seed=0, rank=0)
    first, second, third = (source(k, torch.device("cpu")) for k in range(3))
    assert first["source"].shape == (8, 3, RES, RES) and third["source"].shape == (8, 3, RES, RES)
    assert second["source"].shape == (2, 3, 2 * RES, 2 * RES) and second["edited"].shape == second["source"].shape
    assert all(isinstance(i, int) for i in first["index"])
    assert all(isinstance(i, tuple) and i[1] == 2 * RES for i in second["index"])
    out = work / "cli-multires"
    cli.main(["distill", "mmg", "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--steps", "2",
              "--batch-size", "4", "--resolution", str(RES), "--extra-resolution", str(2 * RES), "--cache-latents",
              "--no-progress", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert math.isfinite(summary["final_losses"]["loss"])
    assert json.loads((out / "movie.json").read_text())["training"]["train"]["extra_resolutions"] == [2 * RES]
