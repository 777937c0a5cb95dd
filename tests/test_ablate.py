"""The public Python API (movie_core.api) and `movie ablate`: plain data, the encoder x decoder grid, FLOPs equal to
`movie flops`, resuming without recomputing finished cells, skipped combinations, one-line errors."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import movie_core
from movie_core import ablation
from movie_core.errors import UsageError

from cli_helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread", "clean_plugins")

AUTOENCODERS = ("sd-vae", "taesd")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Held-out procedural triplets with exact ground truth: 4 test images at 64x64."""
    out = tmp_path_factory.mktemp("ablate") / "data"
    movie_core.make_data(out, count=8, size=64, seed=1, test_fraction=0.5)
    return out


def plain(value) -> bool:
    """Only dicts, lists, str, numbers, bools and None (what JSON round-trips unchanged)."""
    return json.loads(json.dumps(value)) == value


# --- the Python API ------------------------------------------------------------------------------------


def test_importing_the_api_does_not_import_torch():
    code = ("import sys, movie_core\nr = movie_core.preset('movie').replace(decoder='sd-vae')\n"
            "p = movie_core.load_plugins()\nf = movie_core.run_flops\n"
            "print('torch' in sys.modules, r.decoder, ','.join(sorted(p['components']['autoencoder'])))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "sd-vae", "md-vae,sd-vae,taesd,taesd-lite"]


def test_api_names_are_exported_and_return_plain_data(data):
    assert set(movie_core.api.__all__) <= set(dir(movie_core))
    plugins = movie_core.load_plugins()
    assert plain(plugins) and set(AUTOENCODERS) <= set(plugins["components"]["autoencoder"])
    recipe = movie_core.preset("movie").replace(decoder="sd-vae", size="nano")
    assert (recipe.encoder, recipe.decoder) == ("taesd", "sd-vae")

    described = movie_core.compose(recipe)
    assert plain(described) and described["latent_space"] == "sd1"
    cost = movie_core.run_flops(recipe, height=480, width=480, size="full")
    assert plain(cost) and cost["size"] == "full" and cost["tflops_paper"] > 2.0  # the SD VAE decoder is ~2 TFLOPs
    quality = movie_core.run_eval(recipe, data=data, limit=2)
    assert plain(quality) and quality["count"] == 2 and 0 < quality["psnr"] < 100
    assert quality["model"].endswith("mobile-pix2pix-1step")  # the built-in nano weights of the recipe's stage
    speed = movie_core.run_bench(recipe, height=32, width=32, frames=1, batch_size=1, repeats=1)
    assert plain(speed) and speed["ms_per_frame"] > 0

    with pytest.raises(UsageError, match="no built-in weights at full size"):
        movie_core.run_eval(recipe.replace(size="full"), data=data)
    with pytest.raises(UsageError, match="hybrids need one latent space|unknown autoencoder"):
        movie_core.compose(recipe.replace(decoder="nosuch"))


def test_objective_of_a_model_against_itself_is_a_ratio_of_one(data):
    """adversarial's objective: the student at 1 step vs the teacher at 1 step, both to the teacher's 5-step output;
    the same model on both sides gives the same error twice."""
    same = "nano:mobile-pix2pix-1step"
    result = movie_core.objective("adversarial", student=same, teacher=same, data=data)
    assert plain(result) and result["student_mse"] > 0
    assert result["ratio"] == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(UsageError, match="defines no objective"):
        movie_core.objective("pix2pix-finetune", student=same, teacher=same, data=data)


# --- movie ablate ------------------------------------------------------------------------------------


@pytest.mark.slow  # a 2x2 grid measured end to end with eval (~50 s)
def test_encoder_by_decoder_grid_with_flops_and_eval(data, tmp_path, capsys):
    out = tmp_path / "grid"
    code, stdout, err = run_cli(capsys, "ablate", "movie", "--vary", "encoder=sd-vae,taesd", "--vary",
                                "decoder=sd-vae,taesd", "--measure", "flops,eval", "--size", "nano", "--data",
                                str(data), "--limit", "4", "--out", str(out))
    assert code == 0, err
    with (out / "ablation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["encoder"], r["decoder"]) for r in rows] == [(e, d) for e in AUTOENCODERS for d in AUTOENCODERS]
    assert all(r["status"] == "ok" for r in rows)
    table = json.loads((out / "ablation.json").read_text())
    for from_csv, from_json in zip(rows, table["rows"], strict=True):  # the same table, numbers exact in both
        assert from_csv == {k: "" if v is None else str(v) for k, v in from_json.items()}
    for chart in ("cost_vs_quality.png", "bars.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| sd-vae | taesd | ok |" in (out / "ablation.md").read_text() and "| sd-vae | taesd | ok |" in stdout

    # the full-size FLOPs column is what `movie flops` says for the same recipe at 480x480
    for row in table["rows"]:
        code, flops_out, err = run_cli(capsys, "flops", "--preset", "movie", "--encoder", row["encoder"],
                                       "--decoder", row["decoder"], "--json")
        assert code == 0, err
        assert row["tflops_full"] == json.loads(flops_out)["tflops_paper"]
    by = {(r["encoder"], r["decoder"]): r for r in table["rows"]}
    flops = {pair: row["tflops_full"] for pair, row in by.items()}
    assert flops["taesd", "taesd"] < flops["sd-vae", "taesd"] < flops["sd-vae", "sd-vae"]
    assert by["taesd", "taesd"]["tflops_full"] == pytest.approx(0.758, abs=0.001)  # paper Table 1: 0.76
    # each cell evaluated its own autoencoders: four different scores from the same denoiser weights
    psnr = [r["psnr"] for r in table["rows"]]
    assert all(math.isfinite(p) and 5 < p < 40 for p in psnr) and len({round(p, 6) for p in psnr}) == 4
    assert all(r["tflops_nano"] < 0.01 for r in table["rows"])  # nano at the data's 64x64


# runs an ablation twice (~30 s); test_a_plugin_version_change_measures_the_cells_again checks cell reuse fast
@pytest.mark.slow
def test_an_interrupted_ablation_resumes_without_recomputing_finished_cells(tmp_path, capsys, monkeypatch):
    real = ablation.MEASURE_FUNCTIONS["flops"]
    measured: list[str] = []

    def counting(cell, opts):
        if len(measured) == stop_after:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the grid
        measured.append(f"{cell.recipe.decoder},{cell.recipe.steps}")
        return real(cell, opts)

    monkeypatch.setitem(ablation.MEASURE_FUNCTIONS, "flops", counting)
    out = tmp_path / "resume"

    def command(size: int = 64) -> tuple[str, ...]:
        return ("ablate", "movie", "--vary", "decoder=sd-vae,taesd", "--vary", "steps=1,2", "--height", str(size),
                "--width", str(size), "--out", str(out))

    args = command()
    stop_after = 2
    code, _, err = run_cli(capsys, *args)
    assert code == 130 and err.strip().endswith("movie: interrupted")
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    assert sorted(finished) == ["decoder=sd-vae,steps=1.json", "decoder=sd-vae,steps=2.json"]
    assert not (out / "ablation.csv").exists()

    measured.clear()
    stop_after = None
    code, _, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    assert measured == ["taesd,1", "taesd,2"]  # only the cells that had not finished
    assert {p: (out / "cells" / p).stat().st_mtime_ns for p in finished} == finished
    assert "reused" in err
    table = json.loads((out / "ablation.json").read_text())
    assert (table["run"]["computed"], table["run"]["reused"], len(table["rows"])) == (2, 2, 4)

    measured.clear()
    assert run_cli(capsys, *args)[0] == 0 and measured == []  # everything finished: nothing measured
    assert run_cli(capsys, *command(96))[0] == 0
    assert len(measured) == 4  # other settings: no stale cell is reused


def test_a_plugin_version_change_measures_the_cells_again(tmp_path, monkeypatch):
    from movie_core import plugins

    real = ablation.MEASURE_FUNCTIONS["flops"]
    measured: list[str] = []
    monkeypatch.setitem(ablation.MEASURE_FUNCTIONS, "flops",
                        lambda cell, opts: measured.append(cell.recipe.decoder) or real(cell, opts))
    out = tmp_path / "versions"

    def run() -> dict:
        return movie_core.ablate("movie", {"decoder": ["sd-vae", "taesd"]}, height=64, width=64, out=out)

    run()
    assert measured == ["sd-vae", "taesd"]
    saved = json.loads((out / "cells" / "decoder=taesd.json").read_text())["config"]["plugins"]
    assert saved["decoder"] == {"plugin": "movie_plugins.autoencoders.taesd", "version": plugins._version()}
    measured.clear()
    assert [r["reused"] for r in run()["cells"]] == [True, True] and measured == []

    monkeypatch.setattr(plugins, "_version", lambda: "99.0")  # the built-in plugins' version, as after an upgrade
    plugins.reset()
    assert [r["reused"] for r in run()["cells"]] == [False, False] and measured == ["sd-vae", "taesd"]


def test_a_factory_that_does_not_import_names_the_plugin_not_the_model(capsys):
    from movie_core.hookspecs import hookimpl
    from movie_core.plugins import get_plugin_manager

    class BadFactory:
        @hookimpl
        def movie_register_denoisers(self, registry):
            registry.register(family="denoiser", name="bad-den", summary="factory module missing",
                              factory="movie_no_such_module:build")

    get_plugin_manager().register(BadFactory(), name="bad-factory")
    code, stdout, err = run_cli(capsys, "ablate", "movie", "--vary", "denoiser=mobile-pix2pix-1step,bad-den",
                                "--measure", "bench", "--size", "nano", "--model", "nano:mobile-pix2pix-1step")
    assert code == 1 and stdout == "" and err.count("\n") == 1, err
    assert err.startswith("movie: error: plugin 'bad-factory': denoiser 'bad-den': cannot import factory "
                          "'movie_no_such_module:build': ModuleNotFoundError")
    assert "model" not in err.replace("movie_no_such_module", "")


def test_invalid_combinations_are_skipped_rows_with_the_reason(tmp_path):
    from movie_core.hookspecs import hookimpl
    from movie_core.plugins import get_plugin_manager
    from movie_core.registry import ComponentSpec

    class OtherLatentSpace:
        @hookimpl
        def movie_register_autoencoders(self, registry):
            registry.register(ComponentSpec(family="autoencoder", name="toy-ae", summary="another latent space",
                                            factory="toy_module:build", latent_space="toy"))

    get_plugin_manager().register(OtherLatentSpace(), name="toy-latent")
    out = tmp_path / "skips"
    result = movie_core.ablate("movie", {"encoder": ["taesd", "toy-ae"], "decoder": ["taesd", "nosuch"]},
                               height=64, width=64, out=out)
    assert plain(result)
    rows = {(r["encoder"], r["decoder"]): r for r in result["rows"]}
    assert rows["taesd", "taesd"]["status"] == "ok" and rows["taesd", "taesd"]["reason"] is None
    assert rows["toy-ae", "taesd"]["status"] == "skipped"
    assert "hybrids need one latent space" in rows["toy-ae", "taesd"]["reason"]
    assert "unknown autoencoder 'nosuch'" in rows["taesd", "nosuch"]["reason"]
    assert [p.name for p in (out / "cells").iterdir()] == ["encoder=taesd,decoder=taesd.json"]
    assert "hybrids need one latent space" in (out / "ablation.md").read_text()


@pytest.mark.parametrize("args, needle", [
    (["--vary", "nosuch=a,b"], "cannot vary 'nosuch'"),
    (["--vary", "encoder"], "--vary takes KEY=VALUE"),
    (["--vary", "encoder=taesd,"], "--vary takes KEY=VALUE"),
    (["--vary", "steps=0,1"], "--vary steps=0"),
    (["--vary", "vae=taesd", "--vary", "decoder=taesd"], "vary either vae or encoder/decoder"),
    (["--measure", "flops,speed"], "unknown measure 'speed'"),
    (["--measure", "eval"], "needs --data"),
    (["--measure", "bench", "--size", "full"], "no built-in full-size"),
])
def test_bad_input_is_one_line_and_leaves_no_output(args, needle, tmp_path, capsys):
    out = tmp_path / "never"
    code, stdout, err = run_cli(capsys, "ablate", "movie", *args, "--out", str(out))
    assert code == 2 and stdout == ""
    assert err.startswith("movie: error: ") and needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


# --- the pieces ----------------------------------------------------------------------------------------


def test_parse_vary_and_the_two_kinds_of_cell_sets():
    assert ablation.parse_vary("text-guidance=2,7.5") == ("text_guidance", [2, 7.5])
    assert ablation.parse_vary("decoder=sd-vae,taesd") == ("decoder", ["sd-vae", "taesd"])
    assert ablation.parse_vary("preset=base,movie") == ("preset", ["base", "movie"])
    vary = {"decoder": ["sd-vae", "taesd"], "steps": [1, 4]}
    assert [ablation.cell_key(c) for c in ablation.grid_cells(vary)] == [
        "decoder=sd-vae,steps=1", "decoder=sd-vae,steps=4", "decoder=taesd,steps=1", "decoder=taesd,steps=4"]
    assert [ablation.cell_key(c) for c in ablation.one_at_a_time_cells(vary, {"decoder": "taesd", "steps": 1})] == [
        "decoder=taesd,steps=1", "decoder=sd-vae,steps=1", "decoder=taesd,steps=4"]


def test_run_grid_measures_any_function_skips_and_resumes(tmp_path):
    calls = []

    def measure(cell):
        calls.append(cell)
        if cell["x"] == 3:
            raise movie_core.SkipCell("x=3 is not allowed here")
        return {"y": cell["x"] * cell["scale"], "cost": float(cell["x"]), "trace": {"seen": [cell["x"]]}}

    cells = [{"x": x, "scale": 2} for x in (1, 2, 3)]
    result = movie_core.run_grid(cells, measure, out=tmp_path / "g", config={"version": 1}, cost="cost", quality="y")
    assert [r["y"] for r in result["rows"]] == [2, 4, None]
    assert result["rows"][2]["status"] == "skipped" and result["rows"][2]["reason"] == "x=3 is not allowed here"
    assert result["cells"][0]["details"] == {"trace": {"seen": [1]}}  # nested results stay out of the table
    assert result["columns"] == ["x", "scale", "status", "y", "cost", "reason"]
    assert (tmp_path / "g" / "cost_vs_quality.png").is_file()
    calls.clear()
    movie_core.run_grid(cells, measure, out=tmp_path / "g", config={"version": 1})
    assert calls == [{"x": 3, "scale": 2}]  # finished cells reused; skipped ones are not saved
    calls.clear()
    movie_core.run_grid(cells, measure, out=tmp_path / "g", config={"version": 2})
    assert len(calls) == 3


def test_without_matplotlib_the_tables_are_written_and_the_charts_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation, "_pyplot", lambda: None)
    result = movie_core.run_grid([{"x": 1}, {"x": 2}], lambda cell: {"y": cell["x"] / 2}, out=tmp_path / "t",
                                 quality="y", cost="x")
    assert result["charts"] == [] and any("matplotlib is not installed" in n for n in result["notes"])
    written = sorted(p.name for p in (tmp_path / "t").iterdir())
    assert written == ["ablation.csv", "ablation.json", "ablation.md", "cells"]
    assert "matplotlib is not installed" in (tmp_path / "t" / "ablation.md").read_text()
