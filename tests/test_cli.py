"""The `movie` command line: cheap startup, one-line user errors, compose, flops and plugins output."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from movie_core import cli as cli_module
from movie_core.plugins import DEFAULT_PLUGINS

pytestmark = pytest.mark.usefixtures("clean_plugins")

MOVIE_VERSION = importlib.metadata.version("movie")
SLOTS = ("encoder", "decoder", "denoiser", "backend")


def invoke(*args: str) -> dict | str:
    """Run a command in-process; JSON output is parsed."""
    result = CliRunner().invoke(cli_module.cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def fail(capsys, *args: str) -> tuple[int, str]:
    """Run `movie ARGS` through main() in-process, expecting a user error: (exit code, stderr)."""
    with pytest.raises(SystemExit) as info:
        cli_module.main(list(args))
    captured = capsys.readouterr()
    assert captured.out == ""
    return info.value.code, captured.err


def torch_imported(code: str) -> bool:
    """Whether a fresh interpreter has torch in sys.modules after running code."""
    probe = code + "\nimport sys\nprint('TORCH', 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    flag = proc.stdout.strip().splitlines()[-1]
    assert flag in ("TORCH True", "TORCH False"), proc.stdout
    return flag == "TORCH True"


# --- startup cost ------------------------------------------------------------------------------


def test_import_core_does_not_import_torch():
    assert not torch_imported(
        "import movie_core, movie_core.plugins, movie_core.registry, movie_core.recipe, movie_core.cli\n"
        "movie_core.plugins.get_registry()"
    )


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "denoiser", "--json"], ["plugins", "--json"]])
def test_cheap_commands_do_not_import_torch(args):
    assert not torch_imported(
        "from movie_core.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code"
    )


def test_torch_probe_can_see_torch():
    assert torch_imported("from movie_core.cli import main\nmain(['compose', '--json'])")


# --- user errors: exit 2, one line, no traceback ---------------------------------------------------


@pytest.mark.parametrize(
    "args, family, available, guess",
    [
        (["compose", "--vae", "nosuch"], "autoencoder", "md-vae, sd-vae, taesd, taesd-lite", None),
        (["compose", "--vae", "taesdd"], "autoencoder", "md-vae, sd-vae, taesd, taesd-lite", "taesd"),
        (["compose", "--decoder", "sd_vae"], "autoencoder", "md-vae, sd-vae, taesd, taesd-lite", "sd-vae"),
        (["compose", "--denoiser", "mobile-pix2pix-1stp"], "denoiser",
         "instruct-pix2pix, mobile-diffusion, mobile-diffusion-lite, mobile-diffusion-pix2pix, "
         "mobile-diffusion-pix2pix-1step, mobile-diffusion-pix2pix-mmg, mobile-pix2pix, mobile-pix2pix-1step, "
         "mobile-pix2pix-mmg, stable-diffusion",
         "mobile-pix2pix-1step"),
        (["compose", "--backend", "eagre"], "backend",
         "aihub, compile, cuda-graphs, eager, hexagon, onnx, tensorrt", "eager"),
        (["compose", "--preset", "mobil"], "preset", "base, mobile, mmg, movie", "mobile"),
        (["flops", "--preset", "movei"], "preset", "base, mobile, mmg, movie", "movie"),
    ],
)
def test_unknown_name_is_one_line(capsys, args, family, available, guess):
    code, err = fail(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"movie: error: unknown {family} '{args[-1]}'; available: {available}; did you mean '")
    if guess:
        assert err.endswith(f"did you mean '{guess}'?\n")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["compose", "--vae", "taesd", "--encoder", "sd-vae"], "--vae"),
        (["compose", "--vae", "taesd", "--decoder", "sd-vae"], "--vae"),
        (["compose", "--preset", "movie", "--recipe", "r.toml"], "--preset and --recipe"),
        (["compose", "--anchor", "last"], "anchor"),
        (["compose", "--recipe", "/nonexistent/r.toml"], "/nonexistent/r.toml"),
        (["list", "widgets"], "unknown family 'widget'"),
    ],
)
def test_bad_flags_are_one_line_usage_errors(capsys, args, needle):
    code, err = fail(capsys, *args)
    assert code == 2
    assert err.startswith("movie: error: ") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_flags_in_a_real_process(run_movie):
    proc = run_movie("compose", "--vae", "nosuch")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("movie: error: unknown autoencoder 'nosuch'; available: md-vae, sd-vae, taesd, taesd-lite; "
                           "did you mean 'taesd'?\n")
    proc = run_movie("compose", "--text-guidance", "-1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--text-guidance" in proc.stderr


# --- compose -------------------------------------------------------------------------------------


def test_compose_json_has_provenance():
    desc = invoke("compose", "--vae", "taesd", "--denoiser", "mobile-pix2pix-1step", "--backend", "eager", "--json")
    expected = {
        "encoder": ("taesd", "movie_plugins.autoencoders.taesd"),
        "decoder": ("taesd", "movie_plugins.autoencoders.taesd"),
        "denoiser": ("mobile-pix2pix-1step", "movie_plugins.denoisers.mobile_pix2pix_1step"),
        "backend": ("eager", "movie_plugins.backends.eager"),
    }
    for slot, (name, plugin) in expected.items():
        assert desc[slot] == {"name": name, "plugin": plugin, "version": MOVIE_VERSION}
    assert desc["options"]["steps"] is None and desc["options"]["size"] == "full"  # steps: the denoiser's own
    assert desc["backend_available"]["ok"] is True
    assert desc["latent_space"] == "sd1"


def test_compose_hybrid_autoencoders():
    out = invoke("compose", "--encoder", "sd-vae", "--decoder", "taesd", "--denoiser", "mobile-pix2pix",
                 "--backend", "eager")
    lines = {line.split()[0]: line.split() for line in out.splitlines()}
    assert lines["encoder"][1] == "sd-vae" and lines["decoder"][1] == "taesd"
    assert lines["denoiser"][1] == "mobile-pix2pix"


def test_compose_recipe_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = invoke("compose", "--preset", "mobile", "--vae", "sd-vae", "--steps", "4", "--text-guidance", "5.5",
                   "--image-guidance", "1.25", "--seed", "7", "--anchor", "first", "--size", "nano",
                   "-o", "r.toml", "--json")
    assert (tmp_path / "r.toml").is_file()
    second = invoke("compose", "--recipe", "r.toml", "--json")
    assert second == first
    assert first["encoder"]["name"] == "sd-vae" and first["denoiser"]["name"] == "mobile-pix2pix"
    assert first["options"] | {"steps": 4, "text_guidance": 5.5, "seed": 7, "anchor": "first"} == first["options"]


# --- flops ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset, paper", [("base", 21.31), ("mobile", 16.10), ("mmg", 5.50), ("movie", 0.76)])
def test_flops_reproduce_table_1(preset, paper):
    result = invoke("flops", "--preset", preset, "--height", "480", "--width", "480", "--json")
    assert result["tflops_paper"] == pytest.approx(paper, rel=0.01)
    assert result["tflops_all"] >= result["tflops_paper"]
    assert (result["height"], result["width"]) == (480, 480)
    assert {"encoder", "unet", "decoder"} <= set(result["components"])
    per_frame = sum(c["tflops_paper"] for c in result["components"].values() if not c["per_video"])
    assert per_frame == pytest.approx(result["tflops_paper"])


def test_flops_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "flops.png"
    invoke("flops", "--preset", "movie", "--plot", str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 1000


# --- plugins -------------------------------------------------------------------------------------


def test_plugins_json_lists_builtins_with_hooks():
    rows = {row["name"]: row for row in invoke("plugins", "--json")}
    assert set(DEFAULT_PLUGINS) <= set(rows)
    for name in DEFAULT_PLUGINS:
        module = importlib.import_module(name)
        implemented = sorted(attr for attr in vars(module) if attr.startswith("movie_"))
        assert rows[name] == {"name": name, "version": MOVIE_VERSION, "source": "built-in", "hooks": implemented}
    assert rows["movie_plugins.commands.convert"]["hooks"] == ["movie_register_commands"]
