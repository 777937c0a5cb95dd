"""MobileDiffusion (issue 22, part 1): its UNet, Table 1 in the `mobilediffusion` FLOPs convention, the
text-to-image denoisers (`stable-diffusion`, `mobile-diffusion`) and `movie generate`.

Full sizes are built on the meta device only; everything that runs uses tiny or nano weights."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from movie_core.components import BuildContext
from movie_core.flops_conventions import measure, parameters
from movie_plugins.denoisers import MobileDiffusionConfig, _t2i
from movie_plugins.denoisers import _mobile_diffusion as md
from tests.cli_helpers import run_cli


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _count_layers(unet: md.MobileDiffusionUNet) -> tuple[int, int, int]:
    """(conv blocks, SA layers, CA layers)."""
    convs = sum(isinstance(m, (md.FullResBlock, md.SeparableBlock)) for m in unet.modules())
    layers = [m for m in unet.modules() if isinstance(m, md.TransformerLayer)]
    return convs, sum(m.sa is not None for m in layers), len(layers)


def test_full_unet_matches_table_1_and_6_on_meta():
    with torch.device("meta"):
        full = md.build_unet("mobile-diffusion", "full")
        lite = md.build_unet("mobile-diffusion-lite", "full")
    # Table 1: 11 conv blocks, 15 SA + 18 CA, 386M parameters (within 2%)
    assert _count_layers(full) == (11, 15, 18)
    assert abs(parameters(full) / 386e6 - 1) < 0.02, parameters(full)
    # Table 6: lite drops one SA + CA per Up-3 transformer and narrows the innermost level to 896
    assert _count_layers(lite) == (11, 12, 15)
    assert lite.config.channels == (320, 640, 896)
    assert parameters(lite) < parameters(full)
    # the paper's operators: shared K/V in self-attention only, gated FF with expansion 3 and swish
    sa = full.self_attention_layers()[0][1]
    assert sa.to_v is None and sa.shared_kv
    ca = next(m for m in full.modules() if isinstance(m, md.TransformerLayer)).ca
    assert ca.to_v is not None
    ff = next(m for m in full.modules() if isinstance(m, md.GatedFeedForward))
    assert ff.proj_in.out_features == 2 * 3 * ff.proj_out.out_features
    assert full.config.ff_activation == "swish"
    # no 3x3 full convolution at the separable (innermost) level
    for block in full.down_blocks[2]:
        assert isinstance(block, md.SeparableBlock) and block.depthwise.groups == block.depthwise.in_channels


def test_md_gflops_in_the_mobilediffusion_convention():
    with torch.device("meta"):
        unet = md.build_unet("mobile-diffusion", "full")
        x, t, c = torch.empty(1, 4, 64, 64), torch.tensor([999]), torch.empty(1, 77, 768)
        with torch.no_grad():
            parts = measure(lambda: unet(x, t, c))
    gmacs = (parts["layers"] + parts["attention"]) / 1e9
    assert parts["attention"] > 0  # SDPA is counted
    assert abs(gmacs / 182 - 1) < 0.05, gmacs


def test_sd15_row_of_table_1():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**_t2i.sd_unet_config("full"))
        x, t, c = torch.empty(1, 4, 64, 64), torch.tensor([999]), torch.empty(1, 77, 768)
        with torch.no_grad():
            parts = measure(lambda: unet(x, t, encoder_hidden_states=c))
    assert abs(parameters(unet) / 862e6 - 1) < 0.01
    assert abs(parts["layers"] / 338.6e9 - 1) < 0.001  # the reference: MACs without attention matmuls
    assert abs((parts["layers"] + parts["attention"]) / 392e9 - 1) < 0.03


def test_nano_forward_time_features_and_relu_attention():
    torch.manual_seed(0)
    unet = md.build_unet("mobile-diffusion", "nano").eval()
    x, t, c = torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), torch.randn(2, 7, 64)
    with torch.no_grad():
        out = unet(x, t, c)
        same = unet(x, unet.time_proj(t), c, time_features=True)
        unet.set_attention("relu")
        relu = unet(x, t, c)
    assert out.shape == x.shape and torch.equal(out, same)
    assert torch.isfinite(relu).all() and not torch.allclose(out, relu)
    assert unet.config.attention == "relu"


def test_md_denoiser_option_and_save_load_roundtrip(tmp_path):
    ctx = BuildContext(size="nano")
    den = _t2i.build("mobile-diffusion", ctx, MobileDiffusionConfig(attention="relu"))
    assert all(m.relu for m in den.unet.modules() if isinstance(m, md.Attention))
    assert den.anchor_layers() and den.guidance == "cfg2"
    den.save_pretrained(tmp_path / "m")
    back = _t2i.build("mobile-diffusion", BuildContext(size="nano", weights=tmp_path / "m"), None)
    for (k, a), (_, b) in zip(den.unet.state_dict().items(), back.unet.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(Exception, match="needs a UNet2DConditionModel"):
        _t2i.build("stable-diffusion", BuildContext(size="nano", weights=tmp_path / "m"), None)


def _tiny_sd_pipeline(seed: int = 0):
    """diffusers' StableDiffusionPipeline of tiny random modules (4-channel UNet)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from movie_plugins.denoisers._tokenizer import byte_tokenizer
    from tests.diffusers_folders import make_scheduler

    torch.manual_seed(seed)
    tokenizer = byte_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        projection_dim=32, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=make_scheduler("ddim"), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_stable_diffusion_parity_with_diffusers():
    pipe = _tiny_sd_pipeline()
    den = _t2i.TextToImageDenoiser("stable-diffusion", pipe.unet, pipe.text_encoder, pipe.tokenizer, "ddim",
                                   folder_scheduler=pipe.scheduler).eval()
    prompt, steps, s_T = "a lighthouse at dusk", 4, 6.0
    ref = pipe(prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=s_T,
               generator=torch.Generator().manual_seed(3), output_type="latent").images
    ours = den.sample(torch.zeros(1, 4, 8, 8), den.encode_prompt([prompt]), steps=steps, s_T=s_T,
                      generator=torch.Generator().manual_seed(3))
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-4
    # guidance matters: a different scale moves the result (the comparison can fail)
    other = den.sample(torch.zeros(1, 4, 8, 8), den.encode_prompt([prompt]), steps=steps, s_T=1.0,
                       generator=torch.Generator().manual_seed(3))
    assert (other - ref).abs().max().item() > 1e-3


def test_generate_on_random_nano_weights(capsys, tmp_path):
    from PIL import Image

    out = tmp_path / "cat.png"
    code, stdout, err = run_cli(capsys, "generate", "-p", "a red cat", "-o", str(out), "--denoiser",
                                "mobile-diffusion", "--init", "random", "--size", "nano", "--vae", "taesd",
                                "--steps", "2", "--height", "64", "--width", "96", "--device", "cpu")
    assert code == 0, err
    assert Image.open(out).size == (96, 64)
    code, _, err = run_cli(capsys, "generate", "-p", "x", "-o", str(out), "--init", "random", "--size", "nano")
    assert code != 0 and "exists" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "generate", "-p", "x", "-o", str(tmp_path / "e.png"), "--init", "random",
                           "--size", "nano", "--denoiser", "instruct-pix2pix", "--vae", "taesd")
    assert code != 0 and "text-to-image" in err and not (tmp_path / "e.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png"]


def test_generate_on_a_diffusers_sd_folder(capsys, tmp_path):
    from PIL import Image

    folder = tmp_path / "sd"
    _tiny_sd_pipeline().save_pretrained(folder, safe_serialization=True)
    out = tmp_path / "img.png"
    # no --denoiser or --vae: the folder's UNet class and model_index.json's VAE decide (stable-diffusion, sd-vae)
    code, stdout, err = run_cli(capsys, "generate", "-p", "a boat", "-o", str(out), "--model", str(folder),
                                "--steps", "2", "--height", "64", "--width", "64", "--device", "cpu")
    assert code == 0, err
    assert Image.open(out).size == (64, 64) and "stable-diffusion" in stdout
    # the image is the diffusers pipeline's own, decoded by the folder's VAE
    pipe = _tiny_sd_pipeline()
    want = pipe("a boat", height=64, width=64, num_inference_steps=2, guidance_scale=7.5,
                generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    got = np.asarray(Image.open(out), dtype=np.float32) / 255
    assert np.abs(got - want).max() <= 1.5 / 255


def test_flops_json_params_and_convention(capsys):
    code, stdout, err = run_cli(capsys, "flops", "--denoiser", "mobile-diffusion", "--size", "full", "--vae", "taesd",
                                "--height", "512", "--width", "512", "--steps", "1",
                                "--convention", "mobilediffusion", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    unet = result["components"]["unet"]
    assert unet["calls"] == 2  # 2-pass guidance
    assert abs(unet["params"] / 386e6 - 1) < 0.02
    assert abs(unet["gflops_mobilediffusion_per_call"] / 182 - 1) < 0.05
    assert result["components"]["text_encoder"]["params"] > 100e6  # CLIP-L text tower
    code, _, err = run_cli(capsys, "flops", "--size", "nano", "--convention", "nope")
    assert code != 0 and "unknown FLOPs convention" in err


def _md_net_and_inputs(attention: str):
    torch.manual_seed(0)
    unet = md.build_unet("mobile-diffusion", "nano", attention=attention).eval()
    x, c = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 64)
    return _t2i.MDNet(unet), (x, unet.time_proj(torch.tensor([999, 999])), c)


@pytest.mark.skipif(not (has("onnx") and has("onnxruntime")), reason="onnx/onnxruntime not installed ('.[onnx]')")
def test_onnx_export_of_the_md_unet_matches_eager(attention="softmax"):  # relu: the hexagon test below
    from movie_plugins.backends.onnx import OnnxBackend

    net, inputs = _md_net_and_inputs(attention)
    with torch.no_grad():
        want = net(*inputs)
        got = torch.as_tensor(OnnxBackend().prepare(net, inputs, {"name": f"md-{attention}"})(*inputs))
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-4


@pytest.mark.slow  # the QNN HTP emulator compiles the graph (~40 s)
@pytest.mark.skipif(not (has("onnxruntime_qnn") and has("onnxscript")),
                    reason="onnxruntime-qnn is not installed (pip install '.[hexagon]')")
def test_hexagon_compiles_the_md_unet_without_cpu_fallback():
    from movie_plugins.backends.hexagon import HexagonBackend

    net, inputs = _md_net_and_inputs("relu")
    with torch.no_grad():
        want = net(*inputs)
        got = torch.as_tensor(HexagonBackend().prepare(net, inputs, {"name": "md-relu"})(*inputs)).float()
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-2  # fp16 on the HTP


def test_md_editing_backbone_one_step_recipe_below_movie(capsys):
    """Item 4: the MoViE 1-step stage on the MobileDiffusion UNet (8 input channels, guidance embeddings) with
    TAESD costs less per frame at 480x480 than MoViE's own 1-step recipe (paper convention, full size)."""
    costs = {}
    for args in (["--denoiser", "mobile-diffusion-pix2pix-1step", "--vae", "taesd"], ["--preset", "movie"]):
        code, out, err = run_cli(capsys, "flops", *args, "--size", "full", "--height", "480", "--width", "480",
                                 "--json")
        assert code == 0, err
        costs[args[1]] = json.loads(out)
    md_cost, movie_cost = costs["mobile-diffusion-pix2pix-1step"], costs["movie"]
    assert md_cost["components"]["unet"]["calls"] == 1
    assert md_cost["tflops_paper"] < movie_cost["tflops_paper"]


def test_md_editing_backbone_starts_guidance_free_and_edits(tmp_path):
    ctx = BuildContext(size="nano")
    from movie_plugins.denoisers import DenoiserConfig, _md_edit

    den = _md_edit.build("mobile-diffusion-pix2pix-1step", ctx, DenoiserConfig())
    assert den.unet.config.in_channels == 8 and den.guidance == "embedded" and den.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(0)
    x, img = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    emb = den.encode_prompt(["make it sepia"])
    with torch.no_grad():
        a = den.predict(x, 999, img, emb, 1.2, 7.5)
        b = den.predict(x, 999, img, emb, 2.0, 3.0)
        c = den.predict(x, 999, torch.zeros_like(img), emb, 1.2, 7.5)
    assert torch.equal(a, b)  # zero-initialised guidance embedding: the scales do not matter yet
    assert not torch.allclose(a, c)  # the source latents do
    assert den.describe()["task"] == "edit"


def test_convert_text_to_image_md_into_the_editing_stages(capsys, tmp_path):
    """`movie convert` carries a text-to-image MobileDiffusion folder into the editing stages: with the source
    latents zeroed out and the guidance embedding at its zero init, the edit model is its text-to-image self."""
    t2i = _t2i.build("mobile-diffusion", BuildContext(size="nano"), None)
    for p in t2i.unet.parameters():  # away from init so carried weights are recognisable
        p.data.add_(torch.randn_like(p) * 0.02)
    t2i.save_pretrained(tmp_path / "t2i")
    emb = t2i.encode_prompt(["a boat"])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = t2i.unet(x, torch.tensor([500]), emb)
    for target in ("mobile-diffusion-pix2pix", "mobile-diffusion-pix2pix-1step"):
        out = tmp_path / target
        code, stdout, err = run_cli(capsys, "convert", str(tmp_path / "t2i"), "--to", target, "--out", str(out))
        assert code == 0, err
        den = _md_edit_build(target, out)
        assert den.unet.config.in_channels == 8
        with torch.no_grad():
            got = den.unet_forward(x, torch.tensor([500]), torch.randn(1, 4, 8, 8) * 0, emb, 1.5, 7.5)
        assert torch.allclose(got, want, atol=1e-5)
        assert json.loads((out / "movie.json").read_text())["stage"] == target
    code, _, err = run_cli(capsys, "convert", str(tmp_path / "t2i"), "--to", "mobile-pix2pix", "--out",
                           str(tmp_path / "bad"))
    assert code != 0 and "Traceback" not in err and not (tmp_path / "bad").exists()


def _md_edit_build(target, folder):
    from movie_plugins.denoisers import _md_edit

    return _md_edit.build(target, BuildContext(size="nano", weights=folder), None)


def test_img2img_strength_parity_with_diffusers():
    """-O denoiser.strength=S (SDEdit) follows diffusers' StableDiffusionImg2ImgPipeline on the same weights."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = _tiny_sd_pipeline()
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    den = _t2i.TextToImageDenoiser("stable-diffusion", pipe.unet, pipe.text_encoder, pipe.tokenizer, "ddim",
                                   folder_scheduler=pipe.scheduler).eval()
    den.strength = 0.5
    source = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    prompt, steps, s_T = "a watercolor harbour", 6, 6.0
    ref = img2img(prompt, image=source, strength=0.5, num_inference_steps=steps, guidance_scale=s_T,
                  generator=torch.Generator().manual_seed(3), output_type="latent").images
    ours = den.sample(source, den.encode_prompt([prompt]), steps=steps, s_T=s_T,
                      generator=torch.Generator().manual_seed(3))
    assert (ours - ref).abs().max().item() <= 1e-4
    den.strength = 1.0  # the whole schedule: the source hardly matters any more
    far = den.sample(source, den.encode_prompt([prompt]), steps=steps, s_T=s_T,
                     generator=torch.Generator().manual_seed(3))
    assert (far - source).abs().mean() > (ours - source).abs().mean()


def test_edit_with_a_text_to_image_denoiser_at_strength_keeps_the_video(capsys, tmp_path):
    """img2img video stylization: `movie edit --strength 0.5` with a text-to-image denoiser keeps frame
    count, fps, size and audio (random nano weights)."""
    from movie_core.video import make_test_video, probe

    src = make_test_video(tmp_path / "in.mp4", seconds=1, fps=8, width=64, height=48, audio=True)
    out = tmp_path / "out.mp4"
    code, _, err = run_cli(capsys, "edit", str(src), "-p", "a watercolor painting", "-o", str(out), "--denoiser",
                           "mobile-diffusion", "--init", "random", "--size", "nano", "--vae", "taesd", "--steps", "2",
                           "--strength", "0.5", "--no-progress")
    assert code == 0, err
    want, got = probe(src), probe(out)
    for key in ("frame_count", "fps", "width", "height", "audio_codec"):
        assert got[key] == want[key], key
    code, _, err = run_cli(capsys, "generate", "-p", "x", "-o", str(tmp_path / "g.png"), "--denoiser",
                           "mobile-diffusion", "--init", "random", "--size", "nano", "-O", "denoiser.strength=0.5")
    assert code != 0 and "strength is for `movie edit`" in err and not (tmp_path / "g.png").exists()


def test_edit_strength_refusals_are_one_line(capsys, tmp_path):
    """--strength on an instruction-editing denoiser, a text-to-image denoiser without it (it would ignore the video),
    and --strength beside -O denoiser.strength: one line each, nothing written."""
    from PIL import Image

    src = tmp_path / "in.png"
    Image.new("RGB", (32, 24), (120, 60, 30)).save(src)
    out = tmp_path / "out.png"
    cases = [
        (["--denoiser", "mobile-pix2pix-1step", "--strength", "0.5"], "edits by instruction and has no strength"),
        (["--denoiser", "stable-diffusion", "--vae", "taesd"], "without --strength it would ignore the video"),
        (["--denoiser", "stable-diffusion", "--vae", "taesd", "--strength", "0.5", "-O", "denoiser.strength=0.4"],
         "are the same setting"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(capsys, "edit", str(src), "-p", "a red square", "-o", str(out), "--init", "random",
                               "--size", "nano", "--no-progress", *extra)
        lines = [line for line in err.splitlines() if line.startswith("movie: error")]
        assert code != 0 and len(lines) == 1 and message in lines[0], (extra, err)
        assert "Traceback" not in err and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def _script(name: str):
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attention_uniformity_finds_each_self_attention_layer_and_sees_sharpening():
    """scripts/attention_uniformity.py (issue 22's anchor explanation): uniform rows score 1, one-hot rows 0; every
    self-attention layer of both UNet families is measured; larger query weights sharpen the attention it reports."""
    au = _script("attention_uniformity")
    assert au.rows_of(torch.full((2, 8), 1 / 8)) == pytest.approx((1.0, 1.0))
    assert au.rows_of(torch.eye(8)) == pytest.approx((0.0, 8.0), abs=1e-6)
    assert au.rows_of(torch.ones(3, 1)) == (1.0, 1.0)
    for name, count in (("stable-diffusion", 10), ("mobile-diffusion", 5)):
        den = _t2i.build(name, BuildContext(size="nano", seed=0), None)
        layers = au.measure(den, "a red square", 128, 500, 0)
        assert len(layers) == count == len(den.anchor_layers())
        assert all(0 < x["entropy"] <= 1 and x["peak"] >= 1 for x in layers)
        with torch.no_grad():
            for m in den.unet.modules():
                if hasattr(m, "to_q") and isinstance(m.to_q, torch.nn.Linear):
                    m.to_q.weight.mul_(30)
        sharp = au.measure(den, "a red square", 128, 500, 0)
        assert np.mean([x["entropy"] for x in sharp]) < np.mean([x["entropy"] for x in layers]) - 0.1


def test_img2img_anchor_summary_means_and_counts_over_seeds():
    summary = _script("img2img_anchor").summary
    rows = [{"denoiser": "sd", "strength": 0.5, "seed": seed, "anchor": anchor, "frame_change": value,
             "edit_change": 2 * value}
            for seed, (anchored, none) in enumerate([(1.0, 2.0), (3.0, 2.0), (1.0, 1.5)])
            for anchor, value in (("middle", anchored), ("none", none))]
    (line,) = summary(rows)
    assert line["seeds"] == 3
    assert line["frame_change"] == {"anchored": pytest.approx(5 / 3, abs=1e-3),
                                    "none": pytest.approx(5.5 / 3, abs=1e-3),
                                    "relative": pytest.approx(5 / 5.5 - 1, abs=1e-4), "lowered": 2}
    assert line["edit_change"]["lowered"] == 2 and line["edit_change"]["anchored"] == pytest.approx(10 / 3, abs=1e-3)
