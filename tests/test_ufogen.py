"""`ufogen` (MobileDiffusion Sec. 4): tiny runs of each reconstruction term and of LoRA, on an editing teacher with
MoViE's guidance embedding and on a text-to-image one; resume; the one-step student moves; option errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from movie_core.errors import UsageError
from movie_core.training.loop import TrainConfig, read_log, run
from tests.cli_helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

RES = 32


def distiller(**options):
    from movie_core.plugins import get_registry

    spec = get_registry().get("distiller", "ufogen")
    return spec.load_factory()(spec.make_config(**options))


def config(steps: int = 2, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=2, lr=1e-3, resolution=RES, log_every=1, checkpoint_every=10_000,
                       seed=0, **kw)


def load(folder: Path):
    from movie_core.training.distiller import Distiller

    return Distiller().load_teacher(folder, torch.device("cpu"))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ufogen")


@pytest.fixture(scope="module")
def data(work) -> Path:
    from movie_core.data import writer

    out = work / "data"
    writer.write_nano(out, count=12, videos=0, size=RES, seed=0, test_fraction=0.25)
    return out


def _save(recipe, out: Path) -> Path:
    from movie_core.composer import compose
    from movie_core.loading import build

    build(compose(recipe)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def edit_teacher(work) -> Path:
    """A random nano guidance-embedded editing model (mobile-pix2pix-mmg, TAESD), its guidance embedding nonzero so
    that s_I and s_T change its output (a trained one's do)."""
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import preset

    pipe = build(compose(preset("mmg").replace(size="nano", seed=0)))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in pipe.denoiser.unet.class_embedding.parameters():
            p.normal_(0, 0.05)
    out = work / "mmg"
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def t2i_teacher(work) -> Path:
    from movie_core.recipe import preset

    return _save(preset("movie").replace(size="nano", seed=0, denoiser="mobile-diffusion", vae="taesd"), work / "t2i")


def one_step(folder: Path, seed: int = 0, s_I: float = 1.5, s_T: float = 7.5) -> torch.Tensor:
    """A model folder's 1-step (LCM) edit of fixed latents: what its one-step sampler returns."""
    pipe = load(folder)
    den = pipe.denoiser
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(1, den.latent_channels, RES // 8, RES // 8, generator=g)
    emb = den.encode_prompt(["make it sepia"])
    return den.sample(src, emb, steps=1, s_T=s_T, s_I=s_I, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("recon", ["diffusion", "distill", "ema"])
def test_each_reconstruction_term_trains_a_one_step_editing_model(work, data, edit_teacher, recon):
    out = work / f"edit-{recon}"
    summary = run(distiller(recon=recon), edit_teacher, data, out, config(), progress=False)
    losses = summary["final_losses"]
    assert set(losses) == {"loss", "recon", "g_adv", "d_loss"} and all(v == v for v in losses.values())
    manifest = json.loads((out / "movie.json").read_text())
    assert manifest["recipe"]["denoiser"] == "mobile-pix2pix-mmg" and manifest["recipe"]["steps"] == 1
    assert manifest["training"]["options"]["recon"] == recon
    student = load(out)
    den = student.denoiser
    assert student.steps == 1 and den.guidance == "embedded"
    assert type(den.make_scheduler()).__name__ == "LCMScheduler"
    assert "guidance_features" in den.networks()["unet"].inputs  # MoViE's guidance inputs kept
    # training moved the one-step model: its output differs from the teacher's one-step output
    assert not torch.allclose(one_step(out), one_step(edit_teacher), atol=1e-6)
    # and s_I, s_T still steer it
    assert not torch.allclose(one_step(out, s_I=1.0, s_T=3.0), one_step(out, s_I=2.5, s_T=12.0), atol=1e-6)


def test_lora_trains_only_adapters_and_exports_merged_weights(work, data, t2i_teacher):
    """Text-to-image teacher (2-pass CFG, MobileDiffusion UNet); LoRA rank 2: the base weights stay the teacher's
    bit for bit while training, the adapters move, and the export is a plain UNet with the adapters folded in."""
    d = distiller(lora=2)
    out = work / "t2i-lora"
    run(d, t2i_teacher, data, out, config(), progress=False)
    teacher_unet = load(t2i_teacher).denoiser.unet.state_dict()
    trained = d.student.unet.state_dict()
    lora = [k for k in trained if "lora_" in k]
    assert lora and any(trained[k].abs().sum() > 0 for k in lora if "lora_B" in k)
    for key, value in trained.items():
        if "lora_" not in key:
            assert torch.equal(value, teacher_unet[key.replace(".base_layer", "")]), key
    exported = load(out).denoiser
    assert load(out).steps == 1 and exported.describe()["task"] == "text-to-image"
    merged = exported.unet.state_dict()
    assert merged.keys() == teacher_unet.keys()
    assert any(not torch.equal(merged[k], teacher_unet[k]) for k in merged)
    assert not torch.allclose(one_step(out), one_step(t2i_teacher), atol=1e-6)


def test_t2i_from_data_is_the_conditional_model_from_pure_noise(work, data, t2i_teacher):
    """Text-to-image teacher (2-pass CFG), real x0 = the data: one guided output can not match guidance-free data at
    every s_T (its unconditional pass never sees the prompt), so the generator trains its prompt's pass alone and the
    exported recipe samples it at s_T = 1, not at the teacher's 7.5; its input at t = 999 is pure noise, as the
    one-step sampler's is, not the schedule's alpha_999 x0 + sigma_999 eps from which it could read x0's colours.
    With scales=sampled the export's s_T is the teacher's clamped into the range trained at."""
    from movie_plugins.distillers._ufogen import guided_x0

    d = distiller(real="data")
    out = work / "t2i-data"
    run(d, t2i_teacher, data, out, config(), progress=False)
    assert d.conditional
    assert json.loads((out / "movie.json").read_text())["recipe"]["text_guidance"] == 1.0
    assert load(out).recipe.text_guidance == 1.0 and load(out).steps == 1
    # the conditional output is the guided one at s_T = 1 (one pass instead of two)
    den, k = d.student, d.options.timesteps
    x0 = torch.randn(2, den.latent_channels, RES // 8, RES // 8)
    emb = den.encode_prompt(["a red circle", "a blue square"])
    ones = torch.ones(2)
    alpha, sigma = (c.expand(2, 1, 1, 1) for c in (d.acp[999].sqrt(), (1 - d.acp[999]).sqrt()))
    with torch.no_grad():
        a = guided_x0(den, x0, d.grid[k], x0, emb, ones, ones, d.null_emb, alpha, sigma, conditional=True)
        b = guided_x0(den, x0, d.grid[k], x0, emb, ones, ones, d.null_emb, alpha, sigma)
    assert torch.allclose(a, b, atol=1e-5)

    def top(x: torch.Tensor, k: int) -> torch.Tensor:
        torch.manual_seed(0)
        return d.generator_input(x, k)

    assert torch.equal(top(x0, k), top(x0 + 5.0, k))  # nothing of x0 at t = 999
    assert not torch.equal(top(x0, k - 1), top(x0 + 5.0, k - 1))  # below it the forward process
    d.options = d.options_class(terminal="schedule")
    assert not torch.equal(top(x0, k), top(x0 + 5.0, k))
    # scales=sampled: the export samples at the teacher's s_T (7.5) clamped into the range trained at
    d.conditional = False
    assert d.sampling_scales() == (1.5, 7.5)
    d.options = d.options_class(scales="sampled", text_guidance_min=2.0, text_guidance_max=4.0)
    assert d.sampling_scales() == (1.5, 4.0)


def test_pairs_give_the_generator_the_noise_the_teacher_sampled_from(work, data, t2i_teacher):
    """real=pairs: per training example a noise fixed by its index and the teacher's sample from it, computed once;
    the conditional generator at t = 999 gets that noise, so its target is a function of its input."""
    d = distiller(real="pairs", teacher_steps=2, timesteps=1, text_guidance_min=7.5, text_guidance_max=7.5)
    out = work / "t2i-pairs"
    run(d, t2i_teacher, data, out, config(1), progress=False)
    assert d.conditional and d.pair_cache and load(out).recipe.text_guidance == 1.0
    index = sorted(d.pair_cache)[:2]
    before = {i: d.pair_cache[i] for i in index}
    d.pair_cache = {}
    den = d.teacher.denoiser
    src = torch.zeros(2, den.latent_channels, RES // 8, RES // 8)
    emb = den.encode_prompt(["a red circle", "a blue square"])
    noise, x0 = d.pairs(index, src, emb)  # recomputed: the same noise for the same index
    assert all(torch.equal(noise[j], before[i][0]) for j, i in enumerate(index))
    assert not torch.equal(noise[0], noise[1])
    with torch.no_grad():
        again = den.sample(src, emb, steps=2, s_T=torch.full((2, 1, 1, 1), 7.5), null_emb=d.null_emb, latents=noise)
    assert torch.allclose(x0, again, atol=1e-5)  # the teacher's sample from exactly that noise


def test_noise_pairs_sample_the_teacher_from_the_generators_own_noise(work, data, edit_teacher, t2i_teacher,
                                                                     monkeypatch):
    """real=noise-pairs on a guidance-embedded teacher: at t = 999 the teacher samples from the very noise the
    generator gets as x_t, at the step's sampled scales, fresh each step (not cached); where x_t is not pure noise
    (terminal=schedule) and with real=teacher the teacher's sample starts from noise of its own."""
    import movie_plugins.distillers._ufogen as ufogen

    seen: list[tuple[str, torch.Tensor | None, torch.Tensor]] = []
    sample, guided = ufogen.UFOGenDistiller.teacher_sample, ufogen.guided_x0

    def teacher_sample(self, src, emb, s_i, s_t, latents=None):
        seen.append(("teacher", None if latents is None else latents.clone(), s_i.clone()))
        return sample(self, src, emb, s_i, s_t, latents=latents)

    def guided_x0(den, x_t, t, src, emb, s_i, s_t, *args, **kw):
        if den is not None and any(p.requires_grad for p in den.unet.parameters()):  # the generator's call
            seen.append(("generator", x_t.clone(), s_i.clone()))
        return guided(den, x_t, t, src, emb, s_i, s_t, *args, **kw)

    monkeypatch.setattr(ufogen.UFOGenDistiller, "teacher_sample", teacher_sample)
    monkeypatch.setattr(ufogen, "guided_x0", guided_x0)
    for real, terminal in (("noise-pairs", "noise"), ("teacher", "noise"), ("noise-pairs", "schedule")):
        seen.clear()
        d = distiller(real=real, timesteps=1, teacher_steps=2, terminal=terminal)
        run(d, edit_teacher, data, work / f"np-{real}-{terminal}", config(3), progress=False)
        assert not d.conditional and not d.pair_cache
        pairs = list(zip(seen[::2], seen[1::2]))
        assert len(pairs) == 3 and all(a[0] == "teacher" and b[0] == "generator" for a, b in pairs)
        for (_, start, s_teacher), (_, x_t, s_gen) in pairs:
            assert torch.equal(s_teacher, s_gen)  # the teacher's sample at the generator's scales
            paired = start is not None and torch.equal(start, x_t)
            assert paired == (real == "noise-pairs" and terminal == "noise"), (real, terminal)
        if real == "noise-pairs" and terminal == "noise":
            assert not torch.equal(pairs[0][1][1], pairs[1][1][1])  # fresh noise each step
    # a 2-pass CFG teacher: the generator is its conditional pass, as with real=pairs (the teacher samples guided)
    seen.clear()
    d = distiller(real="noise-pairs", timesteps=1, teacher_steps=2)
    run(d, t2i_teacher, data, work / "np-t2i", config(1), progress=False)
    assert d.conditional and load(work / "np-t2i").recipe.text_guidance == 1.0
    assert seen[1][0] == "generator" and torch.equal(seen[0][1], seen[1][1])


def test_teacher_sampler_model_draws_the_real_x0(capsys, work, data, edit_teacher, t2i_teacher, monkeypatch):
    """teacher_sampler_model: the real x0 of real=teacher comes from that folder's denoiser (another UNet, the same
    text tower), while the generator still starts as the --teacher; a sampler of another kind or text tower is
    refused in one line before anything is written, and so is a sampler for a run whose real x0 is the data."""
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import preset

    pipe = build(compose(preset("mmg").replace(size="nano", seed=0)))  # the edit teacher's text tower (same seed)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in pipe.denoiser.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pipe.save_pretrained(work / "sampler")
    callers: list[object] = []
    denoiser_class = type(load(edit_teacher).denoiser)
    original = denoiser_class.sample

    def sample(self, *args, **kw):
        if kw.get("steps") == 2:  # the real x0's sampler runs teacher_steps = 2
            callers.append(self)
        return original(self, *args, **kw)

    monkeypatch.setattr(denoiser_class, "sample", sample)
    for sampler in (None, work / "sampler"):
        callers.clear()
        options = {"teacher_sampler_model": str(sampler)} if sampler else {}
        d = distiller(real="teacher", timesteps=1, teacher_steps=2, **options)
        run(d, edit_teacher, data, work / f"sampled-{bool(sampler)}", config(2), progress=False)
        assert len(callers) == 2 and all(c is d.sampler for c in callers)
        assert (d.sampler is d.teacher.denoiser) == (sampler is None)
        if sampler:  # another UNet samples; the generator started from the teacher's
            a, b = d.sampler.unet.state_dict(), d.teacher.denoiser.unet.state_dict()
            assert any(not torch.equal(a[k], b[k]) for k in a)
    other = build(compose(preset("mmg").replace(size="nano", seed=1)))  # another text tower
    other.save_pretrained(work / "other-text")
    capsys.readouterr()  # the saves' progress bars
    for folder, what, real in ((t2i_teacher, "text-to-image", "teacher"),
                               (work / "other-text", "text tower", "teacher"),
                               (work / "sampler", "is the data", "data")):
        code, _, err = run_cli(capsys, "distill", "ufogen", "--teacher", str(edit_teacher), "--data", str(data),
                               "--out", str(work / "never-sampled"), "-O", f"teacher_sampler_model={folder}",
                               "-O", f"real={real}", "--steps", "1", "--no-progress")
        # (transformers' loading bar: imported by the test session before the CLI could turn it off)
        lines = [line for line in err.strip().splitlines() if line.strip() and "it/s]" not in line]
        assert code == 2 and what in err and len(lines) == 1 and "Traceback" not in err, err
        assert not (work / "never-sampled").exists()


def test_md_vae_editing_model_with_ema_and_lora(work, data):
    """The MobileDiffusion editing stage in md-vae's 8-channel latent space, recon=ema with LoRA: runs and exports."""
    from movie_core.recipe import preset

    teacher = _save(preset("movie").replace(size="nano", seed=0, denoiser="mobile-diffusion-pix2pix-1step",
                                            vae="md-vae"), work / "md8")
    out = work / "md8-ufogen"
    run(distiller(recon="ema", lora=2, real="data"), teacher, data, out, config(), progress=False)
    pipe = load(out)
    assert pipe.denoiser.latent_channels == 8 and pipe.steps == 1
    assert one_step(out).shape == (1, 8, RES // 8, RES // 8)


def test_resumed_run_ends_where_an_uninterrupted_run_does(work, data, edit_teacher):
    """recon=ema: the EMA generator is part of the checkpoint, so a run stopped at step 2 and resumed to 4 ends with
    the losses and weights of a 4-step run."""
    whole, split = work / "whole", work / "split"
    run(distiller(recon="ema"), edit_teacher, data, whole, config(4), progress=False)
    run(distiller(recon="ema"), edit_teacher, data, split, config(2), progress=False)
    summary = run(distiller(recon="ema"), edit_teacher, data, split, config(4), resume=True, overwrite=True,
                  progress=False)
    assert summary["resumed_from"] == 2
    assert [r["loss"] for r in read_log(split)] == [r["loss"] for r in read_log(whole)]
    a, b = load(whole).denoiser.unet.state_dict(), load(split).denoiser.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_option_errors_are_one_line(capsys, work, data, edit_teacher):
    for opt, what in (("recon=gan", "recon"), ("lora=0", "lora"), ("bogus=1", "bogus"), ("real=sky", "real"),
                      ("scales=cfg", "scales"), ("terminal=zero", "terminal")):
        code, _, err = run_cli(capsys, "distill", "ufogen", "--teacher", str(edit_teacher), "--data", str(data),
                               "--out", str(work / "never"), "-O", opt, "--steps", "1", "--no-progress")
        assert code == 2 and what in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert not (work / "never").exists()
    with pytest.raises(UsageError, match="ufogen"):
        d = distiller()
        d.options = d.options_class()

        class Foreign:
            denoiser = object()
        d.make_student(Foreign())
