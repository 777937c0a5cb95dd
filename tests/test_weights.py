"""Model folders and files: save through the CLI, load back, single-file, `movie convert`, and the
refusals (pickles, .ckpt, repo ids missing from the Hugging Face cache) as one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from movie_core.cli import main, resolve_recipe
from movie_core.composer import compose
from movie_core.loading import build
from movie_core.recipe import PRESETS, preset
from movie_core.weights import MANIFEST, PickleRefused, read_manifest, resolve_model

PROMPT = "turn it into a watercolor"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `movie ARGS` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("movie: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def image(size: int = 64) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def edit(pipe) -> torch.Tensor:
    return pipe.edit_images(image(), PROMPT, generator=torch.Generator().manual_seed(7))


def pipeline_from(model: str | Path):
    """What `movie ... --model X` builds: the recipe from X's movie.json, the weights from X."""
    recipe, folder, _ = resolve_recipe({"model": str(model)})
    return build(compose(recipe), model=folder)


def assert_same_pipelines(a, b) -> None:
    """Bit-identical weights in every module, and the same edit. The edits agree to float rounding,
    not always bit for bit: CPU GEMM kernels take alignment-dependent paths, and weights loaded from
    safetensors are not 64-byte aligned (see tests/test_models.py::assert_same_output)."""
    for slot in ("encoder", "decoder", "denoiser"):
        ma, mb = getattr(a, slot), getattr(b, slot)
        assert type(ma) is type(mb), slot
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys(), slot
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{slot}: {key}"
    out_a, out_b = edit(a), edit(b)
    torch.testing.assert_close(out_a, out_b, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """preset -> model folder written by `movie compose --preset P --size nano --init random --save-model DIR`."""
    root = tmp_path_factory.mktemp("models")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            dest = root / name
            try:
                main(["compose", "--preset", name, "--size", "nano", "--init", "random", "--save-model", str(dest)])
            except SystemExit as exc:
                assert not exc.code, f"saving preset {name} failed with exit code {exc.code}"
            cache[name] = dest
        return cache[name]

    return get


@pytest.fixture(scope="module")
def in_memory():
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build(compose(preset(name).replace(size="nano")))
        return cache[name]

    return get


# ---------------------------------------------------------------------------------------------
# save and load through the CLI


@pytest.mark.parametrize("name", PRESETS)
def test_save_model_folder_and_load_it_back(name, saved, in_memory, capsys):
    folder = saved(name)
    recipe = preset(name)
    manifest = read_manifest(folder)
    assert manifest["format"] == "movie-model/1"
    assert manifest["stage"] == recipe.denoiser
    assert manifest["recipe"]["denoiser"] == recipe.denoiser
    assert manifest["recipe"]["size"] == "nano"
    assert manifest["standin_tokenizer"] is False
    assert (folder / "unet").is_dir() and (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.ckpt"))
    assert not list(folder.parent.glob(".*movie-tmp*"))  # the temp folder was renamed into place

    code, out, err = run_cli(capsys, "compose", "--model", str(folder), "--json")
    assert code == 0, err
    desc = json.loads(out)
    for slot in ("encoder", "decoder", "denoiser", "backend"):
        assert desc[slot]["name"] == getattr(recipe, slot), slot
    assert desc["options"]["size"] == "nano"

    loaded = pipeline_from(folder)
    assert loaded.denoiser.stage == recipe.denoiser
    assert loaded.denoiser.standin_tokenizer is False
    assert loaded.notes == []
    assert_same_pipelines(in_memory(name), loaded)


def test_save_model_single_file(tmp_path, saved, in_memory, capsys):
    dest = tmp_path / "movie-nano.safetensors"
    code, out, err = run_cli(capsys, "compose", "--preset", "movie", "--size", "nano", "--init", "random",
                             "--save-model", str(dest))
    assert code == 0, err
    assert dest.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [dest.name]

    from safetensors import safe_open

    with safe_open(str(dest), framework="pt") as f:
        files = json.loads(f.metadata()["movie.files"])
        assert MANIFEST in files
        assert any(k.startswith("unet/") for k in f.keys())

    code, out, err = run_cli(capsys, "compose", "--model", str(dest), "--json")
    assert code == 0, err
    assert json.loads(out)["denoiser"]["name"] == "mobile-pix2pix-1step"

    loaded = pipeline_from(dest)
    assert_same_pipelines(in_memory("movie"), loaded)
    assert_same_pipelines(pipeline_from(saved("movie")), loaded)


def test_save_model_needs_weights(tmp_path, capsys):
    code, _, err = run_cli(capsys, "compose", "--preset", "movie", "--size", "nano",
                           "--save-model", str(tmp_path / "m"))
    assert_one_line_error(code, err, "--init random")
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------------
# movie convert


@pytest.mark.parametrize("target", ["mobile-pix2pix", "mobile-pix2pix-mmg"])
def test_convert_base_folder(target, tmp_path, saved, capsys):
    from safetensors import safe_open

    source = saved("base")
    out = tmp_path / target
    # --guidance-inject time: the shared projection, whose layers are new keys (the per-ResNet default widens the
    # ResNets' time projections instead: tests/test_paper_fidelity.py)
    code, stdout, err = run_cli(capsys, "convert", str(source), "--to", target, "--out", str(out),
                                "--guidance-inject", "time")
    assert code == 0, err
    assert target in stdout

    manifest = read_manifest(out)
    assert manifest["stage"] == target
    assert manifest["recipe"]["denoiser"] == target
    assert manifest["recipe"]["encoder"] == "sd-vae"  # the other components carry over
    assert manifest["converted_from"] == "instruct-pix2pix"
    assert manifest["guidance"] == ("embedded" if target.endswith("mmg") else "cfg3")
    assert (out / "vae").is_dir() and (out / "text_encoder").is_dir()
    assert not list(tmp_path.glob(".*movie-tmp*"))

    def keys(folder: Path) -> set[str]:
        with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
            return set(f.keys())

    before, after = keys(source), keys(out)
    assert before - after and all(".attentions." in k for k in before - after)
    assert all(k.startswith("class_embedding.") for k in after - before)
    assert bool(after - before) == target.endswith("mmg")

    code, stdout, err = run_cli(capsys, "compose", "--model", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["denoiser"]["name"] == target

    pipe = pipeline_from(out)
    assert pipe.denoiser.stage == target
    if target.endswith("mmg"):
        assert torch.count_nonzero(pipe.denoiser.unet.class_embedding.linear_2.weight) == 0
    result = edit(pipe)
    assert result.shape == image().shape and torch.isfinite(result).all()


def test_convert_mobile_to_mmg_chain(tmp_path, saved, capsys):
    mobile = tmp_path / "mobile"
    mmg = tmp_path / "mmg"
    assert run_cli(capsys, "convert", str(saved("base")), "--to", "mobile-pix2pix", "--out", str(mobile))[0] == 0
    code, _, err = run_cli(capsys, "convert", str(mobile), "--to", "mobile-pix2pix-mmg", "--out", str(mmg))
    assert code == 0, err
    manifest = read_manifest(mmg)
    assert manifest["stage"] == "mobile-pix2pix-mmg" and manifest["converted_from"] == "mobile-pix2pix"
    assert pipeline_from(mmg).denoiser.guidance == "embedded"


def test_convert_errors(tmp_path, saved, capsys):
    base = saved("base")

    # a folder that is not a model
    code, _, err = run_cli(capsys, "convert", str(tmp_path / "missing"), "--to", "mobile-pix2pix",
                           "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "not a model folder")

    # the wrong thing: a guidance-embedded UNet cannot lose its embedding
    code, _, err = run_cli(capsys, "convert", str(saved("mmg")), "--to", "mobile-pix2pix", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "cannot convert")
    assert not (tmp_path / "o").exists()

    # not a conversion target at all
    code, _, err = run_cli(capsys, "convert", str(base), "--to", "instruct-pix2pix", "--out", str(tmp_path / "o"))
    assert code != 0 and "Traceback" not in err and "instruct-pix2pix" in err
    assert not (tmp_path / "o").exists()

    # an existing output needs --overwrite
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "convert", str(base), "--to", "mobile-pix2pix", "--out", str(out))
    assert_one_line_error(code, err, "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    code, _, err = run_cli(capsys, "convert", str(base), "--to", "mobile-pix2pix", "--out", str(out), "--overwrite")
    assert code == 0, err
    assert read_manifest(out)["stage"] == "mobile-pix2pix" and not (out / "keep.txt").exists()


# ---------------------------------------------------------------------------------------------
# refusals


@pytest.fixture
def pickled(tmp_path, saved):
    """A copy of the saved base model whose unet/ holds only diffusion_pytorch_model.bin."""
    folder = tmp_path / "pickled"
    shutil.copytree(saved("base"), folder)
    st = folder / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(st)), folder / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()
    return folder


def test_pickle_only_folder_is_refused(pickled, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MOVIE_ALLOW_PICKLE", raising=False)
    out = tmp_path / "resaved"
    code, _, err = run_cli(capsys, "compose", "--model", str(pickled), "--save-model", str(out))
    assert_one_line_error(code, err, "MOVIE_ALLOW_PICKLE", "diffusion_pytorch_model.bin")
    assert not out.exists()

    code, _, err = run_cli(capsys, "convert", str(pickled), "--to", "mobile-pix2pix", "--out", str(tmp_path / "c"))
    assert_one_line_error(code, err, "MOVIE_ALLOW_PICKLE")

    with pytest.raises(PickleRefused):
        pipeline_from(pickled)


def test_pickle_folder_loads_when_allowed(pickled, saved, monkeypatch):
    """The opt-in the refusal names really works."""
    monkeypatch.setenv("MOVIE_ALLOW_PICKLE", "1")
    assert_same_pipelines(pipeline_from(saved("base")), pipeline_from(pickled))


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_pickle_file_is_refused(suffix, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MOVIE_ALLOW_PICKLE", raising=False)
    ckpt = tmp_path / f"model{suffix}"
    ckpt.write_bytes(b"not really a pickle")
    code, _, err = run_cli(capsys, "compose", "--model", str(ckpt), "--json")
    assert_one_line_error(code, err, "MOVIE_ALLOW_PICKLE", ckpt.name)


def test_foreign_safetensors_file_is_refused(tmp_path, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    code, _, err = run_cli(capsys, "compose", "--model", str(path), "--json")
    assert_one_line_error(code, err, "not a movie single-file model")


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face home, for this process and any child it starts."""
    import huggingface_hub.constants as hf

    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub read HF_HOME at import; point its constants at the empty cache too
    monkeypatch.setattr(hf, "HF_HOME", str(home))
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(home / "hub"))
    return home / "hub"


def test_repo_id_not_in_cache(empty_hf_cache, capsys):
    code, _, err = run_cli(capsys, "compose", "--model", "nobody/no-such-movie-model", "--json")
    assert code == 2
    line = assert_one_line_error(code, err, "nobody/no-such-movie-model", "never downloads")
    assert "Hugging Face cache" in line


def test_repo_id_from_cache(empty_hf_cache, saved, capsys):
    """A repo id present in the local cache resolves offline to its snapshot."""
    repo = empty_hf_cache / "models--someone--movie-nano"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(saved("movie"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert resolve_model("someone/movie-nano") == repo / "snapshots" / commit
    code, out, err = run_cli(capsys, "compose", "--model", "someone/movie-nano", "--json")
    assert code == 0, err
    assert json.loads(out)["denoiser"]["name"] == "mobile-pix2pix-1step"


# ---------------------------------------------------------------------------------------------
# stand-in tokenizer note


def test_full_size_random_init_notes_the_standin_tokenizer():
    pipe = build(compose(preset("movie").replace(size="full")), meta=True)
    assert pipe.denoiser.standin_tokenizer is True
    assert pipe.denoiser.tokenizer.model_max_length == 77
    assert len(pipe.denoiser.tokenizer) == 49408
    assert any("stand-in" in note and "tokenizer" in note for note in pipe.notes)
    assert pipe.manifest()["standin_tokenizer"] is True


def test_nano_and_loaded_models_have_no_standin_note(saved, in_memory):
    assert in_memory("movie").denoiser.standin_tokenizer is False
    assert in_memory("movie").notes == []
    loaded = pipeline_from(saved("movie"))
    assert loaded.denoiser.standin_tokenizer is False
    assert loaded.notes == []
