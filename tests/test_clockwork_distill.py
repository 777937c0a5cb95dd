"""The `clockwork` distiller on the shipped nano models, at a tiny budget: the frozen teacher stays as it is, the
adaptor alone trains, beats the identity adaptor on held-out trajectories, and the saved folder runs clocked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

RES = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from movie_core.data import writer

    out = tmp_path_factory.mktemp("clockwork") / "data"
    writer.write_nano(out, count=12, videos=0, size=RES, seed=0, test_fraction=0.25)
    return out


def distiller(**options):
    from movie_core.plugins import get_registry

    spec = get_registry().get("distiller", "clockwork")
    return spec.load_factory()(spec.make_config(**options))


def train(d, teacher: str, data: Path, out: Path, steps: int) -> dict:
    from movie_core.training.loop import TrainConfig, run

    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-3, resolution=RES, log_every=1, checkpoint_every=10_000)
    return run(d, teacher, data, out, cfg, progress=False)


def test_step_clock_adaptor_beats_identity_and_runs_from_the_folder(data, tmp_path):
    from movie_core import clockwork
    from movie_core.data.datasets import open_dataset
    from movie_core.loading import load_pipeline
    from movie_core.recipe import preset
    from movie_core.training.loop import BatchSource

    d = distiller(kind="step", clock=2, steps=4)
    out = tmp_path / "mmg-clockwork"
    train(d, "nano:mobile-pix2pix-mmg", data, out, steps=16)
    shipped = d.load_teacher(Path("nano:mobile-pix2pix-mmg"), torch.device("cpu")).denoiser.unet.state_dict()
    adaptor = clockwork.load_adaptor(out / "adaptor")
    assert adaptor.trained_for == {"kind": "step", "clock": 2, "sampler": d.sampler, "steps": 4, "resolution": RES}
    test = BatchSource(open_dataset(data, "test"), 3, (RES,), seed=1, rank=0)
    scores = d.held_out(adaptor, [(test(i, torch.device("cpu")), 10**6 + i) for i in range(2)])
    assert scores["adaptor_mse"] < 0.98 * scores["identity_mse"]  # it starts as the identity: the loss went down
    assert all(torch.equal(v, shipped[k]) for k, v in d.teacher.denoiser.unet.state_dict().items())  # frozen
    # the folder is the teacher plus adaptor/: a clocked recipe runs on it, and refuses other step counts
    recipe = preset("mmg").replace(size="nano", steps=4, clock=2, adaptor="trained")
    pipe = load_pipeline(recipe, out)
    images = torch.rand(1, 3, RES, RES) * 2 - 1
    result = pipe.edit_batch(images, "make it sepia", seed=3)
    assert pipe.step_clock.adaptor_calls == 2 and torch.isfinite(result).all()
    from movie_core.errors import UsageError

    with pytest.raises(UsageError, match="trained for the step clock 2 with the .* sampler at 4 step"):
        load_pipeline(recipe.replace(steps=6), out)


def test_frame_clock_adaptor_trains_on_video_frames_and_runs(data, tmp_path):
    import numpy as np

    from movie_core import clockwork
    from movie_core.data.procedural import make_video
    from movie_core.edit import FrameEditor
    from movie_core.loading import load_pipeline
    from movie_core.recipe import preset
    from movie_core.training.loop import read_log

    d = distiller(kind="frame", clock=2)
    out = tmp_path / "one-step-clockwork"
    summary = train(d, "nano:mobile-pix2pix-1step", data, out, steps=3)
    log = read_log(out)
    assert len(log) == 3 and all(np.isfinite(r["loss"]) for r in log)
    assert summary["final_losses"]["loss_identity"] > 0  # frames differ: there is something to learn
    assert clockwork.load_adaptor(out / "adaptor").trained_for["kind"] == "frame"
    pipe = load_pipeline(preset("movie").replace(size="nano", frame_clock=2, adaptor="trained"), out)
    clip = make_video(9, frames=4, size=RES)
    editor = FrameEditor(pipe, clip["instruction"], size=(RES, RES), padded=(RES, RES))
    editor.record_anchor(clip["source_frames"][2], 2)
    edited = editor.edit(list(clip["source_frames"]), (RES, RES))
    assert len(edited) == 4 and pipe.frame_clock.adaptor_frames == 2  # frames 1 and 3; 0 and 2 (the anchor) full


def test_cli_trains_a_frame_adaptor_for_a_cfg3_teacher_and_refuses_a_step_clock_at_one_step(run_movie, data,
                                                                                             tmp_path):
    from movie_core import clockwork

    out = tmp_path / "mobile-clockwork"
    ok = run_movie("distill", "clockwork", "--teacher", "nano:mobile-pix2pix", "--data", str(data), "--out", str(out),
                   "--steps", "2", "--batch-size", "4", "--resolution", str(RES), "--no-progress",
                   "-O", "kind=frame", "-O", "clock=2", "-O", "steps=2", "-O", "use_r_out=false")
    assert ok.returncode == 0, ok.stderr
    adaptor = clockwork.load_adaptor(out / "adaptor")
    assert (adaptor.trained_for["kind"], adaptor.trained_for["steps"]) == ("frame", 2)  # 3 guidance branches per frame
    assert adaptor.down is None  # -O use_r_out=false: the r_in-only ablation
    bad = run_movie("distill", "clockwork", "--teacher", "nano:mobile-pix2pix-1step", "--data", str(data),
                    "--out", str(tmp_path / "no"), "--steps", "2", "--no-progress", "-O", "kind=step")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("movie: error: a step clock needs several sampling steps")
    assert not (tmp_path / "no").exists() and not (tmp_path / "no.train").exists()
