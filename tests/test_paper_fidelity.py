"""The distillers' defaults equal the paper values listed in docs/paper_fidelity.md (issue 28)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import attrs
import pytest
import torch

from movie_core import plugins

DOC = Path(__file__).resolve().parent.parent / "docs" / "paper_fidelity.md"
LOOP_SETTINGS = {"lr", "warmup_steps"}  # the training loop's, defaulted by the distiller class's `defaults`


def paper_rows() -> list[tuple[str, str, str]]:
    """(distiller, setting, paper value) for each row of the 'Paper values' table."""
    text = DOC.read_text()
    section = text.split("## Paper values", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"[a-z][a-z0-9-]*", cells[0]) and cells[0] != "distiller":
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def test_the_table_lists_every_builtin_distiller():
    listed = {d for d, _, _ in paper_rows()}
    assert {"mmg", "vpred", "adversarial", "pix2pix-finetune"} <= listed


def _default(distiller: str, setting: str):
    spec = plugins.get_registry().get("distiller", distiller)
    if setting in LOOP_SETTINGS:
        cls = spec.load_factory()
        assert setting in cls.defaults, f"{distiller} has no default {setting} (the loop's would apply)"
        return cls.defaults[setting]
    fields = {f.name: f for f in attrs.fields(spec.config)}
    assert setting in fields, f"{distiller} has no option {setting}"
    return fields[setting].default


@pytest.mark.parametrize(("distiller", "setting", "paper"), paper_rows(), ids=lambda v: str(v))
def test_default_equals_the_paper(distiller, setting, paper):
    ours = _default(distiller, setting)
    if isinstance(ours, str) or ours is None:
        assert str(ours) == paper
    else:
        assert float(ours) == pytest.approx(float(paper), rel=1e-12), f"{distiller}.{setting}: {ours} != {paper}"


# --- Sec. 3.3: per-ResNet guidance projections ('resnet') beside the shared time-embedding variant ('time') ------


def _stage2_unet():
    from diffusers import UNet2DConditionModel

    from movie_plugins.denoisers._pix2pix import STAGES, unet_config

    torch.manual_seed(0)
    return UNet2DConditionModel(**unet_config("nano", STAGES["mobile-pix2pix"]) | {"sample_size": 8}).eval()


def _unet_pass(unet, s_i, s_t, seed=1):
    from movie_plugins.denoisers._pix2pix import STAGES, Pix2PixDenoiser

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 8, 8, generator=g)
    emb = torch.randn(2, 77, 64, generator=g)
    den = Pix2PixDenoiser(STAGES["mobile-pix2pix-mmg"], unet, None, None, "ddim")
    labels = den.guidance_labels(s_i, s_t, 2, x) if unet.config.class_embed_type else None
    with torch.no_grad():
        return unet(x, torch.tensor([10, 700]), encoder_hidden_states=emb, class_labels=labels).sample


@pytest.mark.parametrize("inject", ["resnet", "time"])
def test_guidance_injection_converts_from_stage2_and_starts_equal(inject):
    """Both variants convert from a Stage-2 (cfg3) model with zeroed guidance layers: the converted model's output
    equals the Stage-2 model's conditional pass at any scale; once its guidance layers train, the scales matter."""
    from movie_plugins.denoisers._pix2pix import convert_unet, guidance_inject_of, guided_resnets, time_embed_dim

    src = _stage2_unet()
    new = convert_unet(src, "mobile-pix2pix-mmg", inject).eval()
    assert guidance_inject_of(new.config) == inject
    base = _unet_pass(src, 1.0, 2.0)
    for s_i, s_t in ((1.0, 2.0), (3.0, 14.0)):
        torch.testing.assert_close(_unet_pass(new, s_i, s_t), base, rtol=0, atol=1e-5)
    resnets = guided_resnets(new)
    t = time_embed_dim(new.config)
    if inject == "resnet":
        # every ResNet (down, mid, up) has its own guidance columns, zero-initialised; no shared projection
        assert len(resnets) == len(guided_resnets(src)) >= 7
        assert all(r.time_emb_proj.in_features == 2 * t for r in resnets)
        assert all(torch.count_nonzero(r.time_emb_proj.weight[:, t:]) == 0 for r in resnets)
        assert not list(new.class_embedding.parameters())
        with torch.no_grad():
            for r in resnets:
                r.time_emb_proj.weight[:, t:].normal_(std=0.5)
    else:
        assert all(r.time_emb_proj.in_features == t for r in resnets)
        with torch.no_grad():
            new.class_embedding.linear_2.weight.normal_(std=0.5)
    assert (_unet_pass(new, 3.0, 14.0) - _unet_pass(new, 1.0, 2.0)).abs().max() > 1e-4


def test_resnet_injection_saves_loads_counts_and_keeps_its_variant(tmp_path):
    """A random-init 'resnet' mmg pipeline: save_pretrained -> from folder gives the same weights and variant (and a
    'time' request on it is refused in one line); `movie flops` counts the per-ResNet linear layers."""
    from movie_core import flops
    from movie_core.composer import compose
    from movie_core.errors import MovieError
    from movie_core.loading import build
    from movie_core.recipe import preset
    from movie_plugins.denoisers._pix2pix import guidance_inject_of, guided_resnets

    def recipe(inject):
        return preset("mmg").replace(size="nano", component_options={"denoiser": {"guidance_inject": inject}})

    pipes = {inject: build(compose(recipe(inject))) for inject in ("resnet", "time")}
    assert guidance_inject_of(pipes["resnet"].denoiser.unet.config) == "resnet"
    assert guidance_inject_of(pipes["time"].denoiser.unet.config) == "time"
    assert pipes["resnet"].denoiser.describe()["guidance_inject"] == "resnet"
    pipes["resnet"].save_pretrained(tmp_path / "m")
    back = build(compose(preset("mmg").replace(size="nano")), model=tmp_path / "m")
    assert guidance_inject_of(back.denoiser.unet.config) == "resnet"
    a, b = pipes["resnet"].denoiser.unet.state_dict(), back.denoiser.unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(MovieError, match="'resnet' way"):
        build(compose(recipe("time")), model=tmp_path / "m")
    # per frame at 64x64: the 'resnet' time projections take twice the inputs, the 'time' MLP is gone
    counted = {k: flops.count(compose(recipe(k)), height=64, width=64)["tflops_paper"] for k in ("resnet", "time")}
    unet = pipes["resnet"].denoiser.unet
    t = unet.config.block_out_channels[0] * 4
    per_resnet = sum(2 * r.time_emb_proj.out_features * t for r in guided_resnets(unet))
    mlp = 2 * (2 * unet.config.block_out_channels[0] * t + t * t)  # the 'time' variant's linear_1 and linear_2
    steps = pipes["resnet"].denoiser.default_steps  # one UNet pass per step (embedded guidance)
    assert (counted["resnet"] - counted["time"]) * 1e12 == pytest.approx(steps * (per_resnet - mlp), rel=1e-6)


@pytest.mark.slow  # one whole-model onnx export (~45 s on a loaded 2-core machine)
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
                    reason="the onnx export needs onnxruntime and onnxscript (pip install '.[onnx]')")
def test_resnet_injection_exports_to_onnx(tmp_path):
    """The 1-step model with per-ResNet guidance layers (trained away from zero) through `movie export --backend
    onnx`: the host's guidance_features are the sinusoids at the time embedding's half width, and the exported
    graph edits as the eager model does, at two image-guidance scales that give different edits."""
    import numpy as np
    import onnxruntime as ort

    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import preset
    from movie_plugins.backends._export import export_recipe
    from movie_plugins.denoisers._pix2pix import guided_resnets, time_embed_dim

    pipe = build(compose(preset("movie").replace(size="nano", component_options={
        "denoiser": {"guidance_inject": "resnet"}})))
    den = pipe.denoiser
    t = time_embed_dim(den.unet.config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for r in guided_resnets(den.unet):
            r.time_emb_proj.weight[:, t:] = torch.randn(r.time_emb_proj.weight[:, t:].shape, generator=g) * 0.5
    pipe.save_pretrained(tmp_path / "m")
    recipe = preset("movie").replace(size="nano", backend="onnx", anchor="none")
    m = export_recipe(recipe, tmp_path / "m", tmp_path / "exp", height=32, width=32)
    folder = tmp_path / "exp"
    assert m["host"]["tensors"]["guidance_features"]["shape"] == [1, t]  # two sinusoids of t / 2
    host = {name: np.load(folder / f"{name}.npy") for name in ("initial_noise", "time_features", "guidance_features")}
    np.testing.assert_allclose(host["guidance_features"],
                               den.guidance_labels(recipe.image_guidance, recipe.text_guidance, 1,
                                                   torch.zeros(1)).numpy(), rtol=1e-6, atol=1e-6)
    session = ort.InferenceSession(str(folder / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    fused = den.fused_step(1)
    outs = []
    for s_i in (recipe.image_guidance, 3.0):  # the exported setting, and another fed the same way
        feeds = dict(host, guidance_features=den.guidance_labels(s_i, recipe.text_guidance, 1, torch.zeros(1)).numpy(),
                     image_latents=torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1)).numpy(),
                     text_emb=den.encode_prompt(["make it look like winter"]).numpy())
        got = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
        with fused.module.active(), torch.no_grad():
            want = fused.module(*(torch.from_numpy(feeds[n]) for n in fused.inputs)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        outs.append(got)
    assert np.abs(outs[0] - outs[1]).max() > 1e-3  # the guidance features reach the graph


# --- Appendix B: the adversarial stage's teacher; discriminator health in the training log --------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Random nano Stage-3 (mmg, epsilon) and v-prediction (1-step layout) model folders, and 8 procedural edits."""
    from movie_core.composer import compose
    from movie_core.data import writer
    from movie_core.loading import build
    from movie_core.recipe import preset

    root = tmp_path_factory.mktemp("adv")
    for name, p in (("stage3", "mmg"), ("vpred", "movie")):
        build(compose(preset(p).replace(size="nano"))).save_pretrained(root / name)
    writer.write_nano(root / "data", count=8, videos=0, size=16, seed=0, test_fraction=0.25)
    return root


def _adversarial(root, out, **options):
    from movie_core.plugins import get_registry
    from movie_core.training.loop import TrainConfig, read_log, run

    spec = get_registry().get("distiller", "adversarial")
    cfg = TrainConfig(steps=2, batch_size=2, lr=1e-4, resolution=16, log_every=1, checkpoint_every=100, seed=0)
    summary = run(spec.load_factory()(spec.make_config(**options)), root / "vpred", root / "data", out, cfg,
                  progress=False)
    return summary, read_log(out)


def test_adversarial_default_needs_the_stage3_model_and_says_so(tiny_models, tmp_path):
    from movie_core.errors import UsageError

    with pytest.raises(UsageError, match="teacher_sampler_model=DIR, or -O teacher_sampler=student-init") as e:
        _adversarial(tiny_models, tmp_path / "x")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.train").exists()  # nothing half-written
    with pytest.raises(UsageError, match="Stage-3 model is the guidance-distilled epsilon"):  # a v-pred 'stage 3'
        _adversarial(tiny_models, tmp_path / "y", teacher_sampler_model=str(tiny_models / "vpred"))
    with pytest.raises(UsageError, match="drop teacher_sampler_model"):
        _adversarial(tiny_models, tmp_path / "z", teacher_sampler="student-init",
                     teacher_sampler_model=str(tiny_models / "stage3"))


@pytest.mark.slow  # two steps of the whole stage: 5 teacher steps, R1's double backward, export (~40 s here)
@pytest.mark.parametrize("sampler", ["stage3"])
def test_adversarial_logs_discriminator_health(tiny_models, tmp_path, sampler):
    """Two tiny steps: every row of the training log (and the manifest's final losses) has D's accuracy on real and
    fake, its scores, and each loss term, as sane numbers that add up; the manifest records which teacher ran."""
    import json
    import math

    options = {"teacher_sampler": sampler}
    if sampler == "stage3":
        options["teacher_sampler_model"] = str(tiny_models / "stage3")
    summary, log = _adversarial(tiny_models, tmp_path / "out", **options)
    assert [row["step"] for row in log] == [1, 2]
    for row in log:
        for key in ("d_acc_real", "d_acc_fake", "g_adv_share"):
            assert 0 <= row[key] <= 1, (key, row)
        for key in ("d_real", "d_fake", "d_hinge", "r1", "d_r1_term", "g_adv", "g_adv_term", "g_mse_term", "mse"):
            assert math.isfinite(row[key]), (key, row)
        assert row["d_hinge"] >= 0 and row["r1"] >= 0 and row["mse"] >= 0
        assert row["g_adv_term"] == pytest.approx(0.1 * row["g_adv"], rel=1e-5)  # lambda_gen's default
        assert row["loss"] == pytest.approx(row["g_mse_term"] + row["g_adv_term"], rel=1e-5, abs=1e-7)
    manifest = json.loads((tmp_path / "out" / "movie.json").read_text())
    assert manifest["training"]["options"]["teacher_sampler"] == sampler
    assert set(manifest["training"]["final_losses"]) >= {"d_acc_real", "d_acc_fake", "g_adv_share"}


def test_adversarial_without_a_gan_term_skips_the_discriminator_and_trains_the_same_student(tiny_models, tmp_path,
                                                                                             monkeypatch):
    """lambda_gen 0: the discriminator is neither run nor trained, and the student comes out as it does when the
    discriminator is run and trained beside it (its term weighs nothing); the log has the MSE and no D health."""
    from safetensors.torch import load_file

    from movie_plugins.distillers._adversarial import AdversarialDistiller

    options = {"teacher_sampler": "student-init", "lambda_gen": 0.0}
    _, skipped = _adversarial(tiny_models, tmp_path / "skipped", **options)
    monkeypatch.setattr(AdversarialDistiller, "gan", property(lambda self: True))
    _, full = _adversarial(tiny_models, tmp_path / "full", **options)
    assert all("d_acc_real" not in row for row in skipped) and all("d_acc_real" in row for row in full)
    assert [row["mse"] for row in skipped] == pytest.approx([row["mse"] for row in full], rel=1e-6)
    unet = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "skipped" / unet), load_file(tmp_path / "full" / unet)
    start = load_file(tiny_models / "vpred" / unet)
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], start[k]) for k in a)  # the student trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("data_weight", [1.0, 0.5])
def test_adversarial_at_the_anchor_runs_the_teacher_once_or_not_at_all_for_the_same_targets(
        tiny_models, tmp_path, monkeypatch, data_weight):
    """Guidance ranges collapsed onto the anchor: the real samples x0 + w (z_edit - x0_ref) need one teacher run
    (x0_ref = x0), none at w = 1 (the ground truth). At each step of a training run they equal the two-run targets
    drawn from the same random state, and the random state after them is the same."""
    from movie_plugins.distillers import _adversarial as adv

    calls, checked = [], []
    real_teacher, real_samples = adv.teacher_samples, adv.AdversarialDistiller.real_samples
    monkeypatch.setattr(adv, "teacher_samples", lambda *a, **k: calls.append(1) or real_teacher(*a, **k))

    def both(self, src, tgt, emb_m, s_i, s_t):
        state, before = torch.get_rng_state(), len(calls)
        short = real_samples(self, src, tgt, emb_m, s_i, s_t)
        short_calls, after = len(calls) - before, torch.get_rng_state()
        torch.set_rng_state(state)
        with monkeypatch.context() as m:
            m.setattr(adv.AdversarialDistiller, "at_anchor", property(lambda self: False))
            full = real_samples(self, src, tgt, emb_m, s_i, s_t)
        assert torch.equal(after, torch.get_rng_state())
        assert short_calls == (0 if data_weight == 1 else 1) and len(calls) - before - short_calls == 2
        torch.testing.assert_close(short, full, rtol=0, atol=1e-6)
        assert not torch.equal(full, tgt) or data_weight == 1  # at w < 1 the teacher's sample counts
        checked.append(1)
        return short

    monkeypatch.setattr(adv.AdversarialDistiller, "real_samples", both)
    _adversarial(tiny_models, tmp_path / "x", teacher_sampler="student-init", lambda_gen=0.0,
                 data_weight=data_weight, image_guidance_min=1.5, image_guidance_max=1.5, text_guidance_min=7.5,
                 text_guidance_max=7.5)
    assert len(checked) == 2


def test_discriminator_health_is_the_share_on_the_right_side_of_zero():
    from movie_plugins.distillers._discriminator import discriminator_health

    h = discriminator_health(torch.tensor([1.0, -0.5, 2.0, 0.0]), torch.tensor([-1.0, -2.0, 0.5, 0.0]))
    assert h["d_acc_real"] == pytest.approx(2.5 / 4) and h["d_acc_fake"] == pytest.approx(2.5 / 4)
    assert h["d_real"] == pytest.approx(0.625) and h["d_fake"] == pytest.approx(-0.625)
    chance = discriminator_health(torch.zeros(8), torch.zeros(8))
    assert chance["d_acc_real"] == chance["d_acc_fake"] == 0.5


# --- Sec. 4's stage order: SD-1.5 text-to-image -> drop the top attention -> add the image channels ------------


def test_stage2_from_a_text_to_image_unet_has_the_paper_structure_and_edits():
    """convert_unet on the `stable-diffusion` text-to-image UNet (4 input channels): the Stage-2 model has 8 input
    channels with the 4 image-latent ones at zero (so it starts as the T2I model, the image ignored), no attention
    at the top level, and samples an edit as a Mobile-Pix2Pix denoiser."""
    from movie_core.components import BuildContext
    from movie_core.plugins import get_registry
    from movie_plugins.denoisers._pix2pix import STAGES, Pix2PixDenoiser, convert_unet

    spec = get_registry().get("denoiser", "stable-diffusion")
    t2i = spec.load_factory()(BuildContext(size="nano"), spec.make_config())
    new = convert_unet(t2i.unet, "mobile-pix2pix").eval()
    assert t2i.unet.config.in_channels == 4 and new.config.in_channels == 8
    torch.testing.assert_close(new.conv_in.weight[:, :4], t2i.unet.conv_in.weight, rtol=0, atol=0)
    assert torch.count_nonzero(new.conv_in.weight[:, 4:]) == 0
    assert new.config.down_block_types[0] == "DownBlock2D" and new.config.up_block_types[-1] == "UpBlock2D"
    assert not hasattr(new.down_blocks[0], "attentions") or not new.down_blocks[0].attentions
    assert hasattr(t2i.unet.down_blocks[0], "attentions") and t2i.unet.down_blocks[0].attentions
    g = torch.Generator().manual_seed(0)
    x, img, emb = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 64)
    t = torch.tensor([500])
    with torch.no_grad():  # the image channels start at zero; the rest is the T2I UNet without its top attention
        out = new(torch.cat([x, img], 1), t, encoder_hidden_states=emb).sample
        out_no_image = new(torch.cat([x, torch.zeros_like(img)], 1), t, encoder_hidden_states=emb).sample
    torch.testing.assert_close(out, out_no_image, rtol=0, atol=1e-6)
    den = Pix2PixDenoiser(STAGES["mobile-pix2pix"], new, t2i.text_encoder, t2i.tokenizer, "ddim")
    edited = den.sample(img, den.encode_prompt(["make it look like winter"]), steps=2,
                        generator=torch.Generator().manual_seed(0))
    assert edited.shape == img.shape and torch.isfinite(edited).all()


def test_stage1_drops_the_top_attention_of_a_text_to_image_folder_and_it_stays_text_to_image(tmp_path, capsys):
    """`movie convert --drop-top-attention` (Sec. 4 Stage 1, before its finetune): the `stable-diffusion` folder's UNet
    keeps its 4 input channels and every weight but the top level's attention, loads and samples as text-to-image,
    and converts on to Stage 2 (image channels added). Dropping twice, with --to, or from a MobileDiffusion UNet is
    one line and writes nothing."""
    from movie_core.components import BuildContext
    from movie_core.plugins import get_registry
    from movie_plugins.denoisers import _t2i
    from movie_plugins.denoisers._convert import convert_folder

    from cli_helpers import run_cli

    spec = get_registry().get("denoiser", "stable-diffusion")
    t2i = spec.load_factory()(BuildContext(size="nano"), spec.make_config())
    t2i.save_pretrained(tmp_path / "t2i")
    code, out, _ = run_cli(capsys, "convert", str(tmp_path / "t2i"), "--drop-top-attention", "--out",
                           str(tmp_path / "noattn"))
    assert code == 0 and "top attention dropped" in out
    dropped = _t2i.load("stable-diffusion", tmp_path / "noattn", "ddim")
    assert dropped.unet.config.in_channels == 4 and dropped.unet.config.down_block_types[0] == "DownBlock2D"
    assert dropped.unet.config.up_block_types[-1] == "UpBlock2D"
    assert not hasattr(dropped.unet.down_blocks[0], "attentions")
    before, after = t2i.unet.state_dict(), dropped.unet.state_dict()
    gone = set(before) - set(after)
    assert gone and all(".attentions." in k for k in gone) and set(after) <= set(before)
    assert all(torch.equal(after[k], before[k]) for k in after)
    emb = dropped.encode_prompt(["a red ball"])
    latents = dropped.sample(torch.zeros(1, 4, 8, 8), emb, steps=2, generator=torch.Generator().manual_seed(0))
    assert latents.shape[1] == 4 and torch.isfinite(latents).all()
    stage2 = convert_folder(tmp_path / "noattn", "mobile-pix2pix", tmp_path / "stage2")
    assert (stage2 / "unet" / "config.json").is_file()
    for args, says in (((str(tmp_path / "noattn"), "--drop-top-attention"), "no top-level attention"),
                       ((str(tmp_path / "t2i"), "--drop-top-attention", "--to", "mobile-pix2pix"), "drops the top")):
        code, _, err = run_cli(capsys, "convert", *args, "--out", str(tmp_path / "bad"))
        assert code != 0 and says in err and "Traceback" not in err and not (tmp_path / "bad").exists()
    md_spec = get_registry().get("denoiser", "mobile-diffusion")
    md_spec.load_factory()(BuildContext(size="nano"), md_spec.make_config()).save_pretrained(tmp_path / "md")
    code, _, err = run_cli(capsys, "convert", str(tmp_path / "md"), "--drop-top-attention", "--out",
                           str(tmp_path / "bad"))
    assert code != 0 and "UNet2DConditionModel" in err and not (tmp_path / "bad").exists()


def test_shipped_preset_is_what_the_shipped_family_ran_and_the_default_follows_the_paper():
    """The shipped chain.json budget (its keys filled with LEGACY) equals `--preset shipped`; the default budget
    takes the paper's teacher sampler and guidance injection; `--preset paper` is a valid budget."""
    import json

    from movie_plugins.nano.chain import LEGACY, PRESETS, ChainBudget, recorded_budget

    recorded = json.loads((DOC.parent.parent / "plugins" / "nano" / "chain.json").read_text())["budget"]
    # recorded whole when its 1-step stage was trained again: a key it lacks is one added since, which LEGACY fills
    assert set(attrs.asdict(ChainBudget())) - set(recorded) <= set(LEGACY)
    shipped = recorded_budget(recorded)
    assert shipped == attrs.asdict(ChainBudget(**PRESETS["shipped"]))
    # the keys it predates ran the LEGACY way, but for the stages trained after they existed
    assert {k for k in LEGACY if shipped[k] != LEGACY[k]} == {
        "taesd_lite_steps", "adversarial_data_source", "adversarial_timesteps", "adversarial_gan_weight",
        "ip2p_uniform_steps", "pix2pix_weighting", "mobile_weighting", "adversarial_guidance"}
    default = ChainBudget()
    assert (default.adversarial_teacher, default.guidance_inject) == ("stage3", "resnet")
    paper = ChainBudget(**PRESETS["paper"])
    assert (paper.adversarial_data_weight, paper.vpred_weighting, paper.mmg_lr) == (0.0, "uniform", 1e-5)
