"""Original single-file checkpoints and `movie convert` (issue 20, items 9 and 10).

LDM-layout files are written here from tiny diffusers / transformers models (tests/ldm_files.py); the full-size
key set of SD-1.5 / InstructPix2Pix is checked on the meta device against the configs that ship in the package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers_folders import tiny_pipeline  # noqa: E402
from ldm_files import ldm_state_dict, write_config_folder, write_ldm  # noqa: E402
from test_weights import empty_hf_cache  # noqa: E402,F401  (the fixture: an empty offline Hugging Face cache)

from movie_core import ldm  # noqa: E402
from movie_core.errors import MovieError  # noqa: E402
from movie_core.weights import read_manifest  # noqa: E402

from cli_helpers import run_cli  # noqa: E402

CLI = [sys.executable, "-c", "import sys; from movie_core.cli import main; main(sys.argv[1:])"]


def one_error(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("movie: error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(pipeline, LDM file of its UNet/VAE/CLIP, folder of its configs for MOVIE_LDM_CONFIG)."""
    root = tmp_path_factory.mktemp("ldm")
    pipe = tiny_pipeline("euler-ancestral", seed=3)
    return pipe, write_ldm(root / "tiny-ip2p.safetensors", pipe), write_config_folder(root / "configs", pipe)


def assert_same_tensors(folder: Path, pipe) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)):
        loaded = cls.from_pretrained(folder / name).state_dict()
        original = getattr(pipe, name).state_dict()
        assert set(loaded) == set(original), name
        for key, value in original.items():
            assert torch.equal(loaded[key], value), f"{name}: {key}"


# --- 9. LDM single files -----------------------------------------------------------------------------------------


def test_full_size_ldm_key_set_is_detected_and_mapped_on_meta():
    """Every tensor of an SD-1.5 / InstructPix2Pix checkpoint has its place in the shipped configs' models."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    shipped = ldm.SHIPPED
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(shipped / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(shipped / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(shipped / "text_encoder"))
    tensors = ldm_state_dict(unet, vae, text)
    # names every original SD-1.x file has (diffusers' own detection key among them)
    for key in ("model.diffusion_model.output_blocks.11.0.skip_connection.weight",
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.decoder.up.3.upsample.conv.weight",
                "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.bias"):
        assert key in tensors, key
    assert tuple(tensors["model.diffusion_model.input_blocks.0.0.weight"].shape) == (320, 8, 3, 3)
    assert ldm.is_ldm(tensors) and not ldm.is_ldm(unet.state_dict())

    models = ldm.build_models(Path("sd15.safetensors"), tensors)
    assert models["unet"].config.in_channels == 8 and models["unet"].config.cross_attention_dim == 768
    for name, original in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        got = models[name].state_dict()
        want = {k: tuple(v.shape) for k, v in original.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in got.items()} == want
        assert all(v.is_meta for v in got.values())

    missing = dict(tensors)
    del missing["model.diffusion_model.output_blocks.11.0.skip_connection.weight"]
    with pytest.raises(MovieError, match=r"sd15\.safetensors: .*UNet.*missing 1 tensors"):
        ldm.build_models(Path("sd15.safetensors"), missing)
    wrong = dict(tensors, **{"first_stage_model.quant_conv.weight": torch.empty(8, 8, 3, 3, device="meta")})
    with pytest.raises(MovieError, match=r"autoencoder does not match .*quant_conv.weight is \[8, 8, 3, 3\]"):
        ldm.build_models(Path("sd15.safetensors"), wrong)


def test_shipped_tokenizer_is_clips():
    """The shipped merges give CLIP ViT-L/14's vocabulary: the ids CLIP's own tokenizer gives a known prompt."""
    from transformers import CLIPTokenizer

    folder = ldm.SHIPPED / "tokenizer"
    assert (folder / "merges.txt.gz").stat().st_size < 300_000
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ldm.write_tokenizer(folder, Path(tmp) / "tokenizer")
        tok = CLIPTokenizer.from_pretrained(Path(tmp) / "tokenizer")
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_tiny_ldm_file_round_trips_through_convert(tiny, tmp_path, capsys, monkeypatch):
    """`movie convert FILE --out DIR` writes a diffusers folder with exactly the file's tensors, which then runs
    with no flags (model_index.json: InstructPix2Pix with the KL autoencoder)."""
    pipe, path, configs = tiny
    before = path.read_bytes()
    monkeypatch.setenv(ldm.CONFIG_ENV, str(configs))
    out = tmp_path / "converted"
    code, stdout, err = run_cli(capsys, "convert", str(path), "--out", str(out))
    assert code == 0, err
    assert str(out) in stdout
    assert_same_tensors(out, pipe)
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    assert (out / "scheduler" / "scheduler_config.json").is_file() and (out / "tokenizer").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]
    assert path.read_bytes() == before

    code, stdout, err = run_cli(capsys, "compose", "--model", str(out), "--json")
    assert code == 0, err
    shown = json.loads(stdout)
    assert shown["denoiser"]["name"] == "instruct-pix2pix"
    assert shown["encoder"]["name"] == shown["decoder"]["name"] == "sd-vae"


def test_model_file_edits_as_the_diffusers_folder_does(tiny, tmp_path, capsys, monkeypatch):
    """`--model FILE.safetensors` (LDM layout) gives the edit that the same weights saved by diffusers give."""
    import numpy as np
    from PIL import Image

    pipe, path, configs = tiny
    monkeypatch.setenv(ldm.CONFIG_ENV, str(configs))
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    frame = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(frame)
    images = []
    for model in (folder, path):
        out = tmp_path / f"out-{Path(model).stem}.png"
        code, _, err = run_cli(capsys, "edit", str(frame), "-p", "make it snow", "-o", str(out), "--model",
                               str(model), "--anchor", "none", "--steps", "2", "--seed", "1", "--no-progress")
        assert code == 0, err
        images.append(np.asarray(Image.open(out)).astype(int))
    assert images[0].shape == (32, 32, 3)
    assert np.abs(images[0] - images[1]).max() == 0


def test_model_file_unpacks_into_a_private_temp_folder_that_is_removed(tiny, tmp_path):
    _, path, configs = tiny
    temp = tmp_path / "temp"
    temp.mkdir()
    env = os.environ | {"TMPDIR": str(temp), ldm.CONFIG_ENV: str(configs)}
    proc = subprocess.run([*CLI, "compose", "--model", str(path), "--json"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["encoder"]["name"] == "sd-vae"
    assert list(temp.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["temp"]


def test_ldm_file_against_the_shipped_configs_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    """Without MOVIE_LDM_CONFIG a tiny file meets the full-size SD-1.5 configs: one line saying how to go on."""
    _, path, _ = tiny
    monkeypatch.delenv(ldm.CONFIG_ENV, raising=False)
    code, _, err = run_cli(capsys, "convert", str(path), "--out", str(tmp_path / "o"))
    one_error(code, err, str(path), "does not match", ldm.CONFIG_ENV)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".*"))


def test_ldm_ckpt_needs_the_pickle_opt_in(tiny, tmp_path, capsys, monkeypatch):
    pipe, _, configs = tiny
    monkeypatch.setenv(ldm.CONFIG_ENV, str(configs))
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": ldm_state_dict(pipe.unet, pipe.vae, pipe.text_encoder)}, ckpt)
    monkeypatch.delenv("MOVIE_ALLOW_PICKLE", raising=False)
    for args in (["convert", str(ckpt), "--out", str(tmp_path / "o")], ["compose", "--model", str(ckpt), "--json"]):
        code, _, err = run_cli(capsys, *args)
        one_error(code, err, str(ckpt), "MOVIE_ALLOW_PICKLE")
    assert not (tmp_path / "o").exists()
    monkeypatch.setenv("MOVIE_ALLOW_PICKLE", "1")
    code, _, err = run_cli(capsys, "convert", str(ckpt), "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert_same_tensors(tmp_path / "o", pipe)


# --- 10. movie convert: any level count, repo ids and cache snapshots, the folder's own autoencoder --------------


def _ip2p_folder(folder: Path, levels: int) -> Path:
    from diffusers import UNet2DConditionModel

    pipe = tiny_pipeline("ddim", seed=levels)
    torch.manual_seed(levels)
    widths = (16, 32, 32, 32)[:levels]
    pipe.unet = UNet2DConditionModel(
        block_out_channels=widths, layers_per_block=1, sample_size=8, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("target", ["mobile-pix2pix", "mobile-pix2pix-mmg"])
@pytest.mark.parametrize("levels", [2, 3])
def test_convert_any_level_count_and_run_without_vae_flag(levels, target, tmp_path, capsys):
    from safetensors import safe_open

    source = _ip2p_folder(tmp_path / "ip2p", levels)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "convert", str(source), "--to", target, "--out", str(out))
    assert code == 0, err
    manifest = read_manifest(out)
    assert manifest["autoencoder"] == "sd-vae"
    assert manifest["recipe"]["encoder"] == manifest["recipe"]["decoder"] == "sd-vae"
    config = json.loads((out / "unet" / "config.json").read_text())
    assert len(config["down_block_types"]) == levels and config["down_block_types"][0] == "DownBlock2D"
    assert config["up_block_types"][-1] == "UpBlock2D"

    def keys(folder: Path) -> set[str]:
        with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
            return set(f.keys())

    dropped = keys(source) - keys(out)
    assert dropped and all(k.startswith(("down_blocks.0.attentions.", f"up_blocks.{levels - 1}.attentions."))
                           for k in dropped)

    code, stdout, err = run_cli(capsys, "compose", "--model", str(out), "--json")  # no --vae
    assert code == 0, err
    shown = json.loads(stdout)
    assert shown["denoiser"]["name"] == target and shown["encoder"]["name"] == "sd-vae"


def _cache_snapshot(cache: Path, repo: str, folder: Path) -> Path:
    """`folder` laid out as huggingface_hub caches a repo: blobs, a snapshot of links to them, refs/main."""
    import hashlib

    base = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = base / "snapshots" / commit
    (base / "blobs").mkdir(parents=True)
    for item in sorted(folder.rglob("*")):
        if item.is_file():
            blob = base / "blobs" / hashlib.sha256(item.read_bytes()).hexdigest()
            blob.write_bytes(item.read_bytes())
            link = snap / item.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return snap


def test_convert_takes_repo_ids_and_cache_snapshots(empty_hf_cache, tmp_path, capsys):  # noqa: F811
    source = _ip2p_folder(tmp_path / "ip2p", 2)
    snap = _cache_snapshot(empty_hf_cache, "someone/tiny-ip2p", source)
    for i, given in enumerate(("someone/tiny-ip2p", str(snap))):
        out = tmp_path / f"out{i}"
        code, _, err = run_cli(capsys, "convert", given, "--to", "mobile-pix2pix", "--out", str(out))
        assert code == 0, err
        assert not any(p.is_symlink() for p in out.rglob("*"))  # the cache's links became files
        assert read_manifest(out)["recipe"]["encoder"] == "sd-vae"
    code, _, err = run_cli(capsys, "convert", "nobody/not-cached", "--out", str(tmp_path / "o"))
    one_error(code, err, "nobody/not-cached", "Hugging Face cache")
    assert not (tmp_path / "o").exists()
