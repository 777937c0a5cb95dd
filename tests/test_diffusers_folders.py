"""Model folders as diffusers writes them (issue 20 items 7, 8, 11): damaged files are one line naming the file,
fp16 variants load, and a folder's own scheduler, VAE scaling and pipeline class are read.

Every folder here is written by diffusers' own StableDiffusionInstructPix2PixPipeline.save_pretrained at tiny sizes
(tests/diffusers_folders.py), then damaged the way downloads and disks damage them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from diffusers_folders import write_ip2p  # noqa: E402

from cli_helpers import run_cli  # noqa: E402


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return write_ip2p(tmp_path_factory.mktemp("plain") / "ip2p")


@pytest.fixture(scope="module")
def fp16(tmp_path_factory) -> Path:
    return write_ip2p(tmp_path_factory.mktemp("fp16") / "ip2p", variant="fp16")


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _header(path: Path, change) -> None:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    raw = change(header, n)
    if isinstance(raw, bytes):  # a new length prefix only
        path.write_bytes(raw + data[8:])
        return
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data[8 + n:])


def _huge_tensor(header: dict, n: int) -> None:
    name = next(k for k in header if k != "__metadata__")
    header[name] = {"dtype": "F32", "shape": [2 ** 25, 2 ** 25], "data_offsets": [0, 4 * 2 ** 50]}  # 4 PB


def _wrong_name(folder: Path) -> None:
    (folder / "unet/diffusion_pytorch_model.safetensors").rename(folder / "unet/model.safetensors")
    (folder / "unet/diffusion_pytorch_model.bin").write_bytes(b"not really a pickle")


DAMAGE = {
    "truncated unet": (
        "unet/diffusion_pytorch_model.safetensors",
        lambda f: _truncate(f / "unet/diffusion_pytorch_model.safetensors"),
    ),
    "zero-byte unet": (
        "unet/diffusion_pytorch_model.safetensors",
        lambda f: (f / "unet/diffusion_pytorch_model.safetensors").write_bytes(b""),
    ),
    "truncated vae": (
        "vae/diffusion_pytorch_model.safetensors",
        lambda f: _truncate(f / "vae/diffusion_pytorch_model.safetensors"),
    ),
    "zero-byte vae": (
        "vae/diffusion_pytorch_model.safetensors",
        lambda f: (f / "vae/diffusion_pytorch_model.safetensors").write_bytes(b""),
    ),
    "truncated text encoder": (
        "text_encoder/model.safetensors",
        lambda f: _truncate(f / "text_encoder/model.safetensors"),
    ),
    "unet config syntax": ("unet/config.json", lambda f: (f / "unet/config.json").write_text('{"in_channels": 8,')),
    "vae config syntax": ("vae/config.json", lambda f: (f / "vae/config.json").write_text('{"_class_name": ')),
    "empty tokenizer": ("tokenizer", lambda f: [p.unlink() for p in (f / "tokenizer").iterdir()]),
    "wrongly named unet weights": ("unet", _wrong_name),
    "header of 2^40 bytes": (
        "unet/diffusion_pytorch_model.safetensors",
        lambda f: _header(f / "unet/diffusion_pytorch_model.safetensors", lambda h, n: struct.pack("<Q", 2**40)),
    ),
    "4 PB tensor": (
        "unet/diffusion_pytorch_model.safetensors",
        lambda f: _header(f / "unet/diffusion_pytorch_model.safetensors", _huge_tensor),
    ),
}


@pytest.mark.parametrize("command", ["compose", "bench"])
@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_folder_is_one_line_naming_the_file(case, command, plain, tmp_path, capsys):
    """Issue 20 item 11: each damage is found before any tensor is read, as one line naming the file."""
    folder = tmp_path / "model"
    shutil.copytree(plain, folder)
    named, damage = DAMAGE[case]
    damage(folder)
    before = digest(folder)
    args = (
        ["compose", "--json"] if command == "compose" else ["bench", "--frames", "1", "--height", "32", "--width", "32"]
    )
    code, out, err = run_cli(capsys, *args, "--model", str(folder), "--preset", "base")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and out == "", (code, out)
    assert len(lines) == 1 and lines[0].startswith("movie: error:"), err
    assert str(folder / named) in lines[0], lines[0]
    assert "Traceback" not in err
    assert digest(folder) == before  # the input is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing written beside it


def test_compose_validates_a_sound_folder(plain, capsys):
    """`movie compose --model DIR --json` opens the folder: every file is checked and the recipe's components load."""
    code, out, err = run_cli(capsys, "compose", "--model", str(plain), "--preset", "base", "--json")
    assert code == 0, err
    model = json.loads(out)["model"]
    assert model["loads"] is True and model["path"] == str(plain)
    for name in (
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/",
        "scheduler/scheduler_config.json",
    ):
        assert name in model["checked"], model["checked"]


def test_compose_refuses_a_folder_that_does_not_fit_the_recipe(plain, tmp_path, capsys):
    """A sound folder whose UNet is not image-conditioned (4 input channels) is refused for the recipe, by name."""
    folder = tmp_path / "model"
    shutil.copytree(plain, folder)
    cfg = json.loads((folder / "unet/config.json").read_text())
    cfg["in_channels"] = 4
    (folder / "unet/config.json").write_text(json.dumps(cfg))
    code, out, err = run_cli(capsys, "compose", "--model", str(folder), "--preset", "base", "--json")
    assert code != 0 and out == ""
    assert "unet" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# --- item 8: fp16 variants -----------------------------------------------------------------------


def test_fp16_variant_folder_is_what_diffusers_writes(fp16):
    assert (fp16 / "unet/diffusion_pytorch_model.fp16.safetensors").is_file()
    assert (fp16 / "text_encoder/model.fp16.safetensors").is_file()
    assert not (fp16 / "unet/diffusion_pytorch_model.safetensors").exists()


@pytest.mark.parametrize("flags", [[], ["--variant", "fp16"]], ids=["automatic", "flag"])
def test_fp16_variant_loads(fp16, flags):
    """Issue 20 item 8: a folder holding only fp16 variants loads (automatically, or with --variant fp16), and
    its weights are the saved ones."""
    import torch
    from safetensors.torch import load_file

    from movie_core.loading import load_pipeline, resolve_recipe

    recipe, model, _ = resolve_recipe({"model": str(fp16), "preset": "base", "variant": flags[1] if flags else None})
    pipe = load_pipeline(recipe, model)
    saved = load_file(str(fp16 / "unet/diffusion_pytorch_model.fp16.safetensors"))
    ours = pipe.denoiser.unet.state_dict()
    assert saved["conv_in.weight"].dtype == torch.float16
    assert torch.equal(ours["conv_in.weight"], saved["conv_in.weight"].float())


def test_variant_flag_for_a_missing_variant_is_one_line(plain, capsys):
    code, out, err = run_cli(
        capsys, "compose", "--model", str(plain), "--preset", "base", "--variant", "fp16", "--json"
    )
    assert code != 0 and out == ""
    assert "fp16.safetensors" in err and "--variant" in err and len(err.strip().splitlines()) == 1, err


def test_plain_weights_win_over_a_variant(plain, fp16, tmp_path):
    """A folder with both plain and fp16 weights reads the plain ones unless --variant says otherwise."""
    import torch
    from safetensors.torch import load_file

    from movie_core.loading import load_pipeline, resolve_recipe

    folder = tmp_path / "both"
    shutil.copytree(plain, folder)
    for sub, stem in (
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ):
        shutil.copy(fp16 / sub / f"{stem}.fp16.safetensors", folder / sub)
        data = load_file(str(folder / sub / f"{stem}.fp16.safetensors"))  # mark the variant: scaled weights
        from safetensors.torch import save_file

        save_file(
            {k: v * 2 for k, v in data.items()},
            str(folder / sub / f"{stem}.fp16.safetensors"),
            metadata={"format": "pt"},
        )
    plain_w = load_file(str(plain / "unet/diffusion_pytorch_model.safetensors"))["conv_in.weight"]
    for variant, expected in ((None, plain_w), ("fp16", None)):
        recipe, model, _ = resolve_recipe({"model": str(folder), "preset": "base", "variant": variant})
        got = load_pipeline(recipe, model).denoiser.unet.state_dict()["conv_in.weight"]
        if expected is not None:
            assert torch.equal(got, expected)
        else:
            assert not torch.equal(got, plain_w)


# --- item 7: the folder's own scheduler, VAE scaling and pipeline class ------------------------------------


PROMPT = "make it snowy"


def diffusers_edit(folder: Path, src, seed: int = 0):
    """diffusers' own StableDiffusionInstructPix2PixPipeline on the folder: its defaults (10 steps, 7.5 / 1.5) as
    movie's, the frame given as movie's edit feeds it (uint8 / 127.5 - 1, a multiple of 8: no resize), one generator
    seeded like movie's per-frame generator. Returns HxWx3 floats in [0, 255]."""
    import warnings

    import numpy as np
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    image = torch.from_numpy(np.array(src)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # [-1, 1] tensors pass through un-normalised
        out = pipe(
            PROMPT,
            image=image,
            num_inference_steps=10,
            guidance_scale=7.5,
            image_guidance_scale=1.5,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images[0]
    return out * 255


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("frame") / "in.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def movie_edit(capsys, frame: Path, folder: Path, out: Path, *flags: str):
    import numpy as np
    from PIL import Image

    code, _, err = run_cli(
        capsys,
        "edit",
        str(frame),
        "-p",
        PROMPT,
        "-o",
        str(out),
        "--model",
        str(folder),
        "--anchor",
        "none",
        "--no-progress",
        *flags,
    )
    assert code == 0, err
    return np.asarray(Image.open(out)).astype(float), err


@pytest.mark.parametrize(
    "scheduler, extra",
    [("ddim", {}), ("euler-ancestral", {}), ("ddim", {"prediction_type": "v_prediction", "scaling_factor": 0.13025})],
    ids=["ddim", "euler-ancestral", "v-prediction-0.13025"],
)
def test_no_flags_edit_matches_diffusers_on_the_folder(scheduler, extra, frame, tmp_path, capsys, record_property):
    """Issue 20 item 7 acceptance: with no flags, `movie edit --model FOLDER --anchor none` on a folder written by
    StableDiffusionInstructPix2PixPipeline.save_pretrained picks the base recipe from model_index.json, samples
    with the folder's scheduler and VAE scaling, and matches diffusers' pipeline within 2/255."""
    import numpy as np
    from PIL import Image

    folder = write_ip2p(tmp_path / "ip2p", scheduler, **extra)
    ours, err = movie_edit(capsys, frame, folder, tmp_path / "out.png")
    theirs = diffusers_edit(folder, Image.open(frame))
    diff = float(np.abs(ours - theirs).max())
    record_property("max_pixel_diff", diff)
    print(f"no-flags edit vs diffusers ({scheduler}, {extra or 'defaults'}): max pixel difference {diff:.3f}/255")
    assert diff <= 2, diff
    assert float(np.abs(theirs - np.asarray(Image.open(frame))).max()) > 50  # the edit did change the frame
    assert "recipe 'base'" in err
    assert ("folder's scheduler/scheduler_config.json" in err) == (scheduler != "ddim" or bool(extra))
    if "scaling_factor" in extra:
        assert "scaling_factor 0.13025" in err


def test_scheduler_flag_overrides_the_folder_and_says_so(frame, tmp_path, capsys):
    """--scheduler wins over the folder's Euler-ancestral scheduler, with a note; the output then differs from
    diffusers' (which samples with the folder's): the parity above is not an accident."""
    import numpy as np
    from PIL import Image

    folder = write_ip2p(tmp_path / "ip2p", "euler-ancestral")
    ours, err = movie_edit(capsys, frame, folder, tmp_path / "out.png", "--scheduler", "ddim")
    assert "--scheduler ddim overrides the folder's" in err and "EulerAncestralDiscreteScheduler" in err
    assert float(np.abs(ours - diffusers_edit(folder, Image.open(frame))).max()) > 10


def test_preset_flag_overrides_model_index_and_says_so(plain, capsys):
    code, _, err = run_cli(capsys, "compose", "--model", str(plain), "--preset", "mobile", "--vae", "sd-vae")
    assert "--preset mobile overrides the folder's model_index.json" in err
    code, _, err = run_cli(capsys, "compose", "--model", str(plain), "--vae", "taesd")
    assert "--vae taesd overrides the folder's model_index.json" in err
