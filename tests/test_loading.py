"""The loading layer: a component's own defaults, derived components, -O options everywhere, eval via its backend."""

from __future__ import annotations

import json

import pytest

from movie_core import plugins
from movie_core.composer import compose
from movie_core.errors import UsageError
from movie_core.hookspecs import hookimpl
from movie_core.loading import build, builtin_stage, component_options, parse_options, resolve_recipe
from movie_core.recipe import preset
from movie_core.registry import ComponentSpec

from cli_helpers import run_cli


@pytest.fixture(autouse=True)
def _fresh(clean_plugins):
    """Plugins reloaded for every test (some register their own)."""


# --- a denoiser's own defaults ---------------------------------------------------------------------


def test_no_preset_runs_the_denoisers_own_steps():
    """`--denoiser instruct-pix2pix` with no preset: 10 steps (its own), not the movie preset's 1."""
    recipe, _, _ = resolve_recipe({"denoiser": "instruct-pix2pix", "size": "nano", "init": "random"})
    assert recipe.steps is None
    assert build(compose(recipe), meta=True).steps == 10
    recipe, _, _ = resolve_recipe({"size": "nano", "init": "random"})
    assert build(compose(recipe), meta=True).steps == 1
    recipe, _, _ = resolve_recipe({"denoiser": "instruct-pix2pix", "steps": 3, "size": "nano", "init": "random"})
    assert build(compose(recipe), meta=True).steps == 3  # the user's --steps wins


def test_flops_of_the_denoiser_alone_counts_its_ten_steps(capsys):
    code, out, err = run_cli(capsys, "flops", "--denoiser", "instruct-pix2pix", "--vae", "taesd", "--size", "nano",
                             "--height", "64", "--width", "64", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["steps"] == 10 and result["components"]["unet"]["calls"] == 30  # 10 steps x 3 passes


# --- derived components ----------------------------------------------------------------------------


class DerivedPlugin:
    @hookimpl
    def movie_register_denoisers(self, registry):
        registry.register(ComponentSpec(family="denoiser", name="pix2pix-4step", summary="InstructPix2Pix at 4 steps",
                                        base="instruct-pix2pix", defaults={"steps": 4, "scheduler": "euler"}))
        registry.register(ComponentSpec(family="denoiser", name="pix2pix-4step-ddim", summary="and with DDIM",
                                        base="pix2pix-4step", defaults={"scheduler": "ddim"}))
        registry.register(ComponentSpec(family="denoiser", name="orphan", summary="derives from nothing",
                                        base="no-such-denoiser"))


def test_a_derived_denoiser_resolves_through_its_base():
    plugins.get_plugin_manager().register(DerivedPlugin(), name="derived")
    registry = plugins.get_registry()
    base, spec = registry.get("denoiser", "instruct-pix2pix"), registry.get("denoiser", "pix2pix-4step")
    assert (spec.factory, spec.config, spec.extra) == (base.factory, base.config, base.extra)
    assert spec.plugin == "derived" and spec.base == "instruct-pix2pix"
    assert spec.make_config().scheduler == "euler"  # its defaults fill the config
    assert spec.make_config(scheduler="lcm").scheduler == "lcm"  # and the user's option wins
    chained = registry.get("denoiser", "pix2pix-4step-ddim")
    assert chained.defaults == {"steps": 4, "scheduler": "ddim"}  # merged along the chain, nearest wins
    recipe = preset("base").replace(denoiser="pix2pix-4step", size="nano", vae="taesd")
    assert builtin_stage(recipe) == "instruct-pix2pix"  # the base's built-in weights
    pipe = build(compose(recipe), meta=True)
    assert pipe.steps == 4 and pipe.denoiser.stage == "instruct-pix2pix"
    assert pipe.denoiser.describe()["scheduler"] == "euler"
    with pytest.raises(UsageError, match="derives from 'no-such-denoiser'"):
        registry.get("denoiser", "orphan")


def test_a_derived_denoiser_edits_with_its_bases_builtin_weights(capsys):
    plugins.get_plugin_manager().register(DerivedPlugin(), name="derived")
    code, out, err = run_cli(capsys, "bench", "--denoiser", "pix2pix-4step", "--vae", "taesd", "--height", "32",
                             "--width", "32", "--frames", "1", "--batch-size", "1", "--repeats", "1", "--json")
    assert code == 0, err
    assert "nano:instruct-pix2pix" in err  # no --model: the base's shipped nano weights
    assert json.loads(out)["steps"] == 4


# --- options ---------------------------------------------------------------------------------------


def test_option_parser():
    parsed = parse_options(["a=1", "b-c=true", "d=text", 'e="quoted"'])
    assert parsed == {"a": 1, "b_c": True, "d": "text", "e": "quoted"}
    assert component_options(["opset=17", "denoiser.scheduler=ddim", "vae.x=1"]) == {
        "backend": {"opset": 17}, "denoiser": {"scheduler": "ddim"}, "encoder": {"x": 1}, "decoder": {"x": 1}}
    with pytest.raises(UsageError, match="key=value"):
        parse_options(["novalue"])
    with pytest.raises(UsageError, match="unknown slot 'unet'"):
        component_options(["unet.x=1"])


@pytest.mark.parametrize("command", [
    ["edit", "IN", "-p", "x", "-o", "OUT"], ["bench"], ["flops"], ["compose"], ["export", "--out", "OUT"],
])
def test_every_recipe_command_takes_component_options(capsys, tmp_path, command):
    """-O reaches the component's config on every command: a wrong key is named, with the known ones."""
    args = [str(tmp_path / "in.png") if a == "IN" else str(tmp_path / "o") if a == "OUT" else a for a in command]
    if command[0] == "edit":
        from PIL import Image

        Image.new("RGB", (16, 16)).save(tmp_path / "in.png")
    code, out, err = run_cli(capsys, *args, "--size", "nano", "--init", "random", "-O", "denoiser.colour=blue")
    assert code != 0
    lines = err.strip().splitlines()
    assert "unknown option 'colour'" in lines[-1] and "scheduler" in lines[-1], err


def test_a_denoiser_option_reaches_the_denoiser(capsys):
    code, out, err = run_cli(capsys, "compose", "--preset", "base", "--size", "nano", "-O", "denoiser.scheduler=euler",
                             "--json")
    assert code == 0, err
    assert json.loads(out)["options"]["component_options"] == {"denoiser": {"scheduler": "euler"}}
    recipe, _, _ = resolve_recipe({"preset": "base", "size": "nano", "options": ("denoiser.scheduler=euler",)})
    assert build(compose(recipe), meta=True).denoiser.describe()["scheduler"] == "euler"


def test_list_shows_each_components_options(capsys):
    code, out, err = run_cli(capsys, "list", "backend")
    assert code == 0, err
    assert "-O backend.dynamic_batch=" in out and "-O backend.opset=" in out
    code, out, err = run_cli(capsys, "list", "denoiser", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert {"name": "scheduler", "default": None} .items() <= rows["instruct-pix2pix"]["options"][0].items()


def test_recipe_files_keep_component_options(tmp_path):
    from movie_core.recipe import load

    recipe = preset("movie").replace(component_options={"backend": {"opset": 17}})
    recipe.save(tmp_path / "r.toml")
    assert "[component_options.backend]" in (tmp_path / "r.toml").read_text()
    assert load(tmp_path / "r.toml") == recipe


# --- eval runs through its backend -----------------------------------------------------------------


class CountingBackend:
    """Runs modules unchanged but counts the calls per component (a backend that is not skipped is called)."""

    calls: dict[str, int] = {}

    @staticmethod
    def available():
        return True, "counts calls"

    def prepare(self, module, example_inputs=(), options=None):
        name = (options or {}).get("name", "?")

        def run(*inputs):
            CountingBackend.calls[name] = CountingBackend.calls.get(name, 0) + 1
            return module(*inputs)

        return run

    def report(self):
        return {"calls": dict(CountingBackend.calls)}


class CountingPlugin:
    @hookimpl
    def movie_register_backends(self, registry):
        registry.register(ComponentSpec(family="backend", name="counting", summary="counts calls",
                                        factory=f"{__name__}:CountingBackend"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from movie_core.data.writer import write_nano

    out = tmp_path_factory.mktemp("data") / "nano"
    write_nano(out, count=6, videos=0, size=32, seed=0, test_fraction=0.5)
    return out


def test_eval_runs_through_the_recipes_backend(capsys, tiny_data):
    """eval --backend counting: every component ran through the backend, and the JSON says which backend ran."""
    plugins.get_plugin_manager().register(CountingPlugin(), name="counting")
    CountingBackend.calls.clear()
    code, out, err = run_cli(capsys, "eval", "nano:mobile-pix2pix-1step", "--data", str(tiny_data), "--backend",
                             "counting", "--json", "--no-progress")
    assert code == 0, err
    result = json.loads(out)
    assert result["backend"]["backend"] == "counting" and result["backend"]["routed"]
    assert {"text_encoder", "encoder", "unet", "decoder"} <= set(CountingBackend.calls)  # would be empty if skipped
    assert result["backend"]["calls"] == CountingBackend.calls


def test_eval_backend_onnx_reports_onnxruntime(capsys, tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the onnx backend needs onnxruntime (the test extra installs it)")
    monkeypatch.setenv("MOVIE_CACHE_DIR", str(tmp_path / "cache"))
    code, out, err = run_cli(capsys, "eval", "nano:mobile-pix2pix-1step", "--data", str(tiny_data), "--backend",
                             "onnx", "--json", "--no-progress")
    assert code == 0, err
    backend = json.loads(out)["backend"]
    assert backend["backend"] == "onnx" and backend["runtime"].startswith("onnxruntime")
    assert backend["providers"]["unet"] == ["CPUExecutionProvider"]


# --- a backend that is the default on a device ------------------------------------------------------


class CpuDefaultBackend(CountingBackend):
    pass


class CpuDefaultPlugin:
    @hookimpl
    def movie_register_backends(self, registry):
        registry.register(ComponentSpec(family="backend", name="cpu-default", summary="the default on cpu",
                                        factory=f"{__name__}:CpuDefaultBackend",
                                        extra={"default_for_devices": ["cpu"]}))


def test_a_backend_can_be_the_default_on_a_device():
    """As cuda-graphs is on CUDA: a recipe that names no backend runs through it there, and says so."""
    plugins.get_plugin_manager().register(CpuDefaultPlugin(), name="cpu-default")
    notes: list[str] = []
    recipe, _, _ = resolve_recipe({"size": "nano", "init": "random", "device": "cpu"}, note=notes.append)
    assert recipe.backend == "cpu-default" and "cpu-default" in notes[0]
    recipe, _, _ = resolve_recipe({"size": "nano", "init": "random", "backend": "eager"}, note=notes.append)
    assert recipe.backend == "eager"  # asked for by name: kept
    recipe, _, _ = resolve_recipe({"size": "nano", "init": "random", "device": "cpu", "preset": "movie"})
    assert recipe.backend == "cpu-default"  # a preset's `eager` is the default, not a choice


def test_cuda_graphs_is_not_picked_where_it_cannot_run():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    recipe, _, _ = resolve_recipe({"size": "nano", "init": "random", "device": "cpu"})
    assert recipe.backend == "eager"


def test_ablate_and_eval_take_component_options(capsys, tmp_path, tiny_data):
    """-O on ablate reaches every cell's recipe; on eval a wrong key is one line naming it."""
    code, out, err = run_cli(capsys, "ablate", "movie", "--vary", "steps=1,2", "--measure", "flops", "--size", "nano",
                             "-O", "denoiser.scheduler=ddim", "--out", str(tmp_path / "ab"), "--json", "--no-progress")
    assert code == 0, err
    assert [c["status"] for c in json.loads(out)["cells"]] == ["ok", "ok"]
    saved = [json.loads(p.read_text()) for p in sorted((tmp_path / "ab" / "cells").glob("*.json"))]
    assert len(saved) == 2
    assert all(c["config"]["recipe"]["component_options"] == {"denoiser": {"scheduler": "ddim"}} for c in saved)
    code, out, err = run_cli(capsys, "eval", "random", "--data", str(tiny_data), "--size", "nano",
                             "-O", "denoiser.colour=blue", "--json", "--no-progress")
    assert code != 0 and "unknown option 'colour'" in err.strip().splitlines()[-1]
